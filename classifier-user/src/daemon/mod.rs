//! The running instance, from start to shutdown: [`Daemon::start`] checks
//! the options, takes the interfaces' locks, loads the program (reusing what
//! a previous run pinned), installs the policy and attaches it to every leg
//! (one interface on a host, several on an appliance); [`Daemon::serve`]
//! runs the signal loop, the metrics endpoint and the events, and follows
//! the legs: when a leg's interface goes away its links are released and it
//! counts as detached; when an interface of that name exists again the same
//! program (same maps, so the same policy and counters) is attached to it;
//! then it shuts down, detaching or keeping the program attached.

mod follow;
mod links;
mod options;
mod serve;
mod start;

use std::{
    collections::BTreeMap,
    net::TcpListener,
    path::{Path, PathBuf},
    time::Instant,
};

use self::links::{Leg, LinkHold, Links, live_pinned_link};
pub use self::{options::Options, serve::Outcome};
use crate::{
    catalog::{Catalog, CatalogError, Edition},
    counters::{self, Snapshot},
    events::Events,
    exit,
    flow_table::{self, FlowFigures},
    loader::{self, AttachMode, Classifier, LoadError},
    ownership::{InstanceLock, OwnerError},
    policy::{self, PolicyError, PolicySpec, Prefix, SlotRegistry},
    routes, state,
    state::State,
    trusted::TrustError,
};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Owner(#[from] OwnerError),
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error("{0}")]
    Runtime(String),
}

impl RunError {
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Usage(_) | RunError::Catalog(_) | RunError::Policy(_) => exit::USAGE,
            RunError::Load(LoadError::NoInterface(_)) => exit::USAGE,
            RunError::Load(_) | RunError::Owner(_) | RunError::Trust(_) | RunError::Runtime(_) => {
                exit::FAILURE
            }
        }
    }
}

/// Reads the catalog the daemon was started with: the file (its warnings
/// logged), or the embedded one of `edition`.
pub fn read_catalog(path: Option<&Path>, edition: Edition) -> Result<Catalog, CatalogError> {
    match path {
        Some(p) => {
            let (catalog, warnings) = Catalog::load(p)?;
            for w in warnings {
                log::warn!("{w}");
            }
            Ok(catalog)
        }
        None => Ok(Catalog::edition(edition)),
    }
}

/// The mode as the state file and the events name it.
fn mode_name(monitor: bool) -> &'static str {
    if monitor { "monitor" } else { "enforce" }
}

/// Reload outcomes, for `portguard_reloads_total`.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ReloadCounts {
    pub(crate) ok: u64,
    pub(crate) error: u64,
}

/// The leg each `--profile` prefix's route leaves by, for legs on
/// `ifindexes`.
fn profile_legs(spec: &PolicySpec, ifindexes: &[u32]) -> BTreeMap<Prefix, u32> {
    let prefixes: Vec<Prefix> = spec.profiles.iter().map(|p| p.prefix).collect();
    routes::profile_legs(&prefixes, ifindexes)
}

/// The running instance.
pub struct Daemon {
    /// The first leg's name: the instance's name (pins, state, socket).
    iface: String,
    legs: Vec<Leg>,
    classifier: Classifier,
    registry: SlotRegistry,
    spec: PolicySpec,
    catalog_path: Option<PathBuf>,
    /// The embedded edition read when there is no catalog file.
    edition: Edition,
    /// The last catalog compiled into force: what a change of the box's own
    /// addresses or routes (appliance mode) is recompiled from, without
    /// re-reading the file.
    catalog: Catalog,
    catalog_generation: u32,
    rules_per_role: BTreeMap<String, usize>,
    requested_xdp_mode: AttachMode,
    /// The XDP mode a previous run's state file records: the mode of a
    /// link taken over from it.
    previous_xdp_mode: &'static str,
    monitor: bool,
    reloads: ReloadCounts,
    state_path: Option<PathBuf>,
    pin_dir: Option<PathBuf>,
    /// Packet events: the ring reader, the store and the control socket.
    events: Events,
    /// The flow tables as the last sweep found them.
    flow_figures: FlowFigures,
    /// Bound at start, before anything is attached; `serve` takes it.
    metrics_listener: Option<TcpListener>,
    keep_attached: bool,
    /// One per leg, held until shutdown.
    locks: Vec<InstanceLock>,
}

impl Daemon {
    /// Attaches the loaded programs to leg `i`'s interface, whose index is
    /// `ifindex` now: at start, and when the interface comes back. A link a
    /// previous run left pinned on that interface is taken over with one
    /// program swap (`BPF_LINK_UPDATE`: the interface is never without a
    /// program); otherwise the programs are attached afresh (`--xdp-mode`
    /// as given) and the links pinned.
    fn attach_leg(&mut self, i: usize, ifindex: u32) -> Result<(), RunError> {
        let leg = &self.legs[i];
        let (name, xdp_pin, tc_pin) = (leg.name.clone(), leg.xdp_pin(), leg.tc_pin());
        let pin_dir = self.pin_dir.clone();
        let (xdp_link, xdp_mode) = match live_pinned_link(pin_dir.as_deref(), &xdp_pin, ifindex)? {
            Some(link) => {
                log::info!("taking over the XDP program a previous run left on {name}");
                (self.classifier.take_over_xdp(link)?, self.previous_xdp_mode)
            }
            None => self.classifier.attach_xdp(&name, self.requested_xdp_mode)?,
        };
        let xdp = LinkHold::xdp(pin_dir.as_deref(), &xdp_pin, xdp_link)?;
        let tc_link = match live_pinned_link(pin_dir.as_deref(), &tc_pin, ifindex)? {
            Some(link) => Some(self.classifier.take_over_tc(link)?),
            None => match self.classifier.attach_tc(&name) {
                Ok(l) => l,
                Err(e) => {
                    log::warn!(
                        "replies to the host's own connections will not be recognised on {name}: attaching the TC egress recorder failed: {e}"
                    );
                    None
                }
            },
        };
        let tc = match tc_link {
            Some(l) => Some(LinkHold::tc(pin_dir.as_deref(), &tc_pin, l)?),
            None => None,
        };
        let leg = &mut self.legs[i];
        leg.links = Links { xdp: Some(xdp), tc };
        leg.xdp_mode = xdp_mode;
        leg.ifindex = ifindex;
        if let Some(warning) = loader::vlan_offload_warning(&name) {
            log::warn!("{warning}");
        }
        Ok(())
    }

    /// Stops enforcing: detaches every leg and removes the pins and the
    /// state file, or with `keep` (and pins) leaves the program attached
    /// and pinned for the next run; then gives up the interfaces' locks.
    /// Returns every leg's counters as they were just before, for the
    /// caller to print after the detach: a closed stdout can never keep the
    /// program attached.
    fn shutdown(&mut self, keep: bool) -> Result<Vec<(String, Snapshot)>, LoadError> {
        let snapshots = self.snapshots();
        let was_attached = self.attached();
        let names = self
            .legs
            .iter()
            .map(|l| l.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        match self.pin_dir.clone().filter(|_| keep) {
            Some(dir) => {
                self.release_links(true);
                if !was_attached {
                    log::warn!(
                        "--keep-attached: not every interface has the program ({names}); what is attached and the policy and counters stay pinned under {} for the next run",
                        dir.display()
                    );
                } else if dir.join(loader::XDP_LINK_PIN).exists() {
                    log::info!(
                        "--keep-attached: leaving the program attached and pinned under {}",
                        dir.display()
                    );
                } else {
                    log::error!(
                        "--keep-attached: {} has vanished, so nothing stays attached to {names}",
                        dir.join(loader::XDP_LINK_PIN).display(),
                    );
                }
            }
            None => {
                self.release_links(false);
                if let Some(dir) = &self.pin_dir {
                    loader::remove_pins(dir);
                }
                if let Some(path) = &self.state_path {
                    let _ = std::fs::remove_file(path);
                }
                log::info!("detached from {names}");
            }
        }
        for lock in self.locks.drain(..) {
            lock.release();
        }
        snapshots
    }

    /// The legs, in `--iface` order.
    pub(crate) fn legs(&self) -> &[Leg] {
        &self.legs
    }

    pub(crate) fn catalog_generation(&self) -> u32 {
        self.catalog_generation
    }

    /// Rules per role in force, for `portguard_catalog_rules`.
    pub(crate) fn rules_per_role(&self) -> &BTreeMap<String, usize> {
        &self.rules_per_role
    }

    pub(crate) fn reloads(&self) -> ReloadCounts {
        self.reloads
    }

    pub(crate) fn flow_figures(&self) -> &FlowFigures {
        &self.flow_figures
    }

    pub(crate) fn events(&self) -> &Events {
        &self.events
    }

    /// Whether the XDP program is attached to every leg right now.
    fn attached(&self) -> bool {
        self.legs.iter().all(Leg::attached)
    }

    /// Re-reads the catalog; on any error the policy in force stays.
    fn reload(&mut self) -> Result<u32, RunError> {
        let started = Instant::now();
        let result = (|| {
            let catalog = read_catalog(self.catalog_path.as_deref(), self.edition)?;
            let generation = self.install(catalog)?;
            Ok::<u32, RunError>(generation)
        })();
        match &result {
            Ok(g) => {
                self.reloads.ok += 1;
                log::info!(
                    "reload: catalog generation {g} in force ({:?})",
                    started.elapsed()
                );
                self.save_state();
            }
            Err(e) => {
                self.reloads.error += 1;
                log::error!("reload rejected, the policy in force stays:\n{e}");
            }
        }
        result
    }

    /// Compiles `catalog` with the flags in force and swaps it in.
    fn install(&mut self, catalog: Catalog) -> Result<u32, RunError> {
        let mut registry = self.registry.clone();
        let compiled = policy::compile(&policy::resolve(&catalog, &self.spec)?, &mut registry)?;
        let generation = self.catalog_generation + 1;
        self.classifier.install(&compiled, generation)?;
        self.registry = registry;
        self.catalog_generation = generation;
        self.rules_per_role = compiled.rules_per_role;
        self.catalog = catalog;
        Ok(generation)
    }

    /// Every leg's counters, in leg order.
    pub(crate) fn snapshots(&mut self) -> Result<Vec<(String, Snapshot)>, LoadError> {
        let mut out = Vec::new();
        for (name, index) in self
            .legs
            .iter()
            .map(|l| (l.name.clone(), l.index))
            .collect::<Vec<_>>()
        {
            let raw = self
                .classifier
                .counters(counters::leg_indices(&self.registry, index))?;
            out.push((
                name,
                counters::snapshot(&self.registry, &counters::rebase(raw, index)),
            ));
        }
        Ok(out)
    }

    fn save_state(&self) {
        let Some(path) = &self.state_path else { return };
        let s = State {
            pid: std::process::id(),
            iface: self.iface.clone(),
            legs: self.legs.iter().map(|l| l.name.clone()).collect(),
            xdp_mode: self
                .legs
                .first()
                .map_or("unknown", |l| l.xdp_mode)
                .to_string(),
            mode: mode_name(self.monitor).to_string(),
            catalog: self.catalog_path.clone(),
            catalog_generation: self.catalog_generation,
            slots: self.registry.slots().clone(),
            // pin_dir is BPFFS/portguard/IF.
            bpffs: self
                .pin_dir
                .as_deref()
                .and_then(|d| d.parent()?.parent())
                .map(|b| std::fs::canonicalize(b).unwrap_or_else(|_| b.to_path_buf())),
        };
        if let Err(e) = state::store(path, &s) {
            log::warn!("could not write {}: {e}", path.display());
        }
    }

    /// Releases the links (detaching the programs) unless `keep`, in which
    /// case pinned links stay attached for the next run.
    fn release_links(&mut self, keep: bool) {
        for i in 0..self.legs.len() {
            self.release_leg(i, keep);
        }
    }

    fn release_leg(&mut self, i: usize, keep: bool) {
        let leg = &mut self.legs[i];
        std::mem::take(&mut leg.links).release(keep);
        leg.ifindex = 0;
    }

    /// Tells the packet path and the event reader which ifindex is which
    /// leg.
    fn publish_legs(&mut self) -> Result<(), LoadError> {
        self.events.set_legs(
            self.legs
                .iter()
                .map(|l| (l.ifindex, l.name.clone()))
                .collect(),
        );
        let ifindexes: Vec<u32> = self.legs.iter().map(|l| l.ifindex).collect();
        self.classifier.set_legs(&ifindexes)
    }

    /// Removes idle flow entries and counts the tables (every few seconds).
    fn sweep_flows(&mut self) {
        let result = self
            .classifier
            .flow_tables()
            .map_err(|e| e.to_string())
            .and_then(|t| {
                t.figures(flow_table::now_s(), true)
                    .map_err(|e| e.to_string())
            });
        match result {
            Ok((figures, _swept)) => self.flow_figures = figures,
            Err(e) => log::warn!("sweeping the flow tables: {e}"),
        }
    }
}
