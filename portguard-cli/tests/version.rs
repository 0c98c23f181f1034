//! `portguard --version` names the release, the commit it was built from and
//! the hash of the eBPF object it embeds.

use std::process::Command;

use portguard::ebpf_object;
use sha2::{Digest as _, Sha256};

fn version_line() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_portguard"))
        .arg("--version")
        .output()
        .expect("running portguard --version");
    assert!(
        out.status.success(),
        "portguard --version exited with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn version_names_release_commit_and_ebpf_object_hash() {
    let line = version_line();
    let object: String = Sha256::digest(ebpf_object::PORTGUARD)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    // The commit the build script saw; "unknown" only outside a checkout.
    let commit = Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "rev-parse",
            "--short=12",
            "HEAD",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(
            || "unknown".to_string(),
            |o| String::from_utf8_lossy(&o.stdout).trim().to_string(),
        );
    let want = format!(
        "portguard {} (commit {commit}, eBPF object sha256:{})",
        env!("CARGO_PKG_VERSION"),
        &object[..12]
    );
    assert_eq!(line, want, "portguard --version");
}

#[test]
fn the_short_flag_says_the_same() {
    let out = Command::new(env!("CARGO_BIN_EXE_portguard"))
        .arg("-V")
        .output()
        .expect("running portguard -V");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        version_line(),
        "-V and --version differ"
    );
}
