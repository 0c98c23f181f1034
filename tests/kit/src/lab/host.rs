//! The lab: a client and a server namespace joined by a veth pair, portguard
//! on the server side, allowed and forbidden traffic over real sockets, and
//! portguard's counters read from its metrics endpoint. `cargo xtask run`
//! prints it; the `lab` test asserts on it.

use std::{
    collections::BTreeMap,
    io::{Read, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    netns::{NetNs, addr, in_netns, ns_exec, veth_pair},
    sockets::Counter,
};

pub const CLIENT_IF: &str = "pgc0";
pub const SERVER_IF: &str = "pgs0";
pub const SERVER_IP: &str = "198.18.0.2";
const SERVER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const METRICS: &str = "127.0.0.1:9477";
pub const ROLES: &str = "front-end,client";
pub const MEDIA: &str = "50000-50019";
pub(crate) const UDP_DATAGRAMS: u32 = 20;
/// Messages written over each TCP connection that opens.
const TCP_MESSAGES: u32 = 3;

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
    Case {
        proto: Proto::Tcp,
        port: 5061,
        allowed: true,
        what: "SIP over TLS (front-end)",
    },
    Case {
        proto: Proto::Udp,
        port: 3478,
        allowed: true,
        what: "STUN/TURN (client)",
    },
    Case {
        proto: Proto::Udp,
        port: 50_000,
        allowed: true,
        what: "media (client range narrowed to 50000-50019)",
    },
    Case {
        proto: Proto::Tcp,
        port: 3389,
        allowed: false,
        what: "RDP",
    },
    Case {
        proto: Proto::Udp,
        port: 161,
        allowed: false,
        what: "SNMP",
    },
    Case {
        proto: Proto::Tcp,
        port: 1433,
        allowed: false,
        what: "SQL Server",
    },
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
    /// Real protocol peers (sipp, coturn's STUN client, curl over TLS).
    pub peers: Vec<PeerResult>,
}

/// One conversation of a real protocol tool through portguard.
#[derive(Debug)]
pub struct PeerResult {
    pub name: String,
    pub target: String,
    pub ok: bool,
    pub detail: String,
}

impl Report {
    /// Per case: whether what arrived is what the policy says.
    pub fn case_ok(&self, i: usize) -> bool {
        if CASES[i].allowed {
            self.received[i] == self.sent[i] && self.sent[i] > 0
        } else {
            self.received[i] == 0
        }
    }

    /// One line per case whose delivery differs from the policy: what was
    /// sent and received, and whether it is allowed.
    pub fn case_failures(&self) -> Vec<String> {
        CASES
            .iter()
            .enumerate()
            .filter(|&(i, _)| !self.case_ok(i))
            .map(|(i, case)| {
                format!(
                    "{} {} ({}): sent {} received {} but it is {}",
                    case.proto.name(),
                    case.port,
                    case.what,
                    self.sent[i],
                    self.received[i],
                    if case.allowed { "allowed" } else { "forbidden" }
                )
            })
            .collect()
    }

    fn sum(&self, pred: impl Fn(&str) -> bool) -> f64 {
        self.metrics.as_ref().map_or(0.0, |m| {
            m.iter().filter(|(k, _)| pred(k)).map(|(_, v)| *v).sum()
        })
    }

    /// portguard's counters against what the listeners saw: (ok, text) lines.
    /// UDP is exact (nothing else sends UDP on this link); TCP retransmits
    /// SYNs, so its drops are at least the attempts.
    pub fn counter_checks(&self) -> Vec<(bool, String)> {
        let packets = |k: &str| k.starts_with("portguard_packets_total");
        let udp_passed = self.sum(|k| {
            packets(k)
                && k.contains("proto=\"udp\"")
                && k.contains("verdict=\"pass\"")
                && !k.contains("role=\"-\"")
        });
        let udp_dropped = self.sum(|k| {
            packets(k)
                && k.contains("proto=\"udp\"")
                && k.contains("verdict=\"drop\"")
                && k.contains("service=\"port_not_allowed\"")
        });
        let tcp_dropped = self
            .sum(|k| packets(k) && k.contains("proto=\"tcp\"") && k.contains("verdict=\"drop\""));
        let native =
            self.sum(|k| k.starts_with("portguard_xdp_attached") && k.contains("mode=\"native\""));
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
            (
                self.metrics.is_some(),
                format!("metrics endpoint answered on {METRICS}"),
            ),
            (
                native == 1.0,
                "portguard_xdp_attached{mode=\"native\"} = 1".to_string(),
            ),
            (
                udp_passed == f64::from(udp_received),
                format!("UDP passed by rules {udp_passed} = UDP datagrams received {udp_received}"),
            ),
            (
                udp_dropped == f64::from(udp_forbidden),
                format!(
                    "UDP dropped as port_not_allowed {udp_dropped} = forbidden UDP sent {udp_forbidden}"
                ),
            ),
            (
                tcp_dropped >= f64::from(tcp_forbidden),
                format!(
                    "TCP dropped {tcp_dropped} >= forbidden connection attempts {tcp_forbidden}"
                ),
            ),
            (
                self.detached,
                format!("no XDP program left on {SERVER_IF} after SIGINT"),
            ),
        ]
    }

    /// Mismatches that need no metrics: the cases, the peers, the detach.
    /// The demo falls back to these when the endpoint does not answer.
    pub fn mismatches_without_metrics(&self) -> usize {
        (0..CASES.len()).filter(|i| !self.case_ok(*i)).count()
            + self.peers.iter().filter(|p| !p.ok).count()
            + usize::from(!self.detached)
    }

    pub fn mismatches(&self) -> usize {
        (0..CASES.len()).filter(|i| !self.case_ok(*i)).count()
            + self.counter_checks().iter().filter(|(ok, _)| !ok).count()
            + self.peers.iter().filter(|p| !p.ok).count()
    }
}

/// portguard as a child: stdout and stderr drained on threads (a full pipe
/// would block it), and SIGINT on drop if it still runs, so that no error
/// path leaves it attached.
pub(crate) struct Daemon {
    pub(crate) child: Child,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> Option<JoinHandle<String>> {
    let mut pipe = pipe?;
    Some(std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    }))
}

pub(crate) fn joined(h: &mut Option<JoinHandle<String>>) -> String {
    h.take().and_then(|h| h.join().ok()).unwrap_or_default()
}

impl Daemon {
    pub(crate) fn spawn(mut cmd: Command) -> Result<Daemon> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting portguard in the server namespace")?;
        let (stdout, stderr) = (drain(child.stdout.take()), drain(child.stderr.take()));
        Ok(Daemon {
            child,
            stdout,
            stderr,
        })
    }

    fn interrupt(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: signalling our own child, which has not been reaped
            // while this guard holds it.
            unsafe { libc::kill(pid, libc::SIGINT) };
        }
    }

    /// SIGINT, then wait for the exit; (stdout, stderr).
    pub(crate) fn stop(&mut self, within: Duration) -> Result<(String, String)> {
        self.interrupt();
        let deadline = Instant::now() + within;
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(
                    "portguard did not exit within {within:?} of SIGINT:\n{}",
                    joined(&mut self.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok((joined(&mut self.stdout), joined(&mut self.stderr)))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait()
            && self.stop(Duration::from_secs(5)).is_err()
        {
            eprintln!("lab: portguard ignored SIGINT and was killed");
        }
    }
}

/// Options of one lab run.
pub struct Options<'a> {
    pub bin: &'a Path,
    /// Polled so that Ctrl-C ends the run early (the namespaces are removed on return).
    pub interrupted: &'a AtomicBool,
    /// Also drive sipp, turnutils_stunclient and curl (they must be installed).
    pub peers: bool,
    /// Print the counters every half second while traffic flows.
    pub live: bool,
}

pub(crate) fn check_interrupted(interrupted: &AtomicBool) -> Result<()> {
    if interrupted.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

fn case_addr(case: &Case) -> SocketAddr {
    SocketAddr::from((SERVER_V4, case.port))
}

/// Runs the lab once. Every guard (namespaces, portguard, listeners, peers)
/// is dropped on return, on any path: portguard first, then the namespaces
/// with their interfaces.
pub fn run(opts: &Options<'_>) -> Result<Report> {
    let (bin, interrupted) = (opts.bin, opts.interrupted);
    let client = NetNs::new("pg-client")?;
    let server = NetNs::new("pg-server")?;
    veth_pair(&client, CLIENT_IF, &server, SERVER_IF)?;
    addr(&client, CLIENT_IF, "198.18.0.1/24")?;
    addr(&client, CLIENT_IF, "2001:db8::1/64")?;
    addr(&server, SERVER_IF, &format!("{SERVER_IP}/24"))?;
    addr(&server, SERVER_IF, "2001:db8::2/64")?;

    let bin = bin.to_str().context("portguard path is not UTF-8")?;
    #[rustfmt::skip]
    let args = [
        "run", "--iface", SERVER_IF, "--role", ROLES, "--client-media-ports", MEDIA,
        "--xdp-mode", "native", "--metrics-addr", METRICS,
    ];
    let mut daemon = Daemon::spawn(ns_exec(&server, bin, &args))?;
    wait_attached(&server, &[SERVER_IF], &mut daemon, interrupted)?;

    let listeners = in_netns(&server, || -> std::io::Result<Vec<Counter>> {
        CASES
            .iter()
            .map(|c| match c.proto {
                Proto::Udp => Counter::udp(case_addr(c)),
                Proto::Tcp => Counter::tcp(case_addr(c)),
            })
            .collect()
    })?
    .context("binding the listeners in the server namespace")?;

    let live_stop = Arc::new(AtomicBool::new(false));
    let live = opts.live.then(|| spawn_live(&server, live_stop.clone()));
    let sent = in_netns(&client, send_all)?;
    // Let the last packets land before the listeners stop. The counters are
    // read now, while portguard runs and before the peers add their own traffic.
    std::thread::sleep(Duration::from_millis(300));
    let metrics = scrape(&server);
    let received: Vec<u32> = listeners.into_iter().map(|l| l.finish().count).collect();
    check_interrupted(interrupted)?;
    // The peers' servers take the listeners' ports (5061, 3478) now.
    let peers = if opts.peers {
        run_peers(&client, &server)?
    } else {
        Vec::new()
    };
    if let Some(Ok(h)) = live {
        live_stop.store(true, Ordering::SeqCst);
        let _ = h.join();
    }
    check_interrupted(interrupted)?;
    let (summary, _log) = daemon.stop(Duration::from_secs(10))?;
    let detached = !server
        .ip(&["link", "show", "dev", SERVER_IF])?
        .contains("prog/xdp");
    Ok(Report {
        client: client.name().into(),
        server: server.name().into(),
        sent,
        received,
        metrics,
        summary,
        detached,
        peers,
    })
}

/// Polls until every interface in `ifaces` shows `prog/xdp` in `ns`.
pub(crate) fn wait_attached(
    ns: &NetNs,
    ifaces: &[&str],
    daemon: &mut Daemon,
    interrupted: &AtomicBool,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = daemon.child.try_wait()? {
            bail!(
                "portguard exited early ({status}):\n{}",
                joined(&mut daemon.stderr)
            );
        }
        // `prog/xdp` for native mode (`xdpgeneric` would mean a fallback).
        let mut attached = true;
        for iface in ifaces {
            attached &= ns.ip(&["link", "show", "dev", iface])?.contains("prog/xdp");
        }
        if attached {
            return Ok(());
        }
        check_interrupted(interrupted)?;
        if Instant::now() > deadline {
            bail!(
                "portguard did not attach to {} within 15 s",
                ifaces.join(" and ")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends from the client namespace: UDP datagrams, or one TCP connection
/// attempt that writes a few messages when it connects. Returns, per case,
/// the datagrams or connection attempts sent.
fn send_all() -> Vec<u32> {
    CASES
        .iter()
        .map(|case| {
            send_case(
                case.proto,
                IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
                case_addr(case),
            )
        })
        .collect()
}

/// `text` behind an RTP version 2 header (RFC 3550): what a media port
/// carries, so that the media rules' payload check passes the lab's
/// datagrams as it passes a call's, on every port alike.
pub fn rtp_shaped(text: &str) -> Vec<u8> {
    let mut v = vec![0x80, 0x00, 0, 1, 0, 0, 0, 160, 0x70, 0x67, 0x6c, 0x62];
    v.extend_from_slice(text.as_bytes());
    v
}

/// One case's traffic, from `from` (the host and edge labs share it): UDP
/// datagrams, paced (a veth drops nothing, but the receiver's buffer should
/// not be the thing measured), or one TCP connection attempt that writes a
/// few messages if it connects. Returns the datagrams sent, or 1 for the
/// attempt: an attempt that got no answer counts as sent too.
pub(crate) fn send_case(proto: Proto, from: IpAddr, to: SocketAddr) -> u32 {
    match proto {
        Proto::Udp => {
            let Ok(sock) = UdpSocket::bind(SocketAddr::new(from, 0)) else {
                return 0;
            };
            let sent = (0..UDP_DATAGRAMS)
                .filter(|i| {
                    std::thread::sleep(Duration::from_millis(2));
                    sock.send_to(&rtp_shaped(&format!("portguard lab {i}")), to)
                        .is_ok()
                })
                .count();
            u32::try_from(sent).unwrap_or(u32::MAX)
        }
        Proto::Tcp => {
            if let Ok(mut s) = TcpStream::connect_timeout(&to, Duration::from_secs(1)) {
                for i in 0..TCP_MESSAGES {
                    let _ = s.write_all(format!("portguard lab message {i}\n").as_bytes());
                }
            }
            1
        }
    }
}

/// `name{labels}` → value, from the metrics endpoint in the server namespace.
fn scrape(server: &NetNs) -> Option<BTreeMap<String, f64>> {
    let out = ns_exec(
        server,
        "curl",
        &[
            "-sf",
            "--max-time",
            "3",
            &format!("http://{METRICS}/metrics"),
        ],
    )
    .output()
    .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    Some(
        text.lines()
            .filter(|l| l.starts_with("portguard_"))
            .filter_map(|l| {
                l.rsplit_once(' ')
                    .and_then(|(k, v)| v.parse().ok().map(|v| (k.to_string(), v)))
            })
            .collect(),
    )
}

/// Prints a line of live totals from the metrics endpoint until `stop`.
pub(crate) fn spawn_live(server: &NetNs, stop: Arc<AtomicBool>) -> Result<JoinHandle<()>> {
    let name = server.name().to_string();
    Ok(std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let out = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &name,
                    "curl",
                    "-sf",
                    "--max-time",
                    "1",
                    &format!("http://{METRICS}/metrics"),
                ])
                .output();
            if let Ok(out) = out
                && out.status.success()
            {
                let text = String::from_utf8_lossy(&out.stdout);
                let total = |verdict: &str| -> f64 {
                    text.lines()
                        .filter(|l| {
                            l.starts_with("portguard_packets_total")
                                && l.contains(&format!("verdict=\"{verdict}\""))
                        })
                        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
                        .sum()
                };
                println!(
                    "   live: {:>5} passed {:>5} dropped",
                    total("pass") as u64,
                    total("drop") as u64
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }))
}

/// A peer's server side, killed when dropped (a process in a namespace
/// outlives the namespace's deletion otherwise).
pub(crate) struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn start(server: &NetNs, program: &str, args: &[&str]) -> Result<Server> {
    Ok(Server(
        ns_exec(server, program, args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {program} in {}", server.name()))?,
    ))
}

/// Runs a client with a deadline; (exit ok, stdout+stderr).
pub(crate) fn client_run(
    client: &NetNs,
    program: &str,
    args: &[&str],
    secs: u64,
) -> Result<(bool, String)> {
    let mut cmd = ns_exec(client, "timeout", &[&secs.to_string(), program]);
    cmd.args(args).stdin(Stdio::null());
    let out = cmd.output().with_context(|| format!("running {program}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

/// A throwaway self-signed certificate and key in `dir`, for the TLS
/// servers the peers talk to: (certificate path, key path).
pub(crate) fn test_certificate(dir: &Path) -> Result<(String, String)> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let (cert, key) = (
        cert.to_string_lossy().into_owned(),
        key.to_string_lossy().into_owned(),
    );
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &cert,
            "-days",
            "1",
            "-subj",
            "/CN=portguard-lab",
        ])
        .output()
        .context("openssl req")?;
    if !made.status.success() {
        bail!(
            "openssl could not make a test certificate: {}",
            String::from_utf8_lossy(&made.stderr)
        );
    }
    Ok((cert, key))
}

/// SIP over TCP 5061 with sipp, STUN over UDP 3478 with coturn, HTTPS on 443
/// with curl against openssl's test server: each must get through.
fn run_peers(client: &NetNs, server: &NetNs) -> Result<Vec<PeerResult>> {
    let mut results = Vec::new();
    let dir = std::env::temp_dir().join(format!("portguard-lab-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;

    let _sip = start(
        server,
        "sipp",
        &[
            "-sn", "uas", "-i", SERVER_IP, "-p", "5061", "-t", "t1", "-nostdin",
        ],
    )?;
    let _stun = start(
        server,
        "turnserver",
        &[
            "-L",
            SERVER_IP,
            "-p",
            "3478",
            "--stun-only",
            "--no-tls",
            "--no-dtls",
            "--no-cli",
            "-n",
            "--no-stdout-log",
            "--log-file",
            "/dev/null",
        ],
    )?;
    let (cert, key) = test_certificate(&dir)?;
    let _https = start(
        server,
        "openssl",
        &[
            "s_server",
            "-accept",
            &format!("{SERVER_IP}:443"),
            "-cert",
            &cert,
            "-key",
            &key,
            "-www",
            "-quiet",
        ],
    )?;
    // The servers bind asynchronously; the clients retry within their deadline.
    std::thread::sleep(Duration::from_millis(500));

    let (ok, text) = client_run(
        client,
        "sipp",
        &[
            "-sn",
            "uac",
            &format!("{SERVER_IP}:5061"),
            "-i",
            "198.18.0.1",
            "-t",
            "t1",
            "-m",
            "5",
            "-r",
            "10",
            "-nostdin",
            "-timeout",
            "10s",
        ],
        15,
    )?;
    let calls = text
        .lines()
        .find(|l| l.contains("Successful call"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "));
    results.push(PeerResult {
        name: "sipp (5 SIP calls)".into(),
        target: "tcp 5061".into(),
        ok,
        detail: calls.unwrap_or_else(|| last_line(&text)),
    });

    let (ok, text) = client_run(
        client,
        "turnutils_stunclient",
        &["-p", "3478", SERVER_IP],
        5,
    )?;
    let mapped = text
        .lines()
        .find(|l| l.contains("reflexive addr"))
        .map(str::trim)
        .map(String::from);
    results.push(PeerResult {
        name: "turnutils_stunclient (STUN binding)".into(),
        target: "udp 3478".into(),
        ok: ok && mapped.is_some(),
        detail: mapped.unwrap_or_else(|| last_line(&text)),
    });

    let (ok, text) = client_run(
        client,
        "curl",
        &[
            "-sk",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("https://{SERVER_IP}/"),
        ],
        5,
    )?;
    results.push(PeerResult {
        name: "curl (HTTPS GET)".into(),
        target: "tcp 443".into(),
        ok: ok && text.trim() == "200",
        detail: format!("HTTP {}", text.trim()),
    });

    let _ = std::fs::remove_dir_all(&dir);
    Ok(results)
}

pub(crate) fn last_line(text: &str) -> String {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no output")
        .trim()
        .to_string()
}
