//! The real XDP program, run by the kernel on crafted frames
//! (`BPF_PROG_TEST_RUN`): verdicts and the counters they bump.
//!
//! The cases are the verdict spec's (tests/data/verdicts.toml): each test
//! here runs the sections of its group and checks what it checks beyond the
//! verdict and counter. What a table cannot say stays here as code: every
//! prefix of a frame, fragments that follow their first, a reload.

use classifier_common::{Counter, PCLASS_UDP, Reason, Verdict, reason_counter_index};
use portguard::policy::PolicySpec;
use portguard_testsupport::{
    frames::{ETH_P_8021Q, Ext, L4, Packet},
    kernel::{Kernel, XDP_ABORTED, XDP_DROP, XDP_PASS},
    spec::lab_spec,
    verdict_spec::{self, Case, Spec},
};

const CLIENT: &str = "198.18.0.1";
const SERVER: &str = "198.18.0.2";
const CLIENT6: &str = "2001:db8::1";
const SERVER6: &str = "2001:db8::2";

/// The kernel program (nothing pinned) with tracing on, under a policy.
struct Harness(Kernel);

impl Harness {
    fn new(spec: PolicySpec) -> Option<Harness> {
        Kernel::unpinned("verdicts", &spec).map(Harness)
    }

    /// The lab policy: front-end + client, client media narrowed to
    /// 50000-50019, SSH allowed from anywhere.
    fn lab() -> Option<Harness> {
        Harness::new(lab_spec())
    }

    /// Runs one frame; returns the action and the counter index it bumped.
    fn run(&mut self, frame: &[u8]) -> (u32, u32) {
        self.0.run_raw(frame)
    }

    fn counter(&mut self, index: u32) -> Counter {
        self.0.counter(index)
    }
}

fn reason(r: Reason, v: Verdict, pclass: u32) -> u32 {
    reason_counter_index(r as u32, v as u32, pclass)
}

/// Runs the spec's sections of `group` (tests/data/verdicts.toml), each on
/// a fresh program under its policy; `more` checks what else the test
/// checks of each case. Panics listing every case that differed.
fn run_group(
    group: &str,
    mut more: impl FnMut(&mut Harness, &Case, &[u8], (u32, u32)) -> Vec<String>,
) {
    let spec = Spec::load();
    let mut failures = Vec::new();
    let mut ran = 0;
    for section in spec.group(group) {
        let Some(mut h) = Harness::new(spec.policy(&section.policy)) else {
            return;
        };
        for case in &section.cases {
            let got = h.run(&case.bytes);
            let mut problems = verdict_spec::check(&h.0, &case.expect, (got.0 == XDP_PASS, got.1));
            if got.0 != XDP_PASS && got.0 != XDP_DROP {
                problems.push(format!("XDP action {}", got.0));
            }
            problems.extend(more(&mut h, case, &case.bytes, got));
            if !problems.is_empty() {
                failures.push(format!(
                    "[policy {}] {} ({}): {}",
                    section.policy,
                    case.name,
                    case.packet,
                    problems.join("; ")
                ));
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

fn verdict_only(_: &mut Harness, _: &Case, _: &[u8], _: (u32, u32)) -> Vec<String> {
    Vec::new()
}

/// The lab's allowed and forbidden traffic, both families, counted under
/// the rule (allowed) or `port_not_allowed` (forbidden); the same frame
/// twice gets the same verdict and moves its counter by one packet and its
/// length in bytes.
#[test]
fn lab_traffic_allowed_and_forbidden_with_counters() {
    run_group("counters", |h, _, frame, (action, counter)| {
        let mut problems = Vec::new();
        let before = h.counter(counter);
        let (again, _) = h.run(frame);
        let after = h.counter(counter);
        if again != action {
            problems.push(format!("the same frame got {action} then {again}"));
        }
        if after.packets - before.packets != 1 {
            problems.push(format!(
                "packet counter moved by {}",
                after.packets - before.packets
            ));
        }
        if after.bytes - before.bytes != frame.len() as u64 {
            problems.push(format!(
                "byte counter moved by {}, the frame is {} bytes",
                after.bytes - before.bytes,
                frame.len()
            ));
        }
        problems
    });
}

#[test]
fn arp_non_ip_and_icmp_pass_by_name() {
    run_group("essentials", verdict_only);
}

#[test]
fn management_allowance_survives_any_catalog() {
    run_group("management", verdict_only);
}

#[test]
fn monitor_mode_passes_and_counts_would_drop() {
    run_group("monitor", verdict_only);
}

#[test]
fn ipv4_options_and_bad_headers() {
    run_group("headers", verdict_only);
}

#[test]
fn vlan_tags_are_parsed_up_to_two() {
    run_group("vlan", verdict_only);
}

#[test]
fn ipv6_extension_headers_are_walked_to_a_bound() {
    run_group("ext-headers", verdict_only);
}

#[test]
fn ipsec_towards_media_hosts_is_counted_and_passed_unless_told() {
    run_group("ipsec", verdict_only);
}

#[test]
fn dhcp_client_replies_pass() {
    run_group("dhcp", verdict_only);
}

#[test]
fn per_destination_profiles() {
    run_group("profiles", verdict_only);
}

/// `run --role` on an Edge Server or a reverse proxy (host mode): the roles'
/// inbound rows pass; ports that only outbound rows list (the host's own
/// connections, whose replies the egress flow recorder lets in) are dropped
/// like any other port.
#[test]
fn perimeter_hosts_open_only_inbound_rows() {
    run_group("perimeter", verdict_only);
}

/// Every group of the spec's host sections has its test above, and no test runs a group
/// the spec lacks (`run_group` also fails on an empty group).
#[test]
fn every_group_of_the_spec_has_a_test() {
    let spec = Spec::load();
    let groups: std::collections::BTreeSet<String> = spec
        .sections
        .iter()
        .filter(|s| !spec.is_appliance(&s.policy))
        .filter_map(|s| s.group.clone())
        .collect();
    let tested: std::collections::BTreeSet<String> = [
        "counters",
        "essentials",
        "management",
        "monitor",
        "headers",
        "vlan",
        "ext-headers",
        "ipsec",
        "dhcp",
        "profiles",
        "perimeter",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(groups, tested, "groups in verdicts.toml against tests here");
}

/// Every prefix of a full frame: the program never aborts, and a frame cut
/// inside its headers is dropped as malformed.
#[test]
fn frames_cut_short_at_every_length_end_in_a_defined_verdict() {
    let Some(mut h) = Harness::lab() else { return };
    let samples = [
        (
            "udp4",
            Packet::udp(CLIENT, SERVER, 40_000, 3478).payload(8).build(),
            14 + 20 + 8,
        ),
        (
            "tcp4",
            Packet::tcp(CLIENT, SERVER, 40_000, 5061).build(),
            14 + 20 + 20,
        ),
        (
            "udp6",
            Packet::udp(CLIENT6, SERVER6, 40_000, 3478)
                .payload(8)
                .build(),
            14 + 40 + 8,
        ),
        (
            "tcp6 vlan",
            Packet::tcp(CLIENT6, SERVER6, 40_000, 5061)
                .vlan(ETH_P_8021Q, 7)
                .build(),
            18 + 40 + 20,
        ),
        (
            "icmp4",
            Packet::icmp(CLIENT, SERVER, 3).payload(8).build(),
            14 + 20 + 4,
        ),
    ];
    for (name, full, headers) in samples {
        // The kernel refuses XDP test runs on less than an Ethernet header.
        for len in 14..full.len() {
            let (action, counter) = h.run(&full[..len]);
            assert_ne!(action, XDP_ABORTED, "{name} cut to {len} bytes aborted");
            if len < headers {
                assert_eq!(
                    action, XDP_DROP,
                    "{name} cut to {len} bytes (headers need {headers}) passed"
                );
                let expected: Vec<u32> = (0..4)
                    .map(|p| reason(Reason::Malformed, Verdict::Drop, p))
                    .collect();
                assert!(
                    expected.contains(&counter),
                    "{name} cut to {len}: counted as {counter}, not malformed"
                );
            }
        }
    }
}

#[test]
fn fragments_follow_their_first_fragment() {
    let Some(mut h) = Harness::lab() else { return };
    for (dport, allowed, id) in [(3478u16, true, 0x4242u16), (161, false, 0x4343)] {
        let mut first = Packet::udp(CLIENT, SERVER, 40_000, dport).payload(64);
        first.ipv4_frag = Some((0, true, id));
        let (a1, c1) = h.run(&first.build());
        let mut later = Packet::new(first.src, first.dst, L4::Raw { proto: 17 }).payload(64);
        later.ipv4_frag = Some((9, false, id));
        let (a2, c2) = h.run(&later.build());
        assert_eq!(a1 == XDP_PASS, allowed, "udp {dport} first fragment");
        if allowed {
            assert_eq!(
                (a2, c2),
                (a1, c1),
                "udp {dport}: later fragment differs from its first"
            );
        } else {
            // A dropped first fragment takes no entry: the rest of its
            // datagram are orphans, dropped too.
            assert_eq!(
                (a2, c2),
                (
                    XDP_DROP,
                    reason(Reason::FragmentOrphan, Verdict::Drop, PCLASS_UDP)
                ),
                "udp {dport}: the later fragment of a dropped first fragment"
            );
        }
    }
    let mut orphan =
        Packet::new(frames_ip(CLIENT), frames_ip(SERVER), L4::Raw { proto: 17 }).payload(64);
    orphan.ipv4_frag = Some((20, false, 0x5555));
    assert_eq!(
        h.run(&orphan.build()),
        (
            XDP_DROP,
            reason(Reason::FragmentOrphan, Verdict::Drop, PCLASS_UDP)
        ),
        "orphan fragment"
    );

    let first6 = Packet::udp(CLIENT6, SERVER6, 40_000, 50_001)
        .payload(64)
        .ext(Ext::Fragment {
            offset: 0,
            more: true,
            id: 77,
        });
    let (a1, c1) = h.run(&first6.build());
    let later6 = Packet::new(
        frames_ip(CLIENT6),
        frames_ip(SERVER6),
        L4::Raw { proto: 17 },
    )
    .payload(64)
    .ext(Ext::Fragment {
        offset: 9,
        more: false,
        id: 77,
    });
    assert_eq!(
        h.run(&later6.build()),
        (a1, c1),
        "IPv6 later fragment follows the first"
    );
    assert_eq!(a1, XDP_PASS, "IPv6 first fragment to media port");
}

#[test]
fn reload_swaps_policy_and_keeps_counters() {
    let Some(mut h) = Harness::lab() else { return };
    let sip = Packet::tcp(CLIENT, SERVER, 40_000, 5061).build();
    let (_, slot) = h.run(&sip);
    let before = h.counter(slot);
    let director = PolicySpec {
        default_roles: Some(vec!["director".into()]),
        ..lab_spec()
    };
    h.0.reload(&director, 2);
    assert_eq!(
        h.run(&Packet::udp(CLIENT, SERVER, 40_000, 50_000).build())
            .0,
        XDP_DROP,
        "media port after switching to director"
    );
    let (_, slot_after) = h.run(&sip);
    let after = h.counter(slot_after);
    assert!(
        after.packets > before.packets || slot_after != slot,
        "counters restarted across the reload"
    );
    h.0.reload(&lab_spec(), 3);
    let (_, slot_again) = h.run(&sip);
    assert_eq!(
        slot_again, slot,
        "the same rule keeps its counter slot across reloads"
    );
    assert!(
        h.counter(slot).packets > before.packets,
        "the SIP counter went backwards"
    );
}

fn frames_ip(s: &str) -> std::net::IpAddr {
    portguard_testsupport::frames::ip(s)
}

/// Regression: a first IPv6 fragment whose fragment header is followed by
/// another extension header is remembered under the fragment header's next
/// header, which is what its later fragments carry.
#[test]
fn ipv6_fragment_followed_by_an_extension_header_replays_for_later_fragments() {
    let Some(mut h) = Harness::lab() else { return };
    let first = Packet::udp(CLIENT6, SERVER6, 40_000, 3478)
        .payload(64)
        .ext(Ext::Fragment {
            offset: 0,
            more: true,
            id: 99,
        })
        .ext(Ext::DestOpts);
    let (a1, c1) = h.run(&first.build());
    assert_eq!(a1, XDP_PASS, "first fragment to STUN");
    let later = Packet::new(
        frames_ip(CLIENT6),
        frames_ip(SERVER6),
        L4::Raw { proto: 60 },
    )
    .payload(64)
    .ext(Ext::Fragment {
        offset: 9,
        more: false,
        id: 99,
    });
    assert_eq!(
        h.run(&later.build()),
        (a1, c1),
        "the later fragment must replay its first, not be an orphan"
    );
}
