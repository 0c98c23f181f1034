//! portguard: enforce the Skype for Business Server 2015 port catalog with XDP.
//!
//! The library: the catalog, the policy compiler, the loader of the eBPF
//! program, the daemon (its lifecycle, metrics and packet events) and what
//! reads a running instance from outside. The command line is the
//! `portguard-cli` crate.

pub mod catalog;
pub mod counters;
pub mod daemon;
pub mod ebpf_object;
pub mod events;
pub mod exit;
pub mod flow_table;
pub mod iface;
mod link_watch;
pub mod loader;
pub mod metric_families;
mod metrics;
mod metrics_http;
pub mod ownership;
pub mod pinned;
pub mod policy;
mod routes;
pub mod state;
pub mod trusted;

/// `portguard --version`: the release, the commit it was built from
/// ("unknown" outside git) and the first 12 hex digits of the SHA-256 of the
/// embedded eBPF object, so that two binaries enforcing differently can be
/// told apart even at the same version. build.rs provides the last two.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("PORTGUARD_GIT_COMMIT"),
    ", eBPF object sha256:",
    env!("PORTGUARD_EBPF_SHA256"),
    ")"
);
