//! The Debian package on a clean Debian 12: `cargo xtask test` builds it
//! (`cargo xtask dist`) and a `debootstrap --variant=minbase bookworm` root,
//! and hands both over as PORTGUARD_DEB and PORTGUARD_TEST_ROOTFS. The test
//! unpacks a fresh copy of the root, installs the package with
//! `apt-get install ./portguard_*.deb` with no network at all (a network
//! namespace of its own: only the root's own libc may satisfy Depends), runs
//! the installed binary (`--version`, `catalog check` on the shipped catalog,
//! the lab on a veth pair), purges the package and checks that nothing of
//! it is left.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::AtomicBool,
};

use testkit::lab::host;

/// Where `cargo xtask test` keeps the root when PORTGUARD_TEST_ROOTFS is unset.
const DEFAULT_ROOTFS: &str = "/var/cache/portguard-test/bookworm.tar.zst";

/// What apt, dpkg and the shell change in any install: not the package's.
const BOOKKEEPING: [&str; 6] = [
    "var/lib/dpkg",
    "var/lib/apt",
    "var/cache",
    "var/log",
    "tmp",
    "var/lib/systemd/deb-systemd-helper-enabled",
];

/// A directory removed with everything in it on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        // /var/tmp: the root is ~200 MB, more than a tmpfs /tmp may hold.
        let d = PathBuf::from(format!("/var/tmp/portguard-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap_or_else(|e| panic!("creating {}: {e}", d.display()));
        Scratch(d)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// An input file from `cargo xtask test`, or None (then the test skips,
/// except under CI=true where it fails).
fn input(var: &str, default: Option<&str>, what: &str) -> Option<PathBuf> {
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .or_else(|| default.map(PathBuf::from));
    match path {
        Some(p) if p.is_file() => Some(p),
        other => {
            let why = format!(
                "{what} not found ({var}={:?}): `cargo xtask test` makes it",
                other.map(|p| p.display().to_string())
            );
            // Fails under CI=true; elsewhere a SKIP line `cargo xtask test` counts.
            testkit::require("deb_install: the package and the root", Some(why));
            None
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `cmd` in the root, with a clean environment; the output, checked.
fn in_root(root: &Path, cmd: &str) -> Output {
    root_command(root, cmd, &[], "in the Debian 12 root")
}

/// `cmd` in the root and in a network namespace of its own: nothing outside
/// this machine (nor on it) can be reached.
fn offline_in_root(root: &Path, cmd: &str) -> Output {
    root_command(root, cmd, &["--net"], "in the Debian 12 root, offline")
}

/// `unshare UNSHARE chroot ROOT env -i ... sh -c CMD` (plain `chroot` when
/// there is nothing to unshare), its failure described as `where`.
fn root_command(root: &Path, cmd: &str, unshare: &[&str], place: &str) -> Output {
    let mut c = if unshare.is_empty() {
        Command::new("chroot")
    } else {
        let mut c = Command::new("unshare");
        c.args(unshare).arg("chroot");
        c
    };
    let out = c
        .arg(root)
        .args([
            "/usr/bin/env",
            "-i",
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
            "DEBIAN_FRONTEND=noninteractive",
            "/bin/sh",
            "-c",
            cmd,
        ])
        .output()
        .unwrap_or_else(|e| panic!("{place}: starting `{cmd}`: {e}"));
    assert!(
        out.status.success(),
        "{place}: `{cmd}` exited with {}:\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

/// Every path under `root` (not following links), relative, without the
/// package manager's bookkeeping.
fn tree(root: &Path) -> BTreeSet<PathBuf> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeSet<PathBuf>) {
        let entries =
            fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
        for e in entries {
            let e = e.unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
            let path = e.path();
            let rel = path
                .strip_prefix(root)
                .map(Path::to_path_buf)
                .unwrap_or_default();
            if BOOKKEEPING.iter().any(|b| rel.starts_with(b)) {
                continue;
            }
            out.insert(rel);
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&path, root, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out);
    out
}

#[test]
fn the_package_installs_runs_and_purges_on_a_clean_debian_12() {
    let Some(deb) = input("PORTGUARD_DEB", None, "the .deb (`cargo xtask dist`)") else {
        return;
    };
    let Some(rootfs) = input(
        "PORTGUARD_TEST_ROOTFS",
        Some(DEFAULT_ROOTFS),
        "the Debian 12 root tarball",
    ) else {
        return;
    };
    if !testkit::require_privileges("deb_install: chroot, netns and XDP") {
        return;
    }
    let _alone = crate::ALONE.hold();
    let scratch = Scratch::new("debroot");
    let root = scratch.0.join("root");
    fs::create_dir_all(&root).expect("the scratch root's directory");
    let out = Command::new("tar")
        .args(["--zstd", "--numeric-owner", "-xpf"])
        .arg(&rootfs)
        .arg("-C")
        .arg(&root)
        .output()
        .expect("tar");
    assert!(
        out.status.success(),
        "unpacking {}: {}",
        rootfs.display(),
        text(&out.stderr)
    );
    let name = deb
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| panic!("{} has no file name", deb.display()));
    assert!(
        name.starts_with("portguard_") && name.ends_with(".deb"),
        "unexpected package name {name}"
    );
    let before = tree(&root);
    fs::copy(&deb, root.join("tmp").join(&name)).unwrap_or_else(|e| panic!("copying {name}: {e}"));

    // Install with apt, as an operator would, offline.
    offline_in_root(
        &root,
        &format!("cd /tmp && apt-get install -y -q -o Dpkg::Use-Pty=0 ./{name}"),
    );
    let listed: Vec<PathBuf> = text(&in_root(&root, "dpkg -L portguard").stdout)
        .lines()
        .filter(|l| l.starts_with('/') && *l != "/.")
        .map(|l| PathBuf::from(l.trim_start_matches('/')))
        .collect();
    for want in [
        "usr/sbin/portguard",
        "lib/systemd/system/portguard@.service",
        "etc/portguard/example.env",
        "usr/share/portguard/sfb2015.toml",
        "usr/share/portguard/sfb2019.toml",
        "usr/share/portguard/microsoft-365.txt",
        "usr/share/doc/portguard/copyright",
        "usr/share/doc/portguard/changelog.Debian.gz",
        "usr/share/man/man8/portguard.8.gz",
        "usr/share/man/man8/portguard-run.8.gz",
        "usr/share/man/man8/portguard-catalog-check.8.gz",
        "usr/share/bash-completion/completions/portguard",
        "usr/share/zsh/vendor-completions/_portguard",
        "usr/share/fish/vendor_completions.d/portguard.fish",
    ] {
        assert!(
            listed.iter().any(|p| p == Path::new(want)),
            "dpkg -L portguard does not list /{want}: {listed:?}"
        );
        assert!(root.join(want).exists(), "/{want} is not installed");
    }
    let conffiles = text(&in_root(&root, "dpkg-query -W -f='${Conffiles}' portguard").stdout);
    assert!(
        conffiles.contains("/etc/portguard/example.env"),
        "example.env is not a conffile: {conffiles:?}"
    );

    // The installed binary runs on Debian 12's own libc.
    let version = text(&in_root(&root, "portguard --version").stdout);
    let built = Command::new(testkit::portguard_bin())
        .arg("--version")
        .output()
        .expect("the built portguard --version");
    // The same version and commit. The eBPF objects differ by design: the
    // tests' build carries the trace (test-hooks), the package's does not
    // (`xtask dist` checks the shipped object has no TRACE map).
    let without_object = |v: &str| {
        v.trim()
            .split(", eBPF object")
            .next()
            .unwrap_or("")
            .to_string()
    };
    let built = text(&built.stdout);
    assert_eq!(
        without_object(&version),
        without_object(&built),
        "the packaged binary is not built from this tree (packaged {version:?}, built {built:?})"
    );
    assert!(
        version.contains("eBPF object sha256:"),
        "the packaged binary names no eBPF object: {version:?}"
    );
    assert!(
        version.starts_with(&format!("portguard {} (commit ", env!("CARGO_PKG_VERSION"))),
        "--version: {version}"
    );
    in_root(
        &root,
        "portguard catalog check /usr/share/portguard/sfb2015.toml",
    );

    // The packaged binary enforces: the lab, with PORTGUARD_BIN inside the root.
    let bin = root.join("usr/sbin/portguard");
    let never = AtomicBool::new(false);
    let report = host::run(&host::Options {
        bin: &bin,
        interrupted: &never,
        peers: false,
        live: false,
    })
    .unwrap_or_else(|e| panic!("the lab did not run with {}: {e:#}", bin.display()));
    let failures = report.case_failures();
    assert!(
        failures.is_empty(),
        "packaged portguard: {}",
        failures.join("\npackaged portguard: ")
    );
    for (ok, what) in report.counter_checks() {
        assert!(ok, "packaged portguard: counter check failed: {what}");
    }

    // Purge: nothing of the package is left, nothing else changed.
    offline_in_root(&root, "apt-get purge -y -q -o Dpkg::Use-Pty=0 portguard");
    // /lib is a link to usr/lib on Debian 12: judge a path by where it leads.
    let real = |p: &Path| -> Option<PathBuf> {
        let canonical = fs::canonicalize(root.join(p)).ok()?;
        let root = fs::canonicalize(&root).ok()?;
        canonical.strip_prefix(root).ok().map(Path::to_path_buf)
    };
    let left: Vec<&PathBuf> = listed
        .iter()
        .filter(|p| real(p).is_some_and(|r| !before.contains(&r)))
        .collect();
    assert!(left.is_empty(), "left after apt-get purge: {left:?}");
    let after = tree(&root);
    let added: Vec<&PathBuf> = after.difference(&before).collect();
    let removed: Vec<&PathBuf> = before.difference(&after).collect();
    assert!(
        added.is_empty() && removed.is_empty(),
        "install + purge changed the root: added {added:?}, removed {removed:?}"
    );
}
