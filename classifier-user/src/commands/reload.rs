//! `portguard reload`: SIGHUP to the instance on an interface.

use std::path::Path;

use crate::{
    cli::{EXIT_FAILURE, EXIT_OK, EXIT_USAGE, ReloadArgs},
    state,
};

pub fn reload(args: ReloadArgs) -> u8 {
    let path = state::path(Path::new(state::RUN_DIR), &args.iface);
    let st = match state::load(&path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "portguard reload --iface {}: no running instance ({}: {e})",
                args.iface,
                path.display()
            );
            return EXIT_USAGE;
        }
    };
    // SAFETY: sending a signal to a pid has no memory-safety concerns.
    if st.pid == 0 || unsafe { libc::kill(st.pid as i32, libc::SIGHUP) } != 0 {
        eprintln!(
            "portguard reload --iface {}: instance pid {} is gone",
            args.iface, st.pid
        );
        return EXIT_FAILURE;
    }
    println!(
        "asked portguard (pid {}) on {} to reload; see its log and portguard_reloads_total",
        st.pid, args.iface
    );
    EXIT_OK
}
