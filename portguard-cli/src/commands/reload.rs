//! `portguard reload`: SIGHUP to the instance on an interface, sent through
//! a pidfd to the process proven to hold the interface's lock (see
//! `ownership`), never to a pid read from a file.

use std::io::Write as _;

use crate::cli::ReloadArgs;
use portguard::{exit, iface, ownership::Instance};

pub fn reload(args: ReloadArgs) -> u8 {
    if let Err(e) = iface::validate(&args.iface) {
        let _ = writeln!(std::io::stderr(), "portguard reload: {e}");
        return exit::USAGE;
    }
    let instance = match Instance::find(&args.iface) {
        Ok(i) => i,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "portguard reload --iface {}: {e}",
                args.iface
            );
            return exit::FAILURE;
        }
    };
    if let Err(e) = instance.signal(libc::SIGHUP) {
        let _ = writeln!(
            std::io::stderr(),
            "portguard reload --iface {}: signalling pid {}: {e}",
            args.iface,
            instance.pid
        );
        return exit::FAILURE;
    }
    let _ = writeln!(
        std::io::stdout(),
        "asked portguard (pid {}) on {} to reload; see its log and portguard_reloads_total",
        instance.pid,
        args.iface
    );
    exit::OK
}
