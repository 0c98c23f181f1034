//! The test kit shared by portguard's privileged tests, the benchmarks and
//! the lab demo: network namespaces, veth pairs, privilege checks.

pub mod lab;
pub mod netns;

use std::path::PathBuf;

/// Whether a privileged test can run. Under `CI=true` a test that cannot run
/// fails loudly instead of skipping: CI runs as root, so a skip there would
/// hide a broken setup.
pub fn require_privileges(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test} needs root (BPF, netns, XDP) and CI=true is set: failing instead of skipping");
    }
    eprintln!("SKIP {test}: needs root");
    false
}

/// The `portguard` binary built next to the running test (same profile), or
/// `$PORTGUARD_BIN`.
pub fn portguard_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PORTGUARD_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/test-xxxx → target/<profile>/portguard
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    let mut dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("portguard");
    assert!(
        bin.is_file(),
        "{} is missing: build it first (`cargo build --release -p classifier-user`, which `cargo xtask test` does)",
        bin.display()
    );
    bin
}
