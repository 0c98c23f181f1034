//! packaging/portguard@.service: the unit is valid and hardened
//! (`systemd-analyze verify` and `security --offline`), it says what
//! docs/operations.md relies on, and portguard really runs with only the
//! capabilities the unit grants: attach, enforce, pin, stop with
//! --keep-attached leaving the program enforcing, a restart taking it over,
//! and a final detach, all under that bounding set with no-new-privileges.
//! The package's prerm, run as dpkg runs it on removal, takes portguard off
//! every interface, whatever `--bpffs` each instance was run with.

use std::{collections::BTreeMap, process::Command, time::Duration};

use testkit::ops::{
    self, ALLOWED_PORT, FORBIDDEN_PORT, Pair, TempDir, ok, pin_dir, state_file, text,
};

const UNIT: &str = "packaging/portguard@.service";

/// `Key=value` lines of the [Service] and [Unit] sections (later wins).
fn directives() -> BTreeMap<String, String> {
    let unit = ok(
        "reading the unit",
        std::fs::read_to_string(ops::repo_root().join(UNIT)),
    );
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// The unit's capabilities as names (`CAP_BPF` …).
fn unit_caps() -> Vec<String> {
    let d = directives();
    let caps: Vec<String> = d
        .get("CapabilityBoundingSet")
        .unwrap_or_else(|| panic!("{UNIT} has no CapabilityBoundingSet"))
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let ambient: Vec<String> = d
        .get("AmbientCapabilities")
        .map(|a| a.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    assert_eq!(
        caps, ambient,
        "AmbientCapabilities and CapabilityBoundingSet differ"
    );
    caps
}

#[test]
fn the_unit_says_what_the_operator_guide_relies_on() {
    let d = directives();
    let get = |k: &str| {
        d.get(k)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("{UNIT} has no {k}="))
    };
    let exec = get("ExecStart");
    for needle in ["/usr/sbin/portguard run", "--iface %i", "--keep-attached"] {
        assert!(exec.contains(needle), "ExecStart lacks {needle}: {exec}");
    }
    assert_eq!(get("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(get("NoNewPrivileges"), "yes");
    assert_eq!(get("ProtectSystem"), "strict");
    assert_eq!(get("RuntimeDirectory"), "portguard");
    // The state file must outlive a stop, like the pinned program does.
    assert_eq!(get("RuntimeDirectoryPreserve"), "yes");
    let rw: Vec<&str> = get("ReadWritePaths").split_whitespace().collect();
    for p in ["/sys/fs/bpf", "/run/portguard"] {
        assert!(rw.contains(&p), "ReadWritePaths lacks {p}: {rw:?}");
    }
    assert_eq!(
        unit_caps(),
        ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"],
        "the unit's capabilities"
    );
}

#[test]
fn the_unit_verifies_and_is_hardened() {
    if !testkit::require_program(
        "the_unit_verifies_and_is_hardened",
        "systemd-analyze",
        "systemd",
    ) {
        return;
    }
    // verify insists that ExecStart's binary exists: point it at the build.
    let dir = TempDir::new("unit");
    let unit = ok(
        "reading the unit",
        std::fs::read_to_string(ops::repo_root().join(UNIT)),
    );
    let bin = testkit::portguard_bin();
    let path = dir.path().join("portguard@test0.service");
    ok(
        "writing the unit",
        std::fs::write(
            &path,
            unit.replace("/usr/sbin/portguard", &bin.to_string_lossy()),
        ),
    );
    let out = ok(
        "systemd-analyze verify",
        Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&path)
            .output(),
    );
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify {UNIT}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let out = ok(
        "systemd-analyze security",
        Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(&path)
            .output(),
    );
    let report = text(&out.stdout);
    let level: f64 = report
        .lines()
        .find_map(|l| l.split("Overall exposure level for ").nth(1))
        .and_then(|rest| rest.split(": ").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{report}{}", text(&out.stderr)));
    // systemd rates 0-10; "OK" is below 5. A root daemon that loads BPF and
    // attaches to an interface cannot reach "SAFE".
    assert!(
        level < 5.0,
        "systemd-analyze security rates {UNIT} at {level}:\n{report}"
    );
}

/// CapEff of a process, from /proc/PID/status.
fn cap_eff(pid: i32) -> u64 {
    let status = ok(
        "reading /proc/PID/status",
        std::fs::read_to_string(format!("/proc/{pid}/status")),
    );
    testkit::parse_cap_eff(&status).unwrap_or_else(|| panic!("no CapEff in {status}"))
}

fn cap_bit(name: &str) -> u32 {
    match name {
        "CAP_NET_ADMIN" => 12,
        "CAP_SYS_ADMIN" => 21,
        "CAP_PERFMON" => 38,
        "CAP_BPF" => 39,
        other => panic!("unknown capability {other}"),
    }
}

/// setpriv's form of a capability set: `-all,+bpf,+net_admin,+perfmon`.
fn setpriv_set(caps: &[String]) -> String {
    std::iter::once("-all".to_string())
        .chain(
            caps.iter()
                .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase())),
        )
        .collect::<Vec<_>>()
        .join(",")
}

/// `setpriv` arguments giving a root process exactly `set` (bounding,
/// inheritable, ambient) with no-new-privileges, as the unit does.
fn setpriv(set: &str) -> [&str; 9] {
    [
        "setpriv",
        "--bounding-set",
        set,
        "--inh-caps",
        set,
        "--ambient-caps",
        set,
        "--no-new-privs",
        "--",
    ]
}

#[test]
fn every_capability_of_the_unit_is_needed() {
    if !testkit::require_privileges("packaging: every capability is needed") {
        return;
    }
    let _alone = crate::ALONE.hold();
    let caps = unit_caps();
    let pair = Pair::new("pgcaq", 68);
    let args = pair.run_args(&[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    for missing in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != missing).cloned().collect();
        let set = setpriv_set(&fewer);
        let out =
            ops::portguard_in_wrapped(&pair.server, &setpriv(&set), &args, Duration::from_secs(15));
        assert_eq!(
            out.status.code(),
            Some(1),
            "without {missing}, portguard run should fail with 1: {}",
            text(&out.stderr)
        );
        assert!(
            !pair.xdp_attached(),
            "without {missing}: a program was attached"
        );
        assert!(
            !pin_dir(&pair.server_if).exists() && !state_file(&pair.server_if).exists(),
            "without {missing}: pins or state left behind"
        );
    }
}

#[test]
fn portguard_runs_with_only_the_units_capabilities() {
    if !testkit::require_privileges("packaging: only the unit's capabilities") {
        return;
    }
    let _alone = crate::ALONE.hold();
    let caps = unit_caps();
    let set = setpriv_set(&caps);
    let wrapper = setpriv(&set);
    let want: u64 = caps.iter().map(|c| 1u64 << cap_bit(c)).sum();
    let dir = TempDir::new("caps");
    let pair = Pair::new("pgcap", 67);
    let iface = pair.server_if.clone();

    let mut first = pair.start_wrapped(&wrapper, dir.path(), "first", &["--keep-attached"]);
    assert_eq!(
        cap_eff(first.pid()),
        want,
        "portguard's effective capabilities are not exactly {caps:?}"
    );
    let allowed = pair.stream(ALLOWED_PORT, 500);
    let forbidden = pair.stream(FORBIDDEN_PORT, 500);
    allowed.wait_received_more(50, Duration::from_secs(5));
    forbidden.wait_sent_more(50, Duration::from_secs(5));

    // systemctl stop / restart: SIGTERM with --keep-attached.
    first.signal(libc::SIGTERM);
    let st = first.wait_exit(Duration::from_secs(10));
    assert!(st.success(), "stop: {st}\n{}", first.log());
    assert!(
        first
            .log()
            .contains("--keep-attached: leaving the program attached and pinned"),
        "no keep-attached message:\n{}",
        first.log()
    );
    assert!(
        pair.xdp_attached(),
        "--keep-attached: the program left on stop"
    );
    assert!(
        pin_dir(&iface).join("xdp_link").exists() && state_file(&iface).exists(),
        "--keep-attached: pins or state gone on stop"
    );
    allowed.wait_received_more(50, Duration::from_secs(5));
    forbidden.wait_sent_more(50, Duration::from_secs(5));

    let mut second = pair.start_wrapped(&wrapper, dir.path(), "second", &[]);
    assert!(
        second.log().contains(&format!(
            "taking over the XDP program a previous run left on {iface}"
        )),
        "the restart did not take over:\n{}",
        second.log()
    );
    allowed.wait_received_more(50, Duration::from_secs(5));
    let allowed = allowed.finish(Duration::from_secs(2));
    let forbidden = forbidden.finish(Duration::from_millis(100));
    assert_eq!(
        allowed.lost(),
        0,
        "allowed datagrams lost across a --keep-attached restart: first {:?}",
        allowed.missing()
    );
    assert!(
        forbidden.received.is_empty(),
        "forbidden datagrams arrived across a --keep-attached restart"
    );
    let counted = pair.scrape().sum(
        "portguard_packets_total",
        &[("proto", "udp"), ("verdict", "pass"), ("role", "!-")],
    );
    assert_eq!(
        counted, allowed.sent as f64,
        "counters did not continue across the restart"
    );

    second.signal(libc::SIGTERM);
    let st = second.wait_exit(Duration::from_secs(10));
    assert!(st.success(), "final stop: {st}\n{}", second.log());
    assert!(
        !pair.xdp_attached() && !pin_dir(&iface).exists() && !state_file(&iface).exists(),
        "not detached after SIGTERM without --keep-attached:\n{}",
        pair.server_link()
    );
}

/// `packaging/maintainer-scripts/prerm remove`, in a mount namespace of its
/// own (a fresh /run, /sys and bpffs: it must not find the instances of
/// other tests on this machine), after two instances stopped with
/// --keep-attached: one pinned under a `--bpffs` of its own, found through
/// its state file, and one under the default bpffs whose state file is
/// gone, found through its pins.
#[test]
fn prerm_detaches_every_instance_whatever_its_bpffs() {
    if !testkit::require_privileges("packaging: prerm finds every instance") {
        return;
    }
    let dir = TempDir::new("pk-prerm");
    let ns = ops::ok_any("namespace", testkit::netns::NetNs::new("pkrm"));
    for (a, b) in [("pkrma", "pkrmA"), ("pkrmb", "pkrmB")] {
        ops::ok_any(
            "veth pair",
            ns.ip(&["link", "add", a, "type", "veth", "peer", "name", b]),
        );
        for i in [a, b] {
            ops::ok_any("link up", ns.ip(&["link", "set", i, "up"]));
        }
    }
    let bpffs = dir.path().join("bpf");
    ok("creating the bpffs directory", std::fs::create_dir(&bpffs));
    let bin = testkit::portguard_bin();
    let bin_dir = bin
        .parent()
        .unwrap_or_else(|| panic!("{} has no directory", bin.display()));
    let prerm = ops::repo_root().join("packaging/maintainer-scripts/prerm");
    let (d, b, p) = (dir.path().display(), bpffs.display(), bin_dir.display());
    let script = format!(
        r#"
set -e
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -m 0700 /run/portguard
PATH={p}:$PATH
export PATH
portguard run --iface pkrma --role front-end --keep-attached --metrics-addr 127.0.0.1:9481 2>{d}/a.log &
a=$!
portguard run --iface pkrmb --role front-end --keep-attached --metrics-addr 127.0.0.1:9482 --bpffs {b} 2>{d}/b.log &
b=$!
trap 'kill $a $b 2>/dev/null || true' EXIT
for i in $(seq 200); do
	grep -q 'metrics on http://' {d}/a.log && grep -q 'metrics on http://' {d}/b.log && break
	sleep 0.1
done
kill -TERM $a $b
wait $a || echo "EXIT a $?"
wait $b || echo "EXIT b $?"
report() {{
	for i in pkrma pkrmb; do
		if ip link show dev $i | grep -q 'prog/xdp'; then echo "$1 ATTACHED $i"; else echo "$1 DETACHED $i"; fi
	done
	for pins in /sys/fs/bpf/portguard/pkrma {b}/portguard/pkrmb; do
		if [ -e $pins ]; then echo "$1 PINNED $pins"; else echo "$1 UNPINNED $pins"; fi
	done
	grep -o '"bpffs": *"[^"]*"' /run/portguard/pkrmb.json 2>/dev/null | sed "s/^/$1 STATE /" || true
}}
report BEFORE
rm /run/portguard/pkrma.json
sh {prerm} remove
report AFTER
"#,
        prerm = prerm.display()
    );
    let out = ok(
        "running prerm in a namespace",
        Command::new("timeout")
            .args(["120", "ip", "netns", "exec", ns.name(), "sh", "-c", &script])
            .output(),
    );
    let logs = ["a.log", "b.log"]
        .map(|f| std::fs::read_to_string(dir.path().join(f)).unwrap_or_default())
        .join("\n");
    let said = text(&out.stdout);
    let report = format!(
        "exit {}\nstdout:\n{said}\nstderr:\n{}\ndaemons:\n{logs}",
        out.status,
        text(&out.stderr)
    );
    assert!(out.status.success(), "the script failed: {report}");
    let bpffs_s = bpffs.display().to_string();
    for want in [
        "BEFORE ATTACHED pkrma".to_string(),
        "BEFORE ATTACHED pkrmb".to_string(),
        format!("BEFORE PINNED {bpffs_s}/portguard/pkrmb"),
        format!("BEFORE STATE \"bpffs\": \"{bpffs_s}\""),
        "AFTER DETACHED pkrma".to_string(),
        "AFTER DETACHED pkrmb".to_string(),
        "AFTER UNPINNED /sys/fs/bpf/portguard/pkrma".to_string(),
        format!("AFTER UNPINNED {bpffs_s}/portguard/pkrmb"),
    ] {
        assert!(
            said.lines().any(|l| l == want),
            "no line {want:?}: {report}"
        );
    }
    assert!(
        !said.contains("EXIT "),
        "an instance did not stop cleanly: {report}"
    );
}
