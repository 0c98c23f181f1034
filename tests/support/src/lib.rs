//! Test-only code shared by portguard's tests, benchmarks and fuzzing, kept
//! out of the production library: packet builders ([`frames`], kept in
//! `testkit` so that the lab engines can put frames on a wire too), the
//! reference classifier the kernel program is held to ([`reference`]), the
//! kernel program under `BPF_PROG_TEST_RUN` ([`kernel`]), the policies
//! the tests share ([`spec`]), and the verdict spec ([`verdict_spec`], the
//! hand-stated packet cases of `tests/data/verdicts.toml`, their frames in
//! the words of [`frame_text`]).
//!
//! Unlike `testkit`, this crate depends on `classifier-user` (and so on the
//! eBPF toolchain): what does not need portguard's library belongs in
//! `testkit`.

pub use testkit::frames;
pub mod frame_text;
pub mod kernel;
pub mod reference;
pub mod spec;
pub mod verdict_spec;
