//! Restart without a gap, crash leftovers and failed starts, on native XDP
//! in a namespace with real traffic:
//! - `kill -9` leaves the program attached and enforcing; a new daemon takes
//!   it over and its counters continue; SIGTERM detaches and removes the pins;
//! - `stats` reads the pins while a daemon runs and after it was killed;
//!   `detach` removes what a killed run left (and refuses while one runs);
//! - a foreign XDP program, an unknown interface, an unknown role or a bad
//!   catalog make `run` fail with the documented exit code and message, and
//!   leave the interface as it was.

use std::time::Duration;

use testkit::ops::{
    self, ALLOWED_PORT, FORBIDDEN_PORT, Pair, TempDir, pin_dir, portguard, portguard_in,
    state_file, text,
};

/// `total: N passed, M dropped, K would drop` from a stats table.
fn stats_totals(out: &str) -> (u64, u64) {
    let line = out
        .lines()
        .find(|l| l.starts_with("total: "))
        .unwrap_or_else(|| panic!("no `total:` line in stats output:\n{out}"));
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(nums.len() >= 2, "unexpected totals line {line:?}");
    (nums[0], nums[1])
}

/// `portguard stats --iface IF`, checked: a table with the allowed rule's and
/// the port_not_allowed rows. Returns (passed, dropped).
fn stats(iface: &str) -> (u64, u64) {
    let out = portguard(&["stats", "--iface", iface]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "portguard stats --iface {iface} failed ({}): {}{stdout}",
        out.status,
        text(&out.stderr)
    );
    for needle in ["ROLE", "SERVICE", "VERDICT", "port_not_allowed", "udp"] {
        assert!(
            stdout.contains(needle),
            "stats output lacks {needle:?}:\n{stdout}"
        );
    }
    stats_totals(&stdout)
}

/// The UDP packets passed by catalog rules, from the metrics endpoint.
fn rule_udp_passes(pair: &Pair) -> f64 {
    pair.scrape().sum(
        "portguard_packets_total",
        &[("proto", "udp"), ("verdict", "pass"), ("role", "!-")],
    )
}

#[test]
fn kill9_keeps_the_interface_protected_and_a_restart_takes_over_with_counters() {
    if !testkit::require_privileges("restart: kill -9 and take over") {
        return;
    }
    let dir = TempDir::new("restart-kill9");
    let pair = Pair::new("pgrst", 61);
    let iface = pair.server_if.clone();
    let mut first = pair.start(dir.path(), "first", &[]);
    assert!(pin_dir(&iface).join("xdp_link").exists(), "no xdp_link pin");
    assert!(state_file(&iface).exists(), "no state file");

    let allowed = pair.stream(ALLOWED_PORT, 1_000);
    let forbidden = pair.stream(FORBIDDEN_PORT, 500);
    allowed.wait_received_more(200, Duration::from_secs(5));
    forbidden.wait_sent_more(100, Duration::from_secs(5));

    let (passed_running, dropped_running) = stats(&iface);
    assert!(
        passed_running >= 200 && dropped_running >= 100,
        "stats while running: {passed_running} passed, {dropped_running} dropped"
    );

    first.kill9();
    // No daemon now: the pinned link keeps the program on the interface.
    assert!(
        pair.xdp_attached(),
        "kill -9 removed the XDP program:\n{}",
        pair.server_link()
    );
    assert!(
        pin_dir(&iface).join("xdp_link").exists(),
        "pins gone after kill -9"
    );
    let forbidden_before = forbidden.sent();
    allowed.wait_received_more(300, Duration::from_secs(5));
    forbidden.wait_sent_more(150, Duration::from_secs(5));
    assert!(
        forbidden.sent() > forbidden_before,
        "no forbidden traffic was sent while no daemon ran"
    );
    assert_eq!(
        forbidden.received(),
        0,
        "forbidden UDP {FORBIDDEN_PORT} arrived while no daemon ran"
    );
    let (passed_dead, dropped_dead) = stats(&iface);
    assert!(
        passed_dead > passed_running && dropped_dead > dropped_running,
        "stats after the kill did not move: {passed_running}/{dropped_running} then {passed_dead}/{dropped_dead}"
    );

    let mut second = pair.start(dir.path(), "second", &[]);
    let log = second.log();
    assert!(
        log.contains(&format!(
            "taking over the XDP program a previous run left on {iface}"
        )),
        "the restarted daemon did not say it took over:\n{log}"
    );
    let (passed_after, _) = stats(&iface);
    assert!(
        passed_after >= passed_dead,
        "counters reset on restart: {passed_dead} before, {passed_after} after"
    );
    allowed.wait_received_more(200, Duration::from_secs(5));

    let allowed = allowed.finish(Duration::from_secs(2));
    let forbidden = forbidden.finish(Duration::from_millis(200));
    assert_eq!(
        allowed.lost(),
        0,
        "allowed UDP {ALLOWED_PORT} lost across kill -9 and restart: {} of {} missing, first {:?}",
        allowed.lost(),
        allowed.sent,
        allowed.missing()
    );
    assert!(
        forbidden.received.is_empty() && forbidden.sent > 0,
        "forbidden UDP {FORBIDDEN_PORT}: {} of {} arrived",
        forbidden.received.len(),
        forbidden.sent
    );
    // Every allowed datagram of both runs and the gap between them is in the
    // one counter: nothing reset, nothing missed.
    let counted = rule_udp_passes(&pair);
    assert_eq!(
        counted, allowed.sent as f64,
        "the restarted daemon's rule counter ({counted}) is not the number of allowed datagrams sent over both runs ({})",
        allowed.sent
    );

    second.signal(libc::SIGTERM);
    let st = second.wait_exit(Duration::from_secs(10));
    assert!(st.success(), "SIGTERM exit: {st}\n{}", second.log());
    assert!(
        !pair.xdp_attached(),
        "XDP still attached after SIGTERM:\n{}",
        pair.server_link()
    );
    assert!(!pin_dir(&iface).exists(), "pins left after SIGTERM");
    assert!(
        !state_file(&iface).exists(),
        "state file left after SIGTERM"
    );
    assert!(
        second.out().contains("total:"),
        "no counter summary on exit: {}",
        second.out()
    );
}

#[test]
fn detach_removes_what_a_killed_run_left_and_refuses_while_one_runs() {
    if !testkit::require_privileges("restart: detach after kill -9") {
        return;
    }
    let dir = TempDir::new("restart-detach");
    let pair = Pair::new("pgdet", 62);
    let iface = pair.server_if.clone();
    let mut daemon = pair.start(dir.path(), "daemon", &[]);

    let out = portguard(&["detach", "--iface", &iface]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "detach while the daemon runs should refuse with 1: {}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("still running"),
        "detach's refusal does not say why: {}",
        text(&out.stderr)
    );
    assert!(pair.xdp_attached(), "a refused detach removed the program");

    daemon.kill9();
    assert!(pair.xdp_attached(), "kill -9 removed the XDP program");
    // Forbidden traffic is still dropped: the probe does not arrive.
    let probe = pair.stream(FORBIDDEN_PORT, 500);
    probe.wait_sent_more(50, Duration::from_secs(5));
    let probe = probe.finish(Duration::from_millis(100));
    assert!(
        probe.received.is_empty(),
        "forbidden UDP arrived after kill -9: {probe:?}"
    );

    let out = portguard(&["detach", "--iface", &iface]);
    assert!(
        out.status.success(),
        "detach failed ({}): {}",
        out.status,
        text(&out.stderr)
    );
    assert!(
        !pair.xdp_attached(),
        "XDP still attached after detach:\n{}",
        pair.server_link()
    );
    assert!(!pin_dir(&iface).exists(), "pins left after detach");
    assert!(!state_file(&iface).exists(), "state file left after detach");
    // And the interface really is open now.
    let probe = pair.stream(FORBIDDEN_PORT, 500);
    probe.wait_received_more(20, Duration::from_secs(5));
    drop(probe);

    let out = portguard(&["stats", "--iface", &iface]);
    assert!(
        !out.status.success(),
        "stats on a detached interface succeeded: {}",
        text(&out.stdout)
    );
    let out = portguard(&["detach", "--iface", &iface]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a second detach (nothing pinned) should exit 2: {}",
        text(&out.stderr)
    );
}

/// What must hold after a failed start: the interface as it was, and no
/// pins or state for it.
fn assert_untouched(pair: &Pair, prog_before: Option<u32>, case: &str) {
    assert_eq!(
        pair.xdp_prog_id(),
        prog_before,
        "{case}: the interface's XDP program changed:\n{}",
        pair.server_link()
    );
    assert!(
        !pin_dir(&pair.server_if).exists(),
        "{case}: pins left under {}",
        pin_dir(&pair.server_if).display()
    );
    assert!(
        !state_file(&pair.server_if).exists(),
        "{case}: state file left"
    );
}

#[test]
fn failed_starts_exit_with_the_documented_code_and_leave_the_interface_untouched() {
    if !testkit::require_privileges("restart: failed starts") {
        return;
    }
    let dir = TempDir::new("restart-bad");
    let pair = Pair::new("pgbad", 63);
    let iface = pair.server_if.clone();
    let within = Duration::from_secs(15);
    let base = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "run",
            "--iface",
            &iface,
            "--role",
            ops::ROLES,
            "--xdp-mode",
            "native",
            "--metrics-addr",
            ops::METRICS,
        ]
        .iter()
        .map(|s| (*s).to_string())
        .collect();
        v.extend(extra.iter().map(|s| (*s).to_string()));
        v
    };
    let run = |args: &[String]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        portguard_in(&pair.server, &args, within)
    };

    // An interface that does not exist.
    let out = run(&[
        "run".into(),
        "--iface".into(),
        "nosuch0".into(),
        "--role".into(),
        ops::ROLES.into(),
    ]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "--iface nosuch0: {err}");
    assert!(
        err.contains("--iface"),
        "the error does not name --iface: {err}"
    );
    assert!(!pin_dir("nosuch0").exists(), "pins made for nosuch0");
    assert_untouched(&pair, None, "--iface nosuch0");

    // An unknown role.
    let mut args = base(&[]);
    args[4] = "front-end,no-such-role".into();
    let out = run(&args);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "unknown role: {err}");
    assert!(
        err.contains("--role") && err.contains("no-such-role"),
        "the error does not name --role and the role: {err}"
    );
    assert_untouched(&pair, None, "unknown role");

    // A catalog with an invalid port range on a known line.
    let good = std::fs::read_to_string(ops::repo_root().join("catalog/sfb2015.toml"))
        .expect("reading catalog/sfb2015.toml");
    let line = good.lines().count() + 6;
    let bad = format!(
        "{good}\n[[rule]]\nrole = \"front-end\"\nservice = \"broken\"\nprotocol = \"udp\"\nports = \"70000\"\ntransport = \"UDP\"\ntable = \"server\"\nnote = \"\"\n"
    );
    let bad_path = dir.path().join("bad.toml");
    std::fs::write(&bad_path, bad).expect("writing bad.toml");
    let out = run(&base(&["--catalog", &bad_path.to_string_lossy()]));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "bad catalog: {err}");
    let place = format!("{}:{line}", bad_path.display());
    assert!(
        err.contains(&place),
        "the error does not name {place}: {err}"
    );
    assert_untouched(&pair, None, "bad catalog");

    // A foreign XDP program already on the interface.
    let obj = "/usr/lib/x86_64-linux-gnu/bpf/xdpdump_xdp.o";
    if !testkit::require_file(
        "restart: failed starts, foreign XDP case",
        std::path::Path::new(obj),
        "xdp-tools",
    ) {
        return;
    }
    pair.server
        .ip(&[
            "link", "set", "dev", &iface, "xdp", "obj", obj, "sec", "xdp",
        ])
        .expect("attaching a foreign XDP program");
    let foreign = pair.xdp_prog_id();
    assert!(foreign.is_some(), "the foreign program is not attached");
    let out = run(&base(&[]));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "foreign XDP program: {err}");
    assert!(
        err.contains("already has an XDP program"),
        "the error does not say the interface is busy: {err}"
    );
    assert_untouched(&pair, foreign, "foreign XDP program");
    let _ = pair
        .server
        .ip(&["link", "set", "dev", &iface, "xdp", "off"]);
}

#[test]
fn monitor_to_enforce_by_a_keep_attached_restart_keeps_the_would_drop_history() {
    if !testkit::require_privileges("restart: monitor to enforce") {
        return;
    }
    let dir = TempDir::new("restart-mode");
    let pair = Pair::new("pgmod", 69);
    let iface = pair.server_if.clone();
    let mut monitor = pair.start(
        dir.path(),
        "monitor",
        &["--mode", "monitor", "--keep-attached"],
    );
    // Monitor: the forbidden datagrams arrive and are counted as would_drop.
    let probe = pair.stream(FORBIDDEN_PORT, 500);
    probe.wait_received_more(50, Duration::from_secs(5));
    let probe = probe.finish(Duration::from_secs(1));
    assert_eq!(
        probe.lost(),
        0,
        "monitor mode dropped: {:?}",
        probe.missing()
    );
    let would = pair.scrape().sum(
        "portguard_packets_total",
        &[("verdict", "would_drop"), ("service", "port_not_allowed")],
    );
    assert_eq!(would, probe.sent as f64, "would_drop count in monitor mode");

    monitor.signal(libc::SIGTERM);
    assert!(monitor.wait_exit(Duration::from_secs(10)).success());
    assert!(
        pair.xdp_attached(),
        "--keep-attached: the program left on stop"
    );

    let _enforce = pair.start(dir.path(), "enforce", &["--mode", "enforce"]);
    let probe = pair.stream(FORBIDDEN_PORT, 500);
    probe.wait_sent_more(50, Duration::from_secs(5));
    let probe = probe.finish(Duration::from_millis(100));
    assert!(
        probe.received.is_empty(),
        "enforce after the restart let {} of {} forbidden datagrams through",
        probe.received.len(),
        probe.sent
    );
    let s = pair.scrape();
    assert_eq!(
        s.sum(
            "portguard_packets_total",
            &[("verdict", "would_drop"), ("service", "port_not_allowed")],
        ),
        would,
        "the would_drop history changed across the restart"
    );
    assert_eq!(
        s.sum(
            "portguard_packets_total",
            &[("verdict", "drop"), ("service", "port_not_allowed")],
        ),
        probe.sent as f64,
        "drops counted after the switch to enforce"
    );
    let (_, dropped) = stats(&iface);
    assert!(
        dropped >= probe.sent,
        "stats: {dropped} dropped < {} sent",
        probe.sent
    );
}

/// Pins a fresh per-CPU array of `entries` 16-byte values at `path`: what a
/// release with another `COUNTERS` size would have left.
fn pin_foreign_layout_map(path: &std::path::Path, entries: u32) {
    use std::os::unix::ffi::OsStrExt as _;
    #[repr(C)]
    #[derive(Default)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
        pad: [u32; 27],
    }
    #[repr(C)]
    struct ObjPin {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    const BPF_MAP_CREATE: i64 = 0;
    const BPF_OBJ_PIN: i64 = 6;
    const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
    let create = MapCreate {
        map_type: BPF_MAP_TYPE_PERCPU_ARRAY,
        key_size: 4,
        value_size: 16,
        max_entries: entries,
        ..MapCreate::default()
    };
    // SAFETY: a valid bpf_attr prefix, its size passed along.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            &raw const create,
            size_of::<MapCreate>(),
        )
    };
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let pin = ObjPin {
        pathname: c.as_ptr() as u64,
        bpf_fd: fd as u32,
        file_flags: 0,
    };
    // SAFETY: as above; `c` outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_PIN,
            &raw const pin,
            size_of::<ObjPin>(),
        )
    };
    assert!(
        r == 0,
        "BPF_OBJ_PIN {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    // SAFETY: our own descriptor; the pin keeps the map.
    unsafe { libc::close(fd as i32) };
}

/// An upgrade whose maps differ in size from the pinned ones (a release that
/// changed the layout): the new daemon replaces the maps instead of failing
/// in the verifier, and still takes the pinned link over, so forbidden
/// traffic never gets through.
#[test]
fn a_foreign_map_layout_is_replaced_and_the_link_still_taken_over() {
    if !testkit::require_privileges("restart: foreign map layout") {
        return;
    }
    let dir = TempDir::new("restart-layout");
    let pair = Pair::new("pglay", 64);
    let iface = pair.server_if.clone();
    let mut first = pair.start(dir.path(), "first", &[]);
    let allowed = pair.stream(ALLOWED_PORT, 1_000);
    let forbidden = pair.stream(FORBIDDEN_PORT, 500);
    allowed.wait_received_more(100, Duration::from_secs(5));
    first.kill9();

    let counters = pin_dir(&iface).join("COUNTERS");
    std::fs::remove_file(&counters)
        .unwrap_or_else(|e| panic!("removing {}: {e}", counters.display()));
    pin_foreign_layout_map(&counters, 100);
    assert!(pair.xdp_attached(), "the pinned link keeps the program");

    let second = pair.start(dir.path(), "second", &[]);
    let log = second.log();
    for needle in [
        "maps pinned by a portguard with another layout",
        &format!("taking over the XDP program a previous run left on {iface}"),
    ] {
        assert!(log.contains(needle), "the log lacks {needle:?}:\n{log}");
    }
    let before = allowed.received();
    allowed.wait_received_more(100, Duration::from_secs(5));
    forbidden.wait_sent_more(100, Duration::from_secs(5));
    assert!(allowed.received() > before, "allowed traffic stopped");
    assert_eq!(
        forbidden.received(),
        0,
        "forbidden UDP {FORBIDDEN_PORT} arrived across the layout change"
    );
    assert!(
        rule_udp_passes(&pair) > 0.0,
        "the new daemon counts in its new maps"
    );
}
