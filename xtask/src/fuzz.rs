//! `cargo xtask fuzz`: the proptest properties with many more cases than
//! `cargo xtask test` gives them: the workspace's unit properties, then
//! `tests/tests/fuzz.rs` (the catalog parser on arbitrary and mutated input,
//! and the XDP program under BPF_PROG_TEST_RUN on random and mutated frames).

use anyhow::Result;

pub fn fuzz(cases: u32, args: &[String]) -> Result<()> {
    let cases = cases.to_string();
    println!("xtask fuzz: proptest properties with {cases} cases each");
    crate::cargo(
        &["test", "--workspace", "--release", "--lib"],
        args,
        &[("PROPTEST_CASES", &cases)],
    )?;
    crate::cargo(
        &[
            "test",
            "--release",
            "-p",
            "integration-tests",
            "--test",
            "fuzz",
        ],
        args,
        &[("PROPTEST_CASES", &cases), ("PORTGUARD_FUZZ_CASES", &cases)],
    )
}
