//! One portguard on both legs of a router, with real forwarded traffic:
//! an internet namespace, the appliance (IP forwarding, portguard on its two
//! interfaces in native XDP) and a DMZ namespace holding an A/V Edge
//! address. The operations an operator relies on hold on every leg:
//! counters and `portguard_xdp_attached` per leg, `stats` and `reload` from
//! either leg, `kill -9` leaves both legs enforcing and a restart takes both
//! over without a gap, and `detach` given either leg removes the whole
//! instance.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    path::Path,
    time::Duration,
};

use testkit::{
    netns::{NetNs, in_netns, thread_in},
    ops::{Daemon, Routed, Scrape, TempDir, ok, ok_any, pin_dir, poll, portguard, text},
};

const EXT: &str = "pgapx";
const DMZ: &str = "pgapd";
const METRICS: &str = "127.0.0.1:9491";
const AV: &str = "198.18.73.10";
const AV6: &str = "2001:db8:73::10";
const PARTNER: &str = "198.18.72.1";
const PARTNER6: &str = "2001:db8:72::1";
/// The partner's source port: fixed, and outside 50000-59999, where the A/V
/// Edge's answers would pass by its outbound media rule rather than as
/// answers (an ephemeral port may land there).
const CLIENT_PORT: u16 = 40_478;

/// internet (PARTNER) -- EXT | appliance | DMZ -- dmz (AV).
fn routed() -> Routed {
    Routed::new("pgap", 72, 73, &[1])
}

fn start(r: &Routed, dir: &Path, name: &str) -> Daemon {
    #[rustfmt::skip]
    let args = [
        "run", "--iface", EXT, "--iface", DMZ,
        "--profile", "198.18.73.10/32=av-edge-external",
        "--profile", "2001:db8:73::10/128=av-edge-external",
        "--xdp-mode", "native", "--metrics-addr", METRICS,
        // Ports and flows are watched here; the datagrams carry counters,
        // which the media rules' payload check (tests/tests/policy/media.rs) would refuse.
        "--media-check", "off",
    ];
    r.start(&args, dir, name)
}

/// A UDP echo server in `ns` for `secs` seconds.
fn echo(ns: &NetNs, bind: SocketAddr, secs: u64) {
    let sock = ok_any("echo socket", in_netns(ns, || UdpSocket::bind(bind)))
        .unwrap_or_else(|e| panic!("binding {bind}: {e}"));
    ok(
        "read timeout",
        sock.set_read_timeout(Some(Duration::from_millis(200))),
    );
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        let until = std::time::Instant::now() + Duration::from_secs(secs);
        while std::time::Instant::now() < until {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], from);
            }
        }
    });
}

/// Sends `n` datagrams from `from` (in `ns`) to `to`; how many came back.
fn exchange(ns: &NetNs, from: SocketAddr, to: SocketAddr, n: u32) -> u32 {
    let handle = ok_any(
        "sender thread",
        thread_in(ns, move || {
            let sock = UdpSocket::bind(from).unwrap_or_else(|e| panic!("bind {from}: {e}"));
            sock.set_read_timeout(Some(Duration::from_millis(300)))
                .expect("timeout");
            let mut back = 0;
            let mut buf = [0u8; 64];
            for i in 0..n {
                let _ = sock.send_to(&i.to_be_bytes(), to);
                if sock.recv_from(&mut buf).is_ok() {
                    back += 1;
                }
            }
            back
        }),
    );
    match handle.join() {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => panic!("setns for {from} -> {to}: {e}"),
        Err(p) => std::panic::resume_unwind(p),
    }
}

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(
        ip.parse::<IpAddr>().unwrap_or_else(|e| panic!("{ip}: {e}")),
        port,
    )
}

/// Allowed both ways and forbidden, IPv4 and IPv6; returns nothing but
/// panics with what differed.
fn check_policy(r: &Routed, round: &str) {
    // STUN into the A/V Edge (inbound row) and its answers.
    assert_eq!(
        exchange(&r.internet, sa(PARTNER, CLIENT_PORT), sa(AV, 3478), 5),
        5,
        "{round}: STUN to the A/V Edge and back"
    );
    assert_eq!(
        exchange(&r.internet, sa(PARTNER6, CLIENT_PORT), sa(AV6, 3478), 5),
        5,
        "{round}: STUN to the A/V Edge (IPv6) and back"
    );
    // Media relay out of the A/V Edge (outbound row) and the answers.
    assert_eq!(
        exchange(&r.dmz, sa(AV, 50_123), sa(PARTNER, 50_500), 5),
        5,
        "{round}: media relay out of the A/V Edge and its answers"
    );
    assert_eq!(
        exchange(&r.dmz, sa(AV6, 50_124), sa(PARTNER6, 50_500), 5),
        5,
        "{round}: media relay out of the A/V Edge (IPv6) and its answers"
    );
    // Forbidden: a port the A/V Edge does not publish, and the media range
    // inbound (unsolicited).
    assert_eq!(
        exchange(&r.internet, sa(PARTNER, CLIENT_PORT + 1), sa(AV, 3479), 3),
        0,
        "{round}: UDP 3479 to the A/V Edge must be dropped"
    );
    assert_eq!(
        exchange(&r.internet, sa(PARTNER, CLIENT_PORT + 2), sa(AV, 50_600), 3),
        0,
        "{round}: unsolicited UDP to the A/V Edge's media range must be dropped"
    );
}

fn start_echoes(r: &Routed, secs: u64) {
    echo(&r.dmz, sa(AV, 3478), secs);
    echo(&r.dmz, sa(AV6, 3478), secs);
    echo(&r.dmz, sa(AV, 3479), secs);
    echo(&r.dmz, sa(AV, 50_600), secs);
    echo(&r.internet, sa(PARTNER, 50_500), secs);
    echo(&r.internet, sa(PARTNER6, 50_500), secs);
}

#[test]
fn one_daemon_guards_both_legs_through_reload_kill9_restart_and_detach() {
    if !testkit::require_privileges("appliance: one daemon on both legs") {
        return;
    }
    let dir = TempDir::new("appliance");
    let r = routed();
    start_echoes(&r, 60);

    let mut first = start(&r, dir.path(), "first");
    check_policy(&r, "first daemon");

    // Counters and attachment per leg.
    let s = r.scrape(METRICS);
    for (leg, labels, what) in [
        (
            EXT,
            &[("role", "av-edge-external"), ("verdict", "pass")][..],
            "STUN in, by rule",
        ),
        (
            DMZ,
            &[("role", "av-edge-external"), ("verdict", "pass")],
            "media out, by rule",
        ),
        (
            EXT,
            &[("service", "established"), ("verdict", "pass")],
            "media answers",
        ),
        (
            DMZ,
            &[("service", "established"), ("verdict", "pass")],
            "STUN answers",
        ),
        (
            EXT,
            &[("service", "port_not_allowed"), ("verdict", "drop")],
            "forbidden",
        ),
    ] {
        let mut l = labels.to_vec();
        l.push(("iface", leg));
        assert!(
            s.sum("portguard_packets_total", &l) >= 5.0,
            "{what}: portguard_packets_total{l:?} < 5:\n{}",
            s.text
        );
    }
    for leg in [EXT, DMZ] {
        assert_eq!(
            s.value("portguard_xdp_attached", &[("iface", leg)]),
            1.0,
            "portguard_xdp_attached{{iface={leg}}}:\n{}",
            s.text
        );
    }

    // Events name the leg a packet arrived on, whichever leg is asked.
    let out = portguard(&[
        "events",
        "--iface",
        DMZ,
        "--format",
        "json",
        "--verdict",
        "drop",
    ]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "events --iface {DMZ} ({}): {}",
        out.status,
        text(&out.stderr)
    );
    let forbidden: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("\"dport\":3479"))
        .collect();
    assert!(
        !forbidden.is_empty()
            && forbidden
                .iter()
                .all(|l| l.contains(&format!("\"iface\":\"{EXT}\""))),
        "the drops of UDP 3479 arrive on {EXT} and their events must say so:\n{stdout}"
    );

    // `stats` and `reload` given the second leg find the instance.
    let out = portguard(&["stats", "--iface", DMZ]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success()
            && stdout.contains(&format!("leg {EXT}"))
            && stdout.contains(&format!("leg {DMZ}")),
        "stats --iface {DMZ} ({}): {}{stdout}",
        out.status,
        text(&out.stderr)
    );
    let out = portguard(&["reload", "--iface", DMZ]);
    assert!(
        out.status.success(),
        "reload --iface {DMZ} ({}): {}",
        out.status,
        text(&out.stderr)
    );
    first.wait_log("catalog generation 2 in force", Duration::from_secs(10));

    // kill -9: both legs keep their program and keep enforcing.
    first.kill9();
    assert!(
        r.xdp_on(EXT) && r.xdp_on(DMZ),
        "after kill -9 both legs must keep their program"
    );
    for pin in ["xdp_link".to_string(), format!("xdp_link@{DMZ}")] {
        assert!(
            pin_dir(EXT).join(&pin).exists(),
            "{pin} must stay pinned after kill -9"
        );
    }
    check_policy(&r, "after kill -9 (no daemon)");

    // A restart takes over both legs, and their counters go on.
    let before = scrape_or_zero();
    let second = start(&r, dir.path(), "second");
    let log = second.log();
    assert_eq!(
        log.matches("taking over the XDP program a previous run left on")
            .count(),
        2,
        "the restart must take over both legs:\n{log}"
    );
    check_policy(&r, "second daemon");
    let after = r.scrape(METRICS);
    let passed = |s: &Scrape, leg: &str| {
        s.sum(
            "portguard_packets_total",
            &[
                ("iface", leg),
                ("verdict", "pass"),
                ("role", "av-edge-external"),
            ],
        )
    };
    for leg in [EXT, DMZ] {
        assert!(
            passed(&after, leg) >= before.get(leg).copied().unwrap_or(0.0) + 5.0,
            "{leg}: the rule counters must continue across the restart ({:?} -> {})",
            before.get(leg),
            passed(&after, leg)
        );
    }

    // A leg that goes away is reported as detached while the other leg
    // keeps enforcing; when it comes back it is guarded again.
    ok_any(
        "deleting the DMZ leg",
        r.appliance.ip(&["link", "del", DMZ]),
    );
    let gone = poll(Duration::from_secs(5), || {
        let s = r.scrape(METRICS);
        (s.value("portguard_xdp_attached", &[("iface", DMZ)]) == 0.0
            && s.value("portguard_xdp_attached", &[("iface", EXT)]) == 1.0)
            .then_some(())
    });
    assert!(
        gone.is_some(),
        "with {DMZ} deleted, its gauge must be 0 and {EXT}'s 1:\n{}",
        r.scrape(METRICS).text
    );
    // The DMZ's echo servers stay bound to their addresses meanwhile.
    r.link_dmz();
    let back = poll(Duration::from_secs(5), || {
        (r.xdp_on(DMZ)
            && r.scrape(METRICS)
                .value("portguard_xdp_attached", &[("iface", DMZ)])
                == 1.0)
            .then_some(())
    });
    assert!(
        back.is_some(),
        "{DMZ} re-created must be guarded again:\n{}",
        second.log()
    );
    check_policy(&r, "after the DMZ leg came back");

    // `detach` refuses while it runs, and after a crash removes everything
    // from either leg.
    let out = portguard(&["detach", "--iface", DMZ]);
    assert!(
        !out.status.success(),
        "detach must refuse while the daemon runs: {}",
        text(&out.stdout)
    );
    let mut second = second;
    second.kill9();
    let out = portguard(&["detach", "--iface", DMZ]);
    assert!(
        out.status.success(),
        "detach --iface {DMZ} after kill -9 ({}): {}",
        out.status,
        text(&out.stderr)
    );
    assert!(
        !r.xdp_on(EXT) && !r.xdp_on(DMZ),
        "detach given one leg must remove the program from both"
    );
    assert!(
        !pin_dir(EXT).exists(),
        "detach must remove the instance's pins"
    );
}

/// The per-leg rule passes before a restart (no daemon: none served).
fn scrape_or_zero() -> std::collections::BTreeMap<String, f64> {
    // The killed daemon's counters live on in the pins: read them with
    // `stats` (the metrics endpoint died with it).
    let out = portguard(&["stats", "--iface", EXT]);
    let stdout = text(&out.stdout);
    let mut map = std::collections::BTreeMap::new();
    let mut leg = String::new();
    for line in stdout.lines() {
        if let Some(l) = line.strip_prefix("leg ") {
            leg = l.trim().to_string();
        } else if line.starts_with("av-edge-external") && line.contains(" pass ") {
            let n: f64 = line
                .split_whitespace()
                .rev()
                .nth(1)
                .and_then(|w| w.parse().ok())
                .unwrap_or(0.0);
            *map.entry(leg.clone()).or_insert(0.0) += n;
        }
    }
    assert!(
        map.len() == 2,
        "stats after kill -9 must show both legs' rule counters:\n{stdout}"
    );
    map
}
