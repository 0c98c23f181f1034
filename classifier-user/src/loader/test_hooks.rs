//! What tests and the benchmark drive the loaded program with, behind the
//! `test-hooks` feature (the package build leaves it off): one frame
//! through the XDP program in the kernel (`BPF_PROG_TEST_RUN`), and the
//! counter index of the last packet (`TRACE`, written when `FLAG_TRACE` is
//! set).

use aya::programs::{TestRun as _, TestRunOptions, TestRunResult, Xdp};
use classifier_common::{FLAG_TRACE, XDP_PROGRAM, map_names};

use super::{Classifier, LoadError, map_err, prog_err};

impl Classifier {
    /// The XDP program, for a test run of its own.
    pub fn xdp_ref(&self) -> Result<&Xdp, LoadError> {
        self.ebpf
            .program(XDP_PROGRAM)
            .ok_or(LoadError::Missing("XDP program"))?
            .try_into()
            .map_err(prog_err("portguard"))
    }

    /// Runs the XDP program on one frame in the kernel (`BPF_PROG_TEST_RUN`).
    /// `duration` of the result is per run.
    pub fn test_run(&self, frame: &[u8], repeat: u32) -> Result<TestRunResult, LoadError> {
        let opts = TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::default()
        };
        self.xdp_ref()?
            .test_run(opts)
            .map_err(prog_err("portguard"))
    }

    /// Makes the packet path record each packet's counter index in `TRACE`.
    pub fn set_trace(&mut self, on: bool) -> Result<(), LoadError> {
        let mut config = self.config()?;
        config.flags = if on {
            config.flags | FLAG_TRACE
        } else {
            config.flags & !FLAG_TRACE
        };
        self.set_config(&config)
    }

    /// The counter index of the last packet (with tracing on).
    pub fn last_counter(&mut self) -> Result<u32, LoadError> {
        self.array::<u32>(map_names::TRACE)?
            .get(&0, 0)
            .map_err(map_err(map_names::TRACE))
    }

    /// Each loaded program's name and the instructions the verifier
    /// processed to accept it (its budget is 1,000,000 per program).
    pub fn verified_instructions(&self) -> Result<Vec<(String, u32)>, LoadError> {
        let mut counts = Vec::new();
        for (name, program) in self.ebpf.programs() {
            let info = program
                .info()
                .map_err(|e| LoadError::Object(format!("{name}: {e}")))?;
            if let Some(count) = info.verified_instruction_count() {
                counts.push((name.to_owned(), count));
            }
        }
        counts.sort();
        Ok(counts)
    }
}
