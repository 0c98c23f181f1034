//! The lab demo: a client and a server namespace joined by a veth pair,
//! portguard on the server side, allowed and forbidden traffic over real
//! sockets, and a check that what arrived matches what portguard counted.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use testkit::netns::{NetNs, addr, in_netns, ns_exec, thread_in, veth_pair};

const CLIENT_IF: &str = "pgc0";
const SERVER_IF: &str = "pgs0";
const SERVER_IP: &str = "198.18.0.2";
const METRICS: &str = "127.0.0.1:9477";
const ROLES: &str = "front-end,client";
const MEDIA: &str = "50000-50019";
const UDP_DATAGRAMS: u32 = 20;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Proto {
    Tcp,
    Udp,
}

struct Case {
    proto: Proto,
    port: u16,
    allowed: bool,
    what: &'static str,
}

const CASES: [Case; 6] = [
    Case { proto: Proto::Tcp, port: 5061, allowed: true, what: "SIP over TLS (front-end)" },
    Case { proto: Proto::Udp, port: 3478, allowed: true, what: "STUN/TURN (client)" },
    Case { proto: Proto::Udp, port: 50_000, allowed: true, what: "media (client range narrowed to 50000-50019)" },
    Case { proto: Proto::Tcp, port: 3389, allowed: false, what: "RDP" },
    Case { proto: Proto::Udp, port: 161, allowed: false, what: "SNMP" },
    Case { proto: Proto::Tcp, port: 1433, allowed: false, what: "SQL Server" },
];

/// `cargo xtask run -- --iface IF --role R …`: portguard on a real interface.
pub fn real_interface(args: &[String]) -> Result<()> {
    let status = Command::new(crate::portguard_bin())
        .arg("run")
        .args(args)
        .status()
        .context("starting portguard")?;
    if !status.success() {
        bail!("portguard run exited with {status}");
    }
    Ok(())
}

/// Kills portguard with SIGINT on drop if it is still running, so that an
/// error path never leaves it attached.
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

pub fn demo() -> Result<()> {
    // Ctrl-C reaches portguard too (same process group): it detaches; we
    // notice, stop, and the namespace guards clean up.
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };

    println!("== portguard lab: client ns <-veth-> server ns (portguard --role {ROLES} --client-media-ports {MEDIA})");
    let client = NetNs::new("pg-client")?;
    let server = NetNs::new("pg-server")?;
    veth_pair(&client, CLIENT_IF, &server, SERVER_IF)?;
    addr(&client, CLIENT_IF, "198.18.0.1/24")?;
    addr(&client, CLIENT_IF, "2001:db8::1/64")?;
    addr(&server, SERVER_IF, &format!("{SERVER_IP}/24"))?;
    addr(&server, SERVER_IF, "2001:db8::2/64")?;
    println!("   {} 198.18.0.1 / 2001:db8::1  <->  {} {SERVER_IP} / 2001:db8::2", client.name(), server.name());

    let bin = crate::portguard_bin();
    let bin = bin.to_str().context("portguard path is not UTF-8")?;
    let mut daemon = Daemon(
        ns_exec(
            &server,
            bin,
            &["run", "--iface", SERVER_IF, "--role", ROLES, "--client-media-ports", MEDIA, "--metrics-addr", METRICS],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting portguard in the server namespace")?,
    );
    wait_attached(&server, &mut daemon)?;
    println!("   portguard attached to {SERVER_IF} (XDP); metrics on http://{METRICS}/metrics inside {}", server.name());

    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut listeners: Vec<(usize, JoinHandle<std::io::Result<u32>>)> = Vec::new();
    for (i, case) in CASES.iter().enumerate() {
        let (stop, ready) = (stop.clone(), ready_tx.clone());
        let (proto, port) = (case.proto, case.port);
        listeners.push((i, thread_in(&server, move || listen(proto, port, &stop, &ready))?));
    }
    drop(ready_tx);
    for _ in 0..CASES.len() {
        ready_rx.recv_timeout(Duration::from_secs(5)).context("a listener did not start")??;
    }

    let sent = in_netns(&client, send_all)?;
    // Give the last packets time to land before the listeners stop.
    std::thread::sleep(Duration::from_millis(300));
    let metrics = scrape(&server);
    stop.store(true, Ordering::SeqCst);
    let mut received = vec![0u32; CASES.len()];
    for (i, h) in listeners {
        received[i] = match h.join() {
            Ok(Ok(n)) => n,
            _ => bail!("the listener for case {i} failed"),
        };
    }
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }

    println!();
    println!("{:<6} {:>6}  {:<46} {:<9} {:>5} {:>9}  {}", "PROTO", "PORT", "WHAT", "EXPECTED", "SENT", "RECEIVED", "RESULT");
    let mut mismatches = 0;
    for (i, case) in CASES.iter().enumerate() {
        let ok = if case.allowed { received[i] == sent[i] && sent[i] > 0 } else { received[i] == 0 };
        if !ok {
            mismatches += 1;
        }
        println!(
            "{:<6} {:>6}  {:<46} {:<9} {:>5} {:>9}  {}",
            if case.proto == Proto::Tcp { "tcp" } else { "udp" },
            case.port,
            case.what,
            if case.allowed { "allowed" } else { "forbidden" },
            sent[i],
            received[i],
            if ok { "ok" } else { "MISMATCH" }
        );
    }

    println!();
    match &metrics {
        Some(m) => {
            println!("portguard counters from /metrics (pass by rule, drops by reason):");
            for (k, v) in m.iter().filter(|(k, _)| k.starts_with("portguard_packets_total") || k.starts_with("portguard_drops_total")) {
                println!("   {k} {v}");
            }
            mismatches += check_counters(m, &sent, &received);
        }
        None => {
            println!("!! could not read http://{METRICS}/metrics");
            mismatches += 1;
        }
    }

    daemon.interrupt();
    let out = wait_output(&mut daemon.0)?;
    println!();
    println!("portguard's own summary on exit:");
    println!("{out}");
    if mismatches > 0 {
        bail!("{mismatches} mismatch(es): see above");
    }
    println!("lab: every allowed packet arrived, every forbidden one was dropped, and the counters agree.");
    Ok(())
}

fn wait_attached(server: &NetNs, daemon: &mut Daemon) -> Result<()> {
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
        if Instant::now() > deadline || INTERRUPTED.load(Ordering::SeqCst) {
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

/// Compares portguard's counters with what the listeners saw. UDP is exact:
/// nothing else sends UDP on this link. TCP retransmits SYNs, so its drops
/// are at least the attempts.
fn check_counters(m: &BTreeMap<String, f64>, sent: &[u32], received: &[u32]) -> u32 {
    let sum = |pred: &dyn Fn(&str) -> bool| -> f64 { m.iter().filter(|(k, _)| pred(k)).map(|(_, v)| *v).sum() };
    let udp_passed = sum(&|k| k.starts_with("portguard_packets_total") && k.contains("proto=\"udp\"") && k.contains("verdict=\"pass\"") && !k.contains("role=\"-\""));
    let udp_dropped = sum(&|k| k.starts_with("portguard_packets_total") && k.contains("proto=\"udp\"") && k.contains("verdict=\"drop\"") && k.contains("service=\"port_not_allowed\""));
    let tcp_dropped = sum(&|k| k.starts_with("portguard_packets_total") && k.contains("proto=\"tcp\"") && k.contains("verdict=\"drop\""));
    let mut udp_received = 0;
    let mut udp_forbidden_sent = 0;
    let mut tcp_forbidden_sent = 0;
    for (i, c) in CASES.iter().enumerate() {
        match (c.proto, c.allowed) {
            (Proto::Udp, true) => udp_received += received[i],
            (Proto::Udp, false) => udp_forbidden_sent += sent[i],
            (Proto::Tcp, false) => tcp_forbidden_sent += sent[i],
            (Proto::Tcp, true) => {}
        }
    }
    let mut bad = 0;
    let mut line = |ok: bool, text: String| {
        println!("   {} {text}", if ok { "ok      " } else { "MISMATCH" });
        bad += u32::from(!ok);
    };
    println!("counters against the receiver:");
    line(udp_passed == f64::from(udp_received), format!("UDP passed by rules {udp_passed} = UDP datagrams received {udp_received}"));
    line(udp_dropped == f64::from(udp_forbidden_sent), format!("UDP dropped as port_not_allowed {udp_dropped} = forbidden UDP sent {udp_forbidden_sent}"));
    line(tcp_dropped >= f64::from(tcp_forbidden_sent), format!("TCP dropped {tcp_dropped} >= forbidden connection attempts {tcp_forbidden_sent}"));
    bad
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
