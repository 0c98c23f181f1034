//! `portguard detach`: remove what a crashed (or --keep-attached) run left.
//! It takes the interface's lock first, so it never touches the pins of a
//! live instance.

use std::io::Write as _;

use crate::cli::DetachArgs;
use portguard::{exit, iface, loader, ownership::InstanceLock, state, trusted};

pub fn detach(args: DetachArgs) -> u8 {
    let fail = |msg: String, code: u8| {
        let _ = writeln!(std::io::stderr(), "portguard detach: {msg}");
        code
    };
    if let Err(e) = iface::validate(&args.iface) {
        return fail(e.to_string(), exit::USAGE);
    }
    // Any leg of an appliance names the whole instance: its pins are one
    // set, and detaching one leg would leave the others guarded by a policy
    // nobody manages.
    let run_dir = std::path::Path::new(state::RUN_DIR);
    let name = state::instance_of(run_dir, &args.iface);
    let recorded = state::load(&state::path(run_dir, &name)).ok();
    // The instance's own bpffs unless told otherwise: an instance run with
    // `--bpffs` is found without it (the package's prerm passes none).
    let bpffs = args
        .bpffs
        .clone()
        .or_else(|| recorded.as_ref().and_then(|s| s.bpffs.clone()))
        .unwrap_or_else(|| std::path::PathBuf::from(state::DEFAULT_BPFFS));
    let dir = loader::pin_dir(&bpffs, &name);
    if !dir.exists() {
        return fail(
            format!(
                "--iface {}: nothing pinned under {}",
                args.iface,
                dir.display()
            ),
            exit::USAGE,
        );
    }
    if let Err(e) = trusted::check_existing_dir(&dir) {
        return fail(e.to_string(), exit::FAILURE);
    }
    let legs = recorded
        .as_ref()
        .map_or_else(|| vec![name.clone()], state::State::legs);
    let mut locks = Vec::new();
    for leg in &legs {
        match InstanceLock::acquire(leg, false) {
            Ok(l) => locks.push(l),
            Err(e) => return fail(format!("--iface {leg}: {e}"), exit::FAILURE),
        }
    }
    loader::remove_pins(&dir);
    if let Ok(run_dir) = state::run_dir() {
        let _ = std::fs::remove_file(state::path(&run_dir, &name));
        // The control socket of a daemon that was killed.
        let _ = std::fs::remove_file(portguard::events::control::socket_path(&run_dir, &name));
    }
    for lock in locks {
        lock.release();
    }
    if dir.exists() {
        return fail(
            format!("--iface {}: could not remove {}", args.iface, dir.display()),
            exit::FAILURE,
        );
    }
    let _ = writeln!(
        std::io::stdout(),
        "detached portguard from {}",
        legs.join(", ")
    );
    exit::OK
}
