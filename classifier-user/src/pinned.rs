//! An instance from outside, through its pins and state file, found from
//! any of its interfaces: reading a running (or crashed) one (`stats`,
//! `top`; neither talks to the daemon), and removing what a crashed (or
//! `--keep-attached`) one left (`detach`).

use std::path::{Path, PathBuf};

use aya::maps::{Map, MapData, PerCpuArray};
use classifier_common::{Counter, map_names};

use crate::{
    counters::{self, Snapshot},
    events::control,
    exit,
    iface::{self, BadName},
    loader,
    ownership::{InstanceLock, OwnerError},
    state::{self, State},
    trusted::{self, TrustError},
};

/// An instance as its pins and state file describe it.
pub struct PinnedInstance {
    /// Its first interface, which names its pins, state and socket.
    pub(crate) name: String,
    pub(crate) dir: PathBuf,
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
    pub(crate) fn legs(&self) -> Vec<String> {
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

/// Why `detach` left things as they were (or could not finish).
#[derive(Debug, thiserror::Error)]
pub enum DetachError {
    #[error(transparent)]
    BadName(#[from] BadName),
    #[error("--iface {iface}: nothing pinned under {}", dir.display())]
    NothingPinned { iface: String, dir: PathBuf },
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// A leg's lock is held (a live instance) or cannot be taken.
    #[error("--iface {leg}: {source}")]
    Owner { leg: String, source: OwnerError },
    #[error("--iface {iface}: could not remove {}", dir.display())]
    NotRemoved { iface: String, dir: PathBuf },
}

impl DetachError {
    pub fn exit_code(&self) -> u8 {
        match self {
            DetachError::BadName(_) | DetachError::NothingPinned { .. } => exit::USAGE,
            DetachError::Trust(_) | DetachError::Owner { .. } | DetachError::NotRemoved { .. } => {
                exit::FAILURE
            }
        }
    }
}

/// Removes what the instance `iface` belongs to left pinned (its program
/// detached with the link pins), its state file and its control socket,
/// holding every leg's lock meanwhile, so that the pins of a live instance
/// are never touched. The pins are looked for under `bpffs`, else under the
/// bpffs the instance's state file records. Returns the instance's legs.
pub fn detach(iface: &str, bpffs: Option<&Path>) -> Result<Vec<String>, DetachError> {
    iface::validate(iface)?;
    // Any leg of an appliance names the whole instance: its pins are one
    // set, and detaching one leg would leave the others guarded by a policy
    // nobody manages.
    let run_dir = Path::new(state::RUN_DIR);
    let name = state::instance_of(run_dir, iface);
    let recorded = state::load(&state::path(run_dir, &name)).ok();
    // The instance's own bpffs unless told otherwise: an instance run with
    // `--bpffs` is found without it (the package's prerm passes none).
    let bpffs = bpffs
        .map(Path::to_path_buf)
        .or_else(|| recorded.as_ref().and_then(|s| s.bpffs.clone()))
        .unwrap_or_else(|| PathBuf::from(state::DEFAULT_BPFFS));
    let dir = loader::pin_dir(&bpffs, &name);
    if !dir.exists() {
        return Err(DetachError::NothingPinned {
            iface: iface.to_string(),
            dir,
        });
    }
    trusted::check_existing_dir(&dir)?;
    let legs = recorded
        .as_ref()
        .map_or_else(|| vec![name.clone()], State::legs);
    let mut locks = Vec::new();
    for leg in &legs {
        match InstanceLock::acquire(leg, false) {
            Ok(l) => locks.push(l),
            Err(source) => {
                return Err(DetachError::Owner {
                    leg: leg.clone(),
                    source,
                });
            }
        }
    }
    loader::remove_pins(&dir);
    if let Ok(run_dir) = state::run_dir() {
        let _ = std::fs::remove_file(state::path(&run_dir, &name));
        // The control socket of a daemon that was killed.
        let _ = std::fs::remove_file(control::socket_path(&run_dir, &name));
    }
    for lock in locks {
        lock.release();
    }
    if dir.exists() {
        return Err(DetachError::NotRemoved {
            iface: iface.to_string(),
            dir,
        });
    }
    Ok(legs)
}
