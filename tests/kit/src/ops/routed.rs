//! An appliance between two networks, for the operations tests that run
//! portguard on both legs of a router with real forwarded traffic: an
//! internet namespace, the appliance (IP forwarding on) and a DMZ
//! namespace, each side a /24 and a /64 of the test ranges.
//!
//! Names come from a tag: namespaces `TAG-i`, `TAG-a`, `TAG-d`; the
//! appliance's legs `TAGx` (internet) and `TAGd` (DMZ), their peers `TAGi`
//! and `TAGe`. The internet side is 198.18.`internet`.0/24 and
//! 2001:db8:`internet`::/64, the DMZ 198.18.`dmz`.0/24 and 2001:db8:`dmz`::/64;
//! the appliance is .254 and ::fe on both, the DMZ's one host .10 and ::10.

use std::{path::Path, time::Duration};

use super::{Daemon, Scrape, http_get, ok_any, pin_dir, poll};
use crate::netns::{NetNs, addr, in_netns, veth_pair};

/// internet (hosts) -- `ext` | appliance | `dmz` -- dmz (one host).
pub struct Routed {
    pub internet: NetNs,
    pub appliance: NetNs,
    pub dmz: NetNs,
    /// The appliance's internet leg, and its peer in the internet namespace.
    pub ext: String,
    pub ext_peer: String,
    /// The appliance's DMZ leg, and its peer in the DMZ namespace.
    pub dmz_if: String,
    pub dmz_peer: String,
    dmz_net: u8,
}

impl Routed {
    /// The three namespaces, linked and routed; `hosts` are the last bytes
    /// of the internet side's addresses (each as IPv4 .N and IPv6 ::N).
    pub fn new(tag: &str, internet_net: u8, dmz_net: u8, hosts: &[u8]) -> Routed {
        let r = Routed {
            internet: ok_any("internet namespace", NetNs::new(&format!("{tag}-i"))),
            appliance: ok_any("appliance namespace", NetNs::new(&format!("{tag}-a"))),
            dmz: ok_any("dmz namespace", NetNs::new(&format!("{tag}-d"))),
            ext: format!("{tag}x"),
            ext_peer: format!("{tag}i"),
            dmz_if: format!("{tag}d"),
            dmz_peer: format!("{tag}e"),
            dmz_net,
        };
        for leg in [&r.ext, &r.dmz_if] {
            let _ = std::fs::remove_dir_all(pin_dir(leg));
            for ext in ["json", "sock", "lock"] {
                let _ = std::fs::remove_file(format!("/run/portguard/{leg}.{ext}"));
            }
        }
        ok_any(
            "internet leg",
            veth_pair(&r.internet, &r.ext_peer, &r.appliance, &r.ext),
        );
        let mut cidrs: Vec<(&NetNs, &str, String)> = Vec::new();
        for h in hosts {
            cidrs.push((
                &r.internet,
                &r.ext_peer,
                format!("198.18.{internet_net}.{h}/24"),
            ));
            cidrs.push((
                &r.internet,
                &r.ext_peer,
                format!("2001:db8:{internet_net}::{h:x}/64"),
            ));
        }
        cidrs.push((
            &r.appliance,
            &r.ext,
            format!("198.18.{internet_net}.254/24"),
        ));
        cidrs.push((
            &r.appliance,
            &r.ext,
            format!("2001:db8:{internet_net}::fe/64"),
        ));
        for (ns, ifname, cidr) in &cidrs {
            ok_any(cidr, addr(ns, ifname, cidr));
        }
        let (via4, via6) = (
            format!("198.18.{internet_net}.254"),
            format!("2001:db8:{internet_net}::fe"),
        );
        let (dmz4, dmz6) = (
            format!("198.18.{dmz_net}.0/24"),
            format!("2001:db8:{dmz_net}::/64"),
        );
        for args in [
            &["route", "add", &dmz4, "via", &via4][..],
            &["-6", "route", "add", &dmz6, "via", &via6],
        ] {
            ok_any("route", r.internet.ip(args));
        }
        r.link_dmz();
        for key in ["net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"] {
            ok_any(
                key,
                in_netns(&r.appliance, || {
                    std::fs::write(Path::new("/proc/sys").join(key), "1")
                }),
            )
            .unwrap_or_else(|e| panic!("{key}: {e}"));
        }
        r
    }

    /// The DMZ leg, its addresses and the DMZ's routes: at start, and again
    /// after a test deleted it under a running daemon.
    pub fn link_dmz(&self) {
        let n = self.dmz_net;
        ok_any(
            "dmz leg",
            veth_pair(&self.dmz, &self.dmz_peer, &self.appliance, &self.dmz_if),
        );
        for cidr in [format!("198.18.{n}.254/24"), format!("2001:db8:{n}::fe/64")] {
            ok_any(&cidr, addr(&self.appliance, &self.dmz_if, &cidr));
        }
        for cidr in [format!("198.18.{n}.10/24"), format!("2001:db8:{n}::10/64")] {
            ok_any(&cidr, addr(&self.dmz, &self.dmz_peer, &cidr));
        }
        let (via4, via6) = (format!("198.18.{n}.254"), format!("2001:db8:{n}::fe"));
        for args in [
            &["route", "add", "default", "via", &via4][..],
            &["-6", "route", "add", "default", "via", &via6],
        ] {
            ok_any("route", self.dmz.ip(args));
        }
        // IPv6 duplicate address detection would hold the addresses back.
        std::thread::sleep(Duration::from_secs(2));
    }

    /// Whether the appliance's `ifname` carries an XDP program.
    pub fn xdp_on(&self, ifname: &str) -> bool {
        ok_any(
            "ip link show",
            self.appliance.ip(&["link", "show", "dev", ifname]),
        )
        .contains("prog/xdp")
    }

    /// `portguard` with `args` in the appliance, once it serves metrics and
    /// both legs carry its program (a panic with its log otherwise).
    pub fn start(&self, args: &[&str], dir: &Path, name: &str) -> Daemon {
        let d = Daemon::spawn(&self.appliance, args, dir, name);
        let up = poll(Duration::from_secs(20), || {
            let log = std::fs::read_to_string(&d.stderr).unwrap_or_default();
            (log.contains("metrics on http://")
                && self.xdp_on(&self.ext)
                && self.xdp_on(&self.dmz_if))
            .then_some(())
        });
        assert!(
            up.is_some(),
            "the appliance did not come up on both legs:\n{}",
            d.log()
        );
        d
    }

    /// The metrics at `addr`, read from inside the appliance.
    pub fn scrape(&self, addr: &str) -> Scrape {
        let body = ok_any(
            "scrape",
            in_netns(&self.appliance, || http_get(addr, "/metrics")),
        )
        .unwrap_or_else(|e| panic!("GET /metrics: {e}"));
        Scrape::parse(&body)
    }
}
