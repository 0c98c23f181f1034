//! portguard: enforce the Skype for Business Server 2015 port catalog with XDP.
//!
//! The library holds everything; `main.rs` is a thin clap front end.

pub mod catalog;
pub mod cli;
pub mod commands;
pub mod counters;
pub mod ebpf_object;
pub mod events;
pub mod frames;
pub mod loader;
pub mod metrics;
pub mod policy;
pub mod reference;
pub mod state;
