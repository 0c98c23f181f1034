//! The running instance: what the signal loop, the link watcher and the
//! metrics endpoint share. It owns the loaded classifier, the policy in
//! force and the links that attach it to each of its interfaces (legs: one
//! on a host, several on an appliance), and follows them: when a leg's
//! interface goes away its links are released and it counts as detached;
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
    counters::{self, Snapshot},
    exit,
    flow_table::{self, FlowFigures},
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
            RunError::Usage(_) | RunError::Catalog(_) | RunError::Policy(_) => exit::USAGE,
            RunError::Load(LoadError::NoInterface(_)) => exit::USAGE,
            RunError::Load(_) | RunError::Owner(_) | RunError::Trust(_) | RunError::Runtime(_) => {
                exit::FAILURE
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

/// The mode as the state file and the events name it.
pub fn mode_name(monitor: bool) -> &'static str {
    if monitor { "monitor" } else { "enforce" }
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

/// Wraps a fresh XDP link for keeping: pinned as `pin` when there is a pin
/// directory.
pub fn hold_xdp(pin_dir: Option<&Path>, pin: &str, link: XdpLink) -> Result<LinkHold, LoadError> {
    match pin_dir {
        Some(dir) => {
            let fd = FdLink::try_from(link).map_err(LoadError::Link)?;
            Ok(LinkHold::Pinned(loader::pin_link(dir, pin, fd)?))
        }
        None => Ok(LinkHold::Xdp(link)),
    }
}

/// Wraps a TC link for keeping: pinned as `pin` when there is a pin directory.
pub fn hold_tc(pin_dir: Option<&Path>, pin: &str, link: FdLink) -> Result<LinkHold, LoadError> {
    match pin_dir {
        Some(dir) => Ok(LinkHold::Pinned(loader::pin_link(dir, pin, link)?)),
        None => Ok(LinkHold::Fd(link)),
    }
}

/// One interface the instance guards.
pub struct Leg {
    pub name: String,
    /// Its index in `--iface` order: the set of counters it uses.
    pub index: u32,
    /// The interface's index while attached, 0 while detached.
    pub ifindex: u32,
    pub links: Links,
    pub xdp_mode: &'static str,
    /// The last re-attach failure logged, so a retry every second does not
    /// repeat it.
    pub attach_error: Option<String>,
}

impl Leg {
    pub fn attached(&self) -> bool {
        self.links.xdp.is_some()
    }

    pub fn xdp_pin(&self) -> String {
        loader::link_pin_name(loader::XDP_LINK_PIN, self.index, &self.name)
    }

    pub fn tc_pin(&self) -> String {
        loader::link_pin_name(loader::TC_LINK_PIN, self.index, &self.name)
    }
}

/// The running instance.
pub struct Daemon {
    /// The first leg's name: the instance's name (pins, state, socket).
    pub iface: String,
    pub legs: Vec<Leg>,
    pub classifier: Classifier,
    pub registry: SlotRegistry,
    pub spec: PolicySpec,
    pub catalog_path: Option<PathBuf>,
    pub catalog_generation: u32,
    pub rules_per_role: BTreeMap<String, usize>,
    pub requested_xdp_mode: XdpModeArg,
    /// `--mode monitor`: drops are counted as would-drops and passed.
    pub monitor: bool,
    pub reloads: ReloadCounts,
    pub state_path: Option<PathBuf>,
    pub pin_dir: Option<PathBuf>,
    /// The last catalog compiled into force: what a change of the box's own
    /// addresses (appliance mode) is recompiled from, without re-reading
    /// the file.
    pub catalog: Catalog,
    /// How long the last successful reload took from reading the catalog to the flip.
    pub last_swap: Option<Duration>,
    /// Packet events: the ring reader, the store and the control socket.
    pub events: crate::events::Events,
    /// The flow tables as the last sweep found them.
    pub flow_figures: FlowFigures,
}

impl Daemon {
    /// Whether the XDP program is attached to every leg right now.
    pub fn attached(&self) -> bool {
        self.legs.iter().all(Leg::attached)
    }

    /// Re-reads the catalog; on any error the policy in force stays.
    pub fn reload(&mut self) -> Result<u32, RunError> {
        let started = Instant::now();
        let result = (|| {
            let catalog = read_catalog(self.catalog_path.as_deref())?;
            let generation = self.install(catalog)?;
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

    /// Compiles `catalog` with the flags in force and swaps it in.
    fn install(&mut self, catalog: Catalog) -> Result<u32, RunError> {
        let mut registry = self.registry.clone();
        let compiled = policy::compile(&catalog, &self.spec, &mut registry)?;
        let generation = self.catalog_generation + 1;
        self.classifier.install(&compiled, generation)?;
        self.registry = registry;
        self.catalog_generation = generation;
        self.rules_per_role = compiled.rules_per_role;
        self.catalog = catalog;
        Ok(generation)
    }

    /// Appliance mode: brings the box's own addresses (what its --role rows
    /// and the lockout guard cover) in line with the kernel's. Called on
    /// every netlink event and once a second; a change is a policy swap like
    /// a reload, from the catalog in force.
    pub fn follow_addresses(&mut self) {
        if !self.spec.appliance {
            return;
        }
        let mut now = iface::all_addresses();
        now.sort();
        now.dedup();
        if now == self.spec.local_addrs {
            return;
        }
        let before = std::mem::replace(&mut self.spec.local_addrs, now);
        match self.install(self.catalog.clone()) {
            Ok(g) => {
                log::info!(
                    "the box's own addresses changed ({} now): catalog generation {g} in force",
                    self.spec.local_addrs.len()
                );
                self.save_state();
            }
            Err(e) => {
                log::error!("the box's own addresses changed but the policy could not follow: {e}");
                self.spec.local_addrs = before;
            }
        }
    }

    /// Every leg's counters, in leg order.
    pub fn snapshots(&mut self) -> Result<Vec<(String, Snapshot)>, LoadError> {
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

    /// The counters of every leg added up.
    pub fn snapshot(&mut self) -> Result<Snapshot, LoadError> {
        let mut total = Snapshot::default();
        for (_, s) in self.snapshots()? {
            total.merge(&s);
        }
        Ok(total)
    }

    pub fn save_state(&self) {
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

    /// Attaches the loaded programs to leg `i`'s interface as it is now.
    fn attach_fresh(&mut self, i: usize) -> Result<(), LoadError> {
        let leg = &self.legs[i];
        let (name, xdp_pin, tc_pin) = (leg.name.clone(), leg.xdp_pin(), leg.tc_pin());
        let (link, mode) = self.classifier.attach_xdp(&name, self.requested_xdp_mode)?;
        let xdp = hold_xdp(self.pin_dir.as_deref(), &xdp_pin, link)?;
        let tc = match self.classifier.attach_tc(&name) {
            Ok(Some(l)) => Some(hold_tc(self.pin_dir.as_deref(), &tc_pin, l)?),
            Ok(None) => None,
            Err(e) => {
                log::warn!(
                    "replies to the host's own connections will not be recognised on {name}: attaching the TC egress recorder failed: {e}"
                );
                None
            }
        };
        let leg = &mut self.legs[i];
        leg.links = Links { xdp: Some(xdp), tc };
        leg.xdp_mode = mode;
        Ok(())
    }

    /// Releases the links (detaching the programs) unless `keep`, in which
    /// case pinned links stay attached for the next run.
    pub fn release_links(&mut self, keep: bool) {
        for i in 0..self.legs.len() {
            self.release_leg(i, keep);
        }
    }

    fn release_leg(&mut self, i: usize, keep: bool) {
        let leg = &mut self.legs[i];
        let links = std::mem::take(&mut leg.links);
        for l in [links.xdp, links.tc].into_iter().flatten() {
            if keep {
                drop(l);
            } else {
                l.release();
            }
        }
        leg.ifindex = 0;
    }

    /// Tells the packet path which ifindex is which leg.
    fn publish_legs(&mut self) {
        let ifindexes: Vec<u32> = self.legs.iter().map(|l| l.ifindex).collect();
        if let Err(e) = self.classifier.set_legs(&ifindexes) {
            log::error!(
                "writing the legs' interface indexes: {e}; counters may be labelled with the wrong leg"
            );
        }
        self.events.set_legs(
            self.legs
                .iter()
                .map(|l| (l.ifindex, l.name.clone()))
                .collect(),
        );
    }

    /// Brings the attachment in line with the interfaces: called on every
    /// link event and once a second. The kernel's interface table is the
    /// truth; the events only make the check prompt.
    pub fn follow_interface(&mut self) {
        let mut changed = false;
        for i in 0..self.legs.len() {
            changed |= self.follow_leg(i);
        }
        if changed {
            self.publish_legs();
            self.save_state();
        }
        self.follow_addresses();
        self.follow_routes();
    }

    /// Appliance mode: brings the leg each `--profile` prefix sits behind
    /// (where its outbound rows apply) in line with the kernel's routes.
    /// Called with `follow_interface`; a change is a policy swap like a
    /// reload.
    pub fn follow_routes(&mut self) {
        if !self.spec.appliance {
            return;
        }
        let now = self.resolve_profile_legs();
        if now == self.spec.profile_legs {
            return;
        }
        let before = std::mem::replace(&mut self.spec.profile_legs, now);
        match self.install(self.catalog.clone()) {
            Ok(g) => {
                log::info!(
                    "the routes to the profiles changed ({}): catalog generation {g} in force",
                    self.legs_text()
                );
                self.save_state();
            }
            Err(e) => {
                log::error!(
                    "the routes to the profiles changed but the policy could not follow: {e}"
                );
                self.spec.profile_legs = before;
            }
        }
    }

    /// The leg each `--profile` prefix's route leaves by, now.
    pub fn resolve_profile_legs(&self) -> BTreeMap<policy::Prefix, u32> {
        let prefixes: Vec<policy::Prefix> = self.spec.profiles.iter().map(|p| p.prefix).collect();
        let ifindexes: Vec<u32> = self.legs.iter().map(|l| l.ifindex).collect();
        crate::routes::profile_legs(&prefixes, &ifindexes)
    }

    /// `PREFIX -> LEG` for every profile prefix, for the log.
    pub fn legs_text(&self) -> String {
        let text: Vec<String> = self
            .spec
            .profiles
            .iter()
            .map(|p| match self.spec.profile_legs.get(&p.prefix) {
                Some(&leg) => format!(
                    "{} behind {}",
                    p.prefix,
                    self.legs.get(leg as usize).map_or("?", |l| l.name.as_str())
                ),
                None => format!("{} behind no leg", p.prefix),
            })
            .collect();
        text.join(", ")
    }

    /// Removes idle flow entries and counts the tables (every few seconds).
    pub fn sweep_flows(&mut self) {
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

    /// Follows one leg; true when its attachment changed.
    fn follow_leg(&mut self, i: usize) -> bool {
        let (name, attached, was) = {
            let l = &self.legs[i];
            (l.name.clone(), l.attached(), l.ifindex)
        };
        let now = iface::index(&name);
        if attached && now == was {
            return false;
        }
        if attached {
            log::error!(
                "{name} (ifindex {was}) went away: nothing is attached there and portguard_xdp_attached{{iface=\"{name}\"}} is 0 until an interface named {name} exists again"
            );
            // The links point at a deleted device: drop them and their pins
            // so that no later start tries to update a defunct link.
            self.release_leg(i, false);
        }
        if now == 0 {
            return attached;
        }
        match self.attach_fresh(i) {
            Ok(()) => {
                let leg = &mut self.legs[i];
                leg.ifindex = now;
                leg.attach_error = None;
                log::info!(
                    "{name} is back (ifindex {now}): catalog generation {} attached again ({} XDP), counters kept",
                    self.catalog_generation,
                    self.legs[i].xdp_mode
                );
                true
            }
            Err(e) => {
                let msg = e.to_string();
                let leg = &mut self.legs[i];
                if leg.attach_error.as_deref() != Some(msg.as_str()) {
                    log::error!(
                        "re-attaching to {name} (ifindex {now}) failed, retrying every second: {msg}"
                    );
                    leg.attach_error = Some(msg);
                }
                attached
            }
        }
    }

    /// Called once after start: the packet path and the event reader learn
    /// the legs' interface indexes.
    pub fn started(&mut self) {
        self.publish_legs();
    }
}
