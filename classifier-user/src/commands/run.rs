//! `portguard run`: attach, enforce, reload on SIGHUP, detach on SIGINT/SIGTERM.

use std::{
    collections::BTreeMap,
    ffi::CString,
    fs,
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use aya::programs::links::PinnedLink;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::Mutex,
};

use crate::{
    catalog::{Catalog, CatalogError},
    cli::{EXIT_FAILURE, EXIT_OK, EXIT_USAGE, Mode, RunArgs},
    counters::{self, Snapshot},
    loader::{self, Classifier, LoadError},
    metrics,
    policy::{self, Mgmt, PolicyError, PolicySpec, SlotRegistry},
    state::{self, State},
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
    #[error("{0}")]
    Runtime(String),
}

impl RunError {
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Usage(_) | RunError::Catalog(_) => EXIT_USAGE,
            RunError::Policy(_) => EXIT_USAGE,
            RunError::Load(LoadError::NoInterface(_)) => EXIT_USAGE,
            RunError::Load(_) | RunError::Runtime(_) => EXIT_FAILURE,
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

pub fn spec_from_args(args: &RunArgs) -> PolicySpec {
    let mut mgmt = if args.no_default_mgmt {
        Vec::new()
    } else {
        Mgmt::defaults()
    };
    mgmt.extend(args.mgmt.iter().copied());
    PolicySpec {
        default_roles: if args.role.is_empty() {
            None
        } else {
            Some(args.role.clone())
        },
        profiles: args.profile.clone(),
        mgmt,
        monitor: args.mode == Mode::Monitor,
        drop_echo: args.drop_echo,
        drop_ipsec_on_media: args.drop_ipsec_on_media,
        client_media: args.client_media_ports,
    }
}

/// Reload outcomes, for `portguard_reloads_total`.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReloadCounts {
    pub ok: u64,
    pub error: u64,
}

/// The running instance: everything the signal loop and the metrics endpoint share.
pub struct Daemon {
    pub iface: String,
    pub classifier: Classifier,
    pub registry: SlotRegistry,
    pub spec: PolicySpec,
    pub catalog_path: Option<PathBuf>,
    pub catalog_generation: u32,
    pub rules_per_role: BTreeMap<String, usize>,
    pub xdp_mode: &'static str,
    pub mode: Mode,
    pub reloads: ReloadCounts,
    pub state_path: Option<PathBuf>,
    /// How long the last successful reload took from reading the catalog to the flip.
    pub last_swap: Option<std::time::Duration>,
    /// Packet events: the ring reader, the store and the control socket.
    pub events: crate::events::Events,
}

impl Daemon {
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

    fn save_state(&self) {
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
}

struct PinCleanup {
    dir: PathBuf,
    armed: bool,
}

impl Drop for PinCleanup {
    fn drop(&mut self) {
        if self.armed {
            loader::remove_pins(&self.dir);
        }
    }
}

pub fn run(args: RunArgs) -> u8 {
    match run_inner(args) {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("portguard run: {e}");
            e.exit_code()
        }
    }
}

fn interface_exists(iface: &str) -> bool {
    let Ok(c) = CString::new(iface) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated string.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}

fn run_inner(args: RunArgs) -> Result<(), RunError> {
    let spec = spec_from_args(&args);
    if spec.mgmt.is_empty() {
        log::warn!(
            "--no-default-mgmt without --mgmt: no management allowance; a catalog without SSH can lock you out"
        );
    }
    // Everything that can be checked without privileges is checked first, so
    // a typo never touches the interface.
    let catalog = read_catalog(args.catalog.as_deref())?;
    if !interface_exists(&args.iface) {
        return Err(RunError::Usage(format!(
            "--iface {}: no such interface",
            args.iface
        )));
    }
    let state_path = state::path(Path::new(state::RUN_DIR), &args.iface);
    let pin_dir = loader::pin_dir(&args.bpffs, &args.iface);
    let pins = match loader::ensure_bpffs(&args.bpffs) {
        Ok(()) => true,
        Err(e) => {
            log::warn!(
                "{}: not a bpffs and could not mount one ({e}); running without pins: `stats`, `detach` and restarts without a gap are unavailable",
                args.bpffs.display()
            );
            false
        }
    };
    let mut registry = SlotRegistry::default();
    let mut previous_mode = "unknown";
    if pins && args.clean_start {
        loader::remove_pins(&pin_dir);
        let _ = fs::remove_file(&state_path);
    } else if pins
        && pin_dir.exists()
        && let Ok(previous) = state::load(&state_path)
    {
        registry = previous.registry();
        previous_mode = if previous.xdp_mode == "generic" {
            "generic"
        } else {
            "native"
        };
    }
    // Bind before attaching: a busy address must fail before the interface changes.
    let metrics_listener = std::net::TcpListener::bind(args.metrics_addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| RunError::Runtime(format!("--metrics-addr {}: {e}", args.metrics_addr)))?;
    let compiled = policy::compile(&catalog, &spec, &mut registry)?;

    // Pins this run creates are removed again if it fails before attaching;
    // pins a previous run left (and the program they keep) are never touched.
    let mut cleanup = PinCleanup {
        dir: pin_dir.clone(),
        armed: pins && !pin_dir.join(loader::XDP_LINK_PIN).exists(),
    };
    if pins {
        fs::create_dir_all(&pin_dir)
            .map_err(|e| RunError::Runtime(format!("creating {}: {e}", pin_dir.display())))?;
    }
    let mut classifier = Classifier::load(pins.then_some(pin_dir.as_path()))?;
    let previous_generation = classifier
        .config()?
        .gens
        .iter()
        .map(|g| g.catalog_generation)
        .max()
        .unwrap_or(0);
    let catalog_generation = previous_generation + 1;
    classifier.install(&compiled, catalog_generation)?;

    // Take over a link a previous run left pinned: one atomic program swap.
    let old_xdp = if pins {
        loader::pinned_link(&pin_dir, loader::XDP_LINK_PIN)?
    } else {
        None
    };
    let (xdp_link, xdp_mode) = match old_xdp {
        Some(link) => {
            log::info!(
                "taking over the XDP program a previous run left on {}",
                args.iface
            );
            (classifier.take_over_xdp(link)?, "takeover")
        }
        None => classifier.attach_xdp(&args.iface, args.xdp_mode)?,
    };
    let xdp_mode = if xdp_mode == "takeover" {
        previous_mode
    } else {
        xdp_mode
    };
    let old_tc = if pins {
        loader::pinned_link(&pin_dir, loader::TC_LINK_PIN)?
    } else {
        None
    };
    let tc_link = match old_tc {
        Some(link) => Some(classifier.take_over_tc(link)?),
        None => match classifier.attach_tc(&args.iface) {
            Ok(l) => l,
            Err(e) => {
                log::warn!(
                    "replies to the host's own connections will not be recognised: attaching the TC egress recorder failed: {e}"
                );
                None
            }
        },
    };
    let mut pinned: Vec<PinnedLink> = Vec::new();
    let mut held_xdp = None;
    let mut held_tc = None;
    if pins {
        let fd = aya::programs::links::FdLink::try_from(xdp_link).map_err(LoadError::Link)?;
        pinned.push(loader::pin_link(&pin_dir, loader::XDP_LINK_PIN, fd)?);
        if let Some(tc) = tc_link {
            pinned.push(loader::pin_link(&pin_dir, loader::TC_LINK_PIN, tc)?);
        }
    } else {
        held_xdp = Some(xdp_link);
        held_tc = tc_link;
    }
    cleanup.armed = false;
    log::info!(
        "portguard {} on {} ({xdp_mode} XDP), roles {:?}, {} profile(s), catalog generation {catalog_generation}",
        if spec.monitor {
            "monitoring"
        } else {
            "enforcing"
        },
        args.iface,
        spec.default_roles,
        compiled.profiles.len(),
    );
    if let Some(warning) = loader::vlan_offload_warning(&args.iface) {
        log::warn!("{warning}");
    }

    let events = crate::events::Events::new(
        &args.iface,
        &mut classifier,
        registry.clone(),
        crate::events::EventSettings {
            rate: args.events_rate,
            pass: args.events_pass,
            roles: args.role.clone(),
            catalog: args.catalog.clone(),
            mode: format!("{:?}", args.mode).to_lowercase(),
            run_dir: PathBuf::from(state::RUN_DIR),
        },
    )?;
    let daemon = Daemon {
        events,
        iface: args.iface.clone(),
        classifier,
        registry,
        spec,
        catalog_path: args.catalog.clone(),
        catalog_generation,
        rules_per_role: compiled.rules_per_role,
        xdp_mode,
        mode: args.mode,
        reloads: ReloadCounts::default(),
        state_path: pins.then_some(state_path.clone()),
        last_swap: None,
    };
    daemon.save_state();
    let daemon = Arc::new(Mutex::new(daemon));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| RunError::Runtime(format!("starting the runtime: {e}")))?;
    let result = runtime.block_on(serve(daemon.clone(), metrics_listener));

    // Detach: dropping unpinned links removes the programs.
    let mut d = runtime.block_on(daemon.lock_owned());
    match d.snapshot() {
        Ok(s) => println!("{}", s.table()),
        Err(e) => log::warn!("reading counters at exit: {e}"),
    }
    if args.keep_attached && pins {
        log::info!(
            "--keep-attached: leaving the program pinned under {}",
            pin_dir.display()
        );
        drop(pinned);
    } else {
        for link in pinned {
            match link.unpin() {
                Ok(fd) => drop(fd),
                Err(e) => log::warn!("unpinning a link: {e}"),
            }
        }
        drop(held_xdp);
        drop(held_tc);
        if pins {
            loader::remove_pins(&pin_dir);
            let _ = fs::remove_file(&state_path);
        }
        log::info!("detached from {}", d.iface);
    }
    result
}

async fn serve(
    daemon: Arc<Mutex<Daemon>>,
    listener: std::net::TcpListener,
) -> Result<(), RunError> {
    let addr = listener
        .local_addr()
        .map_err(|e| RunError::Runtime(e.to_string()))?;
    let listener = tokio::net::TcpListener::from_std(listener)
        .map_err(|e| RunError::Runtime(format!("--metrics-addr {addr}: {e}")))?;
    log::info!("metrics on http://{addr}/metrics");
    let metrics_task = tokio::spawn(metrics::serve(listener, daemon.clone()));
    let _event_tasks = daemon.lock().await.events.spawn();
    let logger = daemon.lock().await.classifier.take_logger();
    // SAFETY: the logger owns its ring buffer fd and neither replaces nor
    // closes it while the AsyncFd holds it.
    let log_task = logger
        .and_then(|l| {
            unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(l, tokio::io::Interest::READABLE)
            }
            .ok()
        })
        .map(|mut fd| {
            tokio::spawn(async move {
                while let Ok(mut guard) = fd.readable_mut().await {
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
            })
        });
    let sig = |k: SignalKind| {
        signal(k).map_err(|e| RunError::Runtime(format!("installing a signal handler: {e}")))
    };
    let mut hup = sig(SignalKind::hangup())?;
    let mut int = sig(SignalKind::interrupt())?;
    let mut term = sig(SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                let mut d = daemon.lock().await;
                let _ = d.reload();
            }
            _ = int.recv() => break,
            _ = term.recv() => break,
        }
    }
    metrics_task.abort();
    if let Some(t) = log_task {
        t.abort();
    }
    Ok(())
}
