//! `cargo xtask setup`: detect and install what a fresh Debian 12 machine
//! lacks. Detection only looks at files and runs `rustc --print sysroot` and
//! `bpf-linker --version`, so with everything present it takes well under a
//! second; `apt-get update` runs once, and only when something is installed.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

const BPF_TARGET: &str = "bpfel-unknown-none";
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
pub const DEBIAN_RUSTC: &str = "/usr/bin/rustc";

/// Debian packages for the eBPF build: Debian's rustc with a prebuilt `core`
/// for the BPF target, and the LLVM bpf-linker is built against.
const BPF_BUILD_PACKAGES: [&str; 6] = [
    "rustc-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];

/// A tool, how to find it, and the Debian package that has it.
#[derive(Debug)]
struct Tool {
    /// A program looked up on PATH (and /usr/sbin, /sbin), or an absolute path.
    probe: &'static str,
    package: &'static str,
}

/// What the lab demo drives.
const LAB_TOOLS: &[Tool] = &[
    Tool {
        probe: "ip",
        package: "iproute2",
    },
    Tool {
        probe: "curl",
        package: "curl",
    },
    Tool {
        probe: "sipp",
        package: "sip-tester",
    },
    Tool {
        probe: "turnserver",
        package: "coturn",
    },
    Tool {
        probe: "turnutils_stunclient",
        package: "coturn",
    },
    // The HTTPS peer: a throwaway certificate and `openssl s_server`.
    Tool {
        probe: "openssl",
        package: "openssl",
    },
];

/// What the tests and benchmarks use on top of the lab's.
const TEST_TOOLS: &[Tool] = &[
    Tool {
        probe: "nft",
        package: "nftables",
    },
    Tool {
        probe: "prometheus",
        package: "prometheus",
    },
    Tool {
        probe: "promtool",
        package: "prometheus",
    },
    Tool {
        probe: "xdp-filter",
        package: "xdp-tools",
    },
    Tool {
        probe: "/usr/lib/x86_64-linux-gnu/bpf/xdpfilt_alw_all.o",
        package: "libxdp1",
    },
    Tool {
        probe: "trafgen",
        package: "netsniff-ng",
    },
    Tool {
        probe: "iperf3",
        package: "iperf3",
    },
    Tool {
        probe: "ethtool",
        package: "ethtool",
    },
    // `portguard events --pcap` is checked by reading the file back.
    Tool {
        probe: "tshark",
        package: "tshark",
    },
    // `portguard top` is driven in a detached 80x24 session.
    Tool {
        probe: "tmux",
        package: "tmux",
    },
    // `cargo xtask test` lints the eBPF crate with Debian's clippy for
    // rustc-web (see checks.rs).
    Tool {
        probe: "/usr/bin/cargo-clippy",
        package: "rust-web-clippy",
    },
];

/// What `cargo xtask dist` runs, and the package test's clean Debian root.
const DIST_TOOLS: &[Tool] = &[
    Tool {
        probe: "dpkg-shlibdeps",
        package: "dpkg-dev",
    },
    Tool {
        probe: "strip",
        package: "binutils",
    },
    Tool {
        probe: "lintian",
        package: "lintian",
    },
    Tool {
        probe: "debootstrap",
        package: "debootstrap",
    },
    Tool {
        probe: "zstd",
        package: "zstd",
    },
];

/// How much a subcommand needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    /// The eBPF toolchain.
    Build,
    /// The toolchain and the Debian packaging tools.
    Dist,
    /// The toolchain and the lab's peers.
    Lab,
    /// The toolchain, the lab's peers, the tests' tools and the packaging
    /// tools (the suite builds and installs the package).
    Everything,
}

/// What detection found.
#[derive(Debug, Clone, Copy)]
pub struct Found {
    /// A rustc with `core` for the BPF target (Debian's, $PORTGUARD_BPF_RUSTC,
    /// or rustup nightly with rust-src: the three that classifier-user's
    /// build script accepts).
    pub bpf_rustc: bool,
    /// A runnable bpf-linker.
    pub bpf_linker: bool,
}

/// What has to be installed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Debian packages, in install order, without duplicates.
    pub apt: Vec<&'static str>,
    pub bpf_linker: bool,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.apt.is_empty() && !self.bpf_linker
    }
}

/// The install plan for `needs`, given what was found and a probe for tools.
pub fn plan(needs: Needs, found: Found, tool_present: impl Fn(&str) -> bool) -> Plan {
    let mut apt: Vec<&'static str> = Vec::new();
    // bpf-linker is built against llvm-22-dev, so a missing linker needs the
    // BPF build packages too, even when the rustc is there.
    if !found.bpf_rustc || !found.bpf_linker {
        apt.extend(BPF_BUILD_PACKAGES);
    }
    let tools: &[&[Tool]] = match needs {
        Needs::Build => &[],
        Needs::Dist => &[DIST_TOOLS],
        Needs::Lab => &[LAB_TOOLS],
        Needs::Everything => &[LAB_TOOLS, TEST_TOOLS, DIST_TOOLS],
    };
    let tools = tools.iter().flat_map(|t| t.iter());
    for t in tools {
        if !apt.contains(&t.package) && !tool_present(t.probe) {
            apt.push(t.package);
        }
    }
    Plan {
        apt,
        bpf_linker: !found.bpf_linker,
    }
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

/// PATH with ~/.cargo/bin in it (`cargo install` puts bpf-linker there).
pub fn path_with_cargo_bin() -> OsString {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    let bin = cargo_home().join("bin");
    if !dirs.contains(&bin) {
        dirs.push(bin);
    }
    std::env::join_paths(dirs).unwrap_or_default()
}

/// Where `program` is among `dirs`; an absolute path is checked as is.
pub fn find_program(program: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    if program.starts_with('/') {
        return Path::new(program).exists().then(|| PathBuf::from(program));
    }
    dirs.iter().map(|d| d.join(program)).find(|p| p.is_file())
}

/// PATH (with ~/.cargo/bin) and the sbin directories a non-login root shell
/// may lack.
fn search_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path_with_cargo_bin()).collect();
    dirs.extend(["/usr/sbin", "/sbin"].map(PathBuf::from));
    dirs
}

/// Whether a sysroot has `core` prebuilt for the BPF target.
pub fn sysroot_has_bpf_core(sysroot: &Path) -> bool {
    let lib = sysroot.join("lib/rustlib").join(BPF_TARGET).join("lib");
    std::fs::read_dir(lib).is_ok_and(|mut entries| {
        entries.any(|e| {
            e.is_ok_and(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.starts_with("libcore") && name.ends_with(".rlib")
            })
        })
    })
}

/// `rustc --print sysroot`, run with `extra` leading args (`rustup run …`).
fn sysroot_of(program: &str, extra: &[&str]) -> Option<PathBuf> {
    let out = Command::new(program)
        .args(extra)
        .args(["--print", "sysroot"])
        // Never let rustup try to download a toolchain from here.
        .env("RUSTUP_AUTO_INSTALL", "0")
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// Whether `rustc` exists and its sysroot has `core` for the BPF target.
pub fn rustc_has_bpf_core(rustc: &Path) -> bool {
    rustc
        .to_str()
        .and_then(|r| sysroot_of(r, &[]))
        .is_some_and(|s| sysroot_has_bpf_core(&s))
}

/// The rustc for the eBPF crate, as classifier-user/build.rs chooses it.
fn bpf_rustc() -> Option<String> {
    if let Some(r) = std::env::var_os("PORTGUARD_BPF_RUSTC") {
        let r = PathBuf::from(r);
        return rustc_has_bpf_core(&r).then(|| format!("{} ($PORTGUARD_BPF_RUSTC)", r.display()));
    }
    if rustc_has_bpf_core(Path::new(DEBIAN_RUSTC)) {
        return Some(format!(
            "{DEBIAN_RUSTC} (Debian, prebuilt core for {BPF_TARGET})"
        ));
    }
    // Only asked when Debian's is missing: it costs a rustup round trip.
    nightly_has_rust_src().then(|| "rustup nightly with rust-src".to_string())
}

/// Whether rustup has a nightly with rust-src (`-Z build-std=core`).
pub fn nightly_has_rust_src() -> bool {
    sysroot_of("rustup", &["run", "nightly", "rustc"])
        .is_some_and(|s| s.join("lib/rustlib/src/rust/library/core").is_dir())
}

/// `bpf-linker --version` output, from ~/.cargo/bin or PATH.
fn bpf_linker_version() -> Option<String> {
    let linker = find_program("bpf-linker", &search_dirs())?;
    let out = Command::new(linker)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn run_step(what: &str, cmd: &mut Command) -> Result<()> {
    eprintln!("xtask setup: {what}…");
    let status = cmd
        .status()
        .with_context(|| format!("{what}: running {cmd:?}"))?;
    if !status.success() {
        bail!("{what} failed ({status}); command: {cmd:?}");
    }
    Ok(())
}

/// Detects, and installs what `needs` lacks. `verbose` reports what was
/// found even when nothing is installed (`cargo xtask setup` itself).
pub fn setup(needs: Needs, verbose: bool) -> Result<()> {
    let rustc = bpf_rustc();
    let linker = bpf_linker_version();
    let dirs = search_dirs();
    let plan = plan(
        needs,
        Found {
            bpf_rustc: rustc.is_some(),
            bpf_linker: linker.is_some(),
        },
        |probe| find_program(probe, &dirs).is_some(),
    );
    if plan.is_empty() {
        if verbose {
            eprintln!("xtask setup: nothing to install");
            eprintln!("  eBPF rustc:  {}", rustc.as_deref().unwrap_or("?"));
            eprintln!("  bpf-linker:  {}", linker.as_deref().unwrap_or("?"));
            eprintln!("  lab and test tools: all present");
        }
        if let Some(v) = linker
            .as_deref()
            .filter(|v| !v.contains(BPF_LINKER_VERSION))
        {
            eprintln!(
                "xtask setup: note: {v} found; the recipe pins bpf-linker {BPF_LINKER_VERSION}"
            );
        }
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    if !plan.apt.is_empty() && unsafe { libc::geteuid() } != 0 {
        bail!(
            "missing Debian packages: {}. Run as root, or install them: apt-get install -y {}",
            plan.apt.join(" "),
            plan.apt.join(" ")
        );
    }
    if !plan.apt.is_empty() {
        run_step(
            "apt-get update",
            Command::new("apt-get").args(["update", "-q"]),
        )?;
        run_step(
            &format!("installing {} with apt-get", plan.apt.join(" ")),
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&plan.apt)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
        if bpf_rustc().is_none() {
            bail!(
                "no rustc with `core` for {BPF_TARGET} after installing {}",
                BPF_BUILD_PACKAGES.join(" ")
            );
        }
        let dirs = search_dirs();
        let still: Vec<&str> = plan
            .apt
            .iter()
            .copied()
            .filter(|p| !BPF_BUILD_PACKAGES.contains(p))
            .collect();
        let lacking: Vec<&str> = LAB_TOOLS
            .iter()
            .chain(TEST_TOOLS)
            .chain(DIST_TOOLS)
            .filter(|t| still.contains(&t.package) && find_program(t.probe, &dirs).is_none())
            .map(|t| t.probe)
            .collect();
        if !lacking.is_empty() {
            bail!("still missing after apt-get install: {}", lacking.join(" "));
        }
    }
    if plan.bpf_linker {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        run_step(
            &format!(
                "installing bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about 3 minutes)"
            ),
            Command::new(cargo)
                .args([
                    "install",
                    "bpf-linker",
                    "--version",
                    BPF_LINKER_VERSION,
                    "--no-default-features",
                    "--features",
                    "llvm-22",
                ])
                .env("LLVM_PREFIX", LLVM_PREFIX)
                .env("PATH", path_with_cargo_bin()),
        )?;
        let Some(v) = bpf_linker_version() else {
            bail!(
                "bpf-linker is still not runnable after `cargo install` (looked in PATH and {})",
                cargo_home().join("bin").display()
            );
        };
        eprintln!(
            "xtask setup: {v} installed in {}",
            cargo_home().join("bin").display()
        );
    }
    eprintln!("xtask setup: done");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::{fs, time::Instant};

    use super::*;

    const ALL: Found = Found {
        bpf_rustc: true,
        bpf_linker: true,
    };

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let d = std::env::temp_dir().join(format!("xtask-setup-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&d);
            fs::create_dir_all(&d).expect("a scratch directory");
            TempDir(d)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn nothing_missing_means_nothing_to_do() {
        for needs in [Needs::Build, Needs::Dist, Needs::Lab, Needs::Everything] {
            assert!(plan(needs, ALL, |_| true).is_empty(), "{needs:?}");
        }
    }

    #[test]
    fn a_missing_linker_is_built_against_llvm_22() {
        let p = plan(
            Needs::Build,
            Found {
                bpf_linker: false,
                ..ALL
            },
            |_| true,
        );
        assert!(p.bpf_linker);
        assert!(
            p.apt.contains(&"llvm-22-dev") && p.apt.contains(&"libpolly-22-dev"),
            "{p:?}"
        );
    }

    #[test]
    fn a_missing_bpf_core_pulls_debians_rustc_only() {
        let p = plan(
            Needs::Build,
            Found {
                bpf_rustc: false,
                ..ALL
            },
            |_| true,
        );
        assert!(!p.bpf_linker);
        assert_eq!(p.apt, BPF_BUILD_PACKAGES);
    }

    #[test]
    fn build_ignores_tools_and_lab_ignores_test_tools() {
        assert!(plan(Needs::Build, ALL, |_| false).is_empty());
        let dist = plan(Needs::Dist, ALL, |_| false);
        assert_eq!(
            dist.apt,
            ["dpkg-dev", "binutils", "lintian", "debootstrap", "zstd"]
        );
        let lab = plan(Needs::Lab, ALL, |_| false);
        assert_eq!(
            lab.apt,
            ["iproute2", "curl", "sip-tester", "coturn", "openssl"]
        );
        let all = plan(Needs::Everything, ALL, |p| {
            p != "trafgen" && p != "promtool"
        });
        assert_eq!(
            all.apt,
            ["prometheus", "netsniff-ng"],
            "in TEST_TOOLS order"
        );
    }

    #[test]
    fn a_package_with_two_missing_tools_is_listed_once() {
        let p = plan(
            Needs::Everything,
            Found {
                bpf_rustc: false,
                bpf_linker: false,
            },
            |_| false,
        );
        let mut sorted = p.apt.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), p.apt.len(), "{:?}", p.apt);
        assert_eq!(p.apt.iter().filter(|p| **p == "coturn").count(), 1);
    }

    #[test]
    fn bpf_core_is_found_by_its_rlib_in_the_target_dir() {
        let t = TempDir::new("sysroot");
        assert!(!sysroot_has_bpf_core(&t.0));
        let lib = t.0.join("lib/rustlib").join(BPF_TARGET).join("lib");
        fs::create_dir_all(&lib).expect("the sysroot's target lib directory");
        assert!(
            !sysroot_has_bpf_core(&t.0),
            "an empty target dir has no core"
        );
        fs::write(lib.join("libcompiler_builtins-0123.rlib"), b"")
            .expect("an empty compiler_builtins rlib");
        assert!(!sysroot_has_bpf_core(&t.0));
        fs::write(lib.join("libcore-4f8e.rlib"), b"").expect("an empty core rlib");
        assert!(sysroot_has_bpf_core(&t.0));
    }

    #[test]
    fn programs_are_found_in_the_given_dirs_only() {
        let t = TempDir::new("path");
        let dirs = [t.0.join("nope"), t.0.clone()];
        assert_eq!(find_program("bpf-linker", &dirs), None);
        fs::write(t.0.join("bpf-linker"), b"").expect("an empty bpf-linker");
        assert_eq!(
            find_program("bpf-linker", &dirs),
            Some(t.0.join("bpf-linker"))
        );
        assert_eq!(find_program("/no/such/file.o", &dirs), None);
        assert!(find_program("sh", &search_dirs()).is_some());
    }

    #[test]
    fn a_rustc_that_does_not_exist_has_no_bpf_core() {
        assert!(!rustc_has_bpf_core(Path::new("/no/such/rustc")));
    }

    #[test]
    fn cargo_bin_is_on_the_path_we_hand_to_cargo() {
        let dirs: Vec<PathBuf> = std::env::split_paths(&path_with_cargo_bin()).collect();
        assert!(dirs.contains(&cargo_home().join("bin")));
    }

    #[test]
    fn detection_is_fast() {
        let t = Instant::now();
        let _ = (bpf_rustc(), bpf_linker_version());
        let dirs = search_dirs();
        let _ = plan(Needs::Everything, ALL, |p| find_program(p, &dirs).is_some());
        assert!(
            t.elapsed().as_millis() < 1000,
            "detection took {:?}",
            t.elapsed()
        );
    }
}
