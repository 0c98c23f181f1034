//! The clean Debian 12 root the package test installs into: a
//! `debootstrap --variant=minbase bookworm` tree, made once and cached as a
//! zstd tarball outside the repository (the test unpacks a fresh copy each
//! run). Made here rather than in the test so that a fresh machine gets it
//! from `cargo xtask test` and the test itself stays well under a minute.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, ensure};

/// Where the tarball is kept between runs (`$PORTGUARD_TEST_ROOTFS`
/// overrides it).
pub const DEFAULT_CACHE: &str = "/var/cache/portguard-test/bookworm.tar.zst";

pub fn cache_path() -> PathBuf {
    std::env::var_os("PORTGUARD_TEST_ROOTFS")
        .map_or_else(|| PathBuf::from(DEFAULT_CACHE), PathBuf::from)
}

/// The cached root, made first if it is missing. `$PORTGUARD_DEBIAN_MIRROR`
/// picks the mirror; debootstrap's default otherwise.
pub fn ensure_rootfs() -> Result<PathBuf> {
    let tarball = cache_path();
    if tarball.is_file() {
        return Ok(tarball);
    }
    let parent = tarball
        .parent()
        .with_context(|| format!("{} has no parent directory", tarball.display()))?;
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let tree = parent.join(format!("bookworm.{}.tmp", std::process::id()));
    let partial = parent.join(format!("bookworm.{}.tar.zst.tmp", std::process::id()));
    let result = build(&tree, &partial, &tarball);
    // A half-made tree or tarball must not be taken for the cache next time.
    let _ = fs::remove_dir_all(&tree);
    let _ = fs::remove_file(&partial);
    result.map(|()| tarball)
}

fn run(what: &str, cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: {what}…");
    let status = cmd
        .status()
        .with_context(|| format!("{what}: running {cmd:?}"))?;
    ensure!(status.success(), "{what} failed ({status}): {cmd:?}");
    Ok(())
}

fn build(tree: &Path, partial: &Path, tarball: &Path) -> Result<()> {
    let mut debootstrap = Command::new("debootstrap");
    debootstrap
        .args(["--variant=minbase", "bookworm"])
        .arg(tree);
    if let Some(mirror) = std::env::var_os("PORTGUARD_DEBIAN_MIRROR") {
        debootstrap.arg(mirror);
    }
    // debootstrap lives in /usr/sbin, which a non-login root shell may lack.
    debootstrap.env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    run(
        "debootstrap --variant=minbase bookworm (once; about a minute)",
        &mut debootstrap,
    )?;
    run(
        &format!("packing the root into {}", tarball.display()),
        Command::new("tar")
            .args(["--zstd", "--numeric-owner", "-cpf"])
            .arg(partial)
            .arg("-C")
            .arg(tree)
            .arg("."),
    )?;
    fs::rename(partial, tarball)
        .with_context(|| format!("renaming {} to {}", partial.display(), tarball.display()))
}
