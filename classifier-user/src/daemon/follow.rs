//! Following the kernel: a leg's interface that goes away and comes back
//! (the same program attached again, counters kept), and in appliance mode
//! the box's own addresses and the routes to the profiles (a change is a
//! policy swap, like a reload).

use super::{Daemon, options::own_addresses, profile_legs};
use crate::{iface, policy::Placement};

impl Daemon {
    /// Brings the attachment in line with the interfaces: called on every
    /// link event and once a second. The kernel's interface table is the
    /// truth; the events only make the check prompt.
    pub(super) fn follow_interface(&mut self) {
        let mut changed = false;
        for i in 0..self.legs.len() {
            changed |= self.follow_leg(i);
        }
        if changed {
            if let Err(e) = self.publish_legs() {
                log::error!(
                    "writing the legs' interface indexes: {e}; counters may be labelled with the wrong leg"
                );
            }
            self.save_state();
        }
        self.follow_addresses();
        self.follow_routes();
    }

    /// Follows one leg; true when its attachment changed.
    fn follow_leg(&mut self, i: usize) -> bool {
        let (name, attached, was) = {
            let l = &self.legs[i];
            (l.name.clone(), l.attached(), l.ifindex)
        };
        let now = iface::index(&name);
        if attached && now == was {
            return false;
        }
        if attached {
            log::error!(
                "{name} (ifindex {was}) went away: nothing is attached there and portguard_xdp_attached{{iface=\"{name}\"}} is 0 until an interface named {name} exists again"
            );
            // The links point at a deleted device: drop them and their pins
            // so that no later start tries to update a defunct link.
            self.release_leg(i, false);
        }
        if now == 0 {
            return attached;
        }
        match self.attach_leg(i, now) {
            Ok(()) => {
                self.legs[i].attach_error = None;
                log::info!(
                    "{name} is back (ifindex {now}): catalog generation {} attached again ({} XDP), counters kept",
                    self.catalog_generation,
                    self.legs[i].xdp_mode
                );
                true
            }
            Err(e) => {
                let msg = e.to_string();
                let leg = &mut self.legs[i];
                if leg.attach_error.as_deref() != Some(msg.as_str()) {
                    log::error!(
                        "re-attaching to {name} (ifindex {now}) failed, retrying every second: {msg}"
                    );
                    leg.attach_error = Some(msg);
                }
                attached
            }
        }
    }

    /// Appliance mode: brings the box's own addresses (what its --role rows
    /// and the lockout guard cover) in line with the kernel's. Called on
    /// every netlink event and once a second; a change is a policy swap like
    /// a reload, from the catalog in force.
    fn follow_addresses(&mut self) {
        if self.spec.placement != Placement::Appliance {
            return;
        }
        let now = own_addresses();
        if now == self.spec.local_addrs {
            return;
        }
        let before = std::mem::replace(&mut self.spec.local_addrs, now);
        match self.install(self.catalog.clone()) {
            Ok(g) => {
                log::info!(
                    "the box's own addresses changed ({} now): catalog generation {g} in force",
                    self.spec.local_addrs.len()
                );
                self.save_state();
            }
            Err(e) => {
                log::error!("the box's own addresses changed but the policy could not follow: {e}");
                self.spec.local_addrs = before;
            }
        }
    }

    /// Appliance mode: brings the leg each `--profile` prefix sits behind
    /// (where its outbound rows apply) in line with the kernel's routes.
    /// Called with `follow_interface`; a change is a policy swap like a
    /// reload.
    fn follow_routes(&mut self) {
        if self.spec.placement != Placement::Appliance {
            return;
        }
        let ifindexes: Vec<u32> = self.legs.iter().map(|l| l.ifindex).collect();
        let now = profile_legs(&self.spec, &ifindexes);
        if now == self.spec.profile_legs {
            return;
        }
        let before = std::mem::replace(&mut self.spec.profile_legs, now);
        match self.install(self.catalog.clone()) {
            Ok(g) => {
                log::info!(
                    "the routes to the profiles changed ({}): catalog generation {g} in force",
                    self.legs_text()
                );
                self.save_state();
            }
            Err(e) => {
                log::error!(
                    "the routes to the profiles changed but the policy could not follow: {e}"
                );
                self.spec.profile_legs = before;
            }
        }
    }

    /// `PREFIX -> LEG` for every profile prefix, for the log.
    fn legs_text(&self) -> String {
        let text: Vec<String> = self
            .spec
            .profiles
            .iter()
            .map(|p| match self.spec.profile_legs.get(&p.prefix) {
                Some(&leg) => format!(
                    "{} behind {}",
                    p.prefix,
                    self.legs.get(leg as usize).map_or("?", |l| l.name.as_str())
                ),
                None => format!("{} behind no leg", p.prefix),
            })
            .collect();
        text.join(", ")
    }
}
