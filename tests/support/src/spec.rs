//! The policies the tests share, as `PolicySpec`s: the lab's server (the
//! same roles and media range the lab demo and the operations tests pass on
//! the command line), a host in front of a pool, and one role alone. They
//! decide by port: the media rules' payload check is off in them (its
//! tests, tests/tests/policy/media.rs, turn it on), so that a frame's filler bytes
//! do not decide its verdict.

use portguard::policy::{MediaCheck, Mgmt, PolicySpec};

/// The lab's server: `testkit::lab::ROLES` (front-end + client), client media
/// narrowed to `testkit::lab::MEDIA` (50000-50019), SSH from anywhere.
pub fn lab_spec() -> PolicySpec {
    let (start, end) = testkit::lab::MEDIA
        .split_once('-')
        .and_then(|(s, e)| Some((s.parse().ok()?, e.parse().ok()?)))
        .expect("testkit::lab::MEDIA is not START-END");
    PolicySpec {
        default_roles: Some(testkit::lab::ROLES.split(',').map(String::from).collect()),
        mgmt: Mgmt::defaults(),
        client_media: Some((start, end)),
        media_check: MediaCheck::Off,
        ..PolicySpec::default()
    }
}

/// One role as the default profile, the default management allowance, the
/// full client media range.
pub fn role_spec(role: &str) -> PolicySpec {
    PolicySpec {
        default_roles: Some(vec![role.to_string()]),
        mgmt: Mgmt::defaults(),
        media_check: MediaCheck::Off,
        ..PolicySpec::default()
    }
}

fn parse<T: std::str::FromStr<Err = String>>(s: &str) -> T {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// A host in front of a pool: per-destination profiles, no default role, an
/// extra management port from 198.18.0.0/16.
pub fn profiles_spec() -> PolicySpec {
    let mut mgmt = Mgmt::defaults();
    mgmt.push(parse("198.18.0.0/16:2222"));
    mgmt.push(parse("[2001:db8::/48]:2222"));
    PolicySpec {
        default_roles: None,
        profiles: vec![
            parse("198.18.1.0/24=lb-director"),
            parse("198.18.2.0/24=mediation"),
            parse("198.18.2.128/25=front-end,client"),
            parse("2001:db8:1::/48=front-end"),
            parse("2001:db8:2::/64=lb-front-end"),
        ],
        mgmt,
        client_media: Some((50_000, 50_019)),
        media_check: MediaCheck::Off,
        ..PolicySpec::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lab_spec_is_what_the_lab_passes_on_the_command_line() {
        let spec = lab_spec();
        assert_eq!(
            spec.default_roles,
            Some(vec!["front-end".to_string(), "client".to_string()]),
            "roles from testkit::lab::ROLES"
        );
        assert_eq!(
            spec.client_media,
            Some((50_000, 50_019)),
            "media from testkit::lab::MEDIA"
        );
    }
}
