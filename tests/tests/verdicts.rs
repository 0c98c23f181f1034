//! The real XDP program, run by the kernel on crafted frames
//! (`BPF_PROG_TEST_RUN`): verdicts and the counters they bump.

use classifier_common::{
    Counter, PCLASS_ICMP, PCLASS_OTHER, PCLASS_TCP, PCLASS_UDP, Reason, Verdict,
    reason_counter_index,
};
use portguard::{
    catalog::Catalog,
    policy::{Mgmt, PolicySpec},
};
use portguard_testsupport::{
    frames::{ETH_P_8021AD, ETH_P_8021Q, Ext, L4, Packet, arp, non_ip},
    kernel::{Kernel, XDP_ABORTED, XDP_DROP, XDP_PASS},
    spec::lab_spec,
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

    /// The service label of a rule slot.
    fn service_of(&self, slot: u32) -> String {
        u16::try_from(slot)
            .ok()
            .and_then(|s| self.0.registry.get(s))
            .map_or_else(
                || format!("<no rule slot {slot}>"),
                |k| format!("{}/{}/{}", k.role, k.proto, k.service),
            )
    }
}

fn reason(r: Reason, v: Verdict, pclass: u32) -> u32 {
    reason_counter_index(r as u32, v as u32, pclass)
}

/// The allowed and forbidden cases of the lab, for both families.
fn lab_cases() -> Vec<(&'static str, Packet, bool)> {
    let mut v = Vec::new();
    for (src, dst, fam) in [(CLIENT, SERVER, "v4"), (CLIENT6, SERVER6, "v6")] {
        let _ = fam;
        v.push((
            "tcp 5061 (SIP/TLS)",
            Packet::tcp(src, dst, 40_000, 5061),
            true,
        ));
        v.push(("udp 3478 (STUN)", Packet::udp(src, dst, 40_000, 3478), true));
        v.push((
            "udp 50000 (media)",
            Packet::udp(src, dst, 40_000, 50_000),
            true,
        ));
        v.push(("tcp 3389 (RDP)", Packet::tcp(src, dst, 40_000, 3389), false));
        v.push(("udp 161 (SNMP)", Packet::udp(src, dst, 40_000, 161), false));
        v.push(("tcp 1433 (SQL)", Packet::tcp(src, dst, 40_000, 1433), false));
    }
    v
}

#[test]
fn lab_traffic_allowed_and_forbidden_with_counters() {
    let Some(mut h) = Harness::lab() else { return };
    for (name, pkt, allowed) in lab_cases() {
        let frame = pkt.clone().payload(18).build();
        let fam = if pkt.src.is_ipv6() { "IPv6" } else { "IPv4" };
        let (action, counter) = h.run(&frame);
        let before = h.counter(counter);
        let (again, _) = h.run(&frame);
        let after = h.counter(counter);
        assert_eq!(
            action, again,
            "{fam} {name}: the same frame got two verdicts"
        );
        if allowed {
            assert_eq!(
                action, XDP_PASS,
                "{fam} {name} must pass, counter {counter}"
            );
            assert!(
                counter > 0 && counter < classifier_common::MAX_RULE_SLOTS,
                "{fam} {name}: passed without a rule (counter {counter})"
            );
        } else {
            assert_eq!(
                action,
                XDP_DROP,
                "{fam} {name} must be dropped, but passed under {}",
                h.service_of(counter)
            );
            let pclass = if matches!(pkt.l4, L4::Tcp { .. }) {
                PCLASS_TCP
            } else {
                PCLASS_UDP
            };
            assert_eq!(
                counter,
                reason(Reason::PortNotAllowed, Verdict::Drop, pclass),
                "{fam} {name}: wrong drop reason"
            );
        }
        assert_eq!(
            after.packets - before.packets,
            1,
            "{fam} {name}: packet counter moved by {}",
            after.packets - before.packets
        );
        assert_eq!(
            after.bytes - before.bytes,
            frame.len() as u64,
            "{fam} {name}: byte counter"
        );
    }
}

#[test]
fn rules_are_counted_under_the_rule_that_allowed_them() {
    let Some(mut h) = Harness::lab() else { return };
    let (_, sip) = h.run(&Packet::tcp(CLIENT, SERVER, 40_000, 5061).build());
    let (_, stun) = h.run(&Packet::udp(CLIENT, SERVER, 40_000, 3478).build());
    let (_, media) = h.run(&Packet::udp(CLIENT, SERVER, 40_000, 50_000).build());
    let sip_rule = h.service_of(sip);
    assert!(sip_rule.contains("/tcp/"), "5061 counted under {sip_rule}");
    let stun_rule = h.service_of(stun);
    assert!(
        stun_rule.starts_with("client/udp/"),
        "3478 counted under {stun_rule}"
    );
    let media_rule = h.service_of(media);
    assert!(
        media_rule.contains("/udp/"),
        "50000 counted under {media_rule}"
    );
}

#[test]
fn arp_non_ip_and_icmp_pass_by_name() {
    let Some(mut h) = Harness::lab() else { return };
    assert_eq!(
        h.run(&arp()),
        (XDP_PASS, reason(Reason::Arp, Verdict::Pass, PCLASS_OTHER)),
        "ARP"
    );
    assert_eq!(
        h.run(&non_ip()),
        (XDP_PASS, reason(Reason::NonIp, Verdict::Pass, PCLASS_OTHER)),
        "LLDP"
    );
    let unreachable = Packet::icmp(CLIENT, SERVER, 3).payload(28).build();
    assert_eq!(
        h.run(&unreachable),
        (XDP_PASS, reason(Reason::Icmp, Verdict::Pass, PCLASS_ICMP)),
        "ICMP unreachable"
    );
    let ptb6 = Packet::icmp(CLIENT6, SERVER6, 2).payload(48).build();
    assert_eq!(
        h.run(&ptb6),
        (XDP_PASS, reason(Reason::Icmp, Verdict::Pass, PCLASS_ICMP)),
        "ICMPv6 packet too big"
    );
    let ns6 = Packet::icmp(CLIENT6, SERVER6, 135).payload(16).build();
    assert_eq!(
        h.run(&ns6),
        (
            XDP_PASS,
            reason(Reason::NeighborDiscovery, Verdict::Pass, PCLASS_ICMP)
        ),
        "neighbour solicitation"
    );
    let ping = Packet::icmp(CLIENT, SERVER, 8).build();
    assert_eq!(
        h.run(&ping),
        (XDP_PASS, reason(Reason::Echo, Verdict::Pass, PCLASS_ICMP)),
        "echo request"
    );
    let redirect = Packet::icmp(CLIENT, SERVER, 5).payload(28).build();
    assert_eq!(
        h.run(&redirect),
        (
            XDP_DROP,
            reason(Reason::IcmpType, Verdict::Drop, PCLASS_ICMP)
        ),
        "ICMP redirect"
    );
}

#[test]
fn management_allowance_survives_any_catalog() {
    let Some(mut h) = Harness::lab() else { return };
    let ssh = Packet::tcp(CLIENT, SERVER, 40_000, 22).build();
    assert_eq!(
        h.run(&ssh),
        (
            XDP_PASS,
            reason(Reason::Management, Verdict::Pass, PCLASS_TCP)
        ),
        "SSH v4"
    );
    let ssh6 = Packet::tcp(CLIENT6, SERVER6, 40_000, 22).build();
    assert_eq!(
        h.run(&ssh6),
        (
            XDP_PASS,
            reason(Reason::Management, Verdict::Pass, PCLASS_TCP)
        ),
        "SSH v6"
    );
    // Without the default, SSH is just another port.
    let Some(mut bare) = Harness::new(PolicySpec {
        mgmt: Vec::new(),
        ..lab_spec()
    }) else {
        return;
    };
    assert_eq!(
        bare.run(&ssh),
        (
            XDP_DROP,
            reason(Reason::PortNotAllowed, Verdict::Drop, PCLASS_TCP)
        ),
        "SSH without --mgmt"
    );
}

#[test]
fn monitor_mode_passes_and_counts_would_drop() {
    let Some(mut h) = Harness::new(PolicySpec {
        monitor: true,
        ..lab_spec()
    }) else {
        return;
    };
    let rdp = Packet::tcp(CLIENT, SERVER, 40_000, 3389).build();
    assert_eq!(
        h.run(&rdp),
        (
            XDP_PASS,
            reason(Reason::PortNotAllowed, Verdict::WouldDrop, PCLASS_TCP)
        ),
        "RDP in monitor mode"
    );
    let sip = Packet::tcp(CLIENT, SERVER, 40_000, 5061).build();
    let (action, counter) = h.run(&sip);
    assert_eq!(action, XDP_PASS);
    assert!(
        counter > 0 && counter < classifier_common::MAX_RULE_SLOTS,
        "SIP still counted under its rule, got {counter}"
    );
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
fn ipv4_options_and_bad_headers() {
    let Some(mut h) = Harness::lab() else { return };
    let mut with_options = Packet::udp(CLIENT, SERVER, 40_000, 3478);
    with_options.ipv4_options = vec![0x94, 0x04, 0, 0]; // router alert
    let (action, counter) = h.run(&with_options.build());
    assert_eq!(
        action, XDP_PASS,
        "IPv4 with options to an allowed port, counter {counter}"
    );

    let mut bad_ihl = Packet::udp(CLIENT, SERVER, 40_000, 3478).build();
    bad_ihl[14] = 0x44; // IHL 4 (< 5)
    assert_eq!(
        h.run(&bad_ihl),
        (
            XDP_DROP,
            reason(Reason::Malformed, Verdict::Drop, PCLASS_OTHER)
        ),
        "IHL 4"
    );
    let mut long_total = Packet::udp(CLIENT, SERVER, 40_000, 3478).build();
    long_total[16] = 0x05; // total length beyond the frame
    assert_eq!(
        h.run(&long_total),
        (
            XDP_DROP,
            reason(Reason::Malformed, Verdict::Drop, PCLASS_OTHER)
        ),
        "total length past the frame"
    );
    let mut wrong_version = Packet::udp(CLIENT, SERVER, 40_000, 3478).build();
    wrong_version[14] = 0x65;
    assert_eq!(
        h.run(&wrong_version),
        (
            XDP_DROP,
            reason(Reason::Malformed, Verdict::Drop, PCLASS_OTHER)
        ),
        "version 6 in an IPv4 frame"
    );
}

#[test]
fn vlan_tags_are_parsed_up_to_two() {
    let Some(mut h) = Harness::lab() else { return };
    let one = Packet::udp(CLIENT, SERVER, 40_000, 3478).vlan(ETH_P_8021Q, 10);
    assert_eq!(h.run(&one.build()).0, XDP_PASS, "802.1Q to an allowed port");
    let qinq = Packet::tcp(CLIENT6, SERVER6, 40_000, 5061)
        .vlan(ETH_P_8021AD, 10)
        .vlan(ETH_P_8021Q, 20);
    assert_eq!(
        h.run(&qinq.build()).0,
        XDP_PASS,
        "QinQ IPv6 to an allowed port"
    );
    let qinq_bad = Packet::tcp(CLIENT, SERVER, 40_000, 3389)
        .vlan(ETH_P_8021AD, 10)
        .vlan(ETH_P_8021Q, 20);
    assert_eq!(
        h.run(&qinq_bad.build()),
        (
            XDP_DROP,
            reason(Reason::PortNotAllowed, Verdict::Drop, PCLASS_TCP)
        ),
        "QinQ to RDP"
    );
    let three = Packet::udp(CLIENT, SERVER, 40_000, 3478)
        .vlan(ETH_P_8021AD, 1)
        .vlan(ETH_P_8021Q, 2)
        .vlan(ETH_P_8021Q, 3);
    assert_eq!(
        h.run(&three.build()),
        (
            XDP_DROP,
            reason(Reason::VlanDepth, Verdict::Drop, PCLASS_OTHER)
        ),
        "three tags"
    );
}

#[test]
fn ipv6_extension_headers_are_walked_to_a_bound() {
    let Some(mut h) = Harness::lab() else { return };
    let mut p = Packet::udp(CLIENT6, SERVER6, 40_000, 3478);
    for e in [Ext::HopByHop, Ext::DestOpts, Ext::Routing] {
        p = p.ext(e);
    }
    assert_eq!(
        h.run(&p.build()).0,
        XDP_PASS,
        "three extension headers to an allowed port"
    );
    let mut deep = Packet::udp(CLIENT6, SERVER6, 40_000, 3478);
    for _ in 0..7 {
        deep = deep.ext(Ext::DestOpts);
    }
    assert_eq!(
        h.run(&deep.build()),
        (
            XDP_DROP,
            reason(Reason::ExtHeaders, Verdict::Drop, PCLASS_OTHER)
        ),
        "seven extension headers"
    );
    let mut six = Packet::tcp(CLIENT6, SERVER6, 40_000, 3389);
    for _ in 0..6 {
        six = six.ext(Ext::DestOpts);
    }
    assert_eq!(
        h.run(&six.build()),
        (
            XDP_DROP,
            reason(Reason::PortNotAllowed, Verdict::Drop, PCLASS_TCP)
        ),
        "six headers then RDP: classified"
    );
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
fn ipsec_towards_media_hosts_is_counted_and_passed_unless_told() {
    let Some(mut h) = Harness::lab() else { return };
    let esp = Packet::new(frames_ip(CLIENT), frames_ip(SERVER), L4::Raw { proto: 50 })
        .payload(32)
        .build();
    assert_eq!(
        h.run(&esp),
        (
            XDP_PASS,
            reason(Reason::IpsecOnMediaPath, Verdict::Pass, PCLASS_OTHER)
        ),
        "ESP"
    );
    let ike = Packet::udp(CLIENT, SERVER, 500, 500).build();
    assert_eq!(
        h.run(&ike),
        (
            XDP_PASS,
            reason(Reason::IpsecOnMediaPath, Verdict::Pass, PCLASS_UDP)
        ),
        "IKE"
    );
    let Some(mut strict) = Harness::new(PolicySpec {
        drop_ipsec_on_media: true,
        ..lab_spec()
    }) else {
        return;
    };
    assert_eq!(
        strict.run(&esp),
        (
            XDP_DROP,
            reason(Reason::IpsecOnMediaPath, Verdict::Drop, PCLASS_OTHER)
        ),
        "ESP with --drop-ipsec-on-media"
    );
    // A host without media roles does not take ESP at all.
    let Some(mut lb) = Harness::new(PolicySpec {
        default_roles: Some(vec!["lb-director".into()]),
        ..lab_spec()
    }) else {
        return;
    };
    assert_eq!(
        lb.run(&esp),
        (
            XDP_DROP,
            reason(Reason::ProtoNotAllowed, Verdict::Drop, PCLASS_OTHER)
        ),
        "ESP to a load balancer"
    );
}

#[test]
fn dhcp_client_replies_pass() {
    let Some(mut h) = Harness::new(PolicySpec {
        default_roles: Some(vec!["lb-director".into()]),
        ..lab_spec()
    }) else {
        return;
    };
    let offer = Packet::udp("198.18.0.254", "255.255.255.255", 67, 68)
        .payload(240)
        .build();
    assert_eq!(
        h.run(&offer),
        (XDP_PASS, reason(Reason::Dhcp, Verdict::Pass, PCLASS_UDP)),
        "DHCP offer"
    );
    let reply6 = Packet::udp("2001:db8::fe", CLIENT6, 547, 546)
        .payload(40)
        .build();
    assert_eq!(
        h.run(&reply6),
        (XDP_PASS, reason(Reason::Dhcp, Verdict::Pass, PCLASS_UDP)),
        "DHCPv6 reply"
    );
}

#[test]
fn per_destination_profiles() {
    let spec = PolicySpec {
        default_roles: None,
        profiles: vec![
            "198.18.1.0/24=lb-director"
                .parse()
                .unwrap_or_else(|e| panic!("{e}")),
            "2001:db8:1::/48=mediation"
                .parse()
                .unwrap_or_else(|e| panic!("{e}")),
        ],
        ..lab_spec()
    };
    let Some(mut h) = Harness::new(spec) else {
        return;
    };
    assert_eq!(
        h.run(&Packet::tcp(CLIENT, "198.18.1.9", 40_000, 4443).build())
            .0,
        XDP_PASS,
        "director LB 4443"
    );
    assert_eq!(
        h.run(&Packet::tcp(CLIENT, "198.18.1.9", 40_000, 5068).build())
            .0,
        XDP_DROP,
        "director LB 5068"
    );
    assert_eq!(
        h.run(&Packet::tcp(CLIENT6, "2001:db8:1::5", 40_000, 5068).build())
            .0,
        XDP_PASS,
        "mediation 5068"
    );
    assert_eq!(
        h.run(&Packet::tcp(CLIENT, "198.18.2.9", 40_000, 4443).build()),
        (
            XDP_DROP,
            reason(Reason::NoProfile, Verdict::Drop, PCLASS_TCP)
        ),
        "no profile and no default"
    );
}

/// `run --role` on an Edge Server or a reverse proxy (host mode): the roles'
/// inbound rows pass; ports that only outbound rows list (the host's own
/// connections, whose replies the egress flow recorder lets in) are dropped
/// like any other port.
#[test]
fn perimeter_hosts_open_only_inbound_rows() {
    for (roles, cases) in [
        (
            &["consolidated-edge-external", "edge-internal"][..],
            &[
                ("tcp 443 (SIP/TLS, PSOM, STUN over TCP)", true, 443, true),
                ("tcp 5061 (SIP federation)", true, 5061, true),
                ("tcp 5269 (XMPP)", true, 5269, true),
                ("udp 3478 (STUN)", false, 3478, true),
                ("tcp 8057 (PSOM from the pool)", true, 8057, true),
                ("tcp 4443 (CMS replication)", true, 4443, true),
                ("tcp 80 (outbound only: CRL)", true, 80, false),
                ("tcp 53 (outbound only: DNS)", true, 53, false),
                ("udp 53 (outbound only: DNS)", false, 53, false),
                (
                    "udp 50000 (outbound only: media relay)",
                    false,
                    50_000,
                    false,
                ),
                (
                    "tcp 59999 (outbound only: media relay)",
                    true,
                    59_999,
                    false,
                ),
            ][..],
        ),
        (
            &["reverse-proxy-external", "reverse-proxy-internal"],
            &[
                ("tcp 443 (published HTTPS)", true, 443, true),
                ("tcp 80 (published HTTP)", true, 80, true),
                ("tcp 4443 (outbound only: to the pools)", true, 4443, false),
                ("tcp 8080 (outbound only: to the pools)", true, 8080, false),
            ],
        ),
    ] {
        let spec = PolicySpec {
            default_roles: Some(roles.iter().map(|r| r.to_string()).collect()),
            mgmt: Mgmt::defaults(),
            ..PolicySpec::default()
        };
        let Some(mut h) = Harness::new(spec) else {
            return;
        };
        let resolved = Catalog::embedded()
            .resolve_roles(&roles.iter().map(|r| r.to_string()).collect::<Vec<_>>())
            .unwrap_or_else(|e| panic!("{e}"));
        for (src, dst) in [(CLIENT, SERVER), (CLIENT6, SERVER6)] {
            for &(name, tcp, port, allowed) in cases {
                let pkt = if tcp {
                    Packet::tcp(src, dst, 40_000, port)
                } else {
                    Packet::udp(src, dst, 40_000, port).payload(8)
                };
                let (action, counter) = h.run(&pkt.build());
                if allowed {
                    assert_eq!(
                        action, XDP_PASS,
                        "{roles:?} {dst} {name} must pass (counter {counter})"
                    );
                    let rule = h.service_of(counter);
                    assert!(
                        resolved.iter().any(|r| rule.starts_with(&format!("{r}/"))),
                        "{roles:?} {dst} {name}: counted under {rule}"
                    );
                } else {
                    let pclass = if tcp { PCLASS_TCP } else { PCLASS_UDP };
                    assert_eq!(
                        (action, counter),
                        (
                            XDP_DROP,
                            reason(Reason::PortNotAllowed, Verdict::Drop, pclass)
                        ),
                        "{roles:?} {dst} {name} must be dropped as port_not_allowed (passed under {})",
                        h.service_of(counter)
                    );
                }
            }
        }
    }
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

/// Regression: ports are never read from padding after the IP packet.
#[test]
fn transport_header_outside_the_ip_length_is_malformed() {
    let Some(mut h) = Harness::lab() else { return };
    let mut f = Packet::udp(CLIENT, SERVER, 40_000, 3478).payload(8).build();
    // Total length 20: the IP header only; the UDP header is now padding.
    f[16..18].copy_from_slice(&20u16.to_be_bytes());
    f[24..26].copy_from_slice(&[0, 0]);
    let c = portguard_testsupport::frames::checksum(&[&f[14..34]]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    assert_eq!(
        h.run(&f),
        (
            XDP_DROP,
            reason(Reason::Malformed, Verdict::Drop, PCLASS_UDP)
        ),
        "UDP header in padding"
    );
}
