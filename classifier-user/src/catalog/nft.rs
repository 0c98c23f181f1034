//! A resolved policy as an nftables ruleset (`catalog export --format nft`):
//! for a host with its roles, for a host with per-destination profiles, or
//! for an appliance forwarding between its legs.
//!
//! Its input chain accepts what the XDP program passes: replies of flows the
//! host opened, essential ICMP/ICMPv6, DHCP replies, the management allowance,
//! and the destination ports of the roles' inbound rules. Everything else is
//! dropped. Outbound rules (the roles' own connections) go to an output chain
//! whose policy is accept, as the XDP program does not filter what the host
//! sends: there they only count, and their replies come back as established.

use std::{collections::BTreeSet, fmt::Write as _, net::IpAddr};

use classifier_common::essentials;

use super::model::{AddressSet, EffectiveRule, MatchSide, Payload, Protocol, ports_text};
use crate::policy::{MediaCheck, Mgmt, Placement, Prefix, Resolved};

/// The ruleset enforcing `policy`.
pub fn export(policy: &Resolved) -> String {
    if policy.placement == Placement::Host && policy.prefixes.is_empty() {
        export_host(policy)
    } else {
        export_profiles(policy)
    }
}

/// A host without `--profile`: its roles' rows.
fn export_host(policy: &Resolved) -> String {
    let (roles, members) = match policy.own_profile() {
        Some(p) => (p.roles.as_slice(), p.members.as_slice()),
        None => (&[][..], &[][..]),
    };
    let mgmt_rules = mgmt_lines(&policy.mgmt);

    let mut s = String::new();
    let _ = writeln!(s, "#!/usr/sbin/nft -f");
    let _ = writeln!(
        s,
        "# portguard: catalog {} for role(s) {}",
        one_line(&policy.origin),
        roles.join(",")
    );
    let _ = writeln!(
        s,
        "# Roles with inclusions resolved: {}",
        members.join(", ")
    );
    open_table(&mut s, policy);

    let chains = RoleChains::of(policy, members);
    s.push_str(&chains.sets);
    input_chain(&mut s, &mgmt_rules, &chains.jumps, None);
    output_chain(&mut s, &chains.out_jumps);
    s.push_str(&chains.out_chains);
    s.push_str(chains.chains.trim_end());
    s.push_str("\n}\n");
    s
}

/// The last header line (the client media range) and the opening of the
/// table, as every export writes them.
fn open_table(s: &mut String, policy: &Resolved) {
    let _ = writeln!(
        s,
        "# Client media ports: {}",
        ports_text(policy.client_media.0, policy.client_media.1)
    );
    // Creating then deleting makes a reload replace the table atomically, whether it exists or not.
    s.push_str("table inet portguard\ndelete table inet portguard\n\n");
    s.push_str("table inet portguard {\n");
    let media = policy.media_check != MediaCheck::Off
        && policy
            .profiles
            .iter()
            .any(|p| p.inbound.iter().any(|r| r.payload == Payload::Media));
    if media && !policy.reflection_ports.is_empty() {
        let ports: Vec<String> = policy.reflection_ports.iter().map(u16::to_string).collect();
        let _ = writeln!(
            s,
            "\tset reflection_ports {{\n\t\ttype inet_service\n\t\telements = {{ {} }}\n\t}}\n",
            ports.join(", ")
        );
    }
}

/// A host with `--profile`s, or an appliance.
///
/// Host: the input chain's `to_profile` chain gives a packet the inbound rows
/// of the profile of its destination, or of the `own` profile (the default
/// profile, `--role`) when no profile holds it; without `--role` such
/// packets are dropped, as by `run`.
///
/// Appliance: the box forwards between its legs. A `forward` chain (policy
/// drop) passes replies (conntrack), the essentials, and per profile the
/// inbound rows of the packets to it and the outbound rows of the packets
/// from it; the `input` chain keeps the box's own policy (the `own`
/// profile's rows, the lockout guard, the essentials).
///
/// Longest prefix wins, on each side, as in the XDP program, which picks
/// one profile per side with an LPM trie. nft rules are first-match and an
/// interval map refuses nested prefixes ("conflicting intervals"), so each
/// side is a chain of `daddr`/`saddr` matches ordered most specific first,
/// each one a `goto` to its profile's chain. A `goto` does not come back to
/// the side chain: when the profile's chain ends without a verdict, control
/// returns to the chain that jumped to the side chain, so no shorter prefix
/// (and not the default profile) is tried. A packet to an address in a /32
/// inside a /24 gets the /32's rows only, exactly as the trie's single answer.
fn export_profiles(policy: &Resolved) -> String {
    let appliance = policy.placement == Placement::Appliance;
    let own: &[String] = policy.own_profile().map_or(&[], |p| p.members.as_slice());
    let mgmt_rules = mgmt_lines(&policy.mgmt);
    let sides = profile_matches(policy);
    let profile_members: Vec<&[String]> = policy
        .prefixes
        .iter()
        .map(|p| policy.profiles[p.profile as usize].members.as_slice())
        .collect();
    let mut members: Vec<String> = Vec::new();
    for m in own.iter().chain(profile_members.iter().copied().flatten()) {
        if !members.contains(m) {
            members.push(m.clone());
        }
    }

    let mut s = String::new();
    let _ = writeln!(s, "#!/usr/sbin/nft -f");
    let _ = writeln!(
        s,
        "# portguard: catalog {}, {}",
        one_line(&policy.origin),
        if appliance {
            "appliance mode"
        } else {
            "host with profiles"
        }
    );
    let _ = match (appliance, own.is_empty()) {
        (true, true) => writeln!(
            s,
            "# The appliance's own addresses: the essentials and the lockout guard only (no --role)"
        ),
        (true, false) => writeln!(
            s,
            "# The appliance's own roles, inclusions resolved: {}",
            own.join(", ")
        ),
        (false, true) => writeln!(
            s,
            "# Addresses in no profile: the essentials and the lockout guard only (no --role)"
        ),
        (false, false) => writeln!(
            s,
            "# Addresses in no profile, roles with inclusions resolved: {}",
            own.join(", ")
        ),
    };
    for (p, m) in policy.prefixes.iter().zip(&profile_members) {
        let _ = writeln!(s, "# Profile {}: {}", p.prefix, m.join(", "));
    }
    open_table(&mut s, policy);

    let chains = RoleChains::of(policy, &members);
    s.push_str(&chains.sets);
    let own_jumps: Vec<String> = chains
        .jumps
        .iter()
        .zip(&members)
        .filter(|(_, m)| own.contains(m))
        .map(|(j, _)| j.clone())
        .collect();
    if appliance {
        let own_out: Vec<String> = own.iter().filter_map(|m| chains.out_chain_of(m)).collect();
        // The box's own addresses: routing sends their packets to input, never to
        // forward, so no --profile applies to them on the destination side, as
        // the XDP program looks the appliance's own addresses up first. The
        // source side still does: a profile's outbound rows allow its packets to
        // anywhere, the appliance included.
        input_chain(&mut s, &mgmt_rules, &own_jumps, Some(FROM_PROFILE_JUMP));
        output_chain(&mut s, &own_out);

        s.push_str(
            "\t# Forwarded packets: replies of what was passed (either way, either leg), the essentials\n\
             \t# as on input, then the destination's profile (its inbound rows) and the source's profile\n\
             \t# (its outbound rows, only when the source sits behind the leg the packet arrived\n\
             \t# on: a strict reverse-path check); either side may pass the packet. No lockout\n\
             \t# guard here: it never opens a port on a server behind the appliance.\n",
        );
        s.push_str(
            "\tchain forward {\n\t\ttype filter hook forward priority filter; policy drop;\n",
        );
        s.push_str("\t\tct state established,related counter accept comment \"established\"\n");
        essentials(&mut s);
        let _ = writeln!(s, "\t\tjump to_profile\n\t\t{FROM_PROFILE_JUMP}\n\t}}\n");
        side_chain(&mut s, "to_profile", "daddr", &sides, "to_p", &[]);
        side_chain(&mut s, "from_profile", "saddr", &sides, "from_p", &[]);
    } else {
        input_chain(
            &mut s,
            &mgmt_rules,
            &[],
            Some("jump to_profile comment \"destination profile\""),
        );
        output_chain(&mut s, &chains.out_jumps);
        // After every prefix's `goto`: only addresses in no profile get here.
        side_chain(&mut s, "to_profile", "daddr", &sides, "to_p", &own_jumps);
    }
    for (i, (p, m)) in policy.prefixes.iter().zip(&profile_members).enumerate() {
        let prefix = p.prefix;
        let roles = policy.profiles[p.profile as usize].roles.join(",");
        let _ = writeln!(s, "\t# Packets to {prefix}: the inbound rows of {roles}.");
        let _ = writeln!(s, "\tchain to_p{i} {{");
        for (j, member) in chains.jumps.iter().zip(&members) {
            if m.contains(member) {
                let _ = writeln!(s, "\t\tjump {j}");
            }
        }
        s.push_str("\t}\n\n");
        if !appliance {
            continue;
        }
        // Even an empty chain ends the source side here: no shorter prefix applies.
        let _ = writeln!(
            s,
            "\t# Packets from {prefix}: the outbound rows of {roles}."
        );
        let _ = writeln!(s, "\tchain from_p{i} {{");
        for out in m.iter().filter_map(|r| chains.out_chain_of(r)) {
            let _ = writeln!(s, "\t\tjump {out}");
        }
        s.push_str("\t}\n\n");
    }
    s.push_str(&chains.out_chains);
    s.push_str(chains.chains.trim_end());
    s.push_str("\n}\n");
    s
}

/// The source side of an appliance: a profile's outbound rows apply only to
/// a packet whose source the box routes back through the interface it
/// arrived on (strict reverse-path filtering, RFC 3704), as the XDP program
/// applies them only on the leg the profile's prefix sits behind. A frame
/// on the internet leg that claims an Edge Server's address is not the
/// Edge's.
const FROM_PROFILE_JUMP: &str =
    "fib saddr . iif oif exists jump from_profile comment \"source profile (strict reverse path)\"";

/// The sets and chains of a list of roles (each role's own rules).
struct RoleChains {
    /// Named interval sets, inbound and outbound, in role order.
    sets: String,
    /// `role_<id>` chains: the inbound destination rows.
    chains: String,
    /// The `role_<id>` chain of each role, in order.
    jumps: Vec<String>,
    /// `out_<id>` chains: the outbound rows, for roles that have any.
    out_chains: String,
    out_jumps: Vec<String>,
}

impl RoleChains {
    fn of(policy: &Resolved, members: &[String]) -> RoleChains {
        let mut sets = String::new();
        // The address sets the rules name, each defined once.
        let mut used: BTreeSet<String> = BTreeSet::new();
        let mut chains = String::new();
        let mut jumps = Vec::new();
        let mut out_chains = String::new();
        let mut out_jumps = Vec::new();
        for role in members {
            let base = ident(role);
            let chain = format!("role_{base}");
            let _ = writeln!(chains, "\tchain {chain} {{");
            let (inbound, outbound) = policy.rules_of(role).unwrap_or_default();
            let media = if policy.media_check == MediaCheck::Off {
                Vec::new()
            } else {
                media_block(&inbound)
            };
            if !media.is_empty() {
                let set = format!("{base}_udp_media");
                interval_set(&mut sets, &set, &media);
                let _ = writeln!(
                    chains,
                    "\t\t# {role}: payload = \"media\" (the length and cookie checks behind the first byte are the XDP program's only)"
                );
                media_rules(
                    &mut chains,
                    policy,
                    &MediaMatch {
                        matcher: format!("udp dport @{set}"),
                        family: None,
                        meter: base.clone(),
                        comment: role.clone(),
                    },
                );
            }
            for proto in [Protocol::Tcp, Protocol::Udp] {
                let ranges = merged(
                    inbound
                        .iter()
                        .filter(|r| {
                            r.protocol == proto
                                && r.side == MatchSide::Destination
                                && r.peers.is_empty()
                                && !(proto == Protocol::Udp
                                    && !media.is_empty()
                                    && r.payload == Payload::Media)
                        })
                        .map(|r| (r.port_start, r.port_end))
                        .collect(),
                );
                if ranges.is_empty() {
                    continue;
                }
                let set = format!("{base}_{proto}");
                interval_set(&mut sets, &set, &ranges);
                let _ = writeln!(
                    chains,
                    "\t\t{proto} dport @{set} counter accept comment \"{role}\""
                );
            }
            for r in inbound
                .iter()
                .filter(|r| r.side == MatchSide::Destination && !r.peers.is_empty())
            {
                peer_rules(&mut chains, policy, r, "saddr", role);
                used.extend(r.peers.iter().cloned());
            }
            for r in inbound.iter().filter(|r| r.side == MatchSide::Source) {
                let _ = writeln!(
                    chains,
                    "\t\t# {} {} ({}) is the peer's port: its replies pass above (established, DHCP)",
                    r.protocol,
                    r.ports_text(),
                    one_line(&r.service)
                );
            }
            chains.push_str("\t}\n\n");
            jumps.push(chain);

            // Set names: inbound ones end in _tcp/_udp, outbound ones in _out, and
            // role ids have no `_`, so no two roles' sets can share a name.
            let mut out_rules = String::new();
            for proto in [Protocol::Tcp, Protocol::Udp] {
                let ranges = merged(
                    outbound
                        .iter()
                        .filter(|r| r.protocol == proto && r.peers.is_empty())
                        .map(|r| (r.port_start, r.port_end))
                        .collect(),
                );
                if ranges.is_empty() {
                    continue;
                }
                let set = format!("{base}_{proto}_out");
                interval_set(&mut sets, &set, &ranges);
                let _ = writeln!(
                    out_rules,
                    "\t\t{proto} dport @{set} counter accept comment \"{role} outbound\""
                );
            }
            for r in outbound.iter().filter(|r| !r.peers.is_empty()) {
                peer_rules(
                    &mut out_rules,
                    policy,
                    r,
                    "daddr",
                    &format!("{role} outbound"),
                );
                used.extend(r.peers.iter().cloned());
            }
            if !out_rules.is_empty() {
                let chain = format!("out_{base}");
                let _ = write!(out_chains, "\tchain {chain} {{\n{out_rules}\t}}\n\n");
                out_jumps.push(chain);
            }
        }
        for set in policy.addresses.iter().filter(|a| used.contains(&a.id)) {
            address_sets(&mut sets, set);
        }
        RoleChains {
            sets,
            chains,
            jumps,
            out_chains,
            out_jumps,
        }
    }

    /// The `out_<id>` chain of a role, if it has outbound rows.
    fn out_chain_of(&self, role: &str) -> Option<String> {
        let chain = format!("out_{}", ident(role));
        self.out_jumps.contains(&chain).then_some(chain)
    }
}

/// The UDP ranges of a role's inbound `payload = "media"` rows that name no
/// address set (those with sets check the media behind the peer's match:
/// [`peer_rules`]).
fn media_block(inbound: &[&EffectiveRule]) -> Vec<(u16, u16)> {
    merged(
        inbound
            .iter()
            .filter(|r| {
                r.protocol == Protocol::Udp
                    && r.payload == Payload::Media
                    && r.side == MatchSide::Destination
                    && r.peers.is_empty()
            })
            .map(|r| (r.port_start, r.port_end))
            .collect(),
    )
}

/// Where a media check applies: `matcher` selects the packets (a role's
/// `<id>_udp_media` set, or a peer set and a rule's ports), `family`
/// (`ip`, `ip6`) keeps only that family's budgets when the matcher names
/// one, `meter` makes the meters' names unique, `comment` names the role.
struct MediaMatch {
    matcher: String,
    family: Option<&'static str>,
    meter: String,
    comment: String,
}

/// The media check, as nftables can say it (docs/packet-policy.md, "Media
/// payload"): the reflection ports, the STUN budget (Binding, Shared Secret
/// and Allocate requests: their first two bytes are 0x0001-0x0003) per
/// source and per subnet at the policy's rates, then the first byte's RFC
/// 7983 ranges. What it cannot say: the length fields and cookies behind
/// the first byte (so it passes a little more than the XDP program), and
/// the per-rule counters (one counter per reason and role here).
fn media_rules(s: &mut String, policy: &Resolved, m: &MediaMatch) {
    let b = policy.stun_budget;
    let matcher = &m.matcher;
    if !policy.reflection_ports.is_empty() {
        let _ = writeln!(
            s,
            "\t\t{matcher} udp sport @reflection_ports counter drop comment \"reflection\""
        );
    }
    let budgets = [
        ("stun4", "ip", "ip saddr", b.source_rate, b.source_burst),
        (
            "stun6",
            "ip6",
            "ip6 saddr and ffff:ffff:ffff:ffff::",
            b.source_rate,
            b.source_burst,
        ),
        (
            "stunnet4",
            "ip",
            "ip saddr and 255.255.0.0",
            b.net_rate,
            b.net_burst,
        ),
        (
            "stunnet6",
            "ip6",
            "ip6 saddr and ffff:ffff:ffff::",
            b.net_rate,
            b.net_burst,
        ),
    ];
    for (meter, family, key, rate, burst) in budgets {
        if rate == 0 || m.family.is_some_and(|f| f != family) {
            continue;
        }
        let _ = writeln!(
            s,
            "\t\t{matcher} @th,64,16 0x0001-0x0003 meter {meter}_{} size 65535 {{ {key} limit rate over {rate}/second burst {burst} packets }} counter drop comment \"rate_limited\"",
            m.meter
        );
    }
    let _ = writeln!(
        s,
        "\t\t{matcher} @th,64,8 {{ 0-3, 16-25, 32-191, 255 }} counter accept comment \"{} media\"",
        m.comment
    );
    let _ = writeln!(s, "\t\t{matcher} counter drop comment \"not_media\"");
}

/// The nft names of an address set's two halves: `peers_<id>_v4` and
/// `peers_<id>_v6` (port sets end in `_tcp`, `_udp` or `_out`).
fn peer_set_name(id: &str, family: &str) -> String {
    format!("peers_{}_{family}", ident(id))
}

/// An address set as two named interval sets, one per family. An empty half
/// has no elements (nft refuses `elements = { }`) and matches nothing.
fn address_sets(s: &mut String, set: &AddressSet) {
    for (family, kind, v4) in [("v4", "ipv4_addr", true), ("v6", "ipv6_addr", false)] {
        let elements: Vec<String> = set
            .cidrs
            .iter()
            .filter(|c| c.addr.is_ipv4() == v4)
            .map(ToString::to_string)
            .collect();
        let _ = write!(
            s,
            "\tset {} {{\n\t\ttype {kind}\n\t\tflags interval\n",
            peer_set_name(&set.id, family)
        );
        if !elements.is_empty() {
            let _ = writeln!(s, "\t\telements = {{ {} }}", elements.join(", "));
        }
        s.push_str("\t}\n\n");
    }
}

/// The accept rules of a rule that names address sets: one per set and
/// family, the peer (`saddr` of an inbound rule, `daddr` of an outbound one)
/// in the set and the destination port in the rule's range. An inbound UDP
/// media rule (`payload = "media"`, the check on) checks the media of the
/// peers it matches instead of accepting them outright.
fn peer_rules(s: &mut String, policy: &Resolved, r: &EffectiveRule, side: &str, comment: &str) {
    let media = side == "saddr"
        && r.protocol == Protocol::Udp
        && r.payload == Payload::Media
        && policy.media_check != MediaCheck::Off;
    for id in &r.peers {
        for (family, v) in [("ip", "v4"), ("ip6", "v6")] {
            let set = peer_set_name(id, v);
            if media {
                media_rules(
                    s,
                    policy,
                    &MediaMatch {
                        matcher: format!("{family} {side} @{set} udp dport {}", r.ports_text()),
                        family: Some(family),
                        meter: format!("{}_{}_{}_{v}", ident(comment), ident(id), r.port_start),
                        comment: format!("{comment}: peers {id}"),
                    },
                );
                continue;
            }
            let _ = writeln!(
                s,
                "\t\t{family} {side} @{set} {} dport {} counter accept comment \"{comment}: {} peers {id}\"",
                r.protocol,
                r.ports_text(),
                one_line(&r.service).replace('"', "'"),
            );
        }
    }
}

fn interval_set(s: &mut String, name: &str, ranges: &[(u16, u16)]) {
    let elements: Vec<String> = ranges.iter().map(|&(a, b)| ports_text(a, b)).collect();
    let _ = writeln!(
        s,
        "\tset {name} {{\n\t\ttype inet_service\n\t\tflags interval\n\t\telements = {{ {} }}\n\t}}\n",
        elements.join(", ")
    );
}

/// What the XDP program passes whatever the policy, from the same
/// constants (`classifier_common::essentials`): essential ICMP and ICMPv6,
/// DHCP replies.
fn essentials(s: &mut String) {
    // In nft's order: errors, echo, then (ICMPv6) neighbour discovery and MLD.
    let mut icmp = types(essentials::icmp4_error, icmp_name);
    icmp.extend(
        [essentials::ICMP4_ECHO_REQUEST, essentials::ICMP4_ECHO_REPLY].map(|t| named(t, icmp_name)),
    );
    let _ = writeln!(
        s,
        "\t\ticmp type {{ {} }} counter accept comment \"icmp\"",
        icmp.join(", ")
    );
    // Redirects are dropped on purpose (they are not among the essentials).
    let mut icmp6 = types(essentials::icmp6_error, icmp6_name);
    icmp6.extend(
        [essentials::ICMP6_ECHO_REQUEST, essentials::ICMP6_ECHO_REPLY]
            .map(|t| named(t, icmp6_name)),
    );
    icmp6.extend(types(essentials::icmp6_neighbor_discovery, icmp6_name));
    let _ = writeln!(
        s,
        "\t\ticmpv6 type {{ {} }} counter accept comment \"icmp\"",
        icmp6.join(", ")
    );
    for (sport, dport) in essentials::DHCP_REPLIES {
        let _ = writeln!(
            s,
            "\t\tudp sport {sport} udp dport {dport} counter accept comment \"dhcp\""
        );
    }
}

/// The ICMP types `pass` lets through, by nft name, in type order.
fn types(pass: fn(u8) -> bool, name: fn(u8) -> Option<&'static str>) -> Vec<String> {
    (0..=u8::MAX)
        .filter(|t| pass(*t))
        .map(|t| named(t, name))
        .collect()
}

/// nft's name of a type, or its number (which nft takes too).
fn named(t: u8, name: fn(u8) -> Option<&'static str>) -> String {
    name(t).map_or_else(|| t.to_string(), str::to_string)
}

/// nft's name of an ICMP type.
fn icmp_name(t: u8) -> Option<&'static str> {
    Some(match t {
        0 => "echo-reply",
        3 => "destination-unreachable",
        8 => "echo-request",
        11 => "time-exceeded",
        12 => "parameter-problem",
        _ => return None,
    })
}

/// nft's name of an ICMPv6 type.
fn icmp6_name(t: u8) -> Option<&'static str> {
    Some(match t {
        1 => "destination-unreachable",
        2 => "packet-too-big",
        3 => "time-exceeded",
        4 => "parameter-problem",
        128 => "echo-request",
        129 => "echo-reply",
        130 => "mld-listener-query",
        131 => "mld-listener-report",
        132 => "mld-listener-done",
        133 => "nd-router-solicit",
        134 => "nd-router-advert",
        135 => "nd-neighbor-solicit",
        136 => "nd-neighbor-advert",
        143 => "mld2-listener-report",
        _ => return None,
    })
}

fn input_chain(s: &mut String, mgmt_rules: &[String], jumps: &[String], last: Option<&str>) {
    s.push_str("\tchain input {\n\t\ttype filter hook input priority filter; policy drop;\n");
    s.push_str("\t\tct state established,related counter accept comment \"established\"\n");
    s.push_str("\t\tiif \"lo\" accept comment \"loopback\"\n");
    s.push_str(
        "\t\t# ARP is not IP: the inet family never sees it, so this table cannot drop it.\n",
    );
    essentials(s);
    for line in mgmt_rules {
        let _ = writeln!(s, "\t\t{line}");
    }
    for chain in jumps {
        let _ = writeln!(s, "\t\tjump {chain}");
    }
    if let Some(line) = last {
        let _ = writeln!(s, "\t\t{line}");
    }
    s.push_str("\t}\n\n");
}

fn output_chain(s: &mut String, out_jumps: &[String]) {
    if out_jumps.is_empty() {
        return;
    }
    s.push_str(
        "\t# The roles' outbound rows: what the host sends is not filtered (policy accept), as by the\n\
         \t# XDP program; these only count it, and its replies pass input as established.\n",
    );
    s.push_str("\tchain output {\n\t\ttype filter hook output priority filter; policy accept;\n");
    for chain in out_jumps {
        let _ = writeln!(s, "\t\tjump {chain}");
    }
    s.push_str("\t}\n\n");
}

/// One profile's address match in one family: the nft family keyword, the
/// match text (`None` for a whole family) and the sort key (the prefix length
/// in the IPv4-mapped IPv6 space the XDP trie uses).
struct SideMatch {
    family: &'static str,
    prefix: Option<String>,
    key: u8,
    profile: usize,
}

/// Every profile's matches, longest prefix first. The XDP trie keys IPv4
/// addresses as IPv4-mapped IPv6 ones, so an IPv6 prefix that contains
/// `::ffff:0:0/96` (`::/0`, say) covers IPv4 packets too: it gets an IPv4
/// match as well, sorted by its own (short) length.
fn profile_matches(policy: &Resolved) -> Vec<SideMatch> {
    // The IPv4-mapped IPv6 prefix, the XDP trie's key of every IPv4 address.
    let mapped = Prefix {
        addr: std::net::Ipv4Addr::UNSPECIFIED.to_ipv6_mapped().octets(),
        len: 96,
    };
    let mut out = Vec::new();
    for (i, p) in policy.prefixes.iter().enumerate() {
        let len = p.prefix.display_len();
        let whole = (len > 0).then(|| p.prefix.to_string());
        match p.prefix.ip() {
            IpAddr::V4(_) => out.push(SideMatch {
                family: "ip",
                prefix: whole,
                key: p.prefix.len,
                profile: i,
            }),
            IpAddr::V6(_) => {
                out.push(SideMatch {
                    family: "ip6",
                    prefix: whole,
                    key: p.prefix.len,
                    profile: i,
                });
                if p.prefix.contains(&mapped) {
                    out.push(SideMatch {
                        family: "ip",
                        prefix: None,
                        key: p.prefix.len,
                        profile: i,
                    });
                }
            }
        }
    }
    // Stable: equal lengths in one family are disjoint prefixes, whose order
    // does not matter.
    out.sort_by_key(|m| std::cmp::Reverse(m.key));
    out
}

fn side_chain(
    s: &mut String,
    name: &str,
    field: &str,
    sides: &[SideMatch],
    target: &str,
    default_jumps: &[String],
) {
    let _ = writeln!(
        s,
        "\t# Longest prefix first, and `goto`: the first match is the only profile applied."
    );
    let _ = writeln!(s, "\tchain {name} {{");
    for m in sides {
        match &m.prefix {
            Some(prefix) => {
                let _ = writeln!(
                    s,
                    "\t\t{} {field} {prefix} goto {target}{}",
                    m.family, m.profile
                );
            }
            None => {
                let proto = if m.family == "ip" { "ipv4" } else { "ipv6" };
                let _ = writeln!(s, "\t\tmeta nfproto {proto} goto {target}{}", m.profile);
            }
        }
    }
    for chain in default_jumps {
        let _ = writeln!(s, "\t\tjump {chain}");
    }
    s.push_str("\t}\n\n");
}

/// Sorted, with overlapping and adjacent ranges joined: nft refuses
/// overlapping interval elements.
pub(crate) fn merged(mut ranges: Vec<(u16, u16)>) -> Vec<(u16, u16)> {
    ranges.sort_unstable();
    let mut out: Vec<(u16, u16)> = Vec::new();
    for (a, b) in ranges {
        match out.last_mut() {
            Some(last) if u32::from(a) <= u32::from(last.1) + 1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

fn mgmt_lines(mgmt: &[Mgmt]) -> Vec<String> {
    let mut lines = Vec::new();
    for m in mgmt {
        let line = match (m.prefix.ip(), m.prefix.display_len()) {
            // A /0 prefix matches the whole family; nft wants no address match for it.
            (ip, 0) => format!(
                "meta nfproto {} tcp dport {} counter accept comment \"management\"",
                if ip.is_ipv4() { "ipv4" } else { "ipv6" },
                m.port
            ),
            (IpAddr::V4(_), _) => format!(
                "ip saddr {} tcp dport {} counter accept comment \"management\"",
                m.prefix, m.port
            ),
            (IpAddr::V6(_), _) => format!(
                "ip6 saddr {} tcp dport {} counter accept comment \"management\"",
                m.prefix, m.port
            ),
        };
        if !lines.contains(&line) {
            lines.push(line);
        }
    }
    lines
}

/// A role id as an nft identifier.
pub(crate) fn ident(role: &str) -> String {
    role.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn one_line(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}
