//! Directories and files portguard owns (the pin directory under the bpffs,
//! the state directory under /run): created root-only, and refused when they
//! already exist with another owner or with group/world write permission,
//! because whoever can write there can unpin the program or rename the
//! directory from under the daemon. Each component is opened with
//! `openat(O_NOFOLLOW)` from its parent's descriptor, so a symlink put in
//! place of a component is refused instead of followed.

use std::{
    ffi::CString,
    fs::File,
    io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error(
        "{path}: {why}; refusing to use it (whoever can write there can remove portguard's pins or state). Remove it, or make it root's with mode 0700"
    )]
    Untrusted { path: PathBuf, why: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> TrustError + '_ {
    move |source| TrustError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn cstr(name: &std::ffi::OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(io::Error::other)
}

fn fstat(fd: &OwnedFd) -> io::Result<libc::stat> {
    // SAFETY: fstat writes into the zeroed struct we own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// Owner and mode checks shared by directories and files.
fn check_owner_mode(path: &Path, st: &libc::stat) -> Result<(), TrustError> {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if st.st_uid != me {
        return Err(TrustError::Untrusted {
            path: path.to_path_buf(),
            why: format!("owned by uid {}, not by uid {me}", st.st_uid),
        });
    }
    if st.st_mode & 0o022 != 0 {
        return Err(TrustError::Untrusted {
            path: path.to_path_buf(),
            why: format!(
                "mode {:04o} lets group or others write",
                st.st_mode & 0o7777
            ),
        });
    }
    Ok(())
}

fn open_dir_at(dirfd: i32, name: &CString) -> io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated; the flags never follow a symlink.
    let fd = unsafe {
        libc::openat(
            dirfd,
            name.as_ptr(),
            libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_RDONLY,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Creates (mode 0700) or checks each of `components` below `base`, which
/// portguard does not own (`/run`, the bpffs mount) and so does not judge.
/// Returns the full path once every component is a real directory owned by
/// this user without group/world write.
pub(crate) fn private_dir(base: &Path, components: &[&str]) -> Result<PathBuf, TrustError> {
    let base_c = cstr(base.as_os_str()).map_err(io_err(base))?;
    // SAFETY: `base_c` is NUL-terminated.
    let fd = unsafe {
        libc::open(
            base_c.as_ptr(),
            libc::O_DIRECTORY | libc::O_CLOEXEC | libc::O_RDONLY,
        )
    };
    if fd < 0 {
        return Err(io_err(base)(io::Error::last_os_error()));
    }
    // SAFETY: a fresh descriptor we own.
    let mut dir = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut path = base.to_path_buf();
    for c in components {
        path.push(c);
        let name = cstr(std::ffi::OsStr::new(c)).map_err(io_err(&path))?;
        // SAFETY: `name` is NUL-terminated; mkdirat does not follow a final symlink.
        if unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o700) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(io_err(&path)(e));
            }
        }
        let next = open_dir_at(dir.as_raw_fd(), &name).map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) || e.raw_os_error() == Some(libc::ENOTDIR) {
                TrustError::Untrusted {
                    path: path.clone(),
                    why: "not a directory (a symlink or a file)".into(),
                }
            } else {
                io_err(&path)(e)
            }
        })?;
        let st = fstat(&next).map_err(io_err(&path))?;
        check_owner_mode(&path, &st)?;
        dir = next;
    }
    Ok(path)
}

/// Checks that `dir` (a path `private_dir` returned earlier) is still a
/// trusted directory, without creating anything.
pub(crate) fn check_existing_dir(dir: &Path) -> Result<(), TrustError> {
    let c = cstr(dir.as_os_str()).map_err(io_err(dir))?;
    // SAFETY: `c` is NUL-terminated.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_RDONLY,
        )
    };
    if fd < 0 {
        return Err(io_err(dir)(io::Error::last_os_error()));
    }
    // SAFETY: a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let st = fstat(&fd).map_err(io_err(dir))?;
    check_owner_mode(dir, &st)
}

/// Opens a regular file inside a trusted directory without following a
/// symlink, creating it (mode 0600) when `create`; refuses a file someone
/// else owns or may write.
pub(crate) fn open_file(path: &Path, create: bool, write: bool) -> Result<File, TrustError> {
    let c = cstr(path.as_os_str()).map_err(io_err(path))?;
    let mut flags = libc::O_NOFOLLOW | libc::O_CLOEXEC;
    flags |= if write { libc::O_RDWR } else { libc::O_RDONLY };
    if create {
        flags |= libc::O_CREAT;
    }
    // SAFETY: `c` is NUL-terminated.
    let fd = unsafe { libc::open(c.as_ptr(), flags, 0o600 as libc::c_uint) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ELOOP) {
            return Err(TrustError::Untrusted {
                path: path.to_path_buf(),
                why: "a symlink".into(),
            });
        }
        return Err(io_err(path)(e));
    }
    // SAFETY: a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let st = fstat(&fd).map_err(io_err(path))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(TrustError::Untrusted {
            path: path.to_path_buf(),
            why: "not a regular file".into(),
        });
    }
    check_owner_mode(path, &st)?;
    Ok(File::from(fd))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("pg-trusted-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("scratch dir");
        p
    }

    #[test]
    fn creates_private_directories() {
        let base = scratch("create");
        let dir = private_dir(&base, &["portguard", "eth0"]).expect("private_dir");
        let mode = std::fs::metadata(&dir).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{} has mode {mode:o}", dir.display());
        // A second call accepts what the first created.
        private_dir(&base, &["portguard", "eth0"]).expect("second private_dir");
        let _ = std::fs::remove_dir_all(base);
    }

    #[test]
    fn world_writable_and_symlinked_components_are_refused() {
        let base = scratch("refuse");
        std::fs::create_dir(base.join("portguard")).expect("mkdir");
        std::fs::set_permissions(
            base.join("portguard"),
            std::fs::Permissions::from_mode(0o777),
        )
        .expect("chmod");
        let e = private_dir(&base, &["portguard", "eth0"]).expect_err("0777 accepted");
        assert!(e.to_string().contains("lets group or others write"), "{e}");
        assert!(
            !base.join("portguard/eth0").exists(),
            "created below an untrusted dir"
        );

        let other = scratch("refuse-target");
        std::fs::remove_dir(base.join("portguard")).expect("rmdir");
        std::os::unix::fs::symlink(&other, base.join("portguard")).expect("symlink");
        let e = private_dir(&base, &["portguard", "eth0"]).expect_err("symlink followed");
        assert!(e.to_string().contains("not a directory"), "{e}");
        assert!(!other.join("eth0").exists(), "the symlink was followed");
        let _ = std::fs::remove_dir_all(base);
        let _ = std::fs::remove_dir_all(other);
    }
}
