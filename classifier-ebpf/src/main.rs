//! portguard's packet path: the two programs' entry points.
//!
//! `portguard` (XDP, ingress) parses each frame (`parse`), decides a verdict
//! (`decide`), and leaves through a single exit point that counts it
//! (`events`: counters, anomaly lines, packet events, and the tests' trace
//! in an object built with the `trace` feature).
//! `portguard_egress` (TC, egress) records the flows that leave each leg
//! (the host's own connections, and what an appliance really forwarded) so
//! that XDP can let their answers in (`flows`). Every map is in `maps`.
#![no_std]
#![no_main]

mod decide;
mod events;
mod flows;
mod maps;
mod parse;

use aya_ebpf::{
    bindings::{TC_ACT_OK, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use classifier_common::{COUNTER_ENTRIES, FLAG_APPLIANCE};

use crate::{
    decide::{classify_any, fast_path, leg_of},
    events::finish,
    flows::record_flow,
    maps::CONFIG,
    parse::Frame,
};

/// The license the kernel reads from the object's `license` section. The
/// crate is `MIT OR Apache-2.0`, but the kernel knows only GPL-compatible
/// strings and denies GPL-only helpers (`bpf_perf_event_output`, for one) to
/// a program without one; "Dual MIT/GPL" offers MIT, as the crate does, and
/// is GPL-compatible for the verifier. classifier-user's `ebpf_object` tests
/// read it back from the embedded object.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[xdp]
pub fn portguard(ctx: XdpContext) -> u32 {
    match try_portguard(&ctx) {
        Ok(action) => action,
        Err(()) => xdp_action::XDP_ABORTED,
    }
}

/// The single exit point: count the outcome and turn it into an action.
#[inline(always)]
fn try_portguard(ctx: &XdpContext) -> Result<u32, ()> {
    let config = CONFIG.get(0).ok_or(())?;
    if let Some(outcome) = fast_path(ctx, config) {
        return Ok(finish(ctx, config, outcome, 0));
    }
    let frame = Frame {
        start: ctx.data(),
        end: ctx.data_end(),
        ctx: ctx.ctx.cast(),
    };
    // Appliance mode keeps one set of counters per leg; a host has one leg.
    let leg = if config.flags & FLAG_APPLIANCE != 0 {
        leg_of(config, ctx.ingress_ifindex() as u32)
    } else {
        0
    };
    let outcome = classify_any(&frame, config, leg);
    Ok(finish(ctx, config, outcome, leg * COUNTER_ENTRIES))
}

/// Records the flows that leave this leg, so that XDP lets their answers in
/// (see `flows`).
#[classifier]
pub fn portguard_egress(ctx: TcContext) -> i32 {
    record_flow(&ctx);
    TC_ACT_OK
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
