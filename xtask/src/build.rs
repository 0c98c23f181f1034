//! `cargo xtask build`: the release `portguard` binary (crate
//! `portguard-cli`). The library's build script (classifier-user/build.rs)
//! compiles the eBPF crate with Debian's rustc and bpf-linker and embeds the
//! object, so this one cargo command is the whole build.

use anyhow::Result;

pub fn build() -> Result<()> {
    crate::cargo(&["build", "--release", "-p", "portguard-cli"], &[], &[])
}
