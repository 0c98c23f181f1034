//! The packet policy in the real XDP program (`BPF_PROG_TEST_RUN`), one
//! test binary: the verdict spec's cases (`corpus`, `verdicts`,
//! `appliance_verdicts`, over tests/data/verdicts.toml), the kernel against
//! the reference classifier on generated frames (`differential`), and the
//! same policy exported to nftables (`nft_differential`). One binary, one
//! link: run a part with a filter, e.g. `cargo test --release -p
//! integration-tests --test policy corpus::`. The properties over random
//! and mutated input stay a binary of their own (tests/tests/fuzz.rs):
//! `cargo xtask fuzz` runs them alone with many more cases.

mod appliance_verdicts;
mod corpus;
mod differential;
mod nft_differential;
mod verdicts;
