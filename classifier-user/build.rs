//! Builds the eBPF crate for `bpfel-unknown-none` and leaves the objects in
//! OUT_DIR for `include_bytes_aligned!`; tells the crate, for `--version`,
//! the git commit it is built from and the SHA-256 of the embedded object.
//!
//! aya-build assumes a rustup nightly with `rust-src`; these machines have
//! Debian's rustc with a prebuilt `core` for the BPF target instead, so the
//! recipe is driven here: prefer a rustc that ships `core` for the target,
//! fall back to nightly with build-std.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use sha2::{Digest as _, Sha256};

const TARGET: &str = "bpfel-unknown-none";
/// The program the daemon loads.
const PORTGUARD: &str = "portguard";
/// The benchmark's empty program: only with the `test-hooks` feature.
const FLOOR: &str = "floor";

enum Toolchain {
    /// A rustc whose sysroot has `core` prebuilt for the BPF target.
    Prebuilt(PathBuf),
    /// rustup nightly with `rust-src`: build `core` ourselves.
    NightlyBuildStd,
}

fn sysroot_has_bpf_core(rustc: &Path) -> bool {
    let Ok(out) = Command::new(rustc).args(["--print", "sysroot"]).output() else {
        return false;
    };
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let lib = sysroot.join("lib/rustlib").join(TARGET).join("lib");
    fs::read_dir(lib).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("libcore-"))
    })
}

fn nightly_has_rust_src() -> bool {
    let Ok(out) = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
    else {
        return false;
    };
    out.status.success()
        && PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
            .join("lib/rustlib/src/rust/library/core")
            .is_dir()
}

fn pick_toolchain() -> Result<Toolchain> {
    if let Ok(rustc) = env::var("PORTGUARD_BPF_RUSTC") {
        let rustc = PathBuf::from(rustc);
        if !sysroot_has_bpf_core(&rustc) {
            bail!(
                "PORTGUARD_BPF_RUSTC={} has no `core` for {TARGET}",
                rustc.display()
            );
        }
        return Ok(Toolchain::Prebuilt(rustc));
    }
    let debian = PathBuf::from("/usr/bin/rustc");
    if sysroot_has_bpf_core(&debian) {
        return Ok(Toolchain::Prebuilt(debian));
    }
    if nightly_has_rust_src() {
        return Ok(Toolchain::NightlyBuildStd);
    }
    bail!(
        "no Rust compiler with `core` for {TARGET} was found (tried $PORTGUARD_BPF_RUSTC, \
         /usr/bin/rustc from Debian's rustc-web + libstd-rust-web-dev-bpf, and rustup nightly \
         with rust-src). Run `cargo xtask setup` to install it."
    )
}

fn find_bpf_linker() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
    {
        dirs.push(home.join("bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("bpf-linker"))
        .find(|p| p.is_file())
}

fn main() -> Result<()> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest
        .parent()
        .context("classifier-user has no parent directory")?;
    let ebpf = root.join("classifier-ebpf");
    for p in [
        "classifier-ebpf/src",
        "classifier-ebpf/Cargo.toml",
        "classifier-ebpf/Cargo.lock",
        "classifier-common/src",
        "classifier-common/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }
    println!("cargo:rerun-if-env-changed=PORTGUARD_BPF_RUSTC");

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let target_dir = out_dir.join("ebpf-target");
    let linker = find_bpf_linker().context(
        "bpf-linker is not installed: run `cargo xtask setup` (or `cargo install bpf-linker`)",
    )?;
    let linker_dir = linker.parent().context("bpf-linker path has no parent")?;
    let path = env::join_paths(
        std::iter::once(linker_dir.to_path_buf()).chain(
            env::var_os("PATH")
                .map(|p| env::split_paths(&p).collect::<Vec<_>>())
                .unwrap_or_default(),
        ),
    )?;

    let toolchain = pick_toolchain()?;
    let mut cmd = match &toolchain {
        Toolchain::Prebuilt(_) => {
            Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        }
        // `-Z build-std` needs nightly cargo too, not only nightly rustc.
        Toolchain::NightlyBuildStd => {
            let mut c = Command::new("rustup");
            c.args(["run", "nightly", "cargo"]);
            c
        }
    };
    // Without the test hooks the floor is neither built nor embedded: the
    // shipped binary carries only what the daemon loads.
    let objects: &[&str] = if env::var_os("CARGO_FEATURE_TEST_HOOKS").is_some() {
        &[PORTGUARD, FLOOR]
    } else {
        &[PORTGUARD]
    };
    cmd.current_dir(&ebpf)
        .args(["build", "--release", "--target", TARGET, "--target-dir"])
        .arg(&target_dir)
        .env("PATH", path);
    for name in objects {
        cmd.args(["--bin", name]);
    }
    // The tests' trace (the TRACE map and its test in the exit) is compiled
    // into the object only for the test hooks.
    if env::var_os("CARGO_FEATURE_TEST_HOOKS").is_some() {
        cmd.args(["--features", "trace"]);
    }
    // The outer build's settings are for the host, not for BPF.
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "RUSTDOC",
    ] {
        cmd.env_remove(var);
    }
    // Packet headers sit at 2-byte offsets: without this LLVM splits every
    // wider packet read into byte loads (and spills the bytes to the stack),
    // where the verifier accepts a misaligned packet load as one instruction
    // on the architectures with efficient unaligned access (x86-64, arm64).
    // The stack must stay aligned for the verifier: the map keys built on it
    // are 8-byte aligned types (classifier-common), and the egress program
    // loads into aligned buffers.
    cmd.env(
        "CARGO_ENCODED_RUSTFLAGS",
        "-Ctarget-feature=+allows-misaligned-mem-access",
    );
    match toolchain {
        Toolchain::Prebuilt(rustc) => {
            // Debian's rustc is a stable build; the BPF target needs unstable
            // features that RUSTC_BOOTSTRAP unlocks.
            cmd.env("RUSTC", rustc).env("RUSTC_BOOTSTRAP", "1");
        }
        Toolchain::NightlyBuildStd => {
            cmd.args(["-Z", "build-std=core"]);
        }
    }
    let status = cmd.status().context("running cargo for the eBPF crate")?;
    if !status.success() {
        bail!("building classifier-ebpf for {TARGET} failed ({status})");
    }
    for name in objects {
        let built = target_dir.join(TARGET).join("release").join(name);
        let dest = out_dir.join(format!("{name}.bpf.o"));
        fs::copy(&built, &dest)
            .with_context(|| format!("copying {} to {}", built.display(), dest.display()))?;
    }
    let object = out_dir.join("portguard.bpf.o");
    let bytes = fs::read(&object).with_context(|| format!("reading {}", object.display()))?;
    // 12 hex digits tell builds apart; the test checks them against the
    // embedded bytes.
    let digest = hex(&Sha256::digest(&bytes));
    println!("cargo:rustc-env=PORTGUARD_EBPF_SHA256={}", &digest[..12]);
    println!("cargo:rustc-env=PORTGUARD_GIT_COMMIT={}", git_commit(root));
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `git` in the repository, its trimmed stdout if it succeeded.
fn git(root: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The commit HEAD names, or "unknown" outside a git checkout (a source
/// tarball, a build without git installed): that must not fail the build.
/// Rebuilds when HEAD moves: HEAD itself (checkout) and the ref it points
/// to (commit), wherever a worktree keeps them.
fn git_commit(root: &Path) -> String {
    let Some(commit) = git(root, &["rev-parse", "--short=12", "HEAD"]) else {
        return "unknown".to_string();
    };
    let mut watched = vec!["HEAD".to_string(), "packed-refs".to_string()];
    watched.extend(git(root, &["symbolic-ref", "-q", "HEAD"]));
    for name in watched {
        // A path that does not exist would make cargo rerun every build.
        if let Some(path) = git(
            root,
            &["rev-parse", "--path-format=absolute", "--git-path", &name],
        )
        .filter(|p| Path::new(p).exists())
        {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    commit
}
