//! Starting an instance: the options checked, the locks taken, the program
//! loaded with what a previous run pinned, the policy installed and every
//! leg attached.

use std::{io, net::TcpListener, path::PathBuf};

use super::{
    Daemon, Options, ReloadCounts, RunError,
    links::{Leg, PinCleanup},
    mode_name,
    options::{metrics_on_protected_iface, roles_text},
    profile_legs, read_catalog,
};
use crate::{
    catalog::Catalog,
    events::{EventSettings, Events},
    flow_table::FlowFigures,
    iface,
    loader::{self, Classifier},
    ownership::InstanceLock,
    policy::{self, Placement, PolicySpec, SlotRegistry},
    state, trusted,
};

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
        let catalog = read_catalog(options.catalog.as_deref(), options.edition)?;
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
        if spec.placement == Placement::Appliance {
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
        let compiled = policy::compile(&policy::resolve(&catalog, &spec)?, &mut registry)?;

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
                edition: options.edition,
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
            edition: options.edition,
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
}
