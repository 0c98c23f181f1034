//! The routed edge lab: an internet namespace, an appliance namespace that
//! forwards between its two legs with portguard on both, and a DMZ namespace
//! holding the Edge Server's external addresses and a reverse proxy. Allowed
//! and forbidden traffic over real sockets in both directions, IPv4 and IPv6,
//! real protocol peers (sipp, coturn, curl), and portguard's per-leg counters
//! checked against what the receivers saw. `cargo xtask run -- --scenario
//! edge` prints it; the `lab` test binary's `edge::` tests assert on it.
//!
//! One module per concern: the addresses, cases and topology here;
//! `traffic` (the socket cases and the media relay), `peers` (the servers
//! and clients of sipp, coturn, curl), `report` (what arrived, and the
//! per-leg counter checks). [`attack`] is another scenario on the same
//! topology: the attacks of issue 22 (`--scenario attack`, the `attack::`
//! tests).

pub mod attack;
mod peers;
mod report;
mod traffic;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    sync::atomic::AtomicBool,
};

use anyhow::Result;

use self::{
    peers::run_peers,
    traffic::{media_relay, socket_cases},
};
pub use self::{
    report::{Report, Row},
    traffic::MEDIA_ROWS,
};
use super::{METRICS, Proto, check_interrupted, daemon::Session, send::Payload};
use crate::netns::{NetNs, addr, sysctl, veth_pair};

/// The appliance's internet-side leg.
pub const EXT_IF: &str = "pgext0";
/// The appliance's DMZ-side leg.
pub const DMZ_IF: &str = "pgdmz0";
/// The internet namespace's end of the link to the appliance.
const INET_IF: &str = "pginet0";
/// The DMZ namespace's end of the link to the appliance.
const DMZ_HOST_IF: &str = "pgsrv0";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

pub const FAMILIES: [Family; 2] = [Family::V4, Family::V6];

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

/// An address in the lab: which namespace holds it, and what it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Host {
    /// A client, and the one federation partner (the `federation-partners`
    /// set holds this address only: closed federation).
    Internet,
    /// Another internet address, in no address set: who must not federate.
    Stranger,
    /// An internet address standing in for Microsoft 365 (the
    /// `microsoft-365` set holds it only): the real ranges are outside the
    /// lab's 198.18.0.0/15 and 2001:db8::/32.
    Microsoft365,
    /// The appliance's own address on its internet leg.
    Appliance,
    AccessEdge,
    WebConf,
    AvEdge,
    ReverseProxy,
}

/// Which namespace a host lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Internet,
    Appliance,
    Dmz,
}

impl Host {
    pub fn name(self) -> &'static str {
        match self {
            Host::Internet => "internet",
            Host::Stranger => "stranger",
            Host::Microsoft365 => "Microsoft 365",
            Host::Appliance => "appliance",
            Host::AccessEdge => "Access Edge",
            Host::WebConf => "Web Conf Edge",
            Host::AvEdge => "A/V Edge",
            Host::ReverseProxy => "reverse proxy",
        }
    }

    /// (subnet, host): 198.18.SUBNET.HOST and 2001:db8:SUBNET::HOST (hex
    /// digits read as written, so the two look alike).
    fn numbers(self) -> (u8, u8) {
        match self {
            Host::Internet => (1, 2),
            Host::Stranger => (1, 3),
            Host::Microsoft365 => (1, 0x65),
            Host::Appliance => (1, 1),
            Host::AccessEdge => (2, 0x10),
            Host::WebConf => (2, 0x11),
            Host::AvEdge => (2, 0x12),
            Host::ReverseProxy => (2, 0x20),
        }
    }

    pub fn ip(self, family: Family) -> IpAddr {
        let (subnet, host) = self.numbers();
        match family {
            Family::V4 => IpAddr::V4(Ipv4Addr::new(198, 18, subnet, decimal(host))),
            Family::V6 => IpAddr::V6(Ipv6Addr::new(
                0x2001,
                0xdb8,
                u16::from(subnet),
                0,
                0,
                0,
                0,
                u16::from(host),
            )),
        }
    }

    fn side(self) -> Side {
        match self {
            Host::Internet | Host::Stranger | Host::Microsoft365 => Side::Internet,
            Host::Appliance => Side::Appliance,
            Host::AccessEdge | Host::WebConf | Host::AvEdge | Host::ReverseProxy => Side::Dmz,
        }
    }
}

/// 0x10 → 10, 0x20 → 20: the IPv4 address spells the IPv6 one's last group.
fn decimal(hex_spelled: u8) -> u8 {
    (hex_spelled >> 4) * 10 + (hex_spelled & 0xf)
}

/// The DMZ addresses and the role each is protected as (one `--profile`
/// per address and family). The attack scenario runs with these; the edge
/// lab adds [`HYBRID_ROLES`].
pub const PROFILES: [(Host, &str); 4] = [
    (Host::AccessEdge, "access-edge-external"),
    (Host::WebConf, "webconf-edge-external"),
    (Host::AvEdge, "av-edge-external"),
    (Host::ReverseProxy, "reverse-proxy-external"),
];

/// The hybrid roles the edge lab gives beside the Edge services' own, as
/// docs/perimeter.md tells an operator to: the Access Edge's SIP rows and
/// the A/V Edge's STUN and media rows to and from Microsoft 365.
pub const HYBRID_ROLES: [(Host, &str); 2] = [
    (Host::AccessEdge, "hybrid-access-edge-external"),
    (Host::AvEdge, "hybrid-av-edge-external"),
];

/// The roles of a DMZ address in the edge lab: its [`PROFILES`] role and
/// its [`HYBRID_ROLES`] role, if any (`--profile CIDR=ROLE[,ROLE]`).
pub fn lab_roles(host: Host) -> String {
    PROFILES
        .iter()
        .chain(&HYBRID_ROLES)
        .filter(|(h, _)| *h == host)
        .map(|(_, role)| *role)
        .collect::<Vec<_>>()
        .join(",")
}

/// The address sets the edge lab fills (`run --addresses ID=CIDR,...`):
/// closed federation with the one partner, and the stand-in for Microsoft
/// 365's ranges.
pub const ADDRESS_SETS: [(&str, Host); 2] = [
    ("federation-partners", Host::Internet),
    ("microsoft-365", Host::Microsoft365),
];

/// Why portguard drops a case's traffic: the `service` label of its drop
/// counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No rule of the profile names the port.
    Port,
    /// A rule names the port, and its address sets leave the peer out.
    Peer,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Port => "port_not_allowed",
            Refusal::Peer => "peer_not_allowed",
        }
    }
}

/// What a case's traffic is to meet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    Allowed,
    Forbidden(Refusal),
    /// Allowed by the catalog's rows and nft's export of them, dropped by
    /// portguard today for the reason given (the text says why). The row
    /// holds while portguard still drops it, so that the day it passes the
    /// lab says so and the case becomes `Allowed`.
    Gap(Refusal, &'static str),
}

impl Expect {
    /// Whether the traffic arrives through portguard today.
    pub fn delivered(self) -> bool {
        self == Expect::Allowed
    }

    /// The reason of the drop counters that count it, if it is dropped.
    pub fn refusal(self) -> Option<Refusal> {
        match self {
            Expect::Allowed => None,
            Expect::Forbidden(r) | Expect::Gap(r, _) => Some(r),
        }
    }
}

/// One kind of traffic sent over real sockets: UDP datagrams, or a TCP
/// connection attempt that writes a few messages when it connects.
#[derive(Debug)]
pub struct Case {
    pub proto: Proto,
    pub from: Host,
    pub to: Host,
    pub port: u16,
    pub expect: Expect,
    pub payload: Payload,
    pub what: &'static str,
}

const fn case(
    proto: Proto,
    from: Host,
    to: Host,
    port: u16,
    expect: Expect,
    what: &'static str,
) -> Case {
    Case {
        proto,
        from,
        to,
        port,
        expect,
        payload: Payload::Rtp,
        what,
    }
}

impl Case {
    const fn carrying(mut self, payload: Payload) -> Case {
        self.payload = payload;
        self
    }
}

/// A TCP port of the A/V Edge's media range: an inbound row of
/// `hybrid-av-edge-external` only (`av-edge-external` relays media outbound).
pub const HYBRID_MEDIA_PORT: u16 = 50_040;

/// Why SIP between the Access Edge and Microsoft 365 is a [`Expect::Gap`].
const HYBRID_SIP_GAP: &str = "access-edge-external's 5061 row (federation-partners) and hybrid-access-edge-external's (microsoft-365) name the same port; the packet path gives it to the earlier row alone (docs/catalog.md, Overlap precedence), nft's export accepts either";

/// The socket cases, run in each family. The media relay (out of the A/V
/// Edge, the answers, and unsolicited media) is separate: it needs an echo.
pub const CASES: [Case; 21] = {
    use Expect::{Allowed, Forbidden, Gap};
    use Host::{
        AccessEdge, Appliance, AvEdge, Internet, Microsoft365, ReverseProxy, Stranger, WebConf,
    };
    use Proto::{Tcp, Udp};
    use Refusal::{Peer, Port};
    [
        case(
            Tcp,
            Internet,
            AccessEdge,
            5061,
            Allowed,
            "SIP federation to the Access Edge",
        ),
        case(
            Tcp,
            Internet,
            AccessEdge,
            443,
            Allowed,
            "client SIP over TLS to the Access Edge",
        ),
        case(
            Tcp,
            Internet,
            WebConf,
            443,
            Allowed,
            "PSOM to the Web Conferencing Edge",
        ),
        case(
            Udp,
            Internet,
            AvEdge,
            3478,
            Allowed,
            "STUN/TURN to the A/V Edge",
        ),
        case(
            Tcp,
            Internet,
            AvEdge,
            443,
            Allowed,
            "STUN/TURN over TCP to the A/V Edge",
        ),
        case(
            Tcp,
            Internet,
            ReverseProxy,
            443,
            Allowed,
            "HTTPS to the reverse proxy",
        ),
        case(
            Tcp,
            AccessEdge,
            Internet,
            5061,
            Allowed,
            "SIP federation out of the Access Edge",
        ),
        case(
            Tcp,
            Internet,
            Appliance,
            22,
            Allowed,
            "SSH to the appliance itself (guard)",
        ),
        case(
            Tcp,
            Internet,
            AccessEdge,
            5062,
            Forbidden(Port),
            "TCP 5062 to the Access Edge",
        ),
        case(
            Tcp,
            Internet,
            AccessEdge,
            22,
            Forbidden(Port),
            "SSH to a DMZ server through the box",
        ),
        case(
            Udp,
            Internet,
            WebConf,
            3478,
            Forbidden(Port),
            "STUN to the Web Conferencing Edge",
        ),
        case(
            Tcp,
            Internet,
            ReverseProxy,
            4443,
            Forbidden(Port),
            "TCP 4443 to the reverse proxy",
        ),
        case(
            Tcp,
            AccessEdge,
            Internet,
            22,
            Forbidden(Port),
            "SSH out of the Access Edge",
        ),
        case(
            Tcp,
            Internet,
            Appliance,
            5061,
            Forbidden(Port),
            "SIP to the appliance itself (no --role)",
        ),
        // Closed federation: the partner above federates, a stranger not.
        case(
            Tcp,
            Stranger,
            AccessEdge,
            5061,
            Forbidden(Peer),
            "SIP federation from a stranger",
        ),
        case(
            Tcp,
            AccessEdge,
            Stranger,
            5061,
            Forbidden(Peer),
            "SIP federation out to a stranger",
        ),
        // Microsoft 365 hybrid: its rows take Microsoft 365, not a stranger.
        case(
            Tcp,
            Microsoft365,
            AccessEdge,
            5061,
            Gap(Peer, HYBRID_SIP_GAP),
            "hybrid SIP from Microsoft 365",
        ),
        case(
            Tcp,
            AccessEdge,
            Microsoft365,
            5061,
            Gap(Peer, HYBRID_SIP_GAP),
            "hybrid SIP out to Microsoft 365",
        ),
        case(
            Udp,
            Microsoft365,
            AvEdge,
            3478,
            Allowed,
            "STUN Binding from Microsoft 365",
        )
        .carrying(Payload::StunBinding),
        case(
            Tcp,
            Microsoft365,
            AvEdge,
            HYBRID_MEDIA_PORT,
            Allowed,
            "hybrid media (TCP) from Microsoft 365",
        ),
        case(
            Tcp,
            Stranger,
            AvEdge,
            HYBRID_MEDIA_PORT,
            Forbidden(Peer),
            "hybrid media (TCP) from a stranger",
        ),
    ]
};

/// Options of one edge lab run.
pub struct Options<'a> {
    /// The portguard binary, or `None` to run the topology without a
    /// firewall (every row then arrives: a check of the lab itself).
    pub bin: Option<&'a Path>,
    pub interrupted: &'a AtomicBool,
    /// Also drive sipp, coturn and curl (they must be installed).
    pub peers: bool,
    /// Print the counters every half second while traffic flows.
    pub live: bool,
}

/// The appliance's two legs. Their names are the instance's (its lock and
/// pins under /run and the bpffs are keyed by them), so a scenario that may
/// run beside the edge lab names its own.
#[derive(Clone, Copy, Debug)]
struct Legs {
    ext: &'static str,
    dmz: &'static str,
}

/// The edge lab's legs.
const LEGS: Legs = Legs {
    ext: EXT_IF,
    dmz: DMZ_IF,
};

/// The three namespaces and their links, removed on drop.
struct Topology {
    internet: NetNs,
    appliance: NetNs,
    dmz: NetNs,
    legs: Legs,
}

impl Topology {
    fn build(legs: Legs) -> Result<Topology> {
        let t = Topology {
            internet: NetNs::new("pg-inet")?,
            appliance: NetNs::new("pg-appl")?,
            dmz: NetNs::new("pg-dmz")?,
            legs,
        };
        // Without duplicate address detection on the link-local addresses
        // too: while they are tentative, the first IPv6 packets forwarded
        // into the DMZ wait on neighbour discovery and the first
        // connections time out.
        for ns in [&t.internet, &t.appliance, &t.dmz] {
            sysctl(
                ns,
                &[
                    ("net.ipv6.conf.all.accept_dad", "0"),
                    ("net.ipv6.conf.default.accept_dad", "0"),
                ],
            )?;
        }
        veth_pair(&t.internet, INET_IF, &t.appliance, legs.ext)?;
        veth_pair(&t.appliance, legs.dmz, &t.dmz, DMZ_HOST_IF)?;
        for family in FAMILIES {
            let (len, gw_ext, gw_dmz) = match family {
                Family::V4 => (24, "198.18.1.1", "198.18.2.1"),
                Family::V6 => (64, "2001:db8:1::1", "2001:db8:2::1"),
            };
            addr(&t.internet, INET_IF, &cidr(Host::Internet, family, len))?;
            addr(&t.appliance, legs.ext, &cidr(Host::Appliance, family, len))?;
            addr(&t.appliance, legs.dmz, &format!("{gw_dmz}/{len}"))?;
            for (host, _) in PROFILES {
                addr(&t.dmz, DMZ_HOST_IF, &cidr(host, family, len))?;
            }
            let v = if family == Family::V6 { "-6" } else { "-4" };
            t.internet
                .ip(&[v, "route", "add", "default", "via", gw_ext])?;
            // The Access Edge's address is the DMZ's source for connections
            // it opens (federation out); the A/V Edge binds its own.
            let access = Host::AccessEdge.ip(family).to_string();
            t.dmz
                .ip(&[v, "route", "add", "default", "via", gw_dmz, "src", &access])?;
        }
        sysctl(
            &t.appliance,
            &[
                ("net.ipv4.ip_forward", "1"),
                ("net.ipv6.conf.all.forwarding", "1"),
            ],
        )?;
        Ok(t)
    }

    fn ns(&self, side: Side) -> &NetNs {
        match side {
            Side::Internet => &self.internet,
            Side::Appliance => &self.appliance,
            Side::Dmz => &self.dmz,
        }
    }
}

fn cidr(host: Host, family: Family, len: u8) -> String {
    format!("{}/{len}", host.ip(family))
}

/// The outsiders' addresses on the internet namespace's link: the stranger
/// and the stand-in for Microsoft 365. IPv4 in the partner's subnet, so
/// secondary, and IPv6 deprecated (preferred lifetime 0): neither is the
/// source the kernel picks for a socket that does not bind one (curl's, or
/// an answer's), so that is the partner's; the cases bind theirs.
fn add_outsiders(t: &Topology) -> Result<()> {
    for host in [Host::Stranger, Host::Microsoft365] {
        t.internet.ip(&[
            "-4",
            "addr",
            "add",
            &cidr(host, Family::V4, 24),
            "dev",
            INET_IF,
        ])?;
        t.internet.ip(&[
            "-6",
            "addr",
            "add",
            &cidr(host, Family::V6, 64),
            "dev",
            INET_IF,
            "nodad",
            "preferred_lft",
            "0",
        ])?;
    }
    Ok(())
}

/// `portguard run` on both legs as the edge lab runs it: one profile per
/// DMZ address and family with the hybrid roles beside the Edge services'
/// own, and the address sets filled with the lab's partner and Microsoft
/// 365 (closed federation).
pub fn portguard_args() -> Vec<String> {
    let mut args = run_args(LEGS, lab_roles);
    for (set, host) in ADDRESS_SETS {
        args.push("--addresses".into());
        args.push(format!(
            "{set}={},{}",
            cidr(host, Family::V4, 32),
            cidr(host, Family::V6, 128)
        ));
    }
    args.extend(["--xdp-mode", "native", "--metrics-addr", METRICS].map(String::from));
    args
}

/// `portguard run` on both legs as the attack scenario runs it: the
/// [`PROFILES`] roles, the catalog's sets as shipped (open federation).
fn portguard_args_on(legs: Legs) -> Vec<String> {
    let mut args = run_args(legs, |host| {
        PROFILES
            .iter()
            .find(|(h, _)| *h == host)
            .map_or_else(String::new, |(_, role)| (*role).to_string())
    });
    args.extend(["--xdp-mode", "native", "--metrics-addr", METRICS].map(String::from));
    args
}

/// `run` on both legs and a `--profile` per DMZ address and family, with the
/// roles `roles` gives the address.
fn run_args(legs: Legs, roles: impl Fn(Host) -> String) -> Vec<String> {
    // The edge lab's datagrams carry text, which the media rules' payload
    // check (tests/tests/policy/media.rs) would refuse: the lab watches ports and
    // flows.
    let mut args: Vec<String> = [
        "run",
        "--iface",
        legs.ext,
        "--iface",
        legs.dmz,
        "--media-check",
        "off",
    ]
    .map(String::from)
    .into();
    for family in FAMILIES {
        for (host, _) in PROFILES {
            let len = if family == Family::V4 { 32 } else { 128 };
            args.push("--profile".into());
            args.push(format!("{}={}", cidr(host, family, len), roles(host)));
        }
    }
    args
}

/// Runs the edge lab once. Every guard (namespaces, portguard, listeners,
/// peers) is dropped on return, on any path.
pub fn run(opts: &Options<'_>) -> Result<Report> {
    let interrupted = opts.interrupted;
    let topo = Topology::build(LEGS)?;
    add_outsiders(&topo)?;
    let session = Session::start(
        &topo.appliance,
        &[EXT_IF, DMZ_IF],
        opts.bin,
        &portguard_args(),
        opts.live,
        interrupted,
    )?;
    let firewall = opts.bin.is_some();
    let mut rows = socket_cases(&topo)?;
    rows.extend(media_relay(&topo)?);
    // The counters now, while portguard runs and before the peers add theirs.
    let metrics = session.scrape();
    check_interrupted(interrupted)?;
    let peers = if opts.peers {
        run_peers(&topo, firewall)?
    } else {
        Vec::new()
    };
    let ended = session.end()?;
    Ok(Report {
        firewall,
        namespaces: [
            topo.internet.name().into(),
            topo.appliance.name().into(),
            topo.dmz.name().into(),
        ],
        rows,
        metrics,
        summary: ended.summary,
        detached: ended.detached,
        peers,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn ipv4_and_ipv6_addresses_spell_the_same_host() {
        assert_eq!(Host::AccessEdge.ip(Family::V4).to_string(), "198.18.2.10");
        assert_eq!(
            Host::AccessEdge.ip(Family::V6).to_string(),
            "2001:db8:2::10"
        );
        assert_eq!(Host::ReverseProxy.ip(Family::V4).to_string(), "198.18.2.20");
        assert_eq!(Host::Appliance.ip(Family::V6).to_string(), "2001:db8:1::1");
        assert_eq!(Host::Stranger.ip(Family::V4).to_string(), "198.18.1.3");
        assert_eq!(
            Host::Microsoft365.ip(Family::V6).to_string(),
            "2001:db8:1::65"
        );
        let all = [
            Host::Internet,
            Host::Stranger,
            Host::Microsoft365,
            Host::Appliance,
            Host::AccessEdge,
            Host::WebConf,
            Host::AvEdge,
            Host::ReverseProxy,
        ];
        for family in FAMILIES {
            let distinct: BTreeSet<IpAddr> = all.iter().map(|h| h.ip(family)).collect();
            assert_eq!(
                distinct.len(),
                all.len(),
                "{} addresses collide",
                family.name()
            );
        }
    }

    #[test]
    fn portguard_runs_on_both_legs_with_a_profile_per_address_and_family() {
        let args = portguard_args();
        let joined = args.join(" ");
        assert!(
            joined.starts_with(&format!("run --iface {EXT_IF} --iface {DMZ_IF} ")),
            "{joined}"
        );
        assert_eq!(args.iter().filter(|a| *a == "--profile").count(), 8);
        for profile in [
            "--profile 198.18.2.10/32=access-edge-external,hybrid-access-edge-external",
            "--profile 198.18.2.12/32=av-edge-external,hybrid-av-edge-external",
            "--profile 2001:db8:2::11/128=webconf-edge-external ",
            "--profile 2001:db8:2::20/128=reverse-proxy-external ",
        ] {
            assert!(joined.contains(profile), "no {profile:?} in {joined}");
        }
        assert!(
            !joined.contains("--role"),
            "the appliance itself has no role: {joined}"
        );
    }

    #[test]
    fn the_sets_hold_the_partner_and_microsoft_365_only_and_the_attack_keeps_them_open() {
        let joined = portguard_args().join(" ");
        for flag in [
            "--addresses federation-partners=198.18.1.2/32,2001:db8:1::2/128 ",
            "--addresses microsoft-365=198.18.1.65/32,2001:db8:1::65/128 ",
        ] {
            assert!(joined.contains(flag), "no {flag:?} in {joined}");
        }
        let attack = portguard_args_on(LEGS).join(" ");
        assert!(
            !attack.contains("--addresses") && !attack.contains("hybrid"),
            "the attack scenario runs the shipped sets and the Edge roles alone: {attack}"
        );
        assert!(
            attack.contains("--profile 198.18.2.10/32=access-edge-external "),
            "{attack}"
        );
    }

    #[test]
    fn every_case_is_told_apart_and_every_verdict_is_covered() {
        let keys: BTreeSet<_> = CASES
            .iter()
            .map(|c| (c.from, c.to, c.port, c.proto))
            .collect();
        assert_eq!(keys.len(), CASES.len(), "two cases send alike");
        let has = |pred: &dyn Fn(&Case) -> bool| CASES.iter().any(pred);
        assert!(has(&|c| c.expect == Expect::Allowed));
        assert!(has(&|c| c.expect == Expect::Forbidden(Refusal::Port)));
        assert!(
            has(&|c| c.from.side() == Side::Dmz && c.expect == Expect::Allowed),
            "something is opened from the DMZ"
        );
        // Closed federation: on the port the partner federates on, both
        // ways, the stranger is refused for its address.
        for (partner, stranger) in [
            (
                (Host::Internet, Host::AccessEdge),
                (Host::Stranger, Host::AccessEdge),
            ),
            (
                (Host::AccessEdge, Host::Internet),
                (Host::AccessEdge, Host::Stranger),
            ),
        ] {
            let find = |(from, to): (Host, Host)| {
                CASES
                    .iter()
                    .find(|c| c.from == from && c.to == to && c.port == 5061)
                    .map(|c| c.expect)
            };
            assert_eq!(find(partner), Some(Expect::Allowed), "{partner:?}");
            assert_eq!(
                find(stranger),
                Some(Expect::Forbidden(Refusal::Peer)),
                "{stranger:?}"
            );
        }
        assert!(
            has(&|c| c.from == Host::Microsoft365
                && c.payload == Payload::StunBinding
                && c.expect == Expect::Allowed),
            "a STUN Binding request from Microsoft 365"
        );
    }
}
