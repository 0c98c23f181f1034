//! Packet events end to end: `portguard run` on the server end of a veth
//! pair, crafted frames from the client, and `portguard events` reading the
//! daemon's root-only control socket.
//!
//! - JSON events name the right addresses, ports and VLAN tags for IPv4,
//!   IPv6 and tagged frames;
//! - `--pcap` writes a file tshark reads with the same ports; a follow into
//!   a pcap stopped with Ctrl-C (SIGINT to its process group) leaves every
//!   event it received in the file, and the file catches up within a second
//!   while it follows;
//! - a non-root user is refused by the control socket: by the file system as
//!   the daemon makes /run/portguard on a machine where it never ran (a
//!   private, empty /run), and with the way opened by the daemon itself
//!   (SO_PEERCRED);
//! - under a flood the per-CPU budget holds: events never exceed what it
//!   allows, and every drop is either an event or counted as suppressed;
//! - in the XDP program itself, an empty budget stays empty within a tick
//!   and fills again with time.

use std::{
    collections::BTreeSet,
    os::unix::fs::PermissionsExt as _,
    process::Command,
    time::{Duration, Instant},
};

use portguard_testsupport::{
    frames::{ETH_P_8021AD, ETH_P_8021Q, Packet},
    kernel::{Kernel, XDP_DROP, pin_this_thread_to_cpu0},
    spec::lab_spec,
};
use serde_json::Value;
use testkit::{
    mountns::FreshRun,
    ops::{Pair, TempDir, ok, ok_any, poll, portguard, text},
};

fn privileged(test: &str) -> bool {
    testkit::require_privileges(test)
}

/// `tool` on PATH, or a loud failure under CI (a silent skip otherwise).
fn tool(name: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found && std::env::var_os("CI").is_some() {
        panic!("{name} is missing (apt-get install {name}); CI must run this test");
    }
    if !found {
        eprintln!("skipping: {name} is not installed");
    }
    found
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
                .unwrap_or_else(|e| panic!("{e:#}")),
            client_mac: testkit::netns::mac_of(&pair.client, &pair.client_if)
                .unwrap_or_else(|e| panic!("{e:#}")),
            server_mac: testkit::netns::mac_of(&pair.server, &pair.server_if)
                .unwrap_or_else(|e| panic!("{e:#}")),
        }
    }

    fn send(&self, p: Packet) {
        let mut p = p;
        p.src_mac = self.client_mac;
        p.dst_mac = self.server_mac;
        self.sender.send(&p.build()).expect("sending a raw frame");
    }
}

/// `portguard events --iface IF --format json ARGS`, as parsed JSON lines.
fn events_json(iface: &str, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["events", "--iface", iface, "--format", "json"];
    all.extend_from_slice(args);
    let out = portguard(&all);
    assert!(
        out.status.success(),
        "portguard {all:?} failed ({}): {}",
        out.status,
        text(&out.stderr)
    );
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

fn find<'a>(events: &'a [Value], proto: &str, dport: u64) -> Option<&'a Value> {
    events
        .iter()
        .find(|e| e["proto"] == proto && e["dport"] == dport)
}

#[test]
fn events_show_addresses_ports_and_vlans_as_json_and_pcap() {
    if !privileged("events: JSON and pcap") {
        return;
    }
    let dir = TempDir::new("ev-json");
    let pair = Pair::new("evjs", 71);
    let _d = pair.start(dir.path(), "portguard", &[]);
    let f = Frames::new(&pair);
    let (c, s) = (pair.client_ip.to_string(), pair.server_ip.to_string());
    f.send(
        Packet::udp(&c, &s, 40_161, 161)
            .payload(10)
            .vlan(ETH_P_8021Q, 10),
    );
    f.send(
        Packet::tcp(&c, &s, 40_389, 3389)
            .vlan(ETH_P_8021AD, 100)
            .vlan(ETH_P_8021Q, 20),
    );
    f.send(Packet::udp("2001:db8::1", "2001:db8::2", 40_479, 3479).payload(10));
    f.send(Packet::tcp("2001:db8::1", "2001:db8::2", 40_443, 8443));

    let events = poll(Duration::from_secs(5), || {
        let ev = events_json(&pair.server_if, &["--verdict", "drop"]);
        (ev.len() >= 4).then_some(ev)
    })
    .unwrap_or_else(|| {
        panic!(
            "expected 4 drop events, got {:?}",
            events_json(&pair.server_if, &[])
        )
    });
    let keys = [
        "time", "iface", "verdict", "reason", "proto", "src", "dst", "sport", "dport", "vlan",
        "len",
    ];
    for e in &events {
        let obj = e
            .as_object()
            .unwrap_or_else(|| panic!("not an object: {e}"));
        let got: BTreeSet<&str> = obj.keys().map(String::as_str).collect();
        let want: BTreeSet<&str> = keys.iter().copied().collect();
        assert_eq!(got, want, "fields of {e}");
        assert_eq!(e["iface"], pair.server_if.as_str(), "{e}");
        assert_eq!(e["verdict"], "drop", "{e}");
        assert_eq!(e["reason"], "port_not_allowed", "{e}");
        let time = e["time"].as_str().unwrap_or_default();
        assert!(
            time.parse::<jiff::Timestamp>().is_ok(),
            "time {time:?} is not RFC 3339"
        );
    }
    let snmp = find(&events, "udp", 161).unwrap_or_else(|| panic!("no UDP 161 in {events:?}"));
    assert_eq!(snmp["src"], c.as_str(), "IPv4 shown as IPv4: {snmp}");
    assert_eq!(snmp["dst"], s.as_str(), "{snmp}");
    assert_eq!(snmp["sport"], 40_161, "{snmp}");
    assert_eq!(snmp["vlan"], serde_json::json!([10]), "{snmp}");
    let rdp = find(&events, "tcp", 3389).unwrap_or_else(|| panic!("no TCP 3389 in {events:?}"));
    assert_eq!(
        rdp["vlan"],
        serde_json::json!([100, 20]),
        "QinQ tags: {rdp}"
    );
    assert_eq!(rdp["sport"], 40_389, "{rdp}");
    let stun = find(&events, "udp", 3479).unwrap_or_else(|| panic!("no UDP 3479 in {events:?}"));
    assert_eq!(stun["src"], "2001:db8::1", "{stun}");
    assert_eq!(stun["dst"], "2001:db8::2", "{stun}");
    assert_eq!(stun["vlan"], serde_json::json!([]), "{stun}");
    let https = find(&events, "tcp", 8443).unwrap_or_else(|| panic!("no TCP 8443 in {events:?}"));
    assert_eq!(https["src"], "2001:db8::1", "{https}");

    // The same events as a pcap that tshark reads.
    if tool("tshark") {
        let pcap = dir.path().join("drops.pcap");
        let pcap_s = pcap.to_string_lossy().into_owned();
        let out = portguard(&[
            "events",
            "--iface",
            &pair.server_if,
            "--verdict",
            "drop",
            "--pcap",
            &pcap_s,
        ]);
        assert!(out.status.success(), "events --pcap: {}", text(&out.stderr));
        let ports: BTreeSet<String> = tshark_fields(&pcap, &["udp.dstport", "tcp.dstport"])
            .expect("reading the pcap")
            .into_iter()
            .collect();
        for p in ["161", "3389", "3479", "8443"] {
            assert!(
                ports.contains(p),
                "tshark read ports {ports:?} from the pcap, not {p}"
            );
        }
    }
}

#[test]
fn control_socket_refuses_a_non_root_user() {
    if !privileged("events: non-root refused") {
        return;
    }
    // A machine where portguard never ran, whatever this one's /run holds:
    // the daemon and the clients get a /run of their own, empty, so
    // /run/portguard is what the daemon makes of it.
    let fresh = ok_any("a mount namespace with an empty /run", FreshRun::new());
    let run_dir = fresh.run().join("portguard");
    assert!(
        !run_dir.exists(),
        "the fresh /run already holds portguard/: the test proves nothing"
    );
    let wrapper = fresh.wrapper();
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let dir = TempDir::new("ev-nobody");
    let pair = Pair::new("evnr", 72);
    let _d = pair.start_wrapped(&wrapper, dir.path(), "portguard", &[]);
    let mode = |p: &std::path::Path| ok("stat", std::fs::metadata(p)).permissions().mode() & 0o7777;
    assert_eq!(
        mode(&run_dir),
        0o700,
        "the daemon should create /run/portguard with mode 0700"
    );
    // A copy of the binary that `nobody` may execute wherever the build is.
    let bin = dir.path().join("portguard");
    ok(
        "copying portguard",
        std::fs::copy(testkit::portguard_bin(), &bin),
    );
    ok(
        "chmod the scratch dir",
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)),
    );
    let as_nobody = || {
        let started = Instant::now();
        let out = ok(
            "nsenter runuser",
            Command::new(wrapper[0])
                .args(&wrapper[1..])
                .args(["runuser", "-u", "nobody", "--"])
                .arg(&bin)
                .args(["events", "--iface", &pair.server_if, "--count", "1"])
                .output(),
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "refused only after {:?}",
            started.elapsed()
        );
        assert!(
            out.stdout.is_empty(),
            "a refused client got output: {}",
            text(&out.stdout)
        );
        out
    };

    // As the daemon leaves it, the file system refuses: /run/portguard is
    // root's, 0700.
    let out = as_nobody();
    let err = text(&out.stderr);
    assert!(
        !out.status.success() && err.contains("root") && err.contains("permission denied"),
        "nobody should be refused by the file system, saying why ({}): {err}",
        out.status
    );

    // With the way opened (in this namespace's /run only), nobody reaches
    // the socket, and the daemon's own check (SO_PEERCRED) still refuses.
    let socket = run_dir.join(format!("{}.sock", pair.server_if));
    ok(
        "chmod 0711 /run/portguard",
        std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(0o711)),
    );
    ok(
        "chmod 0666 the socket",
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)),
    );
    let out = as_nobody();
    let err = text(&out.stderr);
    assert!(
        !out.status.success() && err.contains("serves root only"),
        "the daemon did not refuse uid nobody itself ({}): {err}",
        out.status
    );
}

/// `tshark -r PCAP -T fields -e F…`: the values, or why tshark failed.
fn tshark_fields(pcap: &std::path::Path, fields: &[&str]) -> Result<Vec<String>, String> {
    let mut cmd = Command::new("tshark");
    cmd.arg("-r").arg(pcap).args(["-T", "fields"]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = ok("running tshark", cmd.output());
    if !out.status.success() {
        return Err(format!("tshark {}: {}", out.status, text(&out.stderr)));
    }
    Ok(text(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect())
}

/// `events --follow --pcap` ended as a person ends tcpdump: Ctrl-C, that is
/// SIGINT to the foreground job's process group. Every event received is in
/// the pcap, which tshark reads, and on stdout (a pipe); while it follows,
/// the file is flushed within a second.
#[test]
fn a_follow_into_a_pcap_stopped_with_ctrl_c_keeps_every_event() {
    use std::io::BufRead as _;
    use std::os::unix::process::CommandExt as _;
    use std::sync::{Arc, Mutex};
    if !privileged("events: --follow --pcap and Ctrl-C") || !tool("tshark") {
        return;
    }
    const BATCH: u16 = 20;
    let dir = TempDir::new("ev-sigint");
    let pair = Pair::new("evsi", 77);
    let _d = pair.start(dir.path(), "portguard", &[]);
    let f = Frames::new(&pair);
    let (c, s) = (pair.client_ip.to_string(), pair.server_ip.to_string());
    let pcap = dir.path().join("drops.pcap");
    let mut follower = ok(
        "starting events --follow",
        Command::new(testkit::portguard_bin())
            .args(["events", "--iface", &pair.server_if, "--follow"])
            .args(["--verdict", "drop", "--format", "json", "--pcap"])
            .arg(&pcap)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            // A job of its own, as a shell starts it: Ctrl-C signals the group.
            .process_group(0)
            .spawn(),
    );
    let pgid = follower.id() as i32;
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = follower.stdout.take().expect("no stdout pipe");
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let lines = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        })
    };
    let mut follower = Reap(follower);
    // Each event is told apart by its source port.
    let send = |first: u16| -> BTreeSet<String> {
        (first..first + BATCH)
            .map(|sport| {
                f.send(Packet::udp(&c, &s, sport, 161).payload(10));
                sport.to_string()
            })
            .collect()
    };
    let sports = |json: &[String]| -> BTreeSet<String> {
        json.iter()
            .map(|l| {
                let v: Value =
                    serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}"));
                v["sport"].to_string()
            })
            .collect()
    };
    let printed = || lines.lock().unwrap_or_else(|e| e.into_inner()).clone();

    // While it follows, the file catches up within a second (or two).
    let first = send(41_000);
    let flushed = poll(Duration::from_secs(3), || {
        let got: BTreeSet<String> = tshark_fields(&pcap, &["udp.srcport"])
            .ok()?
            .into_iter()
            .collect();
        first.is_subset(&got).then_some(())
    });
    assert!(
        flushed.is_some(),
        "after 3 s of following the pcap lacks some of {first:?}: {:?}",
        tshark_fields(&pcap, &["udp.srcport"])
    );

    // The second batch is received (printed, so written to the pcap's
    // buffer), then Ctrl-C at once, within the second between flushes.
    let second = send(42_000);
    let all: BTreeSet<String> = first.union(&second).cloned().collect();
    let received = poll(Duration::from_secs(5), || {
        all.is_subset(&sports(&printed())).then_some(())
    });
    assert!(
        received.is_some(),
        "the follower did not print all {} events: {:?}",
        all.len(),
        sports(&printed())
    );
    // SAFETY: signalling the process group of our own, unreaped child.
    let r = unsafe { libc::killpg(pgid, libc::SIGINT) };
    assert_eq!(r, 0, "killpg({pgid}, SIGINT) failed");
    let status = poll(Duration::from_secs(5), || {
        ok("try_wait", follower.0.try_wait())
    })
    .expect("events --follow did not end within 5 s of SIGINT");
    let _ = reader.join();
    let mut stderr = String::new();
    if let Some(mut e) = follower.0.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
    }
    assert!(
        status.success(),
        "events --follow should exit 0 on SIGINT, as tcpdump does: {status}: {stderr}"
    );

    let printed = printed();
    let in_pcap =
        tshark_fields(&pcap, &["udp.srcport"]).expect("the pcap after SIGINT is not readable");
    assert_eq!(
        in_pcap.len(),
        printed.len(),
        "the pcap holds {} packets, stdout {} events: every event received belongs in both",
        in_pcap.len(),
        printed.len()
    );
    let in_pcap: BTreeSet<String> = in_pcap.into_iter().collect();
    let missing: Vec<&String> = all.difference(&in_pcap).collect();
    assert!(
        missing.is_empty(),
        "events sent and received but missing from the pcap after SIGINT: {missing:?}"
    );
}

#[test]
fn the_budget_holds_under_a_flood() {
    if !privileged("events: budget under a flood") {
        return;
    }
    const RATE: u64 = 50;
    const FLOOD: u64 = 3_000;
    let dir = TempDir::new("ev-flood");
    let pair = Pair::new("evfl", 73);
    let _d = pair.start(dir.path(), "portguard", &["--events-rate", "50"]);
    let f = Frames::new(&pair);
    let (c, s) = (pair.client_ip.to_string(), pair.server_ip.to_string());
    let drops = |p: &Pair| {
        p.scrape()
            .sum("portguard_drops_total", &[("reason", "port_not_allowed")])
    };
    let base = drops(&pair);
    let started = Instant::now();
    for i in 0..FLOOD {
        f.send(Packet::udp(&c, &s, 30_000 + (i % 1000) as u16, 161));
    }
    let elapsed = started.elapsed();
    let flooded = poll(Duration::from_secs(5), || {
        (drops(&pair) - base >= FLOOD as f64).then_some(())
    });
    assert!(
        flooded.is_some(),
        "the flood was not counted: {} of {FLOOD} drops",
        drops(&pair) - base
    );
    // The suppressed count is read every 500 ms.
    std::thread::sleep(Duration::from_millis(1_200));
    let events = events_json(&pair.server_if, &["--verdict", "drop"]);
    let emitted = events.len() as u64;
    let suppressed = pair.scrape().value(
        "portguard_events_suppressed_total",
        &[("iface", &pair.server_if)],
    );
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    // One second of burst per CPU, then RATE per second per CPU.
    let allowed = RATE * cpus * (1 + elapsed.as_secs() + 1);
    assert!(
        emitted <= allowed,
        "{emitted} events in {elapsed:?} exceed the budget ({allowed} on {cpus} CPUs)"
    );
    assert!(emitted > 0, "no events at all under the flood");
    // Counters start at zero (the pair removed any pins): every drop since
    // start, of any reason, is an event or suppressed.
    let all_drops = pair.scrape().sum("portguard_drops_total", &[]) as u64;
    assert!(
        all_drops >= FLOOD,
        "{all_drops} drops for a flood of {FLOOD}"
    );
    assert_eq!(
        emitted + suppressed as u64,
        all_drops,
        "every dropped packet is an event ({emitted}) or suppressed ({suppressed})"
    );
}

#[test]
fn suggest_output_checks_and_once_loaded_lets_the_traffic_pass() {
    if !privileged("events: suggest") {
        return;
    }
    let dir = TempDir::new("ev-suggest");
    let catalog = dir.path().join("catalog.toml");
    ok(
        "writing the catalog",
        std::fs::write(&catalog, portguard::catalog::Catalog::embedded_text()),
    );
    let catalog_s = catalog.to_string_lossy().into_owned();
    let pair = Pair::new("evsg", 74);
    let d = pair.start(dir.path(), "portguard", &["--catalog", &catalog_s]);
    let f = Frames::new(&pair);
    let (c, s) = (pair.client_ip.to_string(), pair.server_ip.to_string());
    let send_all = || {
        f.send(Packet::udp(&c, &s, 40_161, 161).payload(10));
        f.send(Packet::tcp(&c, &s, 40_389, 3389));
    };
    send_all();
    poll(Duration::from_secs(5), || {
        (events_json(&pair.server_if, &["--verdict", "drop"]).len() >= 2).then_some(())
    })
    .expect("the two drops never showed up as events");

    // One client here: one source is evidence enough.
    let out = portguard(&["suggest", "--iface", &pair.server_if, "--min-sources", "1"]);
    assert!(
        out.status.success(),
        "suggest failed: {}",
        text(&out.stderr)
    );
    let fragment = text(&out.stdout);
    for want in [
        "# UDP 161: 1 packet(s)",
        "# TCP 3389: 1 packet(s)",
        "[[rule]]",
    ] {
        assert!(
            fragment.contains(want),
            "no {want:?} in the fragment:\n{fragment}"
        );
    }
    let mut text_all = portguard::catalog::Catalog::embedded_text().to_string();
    text_all.push('\n');
    text_all.push_str(&fragment);
    ok(
        "appending the fragment",
        std::fs::write(&catalog, &text_all),
    );
    let check = portguard(&["catalog", "check", &catalog_s]);
    assert!(
        check.status.success(),
        "the catalog with the fragment does not check: {}\n{fragment}",
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
    send_all();
    let moved = poll(Duration::from_secs(5), || {
        (passed("suggested: UDP 161") >= 1.0 && passed("suggested: TCP 3389") >= 1.0).then_some(())
    });
    assert!(
        moved.is_some(),
        "after the reload the traffic did not pass under the suggested rules:\n{}",
        pair.scrape().text
    );
}

#[test]
fn top_shows_the_dropped_port_in_80x24_and_quits_on_q() {
    if !privileged("events: top in tmux") || !tool("tmux") {
        return;
    }
    let dir = TempDir::new("ev-top");
    let pair = Pair::new("evtp", 75);
    let _d = pair.start(dir.path(), "portguard", &["--mode", "monitor"]);
    let f = Frames::new(&pair);
    let (c, s) = (pair.client_ip.to_string(), pair.server_ip.to_string());
    for _ in 0..5 {
        f.send(Packet::udp(&c, &s, 40_161, 3479).payload(10));
    }
    poll(Duration::from_secs(5), || {
        (!events_json(&pair.server_if, &["--verdict", "would_drop"]).is_empty()).then_some(())
    })
    .expect("no would_drop event for UDP 3479");

    let session = format!("pgtop{}", std::process::id());
    let bin = testkit::portguard_bin();
    let cmd = format!(
        "{} top --iface {} --interval-ms 300",
        bin.display(),
        pair.server_if
    );
    let tmux = |args: &[&str]| ok("running tmux", Command::new("tmux").args(args).output());
    let started = tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "80",
        "-y",
        "24",
        &cmd,
    ]);
    assert!(
        started.status.success(),
        "tmux new-session: {}",
        text(&started.stderr)
    );
    struct Kill(String);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = Command::new("tmux")
                .args(["kill-session", "-t", &self.0])
                .output();
        }
    }
    let _kill = Kill(session.clone());
    let shown = poll(Duration::from_secs(10), || {
        let out = tmux(&["capture-pane", "-p", "-t", &session]);
        let s = text(&out.stdout);
        (s.contains("udp/3479") && s.contains("would_drop")).then_some(())
    });
    assert!(
        shown.is_some(),
        "top never showed udp/3479:\n{}",
        text(&tmux(&["capture-pane", "-p", "-t", &session]).stdout)
    );
    // Traffic while it runs shows up as a rate per reason.
    let rated = poll(Duration::from_secs(10), || {
        for _ in 0..10 {
            f.send(Packet::udp(&c, &s, 40_161, 3479).payload(10));
        }
        std::thread::sleep(Duration::from_millis(100));
        let out = tmux(&["capture-pane", "-p", "-t", &session]);
        let s = text(&out.stdout);
        s.lines()
            .any(|l| l.contains("port_not_allowed") && l.contains("would_drop"))
            .then_some(s)
    });
    let screen = rated.unwrap_or_else(|| {
        panic!(
            "top never showed a port_not_allowed would_drop rate:\n{}",
            text(&tmux(&["capture-pane", "-p", "-t", &session]).stdout)
        )
    });
    eprintln!("top at 80x24:\n{screen}");
    assert!(
        screen.lines().all(|l| l.chars().count() <= 80),
        "a line wider than 80 columns:\n{screen}"
    );
    let _ = tmux(&["send-keys", "-t", &session, "q"]);
    let gone = poll(Duration::from_secs(5), || {
        (!tmux(&["has-session", "-t", &session]).status.success()).then_some(())
    });
    assert!(gone.is_some(), "top did not quit on q:\n{screen}");
}

#[test]
fn a_follow_client_that_stops_reading_never_blocks_the_daemon() {
    use std::io::{Read as _, Write as _};
    use std::os::unix::net::UnixStream;
    if !privileged("events: stalled follow client") {
        return;
    }
    const FLOOD: u64 = 20_000;
    let dir = TempDir::new("ev-stall");
    let pair = Pair::new("evst", 76);
    let _d = pair.start(dir.path(), "portguard", &["--events-rate", "1000000"]);
    let socket = format!("/run/portguard/{}.sock", pair.server_if);
    let mut stalled = ok(
        "connecting to the control socket",
        UnixStream::connect(&socket),
    );
    ok(
        "sending a follow request",
        stalled.write_all(b"{\"cmd\":\"events\",\"count\":0,\"verdict\":null,\"follow\":true}\n"),
    );
    // Never read from `stalled` while the flood runs.
    let f = Frames::new(&pair);
    let (c, s) = (pair.client_ip.to_string(), pair.server_ip.to_string());
    for i in 0..FLOOD {
        f.send(Packet::udp(&c, &s, 30_000 + (i % 1000) as u16, 161));
    }
    // The daemon keeps answering: metrics and a second client, promptly.
    let started = Instant::now();
    let seen = poll(Duration::from_secs(10), || {
        let n = events_json(&pair.server_if, &["--verdict", "drop", "--count", "4096"]).len();
        (n >= 4_000).then_some(n)
    });
    assert!(
        seen.is_some(),
        "the daemon stopped taking events while a client did not read"
    );
    let scrape_started = Instant::now();
    let drops = pair
        .scrape()
        .sum("portguard_drops_total", &[("reason", "port_not_allowed")]);
    assert!(
        scrape_started.elapsed() < Duration::from_secs(2),
        "/metrics took {:?} with a stalled client",
        scrape_started.elapsed()
    );
    assert!(
        drops >= FLOOD as f64,
        "only {drops} drops counted of {FLOOD}"
    );
    eprintln!(
        "daemon answered within {:?} of the flood",
        started.elapsed()
    );

    // The stalled client was cut off: reading now reaches the end of the
    // stream (after what was buffered), not an endless follow.
    ok(
        "read timeout",
        stalled.set_read_timeout(Some(Duration::from_secs(20))),
    );
    let mut all = Vec::new();
    let r = stalled.read_to_end(&mut all);
    assert!(
        r.is_ok(),
        "the stalled client was not disconnected (read: {r:?}, {} bytes)",
        all.len()
    );
    let lines = all.iter().filter(|b| **b == b'\n').count() as u64;
    assert!(
        lines < FLOOD,
        "the stalled client got all {lines} events: nothing was dropped, the test proves nothing"
    );
}

/// The per-CPU budget in the XDP program (`BPF_PROG_TEST_RUN`, the thread on
/// CPU 0): one second's credit at start, then none until time passes, then
/// credit for the time that passed. Suppressed events skip the clock while
/// jiffies stands still; this is what shows that credit still comes in.
#[test]
fn an_empty_budget_stays_empty_and_fills_again_with_time() {
    pin_this_thread_to_cpu0();
    let Some(mut k) = Kernel::new("events: the budget fills again", &lab_spec()) else {
        return;
    };
    // 10 events/s: each costs 100 ms of credit, and the burst is 10.
    const RATE: u64 = 10;
    k.classifier
        .set_events(RATE as u32, false)
        .expect("turning events on");
    let budget = k.classifier.take_event_budget().expect("the budget map");
    let cpu0 = |what: &str| {
        let b = budget
            .get(&0, 0)
            .unwrap_or_else(|e| panic!("{what}: reading EVENT_BUDGET: {e}"))[0];
        (b.emitted, b.suppressed)
    };
    let dropped = Packet::udp("198.18.0.1", "198.18.0.2", 40_000, 161).build();
    let mut run = |n: u64| {
        for _ in 0..n {
            assert_eq!(k.run_raw(&dropped).0, XDP_DROP, "UDP 161 is dropped");
        }
    };

    run(50);
    assert_eq!(
        cpu0("after 50 drops"),
        (RATE, 50 - RATE),
        "(emitted, suppressed): one second's burst, then nothing"
    );
    let emptied = Instant::now();
    std::thread::sleep(Duration::from_millis(350));
    run(10);
    let waited_ms = emptied.elapsed().as_millis() as u64;
    let (emitted, suppressed) = cpu0("after the wait");
    let new = emitted - RATE;
    assert!(
        (2..=waited_ms / 100 + 1).contains(&new),
        "{new} events after {waited_ms} ms at one per 100 ms (suppressed {suppressed})"
    );
    assert_eq!(
        emitted + suppressed,
        60,
        "every drop is an event or suppressed"
    );
}
