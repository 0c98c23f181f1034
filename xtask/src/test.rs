//! `cargo xtask test`: the checks CI enforces (formatting and clippy, for the
//! workspace and for the eBPF crate), then the whole suite, `cargo test
//! --workspace --release` (release, so the eBPF object built by `cargo xtask
//! build` is reused), every test binary even after a failure, and a closing
//! summary whose last line is the plain `N passed, N failed, N skipped`.
//!
//! A failed check fails the run but does not stop it: the tests still run,
//! so one run shows everything that is wrong.
//!
//! As root the suite runs from the state of a machine where portguard never
//! ran (see `fresh`): a private mount namespace with an empty /run/portguard
//! and a new bpffs.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    checks::{self, Check},
    fresh,
};

/// Totals over libtest's `test result:` lines and the test kit's `SKIP`
/// marker lines (`testkit::skip_line`).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub binaries: u32,
    /// As libtest counts them: a skipped test returned early and "passed".
    pub passed: u32,
    pub failed: u32,
    pub ignored: u32,
    /// The tests that printed a `SKIP` marker, in the order they did.
    pub skipped: Vec<String>,
}

impl Tally {
    /// Adds a line of `cargo test` output if it is a `test result:` line or
    /// a skip marker.
    pub fn add(&mut self, line: &str) {
        if let Some(test) = testkit::skipped_test(line) {
            self.skipped.push(test.to_string());
            return;
        }
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

    /// The tests that really ran and passed: libtest's passes less the skips.
    pub fn ran_and_passed(&self) -> u32 {
        let skipped = u32::try_from(self.skipped.len()).unwrap_or(u32::MAX);
        self.passed.saturating_sub(skipped)
    }
}

/// The closing lines: what was skipped and which checks failed (if any),
/// the verdict, and last the plain `N passed, N failed, N skipped` line
/// (checks count as passed or failed items too).
pub fn summary(
    tally: &Tally,
    checks: &[(Check, bool)],
    tests_ok: bool,
    secs: f64,
    ci: bool,
) -> Vec<String> {
    let mut lines = Vec::new();
    if !tally.skipped.is_empty() {
        lines.push(format!("xtask test: skipped: {}", tally.skipped.join(", ")));
    }
    let failed_checks: Vec<&str> = checks
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(c, _)| c.name)
        .collect();
    if !failed_checks.is_empty() {
        lines.push(format!(
            "xtask test: failed checks: {}",
            failed_checks.join(", ")
        ));
    }
    let checks_passed = checks.iter().filter(|(_, ok)| *ok).count();
    let ok = tests_ok && failed_checks.is_empty();
    lines.push(format!(
        "xtask test: {} ({} checks, {} tests ignored, {} test binaries, {secs:.0} s{})",
        if ok { "ok" } else { "FAILED" },
        checks.len(),
        tally.ignored,
        tally.binaries,
        if ci { ", CI=true" } else { "" }
    ));
    let passed = u64::from(tally.ran_and_passed()) + checks_passed as u64;
    let failed = u64::from(tally.failed) + failed_checks.len() as u64;
    lines.push(format!(
        "xtask: {passed} passed, {failed} failed, {} skipped",
        tally.skipped.len()
    ));
    lines
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
            "print SKIP and count as skipped"
        };
        eprintln!("xtask test: not root: the privileged tests (BPF, netns, XDP) will {then}");
    }
    let started = Instant::now();
    let checks: Vec<(Check, bool)> = checks::all()
        .into_iter()
        .map(|c| {
            let ok = checks::run(&c);
            (c, ok)
        })
        .collect();

    let mut cmd = crate::cargo_command(&["test", "--workspace", "--release", "--no-fail-fast"]);
    cmd.args(extra)
        .envs(env.iter().copied())
        .stdout(Stdio::piped());
    if ci {
        // Inherited anyway; explicit because the privileged tests' guard
        // reads it to fail instead of skipping.
        cmd.env("CI", "true");
    }
    let fresh = if root {
        // Without it a test may pass here only thanks to what an earlier run
        // left, and fail on a new machine: under CI that is a failure.
        match fresh::enter() {
            Ok(f) => {
                eprintln!(
                    "xtask test: the suite runs in a private mount namespace: an empty tmpfs on {}, a new bpffs on {} (a machine where portguard never ran)",
                    fresh::RUN_DIR,
                    fresh::BPFFS
                );
                Some(f)
            }
            Err(e) if ci => return Err(e.context("the fresh state for the suite (CI=true)")),
            Err(e) => {
                eprintln!(
                    "xtask test: warning: {e:#}; the suite runs in this machine's own /run and bpffs, and may pass on what earlier runs left"
                );
                None
            }
        }
    } else {
        None
    };
    let ran = run_tallied(&mut cmd);
    drop(fresh);
    let (tally, status) = ran?;
    let secs = started.elapsed().as_secs_f64();
    for line in summary(&tally, &checks, status.success(), secs, ci) {
        println!("{line}");
    }
    if !status.success() {
        bail!(
            "cargo test failed ({status}){}",
            if tally.failed == 0 {
                ": a build error or a crashed test binary, see above"
            } else {
                ""
            }
        );
    }
    if checks.iter().any(|(_, ok)| !ok) {
        bail!("formatting or clippy checks failed, see above");
    }
    Ok(())
}

/// Runs `cmd`, echoing its stdout as it comes, and tallies it.
fn run_tallied(cmd: &mut Command) -> Result<(Tally, std::process::ExitStatus)> {
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
    Ok((tally, status))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(lines: &[&str]) -> Tally {
        let mut t = Tally::default();
        for line in lines {
            t.add(line);
        }
        t
    }

    #[test]
    fn tally_adds_result_lines_and_ignores_the_rest() {
        let t = tally(&[
            "running 3 tests",
            "test a ... ok",
            "test result: ok. 5 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s",
            "test result: FAILED. 2 passed; 3 failed; 0 ignored; 0 measured; 4 filtered out; finished in 1.50s",
            "",
        ]);
        assert_eq!(
            t,
            Tally {
                binaries: 2,
                passed: 7,
                failed: 3,
                ignored: 1,
                skipped: Vec::new(),
            }
        );
    }

    #[test]
    fn tally_counts_the_kits_skip_markers_as_skipped_not_passed() {
        let marker = testkit::skip_line("restart: failed starts", "needs root");
        let t = tally(&[
            "running 2 tests",
            &marker,
            "test restart_fails ... ok",
            "test tests::lab ... SKIP tests::lab: nft missing",
            "ok",
            "test result: ok. 4 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s",
        ]);
        assert_eq!(t.skipped, ["restart - failed starts", "tests::lab"]);
        assert_eq!(t.passed, 4, "libtest's own count");
        assert_eq!(t.ran_and_passed(), 2, "the skipped two did not run");
    }

    #[test]
    fn the_last_summary_line_is_the_plain_parseable_form() {
        let t = tally(&[
            &testkit::skip_line("lab", "needs root"),
            "test result: FAILED. 9 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.00s",
        ]);
        let fmt = Check {
            name: "cargo fmt --check (workspace)",
            ..checks::all().remove(0)
        };
        let clippy = Check {
            name: "cargo clippy (workspace)",
            ..checks::all().remove(0)
        };
        let lines = summary(&t, &[(fmt, false), (clippy, true)], false, 80.0, true);
        assert_eq!(
            lines,
            [
                "xtask test: skipped: lab",
                "xtask test: failed checks: cargo fmt --check (workspace)",
                "xtask test: FAILED (2 checks, 0 tests ignored, 1 test binaries, 80 s, CI=true)",
                "xtask: 9 passed, 2 failed, 1 skipped",
            ]
        );
        let last = lines.last().map_or("", String::as_str);
        let plain = last.split_once(": ").map_or(last, |(_, counts)| counts);
        let counts: Vec<&str> = plain.split(", ").collect();
        assert_eq!(counts, ["9 passed", "2 failed", "1 skipped"], "in {last:?}");
    }

    #[test]
    fn a_clean_run_says_ok_and_lists_nothing_else() {
        let t = tally(&[
            "test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s",
        ]);
        let lines = summary(&t, &[], true, 1.0, false);
        assert_eq!(
            lines,
            [
                "xtask test: ok (0 checks, 0 tests ignored, 1 test binaries, 1 s)",
                "xtask: 3 passed, 0 failed, 0 skipped",
            ]
        );
    }
}
