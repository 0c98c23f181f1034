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

pub(crate) const RUN_DIR: &str = "/run/portguard";
/// Where the pins go when `--bpffs` is not given.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf";

/// A state file is a few hundred bytes per rule; anything larger is not one.
const MAX_STATE_BYTES: u64 = 16 << 20;

/// `/run/portguard`, created root-only or checked to be (see `trusted`).
pub(crate) fn run_dir() -> Result<PathBuf, TrustError> {
    trusted::private_dir(Path::new("/run"), &["portguard"])
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct State {
    pub pid: u32,
    pub iface: String,
    /// Every interface the instance guards, the first being `iface` (empty
    /// in files written before appliance mode: then `iface` alone).
    pub legs: Vec<String>,
    pub xdp_mode: String,
    pub mode: String,
    pub catalog: Option<PathBuf>,
    pub catalog_generation: u32,
    pub slots: BTreeMap<u16, RuleKey>,
    /// The bpffs the instance pinned under (`run --bpffs`, absolute); None
    /// when it runs without pins, and in files written before it was
    /// recorded. `detach` (and so the package's `prerm`) finds the pins
    /// through it.
    pub bpffs: Option<PathBuf>,
}

impl State {
    pub(crate) fn registry(&self) -> SlotRegistry {
        SlotRegistry::from_slots(self.slots.clone())
    }
}

pub fn path(run_dir: &Path, iface: &str) -> PathBuf {
    run_dir.join(format!("{iface}.json"))
}

impl State {
    /// The instance's interfaces.
    pub(crate) fn legs(&self) -> Vec<String> {
        if self.legs.is_empty() {
            vec![self.iface.clone()]
        } else {
            self.legs.clone()
        }
    }
}

/// The instance `iface` belongs to: its own name when it is an instance's
/// first interface (or no instance knows it), else the first interface of
/// the appliance instance that guards it as another leg. Commands given any
/// leg of an appliance find its pins, state and socket through this.
pub fn instance_of(run_dir: &Path, iface: &str) -> String {
    if path(run_dir, iface).exists() {
        return iface.to_string();
    }
    let Ok(entries) = fs::read_dir(run_dir) else {
        return iface.to_string();
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        if let Ok(st) = load(&p)
            && st.legs.iter().any(|l| l == iface)
        {
            return st.iface;
        }
    }
    iface.to_string()
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
                direction: String::new(),
            },
        );
        slots.insert(
            4,
            RuleKey {
                role: "av-edge-external".into(),
                service: "STUN".into(),
                proto: "udp".into(),
                port_start: 3478,
                port_end: 3478,
                direction: "outbound".into(),
            },
        );
        let s = State {
            pid: 42,
            iface: "eth9".into(),
            legs: vec!["eth9".into(), "eth10".into()],
            slots,
            bpffs: Some("/srv/bpf".into()),
            ..State::default()
        };
        store(&p, &s).expect("store");
        let back = load(&p).expect("load");
        assert_eq!(back.pid, 42);
        assert_eq!(back.bpffs, Some(PathBuf::from("/srv/bpf")), "bpffs");
        assert_eq!(back.registry().get(3).map(|k| k.port_start), Some(5061));
        assert_eq!(
            back.registry().get(4).map(|k| k.direction.as_str()),
            Some("outbound")
        );
        assert_eq!(back.legs(), ["eth9", "eth10"]);
        // Any leg names the instance; an unknown interface names itself.
        assert_eq!(instance_of(&dir, "eth10"), "eth9");
        assert_eq!(instance_of(&dir, "eth9"), "eth9");
        assert_eq!(instance_of(&dir, "eth11"), "eth11");
        // A file written before directions and legs existed reads back.
        fs::write(
            path(&dir, "old0"),
            r#"{"pid":1,"iface":"old0","slots":{"1":{"role":"a","service":"s","proto":"tcp","port_start":1,"port_end":2}}}"#,
        )
        .expect("old state");
        let old = load(&path(&dir, "old0")).expect("an old state file loads");
        assert_eq!(old.legs(), ["old0"]);
        assert_eq!(old.bpffs, None, "an old state file names no bpffs");
        assert_eq!(
            old.registry().get(1).map(|k| k.direction.as_str()),
            Some("")
        );
        let _ = fs::remove_dir_all(dir);
    }
}
