//! The benchmark's output: sections of markdown tables, the targets of
//! issue 7 with met/missed, and the machine they were measured on.

use std::fmt::Write as _;

pub struct Target {
    what: String,
    measured: String,
    met: bool,
}

impl Target {
    pub fn new(what: &str, measured: String, met: bool) -> Target {
        Target {
            what: what.to_string(),
            measured,
            met,
        }
    }
}

#[derive(Default)]
pub struct Report {
    sections: Vec<String>,
    targets: Vec<Target>,
    failures: Vec<String>,
}

impl Report {
    pub fn section(&mut self, title: &str, method: &str, table: String) {
        let s = format!("## {title}\n\n{method}\n\n{table}");
        println!("{s}");
        self.sections.push(s);
    }

    pub fn target(&mut self, t: Target) {
        println!(
            "target: {} — {} — {}",
            t.what,
            t.measured,
            if t.met { "met" } else { "MISSED" }
        );
        self.targets.push(t);
    }

    /// A part of the bench that could not run: reported, never hidden.
    pub fn failed(&mut self, part: &str, e: &anyhow::Error) {
        let s = format!("{part}: NOT MEASURED: {e:#}");
        eprintln!("{s}");
        self.failures.push(s);
    }

    pub fn has_failures(&self) -> bool {
        !self.failures.is_empty()
    }

    pub fn targets_table(&self) -> String {
        let mut t = String::from("| target (issue 7) | measured | |\n|---|---|---|\n");
        for x in &self.targets {
            let _ = writeln!(
                t,
                "| {} | {} | {} |",
                x.what,
                x.measured,
                if x.met { "met" } else { "**missed**" }
            );
        }
        t
    }

    pub fn markdown(&self, header: &str, machine: &str, run: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{header}");
        let _ = writeln!(out, "## Machine\n\n{machine}\n{run}\n");
        let _ = writeln!(out, "## Targets\n\n{}", self.targets_table());
        for f in &self.failures {
            let _ = writeln!(out, "- {f}");
        }
        for s in &self.sections {
            let _ = writeln!(out, "{s}");
        }
        out
    }
}
