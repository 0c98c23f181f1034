//! `cargo xtask docs`: docs/cli.md from the clap definitions, written by
//! `portguard-docgen` (crate `docgen`; xtask cannot link the `portguard`
//! library itself, it must build before the eBPF toolchain exists). The
//! `docs_cli_md_is_current` test fails until this has been run after a
//! change to the command line.

use anyhow::Result;

pub fn cli_md() -> Result<()> {
    crate::cargo(
        &[
            "run",
            "--release",
            "--quiet",
            "-p",
            "docgen",
            "--bin",
            "portguard-docgen",
            "--",
            "cli-md",
        ],
        &[],
        &[],
    )
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    /// Whoever clones the repository has nothing outside it: no file may
    /// point at a design document beside the repository or at a path of the
    /// machine it was written on.
    // Spelled in pieces so that this line does not match itself.
    const OUTSIDE: [&str; 3] = ["../shared", concat!("shared", "/design"), "/work/"];

    #[test]
    fn no_file_points_outside_the_repository() {
        let out = Command::new("git")
            .arg("-C")
            .arg(crate::root())
            .args(["ls-files", "-z"])
            .output()
            .expect("git ls-files");
        assert!(
            out.status.success(),
            "git ls-files: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut found = Vec::new();
        for file in String::from_utf8_lossy(&out.stdout).split('\0') {
            // This file names the patterns it looks for.
            if file.is_empty() || file == "xtask/src/docs.rs" {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(crate::root().join(file)) else {
                continue; // binary, or deleted in the work tree
            };
            for (n, line) in text.lines().enumerate() {
                if let Some(p) = OUTSIDE.iter().find(|p| line.contains(*p)) {
                    found.push(format!("{file}:{}: `{p}` in {:?}", n + 1, line.trim()));
                }
            }
        }
        assert!(
            found.is_empty(),
            "files point outside the repository (say it with the repository's own docs):\n{}",
            found.join("\n")
        );
    }
}
