//! The lab engine and its scenarios: portguard in network namespaces with
//! real traffic, and its counters checked against what arrived.
//! [`host`]: a client and a server namespace; [`edge`]: the routed
//! perimeter; [`edge::attack`]: the perimeter under attack.

pub mod edge;
pub mod host;
pub mod metrics;

pub use host::{MEDIA, METRICS, ROLES};
