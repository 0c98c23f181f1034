//! A [`Resolved`] policy as the contents of the BPF maps: per profile and
//! direction, every port's rule slot; the prefixes and their profiles; the
//! management trie; the generation's settings.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use classifier_common::{
    BLOCKS_PER_PROTO, MAX_PROFILES, MAX_RULE_SLOTS, MGMT_PORTS, PEER_ENTRIES, PORTS_PER_BLOCK,
    PROFILE_NONE, PROTO_COUNT, PROTO_TCP, PROTO_UDP, PortBlock, SLOT_MASK, SLOT_PEERS,
    media::{MAX_MEDIA_RULES, MEDIA_SLOT_FLAG},
};
use serde::{Deserialize, Serialize};

use super::{MediaCheck, Mgmt, Placement, PolicyError, Prefix, Resolved, StunBudget};
use crate::catalog::{
    Direction, EffectiveRule, MatchSide, Payload, Protocol, assign_ports_in, ports_text,
};

/// What a counter slot stands for: one catalog rule for one protocol. Slots
/// are handed out once and kept for the life of the pinned maps, so counters
/// keep counting when a reload moves or renumbers rules.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RuleKey {
    pub role: String,
    pub service: String,
    pub proto: String,
    pub port_start: u16,
    pub port_end: u16,
    /// "outbound" for an outbound row (appliance mode), empty for inbound:
    /// state files written before directions existed read back unchanged.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub direction: String,
}

impl RuleKey {
    fn of(rule: &EffectiveRule) -> RuleKey {
        RuleKey {
            role: rule.role.clone(),
            service: rule.service.clone(),
            proto: rule.protocol.as_str().to_string(),
            port_start: rule.port_start,
            port_end: rule.port_end,
            direction: match rule.direction {
                Direction::Inbound => String::new(),
                Direction::Outbound => Direction::Outbound.as_str().to_string(),
            },
        }
    }
}

/// Slot numbers of rules, persistent across reloads and restarts.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SlotRegistry {
    slots: BTreeMap<u16, RuleKey>,
    #[serde(skip)]
    by_key: HashMap<RuleKey, u16>,
}

impl SlotRegistry {
    pub(crate) fn from_slots(slots: BTreeMap<u16, RuleKey>) -> Self {
        let by_key = slots
            .range(..MEDIA_SLOT_FLAG)
            .map(|(s, k)| (k.clone(), *s))
            .collect();
        SlotRegistry { slots, by_key }
    }

    pub(crate) fn slot_of(&mut self, key: &RuleKey) -> Result<u16, PolicyError> {
        if let Some(s) = self.by_key.get(key) {
            return Ok(*s);
        }
        let next = self
            .slots
            .range(..MEDIA_SLOT_FLAG)
            .next_back()
            .map_or(1, |(s, _)| s + 1);
        if u32::from(next) >= MAX_RULE_SLOTS {
            return Err(PolicyError::TooManyRules);
        }
        self.slots.insert(next, key.clone());
        self.by_key.insert(key.clone(), next);
        Ok(next)
    }

    /// A `payload = "media"` rule's media index (which names its refusal
    /// counters), as `MEDIA_SLOT_FLAG | index`: kept in the same registry
    /// (and state file) as the rule slots, above them.
    pub(crate) fn media_slot_of(&mut self, key: &RuleKey) -> Result<u16, PolicyError> {
        let found = self
            .slots
            .range(MEDIA_SLOT_FLAG..)
            .find(|(_, k)| *k == key)
            .map(|(s, _)| *s);
        if let Some(s) = found {
            return Ok(s);
        }
        let next = self
            .slots
            .range(MEDIA_SLOT_FLAG..)
            .next_back()
            .map_or(MEDIA_SLOT_FLAG, |(s, _)| s + 1);
        if u32::from(next - MEDIA_SLOT_FLAG) >= MAX_MEDIA_RULES {
            return Err(PolicyError::TooManyMediaRules);
        }
        self.slots.insert(next, key.clone());
        Ok(next)
    }

    pub fn get(&self, slot: u16) -> Option<&RuleKey> {
        self.slots.get(&slot)
    }

    pub(crate) fn slots(&self) -> &BTreeMap<u16, RuleKey> {
        &self.slots
    }
}

/// One profile's port arrays for both protocols, ready to copy into the map.
pub struct CompiledProfile {
    /// Inbound rows: `PROTO_COUNT * BLOCKS_PER_PROTO` blocks, TCP first, then UDP.
    pub blocks: Vec<PortBlock>,
    /// Outbound rows in the same shape (appliance mode; all zero on a host).
    pub(crate) outbound: Vec<PortBlock>,
    pub rules: usize,
}

fn slot_in(blocks: &[PortBlock], proto: u32, port: u16) -> u16 {
    let b = &blocks[(proto * BLOCKS_PER_PROTO + u32::from(port) / PORTS_PER_BLOCK) as usize];
    b.slots[(u32::from(port) % PORTS_PER_BLOCK) as usize]
}

impl CompiledProfile {
    /// The rule slot (its counter) of (proto, destination port) for a packet
    /// to an address of this profile, 0 if none; see [`Self::names_peers`].
    pub fn slot(&self, proto: u32, port: u16) -> u16 {
        slot_in(&self.blocks, proto, port) & SLOT_MASK
    }

    /// Whether the inbound rule at (proto, port) names address sets: it
    /// passes only a source [`CompiledPolicy::peer_allowed`] admits.
    pub fn names_peers(&self, proto: u32, port: u16) -> bool {
        slot_in(&self.blocks, proto, port) & SLOT_PEERS != 0
    }

    /// The blocks of one direction (`DIR_INBOUND` or `DIR_OUTBOUND`).
    pub(crate) fn blocks_for(&self, direction: u32) -> &[PortBlock] {
        if direction == classifier_common::DIR_OUTBOUND {
            &self.outbound
        } else {
            &self.blocks
        }
    }
}

/// The full policy of one generation.
pub struct CompiledPolicy {
    pub profiles: Vec<CompiledProfile>,
    pub default_profile: u32,
    /// Prefixes and their profile (appliance mode: the box's own addresses
    /// among them, as host prefixes).
    pub prefixes: Vec<(Prefix, u32)>,
    /// Appliance mode: the box's own addresses, as host prefixes.
    pub(crate) local: Vec<Prefix>,
    /// Appliance mode: the leg each `--profile` prefix sits behind (`ProfilePrefix::leg`).
    pub(crate) prefix_legs: BTreeMap<Prefix, u32>,
    /// Bit p: profile p is a media host (`ResolvedProfile::media_path`).
    pub media_profiles: u32,
    /// Bit p: profile p has outbound rows.
    pub(crate) outbound_profiles: u32,
    pub flags: u32,
    /// `MGMT` trie entries, with the ports of every containing prefix folded in.
    pub mgmt: Vec<(Prefix, [u16; MGMT_PORTS])>,
    /// Every management port, for the packet path's cheap pre-check.
    pub(crate) mgmt_ports: [u16; MGMT_PORTS],
    /// Rules per role, for the `portguard_catalog_rules` gauge.
    pub(crate) rules_per_role: BTreeMap<String, usize>,
    /// The catalog's `reflection_ports`.
    pub(crate) reflection_ports: Vec<u16>,
    pub(crate) stun_budget: StunBudget,
    /// (rule slot, media index) of every `payload = "media"` rule in force.
    pub(crate) media_index: Vec<(u16, u32)>,
    /// The `PEERS` entries of each rule slot that names address sets, by
    /// slot: the prefixes of the union of its sets (admitted, `true`), and
    /// where an IPv6 prefix covers the IPv4-mapped range `::ffff:0:0/96`
    /// that range itself (not admitted, `false`, unless the sets hold
    /// `0.0.0.0/0`): the trie keys IPv4 peers as IPv4-mapped addresses, and
    /// an IPv6 `::/0` must not admit IPv4 peers that no IPv4 prefix names.
    /// No entries: no peer is admitted.
    pub peers: BTreeMap<u16, Vec<(Prefix, bool)>>,
}

impl CompiledPolicy {
    /// Whether a packet whose peer is `peer` passes by the rule at `slot`
    /// (one without sets passes every peer).
    pub fn peer_allowed(&self, slot: u16, peer: IpAddr) -> bool {
        let Ok(host) = Prefix::new(peer, if peer.is_ipv4() { 32 } else { 128 }) else {
            return false;
        };
        match self.peers.get(&(slot & SLOT_MASK)) {
            None => true,
            Some(entries) => entries
                .iter()
                .filter(|(p, _)| p.contains(&host))
                .max_by_key(|(p, _)| p.len)
                .is_some_and(|(_, admitted)| *admitted),
        }
    }
}

/// The maps' contents for `policy`; rules get their counter slots from
/// `registry` (new ones added).
pub fn compile(
    policy: &Resolved,
    registry: &mut SlotRegistry,
) -> Result<CompiledPolicy, PolicyError> {
    let appliance = policy.placement == Placement::Appliance;
    let mut prefixes: Vec<(Prefix, u32)> = policy
        .prefixes
        .iter()
        .map(|p| (p.prefix, p.profile))
        .collect();
    if let (true, Some(own)) = (appliance, policy.own) {
        // An address a --profile names exactly keeps that profile and is
        // still the box's own.
        for host in &policy.local {
            if !prefixes.iter().any(|(q, _)| q == host) {
                prefixes.push((*host, own));
            }
        }
        if prefixes.len() > classifier_common::LPM_ENTRIES as usize {
            return Err(PolicyError::Flag {
                flag: "--profile",
                message: format!(
                    "the profiles and the box's {} addresses need {} entries; the profile table holds {}",
                    policy.local.len(),
                    prefixes.len(),
                    classifier_common::LPM_ENTRIES
                ),
            });
        }
    }
    if policy.profiles.len() > MAX_PROFILES as usize {
        return Err(PolicyError::TooManyProfiles);
    }

    let mut profiles = Vec::new();
    let mut media_index = Vec::new();
    let media = policy.media_check != MediaCheck::Off;
    let mut media_profiles = 0u32;
    let mut outbound_profiles = 0u32;
    let mut rules_per_role = BTreeMap::new();
    let mut peers = BTreeMap::new();
    for w in shadowed_peers(policy) {
        log::warn!("{w}");
    }
    for (i, p) in policy.profiles.iter().enumerate() {
        // Inbound rows match the packet's destination. Outbound rows match
        // its source, which only an appliance sees on ingress: on a host
        // they are its own connections, whose replies the egress flow
        // recorder lets back in, and opening their ports inbound would let
        // in unsolicited packets.
        let blocks = port_blocks(
            policy,
            &p.inbound,
            Direction::Inbound,
            media,
            registry,
            &mut media_index,
            &mut peers,
        )?;
        let (outbound, has_outbound) = if appliance {
            let b = port_blocks(
                policy,
                &p.outbound,
                Direction::Outbound,
                media,
                registry,
                &mut media_index,
                &mut peers,
            )?;
            let any = b.iter().any(|x| x.slots.iter().any(|&s| s != 0));
            (b, any)
        } else {
            (
                vec![PortBlock::default(); (PROTO_COUNT * BLOCKS_PER_PROTO) as usize],
                false,
            )
        };
        if has_outbound {
            outbound_profiles |= 1 << i;
        }
        for r in p.inbound.iter().chain(&p.outbound) {
            *rules_per_role.entry(r.role.clone()).or_insert(0) += 1;
        }
        if p.media_path {
            media_profiles |= 1 << i;
        }
        profiles.push(CompiledProfile {
            blocks,
            outbound,
            rules: p.inbound.len() + p.outbound.len(),
        });
    }

    Ok(CompiledPolicy {
        profiles,
        default_profile: match (policy.own, appliance) {
            (Some(own), false) => own,
            _ => PROFILE_NONE,
        },
        prefix_legs: policy
            .prefixes
            .iter()
            .filter_map(|p| p.leg.map(|leg| (p.prefix, leg)))
            .collect(),
        prefixes,
        local: if appliance {
            policy.local.clone()
        } else {
            Vec::new()
        },
        media_profiles,
        outbound_profiles,
        flags: policy.flags(),
        mgmt: fold_mgmt(&policy.mgmt)?,
        mgmt_ports: mgmt_ports(&policy.mgmt)?,
        rules_per_role,
        reflection_ports: policy.reflection_ports.clone(),
        stun_budget: policy.stun_budget,
        media_index: {
            media_index.sort_unstable();
            media_index.dedup();
            media_index
        },
        peers: check_peer_entries(peers)?,
    })
}

/// The `PEERS` entries of a rule naming `sets` (see [`CompiledPolicy::peers`]).
fn peer_entries(policy: &Resolved, sets: &[String]) -> Vec<(Prefix, bool)> {
    let mut entries: Vec<(Prefix, bool)> = policy
        .peer_cidrs(sets)
        .iter()
        .filter_map(|c| Prefix::new(c.addr, c.len).ok())
        .map(|p| (p, true))
        .collect();
    // 0.0.0.0/0 is ::ffff:0:0/96 in the trie's space.
    if let Ok(mapped) = Prefix::new(IpAddr::from([0u8; 4]), 0)
        && !entries.iter().any(|(p, _)| *p == mapped)
        && entries.iter().any(|(p, _)| p.contains(&mapped))
    {
        entries.push((mapped, false));
    }
    entries
}

/// Both generations' entries must fit `PEERS` while a reload runs.
fn check_peer_entries(
    peers: BTreeMap<u16, Vec<(Prefix, bool)>>,
) -> Result<BTreeMap<u16, Vec<(Prefix, bool)>>, PolicyError> {
    let entries: usize = peers.values().map(Vec::len).sum();
    if entries > (PEER_ENTRIES / 2) as usize {
        return Err(PolicyError::Flag {
            flag: "--addresses",
            message: format!(
                "the rules that name address sets need {entries} peer entries (each prefix once per rule); the peer table holds {} per generation",
                PEER_ENTRIES / 2
            ),
        });
    }
    Ok(peers)
}

/// One direction's port arrays of a profile, each port holding the slot of
/// the rule that owns it, with `SLOT_PEERS` where that rule names address
/// sets (their entries go to `peers` under the slot); with `media`, a
/// `payload = "media"` rule's UDP ports hold its slot with
/// `MEDIA_SLOT_FLAG`, which the packet path checks, and the rule gets a
/// media index (in `media_index`).
fn port_blocks(
    policy: &Resolved,
    rules: &[EffectiveRule],
    direction: Direction,
    media: bool,
    registry: &mut SlotRegistry,
    media_index: &mut Vec<(u16, u32)>,
    peers: &mut BTreeMap<u16, Vec<(Prefix, bool)>>,
) -> Result<Vec<PortBlock>, PolicyError> {
    let mut blocks = vec![PortBlock::default(); (PROTO_COUNT * BLOCKS_PER_PROTO) as usize];
    for a in assign_ports_in(rules, direction) {
        let rule = &rules[a.rule];
        let key = RuleKey::of(rule);
        let rule_slot = registry.slot_of(&key)?;
        let mut slot = rule_slot;
        if !rule.peers.is_empty() {
            peers
                .entry(rule_slot)
                .or_insert_with(|| peer_entries(policy, &rule.peers));
            slot |= SLOT_PEERS;
        }
        let (slot, proto) = match a.protocol {
            Protocol::Tcp => (slot, PROTO_TCP),
            Protocol::Udp if media && rule.payload == Payload::Media => {
                // Its passes count under its slot, its refusals under its
                // media index's pseudo-reasons.
                let index = registry.media_slot_of(&key)? & !MEDIA_SLOT_FLAG;
                media_index.push((rule_slot, u32::from(index)));
                (slot | MEDIA_SLOT_FLAG, PROTO_UDP)
            }
            Protocol::Udp => (slot, PROTO_UDP),
        };
        for port in a.start..=a.end {
            let idx = proto * BLOCKS_PER_PROTO + u32::from(port) / PORTS_PER_BLOCK;
            blocks[idx as usize].slots[(u32::from(port) % PORTS_PER_BLOCK) as usize] = slot;
        }
    }
    Ok(blocks)
}

/// A port belongs to one rule, and only that rule's address sets are
/// checked there: where another rule of the same profile covers one of its
/// ports with other sets (or none), that rule's peers are refused on it
/// (`access-edge-external` and `hybrid-access-edge-external` on one
/// address, each naming its own set on TCP 5061, is the catalog's case).
/// One line per pair, with the remedy; `compile` logs them at every start
/// and reload.
pub(crate) fn shadowed_peers(policy: &Resolved) -> Vec<String> {
    let mut out = Vec::new();
    for p in &policy.profiles {
        for (rules, direction) in [
            (&p.inbound, Direction::Inbound),
            (&p.outbound, Direction::Outbound),
        ] {
            for a in assign_ports_in(rules, direction) {
                let owner = &rules[a.rule];
                if owner.peers.is_empty() {
                    continue;
                }
                for (i, other) in rules.iter().enumerate() {
                    if i == a.rule
                        || other.protocol != a.protocol
                        || other.direction != direction
                        || other.side != MatchSide::Destination
                        || other.port_end < a.start
                        || a.end < other.port_start
                        || other.peers == owner.peers
                    {
                        continue;
                    }
                    let theirs = if other.peers.is_empty() {
                        "any peer".to_string()
                    } else {
                        format!("the peers in {}", other.peers.join(", "))
                    };
                    out.push(format!(
                        "{} {} {}: {}'s rule \"{}\" (peers {}) owns the port, so {}'s rule \"{}\" does not admit {theirs} there; to admit them, add them to {}",
                        direction.as_str(),
                        a.protocol,
                        ports_text(a.start, a.end),
                        owner.role,
                        owner.service,
                        owner.peers.join(", "),
                        other.role,
                        other.service,
                        owner.peers.join(" or "),
                    ));
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// An LPM lookup returns only the longest match, so every prefix carries the
/// ports of the shorter prefixes that contain it.
fn fold_mgmt(mgmt: &[Mgmt]) -> Result<Vec<(Prefix, [u16; MGMT_PORTS])>, PolicyError> {
    let mut prefixes: Vec<Prefix> = mgmt.iter().map(|m| m.prefix).collect();
    prefixes.sort();
    prefixes.dedup();
    prefixes
        .into_iter()
        .map(|p| {
            let mut ports: Vec<u16> = mgmt
                .iter()
                .filter(|m| m.prefix.contains(&p))
                .map(|m| m.port)
                .collect();
            ports.sort_unstable();
            ports.dedup();
            if ports.len() > MGMT_PORTS {
                return Err(PolicyError::Flag {
                    flag: "--mgmt",
                    message: format!("{p} would allow more than {MGMT_PORTS} ports"),
                });
            }
            let mut out = [0u16; MGMT_PORTS];
            out[..ports.len()].copy_from_slice(&ports);
            Ok((p, out))
        })
        .collect()
}

fn mgmt_ports(mgmt: &[Mgmt]) -> Result<[u16; MGMT_PORTS], PolicyError> {
    let mut ports: Vec<u16> = mgmt.iter().map(|m| m.port).collect();
    ports.sort_unstable();
    ports.dedup();
    if ports.len() > MGMT_PORTS {
        return Err(PolicyError::Flag {
            flag: "--mgmt",
            message: format!("at most {MGMT_PORTS} distinct management ports"),
        });
    }
    let mut out = [0u16; MGMT_PORTS];
    out[..ports.len()].copy_from_slice(&ports);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::str::FromStr as _;

    use super::*;
    use crate::{
        catalog::Catalog,
        policy::{PolicySpec, resolve},
    };

    /// `compile` of what `spec` resolves to in `catalog`.
    fn compiled(
        catalog: &Catalog,
        spec: &PolicySpec,
        registry: &mut SlotRegistry,
    ) -> Result<CompiledPolicy, PolicyError> {
        compile(&resolve(catalog, spec)?, registry)
    }

    fn spec(roles: &[&str]) -> PolicySpec {
        PolicySpec {
            default_roles: Some(roles.iter().map(|s| s.to_string()).collect()),
            mgmt: Mgmt::defaults(),
            ..PolicySpec::default()
        }
    }

    #[test]
    fn front_end_allows_sip_and_media_and_nothing_else_checked() {
        let cat = Catalog::embedded();
        let mut reg = SlotRegistry::default();
        let p = compiled(&cat, &spec(&["front-end"]), &mut reg).expect("front-end compiles");
        let fe = &p.profiles[0];
        for (proto, port, allowed) in [
            (PROTO_TCP, 5061, true),
            (PROTO_TCP, 443, true),
            (PROTO_UDP, 50_000, true),
            (PROTO_UDP, 1434, true),
            (PROTO_TCP, 3389, false),
            (PROTO_UDP, 161, false),
            (PROTO_TCP, 1433, false),
            (PROTO_TCP, 22, false),
        ] {
            assert_eq!(
                fe.slot(proto, port) != 0,
                allowed,
                "proto {proto} port {port}"
            );
        }
        assert_eq!(p.media_profiles, 1, "front-end terminates audio");
    }

    /// `run --role R` on an Edge or reverse-proxy host: the inbound rows are
    /// open, the outbound-only ones are not (their replies come back through
    /// the flow recorder).
    #[test]
    fn perimeter_roles_open_only_their_inbound_rows() {
        let cat = Catalog::embedded();
        for (roles, cases) in [
            (
                &["access-edge-external"][..],
                &[
                    (PROTO_TCP, 443, true),
                    (PROTO_TCP, 5061, true),
                    (PROTO_TCP, 5269, true),
                    // Outbound only: CRL download and DNS queries.
                    (PROTO_TCP, 80, false),
                    (PROTO_TCP, 53, false),
                    (PROTO_UDP, 53, false),
                ][..],
            ),
            (
                &["av-edge-external"],
                &[
                    (PROTO_UDP, 3478, true),
                    (PROTO_TCP, 443, true),
                    // The media relay range is outbound only in the 2015 tables.
                    (PROTO_UDP, 50_000, false),
                    (PROTO_TCP, 59_999, false),
                    (PROTO_TCP, 5061, false),
                ],
            ),
            (
                &["webconf-edge-external"],
                &[(PROTO_TCP, 443, true), (PROTO_UDP, 3478, false)],
            ),
            (
                &["consolidated-edge-external"],
                &[
                    (PROTO_TCP, 443, true),
                    (PROTO_TCP, 5061, true),
                    (PROTO_UDP, 3478, true),
                    (PROTO_TCP, 80, false),
                    (PROTO_UDP, 50_000, false),
                ],
            ),
            (
                &["edge-internal"],
                &[
                    (PROTO_TCP, 5061, true),
                    (PROTO_TCP, 5062, true),
                    (PROTO_TCP, 8057, true),
                    (PROTO_TCP, 4443, true),
                    (PROTO_TCP, 23456, true),
                    (PROTO_TCP, 50_001, true),
                    (PROTO_TCP, 50_003, true),
                    (PROTO_UDP, 3478, true),
                    (PROTO_TCP, 50_004, false),
                ],
            ),
            (
                &["reverse-proxy-external"],
                &[
                    (PROTO_TCP, 443, true),
                    (PROTO_TCP, 80, true),
                    (PROTO_TCP, 4443, false),
                ],
            ),
            (
                // Every row is outbound: nothing is open inbound.
                &["reverse-proxy-internal"],
                &[
                    (PROTO_TCP, 4443, false),
                    (PROTO_TCP, 8080, false),
                    (PROTO_TCP, 443, false),
                ],
            ),
        ] {
            let mut reg = SlotRegistry::default();
            let p = compiled(&cat, &spec(roles), &mut reg)
                .unwrap_or_else(|e| panic!("{roles:?} must compile: {e}"));
            for &(proto, port, allowed) in cases {
                assert_eq!(
                    p.profiles[0].slot(proto, port) != 0,
                    allowed,
                    "{roles:?}: proto {proto} port {port} should be {}",
                    if allowed {
                        "open inbound"
                    } else {
                        "closed inbound"
                    }
                );
            }
        }
        // reverse-proxy-internal opens no port at all.
        let mut reg = SlotRegistry::default();
        let p = compiled(&cat, &spec(&["reverse-proxy-internal"]), &mut reg)
            .unwrap_or_else(|e| panic!("{e}"));
        let open = p.profiles[0]
            .blocks
            .iter()
            .flat_map(|b| b.slots.iter())
            .filter(|&&s| s != 0)
            .count();
        assert_eq!(open, 0, "reverse-proxy-internal has only outbound rows");
    }

    #[test]
    fn slots_survive_a_recompile() {
        let cat = Catalog::embedded();
        let mut reg = SlotRegistry::default();
        let a = compiled(&cat, &spec(&["front-end"]), &mut reg).expect("compiles");
        let b = compiled(&cat, &spec(&["front-end", "director"]), &mut reg).expect("compiles");
        let c = compiled(&cat, &spec(&["front-end"]), &mut reg).expect("compiles");
        assert_eq!(
            a.profiles[0].slot(PROTO_TCP, 5061),
            c.profiles[0].slot(PROTO_TCP, 5061)
        );
        assert_ne!(b.profiles[0].slot(PROTO_TCP, 5061), 0);
    }

    #[test]
    fn mgmt_folding() {
        let folded = fold_mgmt(&[
            "10.0.0.0/8".parse().expect("ok"),
            "10.1.0.0/16:2222".parse().expect("ok"),
        ])
        .expect("folds");
        let inner = folded.iter().find(|(p, _)| p.len == 112).expect("the /16");
        assert_eq!(
            &inner.1[..2],
            &[22, 2222],
            "the /16 inherits port 22 of the /8"
        );
    }

    #[test]
    fn profiles_pick_longest_prefix() {
        let cat = Catalog::embedded();
        let mut reg = SlotRegistry::default();
        let mut s = spec(&["front-end"]);
        s.profiles = vec![
            "198.18.0.0/16=director".parse().expect("ok"),
            "198.18.5.0/24=mediation".parse().expect("ok"),
        ];
        let p = compiled(&cat, &s, &mut reg).expect("compiles");
        // The packet path's pick: the longest prefix holding the address,
        // else the default profile.
        let profile_for = |ip: &str| {
            let host = Prefix::from_str(ip).expect("ip");
            p.prefixes
                .iter()
                .filter(|(q, _)| q.contains(&host))
                .max_by_key(|(q, _)| q.len)
                .map_or(p.default_profile, |(_, profile)| *profile)
        };
        assert_eq!(profile_for("198.18.5.7"), 2, "the /24 inside the /16");
        assert_eq!(profile_for("198.18.6.7"), 1, "the /16");
        assert_eq!(profile_for("198.19.0.1"), 0, "the default profile");
    }

    /// The largest catalog `check` lets through: 16,383 rules of one role,
    /// every one nested in the previous, compiles at once. (The one-rule-per-port
    /// assignment used to compare every rule at every boundary: seconds.)
    #[test]
    fn a_catalog_that_fills_every_counter_slot_compiles_quickly() {
        use std::fmt::Write as _;
        let n = crate::catalog::MAX_RULE_ENTRIES;
        let mut text =
            String::from("version = 1\n[[role]]\nid = \"a\"\nlabel = \"A\"\ntable = \"server\"\n");
        for i in 0..n {
            let _ = write!(
                text,
                "[[rule]]\nrole = \"a\"\nservice = \"s{i}\"\nprotocol = \"tcp\"\nports = \"{}-{}\"\ntransport = \"T\"\ntable = \"server\"\nnote = \"\"\n",
                i + 1,
                65_535 - i
            );
        }
        let (cat, _) =
            Catalog::parse(&text, "full.toml").unwrap_or_else(|e| panic!("{n} rules:\n{e}"));
        let started = std::time::Instant::now();
        let mut reg = SlotRegistry::default();
        let p = compiled(&cat, &spec(&["a"]), &mut reg).expect("compile");
        let took = started.elapsed();
        assert!(
            took < std::time::Duration::from_secs(2),
            "compiling took {took:?}"
        );
        assert_eq!(
            reg.slots().len(),
            n,
            "every rule owns a port, so every rule has a slot"
        );
        // The narrowest range wins: the innermost rule owns its two ports.
        let innermost = reg
            .get(p.profiles[0].slot(PROTO_TCP, 16_383))
            .map(|k| k.service.clone());
        assert_eq!(innermost.as_deref(), Some("s16382"));
        assert_ne!(
            p.profiles[0].slot(PROTO_TCP, 65_535),
            0,
            "the outermost rule"
        );
    }
}
