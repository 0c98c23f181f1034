//! Reload under traffic: a sequence-numbered UDP stream at 2,000 packets/s to
//! an allowed port (and a slower one to a forbidden port) while the catalog
//! file is reloaded 120 times, alternating two good catalogs (both allow the
//! port; they differ by a note and a service name) and a bad one, half by
//! SIGHUP and half by `portguard reload --iface`. Proves:
//! - not one allowed datagram is lost and not one forbidden datagram gets
//!   through: no half-written policy is ever visible to the packet path, and
//!   a bad catalog leaves the policy in force;
//! - `portguard_reloads_total{result}` counts exactly the good and the bad,
//!   `portguard_catalog_generation` grows by one per good reload only, every
//!   counter series is monotonic across reloads and the allowed rule's
//!   counter equals the datagrams sent (the counters keep counting);
//! - the swap time (from the daemon's `reload: catalog generation N in force
//!   (DURATION)` lines) and the daemon's RSS under load, printed.

use std::{path::Path, time::Duration};

use testkit::ops::{
    self, ALLOWED_PORT, FORBIDDEN_PORT, Pair, Scrape, TempDir, ok, poll, portguard, text,
};

const RELOADS: usize = 120;
const GOOD: &str = "reload: catalog generation ";
const BAD: &str = "reload rejected";
/// Catalog B renames this rule (all-servers, UDP 1434), so which name counts
/// a probe shows which catalog the packet path uses.
const SQL_A: &str = "SQL Browser";
const SQL_B: &str = "SQL Browser (catalog B)";
const SQL_BROWSER_PORT: u16 = 1434;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    A,
    B,
    Bad,
}

fn kind(i: usize) -> Kind {
    match i % 3 {
        0 => Kind::B,
        1 => Kind::Bad,
        _ => Kind::A,
    }
}

/// Writes the catalog through a rename, so the daemon never reads half a file.
fn put(path: &Path, contents: &str) {
    let tmp = path.with_extension("toml.tmp");
    ok("writing the catalog", std::fs::write(&tmp, contents));
    ok("renaming the catalog", std::fs::rename(&tmp, path));
}

/// The swap times the daemon logged, in milliseconds.
fn swap_times(log: &str) -> Vec<f64> {
    log.lines()
        .filter_map(|l| l.split(GOOD).nth(1))
        .filter_map(|rest| rest.split_once(" in force (")?.1.strip_suffix(')'))
        .filter_map(testkit::debug_duration_ms)
        .collect()
}

/// Every counter series of `before` is still there in `after`, not smaller.
fn assert_monotonic(before: &Scrape, after: &Scrape, at: usize) {
    let after_c = after.counters();
    for (series, v) in before.counters() {
        let now = after_c.get(&series).copied();
        assert!(
            now.is_some_and(|n| n >= v),
            "after reload {at}: {series} went from {v} to {now:?}"
        );
    }
}

#[test]
fn reloads_under_traffic_lose_nothing_and_count_exactly() {
    if !testkit::require_privileges("reload under traffic") {
        return;
    }
    let dir = TempDir::new("reload");
    let good_a = ok(
        "reading catalog/sfb2015.toml",
        std::fs::read_to_string(ops::repo_root().join("catalog/sfb2015.toml")),
    );
    // B: another note and a renamed service (a new rule key, so a new counter
    // slot) on a rule that is not the one the stream uses.
    let good_b = good_a
        .replacen("note = \"", "note = \"(catalog B) ", 1)
        .replacen(
            &format!("service = \"{SQL_A}\""),
            &format!("service = \"{SQL_B}\""),
            1,
        );
    assert_ne!(good_a, good_b, "catalog B does not differ from A");
    let bad_line = good_a.lines().count() + 6;
    let bad = format!(
        "{good_a}\n[[rule]]\nrole = \"front-end\"\nservice = \"broken\"\nprotocol = \"udp\"\nports = \"70000\"\ntransport = \"UDP\"\ntable = \"server\"\nnote = \"\"\n"
    );
    let catalog = dir.path().join("catalog.toml");
    put(&catalog, &good_a);

    let pair = Pair::new("pgrel", 65);
    let iface = pair.server_if.clone();
    let daemon = pair.start(
        dir.path(),
        "daemon",
        &["--catalog", &catalog.to_string_lossy()],
    );
    let allowed = pair.stream(ALLOWED_PORT, 2_000);
    let forbidden = pair.stream(FORBIDDEN_PORT, 200);
    allowed.wait_received_more(200, Duration::from_secs(5));
    let rss_start = daemon.rss_kib();

    let mut before = pair.scrape();
    let (mut want_ok, mut want_err) = (0.0, 0.0);
    let mut in_force = Kind::A;
    let mut probes = 0u64;
    for i in 0..RELOADS {
        let k = kind(i);
        put(
            &catalog,
            match k {
                Kind::A => &good_a,
                Kind::B => &good_b,
                Kind::Bad => &bad,
            },
        );
        if i % 2 == 0 {
            daemon.signal(libc::SIGHUP);
        } else {
            let out = portguard(&["reload", "--iface", &iface]);
            assert!(
                out.status.success(),
                "portguard reload --iface {iface}: {}",
                text(&out.stderr)
            );
        }
        if k == Kind::Bad {
            want_err += 1.0;
        } else {
            want_ok += 1.0;
            in_force = k;
        }
        // One reload at a time: signals sent while one runs would coalesce.
        let done = poll(Duration::from_secs(5), || {
            let log = daemon.log();
            (log.matches(GOOD).count() + log.matches(BAD).count() > i).then_some(())
        });
        if done.is_none() {
            panic!(
                "reload {i} ({k:?}) was not logged within 5 s:\n{}",
                daemon.log()
            );
        }
        if i % 10 == 9 || i == RELOADS - 1 {
            let now = pair.scrape();
            assert_eq!(
                now.value("portguard_reloads_total", &[("result", "ok")]),
                want_ok,
                "after reload {i}: reloads ok"
            );
            assert_eq!(
                now.value("portguard_reloads_total", &[("result", "error")]),
                want_err,
                "after reload {i}: reloads error"
            );
            assert_eq!(
                now.value("portguard_catalog_generation", &[]),
                1.0 + want_ok,
                "after reload {i}: the generation in force"
            );
            assert_monotonic(&before, &now, i);
            // The catalog in force is the one the packet path uses: a
            // datagram to UDP 1434 counts under its SQL Browser service name.
            let (svc, other) = match in_force {
                Kind::B => (SQL_B, SQL_A),
                _ => (SQL_A, SQL_B),
            };
            let count = |s: &Scrape, svc: &str| {
                s.sum(
                    "portguard_packets_total",
                    &[("service", svc), ("proto", "udp")],
                )
            };
            let (svc_before, other_before) = (count(&now, svc), count(&now, other));
            pair.send_udp(&[SQL_BROWSER_PORT], 1);
            probes += 1;
            let seen = poll(Duration::from_secs(2), || {
                let s = pair.scrape();
                (count(&s, svc) == svc_before + 1.0).then_some(s)
            })
            .unwrap_or_else(|| {
                panic!("after reload {i} ({in_force:?} in force): UDP {SQL_BROWSER_PORT} was not counted under {svc:?}")
            });
            assert_eq!(
                count(&seen, other),
                other_before,
                "after reload {i} ({in_force:?} in force): UDP {SQL_BROWSER_PORT} counted under {other:?}"
            );
            before = seen;
        }
    }
    allowed.wait_received_more(400, Duration::from_secs(5));
    let rss_end = daemon.rss_kib();
    let allowed = allowed.finish(Duration::from_secs(2));
    let forbidden = forbidden.finish(Duration::from_millis(200));

    assert_eq!(
        allowed.lost(),
        0,
        "allowed UDP {ALLOWED_PORT} lost during {RELOADS} reloads: {} of {} missing, first {:?}",
        allowed.lost(),
        allowed.sent,
        allowed.missing()
    );
    assert!(
        forbidden.sent > 0 && forbidden.received.is_empty(),
        "forbidden UDP {FORBIDDEN_PORT} got through during reloads: {} of {}",
        forbidden.received.len(),
        forbidden.sent
    );
    let last = pair.scrape();
    assert_monotonic(&before, &last, RELOADS);
    let counted = last.sum(
        "portguard_packets_total",
        &[("proto", "udp"), ("verdict", "pass"), ("role", "!-")],
    );
    assert_eq!(
        counted,
        (allowed.sent + probes) as f64,
        "the allowed rules' counters ({counted}) are not the datagrams sent ({} + {probes} probes): a reload lost or reset counts",
        allowed.sent
    );
    let dropped = last.sum("portguard_drops_total", &[("reason", "port_not_allowed")]);
    assert_eq!(
        dropped, forbidden.sent as f64,
        "port_not_allowed drops ({dropped}) are not the forbidden datagrams sent ({})",
        forbidden.sent
    );
    let log = daemon.log();
    let place = format!("{}:{bad_line}", catalog.display());
    assert!(
        log.contains(&place),
        "the rejected reloads do not name {place}:\n{log}"
    );
    let mut times = swap_times(&log);
    assert_eq!(
        times.len(),
        want_ok as usize,
        "swap times logged for {} of {want_ok} good reloads",
        times.len()
    );
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let p95 = times[times.len() * 95 / 100];
    let max = times[times.len() - 1];
    println!(
        "reload: {RELOADS} reloads ({want_ok} ok, {want_err} rejected) under {} datagrams at 2,000/s, 0 lost; \
         swap time (read+compile+flip) min {:.1} ms, median {median:.1} ms, p95 {p95:.1} ms, max {max:.1} ms; \
         daemon VmRSS {rss_start} KiB before, {rss_end} KiB after",
        allowed.sent, times[0]
    );
    // 120 reloads must not grow the daemon: a leak of a policy per reload
    // (32,768 port entries) would show as tens of MiB.
    assert!(
        rss_end < rss_start + 32 * 1024,
        "VmRSS grew from {rss_start} KiB to {rss_end} KiB over {RELOADS} reloads"
    );
}

#[test]
fn swap_times_are_read_from_the_log() {
    let log = "[x INFO ] reload: catalog generation 7 in force (18.25ms)\n[x ERROR] reload rejected, ...\n";
    assert_eq!(swap_times(log), vec![18.25]);
}
