//! Section 7 (issue 22): a spoofed SYN flood through a router to a port the
//! policy opens, against the connections already established through it.
//!
//! Three namespaces: a sender (the internet side: trafgen and a legitimate
//! client), a router forwarding between its two veth legs, and a server (the DMZ: an Access Edge address with a TCP listener on 5061
//! that echoes each line). The router runs, each time in a fresh topology,
//! no filter (the forwarding floor), an empty XDP program on both legs (the
//! XDP floor), portguard in appliance mode on both legs, and nftables with
//! conntrack. Before the flood the client opens connections and leaves them
//! idle; during it, it opens new ones; after it, on each idle connection the
//! server speaks first (what only the firewall's state lets through) and
//! then the client gets an echo.

use std::{
    fmt::Write as _,
    io::{self, BufRead as _, BufReader, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use aya::{
    maps::{Map, MapData, PerCpuArray},
    programs::{Xdp, XdpMode},
};
use classifier_common::{
    FLOW_ENTRIES, FLOW_NEW_ENTRIES, FLOW_SHARE_DEFAULT, FLOW_SHARE_WINDOW_S, STAT_NEW_INSERTS,
    STAT_NEW_REFUSED, STAT_PROMOTED, map_names,
};
use portguard::{
    flow_table::{FlowFigures, figures_from_pins},
    loader::pin_dir,
    state::DEFAULT_BPFFS,
};
use testkit::netns::{self, NetNs, addr, in_netns, ns_exec, sysctl, thread_in, veth_pair};

use crate::{
    perpacket::load_floor,
    proc::{self, Proc, Trafgen},
    report::{Report, Target},
    sys,
};

/// The Access Edge's SIP/TLS port: open to anyone (`access-edge-external`).
const PORT: u16 = 5061;
const SERVER_V4: &str = "198.18.2.10";
const SERVER_V6: &str = "2001:db8:2::10";
const CLIENT_V4: &str = "198.18.1.2";
const CLIENT_V6: &str = "2001:db8:1::2";
const EXT_V4: &str = "198.18.1.1";
const EXT_V6: &str = "2001:db8:1::1";
const DMZ_V4: &str = "198.18.2.1";
const DMZ_V6: &str = "2001:db8:2::1";
/// The server's addresses as sockets take them (`SERVER_V4`, `SERVER_V6`).
const SERVER_V4_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 10);
const SERVER_V6_IP: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x10);
/// The flood's sources, a /16: routed back to the sender side, which has no
/// such address and does not forward, so the server's SYN-ACKs die there,
/// as they would at spoofed addresses on the internet.
const SPOOFED: [u8; 2] = [198, 19];
/// portguard's metrics endpoint, on the router namespace's loopback.
const METRICS: &str = "127.0.0.1:19478";
const PROFILES: [&str; 2] = [
    "198.18.2.10/32=access-edge-external",
    "2001:db8:2::10/128=access-edge-external",
];

/// Idle connections per family that carried a line each way before the
/// flood: established for every firewall (portguard confirms a TCP flow on
/// the answerer's first segment past the handshake).
const ESTABLISHED: usize = 20;
/// Idle connections per family that only completed the handshake: the
/// server has not spoken since its SYN-ACK. Established for conntrack (the
/// opener's ACK assures the entry), unconfirmed for portguard.
const HANDSHAKE_ONLY: usize = 10;
/// New connections opened during the flood, IPv4 and IPv6 in turn.
const NEW_DURING: usize = 10;
/// How long the server's first line may take to arrive: far above the
/// round trip of a veth, below a retransmission's second try.
const SERVER_FIRST_WAIT: Duration = Duration::from_secs(1);
const ECHO_WAIT: Duration = Duration::from_secs(2);
/// For a new connection during the flood: room for one SYN retransmission
/// (1 s), which a full conntrack table would cause.
const NEW_WAIT: Duration = Duration::from_secs(3);
/// A flood stops here even if it has not sent its SYNs (a machine busy with
/// other work): the section's time stays bounded.
const FLOOD_CAP: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Router {
    NoFilter,
    /// An XDP program that only passes, on both legs: what native XDP on
    /// a veth costs before any filter runs. A veth runs the program on the
    /// skb its peer sent, copied into a fresh page when its layout does not
    /// suit XDP; a real NIC's driver runs it on the receive buffer.
    XdpFloor,
    Portguard,
    Nftables,
}

impl Router {
    const ALL: [Router; 4] = [
        Router::NoFilter,
        Router::XdpFloor,
        Router::Portguard,
        Router::Nftables,
    ];

    fn label(self) -> &'static str {
        match self {
            Router::NoFilter => "no filter (forwarding only)",
            Router::XdpFloor => "empty XDP program on both legs (the XDP floor)",
            Router::Portguard => "portguard (appliance mode)",
            Router::Nftables => "nftables with conntrack",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn server(self) -> SocketAddr {
        let ip = match self {
            Family::V4 => IpAddr::V4(SERVER_V4_IP),
            Family::V6 => IpAddr::V6(SERVER_V6_IP),
        };
        SocketAddr::new(ip, PORT)
    }
}

fn spoofed() -> String {
    format!("{}.{}.0.0/16", SPOOFED[0], SPOOFED[1])
}

/// Sender, router and server, linked by two veth pairs; removed on drop.
struct Topology {
    sender: NetNs,
    router: NetNs,
    server: NetNs,
    /// The sender's end of the internet link: trafgen sends on it, and it
    /// holds the client's addresses.
    snd_if: String,
    /// The router's internet leg and DMZ leg.
    ext_if: String,
    dmz_if: String,
    /// The server's end of the DMZ link.
    srv_if: String,
    tmp: PathBuf,
}

impl Topology {
    fn build() -> Result<Topology> {
        let pid = std::process::id();
        let tmp = std::env::temp_dir().join(format!("portguard-bench-synflood-{pid}"));
        std::fs::create_dir_all(&tmp)?;
        let t = Topology {
            sender: NetNs::new("pgsyn-snd")?,
            router: NetNs::new("pgsyn-rtr")?,
            server: NetNs::new("pgsyn-srv")?,
            // Named after the bench's pid: portguard pins and locks by the
            // primary leg's name, on the host.
            snd_if: format!("pgss{pid}"),
            ext_if: format!("pgse{pid}"),
            dmz_if: format!("pgsd{pid}"),
            srv_if: format!("pgsv{pid}"),
            tmp,
        };
        // No duplicate address detection on link-local addresses either:
        // while they are tentative, the first IPv6 packets forwarded wait
        // on neighbour discovery.
        for ns in [&t.sender, &t.router, &t.server] {
            sysctl(
                ns,
                &[
                    ("net.ipv6.conf.all.accept_dad", "0"),
                    ("net.ipv6.conf.default.accept_dad", "0"),
                ],
            )?;
        }
        veth_pair(&t.sender, &t.snd_if, &t.router, &t.ext_if)?;
        veth_pair(&t.router, &t.dmz_if, &t.server, &t.srv_if)?;
        for (ns, ifname, v4, v6) in [
            (&t.sender, &t.snd_if, CLIENT_V4, CLIENT_V6),
            (&t.router, &t.ext_if, EXT_V4, EXT_V6),
            (&t.router, &t.dmz_if, DMZ_V4, DMZ_V6),
            (&t.server, &t.srv_if, SERVER_V4, SERVER_V6),
        ] {
            addr(ns, ifname, &format!("{v4}/24"))?;
            addr(ns, ifname, &format!("{v6}/64"))?;
        }
        t.sender
            .ip(&["-4", "route", "add", "default", "via", EXT_V4])?;
        t.sender
            .ip(&["-6", "route", "add", "default", "via", EXT_V6])?;
        t.server
            .ip(&["-4", "route", "add", "default", "via", DMZ_V4])?;
        t.server
            .ip(&["-6", "route", "add", "default", "via", DMZ_V6])?;
        t.router
            .ip(&["-4", "route", "add", &spoofed(), "via", CLIENT_V4])?;
        sysctl(
            &t.router,
            &[
                ("net.ipv4.ip_forward", "1"),
                ("net.ipv6.conf.all.forwarding", "1"),
            ],
        )?;
        // Linux's default, made explicit: a listener whose SYN queue is
        // full answers with cookies, and so keeps accepting real clients.
        sysctl(&t.server, &[("net.ipv4.tcp_syncookies", "1")])?;
        Ok(t)
    }

    /// One SYN to the server's 5061 from a random address of `SPOOFED` and a
    /// random port (2^32 pairs: practically every SYN a new flow),
    /// random sequence number and IP id, an MSS option; checksums computed
    /// by trafgen per packet.
    fn syn_conf(&self) -> Result<String> {
        let dst = sys::mac(&self.router, &self.ext_if)?;
        let src = sys::mac(&self.sender, &self.snd_if)?;
        let hex = |m: [u8; 6]| {
            m.iter()
                .map(|b| format!("0x{b:02x}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let server = SERVER_V4_IP.octets().map(|b| b.to_string()).join(", ");
        // IPv4 (20 bytes, DF) and TCP (24 bytes: a SYN with an MSS option).
        Ok(format!(
            "{{\n  {}, {},\n  0x08, 0x00,\n  \
             0x45, 0x00, 0x00, 44, drnd(2), 0x40, 0x00, 64, 6, csumip(14, 33),\n  \
             {}, {}, drnd(2),\n  {server},\n  \
             drnd(2), c16({PORT}), drnd(4), c32(0), 0x60, 0x02, c16(64240), csumtcp(14, 34), c16(0),\n  \
             0x02, 0x04, c16(1460)\n}}\n",
            hex(dst),
            hex(src),
            SPOOFED[0],
            SPOOFED[1],
        ))
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

/// The server: listeners on 5061 (IPv4 and IPv6) and a thread per
/// connection that echoes each line. It keeps every accepted stream, so
/// that it can speak first on one, and shuts them all down when dropped.
struct Server {
    stop: Arc<AtomicBool>,
    accepted: Arc<Mutex<Vec<(SocketAddr, TcpStream)>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl Server {
    fn start(ns: &NetNs) -> Result<Server> {
        let listeners = in_netns(ns, || -> io::Result<Vec<TcpListener>> {
            [Family::V4, Family::V6]
                .into_iter()
                .map(|f| TcpListener::bind(f.server()))
                .collect()
        })??;
        for l in &listeners {
            l.set_nonblocking(true)?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let accepted: Arc<Mutex<Vec<(SocketAddr, TcpStream)>>> = Arc::default();
        let (stop2, accepted2) = (stop.clone(), accepted.clone());
        let acceptor = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                let mut idle = true;
                for l in &listeners {
                    if let Ok((s, peer)) = l.accept() {
                        idle = false;
                        let _ = Server::serve(s, peer, &accepted2);
                    }
                }
                if idle {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        });
        Ok(Server {
            stop,
            accepted,
            acceptor: Some(acceptor),
        })
    }

    fn serve(
        s: TcpStream,
        peer: SocketAddr,
        accepted: &Mutex<Vec<(SocketAddr, TcpStream)>>,
    ) -> io::Result<()> {
        s.set_nonblocking(false)?;
        // A line is one segment, sent at once: Nagle would hold an echo
        // behind an unacknowledged line the firewall dropped.
        s.set_nodelay(true)?;
        let mut out = s.try_clone()?;
        accepted
            .lock()
            .map_err(|_| io::Error::other("poisoned"))?
            .push((peer, s.try_clone()?));
        std::thread::spawn(move || {
            for line in BufReader::new(s).lines().map_while(Result::ok) {
                if out.write_all(format!("{line}\n").as_bytes()).is_err() {
                    break;
                }
            }
        });
        Ok(())
    }

    fn count(&self) -> usize {
        self.accepted.lock().map_or(0, |a| a.len())
    }

    /// Writes `line` on the connection whose client is `peer`.
    fn say(&self, peer: SocketAddr, line: &str) -> Result<()> {
        let mut accepted = self
            .accepted
            .lock()
            .map_err(|_| anyhow::anyhow!("server registry poisoned"))?;
        let (_, s) = accepted
            .iter_mut()
            .find(|(p, _)| *p == peer)
            .with_context(|| format!("the server accepted no connection from {peer}"))?;
        s.write_all(format!("{line}\n").as_bytes())?;
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        if let Ok(accepted) = self.accepted.lock() {
            for (_, s) in accepted.iter() {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Established,
    HandshakeOnly,
}

/// A client connection, made in the sender's namespace.
struct Conn {
    id: usize,
    kind: Kind,
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    /// Bytes of a line not yet complete.
    pending: Vec<u8>,
    /// The server's first line arrived in time.
    server_first: bool,
    /// The server's first line arrived, but only after the client spoke.
    server_late: bool,
    /// The client's line came back.
    echo: bool,
}

impl Conn {
    fn open(id: usize, kind: Kind, family: Family) -> Result<Conn> {
        let stream = TcpStream::connect_timeout(&family.server(), NEW_WAIT)
            .with_context(|| format!("connecting to {}", family.server()))?;
        stream.set_nodelay(true)?;
        let mut c = Conn {
            id,
            kind,
            reader: BufReader::new(stream.try_clone()?),
            stream,
            pending: Vec::new(),
            server_first: false,
            server_late: false,
            echo: false,
        };
        if kind == Kind::Established {
            let line = format!("hello {id}");
            c.stream.write_all(format!("{line}\n").as_bytes())?;
            let deadline = Instant::now() + ECHO_WAIT;
            if c.next_line(deadline)?.as_deref() != Some(line.as_str()) {
                bail!("connection {id}: no echo before the flood");
            }
        }
        Ok(c)
    }

    /// The next complete line before `deadline`, or `None`. Connections
    /// are read one after the other against a shared deadline, so the
    /// socket is read at least once even past it: a line that arrived in
    /// time waits in its buffer while an earlier connection used the wait.
    fn next_line(&mut self, deadline: Instant) -> io::Result<Option<String>> {
        loop {
            let left = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
            self.stream.set_read_timeout(Some(left))?;
            match self.reader.read_until(b'\n', &mut self.pending) {
                Ok(0) => return Ok(None),
                Ok(_) if self.pending.ends_with(b"\n") => {
                    let line = String::from_utf8_lossy(&self.pending)
                        .trim_end()
                        .to_string();
                    self.pending.clear();
                    return Ok(Some(line));
                }
                Ok(_) if Instant::now() >= deadline => return Ok(None),
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn kept(&self) -> bool {
        self.server_first && self.echo
    }
}

/// After the flood: the server speaks first on every idle connection (the
/// answer direction, which a firewall passes only from its state), then
/// each client sends a line and waits for its echo. Failures are results,
/// not errors.
fn check_idle(conns: &mut [Conn], server: &Server) -> Result<()> {
    for c in conns.iter() {
        server.say(c.stream.local_addr()?, &format!("server {}", c.id))?;
    }
    let deadline = Instant::now() + SERVER_FIRST_WAIT;
    for c in conns.iter_mut() {
        let want = format!("server {}", c.id);
        c.server_first = matches!(c.next_line(deadline), Ok(Some(l)) if l == want);
    }
    for c in conns.iter_mut() {
        let _ = c.stream.write_all(format!("ping {}\n", c.id).as_bytes());
    }
    let deadline = Instant::now() + ECHO_WAIT;
    for c in conns.iter_mut() {
        let (late, echo) = (format!("server {}", c.id), format!("ping {}", c.id));
        while let Ok(Some(line)) = c.next_line(deadline) {
            if line == late {
                c.server_late = true;
            } else if line == echo {
                c.echo = true;
                break;
            }
        }
    }
    Ok(())
}

/// A new connection during the flood: connect, a line, its echo. Its time,
/// or why it failed.
fn new_connection(id: usize, family: Family) -> Result<Duration> {
    let t = Instant::now();
    let mut s = TcpStream::connect_timeout(&family.server(), NEW_WAIT)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(NEW_WAIT))?;
    let line = format!("new {id}");
    s.write_all(format!("{line}\n").as_bytes())?;
    let mut got = String::new();
    BufReader::new(&s).read_line(&mut got)?;
    if got.trim_end() != line {
        bail!("new connection {id}: echo {got:?}");
    }
    Ok(t.elapsed())
}

struct Snap {
    at: Instant,
    cpu: sys::Cpu,
    sender: sys::Link,
    ext: sys::Link,
    server: sys::Link,
}

impl Snap {
    /// Frames lost between trafgen and the router's XDP program or stack:
    /// refused by a full veth ring or backlog.
    fn lost(&self) -> u64 {
        self.sender.tx_dropped + self.ext.rx_dropped
    }
}

fn snap(t: &Topology) -> Result<Snap> {
    let cpu = sys::cpu()?;
    Ok(Snap {
        at: Instant::now(),
        cpu,
        sender: sys::link(&t.sender, &t.snd_if)?,
        ext: sys::link(&t.router, &t.ext_if)?,
        server: sys::link(&t.server, &t.srv_if)?,
    })
}

/// What one router did with one flood, and what its connections did.
struct Outcome {
    router: Router,
    secs: f64,
    sent: u64,
    forwarded: u64,
    /// Answers (the server's SYN-ACKs, and the few segments of real
    /// connections) that came back through the router to the sender's side.
    back: u64,
    /// Frames lost before the router looked at them (`Snap::lost`).
    ring_lost: u64,
    /// Times trafgen was started again during the flood (`Trafgen`).
    trafgen_restarts: u32,
    cpu: sys::Cpu,
    conns: Vec<Conn>,
    new_ok: Vec<Duration>,
    new_failed: Vec<String>,
    portguard: Option<PgFigures>,
    conntrack: Option<CtFigures>,
}

impl Outcome {
    fn pps(&self, n: u64) -> f64 {
        n as f64 / self.secs
    }
}

/// One router's floods, one per round.
struct Rounds<'a>(Vec<&'a Outcome>);

impl Rounds<'_> {
    /// The round that forwarded the most: on the shared CPUs, interference
    /// only ever takes packets away.
    fn best(&self) -> Option<&Outcome> {
        self.0
            .iter()
            .copied()
            .max_by(|a, b| a.pps(a.forwarded).total_cmp(&b.pps(b.forwarded)))
    }

    /// (connections of `kind` for which `f` holds, connections of `kind`),
    /// over every round.
    fn tally(&self, kind: Kind, f: impl Fn(&Conn) -> bool) -> (usize, usize) {
        let of: Vec<&Conn> = self
            .0
            .iter()
            .flat_map(|o| &o.conns)
            .filter(|c| c.kind == kind)
            .collect();
        (of.iter().filter(|c| f(c)).count(), of.len())
    }

    fn kept(&self) -> (usize, usize) {
        self.tally(Kind::Established, Conn::kept)
    }

    fn new_ok(&self) -> (usize, usize) {
        let ok: usize = self.0.iter().map(|o| o.new_ok.len()).sum();
        (
            ok,
            ok + self.0.iter().map(|o| o.new_failed.len()).sum::<usize>(),
        )
    }
}

/// portguard's flow tables after the flood, as `portguard stats` reads
/// them from the pins, with the unconfirmed entries made during it, and
/// its drops by leg and reason from its metrics.
struct PgFigures {
    tables: FlowFigures,
    inserts: u64,
    refused: u64,
    promoted: u64,
    drops: Vec<(String, f64)>,
}

/// `FLOW_STATS` summed over CPUs, from the instance's pins.
fn flow_stats(pins: &Path) -> Result<Vec<u64>> {
    let path = pins.join(map_names::FLOW_STATS);
    let mut map = Map::from_map_data(
        MapData::from_pin(&path).with_context(|| format!("{}", path.display()))?,
    )?;
    let stats: PerCpuArray<&mut MapData, u64> = PerCpuArray::try_from(&mut map)?;
    (0..stats.len())
        .map(|i| Ok(stats.get(&i, 0)?.iter().sum()))
        .collect()
}

/// conntrack in the router's namespace: its limits and what the flood did.
struct CtFigures {
    max: u64,
    buckets: u64,
    count_after: u64,
    /// /proc/net/stat/nf_conntrack deltas over the flood: unassured entries
    /// dropped to make room, packets dropped for want of room (none could
    /// be), packets conntrack found invalid.
    early_drop: u64,
    drop: u64,
    invalid: u64,
}

fn ns_read(ns: &NetNs, path: &str) -> Result<String> {
    netns::run(&mut ns_exec(ns, "cat", &[path]))
}

fn ns_number(ns: &NetNs, path: &str) -> Result<u64> {
    ns_read(ns, path)?
        .trim()
        .parse()
        .with_context(|| format!("{path} in {}", ns.name()))
}

/// /proc/net/stat/nf_conntrack of a namespace: per CPU lines of hex
/// counters under a header of names, summed (`entries`, the table's fill,
/// is the same on every line and is not a counter).
fn conntrack_stats(ns: &NetNs) -> Result<Vec<(String, u64)>> {
    let text = ns_read(ns, "/proc/net/stat/nf_conntrack")?;
    let mut lines = text.lines();
    let names: Vec<String> = lines
        .next()
        .context("empty /proc/net/stat/nf_conntrack")?
        .split_whitespace()
        .map(String::from)
        .collect();
    let mut sums = vec![0u64; names.len()];
    for line in lines {
        for (sum, v) in sums.iter_mut().zip(line.split_whitespace()) {
            *sum += u64::from_str_radix(v, 16).with_context(|| format!("conntrack stat {v}"))?;
        }
    }
    Ok(names.into_iter().zip(sums).collect())
}

fn stat(stats: &[(String, u64)], name: &str) -> u64 {
    stats.iter().find(|(n, _)| n == name).map_or(0, |(_, v)| *v)
}

/// nftables' forward chain on the router: what the issue asks for, and
/// what a stateful firewall in front of an Access Edge holds.
fn nft_ruleset() -> String {
    format!(
        "table inet pgbench_synflood {{\n  chain forward {{\n    type filter hook forward priority filter; policy drop;\n    \
         ct state established,related accept\n    \
         ct state new tcp dport {PORT} ip daddr {SERVER_V4} accept\n    \
         ct state new tcp dport {PORT} ip6 daddr {SERVER_V6} accept\n  }}\n}}\n"
    )
}

/// One router's run, in its own topology: connections, the flood (at
/// least `secs`, until `syns` SYNs have reached the server, at most
/// `FLOOD_CAP`) with new connections during it, the figures it left, and
/// the checks of the idle connections.
fn run_one(router: Router, secs: f64, syns: u64) -> Result<Outcome> {
    let t = Topology::build()?;
    let server = Server::start(&t.server)?;
    let mut pg: Option<Proc> = None;
    // Held until the end: dropping it detaches the floor program.
    let mut floor = None;
    match router {
        Router::NoFilter => {}
        Router::XdpFloor => {
            let mut obj = load_floor()?;
            let legs = [t.ext_if.clone(), t.dmz_if.clone()];
            let prog: &mut Xdp = obj
                .program_mut("floor")
                .context("no floor program")?
                .try_into()?;
            // The legs' names mean something only in the router's namespace.
            in_netns(&t.router, || -> Result<()> {
                for leg in &legs {
                    prog.attach(leg, XdpMode::Driver)
                        .with_context(|| format!("attaching the floor program to {leg}"))?;
                }
                Ok(())
            })??;
            floor = Some(obj);
        }
        Router::Portguard => {
            let mut args = vec!["run", "--iface", &t.ext_if, "--iface", &t.dmz_if];
            for p in PROFILES {
                args.extend(["--profile", p]);
            }
            args.extend([
                "--metrics-addr",
                METRICS,
                "--xdp-mode",
                "native",
                "--clean-start",
            ]);
            pg = Some(proc::start_portguard(&t.router, &args)?);
        }
        Router::Nftables => {
            let file = t.tmp.join("synflood.nft");
            std::fs::write(&file, nft_ruleset())?;
            netns::run(&mut ns_exec(
                &t.router,
                "nft",
                &["-f", &file.to_string_lossy()],
            ))?;
        }
    }
    let pins = pin_dir(Path::new(DEFAULT_BPFFS), &t.ext_if);

    // The idle connections, IPv4 and IPv6.
    let mut plan = Vec::new();
    for family in [Family::V4, Family::V6] {
        plan.extend(std::iter::repeat_n(
            (Kind::Established, family),
            ESTABLISHED,
        ));
        plan.extend(std::iter::repeat_n(
            (Kind::HandshakeOnly, family),
            HANDSHAKE_ONLY,
        ));
    }
    let mut conns = in_netns(&t.sender, || -> Result<Vec<Conn>> {
        plan.iter()
            .enumerate()
            .map(|(id, (kind, family))| Conn::open(id, *kind, *family))
            .collect()
    })??;
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.count() < conns.len() {
        if Instant::now() > deadline {
            bail!(
                "the server accepted {} of {} connections",
                server.count(),
                conns.len()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }

    let stats_before = match router {
        Router::Portguard => flow_stats(&pins)?,
        _ => Vec::new(),
    };
    let ct_before = match router {
        Router::Nftables => conntrack_stats(&t.router)?,
        _ => Vec::new(),
    };

    let conf = t.tmp.join("syn.cfg");
    std::fs::write(&conf, t.syn_conf()?)?;
    let mut tg = Trafgen::start(&t.sender, &t.snd_if, &conf)?;
    let a = snap(&t)?;
    // New connections, spread over the flood's first `secs`, each on its
    // own thread in the sender's namespace.
    let attempts: Vec<_> = (0..NEW_DURING)
        .map(|i| {
            let delay = Duration::from_secs_f64(secs * i as f64 / NEW_DURING as f64);
            let family = if i % 2 == 0 { Family::V4 } else { Family::V6 };
            thread_in(&t.sender, move || {
                std::thread::sleep(delay);
                new_connection(i, family)
            })
        })
        .collect::<Result<_>>()?;
    let mut tick = 0u32;
    loop {
        // trafgen is looked after often (a restart costs the flood only
        // this long), the counters (an `ip` process each) less often.
        std::thread::sleep(Duration::from_millis(10));
        tg.keep_running()?;
        tick += 1;
        if !tick.is_multiple_of(10) {
            continue;
        }
        let elapsed = a.at.elapsed();
        // Counted where they arrive: each router's filter sees as many new
        // flows, whatever was lost before it.
        let forwarded = sys::link(&t.server, &t.srv_if)?.rx_packets - a.server.rx_packets;
        let done = elapsed.as_secs_f64() >= secs
            && forwarded >= syns
            && attempts.iter().all(JoinHandle::is_finished);
        if done || elapsed >= FLOOD_CAP {
            break;
        }
    }
    let b = snap(&t)?;
    let trafgen_restarts = tg.restarts;
    tg.stop()?;
    let mut new_ok = Vec::new();
    let mut new_failed = Vec::new();
    for (i, h) in attempts.into_iter().enumerate() {
        match h.join() {
            Ok(Ok(Ok(d))) => new_ok.push(d),
            Ok(Ok(Err(e))) => new_failed.push(format!("{i}: {e:#}")),
            Ok(Err(e)) => bail!("new connection {i}: entering the sender's namespace: {e}"),
            Err(_) => bail!("new connection {i}: its thread panicked"),
        }
    }
    // Let the last SYN-ACKs cross before anything is read.
    std::thread::sleep(Duration::from_millis(100));

    // The state the flood left, before the checks add to it.
    let portguard = match router {
        Router::Portguard => Some(pg_figures(&t, &pins, &stats_before)?),
        _ => None,
    };
    let conntrack = match router {
        Router::Nftables => {
            let after = conntrack_stats(&t.router)?;
            let delta = |n: &str| stat(&after, n).saturating_sub(stat(&ct_before, n));
            Some(CtFigures {
                max: ns_number(&t.router, "/proc/sys/net/netfilter/nf_conntrack_max")?,
                buckets: ns_number(&t.router, "/proc/sys/net/netfilter/nf_conntrack_buckets")?,
                count_after: ns_number(&t.router, "/proc/sys/net/netfilter/nf_conntrack_count")?,
                early_drop: delta("early_drop"),
                drop: delta("drop"),
                invalid: delta("invalid"),
            })
        }
        _ => None,
    };

    check_idle(&mut conns, &server)?;
    if let Some(mut p) = pg.take() {
        p.stop()?;
    }
    drop(floor);
    Ok(Outcome {
        router,
        secs: b.at.duration_since(a.at).as_secs_f64(),
        sent: b.sender.tx_packets - a.sender.tx_packets,
        forwarded: b.server.rx_packets - a.server.rx_packets,
        back: b.sender.rx_packets - a.sender.rx_packets,
        ring_lost: b.lost().saturating_sub(a.lost()),
        trafgen_restarts,
        cpu: b.cpu - a.cpu,
        conns,
        new_ok,
        new_failed,
        portguard,
        conntrack,
    })
}

/// portguard's tables from its pins, the flood's share of its statistics,
/// and its drops by leg and reason from its metrics.
fn pg_figures(t: &Topology, pins: &Path, before: &[u64]) -> Result<PgFigures> {
    let tables =
        figures_from_pins(pins).with_context(|| format!("flow tables under {}", pins.display()))?;
    let after = flow_stats(pins)?;
    let delta = |i: u32| {
        let i = i as usize;
        after
            .get(i)
            .copied()
            .unwrap_or(0)
            .saturating_sub(before.get(i).copied().unwrap_or(0))
    };
    let body = proc::metrics(&t.router, METRICS)?;
    let drops = proc::samples(&body, "portguard_drops_total")?
        .into_iter()
        .filter(|(_, v)| *v > 0.0)
        .map(|(labels, v)| {
            let leg = if labels.contains(&format!("\"{}\"", t.ext_if)) {
                "internet leg"
            } else if labels.contains(&format!("\"{}\"", t.dmz_if)) {
                "DMZ leg"
            } else {
                "?"
            };
            let reason = labels
                .split(',')
                .find_map(|l| l.strip_prefix("reason="))
                .unwrap_or("?")
                .trim_matches('"');
            (format!("{leg}, {reason}"), v)
        })
        .collect();
    Ok(PgFigures {
        tables,
        inserts: delta(STAT_NEW_INSERTS),
        refused: delta(STAT_NEW_REFUSED),
        promoted: delta(STAT_PROMOTED),
        drops,
    })
}

/// Section 7: the routers on the same flood, in `rounds` rounds, each
/// round in the reverse order of the one before.
pub fn run(report: &mut Report, secs: f64, syns: u64, rounds: usize) -> Result<()> {
    let started = Instant::now();
    let mut outcomes = Vec::new();
    let mut failed = Vec::new();
    for round in 0..rounds {
        let mut order = Router::ALL.to_vec();
        if round % 2 == 1 {
            order.reverse();
        }
        for router in order {
            if failed.contains(&router) {
                continue;
            }
            match run_one(router, secs, syns) {
                Ok(o) => outcomes.push(o),
                Err(e) => {
                    report.failed(&format!("SYN flood, {}", router.label()), &e);
                    failed.push(router);
                }
            }
        }
    }
    let took = started.elapsed().as_secs_f64();
    let of = |r: Router| Rounds(outcomes.iter().filter(|o| o.router == r).collect());

    let mut t = String::new();
    let _ = writeln!(
        t,
        "| router | SYNs sent | flood (s) | sent/s | forwarded to the server/s | not forwarded/s | lost before the router | answers back at the sender/s | softirq ns per forwarded SYN |"
    );
    let _ = writeln!(t, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut per_round = String::new();
    for router in Router::ALL {
        let r = of(router);
        let Some(o) = r.best() else { continue };
        let _ = writeln!(
            t,
            "| {}, best of {} | {} | {:.1} | {:.0} | {:.0} | {:.0} | {} | {:.0} | {:.0} |",
            router.label(),
            r.0.len(),
            o.sent,
            o.secs,
            o.pps(o.sent),
            o.pps(o.forwarded),
            o.pps(o.sent.saturating_sub(o.forwarded)),
            o.ring_lost,
            o.pps(o.back),
            o.cpu.softirq_ns / o.forwarded.max(1) as f64,
        );
        let all: Vec<String> =
            r.0.iter()
                .map(|o| format!("{:.0}", o.pps(o.forwarded)))
                .collect();
        let restarts: u32 = r.0.iter().map(|o| o.trafgen_restarts).sum();
        let _ = writeln!(
            per_round,
            "- forwarded/s in each round, {}: {} (trafgen restarted {restarts} times in all)",
            router.label(),
            all.join(", ")
        );
    }
    let _ = write!(t, "\n{per_round}");

    let _ = writeln!(
        t,
        "\n| router | established idle connections kept | handshake-only: the server's line within {} s | handshake-only: it came once the client spoke | handshake-only: echo | new connections during the flood | slowest new connection |",
        SERVER_FIRST_WAIT.as_secs()
    );
    let _ = writeln!(t, "|---|---:|---:|---:|---:|---:|---:|");
    let mut notes = String::new();
    for router in Router::ALL {
        let r = of(router);
        if r.0.is_empty() {
            continue;
        }
        let (kept, total) = r.kept();
        let (first, hs) = r.tally(Kind::HandshakeOnly, |c| c.server_first);
        let (late, _) = r.tally(Kind::HandshakeOnly, |c| c.server_late);
        let (echo, _) = r.tally(Kind::HandshakeOnly, |c| c.echo);
        let (new_ok, new_all) = r.new_ok();
        // Over a second: the client's SYN or the server's SYN-ACK was lost
        // and the SYN sent again.
        let retried =
            r.0.iter()
                .flat_map(|o| &o.new_ok)
                .filter(|d| **d > Duration::from_secs(1))
                .count();
        let slowest =
            r.0.iter()
                .flat_map(|o| &o.new_ok)
                .max()
                .map_or("-".to_string(), |d| {
                    format!("{:.0} ms", d.as_secs_f64() * 1e3)
                });
        let _ = writeln!(
            t,
            "| {} | {kept} of {total} | {first} of {hs} | {late} of {} | {echo} of {hs} | {new_ok} of {new_all} ({retried} over 1 s) | {slowest} |",
            router.label(),
            hs - first,
        );
        for o in &r.0 {
            for f in &o.new_failed {
                let _ = writeln!(notes, "- {}: new connection {f}", router.label());
            }
            let lost: Vec<String> = o
                .conns
                .iter()
                .filter(|c| c.kind == Kind::Established && !c.kept())
                .map(|c| {
                    format!(
                        "{} (server's line {}, echo {})",
                        c.id,
                        if c.server_first {
                            "in time"
                        } else if c.server_late {
                            "late"
                        } else {
                            "never"
                        },
                        if c.echo { "back" } else { "missing" }
                    )
                })
                .collect();
            if !lost.is_empty() {
                let _ = writeln!(
                    notes,
                    "- {}: established connections not kept: {}",
                    router.label(),
                    lost.join(", ")
                );
            }
        }
    }
    if !notes.is_empty() {
        let _ = write!(t, "\n{notes}");
    }
    if let Some(pg) = of(Router::Portguard)
        .best()
        .and_then(|o| o.portguard.as_ref())
    {
        let _ = writeln!(
            t,
            "\nportguard's flow tables after its best round's flood, before the checks (as `portguard stats` reads them from the pins):\n\n| table | entries | capacity | evictions | refusals |\n|---|---:|---:|---:|---:|"
        );
        for (table, kind, f) in pg.tables.rows() {
            let _ = writeln!(
                t,
                "| {table}{} | {} | {} | {} | {} |",
                kind.map(|k| format!(" ({k})")).unwrap_or_default(),
                f.entries,
                f.capacity,
                f.evictions,
                f.refusals
            );
        }
        let drops: Vec<String> = pg
            .drops
            .iter()
            .map(|(what, v)| format!("{what} {v:.0}"))
            .collect();
        let _ = writeln!(
            t,
            "\n- during that flood: {} unconfirmed entries made (one per distinct flow forwarded), {} refused for a spent share, {} confirmed\n- portguard's drops from its start to the end of that flood (metrics): {}",
            pg.inserts,
            pg.refused,
            pg.promoted,
            if drops.is_empty() {
                "none".to_string()
            } else {
                drops.join("; ")
            }
        );
        if pg
            .drops
            .iter()
            .any(|(what, _)| what == "DMZ leg, port_not_allowed")
        {
            let _ = writeln!(
                t,
                "- on the DMZ leg, `port_not_allowed` during the flood is answers (SYN-ACKs) that came back after the LRU had pushed their unconfirmed entry out (the kernel's LRU is approximate: under this churn it can take an entry inserted only a moment earlier). For a real client the SYN is sent again a second later."
            );
        }
    }
    if let Some(ct) = of(Router::Nftables)
        .best()
        .and_then(|o| o.conntrack.as_ref())
    {
        let _ = writeln!(
            t,
            "\nconntrack in the router's namespace after nftables' best round's flood (/proc/sys/net/netfilter; the counters of /proc/net/stat/nf_conntrack over the flood):\n\n| nf_conntrack_max | buckets | entries after the flood | early drops (unassured entries evicted) | packets dropped, no room | invalid |\n|---:|---:|---:|---:|---:|---:|\n| {} | {} | {} | {} | {} | {} |",
            ct.max, ct.buckets, ct.count_after, ct.early_drop, ct.drop, ct.invalid
        );
    }
    let _ = writeln!(t, "\n- the section took {took:.0} s");

    report.section(
        "7. SYN flood through the appliance",
        &format!(
            "Three namespaces: a sender (the internet side), a router forwarding between two veth legs, and a server (the \
             DMZ) holding {SERVER_V4} and {SERVER_V6} with a TCP listener on {PORT} that echoes each line (the Access \
             Edge's SIP/TLS port; Linux's SYN cookies on, its default). trafgen and the client share the sender's link \
             to the router's internet leg. (Into a leg that runs XDP, trafgen 0.6.8 now and then gets an EAGAIN from \
             the kernel when it flushes its TX_RING, and takes it for fatal: it is started again at once, within 10 ms, \
             and the restarts are counted under the first table.) The router runs, each time in a fresh topology: no filter; an \
             empty XDP program on both legs (a veth runs XDP on the skb its peer sent, copied into a fresh page when \
             its layout does not suit XDP: a cost of the veth, not of a filter, which a real NIC does not have); \
             `portguard run --iface EXT --iface DMZ --profile {p0} --profile {p1}` (native XDP on both legs, the \
             default flow tables: {FLOW_NEW_ENTRIES} unconfirmed entries, an LRU; {FLOW_ENTRIES} confirmed, never \
             evicted; {FLOW_SHARE_DEFAULT} new entries per source per {FLOW_SHARE_WINDOW_S} s); and nftables with \
             conntrack: a forward chain, policy drop, `ct state established,related accept`, `ct state new tcp dport \
             {PORT}` to the server's two addresses, conntrack's defaults. {rounds} round(s), the routers in reverse \
             order from one round to the next; each router's row in the first table is its round that forwarded the \
             most, the connections are counted over every round.\n\n\
             Before each flood a client on the sender side opens, per family, {ESTABLISHED} connections that carry a \
             line each way and {HANDSHAKE_ONLY} that only complete the handshake, and leaves them idle. trafgen (`-P \
             1`, one CPU) then sends SYNs to {SERVER_V4}:{PORT} from random addresses in {spoofed} and random ports \
             (2^32 pairs: practically every SYN a new flow) for at least {secs:.0} s and until {syns} have reached the \
             server (at most {cap} s: each router's filter sees as many new flows); the server answers each, and the router routes the SYN-ACKs back to the sender side, where they \
             die. Meanwhile the client opens {NEW_DURING} new connections, IPv4 and IPv6 in turn, spread over the first \
             {secs:.0} s ({new_wait} s to connect, as long for the echo); they share the internet leg with the flood, \
             so what its full veth ring refuses is lost for them too, and their SYN is sent again after a second. After \
             the flood, on each idle connection the \
             server speaks first (the answer direction, which a firewall passes only from its state) and its line must \
             be in the client's socket within {first_wait} s; then the client sends a line and must get its echo within \
             {echo_wait} s. An established connection is *kept* when both happen. The handshake-only ones are counted \
             apart: conntrack assures an entry on the opener's ACK, portguard confirms one on the answerer's first \
             segment past the handshake, so for portguard they are unconfirmed entries a flood may evict, and the \
             server's line then waits for the client's next segment, which records the flow again.\n\n\
             *forwarded* is the server veth's rx packets, *answers back* the sender veth's rx packets (the SYN-ACKs \
             that crossed the router back), *lost before the router* the frames a full veth ring or backlog refused; softirq is the /proc/stat delta over both CPUs (the whole path: sender, \
             both legs, the server's stack, and whatever else the machine runs) per forwarded SYN.",
            p0 = PROFILES[0],
            p1 = PROFILES[1],
            spoofed = spoofed(),
            cap = FLOOD_CAP.as_secs(),
            new_wait = NEW_WAIT.as_secs(),
            first_wait = SERVER_FIRST_WAIT.as_secs(),
            echo_wait = ECHO_WAIT.as_secs(),
        ),
        t,
    );

    let pg = of(Router::Portguard);
    if !pg.0.is_empty() {
        let beside = |r: Router| {
            let x = of(r);
            x.best().map_or("not measured".to_string(), |o| {
                let (k, n) = x.kept();
                format!("{k} of {n} kept, {:.0}/s", o.pps(o.forwarded))
            })
        };
        let (kept, total) = pg.kept();
        let pps = pg.best().map_or(0.0, |o| o.pps(o.forwarded));
        report.target(Target::new(
            22,
            "SYN flood to an allowed port through the appliance: every established connection kept",
            format!(
                "{kept} of {total}; {pps:.0} SYNs/s forwarded (nftables with conntrack: {}; no filter: {})",
                beside(Router::Nftables),
                beside(Router::NoFilter)
            ),
            total > 0 && kept == total,
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_addresses_in_the_text_are_the_ones_the_sockets_use() {
        assert_eq!(SERVER_V4.parse::<Ipv4Addr>().ok(), Some(SERVER_V4_IP));
        assert_eq!(SERVER_V6.parse::<Ipv6Addr>().ok(), Some(SERVER_V6_IP));
        assert!(PROFILES[0].starts_with(&format!("{SERVER_V4}/32=")));
        assert!(PROFILES[1].starts_with(&format!("{SERVER_V6}/128=")));
        assert_eq!(spoofed(), "198.19.0.0/16");
    }

    #[test]
    fn the_nft_ruleset_lets_in_new_connections_to_the_server_only() {
        let r = nft_ruleset();
        assert!(r.contains("policy drop;"), "{r}");
        assert!(r.contains("ct state established,related accept"), "{r}");
        assert!(
            r.contains("ct state new tcp dport 5061 ip daddr 198.18.2.10 accept"),
            "{r}"
        );
        assert!(
            r.contains("ct state new tcp dport 5061 ip6 daddr 2001:db8:2::10 accept"),
            "{r}"
        );
    }
}
