//! Detect and install what a fresh Debian 12 machine lacks. A no-op, and
//! fast, when everything is there.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

const BPF_TARGET: &str = "bpfel-unknown-none";
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// Debian packages for the eBPF build (Debian's rustc with a prebuilt `core`
/// for the BPF target, and what bpf-linker links against).
const BPF_BUILD_PACKAGES: [&str; 6] =
    ["rustc-web", "libstd-rust-web-dev-bpf", "llvm-22-dev", "libpolly-22-dev", "libzstd-dev", "zlib1g-dev"];

/// A tool, how to find it, and the package that has it.
struct Tool {
    /// A command on PATH or an absolute file path.
    probe: &'static str,
    package: &'static str,
}

/// What the lab demo drives.
const LAB_TOOLS: &[Tool] = &[
    Tool { probe: "ip", package: "iproute2" },
    Tool { probe: "curl", package: "curl" },
    Tool { probe: "sipp", package: "sip-tester" },
    Tool { probe: "turnutils_stunclient", package: "coturn" },
];

/// What the tests and benchmarks use on top of the lab's.
const TEST_TOOLS: &[Tool] = &[
    Tool { probe: "nft", package: "nftables" },
    Tool { probe: "prometheus", package: "prometheus" },
    Tool { probe: "promtool", package: "prometheus" },
    Tool { probe: "xdp-filter", package: "xdp-tools" },
    Tool { probe: "/usr/lib/x86_64-linux-gnu/bpf/xdpfilt_alw_all.o", package: "libxdp1" },
    Tool { probe: "trafgen", package: "netsniff-ng" },
    Tool { probe: "iperf3", package: "iperf3" },
    Tool { probe: "ethtool", package: "ethtool" },
];

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    Build,
    Lab,
    Everything,
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

/// PATH with ~/.cargo/bin in it (bpf-linker lives there).
pub fn path_with_cargo_bin() -> OsString {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    let bin = cargo_home().join("bin");
    if !dirs.contains(&bin) {
        dirs.push(bin);
    }
    std::env::join_paths(dirs).unwrap_or_default()
}

fn on_path(program: &str) -> bool {
    if program.starts_with('/') {
        return Path::new(program).exists();
    }
    std::env::split_paths(&path_with_cargo_bin()).any(|d| d.join(program).is_file())
        || ["/usr/sbin", "/sbin"].iter().any(|d| Path::new(d).join(program).is_file())
}

/// Whether `rustc`'s sysroot has `core` prebuilt for the BPF target.
pub fn has_bpf_core(rustc: &Path) -> bool {
    let Ok(out) = Command::new(rustc).args(["--print", "sysroot"]).output() else {
        return false;
    };
    if !out.status.success() {
        return false;
    }
    let lib = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("lib/rustlib").join(BPF_TARGET).join("lib");
    std::fs::read_dir(lib).is_ok_and(|mut e| e.any(|f| f.is_ok_and(|f| f.file_name().to_string_lossy().starts_with("libcore-"))))
}

/// Whether rustup's nightly has `rust-src` (the other way to build for BPF).
fn nightly_with_rust_src() -> bool {
    Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .is_some_and(|o| {
            PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()).join("lib/rustlib/src/rust/library/core").is_dir()
        })
}

fn bpf_linker_ok() -> bool {
    Command::new(cargo_home().join("bin/bpf-linker"))
        .arg("--version")
        .output()
        .or_else(|_| Command::new("bpf-linker").arg("--version").env("PATH", path_with_cargo_bin()).output())
        .is_ok_and(|o| o.status.success())
}

/// Packages missing for `needs`, in install order, without duplicates.
fn missing_packages(needs: Needs, bpf_rustc: bool, linker: bool) -> Vec<&'static str> {
    let mut pkgs: Vec<&'static str> = Vec::new();
    if !bpf_rustc || !linker {
        pkgs.extend(BPF_BUILD_PACKAGES);
    }
    let mut tools: Vec<&Tool> = Vec::new();
    if needs != Needs::Build {
        tools.extend(LAB_TOOLS);
    }
    if needs == Needs::Everything {
        tools.extend(TEST_TOOLS);
    }
    for t in tools {
        if !on_path(t.probe) && !pkgs.contains(&t.package) {
            pkgs.push(t.package);
        }
    }
    pkgs
}

fn run_step(what: &str, cmd: &mut Command) -> Result<()> {
    eprintln!("xtask setup: {what}");
    let status = cmd.status().with_context(|| format!("{what}: running {cmd:?}"))?;
    if !status.success() {
        bail!("{what} failed ({status}); command: {cmd:?}");
    }
    Ok(())
}

pub fn setup(needs: Needs) -> Result<()> {
    let bpf_rustc = has_bpf_core(Path::new("/usr/bin/rustc")) || nightly_with_rust_src();
    let linker = bpf_linker_ok();
    let pkgs = missing_packages(needs, bpf_rustc, linker);
    if !pkgs.is_empty() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            bail!("missing Debian packages {pkgs:?}; run as root or install them: apt-get install -y {}", pkgs.join(" "));
        }
        run_step("apt-get update", Command::new("apt-get").args(["update", "-q"]))?;
        run_step(
            &format!("installing {}", pkgs.join(" ")),
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&pkgs)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    if !has_bpf_core(Path::new("/usr/bin/rustc")) && !nightly_with_rust_src() {
        bail!("no rustc with `core` for {BPF_TARGET} after installing {BPF_BUILD_PACKAGES:?}");
    }
    if !linker {
        run_step(
            &format!("installing bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about 3 minutes)"),
            Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
                .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION, "--no-default-features", "--features", "llvm-22"])
                .env("LLVM_PREFIX", LLVM_PREFIX),
        )?;
        if !bpf_linker_ok() {
            bail!("bpf-linker is still not runnable after `cargo install`");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_missing_means_no_packages_for_the_build() {
        assert!(missing_packages(Needs::Build, true, true).is_empty());
    }

    #[test]
    fn a_missing_linker_pulls_the_llvm_it_links_against() {
        let pkgs = missing_packages(Needs::Build, true, false);
        assert!(pkgs.contains(&"llvm-22-dev"), "{pkgs:?}");
        assert!(pkgs.contains(&"libpolly-22-dev"), "{pkgs:?}");
    }

    #[test]
    fn a_missing_bpf_core_pulls_debians_rustc() {
        let pkgs = missing_packages(Needs::Build, false, true);
        assert!(pkgs.contains(&"rustc-web") && pkgs.contains(&"libstd-rust-web-dev-bpf"), "{pkgs:?}");
    }

    #[test]
    fn path_probe_finds_sh_and_not_nonsense() {
        assert!(on_path("sh"));
        assert!(!on_path("portguard-no-such-tool"));
        assert!(!on_path("/no/such/file.o"));
    }

    #[test]
    fn a_rustc_that_does_not_exist_has_no_bpf_core() {
        assert!(!has_bpf_core(Path::new("/no/such/rustc")));
    }
}
