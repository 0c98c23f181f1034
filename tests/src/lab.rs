//! The lab: a client and a server namespace joined by a veth pair, portguard
//! on the server side, allowed and forbidden traffic over real sockets, and
//! portguard's counters read from its metrics endpoint. `cargo xtask run`
//! prints it; the `lab` test asserts on it.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::Path,
    process::{Child, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::netns::{NetNs, addr, in_netns, ns_exec, thread_in, veth_pair};

pub const CLIENT_IF: &str = "pgc0";
pub const SERVER_IF: &str = "pgs0";
pub const SERVER_IP: &str = "198.18.0.2";
pub const METRICS: &str = "127.0.0.1:9477";
pub const ROLES: &str = "front-end,client";
pub const MEDIA: &str = "50000-50019";
const UDP_DATAGRAMS: u32 = 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

#[derive(Debug)]
pub struct Case {
    pub proto: Proto,
    pub port: u16,
    pub allowed: bool,
    pub what: &'static str,
}

pub const CASES: [Case; 6] = [
    Case { proto: Proto::Tcp, port: 5061, allowed: true, what: "SIP over TLS (front-end)" },
    Case { proto: Proto::Udp, port: 3478, allowed: true, what: "STUN/TURN (client)" },
    Case { proto: Proto::Udp, port: 50_000, allowed: true, what: "media (client range narrowed to 50000-50019)" },
    Case { proto: Proto::Tcp, port: 3389, allowed: false, what: "RDP" },
    Case { proto: Proto::Udp, port: 161, allowed: false, what: "SNMP" },
    Case { proto: Proto::Tcp, port: 1433, allowed: false, what: "SQL Server" },
];

/// What one lab run saw.
#[derive(Debug)]
pub struct Report {
    pub client: String,
    pub server: String,
    pub sent: Vec<u32>,
    pub received: Vec<u32>,
    /// `name{labels}` → value, scraped while portguard ran.
    pub metrics: Option<BTreeMap<String, f64>>,
    /// portguard's stdout (its counter summary on exit).
    pub summary: String,
    /// Whether the interface was free of XDP after portguard exited.
    pub detached: bool,
}

impl Report {
    /// Per case: whether what arrived is what the policy says.
    pub fn case_ok(&self, i: usize) -> bool {
        if CASES[i].allowed { self.received[i] == self.sent[i] && self.sent[i] > 0 } else { self.received[i] == 0 }
    }

    fn sum(&self, pred: impl Fn(&str) -> bool) -> f64 {
        self.metrics.as_ref().map_or(0.0, |m| m.iter().filter(|(k, _)| pred(k)).map(|(_, v)| *v).sum())
    }

    /// portguard's counters against what the listeners saw: (ok, text) lines.
    /// UDP is exact (nothing else sends UDP on this link); TCP retransmits
    /// SYNs, so its drops are at least the attempts.
    pub fn counter_checks(&self) -> Vec<(bool, String)> {
        let packets = |k: &str| k.starts_with("portguard_packets_total");
        let udp_passed = self.sum(|k| packets(k) && k.contains("proto=\"udp\"") && k.contains("verdict=\"pass\"") && !k.contains("role=\"-\""));
        let udp_dropped = self.sum(|k| packets(k) && k.contains("proto=\"udp\"") && k.contains("verdict=\"drop\"") && k.contains("service=\"port_not_allowed\""));
        let tcp_dropped = self.sum(|k| packets(k) && k.contains("proto=\"tcp\"") && k.contains("verdict=\"drop\""));
        let native = self.sum(|k| k.starts_with("portguard_xdp_attached") && k.contains("mode=\"native\""));
        let (mut udp_received, mut udp_forbidden, mut tcp_forbidden) = (0, 0, 0);
        for (i, c) in CASES.iter().enumerate() {
            match (c.proto, c.allowed) {
                (Proto::Udp, true) => udp_received += self.received[i],
                (Proto::Udp, false) => udp_forbidden += self.sent[i],
                (Proto::Tcp, false) => tcp_forbidden += self.sent[i],
                (Proto::Tcp, true) => {}
            }
        }
        vec![
            (self.metrics.is_some(), format!("metrics endpoint answered on {METRICS}")),
            (native == 1.0, "portguard_xdp_attached{mode=\"native\"} = 1".to_string()),
            (udp_passed == f64::from(udp_received), format!("UDP passed by rules {udp_passed} = UDP datagrams received {udp_received}")),
            (udp_dropped == f64::from(udp_forbidden), format!("UDP dropped as port_not_allowed {udp_dropped} = forbidden UDP sent {udp_forbidden}")),
            (tcp_dropped >= f64::from(tcp_forbidden), format!("TCP dropped {tcp_dropped} >= forbidden connection attempts {tcp_forbidden}")),
            (self.detached, format!("no XDP program left on {SERVER_IF} after SIGINT")),
        ]
    }

    pub fn mismatches(&self) -> usize {
        (0..CASES.len()).filter(|i| !self.case_ok(*i)).count() + self.counter_checks().iter().filter(|(ok, _)| !ok).count()
    }
}

/// Kills portguard with SIGINT on drop if it still runs, so that no error
/// path leaves it attached.
struct Daemon(Child);

impl Daemon {
    fn interrupt(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.interrupt();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && matches!(self.0.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.0.kill();
        }
    }
}

/// Runs the lab once with the `portguard` binary at `bin`. `interrupted` is
/// polled so that Ctrl-C ends it early (the namespaces are removed on return).
pub fn run(bin: &Path, interrupted: &AtomicBool) -> Result<Report> {
    let client = NetNs::new("pg-client")?;
    let server = NetNs::new("pg-server")?;
    veth_pair(&client, CLIENT_IF, &server, SERVER_IF)?;
    addr(&client, CLIENT_IF, "198.18.0.1/24")?;
    addr(&client, CLIENT_IF, "2001:db8::1/64")?;
    addr(&server, SERVER_IF, &format!("{SERVER_IP}/24"))?;
    addr(&server, SERVER_IF, "2001:db8::2/64")?;

    let bin = bin.to_str().context("portguard path is not UTF-8")?;
    let mut daemon = Daemon(
        ns_exec(
            &server,
            bin,
            &["run", "--iface", SERVER_IF, "--role", ROLES, "--client-media-ports", MEDIA, "--xdp-mode", "native", "--metrics-addr", METRICS],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting portguard in the server namespace")?,
    );
    wait_attached(&server, &mut daemon, interrupted)?;

    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut listeners: Vec<JoinHandle<std::io::Result<u32>>> = Vec::new();
    for case in &CASES {
        let (stop, ready) = (stop.clone(), ready_tx.clone());
        let (proto, port) = (case.proto, case.port);
        listeners.push(thread_in(&server, move || listen(proto, port, &stop, &ready))?);
    }
    drop(ready_tx);
    for _ in 0..CASES.len() {
        ready_rx.recv_timeout(Duration::from_secs(5)).context("a listener did not start")??;
    }

    let sent = in_netns(&client, send_all)?;
    // Let the last packets land before the listeners stop.
    std::thread::sleep(Duration::from_millis(300));
    let metrics = scrape(&server);
    stop.store(true, Ordering::SeqCst);
    let mut received = Vec::new();
    for (i, h) in listeners.into_iter().enumerate() {
        match h.join() {
            Ok(Ok(n)) => received.push(n),
            _ => bail!("the listener for {:?} failed", CASES[i]),
        }
    }
    if interrupted.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    daemon.interrupt();
    let summary = wait_output(&mut daemon.0)?;
    let detached = !server.ip(&["link", "show", "dev", SERVER_IF])?.contains("prog/xdp");
    Ok(Report { client: client.name().into(), server: server.name().into(), sent, received, metrics, summary, detached })
}

fn wait_attached(server: &NetNs, daemon: &mut Daemon, interrupted: &AtomicBool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = daemon.0.try_wait()? {
            let mut err = String::new();
            if let Some(e) = daemon.0.stderr.as_mut() {
                let _ = e.read_to_string(&mut err);
            }
            bail!("portguard exited early ({status}):\n{err}");
        }
        let link = server.ip(&["link", "show", "dev", SERVER_IF])?;
        if link.contains("prog/xdp") {
            return Ok(());
        }
        if Instant::now() > deadline || interrupted.load(Ordering::SeqCst) {
            bail!("portguard did not attach to {SERVER_IF} within 15 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Counts UDP datagrams or TCP connections (with their bytes) until `stop`.
fn listen(proto: Proto, port: u16, stop: &AtomicBool, ready: &mpsc::Sender<std::io::Result<()>>) -> u32 {
    let addr: SocketAddr = match format!("{SERVER_IP}:{port}").parse() {
        Ok(a) => a,
        Err(_) => return 0,
    };
    let mut count = 0;
    match proto {
        Proto::Udp => {
            let sock = match UdpSocket::bind(addr).and_then(|s| s.set_read_timeout(Some(Duration::from_millis(50))).map(|()| s)) {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return 0;
                }
            };
            let _ = ready.send(Ok(()));
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::SeqCst) {
                if sock.recv_from(&mut buf).is_ok() {
                    count += 1;
                }
            }
        }
        Proto::Tcp => {
            let sock = match TcpListener::bind(addr).and_then(|s| s.set_nonblocking(true).map(|()| s)) {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return 0;
                }
            };
            let _ = ready.send(Ok(()));
            while !stop.load(Ordering::SeqCst) {
                match sock.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                        let mut buf = [0u8; 256];
                        if let Ok(n) = s.read(&mut buf) {
                            count += u32::from(n > 0);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }
    count
}

/// Sends from the client namespace: UDP datagrams, or one TCP connection
/// that writes a message. Returns what was sent per case.
fn send_all() -> Vec<u32> {
    CASES
        .iter()
        .map(|case| {
            let to: SocketAddr = match format!("{SERVER_IP}:{}", case.port).parse() {
                Ok(a) => a,
                Err(_) => return 0,
            };
            match case.proto {
                Proto::Udp => {
                    let Ok(sock) = UdpSocket::bind("198.18.0.1:0") else { return 0 };
                    (0..UDP_DATAGRAMS)
                        .filter(|i| {
                            std::thread::sleep(Duration::from_millis(2));
                            sock.send_to(format!("portguard lab {i}").as_bytes(), to).is_ok()
                        })
                        .count() as u32
                }
                Proto::Tcp => match TcpStream::connect_timeout(&to, Duration::from_secs(1)) {
                    Ok(mut s) => u32::from(s.write_all(b"portguard lab hello\n").is_ok()),
                    // A connection attempt that got no answer still counts as sent.
                    Err(_) => 1,
                },
            }
        })
        .collect()
}

/// `name{labels}` → value, from the metrics endpoint in the server namespace.
fn scrape(server: &NetNs) -> Option<BTreeMap<String, f64>> {
    let out = ns_exec(server, "curl", &["-sf", "--max-time", "3", &format!("http://{METRICS}/metrics")]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    Some(
        text.lines()
            .filter(|l| l.starts_with("portguard_"))
            .filter_map(|l| l.rsplit_once(' ').and_then(|(k, v)| v.parse().ok().map(|v| (k.to_string(), v))))
            .collect(),
    )
}

fn wait_output(child: &mut Child) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("portguard did not exit within 10 s of SIGINT");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut out = String::new();
    if let Some(o) = child.stdout.as_mut() {
        o.read_to_string(&mut out)?;
    }
    Ok(out)
}
