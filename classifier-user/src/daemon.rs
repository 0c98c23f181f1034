//! The running instance: what the signal loop, the link watcher and the
//! metrics endpoint share. It owns the loaded classifier, the policy in
//! force and the links that attach it, and follows its interface: when the
//! interface goes away the links are released and `attached()` turns false;
//! when an interface of that name exists again the same program (same maps,
//! so the same policy and counters) is attached to it.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::programs::{
    links::{FdLink, PinnedLink},
    xdp::XdpLink,
};

use crate::{
    catalog::{Catalog, CatalogError},
    cli::{EXIT_FAILURE, EXIT_USAGE, Mode},
    counters::{self, Snapshot},
    iface,
    loader::{self, Classifier, LoadError, XdpModeArg},
    ownership::OwnerError,
    policy::{self, PolicyError, PolicySpec, SlotRegistry},
    state::{self, State},
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
            RunError::Usage(_) | RunError::Catalog(_) | RunError::Policy(_) => EXIT_USAGE,
            RunError::Load(LoadError::NoInterface(_)) => EXIT_USAGE,
            RunError::Load(_) | RunError::Owner(_) | RunError::Trust(_) | RunError::Runtime(_) => {
                EXIT_FAILURE
            }
        }
    }
}

/// Reads the catalog the daemon was started with.
pub fn read_catalog(path: Option<&Path>) -> Result<Catalog, CatalogError> {
    match path {
        Some(p) => {
            let (catalog, warnings) = Catalog::load(p)?;
            for w in warnings {
                log::warn!("{w}");
            }
            Ok(catalog)
        }
        None => Ok(Catalog::embedded()),
    }
}

/// Reload outcomes, for `portguard_reloads_total`.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReloadCounts {
    pub ok: u64,
    pub error: u64,
}

/// A link that attaches one of portguard's programs: pinned under the pin
/// directory (it outlives the process with --keep-attached or a crash) or
/// held by the process only (no bpffs).
pub enum LinkHold {
    Pinned(PinnedLink),
    Xdp(XdpLink),
    Fd(FdLink),
}

impl LinkHold {
    /// Detaches: the pin goes, then the last descriptor.
    fn release(self) {
        match self {
            LinkHold::Pinned(p) => match p.unpin() {
                Ok(fd) => drop(fd),
                Err(e) => log::warn!("unpinning a link: {e}"),
            },
            LinkHold::Xdp(l) => drop(l),
            LinkHold::Fd(l) => drop(l),
        }
    }
}

/// The XDP and TC links in force.
#[derive(Default)]
pub struct Links {
    pub xdp: Option<LinkHold>,
    pub tc: Option<LinkHold>,
}

/// Wraps a fresh XDP link for keeping: pinned when there is a pin directory.
pub fn hold_xdp(pin_dir: Option<&Path>, link: XdpLink) -> Result<LinkHold, LoadError> {
    match pin_dir {
        Some(dir) => {
            let fd = FdLink::try_from(link).map_err(LoadError::Link)?;
            Ok(LinkHold::Pinned(loader::pin_link(
                dir,
                loader::XDP_LINK_PIN,
                fd,
            )?))
        }
        None => Ok(LinkHold::Xdp(link)),
    }
}

/// Wraps a TC link for keeping: pinned when there is a pin directory.
pub fn hold_tc(pin_dir: Option<&Path>, link: FdLink) -> Result<LinkHold, LoadError> {
    match pin_dir {
        Some(dir) => Ok(LinkHold::Pinned(loader::pin_link(
            dir,
            loader::TC_LINK_PIN,
            link,
        )?)),
        None => Ok(LinkHold::Fd(link)),
    }
}

/// The running instance.
pub struct Daemon {
    pub iface: String,
    pub classifier: Classifier,
    pub registry: SlotRegistry,
    pub spec: PolicySpec,
    pub catalog_path: Option<PathBuf>,
    pub catalog_generation: u32,
    pub rules_per_role: BTreeMap<String, usize>,
    pub xdp_mode: &'static str,
    pub requested_xdp_mode: XdpModeArg,
    pub mode: Mode,
    pub reloads: ReloadCounts,
    pub state_path: Option<PathBuf>,
    pub pin_dir: Option<PathBuf>,
    pub links: Links,
    /// The index of the interface the links are on (0 while detached).
    pub ifindex: u32,
    /// The last re-attach failure logged, so a retry every second does not
    /// repeat it.
    pub attach_error: Option<String>,
    /// How long the last successful reload took from reading the catalog to the flip.
    pub last_swap: Option<Duration>,
    /// Packet events: the ring reader, the store and the control socket.
    pub events: crate::events::Events,
}

impl Daemon {
    /// Whether the XDP program is attached to the interface right now.
    pub fn attached(&self) -> bool {
        self.links.xdp.is_some()
    }

    /// Re-reads the catalog; on any error the policy in force stays.
    pub fn reload(&mut self) -> Result<u32, RunError> {
        let started = Instant::now();
        let result = (|| {
            let catalog = read_catalog(self.catalog_path.as_deref())?;
            let mut registry = self.registry.clone();
            let compiled = policy::compile(&catalog, &self.spec, &mut registry)?;
            let generation = self.catalog_generation + 1;
            self.classifier.install(&compiled, generation)?;
            self.registry = registry;
            self.catalog_generation = generation;
            self.rules_per_role = compiled.rules_per_role;
            Ok::<u32, RunError>(generation)
        })();
        match &result {
            Ok(g) => {
                self.reloads.ok += 1;
                self.last_swap = Some(started.elapsed());
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

    pub fn snapshot(&mut self) -> Result<Snapshot, LoadError> {
        let raw = self
            .classifier
            .counters(counters::indices(&self.registry))?;
        Ok(counters::snapshot(&self.registry, &raw))
    }

    pub fn save_state(&self) {
        let Some(path) = &self.state_path else { return };
        let s = State {
            pid: std::process::id(),
            iface: self.iface.clone(),
            xdp_mode: self.xdp_mode.to_string(),
            mode: format!("{:?}", self.mode).to_lowercase(),
            catalog: self.catalog_path.clone(),
            catalog_generation: self.catalog_generation,
            slots: self.registry.slots().clone(),
        };
        if let Err(e) = state::store(path, &s) {
            log::warn!("could not write {}: {e}", path.display());
        }
    }

    /// Attaches the loaded programs to the interface as it is now.
    fn attach_fresh(&mut self) -> Result<(), LoadError> {
        let (link, mode) = self
            .classifier
            .attach_xdp(&self.iface, self.requested_xdp_mode)?;
        let xdp = hold_xdp(self.pin_dir.as_deref(), link)?;
        let tc = match self.classifier.attach_tc(&self.iface) {
            Ok(Some(l)) => Some(hold_tc(self.pin_dir.as_deref(), l)?),
            Ok(None) => None,
            Err(e) => {
                log::warn!(
                    "replies to the host's own connections will not be recognised on {}: attaching the TC egress recorder failed: {e}",
                    self.iface
                );
                None
            }
        };
        self.links = Links { xdp: Some(xdp), tc };
        self.xdp_mode = mode;
        Ok(())
    }

    /// Releases the links (detaching the programs) unless `keep`, in which
    /// case pinned links stay attached for the next run.
    pub fn release_links(&mut self, keep: bool) {
        let links = std::mem::take(&mut self.links);
        for l in [links.xdp, links.tc].into_iter().flatten() {
            if keep {
                drop(l);
            } else {
                l.release();
            }
        }
        self.ifindex = 0;
    }

    /// Brings the attachment in line with the interface: called on every
    /// link event and once a second. The kernel's interface table is the
    /// truth; the events only make the check prompt.
    pub fn follow_interface(&mut self) {
        let now = iface::index(&self.iface);
        if self.attached() && now == self.ifindex {
            return;
        }
        if self.attached() {
            log::error!(
                "{} (ifindex {}) went away: nothing is attached and portguard_xdp_attached is 0 until an interface named {} exists again",
                self.iface,
                self.ifindex,
                self.iface
            );
            // The links point at a deleted device: drop them and their pins
            // so that no later start tries to update a defunct link.
            self.release_links(false);
        }
        if now == 0 {
            return;
        }
        match self.attach_fresh() {
            Ok(()) => {
                self.ifindex = now;
                self.attach_error = None;
                log::info!(
                    "{} is back (ifindex {now}): catalog generation {} attached again ({} XDP), counters kept",
                    self.iface,
                    self.catalog_generation,
                    self.xdp_mode
                );
                self.save_state();
            }
            Err(e) => {
                let msg = e.to_string();
                if self.attach_error.as_deref() != Some(msg.as_str()) {
                    log::error!(
                        "re-attaching to {} (ifindex {now}) failed, retrying every second: {msg}",
                        self.iface
                    );
                    self.attach_error = Some(msg);
                }
            }
        }
    }
}
