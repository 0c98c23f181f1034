//! What a running instance leaves on disk for `stats`, `reload` and a
//! restarted daemon: the slot registry (which counter is which rule) and its
//! pid. BPF state lives in the pins; this file only names it.

use std::{
    collections::BTreeMap,
    fs, io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::policy::{RuleKey, SlotRegistry};

pub const RUN_DIR: &str = "/run/portguard";

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

pub fn load(path: &Path) -> io::Result<State> {
    let text = fs::read_to_string(path)?;
    serde_json::from_str(&text).map_err(io::Error::other)
}

/// Written to a temporary file and renamed, so a reader never sees half of it.
pub fn store(path: &Path, state: &State) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    fs::write(
        &tmp,
        serde_json::to_vec_pretty(state).map_err(io::Error::other)?,
    )?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips() {
        let dir = std::env::temp_dir().join(format!("pg-state-{}", std::process::id()));
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
