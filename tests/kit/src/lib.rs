//! The test kit shared by portguard's privileged tests, the benchmarks and
//! the lab demo: network namespaces, veth pairs, counting listeners,
//! privilege checks. It must not depend on classifier-user: xtask links it
//! before the eBPF toolchain exists.

pub mod lab;
pub mod netns;
pub mod sockets;

use std::path::PathBuf;

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
    decide(
        test,
        lacking(),
        std::env::var("CI").as_deref() == Ok("true"),
    )
}

fn decide(test: &str, lacking: Option<String>, ci: bool) -> bool {
    let Some(why) = lacking else {
        return true;
    };
    assert!(
        !ci,
        "\n\n*** {test}: CANNOT RUN ({why}: BPF, netns, XDP) and CI=true is set: failing instead of skipping ***\n"
    );
    eprintln!("SKIP {test}: {why}");
    false
}

/// The `portguard` binary built next to the running test (same profile), or
/// `$PORTGUARD_BIN`.
pub fn portguard_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PORTGUARD_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    let bin = bin_next_to(&exe);
    assert!(
        bin.is_file(),
        "{} is missing: build it first (`cargo build --release -p classifier-user`, which `cargo xtask test` does)",
        bin.display()
    );
    bin
}

/// target/<profile>/deps/test-xxxx and target/<profile>/bench → target/<profile>/portguard.
fn bin_next_to(exe: &std::path::Path) -> PathBuf {
    let mut dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join("portguard")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

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
        assert!(!decide("t", Some("needs root".into()), false));
    }

    #[test]
    #[should_panic(expected = "CI=true is set")]
    fn unprivileged_fails_under_ci() {
        decide("t", Some("needs root".into()), true);
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
