//! Appliance mode: the exported `forward` ruleset and portguard on both legs
//! of a router pass the same forwarded packets.
//!
//! The topology: client namespace (the internet side, 198.18.1.0/24,
//! 2001:db8:1::/64) — router namespace (forwarding on, two legs) — server
//! namespace (the DMZ: the Edge and reverse-proxy addresses in 198.18.2.0/24
//! and 2001:db8:2::/64, an address in no profile in 198.18.3.0/24 and
//! 2001:db8:3::/64). The router is loaded once with `catalog export --format
//! nft --appliance` and once runs `portguard run --iface LEG1 --iface LEG2`,
//! with the same profiles; the same frames are injected at the ends and
//! counted where they arrive (probe tables as in the host-mode differential,
//! each dropping what it counts so the ends never answer). Twice, in fresh
//! namespaces: without `--role` and with one for the router's own addresses.
//!
//! Two batches, in order: the openers (to the profile addresses from the
//! internet, from them to the internet, to the router itself, ICMP echo),
//! then the answers to every opener (a SYN-ACK or a UDP datagram back on
//! the same ports) and unsolicited look-alikes (the same server port to a
//! client port nothing opened). An answer passes where its opener passed;
//! the look-alikes do not. The verdicts of both runs are also checked
//! against the semantics written in the appliance design (longest prefix
//! per side, inbound rows by destination, outbound rows by source, the
//! lockout guard for the router's own addresses only), so that both cannot
//! agree on a wrong answer.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use portguard::{
    catalog::{Catalog, Direction, EffectiveRule, MatchSide, Protocol},
    policy::Prefix,
};
use portguard_testsupport::frames::{L4, Packet, TCP_ACK, TCP_SYN};
use testkit::{
    netns::{NetNs, mac_of, veth_pair},
    ops::Daemon,
    sockets::RawSender,
};

use super::{GRACE, SETTLE, nft_in, probe_count_map, probe_table_then, run, verdict};

const CLIENT_IF: &str = "pgac0";
const ROUTER_CLIENT_IF: &str = "pgar0";
const ROUTER_SERVER_IF: &str = "pgar1";
const SERVER_IF: &str = "pgas0";

/// `--profile` arguments, the same for both runs: each Edge address and the
/// reverse proxy in a /32 (/128) inside a /24 (/64) of another role, so that
/// a rule applied from the shorter prefix shows; and a profile on the
/// internet side, so that the source side is tried for packets whose
/// destination has a profile too.
const PROFILES: [&str; 12] = [
    "198.18.2.0/24=edge-internal",
    "198.18.2.10/32=access-edge-external",
    "198.18.2.11/32=webconf-edge-external",
    "198.18.2.12/32=av-edge-external",
    "198.18.2.20/32=reverse-proxy-external,reverse-proxy-internal",
    "198.18.1.128/25=reverse-proxy-internal",
    "2001:db8:2::/64=edge-internal",
    "2001:db8:2::10/128=access-edge-external",
    "2001:db8:2::11/128=webconf-edge-external",
    "2001:db8:2::12/128=av-edge-external",
    "2001:db8:2::20/128=reverse-proxy-external,reverse-proxy-internal",
    "2001:db8:1::200/120=reverse-proxy-internal",
];

/// (IPv4, IPv6) of the DMZ hosts: in the /24 only, the Access, Web
/// Conferencing and A/V Edge, the reverse proxy, and one in no profile.
const SERVERS: [(&str, &str); 6] = [
    ("198.18.2.5", "2001:db8:2::5"),
    ("198.18.2.10", "2001:db8:2::10"),
    ("198.18.2.11", "2001:db8:2::11"),
    ("198.18.2.12", "2001:db8:2::12"),
    ("198.18.2.20", "2001:db8:2::20"),
    ("198.18.3.5", "2001:db8:3::5"),
];
/// An internet client in no profile, and one in the internet-side profile.
const CLIENTS: [(&str, &str); 2] = [
    ("198.18.1.1", "2001:db8:1::1"),
    ("198.18.1.200", "2001:db8:1::2c8"),
];
/// The router's own addresses; those of the DMZ leg lie inside a profile.
const ROUTER_CLIENT_SIDE: (&str, &str) = ("198.18.1.254", "2001:db8:1::fe");
const ROUTER_SERVER_SIDE: [(&str, &str); 2] = [
    ("198.18.2.254", "2001:db8:2::fe"),
    ("198.18.3.254", "2001:db8:3::fe"),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Side {
    Client,
    Router,
    Server,
}

struct Probe {
    name: String,
    packet: Packet,
    /// Where it is injected (client or server leg of the router).
    from: Side,
    /// Where it arrives if passed.
    to: Side,
    /// The opener this packet answers (an unsolicited look-alike has none).
    answers: Option<usize>,
}

/// The namespaces and what the probes need of them; dropped (deleted) last.
struct Topology {
    client: NetNs,
    router: NetNs,
    server: NetNs,
    client_mac: [u8; 6],
    server_mac: [u8; 6],
    router_client_mac: [u8; 6],
    router_server_mac: [u8; 6],
}

fn sh(ns: &NetNs, args: &[&str]) {
    ns.ip(args)
        .unwrap_or_else(|e| panic!("ip -n {} {args:?}: {e:#}", ns.name()));
}

fn addr(ns: &NetNs, ifname: &str, cidr: &str) {
    testkit::netns::addr(ns, ifname, cidr)
        .unwrap_or_else(|e| panic!("address {cidr} on {ifname}: {e:#}"));
}

impl Topology {
    fn new() -> Topology {
        let client = NetNs::new("pgnac").expect("netns");
        let router = NetNs::new("pgnar").expect("netns");
        let server = NetNs::new("pgnas").expect("netns");
        veth_pair(&client, CLIENT_IF, &router, ROUTER_CLIENT_IF).expect("veth");
        veth_pair(&router, ROUTER_SERVER_IF, &server, SERVER_IF).expect("veth");
        run(Command::new("ip").args([
            "netns",
            "exec",
            router.name(),
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
        ]));
        for (v4, v6) in CLIENTS {
            addr(&client, CLIENT_IF, &format!("{v4}/24"));
            addr(&client, CLIENT_IF, &format!("{v6}/64"));
        }
        for (v4, v6) in SERVERS {
            addr(&server, SERVER_IF, &format!("{v4}/24"));
            addr(&server, SERVER_IF, &format!("{v6}/64"));
        }
        addr(
            &router,
            ROUTER_CLIENT_IF,
            &format!("{}/24", ROUTER_CLIENT_SIDE.0),
        );
        addr(
            &router,
            ROUTER_CLIENT_IF,
            &format!("{}/64", ROUTER_CLIENT_SIDE.1),
        );
        for (v4, v6) in ROUTER_SERVER_SIDE {
            addr(&router, ROUTER_SERVER_IF, &format!("{v4}/24"));
            addr(&router, ROUTER_SERVER_IF, &format!("{v6}/64"));
        }
        for (ns, ifname, (v4, v6)) in [
            (&client, CLIENT_IF, ROUTER_CLIENT_SIDE),
            (&server, SERVER_IF, ROUTER_SERVER_SIDE[0]),
        ] {
            sh(ns, &["route", "add", "default", "via", v4, "dev", ifname]);
            sh(
                ns,
                &["-6", "route", "add", "default", "via", v6, "dev", ifname],
            );
        }
        let mac = |ns: &NetNs, ifname: &str| {
            mac_of(ns, ifname).unwrap_or_else(|e| panic!("MAC of {ifname}: {e:#}"))
        };
        let t = Topology {
            client_mac: mac(&client, CLIENT_IF),
            server_mac: mac(&server, SERVER_IF),
            router_client_mac: mac(&router, ROUTER_CLIENT_IF),
            router_server_mac: mac(&router, ROUTER_SERVER_IF),
            client,
            router,
            server,
        };
        // Permanent neighbours: a batch of frames to unresolved addresses
        // would overflow the neighbour queue and lose packets.
        let client_mac = fmt_mac(t.client_mac);
        let server_mac = fmt_mac(t.server_mac);
        for (hosts, ifname, mac) in [
            (&CLIENTS[..], ROUTER_CLIENT_IF, &client_mac),
            (&SERVERS[..], ROUTER_SERVER_IF, &server_mac),
        ] {
            for (v4, v6) in hosts {
                for a in [v4, v6] {
                    sh(
                        &t.router,
                        &[
                            "neigh",
                            "replace",
                            a,
                            "lladdr",
                            mac,
                            "dev",
                            ifname,
                            "nud",
                            "permanent",
                        ],
                    );
                }
            }
        }
        t
    }

    fn ns(&self, side: Side) -> &NetNs {
        match side {
            Side::Client => &self.client,
            Side::Router => &self.router,
            Side::Server => &self.server,
        }
    }

    /// The frame as injected: from the sender's MAC to the router's leg.
    fn frame(&self, p: &Probe) -> Vec<u8> {
        let mut packet = p.packet.clone();
        (packet.src_mac, packet.dst_mac) = match p.from {
            Side::Client => (self.client_mac, self.router_client_mac),
            _ => (self.server_mac, self.router_server_mac),
        };
        packet.build()
    }
}

fn fmt_mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Every (protocol, port) worth probing: both edges of every rule of the
/// profiles' roles and one port past each, in both protocols, plus the
/// lockout guard's port and one no role lists.
fn probe_ports(catalog: &Catalog) -> Vec<(Protocol, u16)> {
    let mut ports = BTreeSet::new();
    for spec in PROFILES {
        let roles = profile_roles(spec);
        let rules = catalog
            .effective_rules(&roles)
            .unwrap_or_else(|e| panic!("{spec}: {e}"));
        for r in rules {
            for p in [
                r.port_start,
                r.port_end,
                r.port_start.saturating_sub(1),
                r.port_end.saturating_add(1),
            ] {
                if p != 0 {
                    ports.insert((Protocol::Tcp, p));
                    ports.insert((Protocol::Udp, p));
                }
            }
        }
    }
    for p in [22, 8443] {
        ports.insert((Protocol::Tcp, p));
        ports.insert((Protocol::Udp, p));
    }
    ports.into_iter().collect()
}

fn profile_roles(spec: &str) -> Vec<String> {
    let (_, roles) = spec
        .split_once('=')
        .unwrap_or_else(|| panic!("profile {spec} has no ="));
    roles.split(',').map(String::from).collect()
}

/// The side of the router an address lives on (its route): the client's
/// network, or the DMZ's two.
fn home(addr: IpAddr) -> Side {
    let text = addr.to_string();
    if text.starts_with("198.18.1.") || text.starts_with("2001:db8:1:") {
        Side::Client
    } else {
        Side::Server
    }
}

fn l4(proto: Protocol, src: &str, dst: &str, sport: u16, dport: u16, flags: u8) -> Packet {
    match proto {
        Protocol::Tcp => Packet::tcp_flags(src, dst, sport, dport, flags),
        // Media, which the media rules' payload check passes on both sides.
        Protocol::Udp => Packet::udp(src, dst, sport, dport).rtp(),
    }
}

/// The openers. Source ports count up from 20000 so every 5-tuple is new
/// (and no rule lists 20000-22000, so an answer passes only as an answer).
fn openers(catalog: &Catalog) -> Vec<Probe> {
    let ports = probe_ports(catalog);
    let mut sport = 20_000u16;
    let mut next = || {
        sport += 1;
        sport
    };
    let mut out = Vec::new();
    let fam = |v6: bool, (a, b): (&'static str, &'static str)| if v6 { b } else { a };
    // Every DMZ host both ways, with every probe port; the family alternates
    // so that each port is seen in both across the hosts.
    for (k, &server) in SERVERS.iter().enumerate() {
        for (j, &(proto, port)) in ports.iter().enumerate() {
            let v6 = (j + k) % 2 == 0;
            let (c, s) = (fam(v6, CLIENTS[0]), fam(v6, server));
            out.push(Probe {
                name: format!("{c} -> {s} {proto} {port}"),
                packet: l4(proto, c, s, next(), port, TCP_SYN),
                from: Side::Client,
                to: Side::Server,
                answers: None,
            });
            let v6 = !v6;
            let (c, s) = (fam(v6, CLIENTS[0]), fam(v6, server));
            out.push(Probe {
                name: format!("{s} -> {c} {proto} {port}"),
                packet: l4(proto, s, c, next(), port, TCP_SYN),
                from: Side::Server,
                to: Side::Client,
                answers: None,
            });
        }
    }
    // Spoofed: a DMZ host's source address on the client leg, to the
    // client (in no profile), hairpinned back out of that leg. Its outbound
    // rows do not apply there (a strict reverse-path check), and what it
    // would have planted must not let the answer in. (A spoof to another
    // DMZ address is not observable here: the server namespace holds every
    // DMZ address, and drops a packet from one of its own as a martian.)
    for (k, &server) in SERVERS.iter().enumerate() {
        for (j, &(proto, port)) in ports.iter().enumerate().filter(|(j, _)| j % 2 == k % 2) {
            let v6 = (j / 2 + k) % 2 == 1;
            let (s, c) = (fam(v6, server), fam(v6, CLIENTS[0]));
            out.push(Probe {
                name: format!("spoofed {s} on the client leg -> {c} {proto} {port}"),
                packet: l4(proto, s, c, next(), port, TCP_SYN),
                from: Side::Client,
                to: Side::Client,
                answers: None,
            });
        }
    }
    // The client in the internet-side profile: its outbound rows pass
    // whatever the destination's profile says.
    let rp_internal = catalog
        .effective_rules(&["reverse-proxy-internal".to_string()])
        .unwrap_or_else(|e| panic!("{e}"));
    for (i, &server) in [SERVERS[1], SERVERS[5]].iter().enumerate() {
        for r in &rp_internal {
            for (j, port) in [r.port_start - 1, r.port_start, r.port_end + 1]
                .into_iter()
                .enumerate()
            {
                let v6 = (i + j) % 2 == 0;
                let (c, s) = (fam(v6, CLIENTS[1]), fam(v6, server));
                out.push(Probe {
                    name: format!("{c} -> {s} {} {port}", r.protocol),
                    packet: l4(r.protocol, c, s, next(), port, TCP_SYN),
                    from: Side::Client,
                    to: Side::Server,
                    answers: None,
                });
            }
        }
    }
    // The router itself: the guard, a port of the profile its DMZ address
    // lies in (edge-internal's 5061, 3478), a port no role lists; and from
    // the Access Edge, whose outbound rows (DNS, HTTP) reach anywhere.
    for v6 in [false, true] {
        let c = fam(v6, CLIENTS[0]);
        for target in [
            ROUTER_CLIENT_SIDE,
            ROUTER_SERVER_SIDE[0],
            ROUTER_SERVER_SIDE[1],
        ] {
            let r = fam(v6, target);
            for (proto, port) in [
                (Protocol::Tcp, 22),
                (Protocol::Tcp, 5061),
                (Protocol::Udp, 3478),
                (Protocol::Tcp, 8443),
            ] {
                out.push(Probe {
                    name: format!("{c} -> router {r} {proto} {port}"),
                    packet: l4(proto, c, r, next(), port, TCP_SYN),
                    from: Side::Client,
                    to: Side::Router,
                    answers: None,
                });
            }
        }
        let a = fam(v6, SERVERS[1]);
        let r = fam(v6, ROUTER_SERVER_SIDE[0]);
        for (proto, port) in [
            (Protocol::Udp, 53),
            (Protocol::Tcp, 80),
            (Protocol::Tcp, 5062),
            (Protocol::Tcp, 22),
        ] {
            out.push(Probe {
                name: format!("{a} -> router {r} {proto} {port}"),
                packet: l4(proto, a, r, next(), port, TCP_SYN),
                from: Side::Server,
                to: Side::Router,
                answers: None,
            });
        }
        // Echo passes everywhere, as an essential.
        for &server in &SERVERS {
            let (c, s) = (fam(v6, CLIENTS[0]), fam(v6, server));
            let echo = if v6 { 128 } else { 8 };
            out.push(Probe {
                name: format!("{c} -> {s} echo"),
                packet: Packet::icmp(c, s, echo),
                from: Side::Client,
                to: Side::Server,
                answers: None,
            });
            out.push(Probe {
                name: format!("{s} -> {c} echo"),
                packet: Packet::icmp(s, c, echo),
                from: Side::Server,
                to: Side::Client,
                answers: None,
            });
        }
    }
    out
}

/// The answer to each forwarded TCP/UDP opener (a SYN-ACK, a datagram back),
/// and for every third one an unsolicited look-alike: the same server port
/// to a client port nothing opened.
fn answers(openers: &[Probe]) -> Vec<Probe> {
    let mut out = Vec::new();
    for (i, o) in openers.iter().enumerate() {
        if o.to == Side::Router {
            continue;
        }
        let (proto, sport, dport) = match o.packet.l4 {
            L4::Tcp { sport, dport, .. } => (Protocol::Tcp, sport, dport),
            L4::Udp { sport, dport } => (Protocol::Udp, sport, dport),
            _ => continue,
        };
        let (src, dst) = (o.packet.dst.to_string(), o.packet.src.to_string());
        out.push(Probe {
            name: format!("answer to [{}]", o.name),
            packet: l4(proto, &src, &dst, dport, sport, TCP_SYN | TCP_ACK),
            from: o.to,
            // Where the opener's source lives (for a spoofed opener, not
            // the side it was sent from).
            to: home(o.packet.src),
            answers: Some(i),
        });
        if i % 3 == 0 {
            out.push(Probe {
                name: format!("unsolicited like an answer to [{}]", o.name),
                packet: l4(proto, &src, &dst, dport, sport + 10_000, TCP_SYN | TCP_ACK),
                from: o.to,
                to: home(o.packet.src),
                answers: None,
            });
        }
    }
    out
}

/// The appliance design's verdict for a packet seen fresh (no flow).
struct Semantics {
    profiles: Vec<(Prefix, Vec<EffectiveRule>)>,
    own: Vec<IpAddr>,
    /// `--role`: the rules of the router's own addresses.
    own_rules: Vec<EffectiveRule>,
}

impl Semantics {
    fn new(catalog: &Catalog, own_role: Option<&str>) -> Semantics {
        let profiles = PROFILES
            .iter()
            .map(|spec| {
                let (cidr, _) = spec.split_once('=').unwrap_or((spec, ""));
                let prefix: Prefix = cidr.parse().unwrap_or_else(|e| panic!("{cidr}: {e}"));
                let rules = catalog
                    .effective_rules(&profile_roles(spec))
                    .unwrap_or_else(|e| panic!("{spec}: {e}"));
                (prefix, rules)
            })
            .collect();
        let own = std::iter::once(ROUTER_CLIENT_SIDE)
            .chain(ROUTER_SERVER_SIDE)
            .flat_map(|(a, b)| [a, b])
            .map(|a| a.parse().unwrap_or_else(|e| panic!("{a}: {e}")))
            .collect();
        let own_rules = match own_role {
            Some(r) => catalog
                .effective_rules(&[r.to_string()])
                .unwrap_or_else(|e| panic!("{r}: {e}")),
            None => Vec::new(),
        };
        Semantics {
            profiles,
            own,
            own_rules,
        }
    }

    /// The rules of the longest profile prefix holding `addr`.
    fn profile(&self, addr: IpAddr) -> Option<&[EffectiveRule]> {
        let host: Prefix = addr.to_string().parse().unwrap_or_else(|e| panic!("{e}"));
        self.profiles
            .iter()
            .filter(|(p, _)| p.contains(&host))
            .max_by_key(|(p, _)| p.len)
            .map(|(_, rules)| rules.as_slice())
    }

    /// Whether `p`, arriving from `from`, passes with no flow state. A
    /// profile's outbound rows apply only on the side its source lives on.
    fn fresh(&self, p: &Packet, from: Side) -> bool {
        let (proto, dport) = match p.l4 {
            L4::Tcp { dport, .. } => (Protocol::Tcp, dport),
            L4::Udp { dport, .. } => (Protocol::Udp, dport),
            // Only echo requests are probed: essentials, passed everywhere.
            _ => return true,
        };
        let allows = |rules: Option<&[EffectiveRule]>, direction: Direction| {
            rules.is_some_and(|rules| {
                rules.iter().any(|r| {
                    r.direction == direction
                        && r.side == MatchSide::Destination
                        && r.protocol == proto
                        && (r.port_start..=r.port_end).contains(&dport)
                })
            })
        };
        let from = home(p.src) == from && allows(self.profile(p.src), Direction::Outbound);
        if self.own.contains(&p.dst) {
            // The --role rows (none: the essentials and the lockout guard
            // only), whatever profile holds the address.
            return from
                || (proto == Protocol::Tcp && dport == 22)
                || allows(Some(&self.own_rules), Direction::Inbound);
        }
        from || allows(self.profile(p.dst), Direction::Inbound)
    }
}

/// Injects the probes, waits for `expected` passes to arrive (then a grace
/// period for unexpected ones), and returns which probes arrived.
fn observe(t: &Topology, senders: &Senders, probes: &[Probe], expected: usize) -> Vec<bool> {
    for p in probes {
        let sender = match p.from {
            Side::Client => &senders.client,
            _ => &senders.server,
        };
        sender
            .send(&t.frame(p))
            .unwrap_or_else(|e| panic!("injecting {}: {e}", p.name));
    }
    let read = || {
        let mut counts: BTreeMap<usize, u64> = BTreeMap::new();
        for side in [Side::Client, Side::Router, Side::Server] {
            counts.extend(probe_count_map(t.ns(side)).0);
        }
        counts
    };
    let deadline = Instant::now() + SETTLE;
    let mut counts = read();
    while counts.values().filter(|c| **c > 0).count() < expected && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        counts = read();
    }
    std::thread::sleep(GRACE);
    counts = read();
    (0..probes.len())
        .map(|i| {
            counts
                .get(&i)
                .unwrap_or_else(|| panic!("no probe counter for [{}]", probes[i].name))
                > &0
        })
        .collect()
}

struct Senders {
    client: RawSender,
    server: RawSender,
}

/// One run: the probe tables (with `router_rules`, the ruleset under test,
/// when it is nft's), the openers, then the answers.
fn run_batches(
    t: &Topology,
    senders: &Senders,
    router_rules: &str,
    openers: &[Probe],
    answers: &[Probe],
    expected: (&[bool], &[bool]),
) -> (Vec<bool>, Vec<bool>) {
    let tables = |probes: &[Probe], side: Side| {
        probe_table_then(
            probes
                .iter()
                .enumerate()
                .filter(|(_, p)| p.to == side)
                .map(|(i, p)| (i, &p.packet)),
            " drop",
        )
    };
    let mut batches = Vec::new();
    for (probes, exp) in [(openers, expected.0), (answers, expected.1)] {
        for side in [Side::Client, Side::Router, Side::Server] {
            let rules = if side == Side::Router {
                router_rules
            } else {
                ""
            };
            nft_in(
                t.ns(side),
                &format!("flush ruleset\n{rules}\n{}", tables(probes, side)),
            );
        }
        let n = exp.iter().filter(|e| **e).count();
        batches.push(observe(t, senders, probes, n));
    }
    let answers_seen = batches.pop().unwrap_or_default();
    let openers_seen = batches.pop().unwrap_or_default();
    (openers_seen, answers_seen)
}

/// The lines where `a` and `b` differ, naming the probe.
fn differences(probes: &[Probe], a: (&str, &[bool]), b: (&str, &[bool]), out: &mut Vec<String>) {
    for ((p, x), y) in probes.iter().zip(a.1).zip(b.1) {
        if x != y {
            out.push(format!(
                "{}: {} {} {} {}",
                p.name,
                a.0,
                verdict(*x),
                b.0,
                verdict(*y)
            ));
        }
    }
}

fn wait_attached(t: &Topology, daemon: &mut Daemon) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(st)) = daemon.child.try_wait() {
            panic!("portguard exited early ({st}):\n{}", daemon.log());
        }
        let attached = [ROUTER_CLIENT_IF, ROUTER_SERVER_IF].iter().all(|leg| {
            t.router
                .ip(&["-o", "link", "show", "dev", leg])
                .is_ok_and(|l| l.contains("xdp"))
        });
        if attached && daemon.log().contains("metrics on http://") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "portguard did not attach to both legs within 20 s:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn nft_forward_export_and_xdp_appliance_agree_both_ways() {
    if !testkit::require_privileges("nft_forward_export_and_xdp_appliance_agree_both_ways") {
        return;
    }
    let started = Instant::now();
    let catalog = Catalog::embedded();
    let mut total = 0;
    // Without --role (the router's own addresses: the essentials and the
    // guard only), then with one (edge-internal: its 5061 and 3478 open on
    // the router, the lockout guard still there).
    for own_role in [None, Some("edge-internal")] {
        total += compare(&catalog, own_role);
    }
    eprintln!(
        "{total} packets agree (nft, XDP, the design) in {:?}",
        started.elapsed()
    );
}

/// One configuration in fresh namespaces (so no state of an earlier one
/// answers): both runs, checked against each other and the design. Returns
/// the number of packets compared.
fn compare(catalog: &Catalog, own_role: Option<&str>) -> usize {
    let t = Topology::new();
    let senders = Senders {
        client: RawSender::new(&t.client, CLIENT_IF).unwrap_or_else(|e| panic!("{e:#}")),
        server: RawSender::new(&t.server, SERVER_IF).unwrap_or_else(|e| panic!("{e:#}")),
    };
    let openers = openers(catalog);
    let answers = answers(&openers);
    let semantics = Semantics::new(catalog, own_role);
    let expect_openers: Vec<bool> = openers
        .iter()
        .map(|p| semantics.fresh(&p.packet, p.from))
        .collect();
    let expect_answers: Vec<bool> = answers
        .iter()
        .map(|a| a.answers.is_some_and(|i| expect_openers[i]) || semantics.fresh(&a.packet, a.from))
        .collect();
    let passes = expect_openers.iter().filter(|e| **e).count();
    assert!(
        passes > 50 && passes < openers.len() - 50,
        "the probes should pass and drop plenty: {passes} of {} pass",
        openers.len()
    );
    let config = format!("--role {}", own_role.unwrap_or("(none)"));

    let bin = testkit::portguard_bin();
    let mut export = vec!["catalog", "export", "--format", "nft", "--appliance"];
    let mut daemon_args = vec![
        "run",
        "--iface",
        ROUTER_CLIENT_IF,
        "--iface",
        ROUTER_SERVER_IF,
        "--clean-start",
    ];
    if let Some(role) = own_role {
        export.extend(["--role", role]);
        daemon_args.extend(["--role", role]);
    }
    for p in PROFILES {
        export.extend(["--profile", p]);
        daemon_args.extend(["--profile", p]);
    }
    let ruleset = run(Command::new(&bin).args(&export));
    let nft = run_batches(
        &t,
        &senders,
        &ruleset,
        &openers,
        &answers,
        (&expect_openers, &expect_answers),
    );
    let mut wrong = Vec::new();
    differences(
        &openers,
        ("expected", &expect_openers),
        ("nft", &nft.0),
        &mut wrong,
    );
    differences(
        &answers,
        ("expected", &expect_answers),
        ("nft", &nft.1),
        &mut wrong,
    );
    assert!(
        wrong.is_empty(),
        "{config}: {} of {} packets: the nft export is not the appliance design:\n{}",
        wrong.len(),
        openers.len() + answers.len(),
        wrong.join("\n")
    );

    let dir: PathBuf =
        std::env::temp_dir().join(format!("pg-nft-appliance-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut daemon = Daemon::spawn(&t.router, &daemon_args, &dir, "portguard");
    wait_attached(&t, &mut daemon);
    let xdp = run_batches(
        &t,
        &senders,
        "",
        &openers,
        &answers,
        (&expect_openers, &expect_answers),
    );
    drop(daemon);
    let _ = std::fs::remove_dir_all(&dir);

    let mut mismatches = Vec::new();
    differences(&openers, ("nft", &nft.0), ("xdp", &xdp.0), &mut mismatches);
    differences(&answers, ("nft", &nft.1), ("xdp", &xdp.1), &mut mismatches);
    assert!(
        mismatches.is_empty(),
        "{config}: {} of {} packets differ between the forward ruleset and XDP on both legs:\n{}",
        mismatches.len(),
        openers.len() + answers.len(),
        mismatches.join("\n")
    );
    openers.len() + answers.len()
}
