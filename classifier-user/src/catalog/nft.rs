//! The policy of some roles as an nftables ruleset (`catalog export --format nft`).
//!
//! Its input chain accepts what the XDP program passes: replies of flows the
//! host opened, essential ICMP/ICMPv6, DHCP replies, the management allowance,
//! and the destination ports of the roles' inbound rules. Everything else is
//! dropped. Outbound rules (the roles' own connections) go to an output chain
//! whose policy is accept, as the XDP program does not filter what the host
//! sends: there they only count, and their replies come back as established.

use std::{fmt::Write as _, net::IpAddr};

use super::model::{
    Catalog, CatalogError, Diagnostic, Direction, MatchSide, MgmtAllowance, Protocol, Severity,
    ports_text,
};

pub fn export(
    catalog: &Catalog,
    roles: &[String],
    mgmt: &[MgmtAllowance],
) -> Result<String, CatalogError> {
    let members = catalog.resolve_roles(roles)?;
    let mgmt_rules = mgmt_lines(mgmt)?;

    let mut s = String::new();
    let _ = writeln!(s, "#!/usr/sbin/nft -f");
    let _ = writeln!(
        s,
        "# portguard: catalog {} for role(s) {}",
        one_line(&catalog.origin),
        roles.join(",")
    );
    let _ = writeln!(
        s,
        "# Roles with inclusions resolved: {}",
        members.join(", ")
    );
    let _ = writeln!(
        s,
        "# Client media ports: {}",
        ports_text(catalog.client_media.0, catalog.client_media.1)
    );
    // Creating then deleting makes a reload replace the table atomically, whether it exists or not.
    s.push_str("table inet portguard\ndelete table inet portguard\n\n");
    s.push_str("table inet portguard {\n");

    let mut chains = String::new();
    let mut jumps = Vec::new();
    let mut out_chains = String::new();
    let mut out_jumps = Vec::new();
    for role in &members {
        let base = ident(role);
        let chain = format!("role_{base}");
        let _ = writeln!(chains, "\tchain {chain} {{");
        let own = catalog.own_rules(role);
        for proto in [Protocol::Tcp, Protocol::Udp] {
            let ranges = merged(
                own.iter()
                    .filter(|r| {
                        r.protocol == proto
                            && r.side == MatchSide::Destination
                            && r.direction == Direction::Inbound
                    })
                    .map(|r| (r.port_start, r.port_end))
                    .collect(),
            );
            if ranges.is_empty() {
                continue;
            }
            let set = format!("{base}_{proto}");
            let elements: Vec<String> = ranges.iter().map(|&(a, b)| ports_text(a, b)).collect();
            let _ = writeln!(
                s,
                "\tset {set} {{\n\t\ttype inet_service\n\t\tflags interval\n\t\telements = {{ {} }}\n\t}}\n",
                elements.join(", ")
            );
            let _ = writeln!(
                chains,
                "\t\t{proto} dport @{set} counter accept comment \"{role}\""
            );
        }
        for r in own.iter().filter(|r| r.side == MatchSide::Source) {
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
                own.iter()
                    .filter(|r| r.protocol == proto && r.direction == Direction::Outbound)
                    .map(|r| (r.port_start, r.port_end))
                    .collect(),
            );
            if ranges.is_empty() {
                continue;
            }
            let set = format!("{base}_{proto}_out");
            let elements: Vec<String> = ranges.iter().map(|&(a, b)| ports_text(a, b)).collect();
            let _ = writeln!(
                s,
                "\tset {set} {{\n\t\ttype inet_service\n\t\tflags interval\n\t\telements = {{ {} }}\n\t}}\n",
                elements.join(", ")
            );
            let _ = writeln!(
                out_rules,
                "\t\t{proto} dport @{set} counter accept comment \"{role} outbound\""
            );
        }
        if !out_rules.is_empty() {
            let chain = format!("out_{base}");
            let _ = write!(out_chains, "\tchain {chain} {{\n{out_rules}\t}}\n\n");
            out_jumps.push(chain);
        }
    }

    s.push_str("\tchain input {\n\t\ttype filter hook input priority filter; policy drop;\n");
    s.push_str("\t\tct state established,related counter accept comment \"established\"\n");
    s.push_str("\t\tiif \"lo\" accept comment \"loopback\"\n");
    s.push_str(
        "\t\t# ARP is not IP: the inet family never sees it, so this table cannot drop it.\n",
    );
    s.push_str(
        "\t\ticmp type { destination-unreachable, time-exceeded, parameter-problem, echo-request, echo-reply } \
         counter accept comment \"icmp\"\n",
    );
    // The same types the XDP program passes; redirects are dropped on purpose.
    s.push_str(
        "\t\ticmpv6 type { destination-unreachable, packet-too-big, time-exceeded, parameter-problem, echo-request, \
         echo-reply, mld-listener-query, mld-listener-report, mld-listener-done, nd-router-solicit, \
         nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert, mld2-listener-report } counter accept \
         comment \"icmp\"\n",
    );
    s.push_str("\t\tudp sport 67 udp dport 68 counter accept comment \"dhcp\"\n");
    s.push_str("\t\tudp sport 547 udp dport 546 counter accept comment \"dhcp\"\n");
    for line in mgmt_rules {
        let _ = writeln!(s, "\t\t{line}");
    }
    for chain in &jumps {
        let _ = writeln!(s, "\t\tjump {chain}");
    }
    s.push_str("\t}\n\n");
    if !out_jumps.is_empty() {
        s.push_str(
            "\t# The roles' outbound rows: what the host sends is not filtered (policy accept), as by the\n\
             \t# XDP program; these only count it, and its replies pass input as established.\n",
        );
        s.push_str(
            "\tchain output {\n\t\ttype filter hook output priority filter; policy accept;\n",
        );
        for chain in &out_jumps {
            let _ = writeln!(s, "\t\tjump {chain}");
        }
        s.push_str("\t}\n\n");
        s.push_str(&out_chains);
    }
    s.push_str(chains.trim_end());
    s.push_str("\n}\n");
    Ok(s)
}

/// Sorted, with overlapping and adjacent ranges joined: nft refuses
/// overlapping interval elements.
pub fn merged(mut ranges: Vec<(u16, u16)>) -> Vec<(u16, u16)> {
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

fn mgmt_lines(mgmt: &[MgmtAllowance]) -> Result<Vec<String>, CatalogError> {
    let mut lines = Vec::new();
    let mut errors = Vec::new();
    for m in mgmt {
        let (family, max) = match m.prefix {
            IpAddr::V4(_) => ("ip", 32),
            IpAddr::V6(_) => ("ip6", 128),
        };
        if m.prefix_len > max || m.port == 0 {
            errors.push(Diagnostic {
                origin: "--mgmt".into(),
                line: 0,
                column: 0,
                severity: Severity::Error,
                message: format!(
                    "invalid management allowance {}/{} port {}",
                    m.prefix, m.prefix_len, m.port
                ),
                hint: Some(format!(
                    "the prefix length is at most {max} and the port 1-65535"
                )),
            });
            continue;
        }
        let line = if m.prefix_len == 0 {
            // A /0 prefix matches the whole family; nft wants no address match for it.
            let proto = if family == "ip" { "ipv4" } else { "ipv6" };
            format!(
                "meta nfproto {proto} tcp dport {} counter accept comment \"management\"",
                m.port
            )
        } else {
            format!(
                "{family} saddr {}/{} tcp dport {} counter accept comment \"management\"",
                masked(m.prefix, m.prefix_len),
                m.prefix_len,
                m.port
            )
        };
        if !lines.contains(&line) {
            lines.push(line);
        }
    }
    if errors.is_empty() {
        Ok(lines)
    } else {
        Err(CatalogError {
            diagnostics: errors,
        })
    }
}

/// The network address: nft refuses a prefix with host bits set.
fn masked(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::from((u32::from(a) & mask).to_be_bytes())
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::from((u128::from(a) & mask).to_be_bytes())
        }
    }
}

/// A role id as an nft identifier.
pub fn ident(role: &str) -> String {
    role.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn one_line(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}
