//! portguard against what a hostile user, client or file can do, one
//! binary: the daemon (`daemon`, was `hostile`: a second run, a recreated
//! interface, slow and oversized clients of /metrics, foreign pin
//! directories, a closed stdout, malformed frames, stale pids, path-like
//! interface names, a full disk) and a catalog file that turns hostile
//! under a running daemon (`catalog`, was `hostile_catalog`). One binary,
//! one link: run a part with a filter, e.g. `cargo test --release -p
//! integration-tests --test hostile catalog::`.
//!
//! The tests that load the machine or time what they see hold
//! [`ALONE`], so that they never run side by side on two cores: the 5,000
//! idle connections and slow clients against /metrics (bounded answer
//! times), and the hostile catalogs (bounded memory and reload times, an
//! allowed stream that must lose nothing; it ran alone in its own binary).
//! The other daemon tests run beside them and each other, as they did.

mod catalog;
mod daemon;

/// Held by the tests named above while they run.
static ALONE: testkit::Alone = testkit::Alone::new();
