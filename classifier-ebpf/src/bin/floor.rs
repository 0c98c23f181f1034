//! The empty XDP program: the floor every per-packet cost is compared with.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

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
pub fn floor(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
