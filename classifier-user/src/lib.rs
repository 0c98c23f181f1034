//! portguard: enforce the Skype for Business Server 2015 port catalog with XDP.
//!
//! The library holds everything; `main.rs` is a thin clap front end.

pub mod catalog;
pub mod cli;
pub mod commands;
pub mod counters;
pub mod daemon;
pub mod ebpf_object;
pub mod events;
pub mod exit;
pub mod flow_table;
pub mod iface;
pub mod link_watch;
pub mod loader;
pub mod metrics;
pub mod metrics_http;
pub mod ownership;
pub mod pinned;
pub mod policy;
pub mod routes;
pub mod state;
pub mod trusted;
