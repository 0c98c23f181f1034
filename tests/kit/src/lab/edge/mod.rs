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
use super::{METRICS, Proto, check_interrupted, daemon::Session};
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
    /// A client or federation partner on the internet side.
    Internet,
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
            Host::Internet => Side::Internet,
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
/// per address and family).
pub const PROFILES: [(Host, &str); 4] = [
    (Host::AccessEdge, "access-edge-external"),
    (Host::WebConf, "webconf-edge-external"),
    (Host::AvEdge, "av-edge-external"),
    (Host::ReverseProxy, "reverse-proxy-external"),
];

/// One kind of traffic sent over real sockets: UDP datagrams, or a TCP
/// connection attempt that writes a few messages when it connects.
#[derive(Debug)]
pub struct Case {
    pub proto: Proto,
    pub from: Host,
    pub to: Host,
    pub port: u16,
    pub allowed: bool,
    pub what: &'static str,
}

const fn case(
    proto: Proto,
    from: Host,
    to: Host,
    port: u16,
    allowed: bool,
    what: &'static str,
) -> Case {
    Case {
        proto,
        from,
        to,
        port,
        allowed,
        what,
    }
}

/// The socket cases, run in each family. The media relay (out of the A/V
/// Edge, the answers, and unsolicited media) is separate: it needs an echo.
pub const CASES: [Case; 14] = {
    use Host::{AccessEdge, Appliance, AvEdge, Internet, ReverseProxy, WebConf};
    use Proto::{Tcp, Udp};
    [
        case(
            Tcp,
            Internet,
            AccessEdge,
            5061,
            true,
            "SIP federation to the Access Edge",
        ),
        case(
            Tcp,
            Internet,
            AccessEdge,
            443,
            true,
            "client SIP over TLS to the Access Edge",
        ),
        case(
            Tcp,
            Internet,
            WebConf,
            443,
            true,
            "PSOM to the Web Conferencing Edge",
        ),
        case(
            Udp,
            Internet,
            AvEdge,
            3478,
            true,
            "STUN/TURN to the A/V Edge",
        ),
        case(
            Tcp,
            Internet,
            AvEdge,
            443,
            true,
            "STUN/TURN over TCP to the A/V Edge",
        ),
        case(
            Tcp,
            Internet,
            ReverseProxy,
            443,
            true,
            "HTTPS to the reverse proxy",
        ),
        case(
            Tcp,
            AccessEdge,
            Internet,
            5061,
            true,
            "SIP federation out of the Access Edge",
        ),
        case(
            Tcp,
            Internet,
            Appliance,
            22,
            true,
            "SSH to the appliance itself (guard)",
        ),
        case(
            Tcp,
            Internet,
            AccessEdge,
            5062,
            false,
            "TCP 5062 to the Access Edge",
        ),
        case(
            Tcp,
            Internet,
            AccessEdge,
            22,
            false,
            "SSH to a DMZ server through the box",
        ),
        case(
            Udp,
            Internet,
            WebConf,
            3478,
            false,
            "STUN to the Web Conferencing Edge",
        ),
        case(
            Tcp,
            Internet,
            ReverseProxy,
            4443,
            false,
            "TCP 4443 to the reverse proxy",
        ),
        case(
            Tcp,
            AccessEdge,
            Internet,
            22,
            false,
            "SSH out of the Access Edge",
        ),
        case(
            Tcp,
            Internet,
            Appliance,
            5061,
            false,
            "SIP to the appliance itself (no --role)",
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

/// `portguard run` on both legs, one profile per DMZ address and family.
pub fn portguard_args() -> Vec<String> {
    portguard_args_on(LEGS)
}

fn portguard_args_on(legs: Legs) -> Vec<String> {
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
        for (host, role) in PROFILES {
            let len = if family == Family::V4 { 32 } else { 128 };
            args.push("--profile".into());
            args.push(format!("{}={role}", cidr(host, family, len)));
        }
    }
    args.extend(["--xdp-mode", "native", "--metrics-addr", METRICS].map(String::from));
    args
}

/// Runs the edge lab once. Every guard (namespaces, portguard, listeners,
/// peers) is dropped on return, on any path.
pub fn run(opts: &Options<'_>) -> Result<Report> {
    let interrupted = opts.interrupted;
    let topo = Topology::build(LEGS)?;
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
        let all = [
            Host::Internet,
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
        assert!(
            joined.contains("--profile 198.18.2.12/32=av-edge-external"),
            "{joined}"
        );
        assert!(
            joined.contains("--profile 2001:db8:2::20/128=reverse-proxy-external"),
            "{joined}"
        );
        assert!(
            !joined.contains("--role"),
            "the appliance itself has no role: {joined}"
        );
    }

    #[test]
    fn every_case_has_its_own_listener_and_both_verdicts_are_covered() {
        let keys: BTreeSet<_> = CASES.iter().map(|c| (c.to, c.port, c.proto)).collect();
        assert_eq!(keys.len(), CASES.len());
        assert!(CASES.iter().any(|c| c.allowed) && CASES.iter().any(|c| !c.allowed));
        assert!(
            CASES
                .iter()
                .any(|c| c.from.side() == Side::Dmz && c.allowed),
            "something is opened from the DMZ"
        );
    }
}
