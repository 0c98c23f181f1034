//! Rules with address sets, compiled: the slot flag, the peer entries of
//! each slot, and IPv4 peers under IPv6 prefixes.

use std::net::IpAddr;

use classifier_common::PROTO_TCP;

use super::{CompiledPolicy, Mgmt, Placement, PolicyError, PolicySpec, SlotRegistry};
use crate::catalog::Catalog;

fn compile(
    catalog: &Catalog,
    spec: &PolicySpec,
    registry: &mut SlotRegistry,
) -> Result<CompiledPolicy, PolicyError> {
    super::compile(&super::resolve(catalog, spec)?, registry)
}

fn spec(role: &str, sets: &[&str]) -> PolicySpec {
    PolicySpec {
        default_roles: Some(vec![role.to_string()]),
        mgmt: Mgmt::defaults(),
        addresses: sets
            .iter()
            .map(|s| s.parse().unwrap_or_else(|e| panic!("{s}: {e}")))
            .collect(),
        ..PolicySpec::default()
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

#[test]
fn only_rules_with_sets_are_flagged_and_carry_their_prefixes() {
    let mut registry = SlotRegistry::default();
    let p = compile(
        &Catalog::embedded(),
        &spec(
            "access-edge-external",
            &["federation-partners=198.19.7.0/24,2001:db8:7::/48"],
        ),
        &mut registry,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let profile = &p.profiles[0];
    assert!(
        profile.names_peers(PROTO_TCP, 5061),
        "5061 names the partners"
    );
    assert!(
        profile.names_peers(PROTO_TCP, 5269),
        "5269 names the partners"
    );
    assert!(!profile.names_peers(PROTO_TCP, 443), "443 names no set");
    let slot = profile.slot(PROTO_TCP, 5061);
    assert!(
        slot != 0 && slot < 0x4000,
        "the slot is a plain counter slot: {slot}"
    );
    for (peer, admitted) in [
        ("198.19.7.1", true),
        ("198.19.8.1", false),
        ("2001:db8:7::1", true),
        ("2001:db8:8::1", false),
    ] {
        assert_eq!(p.peer_allowed(slot, ip(peer)), admitted, "{peer} on 5061");
    }
    assert!(
        p.peer_allowed(profile.slot(PROTO_TCP, 443), ip("198.19.8.1")),
        "a rule without sets admits every peer"
    );
    assert_eq!(
        p.peers.len(),
        2,
        "one entry list per flagged slot (5061 and 5269 inbound): {:?}",
        p.peers.keys()
    );
}

#[test]
fn an_ipv6_set_covering_the_mapped_range_admits_no_ipv4_peer() {
    let mut registry = SlotRegistry::default();
    for (set, v4, v6) in [
        ("federation-partners=::/0", false, true),
        ("federation-partners=::/0,0.0.0.0/0", true, true),
        ("federation-partners=0.0.0.0/0", true, false),
        ("federation-partners=", false, false),
    ] {
        let p = compile(
            &Catalog::embedded(),
            &spec("access-edge-external", &[set]),
            &mut registry,
        )
        .unwrap_or_else(|e| panic!("{set}: {e}"));
        let slot = p.profiles[0].slot(PROTO_TCP, 5061);
        assert_eq!(p.peer_allowed(slot, ip("198.19.8.1")), v4, "{set}: IPv4");
        assert_eq!(p.peer_allowed(slot, ip("2001:db8::1")), v6, "{set}: IPv6");
    }
}

#[test]
fn the_default_catalog_leaves_every_scoped_row_open() {
    for role in [
        "edge-internal",
        "lb-edge-internal",
        "access-edge-external",
        "reverse-proxy-internal",
    ] {
        let mut registry = SlotRegistry::default();
        let mut s = spec(role, &[]);
        s.placement = Placement::Appliance;
        s.profiles = vec![
            format!("198.18.3.0/24={role}")
                .parse()
                .unwrap_or_else(|e| panic!("{e}")),
        ];
        s.default_roles = None;
        let p = compile(&Catalog::embedded(), &s, &mut registry)
            .unwrap_or_else(|e| panic!("{role}: {e}"));
        assert!(!p.peers.is_empty(), "{role} has rows with sets");
        for &slot in p.peers.keys() {
            for peer in ["198.19.8.1", "10.1.2.3", "2001:db8::1", "fd00::1"] {
                assert!(
                    p.peer_allowed(slot, ip(peer)),
                    "{role}: slot {slot} refuses {peer} with the shipped sets"
                );
            }
        }
    }
}

#[test]
fn a_rule_whose_sets_another_rule_of_the_address_shadows_is_named() {
    let spec = PolicySpec {
        default_roles: Some(vec![
            "access-edge-external".to_string(),
            "hybrid-access-edge-external".to_string(),
        ]),
        mgmt: Mgmt::defaults(),
        ..PolicySpec::default()
    };
    let resolved = super::resolve(&Catalog::embedded(), &spec).expect("the spec resolves");
    let lines = super::compile::shadowed_peers(&resolved);
    assert!(
        lines.iter().any(|l| l.starts_with("inbound tcp 5061: ")
            && l.contains("access-edge-external's rule")
            && l.contains("(peers federation-partners)")
            && l.contains("hybrid-access-edge-external's rule")
            && l.contains("does not admit the peers in microsoft-365 there")
            && l.ends_with("add them to federation-partners")),
        "the hybrid 5061 rule is named as shadowed: {lines:#?}"
    );
    // The Access Edge alone: nothing shadows anything.
    let alone = super::resolve(
        &Catalog::embedded(),
        &PolicySpec {
            default_roles: Some(vec!["access-edge-external".to_string()]),
            mgmt: Mgmt::defaults(),
            ..PolicySpec::default()
        },
    )
    .expect("the spec resolves");
    assert_eq!(
        super::compile::shadowed_peers(&alone),
        Vec::<String>::new(),
        "one role, no shadow"
    );
}

#[test]
fn no_role_of_the_embedded_catalogs_shadows_its_own_sets() {
    for edition in crate::catalog::Edition::ALL {
        let catalog = Catalog::edition(edition);
        for role in catalog.role_ids() {
            let spec = PolicySpec {
                default_roles: Some(vec![role.to_string()]),
                mgmt: Mgmt::defaults(),
                ..PolicySpec::default()
            };
            let resolved = super::resolve(&catalog, &spec).expect("the spec resolves");
            assert_eq!(
                super::compile::shadowed_peers(&resolved),
                Vec::<String>::new(),
                "{edition} {role}"
            );
        }
    }
}
