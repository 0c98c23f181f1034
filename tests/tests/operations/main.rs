//! The daemon as an operator runs it, one test binary: `portguard run` on
//! native XDP in network namespaces with real traffic (`netns_policy`, and
//! address sets with real TCP connections: `netns_address_sets`), an
//! appliance between namespaces (`appliance`), reloads under a stream
//! (`reload`), restarts, takeover and detach (`restart`), the embedded
//! catalog of `run --edition` (`editions`), packet events,
//! `top` and `suggest` (`events`), and the metrics as Prometheus and its
//! alert rules see them (`prometheus`, `alerts`), the edition a daemon
//! enforces (`editions`). One binary, one link: run
//! a part with a filter, e.g. `cargo test --release -p integration-tests
//! --test operations reload::`.

mod alerts;
mod appliance;
mod editions;
mod events;
mod netns_address_sets;
mod netns_policy;
mod prometheus;
mod reload;
mod restart;
