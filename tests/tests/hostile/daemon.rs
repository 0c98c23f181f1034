//! portguard against a hostile but careful user (issue 10), as root and as an
//! unprivileged user made for the test (`pg-hostile`), in network
//! namespaces, with bounded time and memory:
//! - a second `run` (also `--clean-start`, also from another namespace with
//!   an interface of the same name) is refused while the first lives, and
//!   the first still enforces;
//! - a deleted and re-created interface is enforced again (the attached gauge
//!   goes 0 then 1), and a `--keep-attached` link to a deleted interface does
//!   not block later starts;
//! - `/metrics` stays prompt, with bounded descriptors and memory, while
//!   thousands of idle connections, byte-a-second clients and oversized heads
//!   come at it; HEAD, 404, 405 with `Allow`, 400 and 431 are answered;
//! - a pin directory owned by another user, or writable by others, is refused;
//! - SIGINT with stdout a closed pipe still detaches;
//! - a malformed frame from the wire reaches the daemon's log as a line that
//!   names its reason (the kernel logs numbers only);
//! - `reload` never signals a stale pid, and says "needs root" to non-root;
//! - a path-like `--iface` is refused by every command, and `--iface lo`
//!   without `--allow-loopback`, native XDP on lo, 1,025 `--profile`
//!   prefixes and a `--bpffs` that does not exist (nothing created or mounted);
//! - a state write that fails on a full disk leaves the previous state file
//!   and no temporary one.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddrV4, TcpStream},
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use testkit::ops::{
    ALLOWED_PORT, FORBIDDEN_PORT, METRICS, Pair, TempDir, ok, ok_any, pin_dir, poll, portguard,
    portguard_in, portguard_in_wrapped, state_file, text,
};
use testkit::{
    netns::{NetNs, in_netns, spawn_in},
    ops,
};

/// The unprivileged user the hostile cases run as, created once if missing.
fn hostile_user() -> (u32, u32) {
    static USER: OnceLock<(u32, u32)> = OnceLock::new();
    *USER.get_or_init(|| {
        let id = |flag: &str| {
            Command::new("id")
                .args([flag, "pg-hostile"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| text(&o.stdout).trim().parse::<u32>().ok())
        };
        if id("-u").is_none() {
            let out = ok(
                "useradd",
                Command::new("useradd")
                    .args(["-r", "-M", "-s", "/usr/sbin/nologin", "pg-hostile"])
                    .output(),
            );
            assert!(
                out.status.success() || id("-u").is_some(),
                "useradd pg-hostile failed: {}",
                text(&out.stderr)
            );
        }
        match (id("-u"), id("-g")) {
            (Some(u), Some(g)) => (u, g),
            other => panic!("no uid/gid for pg-hostile: {other:?}"),
        }
    })
}

/// `setpriv` arguments that run the wrapped program as pg-hostile.
fn as_hostile() -> Vec<String> {
    let (uid, gid) = hostile_user();
    vec![
        "setpriv".into(),
        format!("--reuid={uid}"),
        format!("--regid={gid}"),
        "--clear-groups".into(),
        "--".into(),
    ]
}

fn metrics_addr() -> SocketAddrV4 {
    ok("METRICS parses", METRICS.parse())
}

/// One raw request to the metrics endpoint inside the server namespace; the
/// whole answer (the server closes after one request).
fn raw_request(pair: &Pair, request: &[u8]) -> String {
    let request = request.to_vec();
    ok_any(
        "setns into the server namespace",
        in_netns(&pair.server, move || {
            let mut s = ok("connect", TcpStream::connect(metrics_addr()));
            ok(
                "read timeout",
                s.set_read_timeout(Some(Duration::from_secs(5))),
            );
            // The server may answer (431) and close before the whole request
            // is written: a failed write is not the outcome under test.
            let _ = s.write_all(&request);
            let mut raw = Vec::new();
            let _ = s.read_to_end(&mut raw);
            String::from_utf8_lossy(&raw).into_owned()
        }),
    )
}

/// Descriptors the process has open.
fn fd_count(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn drops(pair: &Pair) -> f64 {
    pair.scrape().sum(
        "portguard_packets_total",
        &[("proto", "udp"), ("verdict", "drop")],
    )
}

fn attached_gauge(pair: &Pair) -> f64 {
    pair.scrape()
        .sum("portguard_xdp_attached", &[("iface", &pair.server_if)])
}

/// Forbidden UDP sent now is dropped (none arrives) and counted.
fn assert_forbidden_dropped(pair: &Pair, what: &str) {
    let before = drops(pair);
    let forbidden = pair.stream(FORBIDDEN_PORT, 400);
    forbidden.wait_sent_more(150, Duration::from_secs(5));
    let d = forbidden.finish(Duration::from_millis(200));
    assert!(
        d.received.is_empty(),
        "{what}: {} of {} forbidden datagrams (UDP {FORBIDDEN_PORT}) arrived",
        d.received.len(),
        d.sent
    );
    let counted = poll(Duration::from_secs(2), || {
        let now = drops(pair);
        (now - before >= d.sent as f64).then_some(now)
    });
    assert!(
        counted.is_some(),
        "{what}: {} forbidden datagrams sent, drop counter went {before} -> {}",
        d.sent,
        drops(pair)
    );
}

#[test]
fn a_second_run_is_refused_and_the_first_keeps_enforcing() {
    if !testkit::require_privileges("hostile: second run on a live interface") {
        return;
    }
    let dir = TempDir::new("hostile-second");
    let pair = Pair::new("pghsec", 171);
    let iface = pair.server_if.clone();
    let first = pair.start(dir.path(), "first", &[]);
    let pid = first.pid().to_string();
    let prog = pair.xdp_prog_id();

    let second_args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "run",
            "--iface",
            iface.as_str(),
            "--role",
            "client",
            "--metrics-addr",
            "127.0.0.1:9478",
        ]
        .iter()
        .map(|s| (*s).to_string())
        .collect();
        a.extend(extra.iter().map(|s| (*s).to_string()));
        a
    };
    for extra in [&[][..], &["--clean-start"][..]] {
        let args = second_args(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let started = Instant::now();
        let out = portguard_in(&pair.server, &args, Duration::from_secs(10));
        let err = text(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "second run {extra:?} should fail with 1 while pid {pid} lives: {}\n{err}",
            out.status
        );
        assert!(
            err.contains("still running on") && err.contains(&pid),
            "second run {extra:?}: the refusal should name the live pid {pid}: {err}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "refused only after {:?}",
            started.elapsed()
        );
        assert!(
            pin_dir(&iface).join("xdp_link").exists() && state_file(&iface).exists(),
            "second run {extra:?} removed the first one's pins or state"
        );
        assert_eq!(
            pair.xdp_prog_id(),
            prog,
            "second run {extra:?} replaced the program"
        );
    }

    // An interface of the same name in another namespace that shares the
    // bpffs and /run collides safely: refused, nothing taken over.
    let other = ok_any("other namespace", NetNs::new("pghsec-o"));
    let peer = format!("{iface}p");
    ok_any(
        "same-named interface",
        other.ip(&["link", "add", &iface, "type", "veth", "peer", "name", &peer]),
    );
    ok_any("interface up", other.ip(&["link", "set", &iface, "up"]));
    let args = second_args(&["--xdp-mode", "generic"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = portguard_in(&other, &args, Duration::from_secs(10));
    assert_eq!(
        out.status.code(),
        Some(1),
        "a run on a same-named interface in another namespace should be refused: {}",
        text(&out.stderr)
    );
    assert!(
        !ok_any("ip link", other.ip(&["link", "show", "dev", &iface])).contains("xdp"),
        "the refused run attached something in the other namespace"
    );

    let scrape = pair.scrape();
    assert_eq!(
        scrape.value("portguard_catalog_generation", &[]),
        1.0,
        "the first instance's generation changed"
    );
    assert_forbidden_dropped(&pair, "after the refused second runs");
}

#[test]
fn a_recreated_interface_is_enforced_again_with_counters_kept() {
    if !testkit::require_privileges("hostile: interface deleted and re-created") {
        return;
    }
    let dir = TempDir::new("hostile-recreate");
    let pair = Pair::new("pghrec", 172);
    let daemon = pair.start(dir.path(), "daemon", &[]);
    assert_forbidden_dropped(&pair, "before the interface goes");
    let drops_before = drops(&pair);
    assert_eq!(attached_gauge(&pair), 1.0, "not attached at start");

    ok_any(
        "deleting the server interface",
        pair.server.ip(&["link", "del", &pair.server_if]),
    );
    let zero = poll(Duration::from_secs(3), || {
        (attached_gauge(&pair) == 0.0).then_some(())
    });
    assert!(
        zero.is_some(),
        "portguard_xdp_attached stayed {} after {} was deleted:\n{}",
        attached_gauge(&pair),
        pair.server_if,
        daemon.log()
    );
    assert!(
        daemon.log().contains("went away"),
        "the loss was not logged:\n{}",
        daemon.log()
    );

    pair.link();
    let back = poll(Duration::from_secs(3), || {
        (attached_gauge(&pair) == 1.0 && pair.xdp_attached()).then_some(())
    });
    assert!(
        back.is_some(),
        "not attached again within 3 s of the interface coming back (gauge {}):\n{}\n{}",
        attached_gauge(&pair),
        pair.server_link(),
        daemon.log()
    );
    assert!(
        drops(&pair) >= drops_before,
        "counters were not kept: {drops_before} -> {}",
        drops(&pair)
    );
    let allowed = pair.stream(ALLOWED_PORT, 400);
    allowed.wait_received_more(50, Duration::from_secs(5));
    drop(allowed);
    assert_forbidden_dropped(&pair, "on the re-created interface");
}

#[test]
fn a_keep_attached_link_to_a_deleted_interface_does_not_block_later_starts() {
    if !testkit::require_privileges("hostile: stale pinned link") {
        return;
    }
    let dir = TempDir::new("hostile-stale-link");
    let pair = Pair::new("pghkal", 173);
    let mut first = pair.start(dir.path(), "first", &["--keep-attached"]);
    first.signal(libc::SIGTERM);
    let st = first.wait_exit(Duration::from_secs(10));
    assert!(st.success(), "first run exited {st}:\n{}", first.log());
    assert!(
        pin_dir(&pair.server_if).join("xdp_link").exists(),
        "--keep-attached left no xdp_link pin"
    );
    ok_any(
        "deleting the server interface",
        pair.server.ip(&["link", "del", &pair.server_if]),
    );
    pair.link();
    // wait_ready panics if the start fails (as bpf_link_update on the
    // defunct link used to make it).
    let _second = pair.start(dir.path(), "second", &[]);
    assert_forbidden_dropped(&pair, "after a start over a defunct pinned link");
}

#[test]
fn metrics_stay_prompt_and_bounded_under_idle_slow_and_oversized_clients() {
    if !testkit::require_privileges("hostile: metrics under hostile clients") {
        return;
    }
    let _alone = crate::ALONE.hold();
    let dir = TempDir::new("hostile-metrics");
    let pair = Pair::new("pghmet", 174);
    let daemon = pair.start(dir.path(), "daemon", &[]);
    let pid = daemon.pid();
    // A first scrape so the baseline includes the responder's own buffers.
    pair.scrape();
    let rss_before = daemon.rss_kib();

    // HTTP semantics a scraper and a careful client rely on.
    let head = raw_request(&pair, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        head.starts_with("HTTP/1.1 200") && head.ends_with("\r\n\r\n"),
        "HEAD /metrics: 200 without a body expected, got {head:?}"
    );
    let post = raw_request(&pair, b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n").to_lowercase();
    assert!(
        post.starts_with("http/1.1 405") && post.contains("allow: get, head"),
        "POST /metrics: 405 with Allow expected, got {post:?}"
    );
    let other = raw_request(&pair, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(other.starts_with("HTTP/1.1 404"), "GET /nope: {other:?}");
    let garbage = raw_request(&pair, b"\x01\x02garbage garbage\r\n\r\n");
    assert!(
        garbage.starts_with("HTTP/1.1 400"),
        "garbage: 400 expected, got {garbage:?}"
    );
    let mut big = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 64 * 1024));
    big.extend(b"\r\n\r\n");
    let started = Instant::now();
    let oversized = raw_request(&pair, &big);
    assert!(
        oversized.starts_with("HTTP/1.1 431") && started.elapsed() < Duration::from_secs(3),
        "a 64 KiB request head: 431 expected at once, got {:?} after {:?}",
        oversized.get(..40),
        started.elapsed()
    );

    // 5,000 idle connections, opened and held by pg-hostile: the child
    // connects before it execs `sleep`, which keeps the sockets open.
    let (uid, gid) = hostile_user();
    let target = metrics_addr();
    let mut holder = Command::new("sleep");
    holder.arg("60").stdin(Stdio::null());
    ok_any("setns pre_exec", spawn_in(&pair.server, &mut holder));
    // SAFETY: only async-signal-safe libc calls between fork and exec.
    unsafe {
        holder.pre_exec(move || {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            let mut sa: libc::sockaddr_in = std::mem::zeroed();
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_port = target.port().to_be();
            sa.sin_addr.s_addr = u32::from(*target.ip()).to_be();
            for _ in 0..5_000 {
                let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                if fd < 0
                    || libc::connect(
                        fd,
                        (&raw const sa).cast(),
                        size_of::<libc::sockaddr_in>() as libc::socklen_t,
                    ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut holder = ok("spawning the idle-connection holder", holder.spawn());
    let held = fd_count(i32::try_from(holder.id()).unwrap_or(0));
    assert!(held >= 5_000, "the holder has only {held} descriptors");

    // Byte-a-second clients (slowloris), as root from the test itself.
    let slow: Vec<TcpStream> = ok_any(
        "setns into the server namespace",
        in_netns(&pair.server, || {
            (0..50)
                .map(|_| {
                    let mut s = ok("slow connect", TcpStream::connect(target));
                    ok("slow write", s.write_all(b"GET /metrics HTTP/1.1\r\n"));
                    s
                })
                .collect()
        }),
    );

    // While all of that is held, a well-behaved scraper is answered within
    // 1 s every time, and the daemon's descriptors stay bounded.
    let mut max_fds = 0;
    let mut slowest = Duration::ZERO;
    for i in 0..5 {
        let started = Instant::now();
        let text = ok_any(
            "setns into the server namespace",
            in_netns(&pair.server, || ops::http_get(METRICS, "/metrics")),
        );
        let took = started.elapsed();
        let body = text.unwrap_or_else(|e| panic!("scrape {i} under load failed: {e}"));
        assert!(
            body.contains("portguard_xdp_attached"),
            "scrape {i}: no metrics in {body:?}"
        );
        assert!(
            took < Duration::from_secs(1),
            "scrape {i} took {took:?} with 5,000 idle connections held"
        );
        slowest = slowest.max(took);
        max_fds = max_fds.max(fd_count(pid));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        max_fds < 600,
        "the daemon held {max_fds} descriptors with 5,000 idle connections against it"
    );

    // The slow clients are cut off: after 5 s of a byte a second, each has
    // seen the server close (or answer) instead of waiting forever.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut slow = slow;
    while Instant::now() < deadline {
        for s in &mut slow {
            let _ = s.write_all(b"X");
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    for (i, s) in slow.iter_mut().enumerate() {
        ok(
            "read timeout",
            s.set_read_timeout(Some(Duration::from_millis(200))),
        );
        let mut buf = [0u8; 256];
        let closed = match s.read(&mut buf) {
            Ok(_) => true,
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        };
        assert!(
            closed,
            "slow client {i} still held open after 5 s of a byte a second"
        );
    }

    let _ = holder.kill();
    let _ = holder.wait();
    drop(slow);
    let rss_after = daemon.rss_kib();
    eprintln!(
        "measured: slowest scrape {slowest:?} with 5,000 idle + 50 slow connections held; daemon descriptors at most {max_fds}; VmRSS {rss_before} KiB before, {rss_after} KiB after"
    );
    assert!(
        rss_after < rss_before + 32 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    // And it still answers once the hostile clients are gone.
    assert!(
        pair.scrape().sum("portguard_xdp_attached", &[]) == 1.0,
        "not attached after the hostile clients"
    );
}

#[test]
fn a_foreign_or_writable_pin_directory_is_refused() {
    if !testkit::require_privileges("hostile: foreign pin directory") {
        return;
    }
    let pair = Pair::new("pghpin", 175);
    let dir = pin_dir(&pair.server_if);
    let (uid, gid) = hostile_user();
    // The shared parent is portguard's (root, 0700 or 0755); only the
    // interface's own directory is planted. On a machine where no bpffs is
    // mounted yet, the daemon would mount one before it looks: so does the
    // test, before it plants anything.
    let parent = dir.parent().map(Path::to_path_buf).unwrap_or_default();
    let bpffs = parent.parent().unwrap_or(Path::new("/sys/fs/bpf"));
    ok(
        "mounting a bpffs where none is",
        portguard::loader::ensure_bpffs(bpffs),
    );
    if !parent.exists() {
        ok("mkdir parent", fs::create_dir(&parent));
        ok(
            "chmod parent",
            fs::set_permissions(&parent, fs::Permissions::from_mode(0o700)),
        );
    }
    type Owner = Option<(u32, u32)>;
    let cases: [(&str, Owner, u32); 2] = [
        ("owned by uid", Some((uid, gid)), 0o755),
        ("lets group or others write", None, 0o777),
    ];
    for (needle, owner, mode) in cases {
        let _ = fs::remove_dir(&dir);
        ok("planting the pin dir", fs::create_dir(&dir));
        if let Some((u, g)) = owner {
            ok("chown", std::os::unix::fs::chown(&dir, Some(u), Some(g)));
        }
        ok(
            "chmod",
            fs::set_permissions(&dir, fs::Permissions::from_mode(mode)),
        );
        let args = pair.run_args(&[]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = portguard_in(&pair.server, &args, Duration::from_secs(10));
        let err = text(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "a pin dir {needle} should be refused with 1: {}\n{err}",
            out.status
        );
        assert!(
            err.contains(needle) && err.contains(&dir.display().to_string()),
            "the refusal should name {} and say {needle:?}: {err}",
            dir.display()
        );
        assert!(!pair.xdp_attached(), "attached despite the refusal");
        assert!(
            fs::read_dir(&dir).map(|d| d.count()).ok() == Some(0),
            "something was pinned into the refused directory"
        );
    }
    let _ = fs::remove_dir(&dir);
}

#[test]
fn sigint_with_a_closed_stdout_still_detaches() {
    if !testkit::require_privileges("hostile: SIGINT with a closed stdout") {
        return;
    }
    let dir = TempDir::new("hostile-epipe");
    let pair = Pair::new("pghpip", 176);
    let stderr_path = dir.path().join("daemon.err");
    let mut cmd = Command::new(testkit::portguard_bin());
    cmd.args(pair.run_args(&[]))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(ok("stderr file", fs::File::create(&stderr_path)));
    ok_any("setns pre_exec", spawn_in(&pair.server, &mut cmd));
    let mut child = ok("spawning portguard", cmd.spawn());
    // The reading end goes: every write to stdout now fails with EPIPE.
    drop(child.stdout.take());
    let log = || fs::read_to_string(&stderr_path).unwrap_or_default();
    let up = poll(Duration::from_secs(20), || {
        (log().contains("metrics on http://") && pair.xdp_attached()).then_some(())
    });
    if up.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("portguard did not come up:\n{}", log());
    }
    // SAFETY: signalling our own, unreaped child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = poll(Duration::from_secs(10), || ok("try_wait", child.try_wait()));
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("portguard did not exit within 10 s of SIGINT:\n{}", log());
    };
    assert!(
        !pair.xdp_attached(),
        "an XDP program is still on {} after SIGINT with a closed stdout ({status}):\n{}\n{}",
        pair.server_if,
        pair.server_link(),
        log()
    );
    assert!(
        !pin_dir(&pair.server_if).exists() && !state_file(&pair.server_if).exists(),
        "pins or state left behind ({status}):\n{}",
        log()
    );
    assert!(
        status.success() && !log().contains("panicked"),
        "portguard should exit 0 without a panic, got {status}:\n{}",
        log()
    );
}

#[test]
fn a_malformed_frame_is_logged_by_its_reason_name() {
    if !testkit::require_privileges("hostile: anomaly log") {
        return;
    }
    let dir = TempDir::new("hostile-anomaly");
    let pair = Pair::new("pghano", 177);
    let args = pair.run_args(&[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut daemon = ops::Daemon::spawn(&pair.server, &args, dir.path(), "anomaly");
    daemon.wait_ready(&pair);
    // An IPv4 ethertype followed by ten bytes: no room for an IP header.
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x08, 0x00]);
    frame.extend_from_slice(&[0x45; 10]);
    let sender = ok_any(
        "a raw socket on the client",
        testkit::sockets::RawSender::new(&pair.client, &pair.client_if),
    );
    ok("sending the malformed frame", sender.send(&frame));
    daemon.wait_log(
        "portguard: 1 other packets dropped as malformed on one CPU",
        Duration::from_secs(10),
    );
    assert!(
        !daemon.log().contains("anomaly counter="),
        "a raw anomaly line reached the log:\n{}",
        daemon.log()
    );
    daemon.stop();
}

#[test]
fn reload_never_signals_a_stale_pid_and_tells_non_root_it_needs_root() {
    if !testkit::require_privileges("hostile: stale pid") {
        return;
    }
    // Not an interface anyone runs on: the state file is all there is.
    let iface = "pghstale0";
    let state = PathBuf::from("/run/portguard").join(format!("{iface}.json"));
    if !Path::new("/run/portguard").exists() {
        ok(
            "mkdir /run/portguard",
            fs::create_dir(state.parent().unwrap_or(Path::new("/run"))),
        );
        ok(
            "chmod /run/portguard",
            fs::set_permissions("/run/portguard", fs::Permissions::from_mode(0o700)),
        );
    }
    let mut bystander = ok(
        "spawning sleep",
        Command::new("sleep").arg("30").stdin(Stdio::null()).spawn(),
    );
    ok(
        "writing a state file naming the bystander",
        fs::write(
            &state,
            format!("{{\"pid\": {}, \"iface\": \"{iface}\"}}", bystander.id()),
        ),
    );
    let out = portguard(&["reload", "--iface", iface]);
    let root_err = text(&out.stderr);
    let wrapper = as_hostile();
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let scratch = ok_any("namespace", NetNs::new("pghstl"));
    let nonroot = portguard_in_wrapped(
        &scratch,
        &wrapper,
        &["reload", "--iface", iface],
        Duration::from_secs(10),
    );
    std::thread::sleep(Duration::from_millis(200));
    let alive = ok("try_wait", bystander.try_wait()).is_none();
    let _ = bystander.kill();
    let _ = bystander.wait();
    let _ = fs::remove_file(&state);
    assert!(alive, "reload signalled the stale pid (the bystander died)");
    assert_eq!(
        out.status.code(),
        Some(1),
        "reload with a stale pid should fail with 1: {} {root_err}",
        out.status
    );
    assert!(
        root_err.contains("no portguard is running"),
        "reload should say the instance is gone: {root_err}"
    );
    let err = text(&nonroot.stderr);
    assert!(
        !nonroot.status.success() && err.contains("needs root"),
        "non-root reload should say it needs root: {} {err}",
        nonroot.status
    );
}

#[test]
fn path_like_interfaces_and_loopback_are_refused() {
    if !testkit::require_privileges("hostile: --iface validation") {
        return;
    }
    // A decoy a traversal through the pin path (/sys/fs/bpf/portguard/IF)
    // would reach and delete.
    let decoy_dir = TempDir::new("decoy");
    let decoy = decoy_dir.path().to_path_buf();
    for f in ["CONFIG", "xdp_link"] {
        ok("decoy file", fs::write(decoy.join(f), "decoy"));
    }
    let traversal = format!("../../../..{}", decoy.display());
    let traversal = traversal.as_str();
    let ns = ok_any("namespace", NetNs::new("pghifn"));
    for bad in [traversal, "..", "a/b", "eth 0", "abcdefghijklmnopq"] {
        for args in [
            vec!["run", "--iface", bad, "--role", "client"],
            vec!["stats", "--iface", bad],
            vec!["detach", "--iface", bad],
            vec!["reload", "--iface", bad],
        ] {
            let out = portguard_in(&ns, &args, Duration::from_secs(10));
            let err = text(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{args:?} should be refused with 2: {}\n{err}",
                out.status
            );
            assert!(
                err.contains("--iface"),
                "{args:?}: the error should name --iface: {err}"
            );
        }
    }
    for f in ["CONFIG", "xdp_link"] {
        assert!(
            decoy.join(f).exists(),
            "a command deleted {} through a path-like --iface",
            decoy.join(f).display()
        );
    }

    let out = portguard_in(
        &ns,
        &[
            "run",
            "--iface",
            "lo",
            "--role",
            "client",
            "--xdp-mode",
            "generic",
        ],
        Duration::from_secs(10),
    );
    let err = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "--iface lo should be refused with 2: {}\n{err}",
        out.status
    );
    assert!(
        err.contains("--allow-loopback"),
        "the refusal should say how to force it: {err}"
    );
    let out = portguard_in(
        &ns,
        &[
            "run",
            "--iface",
            "lo",
            "--allow-loopback",
            "--role",
            "client",
            "--xdp-mode",
            "native",
        ],
        Duration::from_secs(10),
    );
    assert!(
        out.status.code() == Some(2) && text(&out.stderr).contains("--xdp-mode generic"),
        "native XDP on lo should be refused with 2 and a way out: {} {}",
        out.status,
        text(&out.stderr)
    );
    // More prefixes than the profile table holds: a clear usage error
    // naming the flag, not a map insert failing halfway.
    let mut args: Vec<String> = ["run", "--iface", "pgnone0", "--role", "client"]
        .iter()
        .map(|s| (*s).to_string())
        .collect();
    for i in 0..1_025u32 {
        args.push("--profile".into());
        args.push(format!("198.18.{}.{}/32=client", 128 + i / 256, i % 256));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = portguard_in(&ns, &args, Duration::from_secs(10));
    assert!(
        out.status.code() == Some(2) && text(&out.stderr).contains("--profile"),
        "1,025 --profile prefixes should be refused with 2 naming --profile: {} {}",
        out.status,
        text(&out.stderr)
    );
    // A --bpffs that does not exist is refused; nothing is created or mounted.
    let missing = format!("/tmp/portguard-nobpffs-{}/bpf", std::process::id());
    let out = portguard_in(
        &ns,
        &[
            "run",
            "--iface",
            "lo",
            "--allow-loopback",
            "--role",
            "client",
            "--xdp-mode",
            "generic",
            "--bpffs",
            &missing,
        ],
        Duration::from_secs(10),
    );
    assert!(
        out.status.code() == Some(2) && text(&out.stderr).contains("--bpffs"),
        "a missing --bpffs should be refused with 2 naming the flag: {} {}",
        out.status,
        text(&out.stderr)
    );
    let parent = Path::new(&missing)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mounted = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let left = parent.exists() || mounted.contains(&missing);
    let _ = fs::remove_dir_all(&parent);
    assert!(!left, "{missing} was created or mounted by a refused run");
    assert!(
        !ok_any("ip link", ns.ip(&["link", "show", "dev", "lo"])).contains("xdp"),
        "something was attached to lo"
    );
}

/// A tmpfs mounted for one test, unmounted on drop.
struct TinyTmpfs(PathBuf);

impl Drop for TinyTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).output();
        let _ = fs::remove_dir(&self.0);
    }
}

#[test]
fn a_full_disk_leaves_the_previous_state_file_and_no_temporary_one() {
    if !testkit::require_privileges("hostile: state file on a full disk") {
        return;
    }
    use portguard::{policy::RuleKey, state};
    let mount = PathBuf::from(format!("/tmp/portguard-fulldisk-{}", std::process::id()));
    ok("mount point", fs::create_dir_all(&mount));
    let out = ok(
        "mount",
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs"])
            .arg(&mount)
            .output(),
    );
    assert!(
        out.status.success(),
        "mounting a tmpfs: {}",
        text(&out.stderr)
    );
    let tmpfs = TinyTmpfs(mount);
    let path = state::path(&tmpfs.0, "pgfull0");
    let small = state::State {
        pid: 1,
        iface: "pgfull0".into(),
        ..state::State::default()
    };
    ok("storing the first state", state::store(&path, &small));
    // Fill the filesystem, then try to store a state larger than what is left.
    let mut filler = ok("filler", fs::File::create(tmpfs.0.join("filler")));
    let chunk = [0u8; 4096];
    while filler.write_all(&chunk).is_ok() {}
    drop(filler);
    let mut big = state::State {
        pid: 2,
        iface: "pgfull0".into(),
        ..state::State::default()
    };
    for i in 0..2_000u16 {
        big.slots.insert(
            i,
            RuleKey {
                role: "front-end".into(),
                service: format!("service number {i} with a long enough name"),
                proto: "udp".into(),
                port_start: i,
                port_end: i,
                direction: String::new(),
            },
        );
    }
    let stored = state::store(&path, &big);
    assert!(stored.is_err(), "storing on a full disk reported success");
    let leftovers: Vec<String> = fs::read_dir(&tmpfs.0)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".tmp"))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        leftovers.is_empty(),
        "a failed store left {leftovers:?} behind"
    );
    let back = state::load(&path).expect("the previous state is unreadable");
    assert_eq!(
        back.pid, 1,
        "the previous state was replaced by a failed store"
    );
}
