//! Address sets in the real XDP program (`BPF_PROG_TEST_RUN`): a rule that
//! names sets (`peers`) passes only a peer in them, on a host and on an
//! appliance, IPv4 and IPv6; anyone else falls through to the rest of the
//! decision and is dropped as `peer_not_allowed`; reloads that change a set
//! keep every peer that is in both the old and the new set.

use std::{collections::BTreeMap, net::IpAddr};

use classifier_common::{MAX_RULE_SLOTS, Reason};
use portguard::{
    catalog::AddressesArg,
    policy::{Mgmt, Placement, PolicySpec, Prefix},
};
use portguard_testsupport::{
    frames::{Packet, TCP_ACK, TCP_SYN},
    kernel::{Kernel, pin_this_thread_to_cpu0},
};

/// Federation partners (one prefix per family), and strangers next to them.
const PARTNER: &str = "198.19.7.10";
const PARTNER6: &str = "2001:db8:7::10";
const STRANGER: &str = "198.19.8.10";
const STRANGER6: &str = "2001:db8:8::10";
const PARTNERS: &str = "federation-partners=198.19.7.0/24,2001:db8:7::/48";

/// The Edge Server's internal interface and the pools that talk to it.
const EDGE_INT: &str = "198.18.3.1";
const EDGE_INT6: &str = "2001:db8:3::1";
const FRONT_END: &str = "198.18.4.20";
const FRONT_END6: &str = "2001:db8:4::20";
const DIRECTOR: &str = "198.18.5.20";
const ELSEWHERE: &str = "198.18.6.20";
const ELSEWHERE6: &str = "2001:db8:6::20";
const POOLS: [&str; 3] = [
    "front-end-pool=198.18.4.0/24,2001:db8:4::/48",
    "director-pool=198.18.5.0/24",
    "survivable-branch=198.18.10.0/24",
];
const BRANCH: &str = "198.18.10.5";

/// The Access Edge's external address.
const ACCESS: &str = "198.18.2.10";
const ACCESS6: &str = "2001:db8:2::10";

fn addresses(args: &[&str]) -> Vec<AddressesArg> {
    args.iter()
        .map(|a| a.parse().unwrap_or_else(|e| panic!("{a}: {e}")))
        .collect()
}

fn host(role: &str, sets: &[&str]) -> PolicySpec {
    PolicySpec {
        default_roles: Some(vec![role.to_string()]),
        mgmt: Mgmt::defaults(),
        addresses: addresses(sets),
        ..PolicySpec::default()
    }
}

/// Runs `frame` and checks the verdict and what counted it: `Ok(rule)` a
/// rule (`role/proto/start-end`), `Err(reason)` a reason entry.
fn expect(k: &mut Kernel, what: &str, frame: &Packet, pass: bool, by: Result<&str, Reason>) {
    let (passed, counter) = k.run(&frame.build());
    check(k, what, passed, counter, pass, by);
}

fn check(k: &Kernel, what: &str, passed: bool, counter: u32, pass: bool, by: Result<&str, Reason>) {
    let got = k.describe(counter);
    assert_eq!(
        passed,
        pass,
        "{what}: expected {}, got {} (counted as {got})",
        if pass { "pass" } else { "drop" },
        if passed { "pass" } else { "drop" },
    );
    match by {
        Ok(rule) => assert!(
            counter > 0 && counter < MAX_RULE_SLOTS && got == format!("rule {rule}"),
            "{what}: expected rule {rule}, counted as {got}"
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

#[test]
fn a_partner_reaches_the_access_edge_on_5061_and_a_stranger_does_not() {
    let Some(mut k) = Kernel::new(
        "address_sets_federation",
        &host("access-edge-external", &[PARTNERS]),
    ) else {
        return;
    };
    for (partner, stranger, edge) in [(PARTNER, STRANGER, ACCESS), (PARTNER6, STRANGER6, ACCESS6)] {
        expect(
            &mut k,
            &format!("SYN partner {partner} -> 5061"),
            &Packet::tcp(partner, edge, 40_001, 5061),
            true,
            Ok("access-edge-external/tcp/5061-5061"),
        );
        expect(
            &mut k,
            &format!("XMPP partner {partner} -> 5269"),
            &Packet::tcp(partner, edge, 40_002, 5269),
            true,
            Ok("access-edge-external/tcp/5269-5269"),
        );
        expect(
            &mut k,
            &format!("SYN stranger {stranger} -> 5061"),
            &Packet::tcp(stranger, edge, 40_003, 5061),
            false,
            Err(Reason::PeerNotAllowed),
        );
        expect(
            &mut k,
            &format!("XMPP stranger {stranger} -> 5269"),
            &Packet::tcp(stranger, edge, 40_004, 5269),
            false,
            Err(Reason::PeerNotAllowed),
        );
        // A row without a set is as open as before.
        expect(
            &mut k,
            &format!("SIP client {stranger} -> 443"),
            &Packet::tcp(stranger, edge, 40_005, 443),
            true,
            Ok("access-edge-external/tcp/443-443"),
        );
        // A port no rule names is still port_not_allowed.
        expect(
            &mut k,
            &format!("stranger {stranger} -> 5062"),
            &Packet::tcp(stranger, edge, 40_006, 5062),
            false,
            Err(Reason::PortNotAllowed),
        );
    }
}

#[test]
fn the_edge_internal_interface_takes_5062_and_5061_from_the_pools_only() {
    let Some(mut k) = Kernel::new("address_sets_edge_internal", &host("edge-internal", &POOLS))
    else {
        return;
    };
    for (fe, other, edge) in [
        (FRONT_END, ELSEWHERE, EDGE_INT),
        (FRONT_END6, ELSEWHERE6, EDGE_INT6),
    ] {
        expect(
            &mut k,
            &format!("A/V authentication from the Front End {fe}"),
            &Packet::tcp(fe, edge, 40_010, 5062),
            true,
            Ok("edge-internal/tcp/5062-5062"),
        );
        expect(
            &mut k,
            &format!("A/V authentication from {other}"),
            &Packet::tcp(other, edge, 40_011, 5062),
            false,
            Err(Reason::PeerNotAllowed),
        );
        expect(
            &mut k,
            &format!("SIP from the Front End {fe}"),
            &Packet::tcp(fe, edge, 40_012, 5061),
            true,
            Ok("edge-internal/tcp/5061-5061"),
        );
        expect(
            &mut k,
            &format!("SIP from {other}"),
            &Packet::tcp(other, edge, 40_013, 5061),
            false,
            Err(Reason::PeerNotAllowed),
        );
        // Media relay rows name no set: internal users anywhere.
        expect(
            &mut k,
            &format!("STUN from {other}"),
            &Packet::udp(other, edge, 40_014, 3478).stun_binding(14),
            true,
            Ok("edge-internal/udp/3478-3478"),
        );
    }
    // The rule names both pools: the Director passes too.
    expect(
        &mut k,
        "SIP from the Director",
        &Packet::tcp(DIRECTOR, EDGE_INT, 40_015, 5061),
        true,
        Ok("edge-internal/tcp/5061-5061"),
    );
    // 5062 names the Front End and the survivable branches, not the Director.
    expect(
        &mut k,
        "A/V authentication from a survivable branch",
        &Packet::tcp(BRANCH, EDGE_INT, 40_016, 5062),
        true,
        Ok("edge-internal/tcp/5062-5062"),
    );
    expect(
        &mut k,
        "A/V authentication from the Director",
        &Packet::tcp(DIRECTOR, EDGE_INT, 40_017, 5062),
        false,
        Err(Reason::PeerNotAllowed),
    );
}

#[test]
fn sets_the_operator_leaves_alone_admit_everyone() {
    // Only the Front End pool is filled: 5062 also names the survivable
    // branches, whose shipped contents are the whole address space.
    let Some(mut k) = Kernel::new(
        "address_sets_default_open",
        &host("edge-internal", &[POOLS[0]]),
    ) else {
        return;
    };
    expect(
        &mut k,
        "A/V authentication from anywhere (survivable-branch as shipped)",
        &Packet::tcp(ELSEWHERE, EDGE_INT, 40_018, 5062),
        true,
        Ok("edge-internal/tcp/5062-5062"),
    );
    expect(
        &mut k,
        "SIP from anywhere (director-pool as shipped)",
        &Packet::tcp(ELSEWHERE, EDGE_INT, 40_019, 5061),
        true,
        Ok("edge-internal/tcp/5061-5061"),
    );
    expect(
        &mut k,
        "PSOM from elsewhere (front-end-pool filled)",
        &Packet::tcp(ELSEWHERE, EDGE_INT, 40_020, 8057),
        false,
        Err(Reason::PeerNotAllowed),
    );
}

#[test]
fn an_empty_set_closes_its_rules_and_monitor_mode_only_counts() {
    let mut spec = host("access-edge-external", &["federation-partners="]);
    let Some(mut k) = Kernel::new("address_sets_empty", &spec) else {
        return;
    };
    expect(
        &mut k,
        "SYN partner -> 5061 with an empty partner set",
        &Packet::tcp(PARTNER, ACCESS, 40_020, 5061),
        false,
        Err(Reason::PeerNotAllowed),
    );
    spec.monitor = true;
    k.reload(&spec, 2);
    let (passed, counter) = k.run(&Packet::tcp(STRANGER, ACCESS, 40_021, 5061).build());
    let got = k.describe(counter);
    assert!(
        passed && got.starts_with("would_drop peer_not_allowed/"),
        "monitor mode: SYN stranger -> 5061 must pass as would_drop peer_not_allowed, got {} as {got}",
        if passed { "pass" } else { "drop" }
    );
}

#[test]
fn answers_to_the_hosts_own_connections_from_a_scoped_port_pass() {
    // The Edge opens SIP to a stranger from port 5061 (its own connection,
    // not one the row admits): the recorder must remember it, since the
    // row on 5061 would not let the stranger's answer in.
    let Some(mut k) = Kernel::new(
        "address_sets_answers",
        &host("access-edge-external", &[PARTNERS]),
    ) else {
        return;
    };
    pin_this_thread_to_cpu0();
    k.egress(&Packet::tcp(ACCESS, STRANGER, 5061, 5061).build());
    expect(
        &mut k,
        "SYN-ACK stranger -> Edge 5061, answering the Edge",
        &Packet::tcp_flags(STRANGER, ACCESS, 5061, 5061, TCP_SYN | TCP_ACK),
        true,
        Err(Reason::Established),
    );
}

#[test]
fn reloads_that_change_a_set_keep_the_peers_in_both() {
    let Some(mut k) = Kernel::new(
        "address_sets_reload",
        &host("access-edge-external", &[PARTNERS]),
    ) else {
        return;
    };
    let frame = |src: &str| Packet::tcp(src, ACCESS, 40_030, 5061).build();
    let (stays, goes, comes) = ("198.19.7.10", "198.19.7.200", "198.19.9.1");
    // Each generation has one more or one fewer prefix: /25 halves and a
    // new /24, flipping back and forth; `stays` is in every one of them.
    let sets = [
        "federation-partners=198.19.7.0/25,198.19.7.128/25",
        "federation-partners=198.19.7.0/25,198.19.9.0/24",
    ];
    for round in 0..20u32 {
        let arg = sets[round as usize % 2];
        k.reload(&host("access-edge-external", &[arg]), round + 2);
        let (passed, counter) = k.run(&frame(stays));
        check(
            &k,
            &format!("round {round} ({arg}): the partner in every set"),
            passed,
            counter,
            true,
            Ok("access-edge-external/tcp/5061-5061"),
        );
        let second = round % 2 == 1;
        let (passed, counter) = k.run(&frame(goes));
        check(
            &k,
            &format!("round {round} ({arg}): {goes}"),
            passed,
            counter,
            !second,
            if second {
                Err(Reason::PeerNotAllowed)
            } else {
                Ok("access-edge-external/tcp/5061-5061")
            },
        );
        let (passed, counter) = k.run(&frame(comes));
        check(
            &k,
            &format!("round {round} ({arg}): {comes}"),
            passed,
            counter,
            second,
            if second {
                Ok("access-edge-external/tcp/5061-5061")
            } else {
                Err(Reason::PeerNotAllowed)
            },
        );
    }
}

/// The appliance's legs: the internet, then the DMZ with the Edge and the
/// reverse proxy, then the internal network with the pools.
const EXT: usize = 0;
const DMZ: usize = 1;
const INT: usize = 2;
const OWN: &str = "198.18.9.1";
const PROXY_INT: &str = "198.18.2.21";

fn route(addr: &str) -> usize {
    if addr.starts_with("198.18.2.") || addr.starts_with("2001:db8:2:") || addr == EDGE_INT {
        DMZ
    } else if addr.starts_with("198.18.") || addr.starts_with("2001:db8:") {
        INT
    } else {
        EXT
    }
}

fn appliance_spec() -> PolicySpec {
    let p = |s: &str| {
        s.parse::<portguard::policy::ProfileArg>()
            .unwrap_or_else(|e| panic!("{s}: {e}"))
    };
    let profiles = vec![
        p("198.18.2.10/32=access-edge-external"),
        p("2001:db8:2::10/128=access-edge-external"),
        p("198.18.3.1/32=edge-internal"),
        p("198.18.2.21/32=reverse-proxy-internal"),
    ];
    let profile_legs: BTreeMap<Prefix, u32> =
        profiles.iter().map(|a| (a.prefix, DMZ as u32)).collect();
    let mut sets = vec![PARTNERS];
    sets.extend(POOLS);
    PolicySpec {
        profiles,
        mgmt: Mgmt::defaults(),
        placement: Placement::Appliance,
        local_addrs: vec![
            OWN.parse::<IpAddr>()
                .unwrap_or_else(|e| panic!("{OWN}: {e}")),
        ],
        profile_legs,
        addresses: addresses(&sets),
        ..PolicySpec::default()
    }
}

#[test]
fn an_appliance_applies_sets_to_inbound_and_outbound_rows() {
    let Some(mut k) = Kernel::appliance("address_sets_appliance", &appliance_spec(), 3) else {
        return;
    };
    pin_this_thread_to_cpu0();
    let mut on = |what: &str, src: &str, dst: &str, dport: u16, pass, by| {
        let frame = Packet::tcp(src, dst, 40_040, dport).build();
        let (passed, counter) = k.run_on(route(src), &frame);
        check(&k, what, passed, counter, pass, by);
    };
    // Inbound rows: the peer is the source.
    on(
        "partner -> Access Edge 5061",
        PARTNER,
        ACCESS,
        5061,
        true,
        Ok("access-edge-external/tcp/5061-5061"),
    );
    on(
        "partner6 -> Access Edge 5061",
        PARTNER6,
        ACCESS6,
        5061,
        true,
        Ok("access-edge-external/tcp/5061-5061"),
    );
    on(
        "stranger -> Access Edge 5061",
        STRANGER,
        ACCESS,
        5061,
        false,
        Err(Reason::PeerNotAllowed),
    );
    on(
        "stranger6 -> Access Edge 5061",
        STRANGER6,
        ACCESS6,
        5061,
        false,
        Err(Reason::PeerNotAllowed),
    );
    on(
        "Front End -> Edge internal 5062",
        FRONT_END,
        EDGE_INT,
        5062,
        true,
        Ok("edge-internal/tcp/5062-5062"),
    );
    on(
        "elsewhere -> Edge internal 5062",
        ELSEWHERE,
        EDGE_INT,
        5062,
        false,
        Err(Reason::PeerNotAllowed),
    );
    // Outbound rows: the peer is the destination.
    on(
        "Access Edge -> partner 5061",
        ACCESS,
        PARTNER,
        5061,
        true,
        Ok("access-edge-external/tcp/5061-5061"),
    );
    on(
        "Access Edge -> stranger 5061",
        ACCESS,
        STRANGER,
        5061,
        false,
        Err(Reason::PeerNotAllowed),
    );
    on(
        "Edge internal -> Front End 5061",
        EDGE_INT,
        FRONT_END,
        5061,
        true,
        Ok("edge-internal/tcp/5061-5061"),
    );
    on(
        "Edge internal -> elsewhere 5061",
        EDGE_INT,
        ELSEWHERE,
        5061,
        false,
        Err(Reason::PeerNotAllowed),
    );
    on(
        "reverse proxy -> Front End 4443",
        PROXY_INT,
        FRONT_END,
        4443,
        true,
        Ok("reverse-proxy-internal/tcp/4443-4443"),
    );
    on(
        "reverse proxy -> elsewhere 4443",
        PROXY_INT,
        ELSEWHERE,
        4443,
        false,
        Err(Reason::PeerNotAllowed),
    );
}
