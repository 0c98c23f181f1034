//! The links that attach the programs to a leg, pinned or held, and what a
//! previous run left pinned.

use std::{
    fs,
    path::{Path, PathBuf},
};

use aya::programs::{
    links::{FdLink, PinnedLink},
    xdp::XdpLink,
};

use super::RunError;
use crate::loader::{self, LoadError};

/// A link that attaches one of portguard's programs: pinned under the pin
/// directory (it outlives the process with --keep-attached or a crash) or
/// held by the process only (no bpffs).
pub(super) enum LinkHold {
    Pinned(PinnedLink),
    Xdp(XdpLink),
    Fd(FdLink),
}

impl LinkHold {
    /// Wraps a fresh XDP link for keeping: pinned as `pin` when there is a
    /// pin directory.
    pub(super) fn xdp(pin_dir: Option<&Path>, pin: &str, link: XdpLink) -> Result<Self, LoadError> {
        match pin_dir {
            Some(dir) => {
                let fd = FdLink::try_from(link).map_err(LoadError::Link)?;
                Ok(LinkHold::Pinned(loader::pin_link(dir, pin, fd)?))
            }
            None => Ok(LinkHold::Xdp(link)),
        }
    }

    /// Wraps a TC link for keeping: pinned as `pin` when there is a pin
    /// directory.
    pub(super) fn tc(pin_dir: Option<&Path>, pin: &str, link: FdLink) -> Result<Self, LoadError> {
        match pin_dir {
            Some(dir) => Ok(LinkHold::Pinned(loader::pin_link(dir, pin, link)?)),
            None => Ok(LinkHold::Fd(link)),
        }
    }

    /// Detaches: the pin goes, then the last descriptor.
    fn release(self) {
        match self {
            LinkHold::Pinned(p) => match p.unpin() {
                Ok(fd) => drop(fd),
                Err(e) => log::warn!("unpinning a link: {e}"),
            },
            LinkHold::Xdp(l) => drop(l),
            LinkHold::Fd(l) => drop(l),
        }
    }
}

/// The XDP and TC links in force on a leg.
#[derive(Default)]
pub(super) struct Links {
    pub(super) xdp: Option<LinkHold>,
    pub(super) tc: Option<LinkHold>,
}

impl Links {
    /// Lets go of the links: detaching the programs, or with `keep` only
    /// closing this process's descriptors, so that pinned links stay
    /// attached for the next run.
    pub(super) fn release(self, keep: bool) {
        for l in [self.xdp, self.tc].into_iter().flatten() {
            if keep {
                drop(l);
            } else {
                l.release();
            }
        }
    }
}

/// One interface the instance guards.
pub(crate) struct Leg {
    pub(super) name: String,
    /// Its index in `--iface` order: the set of counters it uses.
    pub(super) index: u32,
    /// The interface's index while attached, 0 while detached (and, at
    /// start, the index it is about to be attached to).
    pub(super) ifindex: u32,
    pub(super) links: Links,
    pub(super) xdp_mode: &'static str,
    /// The last re-attach failure logged, so a retry every second does not
    /// repeat it.
    pub(super) attach_error: Option<String>,
}

impl Leg {
    /// Leg `index` on interface `name` (index `ifindex`), not attached yet.
    pub(super) fn new(name: &str, index: u32, ifindex: u32) -> Leg {
        Leg {
            name: name.to_string(),
            index,
            ifindex,
            links: Links::default(),
            xdp_mode: "native",
            attach_error: None,
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// `native` or `generic`: how the XDP program is attached.
    pub(crate) fn xdp_mode(&self) -> &'static str {
        self.xdp_mode
    }

    pub(crate) fn attached(&self) -> bool {
        self.links.xdp.is_some()
    }

    pub(super) fn xdp_pin(&self) -> String {
        loader::link_pin_name(loader::XDP_LINK_PIN, self.index, &self.name)
    }

    pub(super) fn tc_pin(&self) -> String {
        loader::link_pin_name(loader::TC_LINK_PIN, self.index, &self.name)
    }
}

/// A link a previous run left pinned, if it is still attached to the
/// interface as it is now; a defunct one (its interface was deleted) is
/// unpinned so that a fresh attach replaces it.
pub(super) fn live_pinned_link(
    pin_dir: Option<&Path>,
    name: &str,
    ifindex: u32,
) -> Result<Option<FdLink>, RunError> {
    let Some(pin_dir) = pin_dir else {
        return Ok(None);
    };
    let path = pin_dir.join(name);
    if !path.exists() {
        return Ok(None);
    }
    match loader::pinned_link_ifindex(&path) {
        Ok(i) if i == ifindex => Ok(loader::pinned_link(pin_dir, name)?),
        Ok(i) => {
            log::warn!(
                "{}: the link a previous run left is on ifindex {i}, not on the interface's {ifindex} (it was deleted and re-created): attaching afresh",
                path.display()
            );
            fs::remove_file(&path)
                .map_err(|e| RunError::Runtime(format!("removing {}: {e}", path.display())))?;
            Ok(None)
        }
        Err(e) => Err(RunError::Runtime(format!(
            "reading {}: {e}",
            path.display()
        ))),
    }
}

/// Removes the pins (and the directory) a start created if it fails before
/// every leg is attached; pins a previous run left (and the program they
/// keep attached) are never touched.
pub(super) struct PinCleanup {
    pub(super) dir: PathBuf,
    pub(super) armed: bool,
}

impl Drop for PinCleanup {
    fn drop(&mut self) {
        if self.armed {
            loader::remove_pins(&self.dir);
        }
    }
}
