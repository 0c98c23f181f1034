//! `portguard detach`: remove what a crashed (or --keep-attached) run left.
//! It takes the interface's lock first, so it never touches the pins of a
//! live instance.

use std::io::Write as _;

use crate::{
    cli::{DetachArgs, EXIT_FAILURE, EXIT_OK, EXIT_USAGE},
    iface, loader,
    ownership::InstanceLock,
    state, trusted,
};

pub fn detach(args: DetachArgs) -> u8 {
    let fail = |msg: String, code: u8| {
        let _ = writeln!(std::io::stderr(), "portguard detach: {msg}");
        code
    };
    if let Err(e) = iface::validate(&args.iface) {
        return fail(e.to_string(), EXIT_USAGE);
    }
    let dir = loader::pin_dir(&args.bpffs, &args.iface);
    if !dir.exists() {
        return fail(
            format!(
                "--iface {}: nothing pinned under {}",
                args.iface,
                dir.display()
            ),
            EXIT_USAGE,
        );
    }
    if let Err(e) = trusted::check_existing_dir(&dir) {
        return fail(e.to_string(), EXIT_FAILURE);
    }
    let lock = match InstanceLock::acquire(&args.iface, false) {
        Ok(l) => l,
        Err(e) => return fail(format!("--iface {}: {e}", args.iface), EXIT_FAILURE),
    };
    loader::remove_pins(&dir);
    if let Ok(run_dir) = state::run_dir() {
        let _ = std::fs::remove_file(state::path(&run_dir, &args.iface));
        // The control socket of a daemon that was killed.
        let _ = std::fs::remove_file(crate::events::control::socket_path(&run_dir, &args.iface));
    }
    lock.release();
    if dir.exists() {
        return fail(
            format!("--iface {}: could not remove {}", args.iface, dir.display()),
            EXIT_FAILURE,
        );
    }
    let _ = writeln!(std::io::stdout(), "detached portguard from {}", args.iface);
    EXIT_OK
}
