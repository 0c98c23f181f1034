//! What a running instance leaves on disk for `stats`, `reload` and a
//! restarted daemon: the slot registry (which counter is which rule) and its
//! pid. BPF state lives in the pins; this file only names it.

use std::{
    collections::BTreeMap,
    fs, io,
    io::{Read as _, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    policy::{RuleKey, SlotRegistry},
    trusted::{self, TrustError},
};

pub const RUN_DIR: &str = "/run/portguard";

/// A state file is a few hundred bytes per rule; anything larger is not one.
const MAX_STATE_BYTES: u64 = 16 << 20;

/// `/run/portguard`, created root-only or checked to be (see `trusted`).
pub fn run_dir() -> Result<PathBuf, TrustError> {
    trusted::private_dir(Path::new("/run"), &["portguard"])
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct State {
    pub pid: u32,
    pub iface: String,
    pub xdp_mode: String,
    pub mode: String,
    pub catalog: Option<PathBuf>,
    pub catalog_generation: u32,
    pub slots: BTreeMap<u16, RuleKey>,
}

impl State {
    pub fn registry(&self) -> SlotRegistry {
        SlotRegistry::from_slots(self.slots.clone())
    }
}

pub fn path(run_dir: &Path, iface: &str) -> PathBuf {
    run_dir.join(format!("{iface}.json"))
}

/// Reads a state file without following a symlink, refusing one that is not
/// root's or is larger than any state file.
pub fn load(path: &Path) -> io::Result<State> {
    let file = trusted::open_file(path, false, false).map_err(|e| match e {
        TrustError::Io { source, .. } => source,
        other => io::Error::other(other.to_string()),
    })?;
    let mut text = Vec::new();
    file.take(MAX_STATE_BYTES + 1).read_to_end(&mut text)?;
    if text.len() as u64 > MAX_STATE_BYTES {
        return Err(io::Error::other(format!(
            "{}: larger than {MAX_STATE_BYTES} bytes, not a state file",
            path.display()
        )));
    }
    serde_json::from_slice(&text).map_err(io::Error::other)
}

/// Written to a fresh temporary file (0600, never through a symlink), synced
/// and renamed, so a reader never sees half of it; on any failure (a full
/// disk) the temporary file is removed and the previous state stays.
pub fn store(path: &Path, state: &State) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(state).map_err(io::Error::other)?;
    let tmp = path.with_extension("json.tmp");
    let _ = fs::remove_file(&tmp);
    let written = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips() {
        let dir = std::env::temp_dir().join(format!("pg-state-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("scratch dir");
        let p = path(&dir, "eth9");
        let mut slots = BTreeMap::new();
        slots.insert(
            3,
            RuleKey {
                role: "front-end".into(),
                service: "SIP".into(),
                proto: "tcp".into(),
                port_start: 5061,
                port_end: 5061,
            },
        );
        let s = State {
            pid: 42,
            iface: "eth9".into(),
            slots,
            ..State::default()
        };
        store(&p, &s).expect("store");
        let back = load(&p).expect("load");
        assert_eq!(back.pid, 42);
        assert_eq!(back.registry().get(3).map(|k| k.port_start), Some(5061));
        let _ = fs::remove_dir_all(dir);
    }
}
