//! Address sets on an appliance, with real forwarded TCP: an internet
//! namespace holding a federation partner's and a stranger's addresses, the
//! appliance (portguard on both legs, native XDP, a catalog file whose
//! `federation-partners` set holds the partner only) and a DMZ holding an
//! Access Edge address. IPv4 and IPv6:
//! - the partner reaches the Access Edge's SIP 5061 (an inbound row that
//!   names the set) and the stranger does not, counted as `peer_not_allowed`;
//! - the Access Edge reaches the partner's 5061 (the outbound row, whose peer
//!   is the destination) and not the stranger's;
//! - a reload that adds the stranger to the set lets it in, while a
//!   partner's connection opened before carries a line every few ms through
//!   three reloads with never a wait past 200 ms (Linux's shortest
//!   retransmission timeout: a dropped segment would show as one).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use testkit::{
    netns::{NetNs, in_netns},
    ops::{Daemon, Routed, TempDir, ok, ok_any, portguard, repo_root, text},
};

const EXT: &str = "pgasx";
const DMZ: &str = "pgasd";
const METRICS: &str = "127.0.0.1:9493";
const EDGE: &str = "198.18.77.10";
const EDGE6: &str = "2001:db8:77::10";
const PARTNER: &str = "198.18.76.1";
const PARTNER6: &str = "2001:db8:76::1";
const STRANGER: &str = "198.18.76.2";
const STRANGER6: &str = "2001:db8:76::2";
const SIP: u16 = 5061;

/// internet (PARTNER, STRANGER) -- EXT | appliance | DMZ -- dmz (EDGE).
fn routed() -> Routed {
    Routed::new("pgas", 76, 77, &[1, 2])
}

fn start(r: &Routed, dir: &Path, catalog: &Path) -> Daemon {
    let catalog = catalog.to_string_lossy().to_string();
    #[rustfmt::skip]
    let args = [
        "run", "--iface", EXT, "--iface", DMZ, "--catalog", &catalog,
        "--profile", "198.18.77.10/32=access-edge-external",
        "--profile", "2001:db8:77::10/128=access-edge-external",
        "--xdp-mode", "native", "--metrics-addr", METRICS,
    ];
    r.start(&args, dir, "sets")
}

/// The embedded catalog with `federation-partners` holding `cidrs`, written
/// to `dir`.
fn catalog_with_partners(dir: &Path, cidrs: &[&str]) -> PathBuf {
    let path = repo_root().join("catalog/sfb2015.toml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let open = "id = \"federation-partners\"\ncidrs = [\"0.0.0.0/0\", \"::/0\"]";
    assert!(
        text.contains(open),
        "{} no longer ships federation-partners as the whole address space",
        path.display()
    );
    let list: Vec<String> = cidrs.iter().map(|c| format!("\"{c}\"")).collect();
    let text = text.replace(
        open,
        &format!(
            "id = \"federation-partners\"\ncidrs = [{}]",
            list.join(", ")
        ),
    );
    let out = dir.join("catalog.toml");
    ok("writing the catalog", std::fs::write(&out, text));
    out
}

/// A TCP listener on `ip`:5061 in `ns` that echoes each line back, for
/// `secs` seconds.
fn sip_echo(ns: &NetNs, ip: &str, secs: u64) {
    let bind = SocketAddr::new(ip_of(ip), SIP);
    let listener = ok_any("listener", in_netns(ns, || TcpListener::bind(bind)))
        .unwrap_or_else(|e| panic!("binding {bind}: {e}"));
    ok("nonblocking", listener.set_nonblocking(true));
    std::thread::spawn(move || {
        let until = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < until {
            match listener.accept() {
                Ok((stream, _)) => {
                    std::thread::spawn(move || {
                        let _ = stream.set_nonblocking(false);
                        let mut w = match stream.try_clone() {
                            Ok(w) => w,
                            Err(_) => return,
                        };
                        for line in BufReader::new(stream).lines() {
                            let Ok(line) = line else { return };
                            if writeln!(w, "{line}").is_err() {
                                return;
                            }
                        }
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
}

fn ip_of(ip: &str) -> IpAddr {
    ip.parse().unwrap_or_else(|e| panic!("{ip}: {e}"))
}

/// A connection from `from` (an address of `ns`) to `to`:5061, within 1 s.
fn connect(ns: &NetNs, from: &str, to: &str) -> Option<TcpStream> {
    let (from, to) = (ip_of(from), SocketAddr::new(ip_of(to), SIP));
    ok_any(
        "setns",
        in_netns(ns, move || {
            // SAFETY: a socket this closure owns, bound and connected with
            // plain libc calls on valid addresses; handed to std on success.
            unsafe {
                let family = if from.is_ipv4() {
                    libc::AF_INET
                } else {
                    libc::AF_INET6
                };
                let fd = libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
                if fd < 0 {
                    return None;
                }
                let stream = <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd);
                let (local, len) = sockaddr(SocketAddr::new(from, 0));
                if libc::bind(fd, (&raw const local).cast(), len) != 0 {
                    return None;
                }
                // Connect without blocking, then wait for the handshake.
                ok("nonblocking", stream.set_nonblocking(true));
                let (remote, len) = sockaddr(to);
                libc::connect(fd, (&raw const remote).cast(), len);
                let mut pfd = libc::pollfd {
                    fd,
                    events: libc::POLLOUT,
                    revents: 0,
                };
                if libc::poll(&mut pfd, 1, 1000) != 1 || stream.peer_addr().is_err() {
                    return None;
                }
                ok("blocking", stream.set_nonblocking(false));
                Some(stream)
            }
        }),
    )
}

/// `addr` as a `sockaddr_storage` and its length.
fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: zeroed storage is a valid sockaddr_storage; the family's
    // struct is written into its start, which it is large enough for.
    unsafe {
        let mut s: libc::sockaddr_storage = std::mem::zeroed();
        let len = match addr {
            SocketAddr::V4(a) => {
                let sin = (&raw mut s).cast::<libc::sockaddr_in>();
                (*sin).sin_family = libc::AF_INET as libc::sa_family_t;
                (*sin).sin_port = a.port().to_be();
                (*sin).sin_addr.s_addr = u32::from(*a.ip()).to_be();
                size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                let sin6 = (&raw mut s).cast::<libc::sockaddr_in6>();
                (*sin6).sin6_family = libc::AF_INET6 as libc::sa_family_t;
                (*sin6).sin6_port = a.port().to_be();
                (*sin6).sin6_addr.s6_addr = a.ip().octets();
                size_of::<libc::sockaddr_in6>()
            }
        };
        (s, len as libc::socklen_t)
    }
}

/// One line there and back on `stream`; the wait, or `None` if it did not
/// come back within 1 s.
fn round_trip(
    stream: &mut TcpStream,
    reader: &mut BufReader<TcpStream>,
    n: u32,
) -> Option<Duration> {
    let start = Instant::now();
    ok(
        "read timeout",
        stream.set_read_timeout(Some(Duration::from_secs(1))),
    );
    writeln!(stream, "line {n}").ok()?;
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    (line.trim() == format!("line {n}")).then(|| start.elapsed())
}

/// Who reaches whom on 5061, both ways, IPv4 and IPv6, as `(what, reached)`.
fn reachability(r: &Routed) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    for (who, src, edge) in [
        ("partner", PARTNER, EDGE),
        ("partner (IPv6)", PARTNER6, EDGE6),
        ("stranger", STRANGER, EDGE),
        ("stranger (IPv6)", STRANGER6, EDGE6),
    ] {
        out.push((
            format!("{who} {src} to the Access Edge {edge}:5061"),
            connect(&r.internet, src, edge).is_some(),
        ));
        out.push((
            format!("the Access Edge {edge} to the {who} {src}:5061"),
            connect(&r.dmz, edge, src).is_some(),
        ));
    }
    out
}

#[test]
fn an_appliance_lets_partners_in_and_out_and_a_reload_changes_the_set_without_a_loss() {
    if !testkit::require_privileges("appliance address sets") {
        return;
    }
    let dir = TempDir::new("appliance-sets");
    let r = routed();
    for ip in [EDGE, EDGE6] {
        sip_echo(&r.dmz, ip, 90);
    }
    for ip in [PARTNER, PARTNER6, STRANGER, STRANGER6] {
        sip_echo(&r.internet, ip, 90);
    }
    let catalog = catalog_with_partners(dir.path(), &["198.18.76.1/32", "2001:db8:76::1/128"]);
    let mut daemon = start(&r, dir.path(), &catalog);

    for (what, reached) in reachability(&r) {
        let want = !what.contains("stranger");
        assert_eq!(
            reached,
            want,
            "closed federation: {what}: reached {reached}, the set says {want}\n{}",
            daemon.log()
        );
    }
    let s = r.scrape(METRICS);
    for leg in [EXT, DMZ] {
        assert!(
            s.sum(
                "portguard_packets_total",
                &[
                    ("service", "peer_not_allowed"),
                    ("verdict", "drop"),
                    ("iface", leg)
                ]
            ) >= 2.0,
            "the stranger's SYNs on {leg} are counted as peer_not_allowed:\n{}",
            s.text
        );
    }

    // A partner's connection, opened before the reloads, carries a line
    // every few ms through all of them.
    let mut stream = connect(&r.internet, PARTNER, EDGE)
        .unwrap_or_else(|| panic!("the partner's connection\n{}", daemon.log()));
    let mut reader = BufReader::new(ok("clone", stream.try_clone()));
    let mut slowest = Duration::ZERO;
    let mut lines = 0;
    for generation in 2..=4 {
        // The last reload adds the stranger.
        let cidrs: &[&str] = if generation == 4 {
            &[
                "198.18.76.1/32",
                "2001:db8:76::1/128",
                "198.18.76.2/32",
                "2001:db8:76::2/128",
            ]
        } else {
            &["198.18.76.1/32", "2001:db8:76::1/128"]
        };
        catalog_with_partners(dir.path(), cidrs);
        let reload = std::thread::spawn(|| portguard(&["reload", "--iface", EXT]));
        let until = Instant::now() + Duration::from_millis(400);
        while Instant::now() < until || !reload.is_finished() {
            let wait = round_trip(&mut stream, &mut reader, lines).unwrap_or_else(|| {
                panic!(
                    "line {lines} did not come back within 1 s around reload {generation}\n{}",
                    daemon.log()
                )
            });
            slowest = slowest.max(wait);
            lines += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
        let out = match reload.join() {
            Ok(out) => out,
            Err(p) => std::panic::resume_unwind(p),
        };
        assert!(
            out.status.success(),
            "reload ({}): {}",
            out.status,
            text(&out.stderr)
        );
        daemon.wait_log(
            &format!("catalog generation {generation} in force"),
            Duration::from_secs(10),
        );
    }
    assert!(
        slowest < Duration::from_millis(200),
        "a line waited {slowest:?} across the reloads ({lines} lines): a segment was lost"
    );

    for (what, reached) in reachability(&r) {
        assert!(
            reached,
            "after the reload that added the stranger: {what} must be reached\n{}",
            daemon.log()
        );
    }
    daemon.stop();
}
