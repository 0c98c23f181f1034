//! Appliance mode in the real XDP program (`BPF_PROG_TEST_RUN`): the box in
//! front of an Edge pool sees forwarded packets in both directions. Inbound
//! rows match by destination profile, outbound rows by source profile, the
//! answers to what passed by a rule pass as `established` and nothing else
//! does, and the lockout guard covers the box's own addresses only.

use classifier_common::Reason;
use portguard::policy::{Mgmt, PolicySpec};
use portguard_testsupport::{
    frames::{Packet, TCP_ACK, TCP_SYN},
    kernel::{Kernel, pin_this_thread_to_cpu0},
};

/// The appliance's own addresses (one per leg and family).
const OWN: &str = "198.18.9.1";
const OWN6: &str = "2001:db8:9::1";
/// Edge external addresses behind the box.
const ACCESS: &str = "198.18.2.10";
const AV: &str = "198.18.2.12";
const AV6: &str = "2001:db8:2::12";
const PROXY: &str = "198.18.2.20";
/// A federated partner, a remote client and a stranger on the internet side.
const PARTNER: &str = "198.19.0.7";
const STRANGER: &str = "198.19.0.66";
const PARTNER6: &str = "2001:db8:ff::7";

fn spec(roles: Option<&str>) -> PolicySpec {
    let p = |s: &str| s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
    PolicySpec {
        default_roles: roles.map(|r| vec![r.to_string()]),
        profiles: vec![
            p("198.18.2.10/32=access-edge-external"),
            p("198.18.2.12/32=av-edge-external"),
            p("2001:db8:2::12/128=av-edge-external"),
            p("198.18.2.20/32=reverse-proxy-external"),
        ],
        mgmt: Mgmt::defaults(),
        appliance: true,
        local_addrs: vec![
            OWN.parse().unwrap_or_else(|e| panic!("{e}")),
            OWN6.parse().unwrap_or_else(|e| panic!("{e}")),
        ],
        ..PolicySpec::default()
    }
}

struct Box(Kernel);

impl Box {
    fn new(roles: Option<&str>) -> Option<Box> {
        Kernel::new("appliance_verdicts", &spec(roles)).map(Box)
    }

    /// Runs `frame` and checks pass/drop and what it was counted under:
    /// `Ok(role/service)` for a rule, `Err(reason)` for a reason.
    fn expect(&mut self, what: &str, frame: &Packet, pass: bool, by: Result<&str, Reason>) {
        let (passed, counter) = self.0.run(&frame.build());
        let got = self.0.describe(counter);
        assert_eq!(
            passed,
            pass,
            "{what}: expected {}, got {} (counted as {got})",
            if pass { "pass" } else { "drop" },
            if passed { "pass" } else { "drop" },
        );
        match by {
            Ok(role_proto) => assert!(
                got.starts_with(&format!("rule {role_proto}")),
                "{what}: expected rule {role_proto}, counted as {got}"
            ),
            Err(reason) => {
                let want = format!("{} {}/", if pass { "pass" } else { "drop" }, reason.name());
                assert!(
                    got.starts_with(&want),
                    "{what}: expected reason {}, counted as {got}",
                    reason.name()
                );
            }
        }
    }
}

fn syn_ack(src: &str, dst: &str, sport: u16, dport: u16) -> Packet {
    Packet::tcp_flags(src, dst, sport, dport, TCP_SYN | TCP_ACK)
}

#[test]
fn inbound_rows_match_the_destination_and_answers_pass() {
    let Some(mut b) = Box::new(None) else { return };
    // Federation into the Access Edge, and its answer.
    b.expect(
        "SYN partner -> Access Edge 5061",
        &Packet::tcp(PARTNER, ACCESS, 40_001, 5061),
        true,
        Ok("access-edge-external/tcp/5061-5061"),
    );
    b.expect(
        "SYN-ACK Access Edge 5061 -> partner",
        &syn_ack(ACCESS, PARTNER, 5061, 40_001),
        true,
        Err(Reason::Established),
    );
    // The same answer from a port the partner did not connect to: not a reply.
    b.expect(
        "SYN-ACK Access Edge 5062 -> partner",
        &syn_ack(ACCESS, PARTNER, 5062, 40_001),
        false,
        Err(Reason::PortNotAllowed),
    );
    b.expect(
        "SYN partner -> Access Edge 5062",
        &Packet::tcp(PARTNER, ACCESS, 40_002, 5062),
        false,
        Err(Reason::PortNotAllowed),
    );
    // The reverse proxy publishes 443 and 80, nothing else.
    b.expect(
        "SYN stranger -> reverse proxy 443",
        &Packet::tcp(STRANGER, PROXY, 40_003, 443),
        true,
        Ok("reverse-proxy-external/tcp/443-443"),
    );
    b.expect(
        "SYN stranger -> reverse proxy 4443",
        &Packet::tcp(STRANGER, PROXY, 40_004, 4443),
        false,
        Err(Reason::PortNotAllowed),
    );
    // STUN to the A/V Edge, and the binding response.
    b.expect(
        "STUN partner -> A/V Edge 3478",
        &Packet::udp(PARTNER, AV, 40_005, 3478),
        true,
        Ok("av-edge-external/udp/3478-3478"),
    );
    b.expect(
        "STUN response A/V Edge 3478 -> partner",
        &Packet::udp(AV, PARTNER, 3478, 40_005),
        true,
        Err(Reason::Established),
    );
}

#[test]
fn outbound_rows_match_the_source_and_only_answers_come_back() {
    let Some(mut b) = Box::new(None) else { return };
    // Media relay out of the A/V Edge (outbound only in the 2015 tables).
    b.expect(
        "RTP A/V Edge 50123 -> partner 50500",
        &Packet::udp(AV, PARTNER, 50_123, 50_500),
        true,
        Ok("av-edge-external/udp/50000-59999"),
    );
    b.expect(
        "RTP partner 50500 -> A/V Edge 50123 (the answer)",
        &Packet::udp(PARTNER, AV, 50_500, 50_123),
        true,
        Err(Reason::Established),
    );
    b.expect(
        "RTP stranger 50500 -> A/V Edge 50123 (unsolicited)",
        &Packet::udp(STRANGER, AV, 50_500, 50_123),
        false,
        Err(Reason::PortNotAllowed),
    );
    b.expect(
        "RTP partner 50500 -> A/V Edge 50124 (another port)",
        &Packet::udp(PARTNER, AV, 50_500, 50_124),
        false,
        Err(Reason::PortNotAllowed),
    );
    // Inbound to the media range is not a row of the 2015 tables.
    b.expect(
        "RTP partner -> A/V Edge 50000 inbound",
        &Packet::udp(PARTNER, AV, 40_006, 50_000),
        false,
        Err(Reason::PortNotAllowed),
    );
    // TCP: the A/V Edge's outbound 443, the SYN-ACK back, and a forged one.
    b.expect(
        "SYN A/V Edge -> partner 443",
        &Packet::tcp(AV, PARTNER, 40_007, 443),
        true,
        Ok("av-edge-external/tcp/443-443"),
    );
    b.expect(
        "SYN-ACK partner 443 -> A/V Edge",
        &syn_ack(PARTNER, AV, 443, 40_007),
        true,
        Err(Reason::Established),
    );
    b.expect(
        "SYN-ACK stranger 443 -> A/V Edge",
        &syn_ack(STRANGER, AV, 443, 40_007),
        false,
        Err(Reason::PortNotAllowed),
    );
    // A pure SYN is never an answer, even on a recorded flow.
    b.expect(
        "SYN partner 443 -> A/V Edge 40007",
        &Packet::tcp(PARTNER, AV, 443, 40_007),
        false,
        Err(Reason::PortNotAllowed),
    );
    // XMPP federation out of the Access Edge (the XMPP Proxy service shares
    // its address): the proxy opens its own server-to-server connection,
    // and the partner's SYN-ACK comes back as an answer.
    b.expect(
        "SYN Access Edge -> partner 5269",
        &Packet::tcp(ACCESS, PARTNER, 40_040, 5269),
        true,
        Ok("access-edge-external/tcp/5269-5269"),
    );
    b.expect(
        "SYN-ACK partner 5269 -> Access Edge",
        &syn_ack(PARTNER, ACCESS, 5269, 40_040),
        true,
        Err(Reason::Established),
    );
    // The Access Edge has no outbound row to 3478: its source profile does
    // not pass it (and the destination has no profile).
    b.expect(
        "Access Edge -> partner 3478",
        &Packet::udp(ACCESS, PARTNER, 40_008, 3478),
        false,
        Err(Reason::PortNotAllowed),
    );
    // Neither side in a profile, not the box's own.
    b.expect(
        "stranger -> partner 443",
        &Packet::tcp(STRANGER, PARTNER, 40_009, 443),
        false,
        Err(Reason::NoProfile),
    );
}

#[test]
fn ipv6_media_relay_both_ways() {
    let Some(mut b) = Box::new(None) else { return };
    b.expect(
        "RTP A/V Edge6 -> partner6 51000",
        &Packet::udp(AV6, PARTNER6, 52_000, 51_000),
        true,
        Ok("av-edge-external/udp/50000-59999"),
    );
    b.expect(
        "RTP partner6 -> A/V Edge6 (the answer)",
        &Packet::udp(PARTNER6, AV6, 51_000, 52_000),
        true,
        Err(Reason::Established),
    );
    b.expect(
        "RTP partner6 -> A/V Edge6 (another port)",
        &Packet::udp(PARTNER6, AV6, 51_001, 52_000),
        false,
        Err(Reason::PortNotAllowed),
    );
    b.expect(
        "STUN partner6 -> A/V Edge6 3478",
        &Packet::udp(PARTNER6, AV6, 40_010, 3478),
        true,
        Ok("av-edge-external/udp/3478-3478"),
    );
}

#[test]
fn the_lockout_guard_keeps_the_box_reachable_and_opens_nothing_behind_it() {
    let Some(mut b) = Box::new(None) else { return };
    b.expect(
        "SSH stranger -> the box",
        &Packet::tcp(STRANGER, OWN, 40_011, 22),
        true,
        Err(Reason::Management),
    );
    b.expect(
        "SSH stranger -> the box (IPv6)",
        &Packet::tcp(PARTNER6, OWN6, 40_012, 22),
        true,
        Err(Reason::Management),
    );
    b.expect(
        "SSH stranger -> Access Edge behind the box",
        &Packet::tcp(STRANGER, ACCESS, 40_013, 22),
        false,
        Err(Reason::PortNotAllowed),
    );
    b.expect(
        "SSH stranger -> an address in no profile",
        &Packet::tcp(STRANGER, PARTNER, 40_014, 22),
        false,
        Err(Reason::NoProfile),
    );
    // Without --role the box's own addresses open nothing else: its own
    // empty profile, so `port_not_allowed`, not `no_profile`.
    b.expect(
        "HTTPS stranger -> the box",
        &Packet::tcp(STRANGER, OWN, 40_015, 443),
        false,
        Err(Reason::PortNotAllowed),
    );
}

#[test]
fn role_gives_the_box_its_own_rows_only() {
    let Some(mut b) = Box::new(Some("reverse-proxy-external")) else {
        return;
    };
    b.expect(
        "HTTPS stranger -> the box",
        &Packet::tcp(STRANGER, OWN, 40_016, 443),
        true,
        Ok("reverse-proxy-external/tcp/443-443"),
    );
    // --role does not reach forwarded traffic: an address in no profile
    // stays closed.
    b.expect(
        "HTTPS stranger -> an address in no profile",
        &Packet::tcp(STRANGER, PARTNER, 40_017, 443),
        false,
        Err(Reason::NoProfile),
    );
}

/// The recorders skip the flow table lookup on 63 datagrams in 64 of a flow
/// they recorded lately (a per-CPU cache): after an eviction, the entry is
/// back by the 64th datagram, and not before. The thread stays on one CPU so
/// that every run meets the same CPU's cache.
#[test]
fn an_evicted_flow_is_recorded_again_within_64_datagrams() {
    pin_this_thread_to_cpu0();
    let Some(mut b) = Box::new(None) else { return };
    let out = Packet::udp(AV, PARTNER, 50_200, 50_700);
    let answer = Packet::udp(PARTNER, AV, 50_700, 50_200);
    b.expect(
        "RTP out",
        &out,
        true,
        Ok("av-edge-external/udp/50000-59999"),
    );
    b.expect("its answer", &answer, true, Err(Reason::Established));
    b.0.clear_flows();
    b.expect(
        "the answer after the entry was evicted",
        &answer,
        false,
        Err(Reason::PortNotAllowed),
    );
    for i in 1..=63 {
        b.expect(
            &format!("RTP out, datagram {i} after the first"),
            &out,
            true,
            Ok("av-edge-external/udp/50000-59999"),
        );
    }
    b.expect(
        "the answer while the cache still skips the lookup",
        &answer,
        false,
        Err(Reason::PortNotAllowed),
    );
    b.expect(
        "RTP out, the 64th datagram",
        &out,
        true,
        Ok("av-edge-external/udp/50000-59999"),
    );
    b.expect(
        "the answer once the entry is back",
        &answer,
        true,
        Err(Reason::Established),
    );
}

/// The per-CPU cache of `PROFILES` answers (`SEL_CACHE`) never outlives the
/// generation it was filled in: after each reload that gives an address
/// another profile, takes its profile away or gives it back, the very next
/// packet to it (on the CPU whose cache holds the old answer) meets the new
/// policy. The same test covers an own address turned into a forwarded one,
/// which the lockout guard then no longer covers.
#[test]
fn a_reload_retires_the_cached_profile_of_every_address() {
    pin_this_thread_to_cpu0();
    let Some(mut b) = Box::new(None) else { return };
    let sip = Packet::tcp(PARTNER, ACCESS, 40_020, 5061);
    let http = Packet::tcp(PARTNER, ACCESS, 40_021, 80);
    let ssh_to_box = Packet::tcp(STRANGER, OWN, 40_022, 22);
    for _ in 0..3 {
        b.expect(
            "SIP to the Access Edge",
            &sip,
            true,
            Ok("access-edge-external/tcp/5061-5061"),
        );
        b.expect("SSH to the box", &ssh_to_box, true, Err(Reason::Management));
    }

    // The Access Edge's address now publishes the reverse proxy, and the
    // box gave up the address it had.
    let mut moved = spec(None);
    moved.profiles[0] = "198.18.2.10/32=reverse-proxy-external"
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    moved.local_addrs.retain(|a| a.to_string() != OWN);
    b.0.reload(&moved, 2);
    b.expect(
        "SIP after the move",
        &sip,
        false,
        Err(Reason::PortNotAllowed),
    );
    b.expect(
        "HTTP after the move",
        &http,
        true,
        Ok("reverse-proxy-external/tcp/80-80"),
    );
    b.expect(
        "SSH to an address the box gave up",
        &ssh_to_box,
        false,
        Err(Reason::NoProfile),
    );

    let mut gone = spec(None);
    gone.profiles.remove(0);
    b.0.reload(&gone, 3);
    b.expect(
        "HTTP once the address has no profile",
        &http,
        false,
        Err(Reason::NoProfile),
    );

    // Back to the first policy, in the generation slot it started in.
    b.0.reload(&spec(None), 4);
    b.expect(
        "SIP back again",
        &sip,
        true,
        Ok("access-edge-external/tcp/5061-5061"),
    );
    b.expect("HTTP back again", &http, false, Err(Reason::PortNotAllowed));
    b.expect(
        "SSH to the box again",
        &ssh_to_box,
        true,
        Err(Reason::Management),
    );
}
