//! `cargo xtask bench`: runs the benchmark binary (tests/src/bin/bench.rs,
//! written and owned by the benchmarks' author). Figures come only from it.

use std::path::Path;

use anyhow::{Result, bail};

const BENCH_SOURCE: &str = "tests/src/bin/bench.rs";

/// Fails with a clear message when the benchmark binary has no source yet.
fn check_bench_exists(root: &Path) -> Result<()> {
    if !root.join(BENCH_SOURCE).is_file() {
        bail!(
            "no benchmark yet: {BENCH_SOURCE} (the `bench` binary of the integration-tests crate) does not exist; nothing was measured"
        );
    }
    Ok(())
}

pub fn bench(args: &[String]) -> Result<()> {
    check_bench_exists(&crate::root())?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_benchmark_is_reported_not_faked() {
        let e = check_bench_exists(Path::new("/no/such/repo"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("no benchmark yet") && e.contains(BENCH_SOURCE),
            "{e}"
        );
        assert!(
            check_bench_exists(&crate::root()).is_ok(),
            "this repository has {BENCH_SOURCE}"
        );
    }
}
