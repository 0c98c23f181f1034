//! The static checks `cargo xtask test` runs before the tests, so that CI
//! enforces them: `cargo fmt --check` and `cargo clippy -D warnings`, for the
//! workspace, for the library and the CLI as the package builds them
//! (without the library's `test-hooks` feature, which the workspace's
//! tests turn on for every crate) and for the eBPF crate (its own
//! workspace).
//!
//! The eBPF crate is linted for `bpfel-unknown-none` the way
//! classifier-user/build.rs builds it: with Debian's rustc (prebuilt `core`
//! for the target, `RUSTC_BOOTSTRAP=1`) and Debian's clippy of the same
//! version (`rust-web-clippy`), or else with rustup nightly's clippy and
//! `-Z build-std=core`. Lints that only fire for the BPF target (the
//! `bpf_target_arch` code in aya-ebpf, the verifier-shaped loops) are seen
//! that way, which a host-target run would miss.

use std::{path::Path, process::Command};

use crate::setup;

/// Debian's clippy for its rustc-web (the same version as /usr/bin/rustc).
pub const DEBIAN_CARGO_CLIPPY: &str = "/usr/bin/cargo-clippy";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    FmtWorkspace,
    FmtEbpf,
    ClippyWorkspace,
    ClippyShipped,
    ClippyEbpf,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub kind: Kind,
}

/// Every check, in the order they run.
pub fn all() -> Vec<Check> {
    vec![
        Check {
            name: "cargo fmt --check (workspace)",
            kind: Kind::FmtWorkspace,
        },
        Check {
            name: "cargo fmt --check (classifier-ebpf)",
            kind: Kind::FmtEbpf,
        },
        Check {
            name: "cargo clippy -D warnings (workspace, all targets)",
            kind: Kind::ClippyWorkspace,
        },
        Check {
            name: "cargo clippy -D warnings (classifier-user and portguard-cli without test-hooks)",
            kind: Kind::ClippyShipped,
        },
        Check {
            name: "cargo clippy -D warnings (classifier-ebpf, bpfel-unknown-none)",
            kind: Kind::ClippyEbpf,
        },
    ]
}

/// Runs one check, its output on the terminal; whether it passed. A check
/// that cannot run at all fails, saying why.
pub fn run(check: &Check) -> bool {
    println!("xtask test: check: {}", check.name);
    let root = crate::root();
    let ebpf = root.join("classifier-ebpf");
    let cmd = match check.kind {
        Kind::FmtWorkspace => Ok(crate::cargo_command(&["fmt", "--all", "--check"])),
        Kind::FmtEbpf => {
            let mut c = crate::cargo_command(&["fmt", "--check"]);
            c.current_dir(&ebpf);
            Ok(c)
        }
        Kind::ClippyWorkspace => Ok(crate::cargo_command(&[
            "clippy",
            "--workspace",
            "--release",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])),
        // Alone, so that no other crate's dependency turns the hooks on: what
        // only the hooks use would otherwise hide dead code and unused
        // imports of the shipped build.
        Kind::ClippyShipped => Ok(crate::cargo_command(&[
            "clippy",
            "-p",
            "classifier-user",
            "-p",
            "portguard-cli",
            "--release",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])),
        Kind::ClippyEbpf => clippy_ebpf(&ebpf, &root.join("target/clippy-ebpf")),
    };
    let ok = match cmd {
        Ok(mut cmd) => match cmd.status() {
            Ok(status) => status.success(),
            Err(e) => {
                println!("xtask test: {}: cannot run {cmd:?}: {e}", check.name);
                false
            }
        },
        Err(why) => {
            println!("xtask test: {}: cannot run: {why}", check.name);
            false
        }
    };
    println!(
        "xtask test: check {}: {}",
        if ok { "ok" } else { "FAILED" },
        check.name
    );
    ok
}

/// `cargo clippy` on the eBPF crate for the BPF target, with the toolchain
/// classifier-user/build.rs would pick.
fn clippy_ebpf(ebpf: &Path, target_dir: &Path) -> Result<Command, String> {
    let common = |cmd: &mut Command| {
        cmd.current_dir(ebpf)
            .args([
                "--release",
                "--target",
                "bpfel-unknown-none",
                "--target-dir",
            ])
            .arg(target_dir)
            .args(["--", "-D", "warnings"]);
        // The outer cargo's settings are for the host, not for BPF.
        for var in [
            "RUSTC",
            "RUSTC_WRAPPER",
            "RUSTC_WORKSPACE_WRAPPER",
            "RUSTFLAGS",
            "CARGO_ENCODED_RUSTFLAGS",
            "CARGO_BUILD_TARGET",
            "CARGO_TARGET_DIR",
        ] {
            cmd.env_remove(var);
        }
    };
    let debian_rustc = Path::new(setup::DEBIAN_RUSTC);
    if setup::rustc_has_bpf_core(debian_rustc) && Path::new(DEBIAN_CARGO_CLIPPY).is_file() {
        // cargo-clippy runs `$CARGO check` with its own clippy-driver as the
        // workspace wrapper around RUSTC.
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(DEBIAN_CARGO_CLIPPY);
        cmd.arg("clippy")
            .env("PATH", setup::path_with_cargo_bin())
            .env("CARGO", cargo);
        common(&mut cmd);
        cmd.env("RUSTC", debian_rustc).env("RUSTC_BOOTSTRAP", "1");
        return Ok(cmd);
    }
    if setup::nightly_has_rust_src() {
        let mut cmd = Command::new("rustup");
        cmd.args(["run", "nightly", "cargo", "clippy", "-Z", "build-std=core"])
            .env("PATH", setup::path_with_cargo_bin());
        common(&mut cmd);
        return Ok(cmd);
    }
    Err(format!(
        "no clippy for bpfel-unknown-none: neither {} with {DEBIAN_CARGO_CLIPPY} \
         (Debian packages rustc-web, libstd-rust-web-dev-bpf, rust-web-clippy; \
         `cargo xtask setup` installs them) nor rustup nightly with rust-src",
        setup::DEBIAN_RUSTC
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fmt_runs_before_clippy_and_the_workspace_before_the_ebpf_crate() {
        let kinds: Vec<Kind> = all().iter().map(|c| c.kind).collect();
        assert_eq!(
            kinds,
            [
                Kind::FmtWorkspace,
                Kind::FmtEbpf,
                Kind::ClippyWorkspace,
                Kind::ClippyShipped,
                Kind::ClippyEbpf
            ]
        );
    }
}
