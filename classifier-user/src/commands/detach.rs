//! `portguard detach`: remove what a crashed (or --keep-attached) run left.

use std::path::Path;

use crate::{
    cli::{DetachArgs, EXIT_FAILURE, EXIT_OK, EXIT_USAGE},
    loader, state,
};

pub fn detach(args: DetachArgs) -> u8 {
    let dir = loader::pin_dir(&args.bpffs, &args.iface);
    if !dir.exists() {
        eprintln!(
            "portguard detach --iface {}: nothing pinned under {}",
            args.iface,
            dir.display()
        );
        return EXIT_USAGE;
    }
    let state_path = state::path(Path::new(state::RUN_DIR), &args.iface);
    if let Ok(st) = state::load(&state_path) {
        // SAFETY: kill with signal 0 only probes whether the pid exists.
        if st.pid != 0
            && st.pid != std::process::id()
            && unsafe { libc::kill(st.pid as i32, 0) } == 0
        {
            eprintln!(
                "portguard detach --iface {}: a portguard (pid {}) is still running on it; stop it with SIGTERM instead",
                args.iface, st.pid
            );
            return EXIT_FAILURE;
        }
    }
    loader::remove_pins(&dir);
    let _ = std::fs::remove_file(state_path);
    // The control socket of a daemon that was killed.
    let _ = std::fs::remove_file(crate::events::control::socket_path(
        Path::new(state::RUN_DIR),
        &args.iface,
    ));
    if dir.exists() {
        eprintln!(
            "portguard detach --iface {}: could not remove {}",
            args.iface,
            dir.display()
        );
        return EXIT_FAILURE;
    }
    println!("detached portguard from {}", args.iface);
    EXIT_OK
}
