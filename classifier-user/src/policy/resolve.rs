//! The policy a [`PolicySpec`] asks for, read from its catalog once: what
//! both the map compiler and the nft renderer work from.

use std::{borrow::Cow, collections::HashSet};

use classifier_common::{
    FLAG_APPLIANCE, FLAG_DROP_ECHO, FLAG_DROP_IPSEC_MEDIA, FLAG_MEDIA_MONITOR, FLAG_MONITOR,
};

use super::{MediaCheck, Mgmt, Placement, PolicyError, PolicySpec, Prefix, StunBudget};
use crate::catalog::{AddressSet, Catalog, Cidr, Direction, EffectiveRule};

/// One generation's policy, catalog and flags resolved.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub placement: Placement,
    /// The catalog's origin (a file, or the embedded catalog's name).
    pub origin: String,
    /// The client media range in force (`--client-media-ports` applied).
    pub client_media: (u16, u16),
    /// One per distinct role set: the index is the profile number in the
    /// maps. Profiles given the same roles share one.
    pub profiles: Vec<ResolvedProfile>,
    /// The profile of `--role`: on a host, the default profile of addresses
    /// in no prefix (`None`: they are dropped); on an appliance, the profile
    /// of the box's own addresses (their roles may be none).
    pub own: Option<u32>,
    /// The `--profile` prefixes, in the order given.
    pub prefixes: Vec<ProfilePrefix>,
    /// Appliance mode: the box's own addresses, as host prefixes, sorted.
    /// They have the `own` profile unless a `--profile` names one exactly.
    pub local: Vec<Prefix>,
    /// The lockout guard, as given (every port 1-65535).
    pub mgmt: Vec<Mgmt>,
    pub monitor: bool,
    pub drop_echo: bool,
    pub drop_ipsec_on_media: bool,
    /// What the `payload = "media"` rules do (`--media-check`).
    pub media_check: MediaCheck,
    pub stun_budget: StunBudget,
    /// The catalog's `reflection_ports`.
    pub reflection_ports: Vec<u16>,
    /// The catalog's address sets, `--addresses` applied: what the rules'
    /// `peers` name.
    pub addresses: Vec<AddressSet>,
}

/// The roles of one profile, with their rules.
#[derive(Clone, Debug)]
pub struct ResolvedProfile {
    /// The roles as given (`--role` or a `--profile`'s).
    pub roles: Vec<String>,
    /// The same with inclusions resolved, depth first, each once.
    pub members: Vec<String>,
    /// The members' inbound rules (one per protocol), in catalog order: that
    /// order settles which rule owns a port two rules of one width cover.
    pub inbound: Vec<EffectiveRule>,
    /// The members' outbound rules, in catalog order.
    pub outbound: Vec<EffectiveRule>,
    /// A member role is on a media path (the catalog's `media_path`): the
    /// IPsec exception table asks for IPsec to be off towards it.
    pub media_path: bool,
}

/// A `--profile` prefix: the profile of the packets to it (and, on an
/// appliance, from it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProfilePrefix {
    pub prefix: Prefix,
    pub profile: u32,
    /// Appliance mode: the leg the prefix sits behind (its outbound rows
    /// apply only on it), `None` when the kernel routes it through no leg.
    pub leg: Option<u32>,
}

impl Resolved {
    /// The packet path's flag bits: the one place the placement and the
    /// mode become `Config::flags`.
    pub fn flags(&self) -> u32 {
        let mut f = 0;
        if self.monitor {
            f |= FLAG_MONITOR;
        }
        if self.drop_echo {
            f |= FLAG_DROP_ECHO;
        }
        if self.drop_ipsec_on_media {
            f |= FLAG_DROP_IPSEC_MEDIA;
        }
        if self.placement == Placement::Appliance {
            f |= FLAG_APPLIANCE;
        }
        if self.media_check == MediaCheck::Monitor {
            f |= FLAG_MEDIA_MONITOR;
        }
        f
    }

    /// The prefixes a rule naming `sets` admits: the union of the sets.
    pub fn peer_cidrs(&self, sets: &[String]) -> Vec<Cidr> {
        let mut out: Vec<Cidr> = self
            .addresses
            .iter()
            .filter(|a| sets.contains(&a.id))
            .flat_map(|a| a.cidrs.iter().copied())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The `own` profile, if any.
    pub fn own_profile(&self) -> Option<&ResolvedProfile> {
        self.own.and_then(|i| self.profiles.get(i as usize))
    }

    /// A role's own rules (not those it includes), inbound then outbound,
    /// if some profile has the role among its members.
    pub fn rules_of(&self, role: &str) -> Option<(Vec<&EffectiveRule>, Vec<&EffectiveRule>)> {
        let p = self
            .profiles
            .iter()
            .find(|p| p.members.iter().any(|m| m == role))?;
        Some((of_role(&p.inbound, role), of_role(&p.outbound, role)))
    }
}

fn of_role<'a>(rules: &'a [EffectiveRule], role: &str) -> Vec<&'a EffectiveRule> {
    rules.iter().filter(|r| r.role == role).collect()
}

/// Reads `catalog` for what `spec` asks: refuses unknown roles, a prefix
/// given twice, a policy with no role at all and a management port 0.
pub fn resolve(catalog: &Catalog, spec: &PolicySpec) -> Result<Resolved, PolicyError> {
    if let Some(m) = spec.mgmt.iter().find(|m| m.port == 0) {
        return Err(PolicyError::Flag {
            flag: "--mgmt",
            message: format!("{}: port 0 is not a port (1-65535)", m.prefix),
        });
    }
    let catalog = match spec.client_media {
        Some((start, end)) => Cow::Owned(catalog.with_client_media(start, end)?),
        None => Cow::Borrowed(catalog),
    };
    let catalog = if spec.addresses.is_empty() {
        catalog
    } else {
        let (catalog, warnings) = catalog.with_addresses(&spec.addresses)?;
        // A set the flag empties closes its rules: said at every start and
        // reload, as `catalog check` says it of an empty set in the file.
        for w in warnings {
            log::warn!("{w}");
        }
        Cow::Owned(catalog)
    };
    let appliance = spec.placement == Placement::Appliance;
    let mut role_sets: Vec<Vec<String>> = Vec::new();
    // Profiles with the same roles share their arrays.
    let mut index_of = |roles: &[String]| -> u32 {
        let i = match role_sets.iter().position(|r| r == roles) {
            Some(i) => i,
            None => {
                role_sets.push(roles.to_vec());
                role_sets.len() - 1
            }
        };
        i as u32
    };
    // On a host --role is the default profile. An appliance's --role are
    // the roles of its own addresses (host prefixes, below); anything else
    // is a forwarded packet that a --profile must cover.
    let mut own = match (&spec.default_roles, appliance) {
        (Some(roles), false) => Some(index_of(roles)),
        _ => None,
    };
    let mut prefixes: Vec<ProfilePrefix> = Vec::new();
    for p in &spec.profiles {
        let profile = index_of(&p.roles);
        if prefixes.iter().any(|q| q.prefix == p.prefix) {
            return Err(PolicyError::Flag {
                flag: "--profile",
                message: format!("{} is given twice", p.prefix),
            });
        }
        prefixes.push(ProfilePrefix {
            prefix: p.prefix,
            profile,
            leg: spec.profile_legs.get(&p.prefix).copied(),
        });
    }
    let mut local = Vec::new();
    if appliance {
        // The box's own addresses: --role's rows (none without --role: the
        // essentials and the lockout guard only).
        own = Some(index_of(spec.default_roles.as_deref().unwrap_or_default()));
        local = spec
            .local_addrs
            .iter()
            .filter_map(|ip| Prefix::new(*ip, if ip.is_ipv4() { 32 } else { 128 }).ok())
            .collect();
        local.sort();
        local.dedup();
    }
    if role_sets.is_empty() {
        return Err(PolicyError::Flag {
            flag: "--role",
            message: "give --role, or at least one --profile CIDR=ROLE".into(),
        });
    }

    let media_path_roles: HashSet<&str> = catalog
        .roles
        .iter()
        .filter(|r| r.media_path)
        .map(|r| r.id.as_str())
        .collect();
    let mut profiles = Vec::with_capacity(role_sets.len());
    for roles in role_sets {
        let members = catalog.resolve_roles(&roles)?;
        let (inbound, outbound) = catalog
            .effective_rules(&roles)?
            .into_iter()
            .partition(|r| r.direction == Direction::Inbound);
        let media_path = members
            .iter()
            .any(|m| media_path_roles.contains(m.as_str()));
        profiles.push(ResolvedProfile {
            roles,
            members,
            inbound,
            outbound,
            media_path,
        });
    }
    Ok(Resolved {
        placement: spec.placement,
        origin: catalog.origin.clone(),
        client_media: catalog.client_media,
        profiles,
        own,
        prefixes,
        local,
        mgmt: spec.mgmt.clone(),
        monitor: spec.monitor,
        drop_echo: spec.drop_echo,
        drop_ipsec_on_media: spec.drop_ipsec_on_media,
        media_check: spec.media_check,
        stun_budget: spec.stun_budget,
        reflection_ports: catalog.reflection_ports.clone(),
        addresses: catalog.addresses.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::ProfileArg;

    /// Roles `a` (including `m`), `m`, `plain`; `m` says `media_path` when
    /// `marked`.
    fn catalog(marked: bool) -> Catalog {
        let text = format!(
            "version = 1\n\
             [[role]]\nid = \"a\"\nlabel = \"A\"\ntable = \"server\"\nincludes = [\"m\"]\nwhy = \"w\"\n\
             [[role]]\nid = \"m\"\nlabel = \"M\"\ntable = \"server\"\nmedia_path = {marked}\n\
             [[role]]\nid = \"plain\"\nlabel = \"P\"\ntable = \"server\"\n\
             [[rule]]\nrole = \"m\"\nservice = \"s\"\nprotocol = \"both\"\nports = \"5000-5010\"\ntransport = \"T\"\ntable = \"server\"\nnote = \"\"\n\
             [[rule]]\nrole = \"a\"\nservice = \"o\"\nprotocol = \"tcp\"\nports = \"443\"\ntransport = \"T\"\ntable = \"server\"\nnote = \"\"\ndirection = \"outbound\"\n"
        );
        Catalog::parse(&text, "t.toml")
            .expect("the test catalog parses")
            .0
    }

    fn spec(placement: Placement, roles: Option<&[&str]>, profiles: &[&str]) -> PolicySpec {
        PolicySpec {
            default_roles: roles.map(|r| r.iter().map(|s| s.to_string()).collect()),
            profiles: profiles
                .iter()
                .map(|p| {
                    p.parse::<ProfileArg>()
                        .unwrap_or_else(|e| panic!("{p}: {e}"))
                })
                .collect(),
            placement,
            ..PolicySpec::default()
        }
    }

    #[test]
    fn media_path_comes_from_the_catalog_through_inclusions() {
        let r = resolve(
            &catalog(true),
            &spec(
                Placement::Host,
                Some(&["a"]),
                &["198.18.0.0/24=plain", "198.18.1.0/24=m"],
            ),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let media: Vec<(Vec<String>, bool)> = r
            .profiles
            .iter()
            .map(|p| (p.roles.clone(), p.media_path))
            .collect();
        assert_eq!(
            media,
            [
                (vec!["a".to_string()], true),
                (vec!["plain".to_string()], false),
                (vec!["m".to_string()], true)
            ],
            "a includes m, which is on a media path; plain is not"
        );
        let unmarked = resolve(&catalog(false), &spec(Placement::Host, Some(&["a"]), &[]))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            !unmarked.profiles[0].media_path,
            "without the attribute no role is on a media path, whatever its id"
        );
    }

    #[test]
    fn rules_split_by_direction_and_profiles_share_role_sets() {
        let r = resolve(
            &catalog(true),
            &spec(
                Placement::Appliance,
                Some(&["m"]),
                &["198.18.0.0/24=a", "198.18.1.0/24=m"],
            ),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.profiles.len(), 2, "--role m and the second profile share");
        assert_eq!(
            r.own,
            Some(1),
            "the box's own addresses get --role's profile"
        );
        let a = &r.profiles[0];
        assert_eq!(a.members, ["a", "m"], "inclusions resolved");
        assert_eq!(
            (a.inbound.len(), a.outbound.len()),
            (2, 1),
            "m's rule once per protocol, a's outbound row"
        );
        let profiles: Vec<u32> = r.prefixes.iter().map(|p| p.profile).collect();
        assert_eq!(profiles, [0, 1]);
        assert_eq!(
            r.flags() & FLAG_APPLIANCE,
            FLAG_APPLIANCE,
            "the placement is the flag"
        );
        let (inbound, outbound) = r.rules_of("a").expect("a is a member");
        assert!(
            inbound.is_empty() && outbound.len() == 1,
            "a's own rows only"
        );
    }

    #[test]
    fn refused_before_anything_is_compiled() {
        let cat = catalog(true);
        let twice = resolve(
            &cat,
            &spec(
                Placement::Host,
                None,
                &["198.18.0.0/24=a", "198.18.0.9/24=m"],
            ),
        );
        assert!(
            twice.is_err_and(|e| e.to_string().contains("198.18.0.0/24 is given twice")),
            "a prefix given twice"
        );
        let nothing = resolve(&cat, &spec(Placement::Host, None, &[]));
        assert!(
            nothing.is_err_and(|e| e.to_string().contains("give --role")),
            "no role at all"
        );
        let mut port0 = spec(Placement::Host, Some(&["a"]), &[]);
        port0.mgmt = vec![Mgmt {
            prefix: "10.0.0.0/8".parse().unwrap_or_else(|e| panic!("{e}")),
            port: 0,
        }];
        assert!(
            resolve(&cat, &port0).is_err_and(|e| e.to_string().contains("--mgmt")),
            "management port 0"
        );
    }
}
