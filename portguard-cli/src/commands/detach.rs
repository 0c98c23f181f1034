//! `portguard detach`: remove what a crashed (or --keep-attached) run left.
//! The library takes the interface's lock first, so it never touches the
//! pins of a live instance.

use std::io::Write as _;

use portguard::{exit, pinned};

use crate::cli::DetachArgs;

pub fn detach(args: DetachArgs) -> u8 {
    match pinned::detach(&args.iface, args.bpffs.as_deref()) {
        Ok(legs) => {
            let _ = writeln!(
                std::io::stdout(),
                "detached portguard from {}",
                legs.join(", ")
            );
            exit::OK
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "portguard detach: {e}");
            e.exit_code()
        }
    }
}
