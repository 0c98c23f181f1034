//! A running daemon whose catalog file turns hostile (issue 10, item 3): the
//! file is replaced by a symlink to /dev/zero, then by a FIFO with no writer,
//! then by a valid catalog padded past the size cap, then by one under the
//! cap with more rules than the counter table holds, each followed by SIGHUP.
//! Proves, for each: the reload is rejected promptly and counted
//! (`portguard_reloads_total{result="error"}`), the log names the file and
//! what it is, the policy in force stays (an allowed UDP stream loses nothing,
//! a forbidden one gets nothing through), the daemon's memory stays bounded
//! (VmHWM), /metrics still answers; then a good catalog reloads, and SIGTERM
//! still exits promptly.

use std::{
    fs,
    path::Path,
    time::{Duration, Instant},
};

use testkit::ops::{ALLOWED_PORT, FORBIDDEN_PORT, Pair, TempDir, ok, poll};

const REJECTED: &str = "reload rejected";
const GOOD: &str = "reload: catalog generation 2 in force";

/// VmHWM (peak resident set) of `pid` in KiB, from /proc/PID/status.
fn peak_rss_kib(pid: i32) -> u64 {
    let status = ok(
        "reading /proc/PID/status",
        fs::read_to_string(format!("/proc/{pid}/status")),
    );
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in {status}"))
}

fn mkfifo(path: &Path) {
    let c = ok(
        "a path without NUL",
        std::ffi::CString::new(path.as_os_str().as_encoded_bytes()),
    );
    // SAFETY: `c` is a valid NUL-terminated path.
    let r = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(
        r,
        0,
        "mkfifo {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

#[test]
fn hostile_catalogs_on_sighup_are_rejected_and_the_policy_stays() {
    if !testkit::require_privileges("hostile catalogs on SIGHUP") {
        return;
    }
    let _alone = crate::ALONE.hold();
    let dir = TempDir::new("hostile-catalog");
    let good = ok(
        "reading catalog/sfb2015.toml",
        fs::read_to_string(testkit::ops::repo_root().join("catalog/sfb2015.toml")),
    );
    let catalog = dir.path().join("catalog.toml");
    ok("writing the catalog", fs::write(&catalog, &good));
    // Valid TOML and a valid catalog, only too large: an unbounded reader accepts it.
    let oversized = format!("{good}\n{}", "# padding\n".repeat(200 * 1024));
    // Under the size cap, but with more rules than the counter table holds:
    // parsed, then refused at the rule that takes the 16,384th slot.
    let mut too_many = format!("{good}\n[[role]]\nid = \"x\"\nlabel = \"X\"\ntable = \"server\"\n");
    for i in 0..8_192 {
        too_many.push_str(&format!(
            "[[rule]]\nrole=\"x\"\nservice=\"s{i}\"\nprotocol=\"both\"\nports={}\ntransport=\"T\"\ntable=\"server\"\nnote=\"\"\n",
            i + 1
        ));
    }

    let pair = Pair::new("pghcat", 83);
    let mut daemon = pair.start(
        dir.path(),
        "daemon",
        &["--catalog", &catalog.to_string_lossy()],
    );
    let pid = daemon.pid();
    let allowed = pair.stream(ALLOWED_PORT, 500);
    let forbidden = pair.stream(FORBIDDEN_PORT, 100);
    allowed.wait_received_more(100, Duration::from_secs(5));
    let hwm_start = peak_rss_kib(pid);

    type Make<'a> = Box<dyn Fn(&Path) + 'a>;
    // (what, what the error says, how to make it, how much the daemon's peak may grow)
    let cases: [(&str, &str, Make<'_>, u64); 4] = [
        (
            "a symlink to /dev/zero",
            "not a regular file: it is a character device",
            Box::new(|p: &Path| {
                ok(
                    "symlink to /dev/zero",
                    std::os::unix::fs::symlink("/dev/zero", p),
                );
            }),
            16 * 1024,
        ),
        (
            "a FIFO without a writer",
            "not a regular file: it is a FIFO",
            Box::new(mkfifo),
            16 * 1024,
        ),
        (
            "a valid catalog over the size cap",
            "bytes a catalog may have",
            Box::new(|p: &Path| ok("writing the oversized catalog", fs::write(p, &oversized))),
            16 * 1024,
        ),
        (
            "a catalog with more rules than counter slots",
            "more than 16383 distinct rules; the counter table is full",
            Box::new(|p: &Path| ok("writing the large catalog", fs::write(p, &too_many))),
            32 * 1024,
        ),
    ];
    for (k, (what, says, make, growth)) in cases.iter().enumerate() {
        ok("removing the catalog", fs::remove_file(&catalog));
        make(&catalog);
        let sent = Instant::now();
        daemon.signal(libc::SIGHUP);
        let rejected = poll(Duration::from_secs(2), || {
            (daemon.log().matches(REJECTED).count() > k).then_some(())
        });
        assert!(
            rejected.is_some(),
            "the reload of {what} was not rejected within 2 s:\n{}",
            daemon.log()
        );
        let took = sent.elapsed();
        // `FILE: error: ...`, or `FILE:LINE:COL: error: ...` for what is in the file.
        let named = format!("{}:", catalog.display());
        assert!(
            daemon
                .log()
                .lines()
                .any(|l| l.contains(&named) && l.contains(": error: ") && l.contains(says)),
            "the rejection of {what} should say `{named}... error: ...{says}`:\n{}",
            daemon.log()
        );
        let scrape = pair.scrape();
        assert_eq!(
            scrape.value("portguard_reloads_total", &[("result", "error")]),
            (k + 1) as f64,
            "after {what}: rejected reloads"
        );
        assert_eq!(
            scrape.value("portguard_reloads_total", &[("result", "ok")]),
            0.0,
            "after {what}: good reloads"
        );
        assert_eq!(
            scrape.value("portguard_catalog_generation", &[]),
            1.0,
            "after {what}: the generation in force"
        );
        // The policy in force still enforces, while and after the file was hostile.
        allowed.wait_received_more(100, Duration::from_secs(5));
        let hwm = peak_rss_kib(pid);
        println!(
            "hostile catalog: {what} rejected in {took:?}; daemon VmHWM {hwm} KiB (was {hwm_start} KiB)"
        );
        assert!(
            hwm < hwm_start + growth,
            "after {what}: the daemon's peak RSS grew from {hwm_start} KiB to {hwm} KiB"
        );
    }

    // A good catalog is taken again: nothing was left stuck.
    ok("removing the catalog", fs::remove_file(&catalog));
    ok("writing the catalog", fs::write(&catalog, &good));
    daemon.signal(libc::SIGHUP);
    daemon.wait_log(GOOD, Duration::from_secs(5));

    let allowed = allowed.finish(Duration::from_secs(2));
    let forbidden = forbidden.finish(Duration::from_millis(200));
    assert_eq!(
        allowed.lost(),
        0,
        "allowed UDP {ALLOWED_PORT} lost while the catalog was hostile: {} of {} missing, first {:?}",
        allowed.lost(),
        allowed.sent,
        allowed.missing()
    );
    assert!(
        forbidden.sent > 0 && forbidden.received.is_empty(),
        "forbidden UDP {FORBIDDEN_PORT} got through: {} of {}",
        forbidden.received.len(),
        forbidden.sent
    );

    let stopped = Instant::now();
    daemon.signal(libc::SIGTERM);
    let status = daemon.wait_exit(Duration::from_secs(5));
    assert!(status.success(), "SIGTERM: {status}\n{}", daemon.log());
    println!("hostile catalog: SIGTERM exit in {:?}", stopped.elapsed());
}
