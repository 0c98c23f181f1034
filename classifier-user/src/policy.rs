//! From a catalog and the `run` flags to the contents of the BPF maps, in
//! two steps: [`resolve`] reads the catalog once for what the flags ask
//! (each profile's roles, prefixes, legs, inbound and outbound rules, and
//! whether it sits on a media path; the management rules; the placement and
//! the other flags) into a [`Resolved`] policy, which [`compile`] turns into
//! the maps and `catalog::nft` renders as an nftables ruleset.
//!
//! Both steps are pure (no syscalls), so a reload can build and check the
//! whole new policy before it touches anything the packet path reads.

mod compile;
mod resolve;

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, Ipv6Addr},
    str::FromStr,
};

use classifier_common::{Addr, MAX_PROFILES, MAX_RULE_SLOTS, media::MAX_MEDIA_RULES};
use serde::{Deserialize, Serialize};

pub use self::{
    compile::{CompiledPolicy, CompiledProfile, RuleKey, SlotRegistry, compile},
    resolve::{ProfilePrefix, Resolved, ResolvedProfile, resolve},
};
use crate::catalog::{AddressesArg, CatalogError};

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
    #[error(
        "more than {MAX_MEDIA_RULES} distinct `payload = \"media\"` rules; their counter table is full"
    )]
    TooManyMediaRules,
}

/// `run --media-check`: what the `payload = "media"` rules do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MediaCheck {
    /// Refuse what is not media (the default).
    #[default]
    Enforce,
    /// Count it as `would_drop` and let it pass, whatever `--mode` says.
    Monitor,
    /// No check: the rules compile as if they had no `payload` key.
    Off,
}

/// `run --stun-rate`, `--stun-burst`, `--stun-net-rate`, `--stun-net-burst`:
/// STUN requests a second and burst per source prefix (an IPv4 address, an
/// IPv6 /64) and per subnet (an IPv4 /16, an IPv6 /48). 0 = no limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StunBudget {
    pub source_rate: u32,
    pub source_burst: u32,
    pub net_rate: u32,
    pub net_burst: u32,
}

impl Default for StunBudget {
    fn default() -> Self {
        use classifier_common::media::*;
        StunBudget {
            source_rate: STUN_SOURCE_RATE_DEFAULT,
            source_burst: STUN_SOURCE_BURST_DEFAULT,
            net_rate: STUN_NET_RATE_DEFAULT,
            net_burst: STUN_NET_BURST_DEFAULT,
        }
    }
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

    /// `--mgmt` as `run` and `catalog export` read it: `extra` added to the
    /// default guard, unless `--no-default-mgmt` left it out.
    pub fn with_default(default: bool, extra: &[Mgmt]) -> Vec<Mgmt> {
        let mut all = if default {
            Mgmt::defaults()
        } else {
            Vec::new()
        };
        all.extend_from_slice(extra);
        all
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

/// Where the policy applies: the one notion of "appliance mode" (the maps'
/// `FLAG_APPLIANCE` is derived from it in [`Resolved::flags`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Placement {
    /// Packets to the host's own addresses: `--role` is the default profile,
    /// `--profile` picks the roles by destination, outbound rows are the
    /// host's own connections (not filtered).
    #[default]
    Host,
    /// A box forwarding between its legs: profiles match sources against
    /// their outbound rows too, `--role` are the roles of the box's own
    /// addresses, and the lockout guard covers only those.
    Appliance,
}

/// Everything `run` was told about the policy, apart from the catalog.
#[derive(Clone, Debug, Default)]
pub struct PolicySpec {
    /// `--role`: the default profile, or `None` to drop packets to addresses
    /// outside every `--profile`. In appliance mode, the roles of the box's
    /// own addresses.
    pub default_roles: Option<Vec<String>>,
    pub profiles: Vec<ProfileArg>,
    pub mgmt: Vec<Mgmt>,
    pub monitor: bool,
    pub drop_echo: bool,
    pub drop_ipsec_on_media: bool,
    pub client_media: Option<(u16, u16)>,
    pub placement: Placement,
    /// Appliance mode: every address configured on the box (kept current by
    /// the daemon from netlink).
    pub local_addrs: Vec<IpAddr>,
    pub media_check: MediaCheck,
    pub stun_budget: StunBudget,
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

    #[test]
    fn mgmt_parsing() {
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
        assert_eq!(
            Mgmt::with_default(false, &[m]),
            [m],
            "--no-default-mgmt keeps only what is given"
        );
        assert_eq!(
            Mgmt::with_default(true, &[m])[2..],
            [m],
            "the default guard comes first"
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
