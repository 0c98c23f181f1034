//! `cargo xtask test`: the whole suite, `cargo test --workspace --release`
//! (release, so the eBPF object built by `cargo xtask build` is reused),
//! every test binary even after a failure, and one closing summary line.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::Stdio,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

/// Totals over libtest's `test result:` lines.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub binaries: u32,
    pub passed: u32,
    pub failed: u32,
    pub ignored: u32,
}

impl Tally {
    /// Adds a line of `cargo test` output if it is a `test result:` line.
    pub fn add(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        self.binaries += 1;
        // "ok. 5 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s"
        for part in rest.split(['.', ';']) {
            let mut words = part.split_whitespace();
            let (Some(n), Some(what)) = (
                words.next().and_then(|n| n.parse::<u32>().ok()),
                words.next(),
            ) else {
                continue;
            };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

/// `env` goes to the test binaries (the package and the root it installs into).
pub fn test(extra: &[String], env: &[(&str, &Path)]) -> Result<()> {
    let ci = std::env::var("CI").as_deref() == Ok("true");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        let then = if ci {
            "fail (CI=true)"
        } else {
            "print SKIP and pass"
        };
        eprintln!("xtask test: not root: the privileged tests (BPF, netns, XDP) will {then}");
    }
    let started = Instant::now();
    let mut cmd = crate::cargo_command(&["test", "--workspace", "--release", "--no-fail-fast"]);
    cmd.args(extra)
        .envs(env.iter().copied())
        .stdout(Stdio::piped());
    if ci {
        // Inherited anyway; explicit because the privileged tests' guard
        // reads it to fail instead of skipping.
        cmd.env("CI", "true");
    }
    let mut child = cmd.spawn().context("running cargo test")?;
    let mut tally = Tally::default();
    if let Some(out) = child.stdout.take() {
        // Echo as it comes (the lab and the differential tests take a while).
        // Lossy: a test may print bytes that are not UTF-8.
        for line in BufReader::new(out).split(b'\n') {
            let line = line.context("reading cargo test's output")?;
            let line = String::from_utf8_lossy(&line);
            println!("{line}");
            tally.add(&line);
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    let secs = started.elapsed().as_secs_f64();
    let Tally {
        binaries,
        passed,
        failed,
        ignored,
    } = tally;
    let verdict = if status.success() { "ok" } else { "FAILED" };
    println!(
        "xtask test: {verdict}: {passed} passed, {failed} failed, {ignored} ignored in {binaries} test binaries ({secs:.0} s{})",
        if ci { ", CI=true" } else { "" }
    );
    if !status.success() {
        bail!(
            "cargo test failed ({status}){}",
            if failed == 0 {
                ": a build error or a crashed test binary, see above"
            } else {
                ""
            }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_adds_result_lines_and_ignores_the_rest() {
        let mut t = Tally::default();
        for line in [
            "running 3 tests",
            "test a ... ok",
            "test result: ok. 5 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s",
            "test result: FAILED. 2 passed; 3 failed; 0 ignored; 0 measured; 4 filtered out; finished in 1.50s",
            "",
        ] {
            t.add(line);
        }
        assert_eq!(
            t,
            Tally {
                binaries: 2,
                passed: 7,
                failed: 3,
                ignored: 1
            }
        );
    }
}
