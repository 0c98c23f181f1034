//! What an instance is asked to do (`portguard run`'s flags, as the CLI
//! hands them over), and what can be refused from them alone, before
//! anything is touched.

use std::{collections::BTreeMap, net::IpAddr, net::SocketAddr, path::PathBuf};

use classifier_common::{LPM_ENTRIES, MAX_LEGS};

use super::RunError;
use crate::{
    catalog::{AddressesArg, Edition},
    iface,
    loader::{AttachMode, FlowLimits},
    policy::{MediaCheck, Mgmt, Placement, PolicySpec, ProfileArg, StunBudget},
};

/// An instance's settings: one field per `run` flag (docs/cli.md).
#[derive(Clone, Debug)]
pub struct Options {
    /// The interfaces to guard, the first naming the instance (its pins,
    /// state and socket); several make an appliance.
    pub ifaces: Vec<String>,
    /// Appliance mode on a single interface.
    pub appliance: bool,
    /// The default profile's roles (appliance mode: the box's own
    /// addresses').
    pub roles: Vec<String>,
    pub profiles: Vec<ProfileArg>,
    /// A catalog file replacing the embedded one.
    pub catalog: Option<PathBuf>,
    /// The embedded catalog's edition (without `catalog`).
    pub edition: Edition,
    /// Count drops as would-drops and pass them.
    pub monitor: bool,
    pub xdp_mode: AttachMode,
    pub metrics_addr: SocketAddr,
    pub client_media_ports: Option<(u16, u16)>,
    /// `--addresses ID=CIDR,...`: address sets whose contents replace the
    /// catalog's, kept across reloads.
    pub addresses: Vec<AddressesArg>,
    /// Management allowances added to the default one.
    pub mgmt: Vec<Mgmt>,
    /// Whether the default allowance (TCP 22 from anywhere) is kept.
    pub default_mgmt: bool,
    pub drop_echo: bool,
    pub drop_ipsec_on_media: bool,
    /// Discard what a previous run left pinned.
    pub clean_start: bool,
    pub bpffs: PathBuf,
    /// Leave the program attached and pinned on exit.
    pub keep_attached: bool,
    pub allow_loopback: bool,
    /// Packet events per second per CPU; 0 turns them off.
    pub events_rate: u32,
    pub events_pass: bool,
    pub flow_limits: FlowLimits,
    /// What the `payload = "media"` rules do.
    pub media_check: MediaCheck,
    /// STUN requests per source and per subnet to a media rule.
    pub stun_budget: StunBudget,
}

impl Options {
    /// Appliance mode: several legs, or `appliance`.
    pub fn is_appliance(&self) -> bool {
        self.appliance || self.ifaces.len() > 1
    }

    /// The policy these options ask for; in appliance mode with the box's
    /// addresses as they are now (the legs each profile sits behind are
    /// resolved once the legs' indexes are known).
    pub(super) fn spec(&self) -> PolicySpec {
        PolicySpec {
            default_roles: if self.roles.is_empty() {
                None
            } else {
                Some(self.roles.clone())
            },
            profiles: self.profiles.clone(),
            mgmt: Mgmt::with_default(self.default_mgmt, &self.mgmt),
            monitor: self.monitor,
            drop_echo: self.drop_echo,
            drop_ipsec_on_media: self.drop_ipsec_on_media,
            client_media: self.client_media_ports,
            placement: if self.is_appliance() {
                Placement::Appliance
            } else {
                Placement::Host
            },
            local_addrs: if self.is_appliance() {
                own_addresses()
            } else {
                Vec::new()
            },
            profile_legs: BTreeMap::new(),
            media_check: self.media_check,
            stun_budget: self.stun_budget,
            addresses: self.addresses.clone(),
        }
    }

    /// What can be refused from the options alone, before anything is
    /// touched.
    pub(super) fn check(&self, spec: &PolicySpec) -> Result<(), RunError> {
        if self.ifaces.len() > MAX_LEGS as usize {
            return Err(RunError::Usage(format!(
                "--iface: at most {MAX_LEGS} interfaces per instance, {} given",
                self.ifaces.len()
            )));
        }
        for (i, name) in self.ifaces.iter().enumerate() {
            iface::validate(name).map_err(|e| RunError::Usage(e.to_string()))?;
            if self.ifaces[..i].contains(name) {
                return Err(RunError::Usage(format!("--iface {name} is given twice")));
            }
            let loopback = iface::is_loopback(name);
            if loopback && !self.allow_loopback {
                return Err(RunError::Usage(format!(
                    "--iface {name}: a loopback interface carries the host's own traffic (portguard's metrics included) and the policy would cut it; give --allow-loopback to protect it anyway"
                )));
            }
            if loopback && self.xdp_mode == AttachMode::Native {
                return Err(RunError::Usage(format!(
                    "--xdp-mode native: the loopback driver of {name} has no native XDP; use --xdp-mode generic (or auto)"
                )));
            }
        }
        if spec.profiles.len() > LPM_ENTRIES as usize {
            return Err(RunError::Usage(format!(
                "--profile: at most {LPM_ENTRIES} prefixes fit the profile table, {} given",
                spec.profiles.len()
            )));
        }
        if spec.mgmt.len() > LPM_ENTRIES as usize {
            return Err(RunError::Usage(format!(
                "--mgmt: at most {LPM_ENTRIES} prefixes fit the management table, {} given",
                spec.mgmt.len()
            )));
        }
        Ok(())
    }
}

/// Every address of the box, sorted: what an appliance's own-address rows
/// and lockout guard cover.
pub(super) fn own_addresses() -> Vec<IpAddr> {
    let mut a = iface::all_addresses();
    a.sort();
    a.dedup();
    a
}

/// Scrapes that reach the metrics address through the protected interface
/// meet the policy like any other packet.
pub(super) fn metrics_on_protected_iface(addr: SocketAddr, ifname: &str) -> Option<String> {
    let on_iface = addr.ip().is_unspecified() || iface::addresses(ifname).contains(&addr.ip());
    on_iface.then(|| {
        format!(
            "--metrics-addr {addr} is reachable through {ifname}, which portguard protects: scrapes arriving through {ifname} are dropped unless --mgmt or the catalog allow TCP {}",
            addr.port()
        )
    })
}

/// "front-end, client", or what the absence of --role means.
pub(super) fn roles_text(spec: &PolicySpec) -> String {
    match (&spec.default_roles, spec.placement) {
        (Some(r), Placement::Host) => format!("roles {}", r.join(", ")),
        (None, Placement::Host) => "no default roles (only --profile destinations pass)".into(),
        (Some(r), Placement::Appliance) => format!(
            "appliance mode, its {} own addresses with roles {}",
            spec.local_addrs.len(),
            r.join(", ")
        ),
        (None, Placement::Appliance) => format!(
            "appliance mode, its {} own addresses with the essentials and the lockout guard only",
            spec.local_addrs.len()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        catalog::Catalog,
        policy::{self, SlotRegistry},
    };

    /// `run --iface` for each of `ifaces` and the flags' defaults.
    fn options(ifaces: &[&str]) -> Options {
        Options {
            ifaces: ifaces.iter().map(|i| i.to_string()).collect(),
            appliance: false,
            roles: Vec::new(),
            profiles: Vec::new(),
            catalog: None,
            edition: Edition::Sfb2015,
            monitor: false,
            xdp_mode: AttachMode::Auto,
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 9477)),
            client_media_ports: None,
            addresses: Vec::new(),
            mgmt: Vec::new(),
            default_mgmt: true,
            drop_echo: false,
            drop_ipsec_on_media: false,
            clean_start: false,
            bpffs: PathBuf::from("/sys/fs/bpf"),
            keep_attached: false,
            allow_loopback: false,
            events_rate: classifier_common::EVENT_RATE_DEFAULT,
            events_pass: false,
            flow_limits: FlowLimits::default(),
            media_check: MediaCheck::default(),
            stun_budget: StunBudget::default(),
        }
    }

    #[test]
    fn the_start_line_names_roles_plainly() {
        let mut spec = PolicySpec {
            default_roles: Some(vec!["front-end".into(), "client".into()]),
            profiles: Vec::new(),
            ..PolicySpec::default()
        };
        assert_eq!(roles_text(&spec), "roles front-end, client");
        spec.default_roles = None;
        assert!(
            roles_text(&spec).starts_with("no default roles"),
            "{}",
            roles_text(&spec)
        );
    }

    #[test]
    fn appliance_legs_are_checked_before_anything_is_touched() {
        assert!(
            options(&["pgx0", "pgx1"]).is_appliance(),
            "two legs are appliance mode"
        );
        assert!(!options(&["pgx0"]).is_appliance(), "one leg is a host");
        let armed = Options {
            appliance: true,
            ..options(&["pgx0"])
        };
        assert!(armed.is_appliance(), "--appliance on one leg");

        let twice = options(&["pgx0", "pgx0"]);
        let e = twice.check(&twice.spec()).expect_err("a leg given twice");
        assert!(
            e.to_string().contains("--iface pgx0 is given twice") && e.exit_code() == 2,
            "{e}"
        );
        let five = options(&["a0", "a1", "a2", "a3", "a4"]);
        let e = five.check(&five.spec()).expect_err("five legs");
        assert!(
            e.to_string().contains("at most 4 interfaces") && e.exit_code() == 2,
            "{e}"
        );
        let bad = options(&["pgx0", "../x"]);
        let e = bad.check(&bad.spec()).expect_err("a path as a leg");
        assert_eq!(e.exit_code(), 2, "{e}");
    }

    #[test]
    fn an_appliance_without_role_is_valid_and_says_what_its_own_addresses_get() {
        let spec = options(&["pgx0", "pgx1"]).spec();
        assert!(spec.placement == Placement::Appliance && spec.default_roles.is_none());
        let text = roles_text(&spec);
        assert!(
            text.contains("essentials and the lockout guard only"),
            "{text}"
        );
        let compiled = policy::resolve(&Catalog::embedded(), &spec)
            .and_then(|r| policy::compile(&r, &mut SlotRegistry::default()))
            .expect("an appliance needs no --role");
        assert_eq!(
            compiled.default_profile,
            classifier_common::PROFILE_NONE,
            "forwarded traffic to no profile has no default"
        );
    }

    #[test]
    fn a_wildcard_metrics_address_is_reported_as_reachable_through_the_interface() {
        let any: SocketAddr = "0.0.0.0:9477".parse().expect("addr");
        let w = metrics_on_protected_iface(any, "eth0").expect("a warning for the wildcard");
        assert!(
            w.contains("--metrics-addr") && w.contains("TCP 9477"),
            "{w}"
        );
        let lo: SocketAddr = "127.0.0.1:9477".parse().expect("addr");
        assert_eq!(metrics_on_protected_iface(lo, "pg-no-such-if0"), None);
    }
}
