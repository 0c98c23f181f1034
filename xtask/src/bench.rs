//! `cargo xtask bench`: runs the benchmark binary (tests/src/bin/bench.rs,
//! written and owned by the benchmarks' author). Figures come only from it.

use anyhow::{Result, bail};

const BENCH_SOURCE: &str = "tests/src/bin/bench.rs";

pub fn bench(args: &[String]) -> Result<()> {
    if !crate::root().join(BENCH_SOURCE).is_file() {
        bail!(
            "no benchmark yet: {BENCH_SOURCE} (the `bench` binary of the integration-tests crate) does not exist; nothing was measured"
        );
    }
    crate::cargo(
        &[
            "run",
            "--release",
            "-p",
            "integration-tests",
            "--bin",
            "bench",
            "--",
        ],
        args,
        &[],
    )
}
