//! The running instance, from start to shutdown: [`Daemon::start`] checks
//! the options, takes the interfaces' locks, loads the program (reusing what
//! a previous run pinned), installs the policy and attaches it to every leg
//! (one interface on a host, several on an appliance); [`Daemon::serve`]
//! runs the signal loop, the metrics endpoint and the events, and follows
//! the legs: when a leg's interface goes away its links are released and it
//! counts as detached; when an interface of that name exists again the same
//! program (same maps, so the same policy and counters) is attached to it;
//! then it shuts down, detaching or keeping the program attached.

mod links;
mod options;
mod serve;

use std::{
    collections::BTreeMap,
    io,
    net::TcpListener,
    path::{Path, PathBuf},
    time::Instant,
};

use self::{
    links::{Leg, LinkHold, Links, PinCleanup, live_pinned_link},
    options::{metrics_on_protected_iface, own_addresses, roles_text},
};
pub use self::{options::Options, serve::Outcome};
use crate::{
    catalog::{Catalog, CatalogError},
    counters::{self, Snapshot},
    events::{EventSettings, Events},
    exit,
    flow_table::{self, FlowFigures},
    iface,
    loader::{self, AttachMode, Classifier, LoadError},
    ownership::{InstanceLock, OwnerError},
    policy::{self, PolicyError, PolicySpec, Prefix, SlotRegistry},
    routes, state,
    state::State,
    trusted::{self, TrustError},
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
/// logged), or the embedded one.
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
    /// Starts an instance: everything that can be checked without
    /// privileges is checked first (so a typo never touches an interface),
    /// then each leg's lock is taken (until then nothing of another
    /// instance's is touched, `--clean-start` included), the program is
    /// loaded with the pinned maps (policy, counters and flows survive), the
    /// policy installed and every leg attached, taking over the links a
    /// previous run left pinned.
    pub fn start(options: Options) -> Result<Daemon, RunError> {
        let spec = options.spec();
        options.check(&spec)?;
        if spec.mgmt.is_empty() {
            log::warn!(
                "--no-default-mgmt without --mgmt: no management allowance; a catalog without SSH can lock you out"
            );
        }
        let catalog = read_catalog(options.catalog.as_deref())?;
        let mut ifindexes = Vec::new();
        for name in &options.ifaces {
            let ifindex = iface::index(name);
            if ifindex == 0 {
                return Err(RunError::Usage(format!(
                    "--iface {name}: no such interface"
                )));
            }
            ifindexes.push(ifindex);
        }
        let pins = match loader::ensure_bpffs(&options.bpffs) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(RunError::Usage(format!(
                    "--bpffs {}: no such directory",
                    options.bpffs.display()
                )));
            }
            Err(e) => {
                log::warn!(
                    "{}: not a bpffs and could not mount one ({e}); running without pins: `stats`, `detach` and restarts without a gap are unavailable",
                    options.bpffs.display()
                );
                false
            }
        };
        // A failure drops the locks taken so far.
        let mut locks = Vec::new();
        for name in &options.ifaces {
            locks.push(InstanceLock::acquire(name, options.clean_start)?);
        }
        match Self::start_locked(options, spec, catalog, &ifindexes, pins) {
            Ok(mut daemon) => {
                daemon.locks = locks;
                Ok(daemon)
            }
            Err(e) => {
                for lock in locks {
                    lock.release();
                }
                Err(e)
            }
        }
    }

    /// The start once the locks are ours.
    fn start_locked(
        options: Options,
        mut spec: PolicySpec,
        catalog: Catalog,
        ifindexes: &[u32],
        pins: bool,
    ) -> Result<Daemon, RunError> {
        let primary = options.ifaces[0].clone();
        let state_path = state::path(&state::run_dir()?, &primary);
        let pin_dir = if pins {
            Some(trusted::private_dir(
                &options.bpffs,
                &["portguard", &primary],
            )?)
        } else {
            None
        };
        // Pins (and the directory) this start creates are removed again if
        // it fails before every leg is attached.
        let mut cleanup = PinCleanup {
            dir: pin_dir.clone().unwrap_or_default(),
            armed: pin_dir
                .as_ref()
                .is_some_and(|d| options.clean_start || !d.join(loader::XDP_LINK_PIN).exists()),
        };
        let mut registry = SlotRegistry::default();
        let mut previous_xdp_mode = "unknown";
        if let Some(dir) = &pin_dir {
            if options.clean_start {
                loader::remove_pins(dir);
                let _ = std::fs::remove_file(&state_path);
                // remove_pins took the (empty) directories too.
                trusted::private_dir(&options.bpffs, &["portguard", &primary])?;
            } else if let Ok(previous) = state::load(&state_path) {
                registry = previous.registry();
                previous_xdp_mode = if previous.xdp_mode == "generic" {
                    "generic"
                } else {
                    "native"
                };
            }
        }
        // Bound before attaching: a busy address must fail before an
        // interface changes.
        let metrics_listener = TcpListener::bind(options.metrics_addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| {
                RunError::Runtime(format!("--metrics-addr {}: {e}", options.metrics_addr))
            })?;
        for name in &options.ifaces {
            if let Some(w) = metrics_on_protected_iface(options.metrics_addr, name) {
                log::warn!("{w}");
            }
        }
        if spec.appliance {
            spec.profile_legs = profile_legs(&spec, ifindexes);
            for p in &spec.profiles {
                match spec.profile_legs.get(&p.prefix) {
                    Some(&leg) => log::info!(
                        "--profile {}: behind {} (its outbound rows apply to packets arriving there)",
                        p.prefix,
                        options.ifaces[leg as usize]
                    ),
                    None => log::warn!(
                        "--profile {}: no route to it leaves by a leg ({}), so its outbound rows apply nowhere until one does",
                        p.prefix,
                        options.ifaces.join(", ")
                    ),
                }
            }
        }
        let compiled = policy::compile(&catalog, &spec, &mut registry)?;

        let mut classifier = Classifier::load_with(pin_dir.as_deref(), &options.flow_limits)?;
        let previous_generation = classifier
            .config()?
            .gens
            .iter()
            .map(|g| g.catalog_generation)
            .max()
            .unwrap_or(0);
        let catalog_generation = previous_generation + 1;
        classifier.install(&compiled, catalog_generation)?;
        let events = Events::new(
            &primary,
            &mut classifier,
            registry.clone(),
            EventSettings {
                rate: options.events_rate,
                pass: options.events_pass,
                roles: options.roles.clone(),
                catalog: options.catalog.clone(),
                mode: mode_name(options.monitor).to_string(),
                client_media_ports: options.client_media_ports,
                run_dir: PathBuf::from(state::RUN_DIR),
            },
        )?;
        let profiles = compiled.profiles.len();
        let mut daemon = Daemon {
            iface: primary,
            legs: options
                .ifaces
                .iter()
                .zip(ifindexes)
                .enumerate()
                .map(|(i, (name, &ifindex))| Leg::new(name, i as u32, ifindex))
                .collect(),
            classifier,
            registry,
            spec,
            catalog_path: options.catalog,
            catalog,
            catalog_generation,
            rules_per_role: compiled.rules_per_role,
            requested_xdp_mode: options.xdp_mode,
            previous_xdp_mode,
            monitor: options.monitor,
            reloads: ReloadCounts::default(),
            state_path: pin_dir.is_some().then_some(state_path),
            pin_dir,
            events,
            flow_figures: FlowFigures::default(),
            metrics_listener: Some(metrics_listener),
            keep_attached: options.keep_attached,
            locks: Vec::new(),
        };
        // Before any attach, so that every leg's first packet is counted as
        // its own.
        daemon.publish_legs()?;
        for (i, &ifindex) in ifindexes.iter().enumerate() {
            daemon.attach_leg(i, ifindex)?;
        }
        cleanup.armed = false;
        log::info!(
            "portguard {} on {} ({} XDP), {}, {profiles} profile(s), catalog generation {catalog_generation}",
            if daemon.monitor {
                "monitoring"
            } else {
                "enforcing"
            },
            options.ifaces.join(", "),
            daemon
                .legs
                .iter()
                .map(|l| l.xdp_mode)
                .collect::<Vec<_>>()
                .join(", "),
            roles_text(&daemon.spec),
        );
        daemon.sweep_flows();
        daemon.save_state();
        Ok(daemon)
    }

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
            let catalog = read_catalog(self.catalog_path.as_deref())?;
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
    fn follow_addresses(&mut self) {
        if !self.spec.appliance {
            return;
        }
        let now = own_addresses();
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

    /// Brings the attachment in line with the interfaces: called on every
    /// link event and once a second. The kernel's interface table is the
    /// truth; the events only make the check prompt.
    fn follow_interface(&mut self) {
        let mut changed = false;
        for i in 0..self.legs.len() {
            changed |= self.follow_leg(i);
        }
        if changed {
            if let Err(e) = self.publish_legs() {
                log::error!(
                    "writing the legs' interface indexes: {e}; counters may be labelled with the wrong leg"
                );
            }
            self.save_state();
        }
        self.follow_addresses();
        self.follow_routes();
    }

    /// Appliance mode: brings the leg each `--profile` prefix sits behind
    /// (where its outbound rows apply) in line with the kernel's routes.
    /// Called with `follow_interface`; a change is a policy swap like a
    /// reload.
    fn follow_routes(&mut self) {
        if !self.spec.appliance {
            return;
        }
        let ifindexes: Vec<u32> = self.legs.iter().map(|l| l.ifindex).collect();
        let now = profile_legs(&self.spec, &ifindexes);
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

    /// `PREFIX -> LEG` for every profile prefix, for the log.
    fn legs_text(&self) -> String {
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
        match self.attach_leg(i, now) {
            Ok(()) => {
                self.legs[i].attach_error = None;
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
}
