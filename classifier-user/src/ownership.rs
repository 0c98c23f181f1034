//! One owner per interface, proven by the kernel: a `run` holds an exclusive
//! `flock` on `/run/portguard/IF.lock` for as long as it lives, and the
//! kernel drops the lock when the process dies, however it dies. A second
//! `run`, a `--clean-start` or a `detach` that cannot take the lock refuses
//! and touches nothing. `reload` signals only the process that holds the
//! lock, through a pidfd, after checking it is a portguard for that
//! interface: never a bare pid read from a file.
//!
//! The lock is keyed by interface name, like the pins, so an interface of the
//! same name in another network namespace sharing the bpffs and /run
//! collides safely: the second instance is refused, never handed the first
//! one's pins.

use std::{
    fs::File,
    io::{self, Read as _, Seek as _, Write as _},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use crate::{
    state,
    trusted::{self, TrustError},
};

#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    #[error(
        "a portguard{} is still running on {iface} (it holds {lock}); stop it first (SIGTERM){}",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
        if *.clean_start { ": --clean-start touched nothing" } else { "" }
    )]
    Held {
        iface: String,
        pid: Option<u32>,
        lock: PathBuf,
        clean_start: bool,
    },
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("needs root: the instance's lock and state under {0} are root's only")]
    NeedsRoot(String),
    #[error("no portguard is running on {iface}{detail}")]
    Gone { iface: String, detail: String },
}

/// `/run/portguard/IF.lock`.
pub(crate) fn lock_path(run_dir: &Path, iface: &str) -> PathBuf {
    run_dir.join(format!("{iface}.lock"))
}

fn flock(file: &File, op: i32) -> io::Result<bool> {
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (file.metadata(), std::fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// The pid holding an exclusive flock on `file`, from /proc/locks (the
/// kernel's word, not a pid someone wrote into a file).
pub(crate) fn holder(file: &File) -> Option<u32> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = file.metadata().ok()?;
    let dev = meta.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let want = format!("{major:02x}:{minor:02x}:{}", meta.ino());
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|l| {
        // "1: FLOCK  ADVISORY  WRITE 1234 00:19:5678 0 EOF"; waiters have "->".
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() >= 6 && f[1] == "FLOCK" && f[3] == "WRITE" && f[5] == want)
            .then(|| f[4].parse().ok())
            .flatten()
    })
}

/// The exclusive lock of a running instance. Dropping it (or dying)
/// releases it; `release` also removes the file.
pub(crate) struct InstanceLock {
    file: File,
    path: PathBuf,
}

impl InstanceLock {
    /// Takes the interface's lock or says who holds it. The run directory is
    /// created root-only (or checked) first.
    pub(crate) fn acquire(iface: &str, clean_start: bool) -> Result<InstanceLock, OwnerError> {
        let run_dir = state::run_dir()?;
        let path = lock_path(&run_dir, iface);
        // A previous owner may unlink the file between our open and our
        // flock; then the lock we got is on an orphan: try again.
        for _ in 0..5 {
            let mut file = trusted::open_file(&path, true, true)?;
            let got = flock(&file, libc::LOCK_EX).map_err(|source| OwnerError::Io {
                path: path.clone(),
                source,
            })?;
            if !got {
                return Err(OwnerError::Held {
                    iface: iface.to_string(),
                    pid: holder(&file),
                    lock: path,
                    clean_start,
                });
            }
            if !same_file(&file, &path) {
                continue;
            }
            let io = |source| OwnerError::Io {
                path: path.clone(),
                source,
            };
            file.set_len(0).map_err(io)?;
            file.rewind().map_err(io)?;
            writeln!(file, "{}", std::process::id()).map_err(io)?;
            return Ok(InstanceLock { file, path });
        }
        Err(OwnerError::Io {
            path,
            source: io::Error::other("the lock file kept being replaced"),
        })
    }

    /// Removes the lock file, then releases the lock (in that order, so that
    /// a waiter that opened the old file notices and retries).
    pub(crate) fn release(self) {
        let _ = std::fs::remove_file(&self.path);
        drop(self.file);
    }
}

/// A process proven to be the portguard instance of an interface.
pub struct Instance {
    pub pid: u32,
    pidfd: OwnedFd,
}

fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Whether `pid` runs a portguard whose command line names `--iface IF`.
fn is_portguard_for(pid: u32, iface: &str) -> bool {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    let named_portguard = exe
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("portguard"));
    let mut cmdline = Vec::new();
    let read = File::open(format!("/proc/{pid}/cmdline"))
        .and_then(|f| f.take(64 * 1024).read_to_end(&mut cmdline));
    if read.is_err() {
        return false;
    }
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let flag = format!("--iface={iface}");
    let names_iface = args
        .windows(2)
        .any(|w| w[0] == b"--iface" && w[1] == iface.as_bytes())
        || args.contains(&flag.as_bytes());
    named_portguard && names_iface
}

impl Instance {
    /// Finds the live instance on `iface`: the holder of its lock, pinned by
    /// a pidfd, checked to be a portguard for that interface, and checked to
    /// still hold the lock after the pidfd was opened (so a pid reused in
    /// between is never taken for it).
    pub fn find(iface: &str) -> Result<Instance, OwnerError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(OwnerError::NeedsRoot(state::RUN_DIR.into()));
        }
        let path = lock_path(Path::new(state::RUN_DIR), iface);
        let gone = |detail: String| OwnerError::Gone {
            iface: iface.to_string(),
            detail,
        };
        let file = match trusted::open_file(&path, false, false) {
            Ok(f) => f,
            Err(TrustError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Err(gone(format!(" (no {})", path.display())));
            }
            Err(TrustError::Io { source, .. })
                if source.kind() == io::ErrorKind::PermissionDenied =>
            {
                return Err(OwnerError::NeedsRoot(state::RUN_DIR.into()));
            }
            Err(e) => return Err(e.into()),
        };
        let free = flock(&file, libc::LOCK_SH).map_err(|source| OwnerError::Io {
            path: path.clone(),
            source,
        })?;
        if free {
            return Err(gone(format!(
                " (nobody holds {}: the last instance died)",
                path.display()
            )));
        }
        let Some(pid) = holder(&file) else {
            return Err(gone(format!(
                " (no process found holding {})",
                path.display()
            )));
        };
        let pidfd = pidfd_open(pid).map_err(|e| gone(format!(" (pid {pid}: {e})")))?;
        if !is_portguard_for(pid, iface) {
            return Err(gone(format!(
                " (pid {pid} holds {} but is not a portguard for {iface})",
                path.display()
            )));
        }
        if holder(&file) != Some(pid) {
            return Err(gone(format!(" (pid {pid} let go of {})", path.display())));
        }
        Ok(Instance { pid, pidfd })
    }

    /// Sends `sig` through the pidfd: it reaches this process or nobody.
    pub fn signal(&self, sig: i32) -> io::Result<()> {
        // SAFETY: pidfd_send_signal on a pidfd we own, no siginfo.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}
