//! Packet events: the daemon's side. A task drains the XDP program's ring
//! buffer into a bounded store (recent events and aggregates), another
//! serves them on the root-only control socket, and a third reads the
//! per-CPU budgets' suppressed count for the metrics.
//!
//! The daemon holds one [`Events`] and calls [`Events::spawn`] once.

pub mod control;
pub(crate) mod metrics;
pub mod record;
pub mod store;

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use aya::maps::{MapData, PerCpuArray, RingBuf};
use classifier_common::{Event, EventBudget};
use tokio::{io::unix::AsyncFd, sync::mpsc, task::JoinHandle};

use crate::{
    catalog::Edition,
    loader::{Classifier, LoadError},
    policy::SlotRegistry,
    state,
};

use self::{record::EventRecord, store::Store};

/// State the tasks and the metrics share.
pub(crate) struct Shared {
    pub(crate) iface: String,
    /// Appliance mode: each leg's ifindex and name, so that an event is
    /// labelled with the leg it arrived on.
    legs: Mutex<Vec<(u32, String)>>,
    pub(crate) roles: Vec<String>,
    pub(crate) catalog: Option<PathBuf>,
    pub(crate) edition: Edition,
    pub(crate) mode: String,
    /// `run --client-media-ports`: the media rows' range in force.
    pub(crate) client_media_ports: Option<(u16, u16)>,
    store: Mutex<Store>,
    followers: Mutex<Vec<mpsc::Sender<Arc<EventRecord>>>>,
    pub(crate) clients: AtomicUsize,
    /// Follow clients dropped because they fell behind.
    pub(crate) clients_dropped: AtomicU64,
    /// Sum over CPUs of the events the budget (or a full ring) suppressed.
    pub(crate) suppressed: AtomicU64,
}

impl Shared {
    /// The store; a panic elsewhere while holding it leaves data that is
    /// still consistent enough to read.
    pub(crate) fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The name of the leg with `ifindex` (the instance's name if unknown).
    pub(crate) fn leg_name(&self, ifindex: u32) -> String {
        let legs = self.legs.lock().unwrap_or_else(|p| p.into_inner());
        legs.iter()
            .find(|(i, _)| *i == ifindex && *i != 0)
            .map_or_else(|| self.iface.clone(), |(_, n)| n.clone())
    }

    fn followers(&self) -> MutexGuard<'_, Vec<mpsc::Sender<Arc<EventRecord>>>> {
        self.followers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Settings of `run` that concern events.
pub(crate) struct EventSettings {
    /// Events per second per CPU; 0 turns events off.
    pub(crate) rate: u32,
    /// Emit events for passed packets too.
    pub(crate) pass: bool,
    pub(crate) roles: Vec<String>,
    pub(crate) catalog: Option<PathBuf>,
    /// `run --edition`: the embedded catalog read without `catalog`.
    pub(crate) edition: Edition,
    pub(crate) mode: String,
    pub(crate) client_media_ports: Option<(u16, u16)>,
    pub(crate) run_dir: PathBuf,
}

pub(crate) struct Events {
    shared: Arc<Shared>,
    parts: Option<Parts>,
}

struct Parts {
    ring: RingBuf<MapData>,
    budget: PerCpuArray<MapData, EventBudget>,
    registry: SlotRegistry,
    socket: PathBuf,
    state: PathBuf,
}

/// The running tasks; dropping it stops them and removes the socket.
pub(crate) struct EventTasks {
    tasks: Vec<JoinHandle<()>>,
    socket: Option<PathBuf>,
}

impl Drop for EventTasks {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some(s) = &self.socket {
            let _ = std::fs::remove_file(s);
        }
    }
}

impl Events {
    /// Sets the kernel's budget and takes the ring and budget maps.
    pub(crate) fn new(
        iface: &str,
        classifier: &mut Classifier,
        registry: SlotRegistry,
        settings: EventSettings,
    ) -> Result<Events, LoadError> {
        classifier.set_events(settings.rate, settings.pass)?;
        let ring = classifier.take_events_ring()?;
        let budget = classifier.take_event_budget()?;
        Ok(Events {
            shared: Arc::new(Shared {
                iface: iface.to_string(),
                legs: Mutex::new(Vec::new()),
                roles: settings.roles,
                catalog: settings.catalog,
                edition: settings.edition,
                mode: settings.mode,
                client_media_ports: settings.client_media_ports,
                store: Mutex::new(Store::default()),
                followers: Mutex::new(Vec::new()),
                clients: AtomicUsize::new(0),
                clients_dropped: AtomicU64::new(0),
                suppressed: AtomicU64::new(0),
            }),
            parts: Some(Parts {
                ring,
                budget,
                registry,
                socket: control::socket_path(&settings.run_dir, iface),
                state: state::path(&settings.run_dir, iface),
            }),
        })
    }

    /// Names the legs' interface indexes for the events' `iface` field.
    pub(crate) fn set_legs(&self, legs: Vec<(u32, String)>) {
        *self.shared.legs.lock().unwrap_or_else(|p| p.into_inner()) = legs;
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Starts the reader, the control socket and the budget poller (once;
    /// inside a tokio runtime).
    pub(crate) fn spawn(&mut self) -> EventTasks {
        let mut tasks = Vec::new();
        let Some(parts) = self.parts.take() else {
            return EventTasks {
                tasks,
                socket: None,
            };
        };
        let socket = match control::bind(&parts.socket) {
            Ok(listener) => {
                log::info!("events on {} (root only)", parts.socket.display());
                tasks.push(tokio::spawn(control::serve(listener, self.shared.clone())));
                Some(parts.socket.clone())
            }
            Err(e) => {
                log::warn!(
                    "{}: {e}; `portguard events`, `top` and `suggest` are unavailable",
                    parts.socket.display()
                );
                None
            }
        };
        tasks.push(tokio::spawn(poll_budget(parts.budget, self.shared.clone())));
        // SAFETY: the ring owns its fd and neither replaces nor closes it
        // while the AsyncFd holds it.
        match unsafe { AsyncFd::register_with_interest(parts.ring, tokio::io::Interest::READABLE) }
        {
            Ok(fd) => tasks.push(tokio::spawn(read_ring(
                fd,
                self.shared.clone(),
                parts.registry,
                parts.state,
            ))),
            Err(e) => log::warn!("events ring unavailable: {e}"),
        }
        EventTasks { tasks, socket }
    }
}

async fn poll_budget(budget: PerCpuArray<MapData, EventBudget>, shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        if let Ok(per_cpu) = budget.get(&0, 0) {
            let sum: u64 = per_cpu.iter().map(|b| b.suppressed).sum();
            shared.suppressed.store(sum, Ordering::Relaxed);
        }
    }
}

async fn read_ring(
    mut fd: AsyncFd<RingBuf<MapData>>,
    shared: Arc<Shared>,
    mut registry: SlotRegistry,
    state_path: PathBuf,
) {
    let mut offset = record::monotonic_offset_ns();
    let mut offset_at = Instant::now();
    let mut registry_at = Instant::now();
    while let Ok(mut guard) = fd.readable_mut().await {
        // The wall clock may be stepped: re-anchor now and then.
        if offset_at.elapsed() > Duration::from_secs(10) {
            offset = record::monotonic_offset_ns();
            offset_at = Instant::now();
        }
        let ring = guard.get_inner_mut();
        let mut batch = Vec::new();
        while let Some(item) = ring.next() {
            if item.len() < size_of::<Event>() {
                continue;
            }
            let e: Event = bytemuck::pod_read_unaligned(&item[..size_of::<Event>()]);
            drop(item);
            // A rule slot added by a reload: the state file names it.
            let media_rule = classifier_common::decode_media_reason(e.reason).and_then(|(i, _)| {
                u16::try_from(i)
                    .ok()
                    .map(|i| classifier_common::media::MEDIA_SLOT_FLAG | i)
            });
            let named = match media_rule {
                Some(slot) => Some(slot),
                None if e.reason == classifier_common::EVENT_REASON_RULE => {
                    u16::try_from(e.slot).ok()
                }
                None => None,
            };
            if named.is_some_and(|s| registry.get(s).is_none())
                && registry_at.elapsed() > Duration::from_secs(1)
            {
                if let Ok(st) = state::load(&state_path) {
                    registry = st.registry();
                }
                registry_at = Instant::now();
            }
            let leg = shared.leg_name(e.ifindex);
            let h = record::headers(record::captured(&e));
            let r = record::decode_parsed(&e, &h, &leg, offset, &registry);
            batch.push((Arc::new(r), h.tcp_flags));
            if batch.len() >= 256 {
                deliver(&shared, std::mem::take(&mut batch));
            }
        }
        deliver(&shared, batch);
        guard.clear_ready();
    }
}

/// Events with their TCP flags (which the store classifies by, and which
/// the control socket's answers do not carry).
fn deliver(shared: &Shared, batch: Vec<(Arc<EventRecord>, Option<u8>)>) {
    if batch.is_empty() {
        return;
    }
    {
        let mut store = shared.store();
        for (r, flags) in &batch {
            store.push((**r).clone(), *flags);
        }
    }
    let mut followers = shared.followers();
    followers.retain(|tx| {
        for (r, _) in &batch {
            match tx.try_send(r.clone()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    shared.clients_dropped.fetch_add(1, Ordering::Relaxed);
                    return false;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return false,
            }
        }
        true
    });
}
