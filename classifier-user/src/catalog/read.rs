//! The only way a catalog file is read: a regular file (a symlink to one is
//! fine), at most [`MAX_CATALOG_BYTES`], opened so that nothing can block.
//!
//! A catalog path is operator input and may name anything: `/dev/zero` or
//! `/dev/urandom` would grow the process without end, and a FIFO would block
//! the daemon's only thread (SIGTERM included) until a writer appears. The
//! path is looked up first and anything but a regular file is refused
//! without being opened. Then, because the path may change in between, the
//! file is opened with `O_NONBLOCK` (opening a FIFO then returns at once),
//! its kind and size are taken again from `fstat` on the opened descriptor,
//! and at most one byte more than the cap is read, so a file that grows after
//! `fstat` is still refused without being read to its end.

use std::{
    fs::{File, FileType, OpenOptions},
    io::{self, Read as _},
    os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _},
    path::Path,
};

/// The largest catalog accepted, in bytes: 1 MiB, thirty times the default
/// catalog (about 34 KiB). Parsing TOML takes about thirty times the text in
/// memory at its peak, so the cap is also what keeps a hostile file (and a
/// reload of one) to a few tens of MiB. A file this size still holds rules
/// enough to fill the 16,383 counter slots.
pub const MAX_CATALOG_BYTES: u64 = 1024 * 1024;

/// Why a catalog file was not read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("not a regular file: it is {0}")]
    NotRegular(&'static str),
    #[error("the file is {size} bytes, more than the {cap} bytes a catalog may have")]
    TooLarge { size: u64, cap: u64 },
    #[error("the file grew past the {cap} bytes a catalog may have while it was read")]
    Grew { cap: u64 },
    #[error("cannot read the catalog: {0}")]
    Io(#[from] io::Error),
}

/// What a file of this type is, in words, for an error message.
fn kind(t: FileType) -> &'static str {
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

/// Reads `path` (following symlinks) if it is a regular file of at most `cap` bytes.
pub fn read_bounded(path: &Path, cap: u64) -> Result<Vec<u8>, ReadError> {
    // Not even opened when it is not a regular file: opening some devices
    // has effects of its own (a watchdog starts counting, a tape rewinds).
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(ReadError::NotRegular(kind(meta.file_type())));
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(ReadError::NotRegular(kind(meta.file_type())));
    }
    if meta.len() > cap {
        return Err(ReadError::TooLarge {
            size: meta.len(),
            cap,
        });
    }
    read_at_most(file, meta.len(), cap)
}

fn read_at_most(file: File, size_hint: u64, cap: u64) -> Result<Vec<u8>, ReadError> {
    let mut bytes = Vec::with_capacity(usize::try_from(size_hint.min(cap)).unwrap_or(0) + 1);
    file.take(cap + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        return Err(ReadError::Grew { cap });
    }
    Ok(bytes)
}
