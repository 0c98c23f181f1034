//! The routed edge lab: an internet namespace, an appliance namespace that
//! forwards between its two legs with portguard on both, and a DMZ namespace
//! holding the Edge Server's external addresses and a reverse proxy. Allowed
//! and forbidden traffic over real sockets in both directions, IPv4 and IPv6,
//! real protocol peers (sipp, coturn, curl), and portguard's per-leg counters
//! checked against what the receivers saw. `cargo xtask run -- --scenario
//! edge` prints it; the `lab_edge` test asserts on it.

use std::{
    collections::BTreeSet,
    io::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    lab::{
        Daemon, PeerResult, Proto, Server, check_interrupted, client_run, last_line, spawn_live,
        start, test_certificate, wait_attached,
    },
    netns::{NetNs, addr, in_netns, ns_exec, thread_in, veth_pair},
    ops::{Scrape, http_get},
    sockets::Counter,
};

/// The appliance's internet-side leg.
pub const EXT_IF: &str = "pgext0";
/// The appliance's DMZ-side leg.
pub const DMZ_IF: &str = "pgdmz0";
/// The internet namespace's end of the link to the appliance.
const INET_IF: &str = "pginet0";
/// The DMZ namespace's end of the link to the appliance.
const DMZ_HOST_IF: &str = "pgsrv0";
/// portguard's metrics endpoint, on the appliance namespace's loopback.
pub const METRICS: &str = "127.0.0.1:9477";

const UDP_DATAGRAMS: u32 = 20;
const TCP_MESSAGES: u32 = 3;
/// The A/V Edge's media port and its internet peer's, for the relay over
/// plain sockets: the peer's port is in 50000-59999 because the outbound rule
/// matches the destination port.
const MEDIA_EDGE_PORT: u16 = 50_000;
const MEDIA_PEER_PORT: u16 = 50_010;
/// The source port of the unsolicited datagrams to the A/V Edge's media
/// port: not the port the Edge talked to, so no flow covers them.
const UNSOLICITED_PORT: u16 = 40_000;
/// turnutils_peer's port for a relay the rules allow (in 50000-59999) and
/// for one they do not (coturn's default peer port).
const TURN_PEER_ALLOWED: u16 = 50_500;
const TURN_PEER_FORBIDDEN: u16 = 3480;
const TURN_USER: &str = "lab";
const TURN_REALM: &str = "portguard.lab";

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

/// What one row of traffic did.
#[derive(Debug, Clone)]
pub struct Row {
    pub family: Family,
    pub proto: Proto,
    pub from: Host,
    pub to: Host,
    pub port: u16,
    pub what: &'static str,
    pub allowed: bool,
    /// UDP: datagrams; TCP: connection attempts.
    pub sent: u32,
    /// UDP: datagrams; TCP: connections over which the messages arrived.
    pub received: u32,
}

impl Row {
    fn from_case(family: Family, c: &Case, sent: u32, received: u32) -> Row {
        Row {
            family,
            proto: c.proto,
            from: c.from,
            to: c.to,
            port: c.port,
            what: c.what,
            allowed: c.allowed,
            sent,
            received,
        }
    }
}

/// What one run of the edge lab saw.
#[derive(Debug)]
pub struct Report {
    /// Whether portguard ran (without it every row is expected to arrive).
    pub firewall: bool,
    pub namespaces: [String; 3],
    pub rows: Vec<Row>,
    /// Scraped while portguard ran, after the socket traffic and before the peers.
    pub metrics: Option<Scrape>,
    pub summary: String,
    /// Whether both legs were free of XDP after portguard exited.
    pub detached: bool,
    pub peers: Vec<PeerResult>,
}

impl Report {
    /// Whether a row should have arrived: without portguard, everything does.
    pub fn expected(&self, row: &Row) -> bool {
        row.allowed || !self.firewall
    }

    pub fn row_ok(&self, row: &Row) -> bool {
        if self.expected(row) {
            row.sent > 0 && row.received == row.sent
        } else {
            row.received == 0
        }
    }

    /// One line per row whose delivery differs from the policy.
    pub fn case_failures(&self) -> Vec<String> {
        self.rows
            .iter()
            .filter(|r| !self.row_ok(r))
            .map(|r| {
                format!(
                    "{} {} {} -> {} port {} ({}): sent {} received {} but it is {}",
                    r.family.name(),
                    r.proto.name(),
                    r.from.name(),
                    r.to.name(),
                    r.port,
                    r.what,
                    r.sent,
                    r.received,
                    if r.allowed { "allowed" } else { "forbidden" }
                )
            })
            .collect()
    }

    /// Sum over the rows that match: what they sent, or received.
    fn total(&self, pred: impl Fn(&Row) -> bool, field: impl Fn(&Row) -> u32) -> u32 {
        self.rows.iter().filter(|r| pred(r)).map(field).sum()
    }

    fn packets(&self, iface: &str, labels: &[(&str, &str)]) -> f64 {
        let mut all = vec![("iface", iface)];
        all.extend_from_slice(labels);
        // `+ 0.0`: an empty float sum is -0.0, which would print as such.
        self.metrics
            .as_ref()
            .map_or(0.0, |m| m.sum("portguard_packets_total", &all))
            + 0.0
    }

    /// portguard's per-leg counters against what the receivers saw: (ok,
    /// text). UDP is exact on each leg (only the lab sends UDP here, and
    /// the peers run after the scrape); TCP retransmits SYNs, so its counts
    /// are lower bounds.
    pub fn counter_checks(&self) -> Vec<(bool, String)> {
        if !self.firewall {
            return Vec::new();
        }
        let inbound = |r: &Row| r.from.side() == Side::Internet;
        let outbound = |r: &Row| r.from.side() == Side::Dmz;
        let udp = |r: &Row| r.proto == Proto::Udp;
        let tcp = |r: &Row| r.proto == Proto::Tcp;
        let sent = |r: &Row| r.sent;
        let received = |r: &Row| r.received;
        let udp_in_arrived = self.total(|r| inbound(r) && udp(r), received);
        let udp_in_forbidden = self.total(|r| inbound(r) && udp(r) && !r.allowed, sent);
        let udp_out_arrived = self.total(|r| outbound(r) && udp(r), received);
        let udp_out_forbidden = self.total(|r| outbound(r) && udp(r) && !r.allowed, sent);
        let answers = self.total(
            |r| inbound(r) && udp(r) && r.what == MEDIA_ANSWERS,
            received,
        );
        let tcp_in_forbidden = self.total(|r| inbound(r) && tcp(r) && !r.allowed, sent);
        let tcp_out_forbidden = self.total(|r| outbound(r) && tcp(r) && !r.allowed, sent);
        // Connections to the DMZ that opened: each one's SYN-ACK comes back
        // on the DMZ leg as established; likewise outbound ones on the EXT leg.
        let tcp_in_opened = self.total(
            |r| inbound(r) && tcp(r) && r.to != Host::Appliance && r.allowed,
            received,
        );
        let tcp_out_opened = self.total(|r| outbound(r) && tcp(r) && r.allowed, received);

        let p = |iface: &str, labels: &[(&str, &str)]| self.packets(iface, labels);
        let native = |iface: &str| {
            self.metrics.as_ref().map_or(0.0, |m| {
                m.sum(
                    "portguard_xdp_attached",
                    &[("iface", iface), ("mode", "native")],
                )
            })
        };
        let mut checks = vec![(
            self.metrics.is_some(),
            format!("metrics endpoint answered on {METRICS} in the appliance namespace"),
        )];
        for iface in [EXT_IF, DMZ_IF] {
            checks.push((
                native(iface) == 1.0,
                format!("portguard_xdp_attached{{iface=\"{iface}\",mode=\"native\"}} = 1"),
            ));
        }
        let f = f64::from;
        let udp_pass = [("proto", "udp"), ("verdict", "pass")];
        let udp_drop = [("proto", "udp"), ("verdict", "drop")];
        let tcp_drop = [("proto", "tcp"), ("verdict", "drop")];
        let tcp_est = [
            ("proto", "tcp"),
            ("verdict", "pass"),
            ("service", "established"),
        ];
        let udp_est = [
            ("proto", "udp"),
            ("verdict", "pass"),
            ("service", "established"),
        ];
        let (ext_udp_pass, dmz_udp_pass) = (p(EXT_IF, &udp_pass), p(DMZ_IF, &udp_pass));
        let (ext_udp_drop, dmz_udp_drop) = (p(EXT_IF, &udp_drop), p(DMZ_IF, &udp_drop));
        let (ext_tcp_drop, dmz_tcp_drop) = (p(EXT_IF, &tcp_drop), p(DMZ_IF, &tcp_drop));
        let (ext_tcp_est, dmz_tcp_est) = (p(EXT_IF, &tcp_est), p(DMZ_IF, &tcp_est));
        let ext_udp_est = p(EXT_IF, &udp_est);
        checks.extend([
            (
                ext_udp_pass == f(udp_in_arrived),
                format!(
                    "{EXT_IF}: UDP passed {ext_udp_pass} = UDP datagrams that reached the DMZ {udp_in_arrived}"
                ),
            ),
            (
                ext_udp_est == f(answers),
                format!(
                    "{EXT_IF}: UDP passed as established {ext_udp_est} = media answers that reached the A/V Edge {answers}"
                ),
            ),
            (
                ext_udp_drop == f(udp_in_forbidden),
                format!(
                    "{EXT_IF}: UDP dropped {ext_udp_drop} = forbidden UDP sent from the internet {udp_in_forbidden}"
                ),
            ),
            (
                dmz_udp_pass == f(udp_out_arrived),
                format!(
                    "{DMZ_IF}: UDP passed {dmz_udp_pass} = UDP datagrams that reached the internet {udp_out_arrived}"
                ),
            ),
            (
                dmz_udp_drop == f(udp_out_forbidden),
                format!(
                    "{DMZ_IF}: UDP dropped {dmz_udp_drop} = forbidden UDP sent from the DMZ {udp_out_forbidden}"
                ),
            ),
            (
                ext_tcp_drop >= f(tcp_in_forbidden),
                format!(
                    "{EXT_IF}: TCP dropped {ext_tcp_drop} >= forbidden connection attempts from the internet {tcp_in_forbidden}"
                ),
            ),
            (
                dmz_tcp_drop >= f(tcp_out_forbidden),
                format!(
                    "{DMZ_IF}: TCP dropped {dmz_tcp_drop} >= forbidden connection attempts from the DMZ {tcp_out_forbidden}"
                ),
            ),
            (
                dmz_tcp_est >= f(tcp_in_opened) && tcp_in_opened > 0,
                format!(
                    "{DMZ_IF}: TCP answers passed as established {dmz_tcp_est} >= connections opened into the DMZ {tcp_in_opened}"
                ),
            ),
            (
                ext_tcp_est >= f(tcp_out_opened) && tcp_out_opened > 0,
                format!(
                    "{EXT_IF}: TCP answers passed as established {ext_tcp_est} >= connections opened out of the DMZ {tcp_out_opened}"
                ),
            ),
        ]);
        checks.push((
            self.detached,
            format!("no XDP program left on {EXT_IF} or {DMZ_IF} after SIGINT"),
        ));
        checks
    }

    pub fn mismatches(&self) -> usize {
        self.rows.iter().filter(|r| !self.row_ok(r)).count()
            + self.counter_checks().iter().filter(|(ok, _)| !ok).count()
            + self.peers.iter().filter(|p| !p.ok).count()
    }
}

/// The `what` of the media rows, which the counter checks pick out.
const MEDIA_OUT: &str = "media relay out of the A/V Edge";
const MEDIA_ANSWERS: &str = "the answers to it (established)";
const MEDIA_UNSOLICITED: &str = "unsolicited media to the A/V Edge";
const MEDIA_OTHER_PORT: &str = "the answering peer to another Edge port";

/// The rows [`media_relay`] adds per family, after the [`CASES`].
pub const MEDIA_ROWS: usize = 4;

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

/// The three namespaces and their links, removed on drop.
struct Topology {
    internet: NetNs,
    appliance: NetNs,
    dmz: NetNs,
}

impl Topology {
    fn build() -> Result<Topology> {
        let t = Topology {
            internet: NetNs::new("pg-inet")?,
            appliance: NetNs::new("pg-appl")?,
            dmz: NetNs::new("pg-dmz")?,
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
        veth_pair(&t.internet, INET_IF, &t.appliance, EXT_IF)?;
        veth_pair(&t.appliance, DMZ_IF, &t.dmz, DMZ_HOST_IF)?;
        for family in FAMILIES {
            let (len, gw_ext, gw_dmz) = match family {
                Family::V4 => (24, "198.18.1.1", "198.18.2.1"),
                Family::V6 => (64, "2001:db8:1::1", "2001:db8:2::1"),
            };
            addr(&t.internet, INET_IF, &cidr(Host::Internet, family, len))?;
            addr(&t.appliance, EXT_IF, &cidr(Host::Appliance, family, len))?;
            addr(&t.appliance, DMZ_IF, &format!("{gw_dmz}/{len}"))?;
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

/// Sets `net.*` sysctls of `ns` by writing /proc/sys from a thread inside
/// it (those files belong to the network namespace of the thread that
/// opens them; no `sysctl` binary needed).
fn sysctl(ns: &NetNs, settings: &[(&str, &str)]) -> Result<()> {
    in_netns(ns, || -> Result<()> {
        for (key, value) in settings {
            let path = Path::new("/proc/sys").join(key.replace('.', "/"));
            std::fs::write(&path, value)
                .with_context(|| format!("setting {key}={value} in {}", ns.name()))?;
        }
        Ok(())
    })?
}

fn cidr(host: Host, family: Family, len: u8) -> String {
    format!("{}/{len}", host.ip(family))
}

/// `portguard run` on both legs, one profile per DMZ address and family.
pub fn portguard_args() -> Vec<String> {
    let mut args: Vec<String> = ["run", "--iface", EXT_IF, "--iface", DMZ_IF]
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
    let topo = Topology::build()?;
    let mut daemon = match opts.bin {
        Some(bin) => {
            let bin = bin.to_str().context("portguard path is not UTF-8")?;
            let args = portguard_args();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let mut d = Daemon::spawn(ns_exec(&topo.appliance, bin, &args))?;
            wait_attached(&topo.appliance, &[EXT_IF, DMZ_IF], &mut d, interrupted)?;
            Some(d)
        }
        None => None,
    };

    let live_stop = Arc::new(AtomicBool::new(false));
    let live =
        (opts.live && daemon.is_some()).then(|| spawn_live(&topo.appliance, live_stop.clone()));
    let mut rows = socket_cases(&topo)?;
    rows.extend(media_relay(&topo)?);
    // The counters now, while portguard runs and before the peers add theirs.
    let metrics = daemon.as_ref().and_then(|_| {
        in_netns(&topo.appliance, || http_get(METRICS, "/metrics"))
            .ok()?
            .ok()
            .map(|text| Scrape::parse(&text))
    });
    check_interrupted(interrupted)?;
    let peers = if opts.peers {
        run_peers(&topo, daemon.is_some())?
    } else {
        Vec::new()
    };
    if let Some(Ok(h)) = live {
        live_stop.store(true, Ordering::SeqCst);
        let _ = h.join();
    }
    check_interrupted(interrupted)?;
    let (summary, detached) = match daemon.as_mut() {
        Some(d) => {
            let (summary, _log) = d.stop(Duration::from_secs(10))?;
            let mut detached = true;
            for iface in [EXT_IF, DMZ_IF] {
                detached &= !topo
                    .appliance
                    .ip(&["link", "show", "dev", iface])?
                    .contains("prog/xdp");
            }
            (summary, detached)
        }
        None => (String::new(), true),
    };
    Ok(Report {
        firewall: daemon.is_some(),
        namespaces: [
            topo.internet.name().into(),
            topo.appliance.name().into(),
            topo.dmz.name().into(),
        ],
        rows,
        metrics,
        summary,
        detached,
        peers,
    })
}

/// Every case in both families at once: the listeners first, then one
/// sending thread per case in the sender's namespace (a forbidden TCP
/// attempt waits out its timeout, so they run side by side).
fn socket_cases(topo: &Topology) -> Result<Vec<Row>> {
    let mut seen = BTreeSet::new();
    for c in &CASES {
        if !seen.insert((c.to, c.port, c.proto)) {
            bail!(
                "two cases listen on {} {} {}",
                c.to.name(),
                c.proto.name(),
                c.port
            );
        }
    }
    let mut listeners = Vec::new();
    for family in FAMILIES {
        for c in &CASES {
            let at = SocketAddr::new(c.to.ip(family), c.port);
            let counter = in_netns(topo.ns(c.to.side()), || match c.proto {
                Proto::Udp => Counter::udp(at),
                Proto::Tcp => Counter::tcp(at),
            })?
            .with_context(|| format!("binding {} {at}", c.proto.name()))?;
            listeners.push(counter);
        }
    }
    let mut senders: Vec<JoinHandle<std::io::Result<u32>>> = Vec::new();
    for family in FAMILIES {
        for c in &CASES {
            let from = c.from.ip(family);
            let to = SocketAddr::new(c.to.ip(family), c.port);
            let proto = c.proto;
            senders.push(thread_in(topo.ns(c.from.side()), move || {
                send_case(proto, from, to)
            })?);
        }
    }
    let sent: Vec<u32> = senders
        .into_iter()
        .map(|h| h.join().ok().and_then(Result::ok).unwrap_or(0))
        .collect();
    // Let the last packets land before the listeners stop.
    std::thread::sleep(Duration::from_millis(300));
    let mut rows = Vec::new();
    let mut i = 0;
    let mut listeners = listeners.into_iter();
    for family in FAMILIES {
        for c in &CASES {
            let received = listeners.next().map_or(0, |l| l.finish().count);
            rows.push(Row::from_case(family, c, sent[i], received));
            i += 1;
        }
    }
    Ok(rows)
}

/// UDP: datagrams from `from`; TCP: one attempt (from the route's source
/// address) that writes a few messages if it connects, counted as one.
fn send_case(proto: Proto, from: IpAddr, to: SocketAddr) -> u32 {
    match proto {
        Proto::Udp => {
            let Ok(sock) = UdpSocket::bind(SocketAddr::new(from, 0)) else {
                return 0;
            };
            let sent = (0..UDP_DATAGRAMS)
                .filter(|i| {
                    std::thread::sleep(Duration::from_millis(2));
                    sock.send_to(format!("portguard edge lab {i}").as_bytes(), to)
                        .is_ok()
                })
                .count();
            u32::try_from(sent).unwrap_or(u32::MAX)
        }
        Proto::Tcp => {
            if let Ok(mut s) = TcpStream::connect_timeout(&to, Duration::from_secs(1)) {
                for i in 0..TCP_MESSAGES {
                    let _ = s.write_all(format!("portguard edge lab message {i}\n").as_bytes());
                }
            }
            1
        }
    }
}

/// Media out of the A/V Edge over plain sockets, per family: the Edge sends
/// from its media port to an internet peer that echoes every datagram; then
/// the peer's host sends unsolicited datagrams to the same media port from
/// another port, and the peer from its answering port to another media port
/// of the Edge. Four rows: out, answers, and the two unsolicited ones.
fn media_relay(topo: &Topology) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for family in FAMILIES {
        let edge_at = SocketAddr::new(Host::AvEdge.ip(family), MEDIA_EDGE_PORT);
        let peer_at = SocketAddr::new(Host::Internet.ip(family), MEDIA_PEER_PORT);
        let stop = Arc::new(AtomicBool::new(false));
        let (echoed, answers, unsolicited) = (
            Arc::new(AtomicU32::new(0)),
            Arc::new(AtomicU32::new(0)),
            Arc::new(AtomicU32::new(0)),
        );
        let peer = in_netns(&topo.internet, || UdpSocket::bind(peer_at))?
            .with_context(|| format!("binding the media peer {peer_at}"))?;
        let edge = in_netns(&topo.dmz, || UdpSocket::bind(edge_at))?
            .with_context(|| format!("binding the A/V Edge media port {edge_at}"))?;
        let intruder = in_netns(&topo.internet, || {
            UdpSocket::bind(SocketAddr::new(Host::Internet.ip(family), UNSOLICITED_PORT))
        })?
        .context("binding the unsolicited sender")?;
        // A media port the Edge never sent from: the exchange must not open it.
        let other_at = SocketAddr::new(Host::AvEdge.ip(family), MEDIA_EDGE_PORT + 1);
        let other = in_netns(&topo.dmz, || Counter::udp(other_at))?
            .with_context(|| format!("binding {other_at}"))?;
        for s in [&peer, &edge] {
            s.set_read_timeout(Some(Duration::from_millis(20)))?;
        }
        let peer_tx = peer.try_clone()?;
        let echo = {
            let (stop, echoed) = (stop.clone(), echoed.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::SeqCst) {
                    if let Ok((n, from)) = peer.recv_from(&mut buf)
                        && peer.send_to(&buf[..n], from).is_ok()
                    {
                        echoed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        };
        let edge_rx = edge.try_clone()?;
        let receiver = {
            let (stop, answers, unsolicited) = (stop.clone(), answers.clone(), unsolicited.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::SeqCst) {
                    if let Ok((_, from)) = edge_rx.recv_from(&mut buf) {
                        let counter = if from == peer_at {
                            &answers
                        } else {
                            &unsolicited
                        };
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        };
        let send = |sock: &UdpSocket, to: SocketAddr, what: &str| -> u32 {
            let n = (0..UDP_DATAGRAMS)
                .filter(|i| {
                    std::thread::sleep(Duration::from_millis(2));
                    sock.send_to(format!("{what} {i}").as_bytes(), to).is_ok()
                })
                .count();
            u32::try_from(n).unwrap_or(u32::MAX)
        };
        let out = send(&edge, peer_at, "media");
        std::thread::sleep(Duration::from_millis(200));
        // After the exchange, so that a flow opened by it would show.
        let intruded = send(&intruder, edge_at, "unsolicited");
        let to_other = send(&peer_tx, other_at, "other port");
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::SeqCst);
        let _ = echo.join();
        let _ = receiver.join();
        let echoed = echoed.load(Ordering::SeqCst);
        let media = |from, to, port, what, allowed, sent, received| Row {
            family,
            proto: Proto::Udp,
            from,
            to,
            port,
            what,
            allowed,
            sent,
            received,
        };
        rows.extend([
            media(
                Host::AvEdge,
                Host::Internet,
                MEDIA_PEER_PORT,
                MEDIA_OUT,
                true,
                out,
                echoed,
            ),
            media(
                Host::Internet,
                Host::AvEdge,
                MEDIA_EDGE_PORT,
                MEDIA_ANSWERS,
                true,
                echoed,
                answers.load(Ordering::SeqCst),
            ),
            media(
                Host::Internet,
                Host::AvEdge,
                MEDIA_EDGE_PORT,
                MEDIA_UNSOLICITED,
                false,
                intruded,
                unsolicited.load(Ordering::SeqCst),
            ),
            media(
                Host::Internet,
                Host::AvEdge,
                MEDIA_EDGE_PORT + 1,
                MEDIA_OTHER_PORT,
                false,
                to_other,
                other.finish().count,
            ),
        ]);
    }
    Ok(rows)
}

/// One client run: what it is, whether the rules allow it, the command.
struct PeerRun {
    name: String,
    target: String,
    allowed: bool,
    program: &'static str,
    args: Vec<String>,
    secs: u64,
    /// Whether the output shows the conversation got through.
    through: fn(bool, &str) -> (bool, String),
}

/// sipp binds a media port (6000 unless told) even when no media flows:
/// the two sipp processes on one address (5061 and 5062, side by side)
/// need their own, as they need their own SIP port.
fn sipp_media_port(sip_port: u16) -> String {
    (6000 + (sip_port - 5061) * 100).to_string()
}

fn sipp_through(ok: bool, text: &str) -> (bool, String) {
    let calls = text
        .lines()
        .find(|l| l.contains("Successful call"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "));
    let all = calls.as_deref().is_some_and(|c| c.ends_with(" 5"));
    (ok && all, calls.unwrap_or_else(|| last_line(text)))
}

fn stun_through(ok: bool, text: &str) -> (bool, String) {
    let mapped = text
        .lines()
        .find(|l| l.contains("reflexive addr"))
        .map(|l| l.trim().to_string());
    (
        ok && mapped.is_some(),
        mapped.unwrap_or_else(|| last_line(text)),
    )
}

fn curl_through(ok: bool, text: &str) -> (bool, String) {
    (
        ok && text.trim() == "200",
        format!(
            "HTTP {}",
            if text.trim().is_empty() {
                "-"
            } else {
                text.trim()
            }
        ),
    )
}

/// turnutils_uclient's last tally: `tot_send_msgs=N, tot_recv_msgs=M`.
fn turn_through(_ok: bool, text: &str) -> (bool, String) {
    let tally = text.lines().rev().find(|l| l.contains("tot_recv_msgs="));
    let number = |key: &str| -> Option<u32> {
        let rest = tally?.split(key).nth(1)?;
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    match (number("tot_send_msgs="), number("tot_recv_msgs=")) {
        (Some(sent), Some(recv)) => (
            sent > 0 && recv == sent,
            format!("{sent} relayed out, {recv} came back"),
        ),
        _ => (false, last_line(text)),
    }
}

/// The servers (in the DMZ and on the internet) and the clients, each client
/// against a server that listens, so a forbidden one fails because of
/// portguard alone. The clients run side by side.
fn run_peers(topo: &Topology, firewall: bool) -> Result<Vec<PeerResult>> {
    // Named after a namespace: unique across runs and parallel tests.
    let dir = std::env::temp_dir().join(format!("portguard-{}", topo.dmz.name()));
    std::fs::create_dir_all(&dir)?;
    let result = run_peers_in(topo, &dir, firewall);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_peers_in(topo: &Topology, dir: &Path, firewall: bool) -> Result<Vec<PeerResult>> {
    let mut servers: Vec<Server> = Vec::new();
    for family in FAMILIES {
        let access = Host::AccessEdge.ip(family).to_string();
        for port in [5061, 5062] {
            let (port, media) = (port.to_string(), sipp_media_port(port));
            servers.push(start(
                &topo.dmz,
                "sipp",
                &[
                    "-sn", "uas", "-i", &access, "-p", &port, "-mp", &media, "-t", "t1", "-nostdin",
                ],
            )?);
        }
    }
    let (cert, key) = test_certificate(dir)?;
    // One wildcard listener per port serves every DMZ address, both families.
    for port in ["443", "4443"] {
        servers.push(start(
            &topo.dmz,
            "openssl",
            &[
                "s_server", "-accept", port, "-cert", &cert, "-key", &key, "-www", "-quiet",
            ],
        )?);
    }
    let pidfile = dir.join("turnserver.pid").to_string_lossy().into_owned();
    let user = format!("{TURN_USER}:{TURN_USER}");
    let mut turn = vec![
        "-p",
        "3478",
        "--min-port",
        "50000",
        "--max-port",
        "59999",
        "--lt-cred-mech",
        "--user",
        &user,
        "--realm",
        TURN_REALM,
        "--no-tls",
        "--no-dtls",
        "--no-cli",
        "--no-rfc5780",
        "-n",
        "--no-stdout-log",
        "--log-file",
        "/dev/null",
        "--pidfile",
        &pidfile,
        "--allowed-peer-ip",
        "198.18.0.0-198.19.255.255",
        "--allowed-peer-ip",
        "2001:db8::-2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
    ];
    let addrs: Vec<String> = FAMILIES
        .iter()
        .flat_map(|f| {
            [
                Host::AvEdge.ip(*f).to_string(),
                Host::WebConf.ip(*f).to_string(),
            ]
        })
        .collect();
    let relays: Vec<String> = FAMILIES
        .iter()
        .map(|f| Host::AvEdge.ip(*f).to_string())
        .collect();
    for a in &addrs {
        turn.extend(["-L", a]);
    }
    for r in &relays {
        turn.extend(["-E", r]);
    }
    servers.push(start(&topo.dmz, "turnserver", &turn)?);
    for port in [TURN_PEER_ALLOWED, TURN_PEER_FORBIDDEN] {
        let port = port.to_string();
        let mut args = vec!["-p", &port];
        let locals: Vec<String> = FAMILIES
            .iter()
            .map(|f| Host::Internet.ip(*f).to_string())
            .collect();
        for l in &locals {
            args.extend(["-L", l]);
        }
        servers.push(start(&topo.internet, "turnutils_peer", &args)?);
    }
    // The servers bind asynchronously; the clients retry within their deadline.
    std::thread::sleep(Duration::from_millis(700));

    let mut runs = Vec::new();
    for family in FAMILIES {
        runs.extend(peer_runs(family));
    }
    let results = std::thread::scope(|scope| {
        let handles: Vec<_> = runs
            .into_iter()
            .map(|run| scope.spawn(move || peer_result(&topo.internet, run, firewall)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect::<Result<Vec<_>>>()
    })?;
    drop(servers);
    Ok(results)
}

/// Runs one client and judges it: a forbidden one is OK when it did not
/// get through (without the firewall, every one should).
fn peer_result(internet: &NetNs, run: PeerRun, firewall: bool) -> Result<PeerResult> {
    let expected = run.allowed || !firewall;
    let args: Vec<&str> = run.args.iter().map(String::as_str).collect();
    let (ok, text) = client_run(internet, run.program, &args, run.secs)?;
    let (through, detail) = (run.through)(ok, &text);
    Ok(PeerResult {
        name: run.name,
        target: run.target,
        ok: through == expected,
        detail: match (through, expected) {
            (true, false) => format!("got through: {detail}"),
            (false, false) => format!("blocked ({detail})"),
            _ => detail,
        },
    })
}

fn peer_runs(family: Family) -> Vec<PeerRun> {
    let f = family.name();
    let host = |h: Host| h.ip(family).to_string();
    let url_host = |h: Host| match family {
        Family::V4 => host(h),
        Family::V6 => format!("[{}]", host(h)),
    };
    let sip = |port: u16, allowed| PeerRun {
        name: format!("sipp, 5 SIP calls ({f})"),
        target: format!("Access Edge tcp {port}"),
        allowed,
        program: "sipp",
        args: [
            "-sn",
            "uac",
            &format!("{}:{port}", url_host(Host::AccessEdge)),
            "-i",
            &host(Host::Internet),
            "-p",
            &(port + 10_000).to_string(),
            "-mp",
            &sipp_media_port(port),
            "-t",
            "t1",
            "-m",
            "5",
            "-r",
            "10",
            "-nostdin",
            "-timeout",
            "6s",
        ]
        .map(String::from)
        .into(),
        secs: 8,
        through: sipp_through,
    };
    let curl = |to: Host, port: u16, allowed| PeerRun {
        name: format!("curl, HTTPS GET ({f})"),
        target: format!("{} tcp {port}", to.name()),
        allowed,
        program: "curl",
        args: [
            "-sk",
            "--max-time",
            "4",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("https://{}:{port}/", url_host(to)),
        ]
        .map(String::from)
        .into(),
        secs: 6,
        through: curl_through,
    };
    let stun = |to: Host, allowed| PeerRun {
        name: format!("turnutils_stunclient, STUN binding ({f})"),
        target: format!("{} udp 3478", to.name()),
        allowed,
        program: "turnutils_stunclient",
        args: ["-p", "3478", "-L", &host(Host::Internet), &host(to)]
            .map(String::from)
            .into(),
        secs: 5,
        through: stun_through,
    };
    let relay = |peer_port: u16, allowed| {
        let mut args: Vec<String> = [
            "-u",
            TURN_USER,
            "-w",
            TURN_USER,
            "-e",
            &host(Host::Internet),
            "-r",
            &peer_port.to_string(),
            "-n",
            "20",
            "-c",
            "-L",
            &host(Host::Internet),
        ]
        .map(String::from)
        .into();
        if family == Family::V6 {
            args.push("-x".into());
        }
        args.push(host(Host::AvEdge));
        PeerRun {
            name: format!("turnutils_uclient, TURN media relay ({f})"),
            target: format!("A/V Edge relay to udp {peer_port}"),
            allowed,
            program: "turnutils_uclient",
            args,
            secs: 8,
            through: turn_through,
        }
    };
    vec![
        sip(5061, true),
        curl(Host::AccessEdge, 443, true),
        curl(Host::ReverseProxy, 443, true),
        stun(Host::AvEdge, true),
        relay(TURN_PEER_ALLOWED, true),
        sip(5062, false),
        curl(Host::ReverseProxy, 4443, false),
        stun(Host::WebConf, false),
        relay(TURN_PEER_FORBIDDEN, false),
    ]
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn peer_outputs_are_read() {
        let sipp = "  Successful call        |        0                  |        5    \n";
        assert_eq!(
            sipp_through(true, sipp),
            (true, "Successful call | 0 | 5".to_string())
        );
        assert!(!sipp_through(true, &sipp.replace('5', "0")).0);
        let turn = "1: : start_mclient: msz=1, tot_send_msgs=0, tot_recv_msgs=0\n\
                    3: : start_mclient: tot_send_msgs=20, tot_recv_msgs=20\n\
                    3: : Total lost packets 0 (0.000000%)\n";
        assert_eq!(
            turn_through(true, turn),
            (true, "20 relayed out, 20 came back".to_string())
        );
        let lost =
            "7: : start_mclient: msz=1, tot_send_msgs=20, tot_recv_msgs=0, tot_send_bytes ~ 2000\n";
        assert_eq!(
            turn_through(true, lost),
            (false, "20 relayed out, 0 came back".to_string())
        );
        assert!(stun_through(true, "0: : IPv4. UDP reflexive addr: 198.18.1.2:5000\n").0);
        assert!(!stun_through(true, "").0);
        assert!(curl_through(true, "200").0);
        assert!(!curl_through(false, "000").0);
    }

    fn row(proto: Proto, from: Host, to: Host, what: &'static str, allowed: bool, n: u32) -> Row {
        Row {
            family: Family::V4,
            proto,
            from,
            to,
            port: 1,
            what,
            allowed,
            sent: n,
            received: if allowed { n } else { 0 },
        }
    }

    fn report(metrics: &str) -> Report {
        Report {
            firewall: true,
            namespaces: Default::default(),
            rows: vec![
                row(Proto::Udp, Host::Internet, Host::AvEdge, "stun", true, 20),
                row(Proto::Udp, Host::Internet, Host::WebConf, "stun", false, 20),
                row(
                    Proto::Udp,
                    Host::AvEdge,
                    Host::Internet,
                    MEDIA_OUT,
                    true,
                    20,
                ),
                row(
                    Proto::Udp,
                    Host::Internet,
                    Host::AvEdge,
                    MEDIA_ANSWERS,
                    true,
                    20,
                ),
                row(Proto::Tcp, Host::Internet, Host::AccessEdge, "sip", true, 1),
                row(Proto::Tcp, Host::AccessEdge, Host::Internet, "sip", true, 1),
            ],
            metrics: Some(Scrape::parse(metrics)),
            summary: String::new(),
            detached: true,
            peers: Vec::new(),
        }
    }

    const AGREEING: &str = r#"portguard_xdp_attached{iface="pgext0",mode="native"} 1
portguard_xdp_attached{iface="pgdmz0",mode="native"} 1
portguard_packets_total{iface="pgext0",proto="udp",role="av-edge-external",service="s",verdict="pass"} 20
portguard_packets_total{iface="pgext0",proto="udp",role="-",service="established",verdict="pass"} 20
portguard_packets_total{iface="pgext0",proto="udp",role="-",service="port_not_allowed",verdict="drop"} 20
portguard_packets_total{iface="pgdmz0",proto="udp",role="av-edge-external",service="m",verdict="pass"} 20
portguard_packets_total{iface="pgdmz0",proto="tcp",role="-",service="established",verdict="pass"} 2
portguard_packets_total{iface="pgext0",proto="tcp",role="-",service="established",verdict="pass"} 2
"#;

    #[test]
    fn counters_that_agree_with_the_receivers_pass_every_check() {
        let r = report(AGREEING);
        let failed: Vec<_> = r
            .counter_checks()
            .into_iter()
            .filter(|(ok, _)| !ok)
            .collect();
        assert!(failed.is_empty(), "{failed:?}");
        assert_eq!(r.mismatches(), 0);
    }

    #[test]
    fn a_counter_on_the_wrong_leg_or_verdict_is_a_mismatch() {
        // The media answers counted as passed by a rule instead of as
        // established; and the forbidden STUN passed on the DMZ leg.
        let wrong = AGREEING
            .replace(
                r#"role="-",service="established",verdict="pass"} 20"#,
                r#"role="av-edge-external",service="x",verdict="pass"} 20"#,
            )
            .replace(
                r#"iface="pgext0",proto="udp",role="-",service="port_not_allowed""#,
                r#"iface="pgdmz0",proto="udp",role="-",service="port_not_allowed""#,
            );
        let failed: Vec<String> = report(&wrong)
            .counter_checks()
            .into_iter()
            .filter(|(ok, _)| !ok)
            .map(|(_, text)| text)
            .collect();
        assert_eq!(failed.len(), 3, "{failed:#?}");
        assert!(failed[0].contains("established"), "{failed:#?}");
        assert!(
            failed
                .iter()
                .any(|f| f.starts_with("pgext0: UDP dropped 0")),
            "{failed:#?}"
        );
        assert!(
            failed
                .iter()
                .any(|f| f.starts_with("pgdmz0: UDP dropped 20")),
            "{failed:#?}"
        );
    }

    #[test]
    fn without_the_firewall_forbidden_rows_are_expected_to_arrive() {
        let mut r = report("");
        r.firewall = false;
        r.rows[1].received = 20;
        assert!(r.case_failures().is_empty(), "{:?}", r.case_failures());
        assert!(r.counter_checks().is_empty());
        r.firewall = true;
        assert_eq!(r.case_failures().len(), 1);
    }
}
