//! The 2019 edition and derived catalogs (`base`, `[[remove]]`, `[[remove_role]]`).

use super::{Catalog, Direction, Edition, Rule};

fn errors_of(text: &str) -> Vec<String> {
    match Catalog::parse(text, "d.toml") {
        Ok((c, _)) => panic!("expected errors, parsed {} rules", c.rules.len()),
        Err(e) => e.errors().map(ToString::to_string).collect(),
    }
}

fn xmpp(r: &Rule) -> bool {
    r.port_start == 5269 || r.port_start == 23456
}

#[test]
fn the_2019_edition_is_2015_without_xmpp_and_persistent_chat() {
    let old = Catalog::edition(Edition::Sfb2015);
    let new = Catalog::edition(Edition::Sfb2019);
    assert_eq!(
        old.edition,
        Some(Edition::Sfb2015),
        "sfb2015.toml names its edition"
    );
    assert_eq!(
        new.edition,
        Some(Edition::Sfb2019),
        "sfb2019.toml names its edition"
    );
    assert_eq!(new.origin, "catalog/sfb2019.toml");
    let expected: Vec<&Rule> = old
        .rules
        .iter()
        .filter(|r| !xmpp(r) && r.role != "persistent-chat")
        .collect();
    assert_eq!(
        old.rules.len() - expected.len(),
        8,
        "5 XMPP rows and 3 Persistent Chat rows go"
    );
    let got: Vec<&Rule> = new.rules.iter().collect();
    assert_eq!(got, expected, "every other rule is the 2015 rule, in order");
    let roles: Vec<&str> = old
        .role_ids()
        .into_iter()
        .filter(|r| *r != "persistent-chat")
        .collect();
    assert_eq!(new.role_ids(), roles, "only persistent-chat goes");
    assert_eq!(new.ipsec, old.ipsec, "the IPsec exceptions are the same");
    assert_eq!(new.client_media, old.client_media);
    assert!(
        new.resolve_roles(&["persistent-chat".into()]).is_err(),
        "2019 has no persistent-chat role"
    );
}

#[test]
fn the_2019_edge_keeps_sip_and_loses_xmpp() {
    let c = Catalog::edition(Edition::Sfb2019);
    let edge = c
        .effective_rules(&["access-edge-external".into(), "edge-internal".into()])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !edge
            .iter()
            .any(|r| r.port_start == 5269 || r.port_start == 23456),
        "no XMPP port on the 2019 Edge"
    );
    for direction in [Direction::Inbound, Direction::Outbound] {
        assert!(
            edge.iter().any(|r| r.port_start == 5061
                && r.role == "access-edge-external"
                && r.direction == direction),
            "SIP federation 5061 {direction} stays"
        );
    }
}

#[test]
fn the_embedded_2019_text_checks_clean() {
    let (c, warnings) = Catalog::parse(
        Edition::Sfb2019.embedded_text(),
        Edition::Sfb2019.embedded_name(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(warnings.is_empty(), "no warnings: {warnings:?}");
    assert_eq!(c, Catalog::edition(Edition::Sfb2019));
}

#[test]
fn a_removal_that_matches_no_rule_is_an_error_at_its_line() {
    let text = "version = 1\nbase = \"2015\"\n\n[[remove]]\nrole = \"edge-internal\"\nservice = \"XMPP\"\nprotocol = \"tcp\"\nports = 5269\ntable = \"edge-internal\"\nsource = \"doc.md\"\nnote = \"n\"\n";
    let errors = errors_of(text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("d.toml:4:1: error: no rule of the 2015 catalog is edge-internal inbound tcp 5269 `XMPP`"),
        "{}",
        errors[0]
    );
}

#[test]
fn a_rule_removed_twice_is_an_error() {
    let one = "[[remove]]\nrole = \"persistent-chat\"\nservice = \"Persistent Chat SIP\"\nprotocol = \"tcp\"\nports = \"5041\"\ntable = \"server\"\nsource = \"s\"\nnote = \"n\"\n";
    let text = format!("version = 1\nbase = \"2015\"\n{one}{one}");
    let errors = errors_of(&text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains(":11:1: error: this rule is removed already, at line 3"),
        "{}",
        errors[0]
    );
}

#[test]
fn a_role_is_removed_only_without_rules_and_includers() {
    let text = "version = 1\nbase = \"2015\"\n[[remove_role]]\nid = \"persistent-chat\"\nsource = \"s\"\nnote = \"n\"\n[[remove_role]]\nid = \"all-servers\"\nsource = \"s\"\nnote = \"n\"\n";
    let errors = errors_of(text).join("\n");
    assert!(
        errors.contains("role `persistent-chat` keeps 3 rule(s) of the 2015 catalog"),
        "{errors}"
    );
    assert!(
        errors.contains("role `front-end` includes `all-servers`"),
        "{errors}"
    );
}

#[test]
fn a_derived_catalog_only_removes() {
    let text =
        "version = 1\nbase = \"2015\"\n[[role]]\nid = \"x\"\nlabel = \"x\"\ntable = \"server\"\n";
    let errors = errors_of(text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("has no [[role]], [[rule]], [[ipsec]] or [[addresses]] of its own"),
        "{}",
        errors[0]
    );
    let errors = errors_of("version = 1\nbase = \"2016\"\n");
    assert!(
        errors[0].starts_with("d.toml:2:8: error: unknown edition `2016`"),
        "{errors:?}"
    );
    let errors =
        errors_of("version = 1\n[[remove_role]]\nid = \"x\"\nsource = \"s\"\nnote = \"n\"\n");
    assert!(
        errors[0].contains("`[[remove_role]]` without `base`"),
        "{errors:?}"
    );
}

#[test]
fn a_derived_file_loads_like_any_catalog() {
    let dir = std::env::temp_dir().join(format!("pg-derived-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let path = dir.join("mine.toml");
    let text = "version = 1\nbase = \"2019\"\n[[remove]]\nrole = \"edge-internal\"\nservice = \"A/V authentication\"\nprotocol = \"tcp\"\nports = 5062\ntable = \"edge-internal\"\ndirection = \"inbound\"\nsource = \"local policy\"\nnote = \"no A/V authentication through this Edge\"\n";
    std::fs::write(&path, text).expect("write");
    let (c, _) = Catalog::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(c.edition, None, "the file names no edition");
    assert_eq!(
        c.rules.len(),
        Catalog::edition(Edition::Sfb2019).rules.len() - 1,
        "2019 minus one rule"
    );
    assert!(
        !c.rules
            .iter()
            .any(|r| r.port_start == 5062 && r.role == "edge-internal")
    );
}

#[test]
fn an_unknown_edition_name_is_an_error() {
    let errors = errors_of("version = 1\nedition = \"2013\"\n");
    assert!(
        errors[0].starts_with("d.toml:2:11: error: unknown edition `2013`"),
        "{errors:?}"
    );
    assert_eq!("2019".parse::<Edition>(), Ok(Edition::Sfb2019));
    assert!("2016".parse::<Edition>().is_err());
}
