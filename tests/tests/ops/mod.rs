//! Shared by the operations tests (prometheus, reload, restart, alerts): a
//! client/server namespace pair, `portguard run` spawned into the server
//! namespace with its pins on the host's bpffs, a metrics scraper, and
//! sequence-numbered UDP streams that tell exactly which packets arrived.
//!
//! Each test binary uses a part of it.
#![expect(
    dead_code,
    reason = "each test binary uses a different part of the kit"
)]

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use testkit::netns::{NetNs, addr, in_netns, spawn_in, veth_pair};

/// The roles and media range every operations test runs with: UDP 50000
/// (client media, narrowed) is allowed, UDP 161 (SNMP) is not.
pub const ROLES: &str = "front-end,client";
pub const MEDIA: &str = "50000-50019";
pub const ALLOWED_PORT: u16 = 50_000;
pub const FORBIDDEN_PORT: u16 = 161;
/// Inside the server namespace: its own loopback, so every test can use it.
pub const METRICS: &str = "127.0.0.1:9477";

pub fn ok<T, E: std::fmt::Display>(what: &str, r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e:#}"))
}

pub fn ok_any<T>(what: &str, r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e:#}"))
}

/// Polls `f` every 10 ms until it returns `Some` or `within` passes.
pub fn poll<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A scratch directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("portguard-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        ok("creating a temp dir", fs::create_dir_all(&p));
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub fn pin_dir(iface: &str) -> PathBuf {
    PathBuf::from("/sys/fs/bpf/portguard").join(iface)
}

pub fn state_file(iface: &str) -> PathBuf {
    PathBuf::from("/run/portguard").join(format!("{iface}.json"))
}

/// Removes pins and state a crashed earlier run of the same test left
/// (interface names are unique to each test).
fn forget_iface(iface: &str) {
    let _ = fs::remove_dir_all(pin_dir(iface));
    let _ = fs::remove_file(state_file(iface));
    // The events control socket a killed daemon leaves.
    let _ = fs::remove_file(PathBuf::from("/run/portguard").join(format!("{iface}.sock")));
}

/// Two namespaces joined by a veth pair: `client` at 198.18.N.1, `server`
/// at 198.18.N.2, interfaces `<tag>c` and `<tag>s`. On drop, whatever portguard
/// left for the server interface is removed too.
pub struct Pair {
    pub client: NetNs,
    pub server: NetNs,
    pub client_if: String,
    pub server_if: String,
    pub client_ip: Ipv4Addr,
    pub server_ip: Ipv4Addr,
}

impl Pair {
    pub fn new(tag: &str, subnet: u8) -> Pair {
        assert!(tag.len() <= 12, "interface tag {tag} too long");
        let client = ok_any("client namespace", NetNs::new(&format!("{tag}-c")));
        let server = ok_any("server namespace", NetNs::new(&format!("{tag}-s")));
        let (client_if, server_if) = (format!("{tag}c"), format!("{tag}s"));
        forget_iface(&server_if);
        ok_any(
            "veth pair",
            veth_pair(&client, &client_if, &server, &server_if),
        );
        let client_ip = Ipv4Addr::new(198, 18, subnet, 1);
        let server_ip = Ipv4Addr::new(198, 18, subnet, 2);
        ok_any(
            "client address",
            addr(&client, &client_if, &format!("{client_ip}/24")),
        );
        ok_any(
            "server address",
            addr(&server, &server_if, &format!("{server_ip}/24")),
        );
        Pair {
            client,
            server,
            client_if,
            server_if,
            client_ip,
            server_ip,
        }
    }

    /// `ip -n SERVER link show dev IF`.
    pub fn server_link(&self) -> String {
        ok_any(
            "ip link show",
            self.server.ip(&["link", "show", "dev", &self.server_if]),
        )
    }

    /// Whether an XDP program is attached to the server interface.
    pub fn xdp_attached(&self) -> bool {
        self.server_link().contains("prog/xdp")
    }

    /// The id of the XDP program on the server interface.
    pub fn xdp_prog_id(&self) -> Option<u32> {
        let link = self.server_link();
        let rest = link.split("prog/xdp id ").nth(1)?;
        rest.split_whitespace().next()?.parse().ok()
    }

    /// `run --iface <server_if> --role ROLES --client-media-ports MEDIA
    /// --xdp-mode native --metrics-addr METRICS` plus `extra`.
    pub fn run_args(&self, extra: &[&str]) -> Vec<String> {
        #[rustfmt::skip]
        let mut args: Vec<String> = [
            "run", "--iface", &self.server_if, "--role", ROLES, "--client-media-ports", MEDIA,
            "--xdp-mode", "native", "--metrics-addr", METRICS,
        ]
        .iter()
        .map(|s| (*s).to_string())
        .collect();
        args.extend(extra.iter().map(|s| (*s).to_string()));
        args
    }

    /// `portguard` + `run_args(extra)`, waited for until it is attached.
    pub fn start(&self, dir: &Path, name: &str, extra: &[&str]) -> Daemon {
        self.start_wrapped(&[], dir, name, extra)
    }

    /// Like `start`, through a wrapper (`setpriv --bounding-set … --`).
    pub fn start_wrapped(
        &self,
        wrapper: &[&str],
        dir: &Path,
        name: &str,
        extra: &[&str],
    ) -> Daemon {
        let args = self.run_args(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut d = Daemon::spawn_wrapped(&self.server, wrapper, &args, dir, name);
        d.wait_ready(self);
        d
    }

    /// Scrapes portguard's metrics endpoint inside the server namespace.
    pub fn scrape(&self) -> Scrape {
        let text = ok_any(
            "setns into the server namespace",
            in_netns(&self.server, || http_get(METRICS, "/metrics")),
        );
        Scrape::parse(&ok("GET /metrics", text))
    }

    /// Sequence-numbered UDP from the client to the server's `port`, at `pps`.
    pub fn stream(&self, port: u16, pps: u32) -> Stream {
        Stream::start(self, port, pps)
    }

    /// Sends `n` datagrams from the client to each of `ports`, paced.
    pub fn send_udp(&self, ports: &[u16], n: u32) {
        let to = self.server_ip;
        let from = self.client_ip;
        ok_any(
            "setns into the client namespace",
            in_netns(&self.client, || {
                let sock = ok("binding in the client", UdpSocket::bind((from, 0)));
                for port in ports {
                    for i in 0..n {
                        ok(
                            "send",
                            sock.send_to(format!("portguard ops {i}").as_bytes(), (to, *port)),
                        );
                        std::thread::sleep(Duration::from_micros(300));
                    }
                }
            }),
        );
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        // An interface portguard still holds through a pinned link keeps the
        // program; the pins go with the test.
        forget_iface(&self.server_if);
    }
}

/// A minimal HTTP/1.1 GET with `Connection: close`; the body (portguard's
/// responder always sends Content-Length and closes).
pub fn http_get(addr: &str, path: &str) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(
        &addr.parse::<SocketAddr>().map_err(|e| e.to_string())?,
        Duration::from_secs(2),
    )
    .map_err(|e| format!("connecting to {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("writing to {addr}: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("reading from {addr}: {e}"))?;
    let text = String::from_utf8(raw).map_err(|e| format!("response not UTF-8: {e}"))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no header end in {text:?}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("{addr}{path}: {head}"));
    }
    Ok(body.to_string())
}

/// One sample: metric name, labels, value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, k: &str) -> &str {
        self.labels.get(k).map_or("", String::as_str)
    }

    /// `name{k="v",...}`, labels sorted: a stable series identity.
    pub fn series(&self) -> String {
        let labels: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect();
        format!("{}{{{}}}", self.name, labels.join(","))
    }
}

/// A parsed exposition (Prometheus text or OpenMetrics).
#[derive(Clone, Debug)]
pub struct Scrape {
    pub text: String,
    pub samples: Vec<Sample>,
}

impl Scrape {
    pub fn parse(text: &str) -> Scrape {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| parse_sample(l).unwrap_or_else(|| panic!("unparsable sample line {l:?}")))
            .collect();
        Scrape {
            text: text.to_string(),
            samples,
        }
    }

    /// Sum of the samples of `name` whose labels all match `labels`
    /// (`k=!v` means "not v").
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels.iter().all(|(k, v)| match v.strip_prefix('!') {
                    Some(not) => s.label(k) != not,
                    None => s.label(k) == *v,
                })
        })
    }

    /// The only sample of `name` with `labels`; panics if absent.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<&Sample> = self.matching(name, labels).collect();
        assert_eq!(
            found.len(),
            1,
            "expected one {name}{labels:?} sample, found {found:?}\n{}",
            self.text
        );
        found[0].value
    }

    /// Every counter-like sample (name ending in `_total`) by series.
    pub fn counters(&self) -> BTreeMap<String, f64> {
        self.samples
            .iter()
            .filter(|s| s.name.ends_with("_total"))
            .map(|s| (s.series(), s.value))
            .collect()
    }
}

/// `name{k="v",...} value` or `name value` (an optional timestamp ignored).
pub fn parse_sample(line: &str) -> Option<Sample> {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => return None,
    };
    let mut labels = BTreeMap::new();
    let mut rest = rest;
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        let end;
        loop {
            // key
            let mut key = String::new();
            loop {
                let (i, c) = chars.next()?;
                match c {
                    '=' => break,
                    '}' if key.is_empty() => {
                        end = i;
                        rest = &inner[end + 1..];
                        return finish(name, labels, rest);
                    }
                    _ => key.push(c),
                }
            }
            if chars.next()?.1 != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                let (_, c) = chars.next()?;
                match c {
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    '"' => break,
                    _ => value.push(c),
                }
            }
            labels.insert(key.trim().to_string(), value);
            match chars.next()? {
                (_, ',') => {
                    if let Some((i, '}')) = chars.peek().copied() {
                        end = i;
                        break;
                    }
                }
                (i, '}') => {
                    end = i;
                    break;
                }
                _ => return None,
            }
        }
        rest = &inner[end + 1..];
    }
    finish(name, labels, rest)
}

fn finish(name: &str, labels: BTreeMap<String, String>, rest: &str) -> Option<Sample> {
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// `portguard` as a child in the server namespace (setns in `pre_exec`: the
/// host's /sys/fs/bpf and /run stay visible, so pins outlive it), its
/// stdout and stderr in files that can be read while it runs. On drop, a
/// still-running daemon gets SIGTERM (and SIGKILL if it ignores it).
pub struct Daemon {
    pub child: Child,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    pub iface: String,
}

impl Daemon {
    pub fn spawn(ns: &NetNs, args: &[&str], dir: &Path, name: &str) -> Daemon {
        Daemon::spawn_wrapped(ns, &[], args, dir, name)
    }

    /// `WRAPPER… portguard ARGS…` (the wrapper execs portguard: same pid).
    pub fn spawn_wrapped(
        ns: &NetNs,
        wrapper: &[&str],
        args: &[&str],
        dir: &Path,
        name: &str,
    ) -> Daemon {
        let stdout = dir.join(format!("{name}.out"));
        let stderr = dir.join(format!("{name}.err"));
        let bin = testkit::portguard_bin();
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(ok("creating stdout file", fs::File::create(&stdout)))
            .stderr(ok("creating stderr file", fs::File::create(&stderr)));
        ok_any("setns pre_exec", spawn_in(ns, &mut cmd));
        let child = ok("spawning portguard", cmd.spawn());
        let iface = args
            .iter()
            .position(|a| *a == "--iface")
            .and_then(|i| args.get(i + 1))
            .map_or_else(String::new, |s| (*s).to_string());
        Daemon {
            child,
            stdout,
            stderr,
            iface,
        }
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap_or_else(|e| panic!("pid: {e}"))
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn out(&self) -> String {
        fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Waits until the log shows the metrics endpoint (logged after attaching)
    /// and the interface carries an XDP program.
    pub fn wait_ready(&mut self, pair: &Pair) {
        let mut child_status = None;
        let stderr = self.stderr.clone();
        let ready = poll(Duration::from_secs(20), || {
            if let Ok(Some(st)) = self.child.try_wait() {
                child_status = Some(st);
                return Some(false);
            }
            let log = fs::read_to_string(&stderr).unwrap_or_default();
            (log.contains("metrics on http://") && pair.xdp_attached()).then_some(true)
        });
        match (ready, child_status) {
            (Some(true), _) => {}
            (_, Some(st)) => panic!("portguard exited early ({st}):\n{}", self.log()),
            _ => panic!(
                "portguard did not come up within 20 s:\n{}\n{}",
                self.log(),
                pair.server_link()
            ),
        }
    }

    /// Waits for a log line containing `needle`.
    pub fn wait_log(&self, needle: &str, within: Duration) {
        if poll(within, || self.log().contains(needle).then_some(())).is_none() {
            panic!(
                "portguard did not log {needle:?} within {within:?}:\n{}",
                self.log()
            );
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own, unreaped child.
        let r = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(r, 0, "kill({}, {sig}) failed", self.pid());
    }

    /// Waits for the exit; panics after `within`.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = ok("try_wait", self.child.try_wait()) {
                return st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("portguard did not exit within {within:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL and reap: pinned links stay.
    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        let st = self.wait_exit(Duration::from_secs(5));
        assert!(!st.success(), "portguard survived SIGKILL: {st}");
    }

    /// VmRSS in KiB, from /proc/PID/status.
    pub fn rss_kib(&self) -> u64 {
        let status = ok(
            "reading /proc/PID/status",
            fs::read_to_string(format!("/proc/{}/status", self.pid())),
        );
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in {status}"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: signalling our own, unreaped child.
            unsafe { libc::kill(self.pid(), libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while let Ok(None) = self.child.try_wait() {
                if Instant::now() > deadline {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Runs `portguard ARGS` from the test's own namespace (stats, detach and
/// reload only need the pins and the state file).
pub fn portguard(args: &[&str]) -> Output {
    ok(
        "running portguard",
        Command::new(testkit::portguard_bin()).args(args).output(),
    )
}

/// Runs `portguard ARGS` inside a namespace (setns only), killed after `within`.
pub fn portguard_in(ns: &NetNs, args: &[&str], within: Duration) -> Output {
    portguard_in_wrapped(ns, &[], args, within)
}

/// `WRAPPER… portguard ARGS…` inside a namespace, killed after `within`.
pub fn portguard_in_wrapped(
    ns: &NetNs,
    wrapper: &[&str],
    args: &[&str],
    within: Duration,
) -> Output {
    let bin = testkit::portguard_bin();
    let mut cmd = match wrapper.split_first() {
        Some((program, rest)) => {
            let mut c = Command::new(program);
            c.args(rest).arg(&bin);
            c
        }
        None => Command::new(&bin),
    };
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    ok_any("setns pre_exec", spawn_in(ns, &mut cmd));
    let mut child = ok("spawning portguard", cmd.spawn());
    let deadline = Instant::now() + within;
    while ok("try_wait", child.try_wait()).is_none() {
        if Instant::now() > deadline {
            // It runs: the failure it was expected to report did not happen.
            // SAFETY: signalling our own, unreaped child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let out = child.wait_with_output();
            panic!("portguard {args:?} was expected to fail but kept running: {out:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    ok("collecting output", child.wait_with_output())
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// What a `Stream`'s receiver saw.
#[derive(Debug)]
pub struct Delivery {
    pub sent: u64,
    pub received: BTreeSet<u64>,
    pub duplicates: u64,
}

impl Delivery {
    /// The sequence numbers sent but not received (first 20).
    pub fn missing(&self) -> Vec<u64> {
        (0..self.sent)
            .filter(|s| !self.received.contains(s))
            .take(20)
            .collect()
    }

    pub fn lost(&self) -> u64 {
        self.sent - self.received.iter().filter(|s| **s < self.sent).count() as u64
    }
}

/// Sequence-numbered UDP datagrams from the client namespace to the server,
/// at a fixed rate, until `finish`. The receiver socket is bound in the server
/// namespace with a 4 MiB buffer so that it is never the thing that drops.
pub struct Stream {
    stop: Arc<AtomicBool>,
    received_count: Arc<AtomicU64>,
    sent_count: Arc<AtomicU64>,
    sender: Option<JoinHandle<u64>>,
    receiver: Option<JoinHandle<(BTreeSet<u64>, u64)>>,
    rx_stop: Arc<AtomicBool>,
}

fn set_rcvbuf(sock: &UdpSocket, bytes: i32) {
    // SAFETY: a valid socket fd and a properly sized int option.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&raw const bytes).cast(),
            size_of::<i32>() as libc::socklen_t,
        );
    }
}

impl Stream {
    fn start(pair: &Pair, port: u16, pps: u32) -> Stream {
        let to = SocketAddrV4::new(pair.server_ip, port);
        let rx = ok(
            "binding the receiver",
            ok_any(
                "setns into the server namespace",
                in_netns(&pair.server, || UdpSocket::bind(to)),
            ),
        );
        set_rcvbuf(&rx, 4 << 20);
        ok(
            "receiver timeout",
            rx.set_read_timeout(Some(Duration::from_millis(20))),
        );
        let from = pair.client_ip;
        let tx = ok(
            "binding the sender",
            ok_any(
                "setns into the client namespace",
                in_netns(&pair.client, || UdpSocket::bind((from, 0))),
            ),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let rx_stop = Arc::new(AtomicBool::new(false));
        let received_count = Arc::new(AtomicU64::new(0));
        let sent_count = Arc::new(AtomicU64::new(0));
        let receiver = {
            let (rx_stop, received_count) = (rx_stop.clone(), received_count.clone());
            std::thread::spawn(move || {
                let mut seen = BTreeSet::new();
                let mut dup = 0;
                let mut buf = [0u8; 2048];
                while !rx_stop.load(Ordering::SeqCst) {
                    if let Ok(n) = rx.recv(&mut buf)
                        && n >= 8
                    {
                        let mut seq = [0u8; 8];
                        seq.copy_from_slice(&buf[..8]);
                        if seen.insert(u64::from_be_bytes(seq)) {
                            received_count.fetch_add(1, Ordering::SeqCst);
                        } else {
                            dup += 1;
                        }
                    }
                }
                (seen, dup)
            })
        };
        let sender = {
            let (stop, sent_count) = (stop.clone(), sent_count.clone());
            let period = Duration::from_secs(1) / pps;
            std::thread::spawn(move || {
                let start = Instant::now();
                let mut seq: u64 = 0;
                let mut payload = [0u8; 64];
                while !stop.load(Ordering::SeqCst) {
                    let due = start + period * u32::try_from(seq).unwrap_or(u32::MAX);
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    payload[..8].copy_from_slice(&seq.to_be_bytes());
                    if tx.send_to(&payload, to).is_ok() {
                        seq += 1;
                        sent_count.store(seq, Ordering::SeqCst);
                    }
                }
                seq
            })
        };
        Stream {
            stop,
            received_count,
            sent_count,
            sender: Some(sender),
            receiver: Some(receiver),
            rx_stop,
        }
    }

    pub fn sent(&self) -> u64 {
        self.sent_count.load(Ordering::SeqCst)
    }

    pub fn received(&self) -> u64 {
        self.received_count.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` more datagrams than now have been received.
    pub fn wait_received_more(&self, n: u64, within: Duration) {
        let target = self.received() + n;
        if poll(within, || (self.received() >= target).then_some(())).is_none() {
            panic!(
                "the stream did not deliver {n} more datagrams within {within:?} (sent {}, received {})",
                self.sent(),
                self.received()
            );
        }
    }

    /// Waits until at least `n` more datagrams than now have been sent.
    pub fn wait_sent_more(&self, n: u64, within: Duration) {
        let target = self.sent() + n;
        if poll(within, || (self.sent() >= target).then_some(())).is_none() {
            panic!("the stream did not send {n} more datagrams within {within:?}");
        }
    }

    /// Stops sending; waits up to `drain` for stragglers; the result.
    pub fn finish(mut self, drain: Duration) -> Delivery {
        self.stop.store(true, Ordering::SeqCst);
        let sent = self
            .sender
            .take()
            .map(|h| h.join().unwrap_or_else(|_| panic!("sender panicked")))
            .unwrap_or_default();
        let _ = poll(drain, || (self.received() >= sent).then_some(()));
        // A little longer, so that a packet that should not arrive can be seen.
        std::thread::sleep(Duration::from_millis(50));
        self.rx_stop.store(true, Ordering::SeqCst);
        let (received, duplicates) = self
            .receiver
            .take()
            .map(|h| h.join().unwrap_or_else(|_| panic!("receiver panicked")))
            .unwrap_or_default();
        Delivery {
            sent,
            received,
            duplicates,
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.rx_stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.sender.take() {
            let _ = h.join();
        }
        if let Some(h) = self.receiver.take() {
            let _ = h.join();
        }
    }
}

/// The repository root (for catalog/ and docs/).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| panic!("tests/ has no parent"))
}

#[cfg(test)]
mod parse_tests {
    use super::*;

    #[test]
    fn samples_parse_with_quoted_commas_braces_and_escapes() {
        let s = parse_sample(
            r#"portguard_packets_total{iface="x0",role="front-end",service="A, B {c} \"d\"",proto="udp",verdict="pass"} 42"#,
        )
        .unwrap_or_else(|| panic!("no parse"));
        assert_eq!(s.name, "portguard_packets_total");
        assert_eq!(s.label("service"), r#"A, B {c} "d""#);
        assert_eq!(s.label("verdict"), "pass");
        assert_eq!(s.value, 42.0);
        let g =
            parse_sample("portguard_catalog_generation 7").unwrap_or_else(|| panic!("no parse"));
        assert!(g.labels.is_empty());
        assert_eq!(g.value, 7.0);
        assert_eq!(parse_sample("garbage"), None);
    }
}
