//! A private mount namespace whose /run is an empty tmpfs: for a test that
//! must see what portguard does on a machine where it never ran (no
//! /run/portguard until a daemon creates it), whatever an earlier run or
//! another test left in the host's /run.
//!
//! The test's own threads stay in the host's mount namespace (so `ip netns`,
//! which lives in /run/netns, keeps working for them); the processes that
//! should see the fresh /run are started through [`FreshRun::wrapper`]
//! (`nsenter --mount=…`), and the test reads the fresh /run through
//! [`FreshRun::run`].

use std::{
    ffi::CString,
    fs::File,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _},
    path::PathBuf,
};

use anyhow::{Context as _, Result};

/// The namespace, kept alive by a descriptor, and its /run.
#[derive(Debug)]
pub struct FreshRun {
    ns: File,
    run: File,
}

impl FreshRun {
    /// Copies the host's mounts into a new namespace, makes every mount
    /// there private (nothing mounted inside reaches the host, nor the other
    /// way) and mounts an empty tmpfs (root's, mode 0755, as /run is) on /run.
    pub fn new() -> Result<FreshRun> {
        // unshare(CLONE_NEWNS) moves the calling thread only (it gets its own
        // fs_struct): a thread of its own, which ends once the descriptors
        // are taken, keeps the test's threads where they are.
        std::thread::spawn(|| -> Result<FreshRun> {
            // SAFETY: plain syscalls on this thread with valid C strings.
            unsafe {
                check(libc::unshare(libc::CLONE_NEWNS)).context("unshare(CLONE_NEWNS)")?;
                let root = CString::new("/")?;
                check(libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))
                .context("making / private in the new mount namespace")?;
                let (tmpfs, run, mode) = (
                    CString::new("tmpfs")?,
                    CString::new("/run")?,
                    CString::new("mode=0755")?,
                );
                check(libc::mount(
                    tmpfs.as_ptr(),
                    run.as_ptr(),
                    tmpfs.as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV,
                    mode.as_ptr().cast(),
                ))
                .context("mounting a tmpfs on /run")?;
                let ns = File::open("/proc/thread-self/ns/mnt")
                    .context("opening /proc/thread-self/ns/mnt")?;
                let fd = check(libc::open(
                    run.as_ptr(),
                    libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
                ))
                .context("opening the fresh /run")?;
                Ok(FreshRun {
                    ns,
                    run: File::from_raw_fd(fd),
                })
            }
        })
        .join()
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the mount namespace thread panicked")))
    }

    /// `nsenter --mount=NS --`: put before a program (and its arguments) to
    /// run it in this namespace. It works as a wrapper of `Pair::start_wrapped`
    /// and `portguard_in_wrapped`, which enter the network namespace first.
    pub fn wrapper(&self) -> Vec<String> {
        vec![
            "nsenter".to_string(),
            format!("--mount={}", own_fd(&self.ns).display()),
            "--".to_string(),
        ]
    }

    /// The fresh /run as this process sees it from the host's namespace
    /// (`/proc/PID/fd/N`, which leads into the tmpfs).
    pub fn run(&self) -> PathBuf {
        own_fd(&self.run)
    }
}

/// `/proc/PID/fd/N`: a path other processes can open too (nsenter does).
fn own_fd(f: &File) -> PathBuf {
    PathBuf::from(format!("/proc/{}/fd/{}", std::process::id(), f.as_raw_fd()))
}

fn check(r: i32) -> io::Result<i32> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}
