//! The packet policy in the real XDP program (`BPF_PROG_TEST_RUN`), one
//! test binary: the verdict spec's cases (`corpus`, `verdicts`,
//! `appliance_verdicts`, over tests/data/verdicts.toml), the kernel against
//! the reference classifier on generated frames (`differential`), and the
//! same policy exported to nftables (`nft_differential`), the media rules'
//! payload check over real captures (`media`), rules with address sets on
//! a host and an appliance (`address_sets`). One binary, one
//! link: run a part with a filter, e.g. `cargo test --release -p
//! integration-tests --test policy corpus::`. The properties over random
//! and mutated input stay a binary of their own (tests/tests/fuzz.rs):
//! `cargo xtask fuzz` runs them alone with many more cases.

mod address_sets;
mod appliance_verdicts;
mod corpus;
mod differential;
mod media;
mod nft_differential;
mod verdicts;
mod verifier_budget;
