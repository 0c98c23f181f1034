//! `cargo xtask fuzz`: the workspace's proptest properties, with many more
//! cases than `cargo xtask test` gives them. The properties are unit tests,
//! so `--lib` runs them without the privileged end-to-end tests.

use anyhow::Result;

pub fn fuzz(cases: u32, args: &[String]) -> Result<()> {
    let cases = cases.to_string();
    println!(
        "xtask fuzz: the workspace's unit tests with PROPTEST_CASES={cases} (proptest properties get that many cases each)"
    );
    crate::cargo(
        &["test", "--workspace", "--release", "--lib"],
        args,
        &[("PROPTEST_CASES", &cases)],
    )
}
