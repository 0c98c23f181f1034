//! Appliance mode in the real XDP program and egress recorder
//! (`BPF_PROG_TEST_RUN`, with real legs): the box in front of an Edge pool
//! sees forwarded packets in both directions. Inbound rows match by
//! destination profile, outbound rows by source profile on the leg that
//! source sits behind; what the box forwards is recorded as it leaves a leg,
//! its answers pass as `established` on that leg and nothing else does, and
//! the lockout guard covers the box's own addresses only.

use std::{collections::BTreeMap, net::IpAddr};

use classifier_common::Reason;
use portguard::policy::{Mgmt, Placement, PolicySpec, Prefix};
use portguard_testsupport::{
    frames::{Packet, TCP_ACK, TCP_SYN},
    kernel::{Kernel, pin_this_thread_to_cpu0},
    verdict_spec::{self, Spec},
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

/// The legs, in `--iface` order: the internet, then the Edge servers' side.
const EXT: usize = 0;
const DMZ: usize = 1;

const PROFILES: [&str; 4] = [
    "198.18.2.10/32=access-edge-external",
    "198.18.2.12/32=av-edge-external",
    "2001:db8:2::12/128=av-edge-external",
    "198.18.2.20/32=reverse-proxy-external",
];

fn spec(roles: Option<&str>) -> PolicySpec {
    let p = |s: &str| s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
    let profiles: Vec<portguard::policy::ProfileArg> = PROFILES.iter().map(|s| p(s)).collect();
    // Every Edge address sits behind the DMZ leg, as the kernel's routes
    // would say.
    let profile_legs: BTreeMap<Prefix, u32> =
        profiles.iter().map(|a| (a.prefix, DMZ as u32)).collect();
    PolicySpec {
        default_roles: roles.map(|r| vec![r.to_string()]),
        profiles,
        mgmt: Mgmt::defaults(),
        placement: Placement::Appliance,
        local_addrs: vec![
            OWN.parse().unwrap_or_else(|e| panic!("{e}")),
            OWN6.parse().unwrap_or_else(|e| panic!("{e}")),
        ],
        profile_legs,
        // Verdicts by port and flow: the frames' filler bytes are no media,
        // and the payload check has its own tests (tests/tests/policy/media.rs).
        media_check: portguard::policy::MediaCheck::Off,
        ..PolicySpec::default()
    }
}

/// Where the box's routes send an address: the Edge servers' networks sit
/// behind the DMZ leg, the rest of the world behind the internet leg, and
/// the box's own addresses are delivered to it.
fn route(addr: IpAddr) -> Option<usize> {
    let text = addr.to_string();
    if text == OWN || text == OWN6 {
        None
    } else if text.starts_with("198.18.2.") || text.starts_with("2001:db8:2::") {
        Some(DMZ)
    } else {
        Some(EXT)
    }
}

struct Box(Kernel);

impl Box {
    fn new(roles: Option<&str>) -> Option<Box> {
        Kernel::appliance("appliance_verdicts", &spec(roles), 2).map(Box)
    }

    /// A packet sent from where its source lives: it arrives on the leg its
    /// source is routed through, and what passes is forwarded by the leg its
    /// destination is routed through (and recorded there).
    fn expect(&mut self, what: &str, frame: &Packet, pass: bool, by: Result<&str, Reason>) {
        let from = route(frame.src).unwrap_or_else(|| panic!("{what}: a packet from the box"));
        self.expect_on(from, what, frame, pass, by);
    }

    /// The same packet arriving on leg `from`, whatever its source says.
    fn expect_on(
        &mut self,
        from: usize,
        what: &str,
        frame: &Packet,
        pass: bool,
        by: Result<&str, Reason>,
    ) {
        let bytes = frame.build();
        let (passed, counter) = self.0.run_on(from, &bytes);
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
        // The kernel forwards what passed; the recorder sees it leave.
        if passed && let Some(out) = route(frame.dst) {
            self.0.egress_on(out, Some(from), &bytes);
        }
    }
}

fn syn_ack(src: &str, dst: &str, sport: u16, dport: u16) -> Packet {
    Packet::tcp_flags(src, dst, sport, dport, TCP_SYN | TCP_ACK)
}

/// Runs the spec's appliance sections of `group` (tests/data/verdicts.toml),
/// each on a fresh program with its legs: a frame arrives on the leg its
/// source is routed by, and what passes is forwarded by the leg its
/// destination is routed by (and recorded there).
fn run_group(group: &str) {
    let spec = Spec::load();
    let mut failures = Vec::new();
    let mut ran = 0;
    for section in spec.group(group) {
        let policy = &spec.policies[&section.policy];
        assert!(
            !policy.legs.is_empty(),
            "{group}: policy {} is not an appliance's",
            section.policy
        );
        let Some(mut k) = Kernel::appliance(
            "appliance_verdicts",
            &spec.policy(&section.policy),
            policy.legs.len(),
        ) else {
            return;
        };
        for case in &section.cases {
            let p = case
                .frame
                .packet()
                .unwrap_or_else(|| panic!("{}: an appliance case needs an IP packet", case.name));
            let route = |a| {
                policy
                    .leg_of(a)
                    .unwrap_or_else(|e| panic!("{}: {e}", section.policy))
            };
            let from = route(p.src)
                .unwrap_or_else(|| panic!("{}: a packet from the box itself", case.name));
            let got = k.run_on(from, &case.bytes);
            let problems = verdict_spec::check(&k, &case.expect, got);
            if !problems.is_empty() {
                failures.push(format!(
                    "[policy {}] {} ({}, in by {}): {}",
                    section.policy,
                    case.name,
                    case.packet,
                    policy.legs[from],
                    problems.join("; ")
                ));
            }
            // The kernel forwards what passed; the recorder sees it leave.
            if got.0
                && let Some(out) = route(p.dst)
            {
                k.egress_on(out, Some(from), &case.bytes);
            }
            ran += 1;
        }
    }
    assert!(
        failures.is_empty(),
        "{group}: {} cases differ from tests/data/verdicts.toml:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(ran > 0, "verdicts.toml has no case in group {group}");
}

#[test]
fn inbound_rows_match_the_destination_and_answers_pass() {
    run_group("inbound");
}

#[test]
fn outbound_rows_match_the_source_and_only_answers_come_back() {
    run_group("outbound");
}

#[test]
fn ipv6_media_relay_both_ways() {
    run_group("ipv6-relay");
}

#[test]
fn the_lockout_guard_keeps_the_box_reachable_and_opens_nothing_behind_it() {
    run_group("lockout");
}

#[test]
fn role_gives_the_box_its_own_rows_only() {
    run_group("role");
}

/// Every group of the spec's appliance sections has its test above.
#[test]
fn every_appliance_group_of_the_spec_has_a_test() {
    let spec = Spec::load();
    let groups: std::collections::BTreeSet<&str> = spec
        .sections
        .iter()
        .filter(|s| spec.is_appliance(&s.policy))
        .filter_map(|s| s.group.as_deref())
        .collect();
    assert_eq!(
        groups,
        ["inbound", "outbound", "ipv6-relay", "lockout", "role"].into(),
        "appliance groups in verdicts.toml against tests here"
    );
}

/// The spec's appliance is this file's: the same profiles, own addresses
/// and routes, so that the cases here and there describe one box.
#[test]
fn the_specs_appliance_is_the_one_of_these_tests() {
    let spec = Spec::load();
    let from_file = spec.policy("edge-appliance");
    let here = self::spec(None);
    assert_eq!(
        format!(
            "{:?}",
            (
                &from_file.profiles,
                &from_file.local_addrs,
                &from_file.profile_legs
            )
        ),
        format!(
            "{:?}",
            (&here.profiles, &here.local_addrs, &here.profile_legs)
        ),
        "profiles, own addresses and profile legs"
    );
    let policy = &spec.policies["edge-appliance"];
    for a in [
        OWN, OWN6, ACCESS, AV, AV6, PROXY, PARTNER, STRANGER, PARTNER6,
    ] {
        let addr: IpAddr = a.parse().expect("the constants are addresses");
        assert_eq!(
            policy.leg_of(addr).expect("the spec's routes read"),
            route(addr),
            "the leg of {a}"
        );
    }
}

/// The recorder skips the flow table lookup on 63 datagrams in 64 of a flow
/// it looked at lately (a per-CPU cache, which also forgets a flow once the
/// refresh mark moves on): after an eviction, the entry is back by the 64th
/// datagram at the latest. The thread stays on one CPU so that every run
/// meets the same CPU's cache.
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
    let mut back_after = None;
    for i in 1..=64 {
        b.expect(
            &format!("RTP out, datagram {i} after the eviction"),
            &out,
            true,
            Ok("av-edge-external/udp/50000-59999"),
        );
        let (passed, _) = b.0.run_on(EXT, &answer.build());
        if passed {
            back_after = Some(i);
            break;
        }
    }
    assert!(
        back_after.is_some(),
        "the answer still dropped after 64 datagrams out"
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

/// The attacks of a spoofer on the internet side: a frame that claims an
/// Edge address as its source arrives on the internet leg, where no Edge
/// address sits. Its outbound rows do not apply there (a strict
/// reverse-path check), so nothing passes, nothing is forwarded, and no
/// answer is planted: the port it aimed at stays closed.
#[test]
fn a_spoofed_edge_source_on_the_internet_leg_opens_nothing() {
    let Some(mut b) = Box::new(None) else { return };
    // UDP 53 is an outbound row of the Access Edge, 3478 and the media
    // range of the A/V Edge; SNMP (161) and mDNS (5353) are nobody's.
    let plants = [
        ("DNS", Packet::udp(ACCESS, STRANGER, 161, 53)),
        ("NTP", Packet::udp(ACCESS, STRANGER, 123, 53)),
        ("STUN", Packet::udp(AV, STRANGER, 161, 3478)),
        ("media", Packet::udp(AV, STRANGER, 5353, 50_000)),
        ("media v6", Packet::udp(AV6, PARTNER6, 161, 50_000)),
    ];
    for (name, plant) in &plants {
        b.expect_on(
            EXT,
            &format!("{name}: the spoofed frame on the internet leg"),
            plant,
            false,
            Err(Reason::PortNotAllowed),
        );
        let (sport, dport) = match plant.l4 {
            portguard_testsupport::frames::L4::Udp { sport, dport } => (sport, dport),
            _ => unreachable!("UDP plants"),
        };
        let attack = Packet::new(
            plant.dst,
            plant.src,
            portguard_testsupport::frames::L4::Udp {
                sport: dport,
                dport: sport,
            },
        );
        b.expect_on(
            EXT,
            &format!("{name}: the attacker's packet to the planted port"),
            &attack,
            false,
            Err(Reason::PortNotAllowed),
        );
    }
    // TCP: a spoofed SYN from the Access Edge's SSH port to the attacker's
    // 5061 (an outbound row), then the attacker's non-SYN segments to 22.
    b.expect_on(
        EXT,
        "spoofed SYN Access Edge 22 -> attacker 5061",
        &Packet::tcp(ACCESS, STRANGER, 22, 5061),
        false,
        Err(Reason::PortNotAllowed),
    );
    b.expect_on(
        EXT,
        "the attacker's ACK to the Access Edge's SSH",
        &Packet::tcp_flags(STRANGER, ACCESS, 5061, 22, TCP_ACK),
        false,
        Err(Reason::PortNotAllowed),
    );
    // A profiled source on the wrong leg carries nothing to an address in
    // no profile either (an internal DNS server, say).
    b.expect_on(
        EXT,
        "spoofed Access Edge -> 198.18.3.5:53",
        &Packet::udp(ACCESS, "198.18.3.5", 40_100, 53),
        false,
        Err(Reason::PortNotAllowed),
    );
    b.expect_on(
        EXT,
        "spoofed Access Edge -> 198.18.3.5:5061",
        &Packet::tcp(ACCESS, "198.18.3.5", 40_101, 5061),
        false,
        Err(Reason::PortNotAllowed),
    );
    let planted = b.0.flows(false).len() + b.0.flows(true).len();
    assert_eq!(planted, 0, "flow entries after the plants: {planted}");

    // The same outbound rows from the leg the Edge sits behind: they pass,
    // and their answers come back.
    b.expect(
        "Access Edge -> DNS 53, from the DMZ leg",
        &Packet::udp(ACCESS, STRANGER, 40_102, 53),
        true,
        Ok("access-edge-external/udp/53-53"),
    );
    b.expect(
        "the DNS answer",
        &Packet::udp(STRANGER, ACCESS, 53, 40_102),
        true,
        Err(Reason::Established),
    );
}

/// An answer is an answer only on the leg its flow left by: the same
/// addresses and ports arriving on another leg are a planted frame.
#[test]
fn an_answer_counts_only_on_the_leg_its_flow_left_by() {
    let Some(mut b) = Box::new(None) else { return };
    b.expect(
        "SYN partner -> Access Edge 5061",
        &Packet::tcp(PARTNER, ACCESS, 40_200, 5061),
        true,
        Ok("access-edge-external/tcp/5061-5061"),
    );
    // The flow left by the DMZ leg: its answer arrives there.
    b.expect_on(
        EXT,
        "the SYN-ACK, planted on the internet leg",
        &syn_ack(ACCESS, PARTNER, 5061, 40_200),
        false,
        Err(Reason::PortNotAllowed),
    );
    b.expect(
        "the SYN-ACK from the DMZ leg",
        &syn_ack(ACCESS, PARTNER, 5061, 40_200),
        true,
        Err(Reason::Established),
    );
}

/// What the kernel did not forward is not recorded: a frame XDP passes but
/// the kernel then drops (a bad checksum, a foreign MAC, an unknown VLAN)
/// never reaches the egress recorder, so it opens no way back.
#[test]
fn only_what_leaves_a_leg_opens_a_way_back() {
    let Some(mut b) = Box::new(None) else { return };
    let request = Packet::udp(PARTNER, AV, 40_300, 3478);
    let answer = Packet::udp(AV, PARTNER, 3478, 40_300);
    let (passed, _) = b.0.run_on(EXT, &request.build());
    assert!(passed, "STUN to the A/V Edge passes XDP");
    // Not forwarded (no egress): the answer has no entry.
    b.expect(
        "the answer to a request the kernel never forwarded",
        &answer,
        false,
        Err(Reason::PortNotAllowed),
    );
    b.expect(
        "the request, forwarded this time",
        &request,
        true,
        Ok("av-edge-external/udp/3478-3478"),
    );
    b.expect("its answer", &answer, true, Err(Reason::Established));
}

/// Flow state in two tables: what one side alone sent is unconfirmed; the
/// answerer's first segment past the handshake confirms a TCP flow, and a
/// flood of unconfirmed entries (a spoofed SYN flood from many sources)
/// then cannot push it out.
#[test]
fn a_syn_flood_cannot_evict_a_confirmed_connection() {
    let Some(mut b) = Box::new(None) else { return };
    b.expect(
        "SYN partner -> Access Edge 5061",
        &Packet::tcp(PARTNER, ACCESS, 40_400, 5061),
        true,
        Ok("access-edge-external/tcp/5061-5061"),
    );
    b.expect(
        "SYN-ACK",
        &syn_ack(ACCESS, PARTNER, 5061, 40_400),
        true,
        Err(Reason::Established),
    );
    assert_eq!(b.0.flows(true).len(), 0, "a SYN-ACK confirms nothing");
    b.expect(
        "the partner's ACK",
        &Packet::tcp_flags(PARTNER, ACCESS, 40_400, 5061, TCP_ACK),
        true,
        Ok("access-edge-external/tcp/5061-5061"),
    );
    b.expect(
        "the Access Edge's first data segment",
        &Packet::tcp_flags(ACCESS, PARTNER, 5061, 40_400, TCP_ACK),
        true,
        Err(Reason::Established),
    );
    let confirmed = b.0.flows(true);
    assert_eq!(
        confirmed.len(),
        1,
        "the connection is confirmed: {confirmed:?}"
    );
    // 100,000 spoofed SYNs from distinct sources (more than the unconfirmed
    // table holds), each forwarded and answered by the Edge's SYN-ACK.
    for i in 0..100_000u32 {
        let src = format!("198.19.{}.{}", 16 + (i >> 8) % 200, i & 0xff);
        let sport = 1024 + (i % 60_000) as u16;
        let syn = Packet::tcp(&src, ACCESS, sport, 5061).build();
        let (passed, _) = b.0.run_on(EXT, &syn);
        assert!(passed, "spoofed SYN {i} is allowed by the rule");
        b.0.egress_on(DMZ, Some(EXT), &syn);
    }
    assert!(
        b.0.flows(false).len() <= 65_536,
        "the unconfirmed table holds its size"
    );
    b.expect(
        "the idle connection's next segment after the flood",
        &Packet::tcp_flags(ACCESS, PARTNER, 5061, 40_400, TCP_ACK),
        true,
        Err(Reason::Established),
    );
}

/// One source (with random ports) may open only its share of unconfirmed
/// flows per window: past it no entry is made, so its answers are dropped,
/// and others' entries are never pushed out by it.
#[test]
fn one_source_gets_only_its_share_of_unconfirmed_flows() {
    let Some(mut b) = Box::new(None) else { return };
    // Events on (drops, and the refusals of entries), with room for all.
    b.0.classifier
        .set_events(1_000_000, false)
        .expect("turning events on");
    let mut ring = b.0.classifier.take_events_ring().expect("the events ring");
    let share = classifier_common::FLOW_SHARE_DEFAULT;
    // Source ports from 10000: none is a port of the Access Edge's outbound
    // rows (53, 80, 5061, 5269), whose answers a rule would pass anyway
    // (those flows are not recorded, so they spend no share).
    for i in 0..share + 100 {
        let syn = Packet::tcp(STRANGER, ACCESS, 10_000 + i as u16, 5061).build();
        let (passed, _) = b.0.run_on(EXT, &syn);
        assert!(passed, "SYN {i}");
        b.0.egress_on(DMZ, Some(EXT), &syn);
    }
    let from_stranger =
        b.0.flows(false)
            .iter()
            .filter(|(k, _)| {
                k.local
                    == Prefix::new(portguard_testsupport::frames::ip(STRANGER), 32)
                        .unwrap_or_else(|e| panic!("{e}"))
                        .addr
            })
            .count();
    assert_eq!(
        from_stranger, share as usize,
        "entries one source opened within one window"
    );
    // Each refusal is an event (verdict pass: the SYN went on), naming the
    // table, with the frame that left: the stranger is who spent it.
    let mut refused = 0;
    while let Some(item) = ring.next() {
        let e: classifier_common::Event =
            *bytemuck::from_bytes(&item[..size_of::<classifier_common::Event>()]);
        if e.reason == classifier_common::EVENT_REASON_FLOW_REFUSED {
            assert_eq!(
                (e.verdict, e.slot),
                (
                    classifier_common::Verdict::Pass as u32,
                    classifier_common::STAT_NEW_REFUSED
                ),
                "a refusal event's verdict and table"
            );
            let src = &e.data[14 + 12..14 + 16];
            assert_eq!(src, [198, 19, 0, 66], "the refused flow's source");
            refused += 1;
        }
    }
    assert_eq!(refused, 100, "refusal events: one per SYN past the share");
    // The SYN-ACK to a SYN past the share has no entry.
    b.expect(
        "SYN-ACK to the stranger's last SYN",
        &syn_ack(ACCESS, STRANGER, 5061, 10_000 + (share + 99) as u16),
        false,
        Err(Reason::PortNotAllowed),
    );
    // Another source is not affected.
    b.expect(
        "SYN partner -> Access Edge 5061",
        &Packet::tcp(PARTNER, ACCESS, 40_500, 5061),
        true,
        Ok("access-edge-external/tcp/5061-5061"),
    );
    b.expect(
        "its SYN-ACK",
        &syn_ack(ACCESS, PARTNER, 5061, 40_500),
        true,
        Err(Reason::Established),
    );
}

/// A flow table lost to a restart (`--clean-start`, a failover to a standby
/// box) fills again from the traffic: the next segment or datagram the rule
/// side sends records the answer, whatever its flags.
#[test]
fn connections_survive_a_lost_flow_table() {
    let Some(mut b) = Box::new(None) else { return };
    b.expect(
        "SYN partner -> Access Edge 5061",
        &Packet::tcp(PARTNER, ACCESS, 40_600, 5061),
        true,
        Ok("access-edge-external/tcp/5061-5061"),
    );
    b.expect(
        "Edge UDP 53 out",
        &Packet::udp(ACCESS, STRANGER, 40_601, 53),
        true,
        Ok("access-edge-external/udp/53-53"),
    );
    b.0.restart_flows();
    b.expect(
        "the Edge's segment with the table lost",
        &Packet::tcp_flags(ACCESS, PARTNER, 5061, 40_600, TCP_ACK),
        false,
        Err(Reason::PortNotAllowed),
    );
    // The partner's next segment (an ACK, mid-stream) records it again.
    b.expect(
        "the partner's ACK mid-stream",
        &Packet::tcp_flags(PARTNER, ACCESS, 40_600, 5061, TCP_ACK),
        true,
        Ok("access-edge-external/tcp/5061-5061"),
    );
    b.expect(
        "the Edge's segment after the pickup",
        &Packet::tcp_flags(ACCESS, PARTNER, 5061, 40_600, TCP_ACK),
        true,
        Err(Reason::Established),
    );
    b.expect(
        "Edge UDP 53 out again",
        &Packet::udp(ACCESS, STRANGER, 40_601, 53),
        true,
        Ok("access-edge-external/udp/53-53"),
    );
    b.expect(
        "the DNS answer after the pickup",
        &Packet::udp(STRANGER, ACCESS, 53, 40_601),
        true,
        Err(Reason::Established),
    );
}

/// UDP is confirmed as Linux conntrack assures it: answered, and still
/// answered at least 2 s after the flow began (a stream, not a query and
/// its reply).
#[test]
fn a_udp_stream_is_confirmed_after_two_seconds_of_answers() {
    pin_this_thread_to_cpu0();
    let Some(mut b) = Box::new(None) else { return };
    let out = Packet::udp(AV, PARTNER, 50_800, 50_900);
    let back = Packet::udp(PARTNER, AV, 50_900, 50_800);
    b.expect(
        "RTP out",
        &out,
        true,
        Ok("av-edge-external/udp/50000-59999"),
    );
    b.expect("RTP back", &back, true, Err(Reason::Established));
    b.expect("RTP back again", &back, true, Err(Reason::Established));
    assert_eq!(b.0.flows(true).len(), 0, "answered within 2 s: unconfirmed");
    std::thread::sleep(std::time::Duration::from_millis(2_100));
    b.expect("RTP back after 2 s", &back, true, Err(Reason::Established));
    assert_eq!(b.0.flows(true).len(), 1, "a stream: confirmed");
    assert_eq!(b.0.flows(false).len(), 0, "and no longer unconfirmed");
}
