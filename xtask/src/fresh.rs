//! The state `cargo xtask test` runs the suite from: that of a machine where
//! portguard never ran, whatever this one's /run and bpffs hold. A test that
//! passes only because an earlier run (or an older build) left something in
//! /run/portguard or /sys/fs/bpf then fails here too, not first on a new
//! machine.
//!
//! xtask moves itself into a private mount namespace before it starts
//! `cargo test`, so the suite (every test binary, every daemon and tool they
//! start) inherits it:
//! - every mount is private there: nothing the suite mounts reaches the
//!   host, nor the other way;
//! - /run/portguard is an empty tmpfs, root's, mode 0700: what portguard
//!   itself creates on a new machine;
//! - /sys/fs/bpf is a new, empty bpffs: no pins of earlier runs, and the
//!   suite's own go with it when the namespace ends.
//!
//! /var/cache/portguard-test (the Debian root the package test installs
//! into, slow to make) is left as it is, and so is everything else.

use std::{
    ffi::CString,
    io,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

pub const RUN_DIR: &str = "/run/portguard";
pub const BPFFS: &str = "/sys/fs/bpf";

/// What [`enter`] did to the host, undone when dropped.
pub struct Fresh {
    /// The mount point xtask had to create in the host's /run (it was not
    /// there), removed again at the end if still empty.
    created: Option<PathBuf>,
}

/// Moves this process into a private mount namespace with an empty
/// /run/portguard and a new bpffs. Needs root (CAP_SYS_ADMIN).
pub fn enter() -> Result<Fresh> {
    // SAFETY: unshare has no memory-safety preconditions. xtask starts no
    // threads, and with CLONE_NEWNS only the calling thread moves anyway;
    // the children it spawns from here on inherit the namespace.
    check(unsafe { libc::unshare(libc::CLONE_NEWNS) })
        .context("unshare(CLONE_NEWNS): a private mount namespace for the suite")?;
    mount(None, "/", None, libc::MS_REC | libc::MS_PRIVATE, None)
        .context("making every mount private in the suite's namespace")?;
    let run_dir = Path::new(RUN_DIR);
    // The mount point is the host's directory (the namespace shares its
    // file systems): make it only if it is missing, as portguard would.
    let created = if run_dir.exists() {
        None
    } else {
        std::fs::create_dir(run_dir).with_context(|| format!("creating {RUN_DIR}"))?;
        std::fs::set_permissions(run_dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .with_context(|| format!("chmod 0700 {RUN_DIR}"))?;
        Some(run_dir.to_path_buf())
    };
    let fresh = Fresh { created };
    mount(
        Some("tmpfs"),
        RUN_DIR,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Some("mode=0700"),
    )
    .with_context(|| format!("mounting an empty tmpfs on {RUN_DIR}"))?;
    mount(Some("bpf"), BPFFS, Some("bpf"), 0, Some("mode=0700"))
        .with_context(|| format!("mounting a new bpffs on {BPFFS}"))?;
    Ok(fresh)
}

impl Drop for Fresh {
    /// Removes the mount point [`enter`] created in the host's /run, if it
    /// did and nothing else wrote there meanwhile (a portguard outside the
    /// namespace may have: then it stays).
    fn drop(&mut self) {
        let Some(dir) = self.created.take() else {
            return;
        };
        let Ok(path) = CString::new(dir.as_os_str().as_encoded_bytes()) else {
            return;
        };
        // Detached: a daemon a failed test left behind may still use it.
        // SAFETY: a valid C string; umount2 has no other preconditions.
        unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        let _ = std::fs::remove_dir(&dir);
    }
}

fn mount(
    source: Option<&str>,
    target: &str,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let c = |s: Option<&str>| s.map(CString::new).transpose();
    let (source, target, fstype, data) = (c(source)?, CString::new(target)?, c(fstype)?, c(data)?);
    let ptr = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: every pointer is a valid C string or null, as mount(2) allows.
    check(unsafe {
        libc::mount(
            ptr(&source),
            target.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    })
}

fn check(r: i32) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

    fn fs_type(path: &str) -> i64 {
        let c = CString::new(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: statfs writes into the zeroed struct we own; `c` is a C string.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::statfs(c.as_ptr(), &mut st) };
        assert_eq!(r, 0, "statfs {path}: {}", io::Error::last_os_error());
        st.f_type as i64
    }

    /// The names in `path`, less the iterators the kernel's bpf_preload
    /// puts in every new bpffs (`maps.debug`, `progs.debug`).
    fn entries(path: &str) -> Vec<String> {
        std::fs::read_dir(path)
            .unwrap_or_else(|e| panic!("reading {path}: {e}"))
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".debug"))
            .collect()
    }

    #[test]
    fn the_suite_starts_with_an_empty_run_dir_and_a_new_bpffs_of_its_own() {
        if !testkit::require_privileges("xtask: the suite's fresh state") {
            return;
        }
        let marker = Path::new(RUN_DIR).join(format!("xtask-fresh-{}", std::process::id()));
        // enter() moves the calling thread only: a thread of its own, so the
        // other tests (and this one's check from outside) stay where they are.
        let inside = marker.clone();
        std::thread::spawn(move || {
            let fresh = enter().expect("entering the fresh state");
            let meta = std::fs::metadata(RUN_DIR).unwrap_or_else(|e| panic!("{RUN_DIR}: {e}"));
            assert_eq!(
                (meta.mode() & 0o7777, meta.uid()),
                (0o700, 0),
                "{RUN_DIR} should be root's, 0700, as portguard makes it"
            );
            assert_eq!(fs_type(RUN_DIR), TMPFS_MAGIC, "{RUN_DIR} is a tmpfs");
            assert!(entries(RUN_DIR).is_empty(), "{RUN_DIR} starts empty");
            assert_eq!(fs_type(BPFFS), BPF_FS_MAGIC, "{BPFFS} is a bpffs");
            assert_eq!(
                entries(BPFFS),
                Vec::<String>::new(),
                "{BPFFS} starts with no pins"
            );
            std::fs::write(&inside, "")
                .unwrap_or_else(|e| panic!("writing {}: {e}", inside.display()));
            drop(fresh);
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
        assert!(
            !marker.exists(),
            "{} written in the suite's namespace is visible outside it",
            marker.display()
        );
    }
}
