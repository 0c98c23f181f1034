//! What an attacker can make the daemon say, against a real daemon and its
//! control socket, with crafted frames from the client namespace:
//!
//! - `suggest` after 70 forged bare ACKs, a 4,200-port scan from one
//!   source, late answers to the host's ephemeral ports and a few real
//!   requests: only the requests from two or more sources become rules
//!   (adjacent ones merged), the rest is listed as comments, the fragment
//!   appended to the catalog passes `catalog check`, and after a reload the
//!   requested traffic passes under the suggested rules;
//! - 16 `--follow` clients whose filter never matches, killed: their slots
//!   are free again within a few seconds, where before they locked
//!   `events`, `top` and `suggest` out until a restart; a live one is kept.

use std::{
    io::Write as _,
    os::unix::net::UnixStream,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use portguard::catalog::Catalog;
use portguard_testsupport::frames::{Packet, TCP_ACK, TCP_SYN};
use testkit::ops::{Pair, TempDir, ok, poll, portguard, text};

fn privileged(test: &str) -> bool {
    testkit::require_privileges(test)
}

struct Frames {
    sender: testkit::sockets::RawSender,
    client_mac: [u8; 6],
    server_mac: [u8; 6],
}

impl Frames {
    fn new(pair: &Pair) -> Frames {
        Frames {
            sender: testkit::sockets::RawSender::new(&pair.client, &pair.client_if)
                .expect("a raw sender on the client's interface"),
            client_mac: testkit::netns::mac_of(&pair.client, &pair.client_if)
                .expect("the client interface's MAC"),
            server_mac: testkit::netns::mac_of(&pair.server, &pair.server_if)
                .expect("the server interface's MAC"),
        }
    }

    fn send(&self, p: Packet) {
        let mut p = p;
        p.src_mac = self.client_mac;
        p.dst_mac = self.server_mac;
        self.sender.send(&p.build()).expect("sending a raw frame");
    }
}

/// The suggested rules of a catalog: (protocol, first port, last port).
fn suggested(c: &Catalog) -> Vec<(&'static str, u16, u16)> {
    let mut rules: Vec<_> = c
        .rules
        .iter()
        .filter(|r| r.service.starts_with("suggested: "))
        .map(|r| (r.protocols[0].as_str(), r.port_start, r.port_end))
        .collect();
    rules.sort();
    rules
}

/// The `#   ` lines of the fragment's section that starts with `head`.
fn section<'a>(fragment: &'a str, head: &str) -> Vec<&'a str> {
    let Some(from) = fragment.find(head) else {
        panic!("no section {head:?} in the fragment:\n{fragment}");
    };
    fragment[from..]
        .lines()
        .skip_while(|l| !l.starts_with("#   "))
        .take_while(|l| l.starts_with("#   "))
        .collect()
}

#[test]
fn suggest_after_spoofed_acks_and_a_port_scan() {
    if !privileged("views: suggest under attack") {
        return;
    }
    let _alone = crate::ALONE.hold();
    let dir = TempDir::new("vw-suggest");
    let catalog = dir.path().join("catalog.toml");
    ok(
        "writing the catalog",
        std::fs::write(&catalog, Catalog::embedded_text()),
    );
    let catalog_s = catalog.to_string_lossy().into_owned();
    let pair = Pair::new("vwsg", 77);
    // A budget no burst here reaches: the test is about what the events
    // say, not about which of them the budget lets through.
    let d = pair.start(
        dir.path(),
        "portguard",
        &["--catalog", &catalog_s, "--events-rate", "1000000"],
    );
    let f = Frames::new(&pair);
    let (c, s) = (pair.client_ip.to_string(), pair.server_ip.to_string());

    // 70 bare ACKs to TCP 3389, each from another forged address.
    for i in 0..70u16 {
        let forged = format!("198.19.{}.{}", i / 200, 1 + i % 200);
        f.send(Packet::tcp_flags(&forged, &s, 40_000 + i, 3389, TCP_ACK));
    }
    // A scan: one SYN from one source to each of 4,200 ports.
    for port in 4_000..8_200u16 {
        f.send(Packet::tcp(&c, &s, 33_000, port));
        if port % 500 == 0 {
            // Let the daemon drain the ring as a scan at line rate would not.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // Late answers: a DNS server to the host's ephemeral port, a SYN-ACK,
    // and SYNs to an ephemeral port from three sources.
    f.send(Packet::udp("198.19.2.53", &s, 53, 40_000).payload(20));
    f.send(Packet::tcp_flags(
        "198.19.2.80",
        &s,
        443,
        45_000,
        TCP_SYN | TCP_ACK,
    ));
    for i in 1..=3 {
        f.send(Packet::tcp(&format!("198.19.3.{i}"), &s, 33_001, 45_001));
    }
    // Requests: TCP 9001 and 9002 from three and two sources (each SYN
    // retried once, as a client does), UDP 161 from two.
    for i in 1..=3 {
        for _ in 0..2 {
            f.send(Packet::tcp(&format!("198.19.4.{i}"), &s, 33_002, 9_001));
        }
    }
    for i in 1..=2 {
        f.send(Packet::tcp(&format!("198.19.5.{i}"), &s, 33_003, 9_002));
        f.send(Packet::udp(&format!("198.19.6.{i}"), &s, 33_004, 161).payload(10));
    }

    let fragment = poll(Duration::from_secs(10), || {
        let out = portguard(&["suggest", "--iface", &pair.server_if]);
        let text = text(&out.stdout);
        (out.status.success() && text.contains("# 2 rule(s) for 3 port(s).")).then_some(text)
    })
    .unwrap_or_else(|| {
        let out = portguard(&["suggest", "--iface", &pair.server_if]);
        panic!(
            "suggest never showed the two rules ({}): {}\n{}",
            out.status,
            text(&out.stderr),
            text(&out.stdout)
        )
    });
    eprintln!("{fragment}");
    let combined = format!("{}{fragment}", Catalog::embedded_text());
    let (with, _) = Catalog::parse(&combined, "combined.toml")
        .unwrap_or_else(|e| panic!("the fragment does not parse appended:\n{e}\n{fragment}"));
    assert_eq!(
        suggested(&with),
        [("tcp", 9_001, 9_002), ("udp", 161, 161)],
        "the rules suggested:\n{fragment}"
    );
    assert!(
        fragment.len() < 16 * 1024,
        "{} bytes of fragment after a scan",
        fragment.len()
    );
    let not_requests = section(&fragment, "# Not suggested: no request among the packets");
    assert!(
        not_requests
            .iter()
            .any(|l| l.contains("TCP 3389: 70 packet(s), 0 request(s), from 64+ source(s)")),
        "the forged ACKs are not listed as such:\n{fragment}"
    );
    let answers = section(
        &fragment,
        "# Not suggested: to the ephemeral ports 32768-60999",
    );
    for want in ["UDP 40000:", "TCP 45000:", "TCP 45001:"] {
        assert!(
            answers.iter().any(|l| l.contains(want)),
            "{want} is not among the answers:\n{fragment}"
        );
    }
    let weak = section(&fragment, "# Not suggested: asked for from fewer than 2");
    assert!(
        weak.len() <= 17 && weak.last().is_some_and(|l| l.contains("... and ")),
        "the scan is not listed briefly:\n{fragment}"
    );
    assert!(
        fragment.contains("seen only once (a scan's) were forgotten"),
        "the scan that filled the daemon's port table is not mentioned:\n{fragment}"
    );

    // Appended to the catalog file: `catalog check` passes, and after a
    // reload the requested traffic passes under the suggested rules.
    ok(
        "appending the fragment",
        std::fs::write(&catalog, &combined),
    );
    let check = portguard(&["catalog", "check", &catalog_s]);
    assert!(
        check.status.success(),
        "the catalog with the fragment does not check: {}",
        text(&check.stderr)
    );
    d.signal(libc::SIGHUP);
    d.wait_log("reload: catalog generation", Duration::from_secs(10));
    let passed = |service: &str| {
        pair.scrape().sum(
            "portguard_packets_total",
            &[("verdict", "pass"), ("service", service)],
        )
    };
    f.send(Packet::tcp("198.19.7.1", &s, 33_005, 9_002));
    f.send(Packet::udp("198.19.7.1", &s, 33_006, 161).payload(10));
    let moved = poll(Duration::from_secs(5), || {
        (passed("suggested: TCP 9001-9002") >= 1.0 && passed("suggested: UDP 161") >= 1.0)
            .then_some(())
    });
    assert!(
        moved.is_some(),
        "after the reload the traffic did not pass under the suggested rules:\n{}",
        pair.scrape().text
    );
    // And the next suggestion does not repeat them (a duplicate rule would
    // fail the check).
    let out = portguard(&["suggest", "--iface", &pair.server_if]);
    let again = text(&out.stdout);
    assert!(
        out.status.success() && again.contains("# 0 rule(s) for 0 port(s)."),
        "suggest after the reload ({}):\n{again}",
        out.status
    );
    let twice = format!("{combined}{again}");
    assert!(
        Catalog::parse(&twice, "twice.toml").is_ok(),
        "the second fragment does not check appended:\n{again}"
    );
}

/// `portguard events --iface IF --count 1`: Ok, or the error it printed.
fn events_once(iface: &str) -> Result<(), String> {
    let out = portguard(&["events", "--iface", iface, "--count", "1"]);
    if out.status.success() {
        Ok(())
    } else {
        Err(text(&out.stderr))
    }
}

/// Waits until a client is refused for want of a slot.
fn wait_until_full(iface: &str, what: &str) {
    let full = poll(Duration::from_secs(10), || {
        events_once(iface)
            .err()
            .filter(|e| e.contains("too many clients"))
    });
    assert!(
        full.is_some(),
        "{what}: the daemon never refused a 17th client: {:?}",
        events_once(iface)
    );
}

/// `n` raw connections that each ask to follow events no event matches;
/// Err names how many the daemon refused (an error line, or a closed
/// socket) instead of serving.
fn hold(iface: &str, n: usize) -> Result<Vec<UnixStream>, String> {
    use std::io::Read as _;
    let socket = format!("/run/portguard/{iface}.sock");
    let mut conns = Vec::new();
    let mut refused = 0;
    for _ in 0..n {
        let mut s = ok(
            "connecting to the control socket",
            UnixStream::connect(&socket),
        );
        let sent =
            s.write_all(b"{\"cmd\":\"events\",\"count\":0,\"verdict\":\"pass\",\"follow\":true}\n");
        if sent.is_err() {
            refused += 1;
        } else {
            conns.push(s);
        }
    }
    // A refusal is written at once; a follower of no events gets nothing.
    std::thread::sleep(Duration::from_millis(300));
    for s in &mut conns {
        ok("non-blocking", s.set_nonblocking(true));
        let mut buf = [0u8; 256];
        match s.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            _ => refused += 1,
        }
    }
    if refused > 0 {
        return Err(format!("{refused} of {n} clients refused"));
    }
    Ok(conns)
}

fn follower(iface: &str) -> Child {
    ok(
        "starting a follower",
        Command::new(testkit::portguard_bin())
            .args([
                "events",
                "--iface",
                iface,
                "--follow",
                "--verdict",
                "pass",
                "--format",
                "json",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn(),
    )
}

#[test]
fn sixteen_dead_followers_free_their_slots() {
    if !privileged("views: dead followers") {
        return;
    }
    let _alone = crate::ALONE.hold();
    // The daemon looks for hang-ups once a second: two seconds and a half
    // give every dead client two looks.
    const FREED_WITHIN: Duration = Duration::from_millis(2_500);
    let dir = TempDir::new("vw-follow");
    let pair = Pair::new("vwfl", 78);
    // Without --events-pass no event is a pass: the filter never matches,
    // so the daemon never writes to these clients.
    let _d = pair.start(dir.path(), "portguard", &[]);
    let iface = pair.server_if.clone();

    // 16 `portguard events --follow` processes, then killed.
    let mut followers: Vec<Child> = (0..16).map(|_| follower(&iface)).collect();
    // Probing before they are all in could take the slot one of them needs.
    std::thread::sleep(Duration::from_secs(2));
    for c in &mut followers {
        if let Ok(Some(st)) = c.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = c.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            panic!("a follower exited ({st}) before it was killed: {err}");
        }
    }
    wait_until_full(&iface, "16 followers");
    for c in &mut followers {
        let _ = c.kill();
        let _ = c.wait();
    }
    let killed = Instant::now();
    let first = poll(Duration::from_secs(10), || events_once(&iface).ok());
    assert!(
        first.is_some(),
        "no slot of 16 killed followers was freed within 10 s: {:?}",
        events_once(&iface)
    );
    eprintln!(
        "a slot of the killed followers was free after {:?}",
        killed.elapsed()
    );
    std::thread::sleep(FREED_WITHIN.saturating_sub(killed.elapsed()));
    let conns = hold(&iface, 16)
        .unwrap_or_else(|e| panic!("{FREED_WITHIN:?} after 16 followers were killed, {e}"));
    let out = portguard(&["events", "--iface", &iface, "--count", "1"]);
    assert!(
        text(&out.stderr).contains("too many clients"),
        "16 held connections did not fill the slots: {}",
        text(&out.stderr)
    );

    // The same 16 as raw connections that close without reading.
    drop(conns);
    std::thread::sleep(FREED_WITHIN);
    let conns = hold(&iface, 16)
        .unwrap_or_else(|e| panic!("{FREED_WITHIN:?} after 16 connections closed, {e}"));
    drop(conns);
    std::thread::sleep(FREED_WITHIN);
    let out = portguard(&["suggest", "--iface", &iface]);
    assert!(
        out.status.success(),
        "suggest after the followers went: {}",
        text(&out.stderr)
    );

    // A live follower whose filter never matches is not cut off.
    let mut live = follower(&iface);
    std::thread::sleep(Duration::from_secs(3));
    let status = ok("try_wait", live.try_wait());
    let _ = live.kill();
    let out = ok("collecting the follower", live.wait_with_output());
    assert!(
        status.is_none(),
        "a live follower was disconnected ({status:?}): {}",
        text(&out.stderr)
    );
}
