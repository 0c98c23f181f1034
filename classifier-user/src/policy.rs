//! From a catalog and the `run` flags to the contents of the BPF maps.
//!
//! Compiling is pure (no syscalls), so a reload can build and check the whole
//! new policy before it touches anything the packet path reads.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::{IpAddr, Ipv6Addr},
    str::FromStr,
};

use classifier_common::{
    Addr, BLOCKS_PER_PROTO, FLAG_APPLIANCE, FLAG_DROP_ECHO, FLAG_DROP_IPSEC_MEDIA, FLAG_MONITOR,
    MAX_PROFILES, MAX_RULE_SLOTS, MGMT_PORTS, PEER_ENTRIES, PORTS_PER_BLOCK, PROFILE_NONE,
    PROTO_COUNT, PROTO_TCP, PROTO_UDP, PortBlock, SLOT_MASK, SLOT_PEERS,
};
use serde::{Deserialize, Serialize};

use crate::catalog::{
    AddressesArg, Catalog, CatalogError, Direction, EffectiveRule, Protocol, assign_ports_in,
};

/// Roles whose rules open the audio/video media ranges: a host running one of
/// them sits on a media path, where the server ports document's IPsec exception
/// table says IPsec must be off.
const MEDIA_ROLES: [&str; 3] = ["all-internal-servers", "front-end-mediation", "mediation"];

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("{flag}: {message}")]
    Flag { flag: &'static str, message: String },
    #[error("more than {MAX_PROFILES} profiles (the default counts as one)")]
    TooManyProfiles,
    #[error("more than {} distinct rules; the counter table is full", MAX_RULE_SLOTS - 1)]
    TooManyRules,
}

/// An IPv4 or IPv6 prefix, stored as an IPv4-mapped IPv6 prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Prefix {
    pub addr: Addr,
    /// Length in the IPv6 (mapped) space: an IPv4 /24 is 96 + 24.
    pub len: u8,
}

impl Prefix {
    pub fn new(ip: IpAddr, len: u8) -> Result<Self, String> {
        let (v6, len) = match ip {
            IpAddr::V4(v4) if len <= 32 => (v4.to_ipv6_mapped(), len + 96),
            IpAddr::V6(v6) if len <= 128 => (v6, len),
            _ => return Err(format!("prefix length /{len} is too long for {ip}")),
        };
        let mut addr = v6.octets();
        mask(&mut addr, len);
        Ok(Prefix { addr, len })
    }

    /// Whether `self` contains `other` (is the same or shorter and matches).
    pub fn contains(&self, other: &Prefix) -> bool {
        if other.len < self.len {
            return false;
        }
        let mut a = other.addr;
        mask(&mut a, self.len);
        a == self.addr
    }

    pub fn ip(&self) -> IpAddr {
        let v6 = Ipv6Addr::from(self.addr);
        match v6.to_ipv4_mapped() {
            Some(v4) if self.len >= 96 => IpAddr::V4(v4),
            _ => IpAddr::V6(v6),
        }
    }

    pub fn display_len(&self) -> u8 {
        if matches!(self.ip(), IpAddr::V4(_)) {
            self.len - 96
        } else {
            self.len
        }
    }
}

fn mask(addr: &mut Addr, len: u8) {
    for (i, byte) in addr.iter_mut().enumerate() {
        let bits = (len as usize).saturating_sub(i * 8).min(8);
        *byte &= if bits == 0 { 0 } else { 0xffu8 << (8 - bits) };
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.ip(), self.display_len())
    }
}

impl FromStr for Prefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (s, None),
        };
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| format!("`{ip}` is not an IP address"))?;
        let len = match len {
            Some(l) => l
                .parse::<u8>()
                .map_err(|_| format!("`{l}` is not a prefix length"))?,
            None if ip.is_ipv4() => 32,
            None => 128,
        };
        Prefix::new(ip, len)
    }
}

/// `--mgmt CIDR[:PORT]`: TCP to PORT (22 by default) from CIDR always passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mgmt {
    pub prefix: Prefix,
    pub port: u16,
}

pub(crate) const DEFAULT_MGMT_PORT: u16 = 22;

impl Mgmt {
    /// The default lockout guard: SSH from anywhere, both families.
    pub fn defaults() -> Vec<Mgmt> {
        ["0.0.0.0/0", "::/0"]
            .iter()
            .filter_map(|p| p.parse().ok())
            .map(|prefix| Mgmt {
                prefix,
                port: DEFAULT_MGMT_PORT,
            })
            .collect()
    }
}

impl FromStr for Mgmt {
    type Err = String;
    /// `10.0.0.0/8`, `10.0.0.0/8:2222`, `2001:db8::/32`, `[2001:db8::/32]:2222`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (cidr, port) = if let Some(rest) = s.strip_prefix('[') {
            let (cidr, tail) = rest.split_once(']').ok_or("missing `]`")?;
            let port = match tail.strip_prefix(':') {
                Some(p) => Some(p),
                None if tail.is_empty() => None,
                None => return Err(format!("unexpected `{tail}` after `]`")),
            };
            (cidr, port)
        } else if s.matches(':').count() == 1 {
            let (c, p) = s.split_once(':').ok_or("unreachable")?;
            (c, Some(p))
        } else {
            (s, None)
        };
        let port = match port {
            Some(p) => match p.parse::<u16>() {
                Ok(0) | Err(_) => return Err(format!("`{p}` is not a port (1-65535)")),
                Ok(p) => p,
            },
            None => DEFAULT_MGMT_PORT,
        };
        Ok(Mgmt {
            prefix: cidr.parse()?,
            port,
        })
    }
}

/// `--profile CIDR=ROLE[,ROLE]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProfileArg {
    pub prefix: Prefix,
    pub roles: Vec<String>,
}

impl FromStr for ProfileArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (cidr, roles) = s.split_once('=').ok_or("expected CIDR=ROLE[,ROLE]")?;
        let roles = split_roles(roles);
        if roles.is_empty() {
            return Err("no role after `=`".into());
        }
        Ok(ProfileArg {
            prefix: cidr.parse()?,
            roles,
        })
    }
}

pub(crate) fn split_roles(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(String::from)
        .collect()
}

/// Everything `run` was told about the policy, apart from the catalog.
#[derive(Clone, Debug, Default)]
pub struct PolicySpec {
    /// `--role`: the default profile, or `None` to drop packets to addresses
    /// outside every `--profile`.
    pub default_roles: Option<Vec<String>>,
    pub profiles: Vec<ProfileArg>,
    pub mgmt: Vec<Mgmt>,
    pub monitor: bool,
    pub drop_echo: bool,
    pub drop_ipsec_on_media: bool,
    pub client_media: Option<(u16, u16)>,
    /// Appliance mode: profiles match sources against outbound rows too,
    /// `default_roles` are the roles of the box's own addresses, and the
    /// lockout guard covers only those.
    pub appliance: bool,
    /// Appliance mode: every address configured on the box (kept current by
    /// the daemon from netlink).
    pub local_addrs: Vec<IpAddr>,
    /// Appliance mode: the leg (its index in `--iface` order) each
    /// `--profile` prefix sits behind, from the kernel's route to it (kept
    /// current by the daemon). A profile's outbound rows apply only to
    /// packets that arrive on that leg; a prefix missing here sits behind
    /// no leg, and its outbound rows apply nowhere.
    pub profile_legs: BTreeMap<Prefix, u32>,
    /// `--addresses ID=CIDR,...`: these sets' contents replace the
    /// catalog's, for this run and every reload of it.
    pub addresses: Vec<AddressesArg>,
}

impl PolicySpec {
    pub(crate) fn flags(&self) -> u32 {
        let mut f = 0;
        if self.monitor {
            f |= FLAG_MONITOR;
        }
        if self.drop_echo {
            f |= FLAG_DROP_ECHO;
        }
        if self.drop_ipsec_on_media {
            f |= FLAG_DROP_IPSEC_MEDIA;
        }
        if self.appliance {
            f |= FLAG_APPLIANCE;
        }
        f
    }
}

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
            proto: proto_name(rule.protocol).to_string(),
            port_start: rule.port_start,
            port_end: rule.port_end,
            direction: match rule.direction {
                Direction::Inbound => String::new(),
                Direction::Outbound => Direction::Outbound.as_str().to_string(),
            },
        }
    }
}

pub(crate) fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
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
        let by_key = slots.iter().map(|(s, k)| (k.clone(), *s)).collect();
        SlotRegistry { slots, by_key }
    }

    pub(crate) fn slot_of(&mut self, key: &RuleKey) -> Result<u16, PolicyError> {
        if let Some(s) = self.by_key.get(key) {
            return Ok(*s);
        }
        let next = self.slots.keys().next_back().map_or(1, |s| s + 1);
        if u32::from(next) >= MAX_RULE_SLOTS {
            return Err(PolicyError::TooManyRules);
        }
        self.slots.insert(next, key.clone());
        self.by_key.insert(key.clone(), next);
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
    /// passes only a source in [`CompiledPolicy::peers`] of its slot.
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
    /// Appliance mode: the leg each prefix sits behind (`PolicySpec::profile_legs`).
    pub(crate) prefix_legs: BTreeMap<Prefix, u32>,
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

pub fn compile(
    catalog: &Catalog,
    spec: &PolicySpec,
    registry: &mut SlotRegistry,
) -> Result<CompiledPolicy, PolicyError> {
    let catalog = match spec.client_media {
        Some((start, end)) => catalog.with_client_media(start, end)?,
        None => catalog.clone(),
    };
    let catalog = if spec.addresses.is_empty() {
        catalog
    } else {
        let (catalog, warnings) = catalog.with_addresses(&spec.addresses)?;
        // A set the flag empties closes its rules: said at every start and
        // reload, as `catalog check` says it of an empty set in the file.
        for w in warnings {
            log::warn!("{w}");
        }
        catalog
    };
    let mut role_sets: Vec<Vec<String>> = Vec::new();
    let default_profile = match (&spec.default_roles, spec.appliance) {
        // An appliance's --role are the roles of its own addresses (added
        // below as host prefixes); anything else is a forwarded packet that
        // a --profile must cover.
        (_, true) => PROFILE_NONE,
        (Some(roles), false) => {
            role_sets.push(roles.clone());
            0
        }
        (None, false) => PROFILE_NONE,
    };
    let mut prefixes = Vec::new();
    for p in &spec.profiles {
        // Profiles with the same roles share their arrays.
        let idx = match role_sets.iter().position(|r| *r == p.roles) {
            Some(i) => i,
            None => {
                role_sets.push(p.roles.clone());
                role_sets.len() - 1
            }
        };
        if prefixes.iter().any(|(q, _): &(Prefix, u32)| *q == p.prefix) {
            return Err(PolicyError::Flag {
                flag: "--profile",
                message: format!("{} is given twice", p.prefix),
            });
        }
        prefixes.push((p.prefix, idx as u32));
    }
    let mut local = Vec::new();
    if spec.appliance {
        // The box's own addresses: --role's rows (none without --role: the
        // essentials and the lockout guard only). An address a --profile
        // names exactly keeps that profile and is still the box's own.
        let roles = spec.default_roles.clone().unwrap_or_default();
        let idx = match role_sets.iter().position(|r| *r == roles) {
            Some(i) => i,
            None => {
                role_sets.push(roles);
                role_sets.len() - 1
            }
        };
        let mut addrs: Vec<Prefix> = spec
            .local_addrs
            .iter()
            .filter_map(|ip| Prefix::new(*ip, if ip.is_ipv4() { 32 } else { 128 }).ok())
            .collect();
        addrs.sort();
        addrs.dedup();
        for host in addrs {
            if !prefixes.iter().any(|(q, _)| *q == host) {
                prefixes.push((host, idx as u32));
            }
            local.push(host);
        }
        if prefixes.len() > classifier_common::LPM_ENTRIES as usize {
            return Err(PolicyError::Flag {
                flag: "--profile",
                message: format!(
                    "the profiles and the box's {} addresses need {} entries; the profile table holds {}",
                    local.len(),
                    prefixes.len(),
                    classifier_common::LPM_ENTRIES
                ),
            });
        }
    }
    if role_sets.len() > MAX_PROFILES as usize {
        return Err(PolicyError::TooManyProfiles);
    }
    if role_sets.is_empty() {
        return Err(PolicyError::Flag {
            flag: "--role",
            message: "give --role, or at least one --profile CIDR=ROLE".into(),
        });
    }

    let mut profiles = Vec::new();
    let mut media_profiles = 0u32;
    let mut outbound_profiles = 0u32;
    let mut rules_per_role = BTreeMap::new();
    let mut peers = BTreeMap::new();
    for (i, roles) in role_sets.iter().enumerate() {
        let rules = catalog.effective_rules(roles)?;
        // Inbound rows match the packet's destination. Outbound rows match
        // its source, which only an appliance sees on ingress: on a host
        // they are its own connections, whose replies the egress flow
        // recorder lets back in, and opening their ports inbound would let
        // in unsolicited packets.
        let blocks = port_blocks(&catalog, &rules, Direction::Inbound, registry, &mut peers)?;
        let (outbound, has_outbound) = if spec.appliance {
            let b = port_blocks(&catalog, &rules, Direction::Outbound, registry, &mut peers)?;
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
        for r in &rules {
            *rules_per_role.entry(r.role.clone()).or_insert(0) += 1;
        }
        if rules.iter().any(|r| MEDIA_ROLES.contains(&r.role.as_str())) {
            media_profiles |= 1 << i;
        }
        profiles.push(CompiledProfile {
            blocks,
            outbound,
            rules: rules.len(),
        });
    }

    Ok(CompiledPolicy {
        profiles,
        default_profile,
        prefix_legs: spec
            .profile_legs
            .iter()
            .filter(|(p, _)| prefixes.iter().any(|(q, _)| q == *p))
            .map(|(p, l)| (*p, *l))
            .collect(),
        prefixes,
        local,
        media_profiles,
        outbound_profiles,
        flags: spec.flags(),
        mgmt: fold_mgmt(&spec.mgmt)?,
        mgmt_ports: mgmt_ports(&spec.mgmt)?,
        rules_per_role,
        peers: check_peer_entries(peers)?,
    })
}

/// The `PEERS` entries of a rule naming `sets` (see [`CompiledPolicy::peers`]).
fn peer_entries(catalog: &Catalog, sets: &[String]) -> Vec<(Prefix, bool)> {
    let mut entries: Vec<(Prefix, bool)> = catalog
        .peer_cidrs(sets)
        .iter()
        .filter_map(|c| Prefix::new(c.addr, c.len).ok())
        .map(|p| (p, true))
        .collect();
    // 0.0.0.0/0 is ::ffff:0:0/96 in the trie's space.
    let mapped = Prefix::new(IpAddr::from([0u8; 4]), 0);
    if let Ok(mapped) = mapped
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
/// sets; their prefixes go to `peers` under the slot.
fn port_blocks(
    catalog: &Catalog,
    rules: &[EffectiveRule],
    direction: Direction,
    registry: &mut SlotRegistry,
    peers: &mut BTreeMap<u16, Vec<(Prefix, bool)>>,
) -> Result<Vec<PortBlock>, PolicyError> {
    let mut blocks = vec![PortBlock::default(); (PROTO_COUNT * BLOCKS_PER_PROTO) as usize];
    for a in assign_ports_in(rules, direction) {
        let rule = &rules[a.rule];
        let mut slot = registry.slot_of(&RuleKey::of(rule))?;
        if !rule.peers.is_empty() {
            peers
                .entry(slot)
                .or_insert_with(|| peer_entries(catalog, &rule.peers));
            slot |= SLOT_PEERS;
        }
        let proto = match a.protocol {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
        };
        for port in a.start..=a.end {
            let idx = proto * BLOCKS_PER_PROTO + u32::from(port) / PORTS_PER_BLOCK;
            blocks[idx as usize].slots[(u32::from(port) % PORTS_PER_BLOCK) as usize] = slot;
        }
    }
    Ok(blocks)
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

/// Parses `A-B` for `--client-media-ports`.
pub fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let a: u16 = a
        .trim()
        .parse()
        .map_err(|_| format!("`{a}` is not a port"))?;
    let b: u16 = b
        .trim()
        .parse()
        .map_err(|_| format!("`{b}` is not a port"))?;
    if a == 0 || a > b {
        return Err(format!(
            "`{s}` is not a range START-END with 1 <= START <= END <= 65535"
        ));
    }
    Ok((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let p = compile(&cat, &spec(&["front-end"]), &mut reg).expect("front-end compiles");
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
            let p = compile(&cat, &spec(roles), &mut reg)
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
        let p = compile(&cat, &spec(&["reverse-proxy-internal"]), &mut reg)
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
        let a = compile(&cat, &spec(&["front-end"]), &mut reg).expect("compiles");
        let b = compile(&cat, &spec(&["front-end", "director"]), &mut reg).expect("compiles");
        let c = compile(&cat, &spec(&["front-end"]), &mut reg).expect("compiles");
        assert_eq!(
            a.profiles[0].slot(PROTO_TCP, 5061),
            c.profiles[0].slot(PROTO_TCP, 5061)
        );
        assert_ne!(b.profiles[0].slot(PROTO_TCP, 5061), 0);
    }

    #[test]
    fn mgmt_parsing_and_folding() {
        let m: Mgmt = "10.0.0.0/8".parse().expect("v4 cidr");
        assert_eq!((m.prefix.len, m.port), (104, 22));
        let m: Mgmt = "10.1.0.0/16:2222".parse().expect("v4 cidr with port");
        assert_eq!(m.port, 2222);
        let m: Mgmt = "[2001:db8::/32]:2222".parse().expect("v6 with port");
        assert_eq!((m.prefix.len, m.port), (32, 2222));
        let m: Mgmt = "2001:db8::/32".parse().expect("v6 without port");
        assert_eq!(m.port, 22);
        assert!("10.0.0.0/8:0".parse::<Mgmt>().is_err());
        assert!("10.0.0.0/33".parse::<Mgmt>().is_err());
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
        let p = compile(&cat, &s, &mut reg).expect("compiles");
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
        let p = compile(&cat, &spec(&["a"]), &mut reg).unwrap_or_else(|e| panic!("compile: {e}"));
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

    #[test]
    fn port_range_flag() {
        assert_eq!(parse_port_range("50000-50019"), Ok((50_000, 50_019)));
        assert!(parse_port_range("0-10").is_err());
        assert!(parse_port_range("20-10").is_err());
        assert!(parse_port_range("x").is_err());
    }
}

#[cfg(test)]
#[path = "policy_peers_tests.rs"]
mod peers_tests;
