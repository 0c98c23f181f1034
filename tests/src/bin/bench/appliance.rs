//! portguard in appliance mode (issue 11) for the per-packet rounds: the lab
//! roles published behind the box by `--profile`, the same roles on the box's
//! own address, so that a forwarded packet and a packet to the box can be set
//! against today's host-mode packet in one run.

use anyhow::{Context as _, Result, bail};
use classifier_common::decode_reason_counter;
use portguard::{
    catalog::Catalog,
    loader::Classifier,
    policy::{self, Placement, PolicySpec, SlotRegistry},
};
use portguard_testsupport::{
    kernel::{XDP_DROP, XDP_PASS},
    spec::lab_spec,
};
use testkit::ops::{ALLOWED_PORT, FORBIDDEN_PORT};

use crate::perpacket::udp64;

/// The servers behind the box, published with the lab's roles.
const BEHIND: &str = "198.18.0.0/24";
/// A server behind the box and the box's own address.
const SERVER: &str = "198.18.0.2";
const OWN: &str = "198.18.1.254";
/// A peer on the other side: in no profile, so only the destination decides.
const PEER: &str = "198.18.1.1";
/// `BPF_PROG_TEST_RUN` frames arrive on the loopback device, ifindex 1 in
/// every namespace: the one leg of a one-armed appliance.
const LOOPBACK_IFINDEX: u32 = 1;

/// The frames measured, with the action each must get.
pub struct Frames {
    pub forwarded_allowed: Vec<u8>,
    pub forwarded_dropped: Vec<u8>,
    pub local_allowed: Vec<u8>,
}

pub fn frames() -> Frames {
    Frames {
        forwarded_allowed: udp64(PEER, SERVER, ALLOWED_PORT),
        forwarded_dropped: udp64(PEER, SERVER, FORBIDDEN_PORT),
        local_allowed: udp64(PEER, OWN, ALLOWED_PORT),
    }
}

/// `portguard run --appliance --iface IF --role front-end,client
/// --client-media-ports 50000-50019 --profile 198.18.0.0/24=front-end,client`
/// on a box whose address is 198.18.1.254.
fn spec() -> Result<PolicySpec> {
    let lab = lab_spec();
    let roles = lab
        .default_roles
        .clone()
        .context("the lab policy has no roles")?;
    Ok(PolicySpec {
        placement: Placement::Appliance,
        profiles: vec![
            format!("{BEHIND}={}", roles.join(","))
                .parse()
                .map_err(|e| anyhow::anyhow!("--profile {BEHIND}: {e}"))?,
        ],
        local_addrs: vec![OWN.parse().context("the box's address")?],
        ..lab
    })
}

/// Loads portguard in appliance mode and proves the paths the rounds
/// measure: each frame gets its action, an allowed one by a catalog rule
/// (not as the answer of a flow), a dropped one for a reason. XDP records
/// no flow (the egress recorder does, as a packet leaves a leg), so every
/// round runs the same path as the first.
pub fn load(frames: &Frames) -> Result<Classifier> {
    let mut registry = SlotRegistry::default();
    let compiled = policy::resolve(&Catalog::embedded(), &spec()?)
        .and_then(|r| policy::compile(&r, &mut registry))?;
    let mut c = Classifier::load(None).context("loading portguard for appliance mode")?;
    c.install(&compiled, 1)?;
    c.set_legs(&[LOOPBACK_IFINDEX])?;
    c.set_trace(true)?;
    for (what, frame, expect) in [
        (
            "forwarded allowed UDP 50000",
            &frames.forwarded_allowed,
            XDP_PASS,
        ),
        (
            "forwarded dropped UDP 161",
            &frames.forwarded_dropped,
            XDP_DROP,
        ),
        ("local allowed UDP 50000", &frames.local_allowed, XDP_PASS),
    ] {
        let action = c.test_run(frame, 1)?.return_value;
        let reason = decode_reason_counter(c.last_counter()?).map(|(r, _, _)| r.name());
        let by_rule = reason.is_none();
        if action != expect || by_rule != (expect == XDP_PASS) {
            bail!(
                "appliance mode, {what}: returned {action} counted under {}, expected {expect} {}",
                reason.unwrap_or("a rule"),
                if expect == XDP_PASS {
                    "by a rule"
                } else {
                    "for a reason"
                }
            );
        }
    }
    c.set_trace(false)?;
    Ok(c)
}
