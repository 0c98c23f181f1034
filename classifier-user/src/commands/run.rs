//! `portguard run`: attach, enforce, reload on SIGHUP, detach on SIGINT/SIGTERM.

use std::{
    fs,
    io::{self, Write as _},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use aya::programs::links::FdLink;
use classifier_common::{LPM_ENTRIES, MAX_LEGS};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::Mutex,
};

pub use crate::daemon::{RunError, read_catalog};
use crate::{
    cli::{Mode, RunArgs},
    daemon::{self, Daemon, Leg, Links, ReloadCounts},
    exit, iface,
    link_watch::LinkEvents,
    loader::{self, Classifier, XdpModeArg},
    metrics_http,
    ownership::InstanceLock,
    policy::{self, Mgmt, PolicySpec, SlotRegistry},
    state, trusted,
};

/// Seconds between sweeps of the flow tables.
pub const FLOW_SWEEP_SECS: u64 = 5;

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
        appliance: args.is_appliance(),
        local_addrs: if args.is_appliance() {
            let mut a = iface::all_addresses();
            a.sort();
            a.dedup();
            a
        } else {
            Vec::new()
        },
        // Resolved from the routing table once the legs are known.
        profile_legs: std::collections::BTreeMap::new(),
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
        Ok(()) => exit::OK,
        Err(e) => {
            // stderr may be closed too: nothing more to do than the exit code.
            let _ = writeln!(io::stderr(), "portguard run: {e}");
            e.exit_code()
        }
    }
}

/// What can be refused from the flags alone, before anything is touched.
fn check_flags(args: &RunArgs, spec: &PolicySpec) -> Result<(), RunError> {
    if args.iface.len() > MAX_LEGS as usize {
        return Err(RunError::Usage(format!(
            "--iface: at most {MAX_LEGS} interfaces per instance, {} given",
            args.iface.len()
        )));
    }
    for (i, name) in args.iface.iter().enumerate() {
        iface::validate(name).map_err(|e| RunError::Usage(e.to_string()))?;
        if args.iface[..i].contains(name) {
            return Err(RunError::Usage(format!("--iface {name} is given twice")));
        }
        let loopback = iface::is_loopback(name);
        if loopback && !args.allow_loopback {
            return Err(RunError::Usage(format!(
                "--iface {name}: a loopback interface carries the host's own traffic (portguard's metrics included) and the policy would cut it; give --allow-loopback to protect it anyway"
            )));
        }
        if loopback && args.xdp_mode == XdpModeArg::Native {
            return Err(RunError::Usage(format!(
                "--xdp-mode native: the loopback driver of {name} has no native XDP; use --xdp-mode generic (or auto)"
            )));
        }
    }
    if spec.profiles.len() > LPM_ENTRIES as usize {
        return Err(RunError::Usage(format!(
            "--profile: at most {LPM_ENTRIES} prefixes fit the profile table, {} given",
            spec.profiles.len()
        )));
    }
    if spec.mgmt.len() > LPM_ENTRIES as usize {
        return Err(RunError::Usage(format!(
            "--mgmt: at most {LPM_ENTRIES} prefixes fit the management table, {} given",
            spec.mgmt.len()
        )));
    }
    Ok(())
}

/// Scrapes that reach the metrics address through the protected interface
/// meet the policy like any other packet.
fn metrics_on_protected_iface(addr: SocketAddr, ifname: &str) -> Option<String> {
    let on_iface = addr.ip().is_unspecified() || iface::addresses(ifname).contains(&addr.ip());
    on_iface.then(|| {
        format!(
            "--metrics-addr {addr} is reachable through {ifname}, which portguard protects: scrapes arriving through {ifname} are dropped unless --mgmt or the catalog allow TCP {}",
            addr.port()
        )
    })
}

/// "front-end, client", or what the absence of --role means.
fn roles_text(spec: &PolicySpec) -> String {
    match (&spec.default_roles, spec.appliance) {
        (Some(r), false) => format!("roles {}", r.join(", ")),
        (None, false) => "no default roles (only --profile destinations pass)".into(),
        (Some(r), true) => format!(
            "appliance mode, its {} own addresses with roles {}",
            spec.local_addrs.len(),
            r.join(", ")
        ),
        (None, true) => format!(
            "appliance mode, its {} own addresses with the essentials and the lockout guard only",
            spec.local_addrs.len()
        ),
    }
}

/// A link a previous run left pinned, if it is still attached to the
/// interface as it is now; a defunct one (its interface was deleted) is
/// unpinned so that a fresh attach replaces it.
fn live_pinned_link(pin_dir: &Path, name: &str, ifindex: u32) -> Result<Option<FdLink>, RunError> {
    let path = pin_dir.join(name);
    if !path.exists() {
        return Ok(None);
    }
    match loader::pinned_link_ifindex(&path) {
        Ok(i) if i == ifindex => Ok(loader::pinned_link(pin_dir, name)?),
        Ok(i) => {
            log::warn!(
                "{}: the link a previous run left is on ifindex {i}, not on the interface's {ifindex} (it was deleted and re-created): attaching afresh",
                path.display()
            );
            fs::remove_file(&path)
                .map_err(|e| RunError::Runtime(format!("removing {}: {e}", path.display())))?;
            Ok(None)
        }
        Err(e) => Err(RunError::Runtime(format!(
            "reading {}: {e}",
            path.display()
        ))),
    }
}

fn run_inner(args: RunArgs) -> Result<(), RunError> {
    let spec = spec_from_args(&args);
    check_flags(&args, &spec)?;
    if spec.mgmt.is_empty() {
        log::warn!(
            "--no-default-mgmt without --mgmt: no management allowance; a catalog without SSH can lock you out"
        );
    }
    // Everything that can be checked without privileges is checked first, so
    // a typo never touches an interface.
    let catalog = read_catalog(args.catalog.as_deref())?;
    let mut ifindexes = Vec::new();
    for name in &args.iface {
        let ifindex = iface::index(name);
        if ifindex == 0 {
            return Err(RunError::Usage(format!(
                "--iface {name}: no such interface"
            )));
        }
        ifindexes.push(ifindex);
    }
    let pins = match loader::ensure_bpffs(&args.bpffs) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(RunError::Usage(format!(
                "--bpffs {}: no such directory",
                args.bpffs.display()
            )));
        }
        Err(e) => {
            log::warn!(
                "{}: not a bpffs and could not mount one ({e}); running without pins: `stats`, `detach` and restarts without a gap are unavailable",
                args.bpffs.display()
            );
            false
        }
    };
    // The locks first, one per leg: until they are ours, nothing of another
    // instance's (pins, state, an interface) may be touched, --clean-start
    // included. A failure drops the locks taken so far.
    let mut locks = Vec::new();
    for name in &args.iface {
        locks.push(InstanceLock::acquire(name, args.clean_start)?);
    }
    let result = run_locked(&args, spec, catalog, &ifindexes, pins);
    for lock in locks {
        lock.release();
    }
    result
}

fn run_locked(
    args: &RunArgs,
    mut spec: PolicySpec,
    catalog: crate::catalog::Catalog,
    ifindexes: &[u32],
    pins: bool,
) -> Result<(), RunError> {
    let primary = args.iface[0].as_str();
    let state_path = state::path(&state::run_dir()?, primary);
    let pin_dir = if pins {
        Some(trusted::private_dir(&args.bpffs, &["portguard", primary])?)
    } else {
        None
    };
    // Pins (and the directory) this run creates are removed again if it
    // fails before attaching; pins a previous run left (and the program they
    // keep) are never touched.
    let mut cleanup = PinCleanup {
        dir: pin_dir.clone().unwrap_or_default(),
        armed: pin_dir
            .as_ref()
            .is_some_and(|d| args.clean_start || !d.join(loader::XDP_LINK_PIN).exists()),
    };
    let mut registry = SlotRegistry::default();
    let mut previous_mode = "unknown";
    if let Some(dir) = &pin_dir {
        if args.clean_start {
            loader::remove_pins(dir);
            let _ = fs::remove_file(&state_path);
            // remove_pins took the (empty) directories too.
            trusted::private_dir(&args.bpffs, &["portguard", primary])?;
        } else if let Ok(previous) = state::load(&state_path) {
            registry = previous.registry();
            previous_mode = if previous.xdp_mode == "generic" {
                "generic"
            } else {
                "native"
            };
        }
    }
    // Bind before attaching: a busy address must fail before an interface changes.
    let metrics_listener = std::net::TcpListener::bind(args.metrics_addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| RunError::Runtime(format!("--metrics-addr {}: {e}", args.metrics_addr)))?;
    for name in &args.iface {
        if let Some(w) = metrics_on_protected_iface(args.metrics_addr, name) {
            log::warn!("{w}");
        }
    }
    if spec.appliance {
        let prefixes: Vec<policy::Prefix> = spec.profiles.iter().map(|p| p.prefix).collect();
        spec.profile_legs = crate::routes::profile_legs(&prefixes, ifindexes);
        for p in &spec.profiles {
            match spec.profile_legs.get(&p.prefix) {
                Some(&leg) => log::info!(
                    "--profile {}: behind {} (its outbound rows apply to packets arriving there)",
                    p.prefix,
                    args.iface[leg as usize]
                ),
                None => log::warn!(
                    "--profile {}: no route to it leaves by a leg ({}), so its outbound rows apply nowhere until one does",
                    p.prefix,
                    args.iface.join(", ")
                ),
            }
        }
    }
    let compiled = policy::compile(&catalog, &spec, &mut registry)?;

    let mut classifier = Classifier::load_with(pin_dir.as_deref(), &args.flow_limits())?;
    let previous_generation = classifier
        .config()?
        .gens
        .iter()
        .map(|g| g.catalog_generation)
        .max()
        .unwrap_or(0);
    let catalog_generation = previous_generation + 1;
    classifier.install(&compiled, catalog_generation)?;
    // Before any attach, so that every leg's first packet is counted as its own.
    classifier.set_legs(ifindexes)?;

    let mut legs = Vec::new();
    for (i, (name, &ifindex)) in args.iface.iter().zip(ifindexes).enumerate() {
        let mut leg = Leg {
            name: name.clone(),
            index: i as u32,
            ifindex,
            links: Links::default(),
            xdp_mode: "native",
            attach_error: None,
        };
        let (xdp_pin, tc_pin) = (leg.xdp_pin(), leg.tc_pin());
        // Take over a link a previous run left pinned: one atomic program swap.
        let old_xdp = match &pin_dir {
            Some(dir) => live_pinned_link(dir, &xdp_pin, ifindex)?,
            None => None,
        };
        let (xdp_link, xdp_mode) = match old_xdp {
            Some(link) => {
                log::info!("taking over the XDP program a previous run left on {name}");
                (classifier.take_over_xdp(link)?, previous_mode)
            }
            None => classifier.attach_xdp(name, args.xdp_mode)?,
        };
        leg.xdp_mode = xdp_mode;
        leg.links.xdp = Some(daemon::hold_xdp(pin_dir.as_deref(), &xdp_pin, xdp_link)?);
        let old_tc = match &pin_dir {
            Some(dir) => live_pinned_link(dir, &tc_pin, ifindex)?,
            None => None,
        };
        let tc_link = match old_tc {
            Some(link) => Some(classifier.take_over_tc(link)?),
            None => match classifier.attach_tc(name) {
                Ok(l) => l,
                Err(e) => {
                    log::warn!(
                        "replies to the host's own connections will not be recognised on {name}: attaching the TC egress recorder failed: {e}"
                    );
                    None
                }
            },
        };
        leg.links.tc = match tc_link {
            Some(l) => Some(daemon::hold_tc(pin_dir.as_deref(), &tc_pin, l)?),
            None => None,
        };
        if let Some(warning) = loader::vlan_offload_warning(name) {
            log::warn!("{warning}");
        }
        legs.push(leg);
    }
    cleanup.armed = false;
    log::info!(
        "portguard {} on {} ({} XDP), {}, {} profile(s), catalog generation {catalog_generation}",
        if spec.monitor {
            "monitoring"
        } else {
            "enforcing"
        },
        args.iface.join(", "),
        legs.iter()
            .map(|l| l.xdp_mode)
            .collect::<Vec<_>>()
            .join(", "),
        roles_text(&spec),
        compiled.profiles.len(),
    );

    let events = crate::events::Events::new(
        primary,
        &mut classifier,
        registry.clone(),
        crate::events::EventSettings {
            rate: args.events_rate,
            pass: args.events_pass,
            roles: args.role.clone(),
            catalog: args.catalog.clone(),
            mode: daemon::mode_name(args.mode == Mode::Monitor).to_string(),
            client_media_ports: args.client_media_ports,
            run_dir: PathBuf::from(state::RUN_DIR),
        },
    )?;
    let mut daemon = Daemon {
        events,
        iface: primary.to_string(),
        legs,
        classifier,
        registry,
        spec,
        catalog_path: args.catalog.clone(),
        catalog,
        catalog_generation,
        rules_per_role: compiled.rules_per_role,
        requested_xdp_mode: args.xdp_mode,
        monitor: args.mode == Mode::Monitor,
        reloads: ReloadCounts::default(),
        state_path: pin_dir.is_some().then(|| state_path.clone()),
        pin_dir: pin_dir.clone(),
        last_swap: None,
        flow_figures: Default::default(),
    };
    daemon.started();
    daemon.sweep_flows();
    daemon.save_state();
    let daemon = Arc::new(Mutex::new(daemon));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| RunError::Runtime(format!("starting the runtime: {e}")))?;
    let result = runtime.block_on(serve(daemon.clone(), metrics_listener));

    // Detach first, print after: a closed stdout must not keep the program
    // attached, and a failed write is not an error worth a panic.
    let mut d = runtime.block_on(daemon.lock_owned());
    let snapshots = d.snapshots();
    let was_attached = d.attached();
    let names = args.iface.join(", ");
    match pin_dir.as_deref().filter(|_| args.keep_attached) {
        Some(dir) => {
            d.release_links(true);
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
            d.release_links(false);
            if let Some(dir) = &pin_dir {
                loader::remove_pins(dir);
                let _ = fs::remove_file(&state_path);
            }
            log::info!("detached from {names}");
        }
    }
    match snapshots {
        Ok(s) if s.len() == 1 => {
            let _ = writeln!(io::stdout(), "{}", s[0].1.table());
        }
        Ok(s) => {
            for (leg, snap) in s {
                let _ = writeln!(io::stdout(), "{leg}\n{}\n", snap.table());
            }
        }
        Err(e) => log::warn!("reading counters at exit: {e}"),
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
    let metrics_task = tokio::spawn(metrics_http::serve(
        listener,
        daemon.clone(),
        metrics_http::LIMITS,
    ));
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
    let mut links = match LinkEvents::open() {
        Ok(l) => Some(l),
        Err(e) => {
            log::warn!(
                "watching link events: {e}; the interface is re-checked once a second instead"
            );
            None
        }
    };
    // The safety net under the events: a second at most between an
    // interface coming back and the policy being attached to it.
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Idle flow entries go, and the tables are counted, every few seconds:
    // finer than the shortest timeout (10 s after a FIN or RST).
    let mut sweep = tokio::time::interval(Duration::from_secs(FLOW_SWEEP_SECS));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = hup.recv() => {
                let mut d = daemon.lock().await;
                let _ = d.reload();
            }
            _ = int.recv() => break,
            _ = term.recv() => break,
            changed = async {
                match links.as_mut() {
                    Some(l) => l.changed().await,
                    None => std::future::pending().await,
                }
            } => {
                if let Err(e) = changed {
                    log::warn!("link events: {e}; falling back to the once-a-second check");
                    links = None;
                }
                daemon.lock().await.follow_interface();
            }
            _ = tick.tick() => daemon.lock().await.follow_interface(),
            _ = sweep.tick() => daemon.lock().await.sweep_flows(),
        }
    }
    metrics_task.abort();
    if let Some(t) = log_task {
        t.abort();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_line_names_roles_plainly() {
        let mut spec = PolicySpec {
            default_roles: Some(vec!["front-end".into(), "client".into()]),
            profiles: Vec::new(),
            ..PolicySpec::default()
        };
        assert_eq!(roles_text(&spec), "roles front-end, client");
        spec.default_roles = None;
        assert!(
            roles_text(&spec).starts_with("no default roles"),
            "{}",
            roles_text(&spec)
        );
    }

    fn run_args(argv: &[&str]) -> RunArgs {
        use clap::Parser as _;
        let cli = crate::cli::Cli::try_parse_from(
            ["portguard", "run"].iter().chain(argv.iter()).copied(),
        )
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        match cli.command {
            crate::cli::Command::Run(a) => a,
            other => panic!("{argv:?} parsed as {other:?}"),
        }
    }

    #[test]
    fn appliance_legs_are_checked_before_anything_is_touched() {
        let a = run_args(&["--iface", "pgx0", "--iface", "pgx1", "--role", "front-end"]);
        assert!(a.is_appliance(), "two legs are appliance mode");
        let one = run_args(&["--iface", "pgx0", "--role", "front-end"]);
        assert!(!one.is_appliance(), "one leg is a host");
        let armed = run_args(&["--iface", "pgx0", "--appliance"]);
        assert!(armed.is_appliance(), "--appliance on one leg");

        let twice = run_args(&["--iface", "pgx0", "--iface", "pgx0", "--role", "front-end"]);
        let e = check_flags(&twice, &spec_from_args(&twice)).expect_err("a leg given twice");
        assert!(
            e.to_string().contains("--iface pgx0 is given twice") && e.exit_code() == 2,
            "{e}"
        );
        let five = run_args(&[
            "--iface", "a0", "--iface", "a1", "--iface", "a2", "--iface", "a3", "--iface", "a4",
        ]);
        let e = check_flags(&five, &spec_from_args(&five)).expect_err("five legs");
        assert!(
            e.to_string().contains("at most 4 interfaces") && e.exit_code() == 2,
            "{e}"
        );
        let bad = run_args(&["--iface", "pgx0", "--iface", "../x"]);
        let e = check_flags(&bad, &spec_from_args(&bad)).expect_err("a path as a leg");
        assert_eq!(e.exit_code(), 2, "{e}");
    }

    #[test]
    fn an_appliance_without_role_is_valid_and_says_what_its_own_addresses_get() {
        let a = run_args(&["--iface", "pgx0", "--iface", "pgx1"]);
        let spec = spec_from_args(&a);
        assert!(spec.appliance && spec.default_roles.is_none());
        let text = roles_text(&spec);
        assert!(
            text.contains("essentials and the lockout guard only"),
            "{text}"
        );
        let compiled = policy::compile(
            &crate::catalog::Catalog::embedded(),
            &spec,
            &mut SlotRegistry::default(),
        )
        .unwrap_or_else(|e| panic!("an appliance needs no --role: {e}"));
        assert_eq!(
            compiled.default_profile,
            classifier_common::PROFILE_NONE,
            "forwarded traffic to no profile has no default"
        );
    }

    #[test]
    fn a_wildcard_metrics_address_is_reported_as_reachable_through_the_interface() {
        let any: SocketAddr = "0.0.0.0:9477".parse().expect("addr");
        let w = metrics_on_protected_iface(any, "eth0").expect("a warning for the wildcard");
        assert!(
            w.contains("--metrics-addr") && w.contains("TCP 9477"),
            "{w}"
        );
        let lo: SocketAddr = "127.0.0.1:9477".parse().expect("addr");
        assert_eq!(metrics_on_protected_iface(lo, "pg-no-such-if0"), None);
    }
}
