//! The operations tests' kit (prometheus, reload, restart, alerts, packaging,
//! netns_policy): a client/server namespace pair, `portguard run` spawned
//! into the server namespace with its pins on the host's bpffs, a metrics
//! scraper, and sequence-numbered UDP streams that tell exactly which packets
//! arrived. One copy for every test binary (`use testkit::ops;`).

mod daemon;
mod pair;
mod routed;
mod stream;

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

pub use self::{
    daemon::{Daemon, portguard, portguard_in, portguard_in_wrapped, text},
    pair::{Pair, forget_iface, pin_dir, state_file},
    routed::Routed,
    stream::{Delivery, Stream},
};
pub use crate::lab::metrics::{Sample, Scrape, http_get, parse_sample};
/// The roles and media range every operations test runs with (the lab's):
/// UDP 50000 (client media, narrowed) is allowed, UDP 161 (SNMP) is not.
pub use crate::lab::{MEDIA, METRICS, ROLES};

pub const ALLOWED_PORT: u16 = 50_000;
pub const FORBIDDEN_PORT: u16 = 161;

pub fn ok<T, E: std::fmt::Display>(what: &str, r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e:#}"))
}

pub fn ok_any<T>(what: &str, r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e:#}"))
}

/// Polls `f` every 10 ms until it returns `Some` or `within` passes.
pub fn poll<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A scratch directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("portguard-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        ok("creating a temp dir", fs::create_dir_all(&p));
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The repository root (for catalog/ and docs/).
pub fn repo_root() -> PathBuf {
    // This crate is tests/kit.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .expect("tests/kit has no grandparent")
}
