//! The package, one binary: the systemd unit, the capabilities it grants
//! and the prerm script (`unit`, was `packaging`), and the .deb installed,
//! run and purged on a clean Debian 12 (`deb_install`). One binary, one
//! link: run a part with a filter, e.g. `cargo test --release -p
//! integration-tests --test packaging deb_install::`.
//!
//! The tests that load the machine or time what they see hold
//! [`ALONE`], so that they never run side by side on two cores: the package
//! install (unpacking a root, apt, then the host lab with its exact
//! counters; it ran alone in its own binary), the restart under the unit's
//! capabilities (an allowed stream that must lose nothing) and the start
//! without each capability (one BPF load after another). The others run
//! beside them.

mod deb_install;
mod unit;

/// Held by the tests named above while they run.
static ALONE: testkit::Alone = testkit::Alone::new();
