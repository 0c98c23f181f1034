//! Reading a running (or crashed) instance from outside: its pins and state
//! file, found from any of its interfaces. `stats` and `top` use it; neither
//! talks to the daemon.

use std::path::{Path, PathBuf};

use aya::maps::{Map, MapData, PerCpuArray};
use classifier_common::{Counter, map_names};

use crate::{
    counters::{self, Snapshot},
    loader,
    state::{self, State},
};

/// An instance as its pins and state file describe it.
pub struct PinnedInstance {
    /// Its first interface, which names its pins, state and socket.
    pub name: String,
    pub dir: PathBuf,
    pub state: State,
}

impl PinnedInstance {
    /// The instance `iface` belongs to (any of its legs), if anything is
    /// pinned for it.
    pub fn find(bpffs: &Path, iface: &str) -> Option<PinnedInstance> {
        let run_dir = Path::new(state::RUN_DIR);
        let name = state::instance_of(run_dir, iface);
        let dir = loader::pin_dir(bpffs, &name);
        if !dir.exists() {
            return None;
        }
        let state = state::load(&state::path(run_dir, &name)).unwrap_or_default();
        Some(PinnedInstance { name, dir, state })
    }

    /// The instance's interfaces, the first naming it.
    pub fn legs(&self) -> Vec<String> {
        let legs = self.state.legs();
        if legs.iter().all(String::is_empty) {
            vec![self.name.clone()]
        } else {
            legs
        }
    }

    /// Every leg's counters, in leg order.
    pub fn snapshots(&self) -> Result<Vec<(String, Snapshot)>, String> {
        let registry = self.state.registry();
        let data =
            MapData::from_pin(self.dir.join(map_names::COUNTERS)).map_err(|e| e.to_string())?;
        let map = Map::from_map_data(data).map_err(|e| e.to_string())?;
        let c: PerCpuArray<MapData, Counter> =
            PerCpuArray::try_from(map).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for (i, leg) in self.legs().into_iter().enumerate() {
            let raw = loader::read_counters(&c, counters::leg_indices(&registry, i as u32))
                .map_err(|e| e.to_string())?;
            out.push((
                leg,
                counters::snapshot(&registry, &counters::rebase(raw, i as u32)),
            ));
        }
        Ok(out)
    }
}
