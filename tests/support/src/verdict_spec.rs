//! The verdict spec (`tests/data/verdicts.toml`): the hand-stated packet
//! cases, each a frame (in [`crate::frame_text`]) and the verdict and reason
//! or rule the packet policy gives it under a named policy. The corpus
//! test runs every case through the kernel program and the reference
//! classifier; the verdict tests pick cases by name for what they check
//! beyond the verdict (counters, rule slots, reloads); the differential
//! test takes its policies and the outcomes it must reach from here. The
//! reference classifier stays the oracle for generated and fuzzed frames.

use std::{collections::BTreeMap, net::IpAddr};

use classifier_common::{PCLASS_NAMES, Reason, Verdict, reason_counter_index};
use portguard::policy::{Mgmt, Placement, PolicySpec};
use serde::Deserialize;

use crate::{frame_text::FrameText, kernel::Kernel};

/// The file, embedded so that a test binary needs no path at run time.
pub const TEXT: &str = include_str!("../../data/verdicts.toml");

/// A policy in the words of `portguard run`'s flags.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyText {
    pub note: String,
    /// `--role`: the default profile; none means `--profile` only.
    #[serde(default)]
    pub roles: Option<Vec<String>>,
    /// `--profile CIDR=ROLE[,ROLE]`.
    #[serde(default)]
    pub profiles: Vec<String>,
    /// `false` for `--no-default-mgmt`.
    #[serde(default = "yes")]
    pub default_mgmt: bool,
    /// `--mgmt CIDR:PORT`.
    #[serde(default)]
    pub mgmt: Vec<String>,
    #[serde(default)]
    pub monitor: bool,
    #[serde(default)]
    pub drop_echo: bool,
    #[serde(default)]
    pub drop_ipsec_on_media: bool,
    /// `--client-media START-END`.
    #[serde(default)]
    pub client_media: Option<String>,
    /// `--addresses ID=CIDR[,CIDR...]`: an address set's contents.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Appliance mode: the legs, in `--iface` order (names for the spec).
    #[serde(default)]
    pub legs: Vec<String>,
    /// Appliance mode: the box's own addresses.
    #[serde(default)]
    pub own: Vec<IpAddr>,
    /// Appliance mode: `CIDR=LEG`, where the box's routes send addresses
    /// (the longest prefix wins; the rest of the world is behind the first
    /// leg). A profile sits behind the leg its prefix is routed to.
    #[serde(default)]
    pub routes: Vec<String>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    policy: BTreeMap<String, PolicyText>,
    section: Vec<SectionText>,
    differential: Vec<Differential>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SectionText {
    policy: String,
    #[serde(default)]
    group: Option<String>,
    note: String,
    cases: Vec<CaseText>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseText {
    name: String,
    packet: String,
    expect: String,
}

/// A run of the differential test: generated frames under a policy, and the
/// outcomes (`reason:verdict`, or `rule`) that must turn up among them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Differential {
    pub name: String,
    pub policy: String,
    pub seed: u64,
    pub frames: usize,
    pub covers: Vec<String>,
    /// Outcomes that must not turn up.
    #[serde(default)]
    pub never: Vec<String>,
}

/// The spec, read and checked.
#[derive(Debug)]
pub struct Spec {
    pub policies: BTreeMap<String, PolicyText>,
    pub sections: Vec<Section>,
    pub differential: Vec<Differential>,
}

/// Cases that run in order, on one fresh program under one policy.
#[derive(Debug)]
pub struct Section {
    pub policy: String,
    /// The test of tests/tests/policy/verdicts.rs that runs this section again.
    pub group: Option<String>,
    pub note: String,
    pub cases: Vec<Case>,
}

#[derive(Debug)]
pub struct Case {
    pub name: String,
    /// The frame's text, as written.
    pub packet: String,
    pub frame: FrameText,
    pub bytes: Vec<u8>,
    pub expect: Expect,
}

/// What a case expects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// A frame the host sends, run through the TC egress recorder.
    Egress,
    Verdict {
        verdict: Verdict,
        why: Why,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Why {
    /// Counted under a reason counter of this packet class.
    Reason { reason: Reason, pclass: u32 },
    /// Passed under a catalog rule of this protocol whose range holds
    /// `port` (and of this role, where named); with `end`, whose range is
    /// exactly `port-end`.
    Rule {
        role: Option<String>,
        proto: String,
        port: u16,
        end: Option<u16>,
    },
}

impl Expect {
    /// `egress`, or `VERDICT WHY`: VERDICT is `pass`, `drop` or
    /// `would_drop`; WHY is `REASON/PCLASS` or
    /// `rule:[ROLE/]PROTO/PORT[-END]`.
    pub fn parse(s: &str) -> Result<Expect, String> {
        if s == "egress" {
            return Ok(Expect::Egress);
        }
        let (verdict, why) = s
            .split_once(' ')
            .ok_or_else(|| format!("`{s}` is not `VERDICT WHY`"))?;
        let verdict = match verdict {
            "pass" => Verdict::Pass,
            "drop" => Verdict::Drop,
            "would_drop" => Verdict::WouldDrop,
            other => return Err(format!("`{other}` is not pass, drop or would_drop")),
        };
        let why = if let Some(rule) = why.strip_prefix("rule:") {
            let parts: Vec<&str> = rule.split('/').collect();
            let (role, proto, port) = match parts.as_slice() {
                [proto, port] => (None, *proto, *port),
                [role, proto, port] => (Some((*role).to_string()), *proto, *port),
                _ => return Err(format!("`{why}` is not rule:[ROLE/]PROTO/PORT")),
            };
            let bad = || format!("`{port}` in `{why}` is not PORT or START-END");
            let (start, end) = match port.split_once('-') {
                Some((s, e)) => (s, Some(e.parse().map_err(|_| bad())?)),
                None => (port, None),
            };
            Why::Rule {
                role,
                proto: proto.to_string(),
                port: start.parse().map_err(|_| bad())?,
                end,
            }
        } else {
            let (reason, pclass) = why
                .split_once('/')
                .ok_or_else(|| format!("`{why}` is not REASON/PCLASS"))?;
            Why::Reason {
                reason: *Reason::ALL
                    .iter()
                    .find(|r| r.name() == reason)
                    .ok_or_else(|| format!("`{reason}` is not a reason"))?,
                pclass: PCLASS_NAMES
                    .iter()
                    .position(|p| *p == pclass)
                    .and_then(|p| u32::try_from(p).ok())
                    .ok_or_else(|| format!("`{pclass}` is not a packet class"))?,
            }
        };
        Ok(Expect::Verdict { verdict, why })
    }

    /// Whether the frame passes.
    pub fn passes(&self) -> bool {
        !matches!(
            self,
            Expect::Verdict {
                verdict: Verdict::Drop,
                ..
            }
        )
    }

    /// The reason counter expected, where the expectation names one.
    pub fn reason_counter(&self) -> Option<u32> {
        match self {
            Expect::Verdict {
                verdict,
                why: Why::Reason { reason, pclass },
            } => Some(reason_counter_index(
                *reason as u32,
                *verdict as u32,
                *pclass,
            )),
            _ => None,
        }
    }

    /// `VERDICT WHY` as written in the spec.
    pub fn text(&self) -> String {
        match self {
            Expect::Egress => "egress".into(),
            Expect::Verdict { verdict, why } => {
                let v = ["pass", "drop", "would_drop"][*verdict as usize];
                match why {
                    Why::Reason { reason, pclass } => {
                        format!("{v} {}/{}", reason.name(), PCLASS_NAMES[*pclass as usize])
                    }
                    Why::Rule {
                        role,
                        proto,
                        port,
                        end,
                    } => {
                        let role = role.as_ref().map_or(String::new(), |r| format!("{r}/"));
                        let end = end.map_or(String::new(), |e| format!("-{e}"));
                        format!("{v} rule:{role}{proto}/{port}{end}")
                    }
                }
            }
        }
    }
}

impl Spec {
    /// The embedded spec; panics naming the case that does not read.
    pub fn load() -> Spec {
        Spec::parse(TEXT).expect("tests/data/verdicts.toml")
    }

    pub fn parse(text: &str) -> Result<Spec, String> {
        let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut names = std::collections::BTreeSet::new();
        let mut sections = Vec::new();
        for s in file.section {
            let Some(policy) = file.policy.get(&s.policy) else {
                return Err(format!("a section names an unknown policy `{}`", s.policy));
            };
            if !policy.legs.is_empty() && s.group.is_none() {
                return Err(format!(
                    "a section under the appliance policy `{}` has no group: only appliance_verdicts.rs runs appliances",
                    s.policy
                ));
            }
            let mut cases = Vec::new();
            for c in s.cases {
                if !names.insert(c.name.clone()) {
                    return Err(format!("two cases are named `{}`", c.name));
                }
                let frame = FrameText::parse(&c.packet).map_err(|e| format!("{}: {e}", c.name))?;
                let bytes = frame.build().map_err(|e| format!("{}: {e}", c.name))?;
                let expect = Expect::parse(&c.expect).map_err(|e| format!("{}: {e}", c.name))?;
                cases.push(Case {
                    name: c.name,
                    packet: c.packet,
                    frame,
                    bytes,
                    expect,
                });
            }
            sections.push(Section {
                policy: s.policy,
                group: s.group,
                note: s.note,
                cases,
            });
        }
        for d in &file.differential {
            if !file.policy.contains_key(&d.policy) {
                return Err(format!(
                    "differential `{}`: unknown policy `{}`",
                    d.name, d.policy
                ));
            }
        }
        Ok(Spec {
            policies: file.policy,
            sections,
            differential: file.differential,
        })
    }

    /// A policy by name, as the `PolicySpec` its flags give.
    pub fn policy(&self, name: &str) -> PolicySpec {
        let p = self
            .policies
            .get(name)
            .unwrap_or_else(|| panic!("verdicts.toml has no policy `{name}`"));
        p.to_spec()
            .unwrap_or_else(|e| panic!("verdicts.toml policy `{name}`: {e}"))
    }

    /// Whether a policy is an appliance's (it has legs).
    pub fn is_appliance(&self, policy: &str) -> bool {
        self.policies
            .get(policy)
            .is_some_and(|p| !p.legs.is_empty())
    }

    /// The sections of a group, in file order.
    pub fn group<'a>(&'a self, group: &'a str) -> impl Iterator<Item = &'a Section> {
        self.sections
            .iter()
            .filter(move |s| s.group.as_deref() == Some(group))
    }

    /// A case by name.
    pub fn case(&self, name: &str) -> &Case {
        self.cases()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("verdicts.toml has no case `{name}`"))
    }

    /// Every case, in file order.
    pub fn cases(&self) -> impl Iterator<Item = &Case> {
        self.sections.iter().flat_map(|s| &s.cases)
    }
}

/// What differs between what the kernel did with a frame (pass, counter)
/// and what the case expects: the verdict, and the reason counter or the
/// rule (its protocol, range and role) it was counted under.
pub fn check(kernel: &Kernel, expect: &Expect, got: (bool, u32)) -> Vec<String> {
    let mut problems = Vec::new();
    let Expect::Verdict { why, .. } = expect else {
        return vec!["an egress frame has no verdict".into()];
    };
    if got.0 != expect.passes() {
        problems.push(format!(
            "{} (expected {})",
            if got.0 { "passed" } else { "dropped" },
            expect.text()
        ));
    }
    match why {
        Why::Reason { .. } => {
            let want = expect.reason_counter();
            if want != Some(got.1) {
                problems.push(format!(
                    "counted as {} (expected {})",
                    kernel.describe(got.1),
                    expect.text()
                ));
            }
        }
        Why::Rule {
            role,
            proto,
            port,
            end,
        } => {
            match u16::try_from(got.1)
                .ok()
                .and_then(|s| kernel.registry.get(s))
            {
                Some(k)
                    if k.proto == *proto
                        && (k.port_start..=k.port_end).contains(port)
                        && end.is_none_or(|e| (k.port_start, k.port_end) == (*port, e))
                        && role.as_ref().is_none_or(|r| *r == k.role) => {}
                Some(k) => problems.push(format!(
                    "counted under {}/{}/{}-{} ({}), expected {}",
                    k.role,
                    k.proto,
                    k.port_start,
                    k.port_end,
                    k.service,
                    expect.text()
                )),
                None => problems.push(format!(
                    "counted as {}, expected a catalog rule ({})",
                    kernel.describe(got.1),
                    expect.text()
                )),
            }
        }
    }
    problems
}

impl PolicyText {
    /// The leg an appliance's routes send `addr` by, or `None` for the box's
    /// own addresses.
    pub fn leg_of(&self, addr: IpAddr) -> Result<Option<usize>, String> {
        if self.own.contains(&addr) {
            return Ok(None);
        }
        let mut best: Option<(u8, usize)> = None;
        for r in &self.routes {
            let bad = || format!("route `{r}` is not CIDR=LEG");
            let (cidr, leg) = r.split_once('=').ok_or_else(bad)?;
            let leg = self
                .legs
                .iter()
                .position(|l| l == leg)
                .ok_or_else(|| format!("route `{r}`: no leg `{leg}`"))?;
            let (net, len) = cidr.split_once('/').ok_or_else(bad)?;
            let net: IpAddr = net.parse().map_err(|_| bad())?;
            let len: u8 = len.parse().map_err(|_| bad())?;
            if in_prefix(addr, net, len) && best.is_none_or(|(l, _)| len > l) {
                best = Some((len, leg));
            }
        }
        Ok(Some(best.map_or(0, |(_, leg)| leg)))
    }

    /// The `PolicySpec` these flags give `portguard run`.
    pub fn to_spec(&self) -> Result<PolicySpec, String> {
        let mut mgmt = if self.default_mgmt {
            Mgmt::defaults()
        } else {
            Vec::new()
        };
        for m in &self.mgmt {
            mgmt.push(m.parse().map_err(|e| format!("mgmt {m}: {e}"))?);
        }
        let profiles = self
            .profiles
            .iter()
            .map(|p| p.parse().map_err(|e| format!("profile {p}: {e}")))
            .collect::<Result<_, String>>()?;
        let client_media = match &self.client_media {
            None => None,
            Some(range) => {
                let bad = || format!("client_media `{range}` is not START-END");
                let (s, e) = range.split_once('-').ok_or_else(bad)?;
                Some((s.parse().map_err(|_| bad())?, e.parse().map_err(|_| bad())?))
            }
        };
        let profiles: Vec<portguard::policy::ProfileArg> = profiles;
        let appliance = !self.legs.is_empty();
        let mut profile_legs = BTreeMap::new();
        if appliance {
            for p in &profiles {
                if let Some(leg) = self.leg_of(p.prefix.ip())? {
                    profile_legs.insert(p.prefix, leg as u32);
                }
            }
        }
        Ok(PolicySpec {
            default_roles: self.roles.clone(),
            profiles,
            mgmt,
            placement: if appliance {
                Placement::Appliance
            } else {
                Placement::Host
            },
            local_addrs: self.own.clone(),
            profile_legs,
            monitor: self.monitor,
            drop_echo: self.drop_echo,
            drop_ipsec_on_media: self.drop_ipsec_on_media,
            client_media,
            // The cases decide by port and flow: their filler bytes are no
            // media, and the payload check has its own tests
            // (tests/tests/policy/media.rs).
            media_check: portguard::policy::MediaCheck::Off,
            stun_budget: portguard::policy::StunBudget::default(),
            addresses: self
                .addresses
                .iter()
                .map(|a| a.parse().map_err(|e| format!("addresses {a}: {e}")))
                .collect::<Result<_, String>>()?,
        })
    }
}

fn in_prefix(addr: IpAddr, net: IpAddr, len: u8) -> bool {
    match (addr, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_reads_and_every_expectation_writes_back_as_written() {
        let spec = Spec::load();
        let mut n = 0;
        for s in &spec.sections {
            spec.policy(&s.policy);
            for c in &s.cases {
                let raw = TEXT
                    .lines()
                    .find(|l| l.contains(&format!("name = \"{}\"", c.name)))
                    .unwrap_or_else(|| panic!("{}: not on a line of its own", c.name));
                assert!(
                    raw.contains(&format!("expect = \"{}\"", c.expect.text())),
                    "{}: the expectation reads back as `{}`",
                    c.name,
                    c.expect.text()
                );
                n += 1;
            }
        }
        assert!(n > 150, "the spec holds only {n} cases");
    }

    #[test]
    fn the_lab_policy_is_the_labs_command_line() {
        let spec = Spec::load();
        let from_file = spec.policy("lab");
        let lab = crate::spec::lab_spec();
        assert_eq!(from_file.default_roles, lab.default_roles, "lab roles");
        assert_eq!(from_file.client_media, lab.client_media, "lab media");
        assert_eq!(
            format!("{:?}", from_file.mgmt),
            format!("{:?}", lab.mgmt),
            "lab management allowance"
        );
        let pool = spec.policy("pool");
        let shared = crate::spec::profiles_spec();
        assert_eq!(
            format!("{:?}", (&pool.profiles, &pool.mgmt, pool.client_media)),
            format!(
                "{:?}",
                (&shared.profiles, &shared.mgmt, shared.client_media)
            ),
            "the pool policy is spec::profiles_spec"
        );
    }

    #[test]
    fn bad_expectations_are_refused() {
        for (text, word) in [
            ("pass", "VERDICT WHY"),
            ("maybe rule:tcp/1", "`maybe`"),
            ("drop nothing/tcp", "`nothing`"),
            ("drop malformed/sctp", "`sctp`"),
            ("pass rule:tcp/x", "`x`"),
        ] {
            let err = Expect::parse(text)
                .err()
                .unwrap_or_else(|| panic!("`{text}` was accepted"));
            assert!(err.contains(word), "`{text}`: {err} does not name {word}");
        }
    }
}
