//! Exit codes, the same for every command (docs/cli.md): the CLI returns
//! them and the daemon's errors map onto them.

/// Success.
pub const OK: u8 = 0;
/// A runtime failure: no privilege, a busy interface, another live
/// instance, an untrusted directory, a failed attach.
pub const FAILURE: u8 = 1;
/// Bad usage or invalid input: the flags, the catalog, an unknown interface.
pub const USAGE: u8 = 2;
