//! The test kit shared by portguard's privileged tests, the benchmarks and
//! the lab demo: network namespaces, veth pairs, counting listeners, the lab
//! engine and its scenarios ([`lab`]), the operations tests' kit ([`ops`]),
//! the lock a binary's load- or time-sensitive tests share ([`Alone`]), and
//! the guard every test that needs privileges or a tool goes through
//! ([`require`]): under `CI=true` it fails the test, elsewhere it skips it
//! with a `SKIP` line that `cargo xtask test` counts. It must not depend on classifier-user: xtask links it before the
//! eBPF toolchain exists; test code that needs portguard's library lives in
//! `portguard-testsupport` (tests/support).

pub mod frames;
pub mod lab;
pub mod mountns;
pub mod netns;
pub mod ops;
pub mod sockets;

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard, PoisonError},
};

/// The lock a test binary's tests hold when they must not run beside each
/// other: libtest runs a binary's tests on as many threads as there are
/// cores, and floods, line-rate senders and tests that time or count
/// exactly would measure each other. One per binary, in its `main.rs`:
/// `static ALONE: Alone = Alone::new();`, and in each such test
/// `let _alone = crate::ALONE.hold();` (after its privilege check, so that
/// a skipped test does not wait).
pub struct Alone(Mutex<()>);

impl Alone {
    pub const fn new() -> Alone {
        Alone(Mutex::new(()))
    }

    /// Waits until no other holder runs, and keeps it so until the guard
    /// drops. A test that failed while holding it does not stop the others
    /// (the lock guards no data).
    pub fn hold(&self) -> MutexGuard<'_, ()> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for Alone {
    fn default() -> Alone {
        Alone::new()
    }
}

/// Capabilities a privileged test needs, as (bit, name): netns and veth
/// (NET_ADMIN), `setns`, mounts and pre-5.8 BPF (SYS_ADMIN), and BPF maps and
/// programs (BPF, since Linux 5.8).
const NEEDED_CAPS: [(u32, &str); 3] = [
    (12, "CAP_NET_ADMIN"),
    (21, "CAP_SYS_ADMIN"),
    (39, "CAP_BPF"),
];

/// The effective capability set from /proc/self/status text (`CapEff:` in hex).
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

/// The names of the needed capabilities missing from `cap_eff`.
pub fn missing_caps(cap_eff: u64) -> Vec<&'static str> {
    NEEDED_CAPS
        .iter()
        .filter(|(bit, _)| cap_eff & (1u64 << bit) == 0)
        .map(|(_, name)| *name)
        .collect()
}

/// Why this process cannot run privileged tests, or `None` if it can.
fn lacking() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root".to_string());
    }
    // Root in a container can still lack capabilities.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let Some(eff) = parse_cap_eff(&status) else {
        return Some("cannot read CapEff from /proc/self/status".to_string());
    };
    let missing = missing_caps(eff);
    (!missing.is_empty()).then(|| format!("root but without {}", missing.join(", ")))
}

/// Whether a privileged test can run. Under `CI=true` a test that cannot run
/// fails loudly instead of skipping: CI runs as root, so a skip there would
/// hide a broken setup.
pub fn require_privileges(test: &str) -> bool {
    require(test, lacking().map(|why| format!("{why}: BPF, netns, XDP")))
}

/// Whether `program --version` runs (from the Debian package `package`).
pub fn require_program(test: &str, program: &str, package: &str) -> bool {
    let runs = std::process::Command::new(program)
        .arg("--version")
        .output()
        .is_ok();
    require(
        test,
        (!runs).then(|| {
            format!(
                "{program} is missing (Debian package `{package}`; `cargo xtask setup` installs it)"
            )
        }),
    )
}

/// Whether `path` (from the Debian package `package`) exists.
pub fn require_file(test: &str, path: &Path, package: &str) -> bool {
    require(
        test,
        (!path.exists()).then(|| {
            format!(
                "{} is missing (Debian package `{package}`; `cargo xtask setup` installs it)",
                path.display()
            )
        }),
    )
}

/// The one rule for a test that cannot run (`lacking` says why): under
/// `CI=true` it fails, otherwise it is skipped, visibly (see [`skip`]).
/// `true` when nothing is lacking.
pub fn require(test: &str, lacking: Option<String>) -> bool {
    let ci = std::env::var("CI").as_deref() == Ok("true");
    let runs = decide(test, lacking.as_deref(), ci);
    if let (false, Some(why)) = (runs, &lacking) {
        skip(test, why);
    }
    runs
}

/// Whether the test runs; panics under CI when something is lacking.
fn decide(test: &str, lacking: Option<&str>, ci: bool) -> bool {
    let Some(why) = lacking else {
        return true;
    };
    assert!(
        !ci,
        "\n\n*** {test}: CANNOT RUN ({why}) and CI=true is set: failing instead of skipping ***\n"
    );
    false
}

/// The marker line that says a test was skipped, as `cargo xtask test`
/// reads it: `SKIP <test>: <why>`, where `<test>` has no `": "`.
pub fn skip_line(test: &str, why: &str) -> String {
    format!("SKIP {}: {why}", test.replace(": ", " - "))
}

/// The test a [`skip_line`] names, if `line` is one. libtest may have printed
/// `test NAME ... ` before it on the same line (one test thread).
pub fn skipped_test(line: &str) -> Option<&str> {
    let at = line.find("SKIP ")?;
    let before = &line[..at];
    if !(before.trim().is_empty() || before.ends_with(" ... ")) {
        return None;
    }
    line[at + "SKIP ".len()..]
        .split_once(": ")
        .map(|(test, _)| test)
}

/// Says that `test` did not run, and why. Written to stdout directly, not
/// with `println!`, because libtest captures what `println!` prints from a
/// passing test; `cargo xtask test` counts these lines as skipped tests. The
/// libtest thread's name (the test's path) names the test when there is one.
pub fn skip(test: &str, why: &str) {
    let current = std::thread::current();
    let line = match current.name().filter(|n| *n != "main" && *n != test) {
        Some(path) => skip_line(path, &format!("{test}: {why}")),
        None => skip_line(test, why),
    };
    let mut out = std::io::stdout().lock();
    // Nothing to do if stdout is gone; the test itself must not fail for it.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// `12.3ms`, `950.1µs`, `1.2s` (how Rust's `Duration` prints with `{:?}`,
/// and so how portguard logs its swap times) in milliseconds.
pub fn debug_duration_ms(d: &str) -> Option<f64> {
    let split = d.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (n, unit) = d.split_at(split);
    let n: f64 = n.parse().ok()?;
    Some(match unit {
        "s" => n * 1e3,
        "ms" => n,
        "µs" | "us" => n / 1e3,
        "ns" => n / 1e6,
        _ => return None,
    })
}

/// The `portguard` binary built next to the running test (same profile), or
/// `$PORTGUARD_BIN`.
pub fn portguard_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PORTGUARD_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let bin = bin_next_to(&exe);
    assert!(
        bin.is_file(),
        "{} is missing: build it first (`cargo build --release -p portguard-cli`, which `cargo xtask test` does)",
        bin.display()
    );
    bin
}

/// target/<profile>/deps/test-xxxx and target/<profile>/bench → target/<profile>/portguard.
fn bin_next_to(exe: &Path) -> PathBuf {
    let mut dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join("portguard")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_eff_is_read_from_proc_status_text() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001fffeffffff\nCapBnd:\t0\n";
        assert_eq!(parse_cap_eff(status), Some(0x1ff_feff_ffff));
        assert_eq!(parse_cap_eff("Name:\tx\n"), None);
    }

    #[test]
    fn full_root_lacks_nothing_and_an_empty_set_lacks_all() {
        // This machine's root: everything but CAP_SYS_RESOURCE (bit 24).
        assert!(missing_caps(0x1ff_feff_ffff).is_empty());
        assert_eq!(
            missing_caps(0),
            ["CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_BPF"]
        );
        assert_eq!(missing_caps(!(1u64 << 39)), ["CAP_BPF"]);
    }

    #[test]
    fn privileged_runs_and_unprivileged_skips_outside_ci() {
        assert!(decide("t", None, true));
        assert!(decide("t", None, false));
        assert!(!decide("t", Some("needs root"), false));
    }

    #[test]
    #[should_panic(expected = "CI=true is set")]
    fn unprivileged_fails_under_ci() {
        decide("t", Some("needs root"), true);
    }

    #[test]
    fn the_skip_marker_names_the_test_once_and_says_why() {
        assert_eq!(
            skip_line("restart: failed starts", "needs root"),
            "SKIP restart - failed starts: needs root"
        );
        assert_eq!(
            skip_line("tests::lab", "nft: missing"),
            "SKIP tests::lab: nft: missing"
        );
    }

    #[test]
    fn a_skip_line_reads_back_as_its_test() {
        let line = skip_line("restart: failed starts", "needs root");
        assert_eq!(skipped_test(&line), Some("restart - failed starts"));
        assert_eq!(
            skipped_test("test tests::x ... SKIP tests::x: nft: missing"),
            Some("tests::x"),
            "after libtest's own prefix"
        );
        assert_eq!(skipped_test("test x ... ok"), None);
        assert_eq!(
            skipped_test("the log said SKIP x: y"),
            None,
            "inside other text"
        );
    }

    #[test]
    fn a_present_program_or_file_is_not_lacking() {
        assert!(require_file("t", Path::new("/"), "base-files"), "/ exists");
        assert!(require_program("t", "sh", "dash"), "sh runs");
    }

    #[test]
    fn durations_as_rust_prints_them_read_as_milliseconds() {
        assert_eq!(debug_duration_ms("12.5ms"), Some(12.5));
        assert_eq!(debug_duration_ms("1.5s"), Some(1500.0));
        assert_eq!(debug_duration_ms("250µs"), Some(0.25));
        assert_eq!(debug_duration_ms("2000ns"), Some(0.002));
        assert_eq!(debug_duration_ms("12 parsecs"), None);
        assert_eq!(debug_duration_ms("ms"), None);
    }

    #[test]
    fn portguard_is_looked_for_in_the_profile_dir() {
        assert_eq!(
            bin_next_to(Path::new("/r/target/release/deps/lab-0123")),
            Path::new("/r/target/release/portguard")
        );
        assert_eq!(
            bin_next_to(Path::new("/r/target/release/bench")),
            Path::new("/r/target/release/portguard")
        );
    }
}
