//! The lab scenarios as tests, one binary over the lab engine
//! (`testkit::lab`): the host scenario (`host`, was the `lab` binary), the
//! routed edge lab with and without portguard (`edge`, was `lab_edge`), the
//! attack scenario with portguard, its nftables export and no firewall
//! (`attack`, was `lab_attack`), and what an attacker can make the daemon's
//! views say (`views_under_attack`). One binary, one link: run a part with a
//! filter, e.g. `cargo test --release -p integration-tests --test lab
//! edge::`.
//!
//! Every test here holds [`ALONE`] while it runs, so that none runs beside
//! another on two cores: the attack's floods and the views' scan send at
//! line rate, and the others count packets exactly, wait on one-second
//! connects and time their peers. As binaries of their own they ran one
//! after the other (the edge lab's two tests, and the views' two, beside
//! each other; now one after the other too).

mod attack;
mod edge;
mod host;
mod views_under_attack;

/// Held by the tests named above while they run.
static ALONE: testkit::Alone = testkit::Alone::new();
