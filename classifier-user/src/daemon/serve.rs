//! The running daemon's loop: the metrics endpoint, the events, SIGHUP
//! reloads, following the interfaces and sweeping the flow tables, until
//! SIGINT or SIGTERM.

use std::{sync::Arc, time::Duration};

use tokio::{
    signal::unix::{SignalKind, signal},
    sync::Mutex,
};

use super::{Daemon, RunError};
use crate::{counters::Snapshot, link_watch::LinkEvents, loader::LoadError, metrics_http};

/// Seconds between sweeps of the flow tables.
const FLOW_SWEEP_SECS: u64 = 5;

/// How a daemon's service ended.
pub struct Outcome {
    /// Every leg's counters, read just before the program was detached (or
    /// left attached).
    pub counters: Result<Vec<(String, Snapshot)>, LoadError>,
    /// What ended the service other than a signal; the program was
    /// detached (or kept) all the same.
    pub error: Option<RunError>,
}

impl Daemon {
    /// Serves until SIGINT or SIGTERM, then shuts down: detaches, or with
    /// `keep_attached` leaves the program attached and pinned for the next
    /// run.
    pub fn serve(mut self) -> Outcome {
        let keep = self.keep_attached;
        let listener = self.metrics_listener.take();
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                return Outcome {
                    counters: self.shutdown(keep),
                    error: Some(RunError::Runtime(format!("starting the runtime: {e}"))),
                };
            }
        };
        let daemon = Arc::new(Mutex::new(self));
        let result = match listener {
            Some(l) => runtime.block_on(serve(daemon.clone(), l)),
            None => Err(RunError::Runtime("the metrics listener is gone".into())),
        };
        let mut d = runtime.block_on(daemon.lock_owned());
        Outcome {
            counters: d.shutdown(keep),
            error: result.err(),
        }
    }
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
