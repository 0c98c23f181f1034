//! The lab: portguard in network namespaces with real traffic over real
//! sockets, real protocol peers, and its counters checked against what
//! arrived. One engine and three scenarios over it.
//!
//! The engine:
//! - `daemon`: portguard as a child in a namespace (its output drained,
//!   SIGINT on drop), waiting until every leg carries the program, and a
//!   scenario's run of it (`Session`: the live line, the scrape,
//!   SIGINT, the detach check);
//! - [`send`]: the traffic: listeners that count, datagrams and connection
//!   attempts from a namespace;
//! - [`metrics`]: the metrics endpoint read from inside a namespace;
//! - [`peers`]: sipp, coturn, openssl's test server and curl: servers, the
//!   clients side by side, and how each client's output is read;
//! - [`report`]: what every scenario reports alike.
//!
//! The scenarios, each a thin module of addresses, cases and checks:
//! [`host`] (a client and a server namespace; `cargo xtask run --
//! --scenario host`, the `lab` test binary's `host::` test, the package
//! test), [`edge`] (the routed perimeter: internet, an appliance, the DMZ)
//! and [`edge::attack`] (the perimeter and a host under attack).

pub(crate) mod daemon;
pub mod edge;
pub mod host;
pub mod metrics;
pub mod peers;
pub mod report;
pub mod send;

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Result, bail};

pub use self::{peers::PeerResult, send::Proto};

/// portguard's metrics endpoint, on the loopback of the namespace it runs in.
pub const METRICS: &str = "127.0.0.1:9477";
/// The roles and client media range a host is protected with, in every
/// scenario that has one (the host lab, the attack's host, the operations
/// tests): UDP 50000 (client media, narrowed) is allowed, UDP 161 is not.
pub const ROLES: &str = "front-end,client";
pub const MEDIA: &str = "50000-50019";

/// Fails once Ctrl-C was seen (`cargo xtask run` sets the flag), so that a
/// scenario stops and its guards (portguard, peers, namespaces) go.
pub(crate) fn check_interrupted(interrupted: &AtomicBool) -> Result<()> {
    if interrupted.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}
