//! Loading the eBPF object, writing a policy into its maps, attaching.

mod peers;
#[cfg(feature = "test-hooks")]
mod test_hooks;

use std::{
    collections::BTreeSet,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, LpmTrie, MapData, PerCpuArray, lpm_trie::Key},
    programs::{
        ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, LinkError, PinnedLink},
        tc,
        xdp::XdpLink,
    },
};
use classifier_common::{
    BLOCKS_PER_PROTO, COUNTER_MAP_ENTRIES, Config, Counter, DIRECTIONS, EventBudget, EventConfig,
    FLAG_APPLIANCE, FLAG_EVENTS, FLAG_EVENTS_PASS, FLOW_ENTRIES, FLOW_NEW_ENTRIES,
    FLOW_SHARE_DEFAULT, FRAGMENT_ENTRIES, FRAGMENT_SHARE_DEFAULT, GenConfig, MAX_LEGS,
    MEDIA_PROGRAM, MgmtPorts, PROFILE_NONE, PROTO_COUNT, PortBlock, ProfileSel, TC_EGRESS_PROGRAM,
    XDP_PROGRAM, fast_block_base, map_names, media, next_sel_epoch, port_block_index,
};

use crate::{
    ebpf_object,
    policy::{CompiledPolicy, Prefix},
};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("the eBPF object has no {0}")]
    Missing(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: ProgramError,
    },
    #[error("link: {0}")]
    Link(#[from] LinkError),
    #[error("pinning under {path}: {source}")]
    Pin { path: PathBuf, source: io::Error },
    #[error(
        "{iface} already has an XDP program that portguard did not attach; remove it first (`ip link set dev {iface} xdp off`)"
    )]
    Busy { iface: String },
    #[error("reading the eBPF object: {0}")]
    Object(String),
    #[error("no interface named {0}")]
    NoInterface(String),
    #[error(
        "{0} needs privileges to load BPF programs (run as root, or with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON)"
    )]
    Permission(String),
}

/// The flags an install keeps: the event bits belong to the daemon's flags
/// and the trace bit to tests, not to the policy.
const KEPT_FLAGS: u32 = FLAG_EVENTS | FLAG_EVENTS_PASS | TRACE_FLAG;

#[cfg(feature = "test-hooks")]
const TRACE_FLAG: u32 = classifier_common::FLAG_TRACE;
/// Without the test hooks nothing sets the trace bit.
#[cfg(not(feature = "test-hooks"))]
const TRACE_FLAG: u32 = 0;

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> LoadError {
    move |source| LoadError::Map { name, source }
}

fn prog_err(name: &'static str) -> impl FnOnce(ProgramError) -> LoadError {
    move |source| LoadError::Program { name, source }
}

/// How XDP is attached (`run --xdp-mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// Native (driver) mode, falling back to generic where the driver lacks it.
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (SKB) mode.
    Generic,
}

/// Sizes of the flow and fragment tables and the per-source shares of
/// them (`run --flows`, `--flows-unconfirmed`, `--fragments`,
/// `--flow-share`). Sizes are fixed when the maps are made; a restart with
/// other sizes makes those tables afresh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowLimits {
    /// Confirmed flows (`FLOWS`).
    pub flows: u32,
    /// Unconfirmed flows (`FLOWS_NEW`).
    pub flows_unconfirmed: u32,
    pub fragments: u32,
    /// New unconfirmed flows per source prefix per window (0: no limit).
    pub flow_share: u32,
    /// First fragments remembered per source prefix per window.
    pub fragment_share: u32,
}

impl Default for FlowLimits {
    fn default() -> Self {
        FlowLimits {
            flows: FLOW_ENTRIES,
            flows_unconfirmed: FLOW_NEW_ENTRIES,
            fragments: FRAGMENT_ENTRIES,
            flow_share: FLOW_SHARE_DEFAULT,
            fragment_share: FRAGMENT_SHARE_DEFAULT,
        }
    }
}

impl FlowLimits {
    /// The map sizes that differ from the object's own.
    fn sizes(&self) -> [(&'static str, u32); 3] {
        [
            (map_names::FLOWS, self.flows),
            (map_names::FLOWS_NEW, self.flows_unconfirmed),
            (map_names::FRAGMENTS, self.fragments),
        ]
    }

    /// The size this build gives map `name`, or `default`.
    fn size_of(&self, name: &str, default: u32) -> u32 {
        self.sizes()
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(default, |(_, size)| *size)
    }
}

/// The loaded classifier: programs verified, maps created (or reused from pins).
pub struct Classifier {
    ebpf: Ebpf,
    /// What this process last wrote into each (profile, generation,
    /// direction) port table. A reload then writes only the entries that
    /// differ; a table this process never wrote (fresh start, reused pins) is
    /// written whole.
    written: std::collections::HashMap<(u32, u32, u32), Vec<PortBlock>>,
}

impl Classifier {
    /// Loads the embedded object. With `pin_dir`, every map is reused from (or
    /// pinned to) that directory, so a restarted daemon finds its policy and
    /// counters where the last one left them.
    pub fn load(pin_dir: Option<&Path>) -> Result<Self, LoadError> {
        Self::load_with(pin_dir, &FlowLimits::default())
    }

    /// As [`Classifier::load`], with the flow tables sized and shared as
    /// `limits` says.
    pub fn load_with(pin_dir: Option<&Path>, limits: &FlowLimits) -> Result<Self, LoadError> {
        let mut c = Self::load_object(ebpf_object::PORTGUARD, pin_dir, limits)?;
        let mut config = c.config()?;
        config.flow_share = limits.flow_share;
        config.fragment_share = limits.fragment_share;
        c.set_config(&config)?;
        Ok(c)
    }

    /// Loads `object` (the embedded one, or for the benchmark's A/B runs
    /// another build of it) as [`Classifier::load_with`] does, without
    /// setting the flow shares.
    pub fn load_object(
        object: &[u8],
        pin_dir: Option<&Path>,
        limits: &FlowLimits,
    ) -> Result<Self, LoadError> {
        if let Some(dir) = pin_dir {
            drop_incompatible_pins(object, dir, limits)?;
        }
        let mut loader = EbpfLoader::new();
        for (name, size) in limits.sizes() {
            loader.map_max_entries(name, size);
        }
        let paths: Vec<(&'static str, PathBuf)> = match pin_dir {
            Some(dir) => map_names::ALL.iter().map(|n| (*n, dir.join(n))).collect(),
            None => Vec::new(),
        };
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(object).map_err(|e| match &e {
            aya::EbpfError::MapError(aya::maps::MapError::CreateError { io_error, .. })
                if io_error.kind() == io::ErrorKind::PermissionDenied =>
            {
                LoadError::Permission("loading portguard".into())
            }
            _ => LoadError::Load(e),
        })?;
        let xdp: &mut Xdp = ebpf
            .program_mut(XDP_PROGRAM)
            .ok_or(LoadError::Missing("XDP program"))?
            .try_into()
            .map_err(prog_err("portguard"))?;
        verify_retrying(|| xdp.load()).map_err(|e| permission_or(e, "portguard"))?;
        if let Some(p) = ebpf.program_mut(TC_EGRESS_PROGRAM) {
            let tc: &mut SchedClassifier = p.try_into().map_err(prog_err("portguard_egress"))?;
            verify_retrying(|| tc.load()).map_err(|e| permission_or(e, "portguard_egress"))?;
        }
        // The media program, in the array the XDP program tail-calls,
        // before any policy can name a media rule.
        if let Some(p) = ebpf.program_mut(MEDIA_PROGRAM) {
            let media: &mut Xdp = p.try_into().map_err(prog_err("portguard_media"))?;
            media
                .load()
                .map_err(|e| permission_or(e, "portguard_media"))?;
            let fd = media
                .fd()
                .map_err(prog_err("portguard_media"))?
                .try_clone()
                .map_err(|e| LoadError::Object(format!("portguard_media: {e}")))?;
            let map = ebpf
                .map_mut(map_names::MEDIA_PROG)
                .ok_or(LoadError::Missing(map_names::MEDIA_PROG))?;
            let mut array =
                aya::maps::ProgramArray::try_from(map).map_err(map_err(map_names::MEDIA_PROG))?;
            array
                .set(0, &fd, 0)
                .map_err(map_err(map_names::MEDIA_PROG))?;
        }
        Ok(Classifier {
            ebpf,
            written: std::collections::HashMap::new(),
        })
    }

    /// The reader of the eBPF side's log ring (rare, rate-limited anomaly
    /// lines, named on their way to the daemon's log). Taken once; the
    /// daemon polls it.
    pub(crate) fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        let lines: &'static dyn log::Log = &crate::events::anomaly::ANOMALY_LINES;
        match aya_log::EbpfLogger::init_with_logger(&mut self.ebpf, lines) {
            Ok(l) => Some(l),
            Err(e) => {
                log::warn!("eBPF log ring unavailable: {e}");
                None
            }
        }
    }

    pub(crate) fn xdp(&mut self) -> Result<&mut Xdp, LoadError> {
        self.ebpf
            .program_mut(XDP_PROGRAM)
            .ok_or(LoadError::Missing("XDP program"))?
            .try_into()
            .map_err(prog_err("portguard"))
    }

    fn tc(&mut self) -> Result<&mut SchedClassifier, LoadError> {
        self.ebpf
            .program_mut(TC_EGRESS_PROGRAM)
            .ok_or(LoadError::Missing("TC program"))?
            .try_into()
            .map_err(prog_err("portguard_egress"))
    }

    fn array<T: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<Array<&mut MapData, T>, LoadError> {
        let map = self.ebpf.map_mut(name).ok_or(LoadError::Missing(name))?;
        Array::try_from(map).map_err(map_err(name))
    }

    pub(crate) fn config(&mut self) -> Result<Config, LoadError> {
        self.array::<Config>(map_names::CONFIG)?
            .get(&0, 0)
            .map_err(map_err(map_names::CONFIG))
    }

    fn set_config(&mut self, config: &Config) -> Result<(), LoadError> {
        self.array::<Config>(map_names::CONFIG)?
            .set(0, config, 0)
            .map_err(map_err(map_names::CONFIG))
    }

    /// Each media rule's index, by rule slot. A slot keeps its index for
    /// the life of the registry, so both generations read the same entries.
    fn write_media_index(&mut self, policy: &CompiledPolicy) -> Result<(), LoadError> {
        let mut map = self.array::<u32>(map_names::MEDIA_INDEX)?;
        for &(slot, index) in &policy.media_index {
            map.set(u32::from(slot), index + 1, 0)
                .map_err(map_err(map_names::MEDIA_INDEX))?;
        }
        Ok(())
    }

    /// Generation `generation`'s bitmap of the catalog's reflection ports
    /// (the one the packet path does not read yet).
    fn write_reflection_ports(
        &mut self,
        policy: &CompiledPolicy,
        generation: u32,
    ) -> Result<(), LoadError> {
        let mut words = vec![0u64; media::REFLECTION_ENTRIES_PER_GEN as usize];
        for &port in &policy.reflection_ports {
            let (index, bit) = media::reflection_index(0, port);
            words[index as usize] |= bit;
        }
        let mut map = self.array::<u64>(map_names::REFLECTION_PORTS)?;
        let base = generation * media::REFLECTION_ENTRIES_PER_GEN;
        for (i, word) in words.into_iter().enumerate() {
            map.set(base + i as u32, word, 0)
                .map_err(map_err(map_names::REFLECTION_PORTS))?;
        }
        Ok(())
    }

    /// Writes `policy` into the generation the packet path does not read, then
    /// flips to it. The packet path sees the old policy or the new one, never
    /// a mixture. Returns the generation now in force.
    pub fn install(
        &mut self,
        policy: &CompiledPolicy,
        catalog_generation: u32,
    ) -> Result<u32, LoadError> {
        let mut config = self.config()?;
        let active = config.generation & 1;
        let next = active ^ 1;

        let mut written = std::mem::take(&mut self.written);
        let mut blocks = self.array::<PortBlock>(map_names::PORT_BLOCKS)?;
        for (profile, compiled) in policy.profiles.iter().enumerate() {
            for direction in 0..DIRECTIONS {
                let key = (profile as u32, next, direction);
                let wanted = compiled.blocks_for(direction);
                let previous = written.remove(&key);
                for proto in 0..PROTO_COUNT {
                    let base = port_block_index(profile as u32, next, direction, proto, 0);
                    for b in 0..BLOCKS_PER_PROTO {
                        let i = (proto * BLOCKS_PER_PROTO + b) as usize;
                        let value = wanted[i];
                        if previous.as_ref().is_some_and(|p| p[i] == value) {
                            continue;
                        }
                        blocks
                            .set(base + b, value, 0)
                            .map_err(map_err(map_names::PORT_BLOCKS))?;
                    }
                }
                written.insert(key, wanted.to_vec());
            }
        }
        self.written = written;

        self.write_profiles(policy, active, next)?;
        self.write_mgmt(policy)?;
        self.write_reflection_ports(policy, next)?;
        self.write_media_index(policy)?;
        self.write_peers(policy, next)?;

        config.flags = policy.flags | (config.flags & KEPT_FLAGS);
        config.gens[next as usize] = GenConfig {
            default_profile: policy.default_profile,
            media_profiles: policy.media_profiles,
            catalog_generation,
            has_prefixes: u32::from(!policy.prefixes.is_empty()),
            outbound_profiles: policy.outbound_profiles,
            sel_epoch: next_sel_epoch(&config.gens),
        };
        config.mgmt_ports = policy.mgmt_ports;
        let stun = policy.stun_budget;
        config.stun_source_cost_us = media::cost_us(stun.source_rate);
        config.stun_source_burst = stun.source_burst.max(1);
        config.stun_net_cost_us = media::cost_us(stun.net_rate);
        config.stun_net_burst = stun.net_burst.max(1);
        // First write the new generation's settings while the old one is in force…
        self.set_config(&config)?;
        // …then the flip: the packet path reads one of these two words once
        // per packet (the fast path's table names its generation itself).
        config.generation = next;
        config.fast_block_base = fast_block_base(
            policy.default_profile,
            next,
            !policy.prefixes.is_empty(),
            policy.flags & FLAG_APPLIANCE != 0,
        );
        self.set_config(&config)?;
        self.prune_profiles(policy)?;
        Ok(next)
    }

    fn profiles(&mut self) -> Result<LpmTrie<&mut MapData, [u8; 16], ProfileSel>, LoadError> {
        let map = self
            .ebpf
            .map_mut(map_names::PROFILES)
            .ok_or(LoadError::Missing("PROFILES"))?;
        LpmTrie::try_from(map).map_err(map_err(map_names::PROFILES))
    }

    /// For every prefix in the union of old and new, store what each
    /// generation resolves it to: then the longest match of any address gives
    /// the right profile in either generation.
    fn write_profiles(
        &mut self,
        policy: &CompiledPolicy,
        active: u32,
        next: u32,
    ) -> Result<(), LoadError> {
        let mut trie = self.profiles()?;
        let mut existing: Vec<(Prefix, ProfileSel)> = Vec::new();
        for item in trie.iter() {
            let (key, sel) = item.map_err(map_err(map_names::PROFILES))?;
            existing.push((
                Prefix {
                    addr: key.data(),
                    len: key.prefix_len() as u8,
                },
                sel,
            ));
        }
        // (profile, leg + 1) of the longest prefix holding `p` that has a
        // profile in the generation in force…
        let resolve_old = |p: &Prefix| -> (u32, u32) {
            existing
                .iter()
                .filter(|(q, sel)| {
                    q.contains(p) && sel.by_generation[active as usize] != PROFILE_NONE
                })
                .max_by_key(|(q, _)| q.len)
                .map_or((PROFILE_NONE, 0), |(_, sel)| {
                    (
                        sel.by_generation[active as usize],
                        sel.leg_by_generation[active as usize],
                    )
                })
        };
        // …and in the new one.
        let resolve_new = |p: &Prefix| -> (u32, u32) {
            policy
                .prefixes
                .iter()
                .filter(|(q, _)| q.contains(p))
                .max_by_key(|(q, _)| q.len)
                .map_or((PROFILE_NONE, 0), |(q, profile)| {
                    (*profile, policy.prefix_legs.get(q).map_or(0, |l| l + 1))
                })
        };
        // Own addresses are host prefixes: an entry is local exactly when it
        // is one of them (the generation not flipped to keeps what it had).
        let local_old = |p: &Prefix| -> u32 {
            existing
                .iter()
                .find(|(q, _)| q == p)
                .map_or(0, |(_, sel)| sel.local_by_generation[active as usize])
        };
        let union: BTreeSet<Prefix> = existing
            .iter()
            .map(|(p, _)| *p)
            .chain(policy.prefixes.iter().map(|(p, _)| *p))
            .collect();
        for p in union {
            let mut sel = ProfileSel::default();
            (
                sel.by_generation[active as usize],
                sel.leg_by_generation[active as usize],
            ) = resolve_old(&p);
            (
                sel.by_generation[next as usize],
                sel.leg_by_generation[next as usize],
            ) = resolve_new(&p);
            sel.local_by_generation[active as usize] = local_old(&p);
            sel.local_by_generation[next as usize] = u32::from(policy.local.contains(&p));
            trie.insert(&Key::new(u32::from(p.len), p.addr), sel, 0)
                .map_err(map_err(map_names::PROFILES))?;
        }
        Ok(())
    }

    /// After the flip, prefixes only the old generation had are dead weight.
    fn prune_profiles(&mut self, policy: &CompiledPolicy) -> Result<(), LoadError> {
        let mut trie = self.profiles()?;
        let keys: Vec<Key<[u8; 16]>> = trie.keys().filter_map(Result::ok).collect();
        for key in keys {
            let p = Prefix {
                addr: key.data(),
                len: key.prefix_len() as u8,
            };
            if !policy.prefixes.iter().any(|(q, _)| *q == p) {
                trie.remove(&key).map_err(map_err(map_names::PROFILES))?;
            }
        }
        Ok(())
    }

    /// The management allowance is the same in both generations (it comes
    /// from flags, not the catalog): add the new entries before removing stale
    /// ones so that it never has a hole.
    fn write_mgmt(&mut self, policy: &CompiledPolicy) -> Result<(), LoadError> {
        let map = self
            .ebpf
            .map_mut(map_names::MGMT)
            .ok_or(LoadError::Missing("MGMT"))?;
        let mut trie: LpmTrie<&mut MapData, [u8; 16], MgmtPorts> =
            LpmTrie::try_from(map).map_err(map_err(map_names::MGMT))?;
        for (p, ports) in &policy.mgmt {
            trie.insert(
                &Key::new(u32::from(p.len), p.addr),
                MgmtPorts { ports: *ports },
                0,
            )
            .map_err(map_err(map_names::MGMT))?;
        }
        let keys: Vec<Key<[u8; 16]>> = trie.keys().filter_map(Result::ok).collect();
        for key in keys {
            let keep = policy
                .mgmt
                .iter()
                .any(|(p, _)| u32::from(p.len) == key.prefix_len() && p.addr == key.data());
            if !keep {
                trie.remove(&key).map_err(map_err(map_names::MGMT))?;
            }
        }
        Ok(())
    }

    /// The flow and fragment tables and their counts, for the sweeper and
    /// the metrics.
    pub(crate) fn flow_tables(&self) -> Result<crate::flow_table::FlowTables<'_>, LoadError> {
        use std::os::fd::AsFd as _;
        let data = |name: &'static str| -> Result<&MapData, LoadError> {
            match self.ebpf.map(name).ok_or(LoadError::Missing(name))? {
                aya::maps::Map::HashMap(m)
                | aya::maps::Map::LruHashMap(m)
                | aya::maps::Map::PerCpuArray(m) => Ok(m),
                _ => Err(LoadError::Missing(name)),
            }
        };
        let capacity = |name: &'static str| -> Result<u64, LoadError> {
            let info = data(name)?.info().map_err(map_err(name))?;
            Ok(u64::from(info.max_entries()))
        };
        Ok(crate::flow_table::FlowTables {
            flows: data(map_names::FLOWS)?.fd().as_fd(),
            flows_new: data(map_names::FLOWS_NEW)?.fd().as_fd(),
            fragments: data(map_names::FRAGMENTS)?.fd().as_fd(),
            stats: data(map_names::FLOW_STATS)?.fd().as_fd(),
            capacity: [
                capacity(map_names::FLOWS)?,
                capacity(map_names::FLOWS_NEW)?,
                capacity(map_names::FRAGMENTS)?,
            ],
        })
    }

    /// Turns packet events on (`rate` events per second per CPU, passes too
    /// with `pass`) or off (`rate` 0). The budget is written before the flag
    /// is raised, so the first event already has its cost.
    pub fn set_events(&mut self, rate: u32, pass: bool) -> Result<(), LoadError> {
        let cost_ns = if rate == 0 {
            0
        } else {
            1_000_000_000 / u64::from(rate)
        };
        // A rate above 1e9/s costs nothing: cap at 1 ns so that 0 keeps
        // meaning "off".
        let cost_ns = if rate > 0 { cost_ns.max(1) } else { 0 };
        self.array::<EventConfig>(map_names::EVENT_CONFIG)?
            .set(0, EventConfig { cost_ns }, 0)
            .map_err(map_err(map_names::EVENT_CONFIG))?;
        let mut config = self.config()?;
        config.flags &= !(FLAG_EVENTS | FLAG_EVENTS_PASS);
        if rate > 0 {
            config.flags |= FLAG_EVENTS;
            if pass {
                config.flags |= FLAG_EVENTS_PASS;
            }
        }
        self.set_config(&config)
    }

    /// The events ring buffer, for the daemon's reader (taken once).
    pub fn take_events_ring(&mut self) -> Result<aya::maps::RingBuf<MapData>, LoadError> {
        let map = self
            .ebpf
            .take_map(map_names::EVENTS)
            .ok_or(LoadError::Missing(map_names::EVENTS))?;
        aya::maps::RingBuf::try_from(map).map_err(map_err(map_names::EVENTS))
    }

    /// The per-CPU event budgets, for the suppressed count (taken once).
    pub fn take_event_budget(&mut self) -> Result<PerCpuArray<MapData, EventBudget>, LoadError> {
        let map = self
            .ebpf
            .take_map(map_names::EVENT_BUDGET)
            .ok_or(LoadError::Missing(map_names::EVENT_BUDGET))?;
        PerCpuArray::try_from(map).map_err(map_err(map_names::EVENT_BUDGET))
    }

    /// Tells the packet path which ifindex is which leg (appliance mode);
    /// counters of a packet from an unlisted ifindex go to leg 0.
    pub fn set_legs(&mut self, ifindexes: &[u32]) -> Result<(), LoadError> {
        let mut config = self.config()?;
        config.legs = [0; MAX_LEGS as usize];
        for (slot, i) in config.legs.iter_mut().zip(ifindexes) {
            *slot = *i;
        }
        self.set_config(&config)
    }

    /// Per-CPU counters at `indices`, summed over CPUs.
    pub fn counters(
        &mut self,
        indices: impl IntoIterator<Item = u32>,
    ) -> Result<Vec<(u32, Counter)>, LoadError> {
        let map = self
            .ebpf
            .map_mut(map_names::COUNTERS)
            .ok_or(LoadError::Missing("COUNTERS"))?;
        let counters: PerCpuArray<&mut MapData, Counter> =
            PerCpuArray::try_from(map).map_err(map_err(map_names::COUNTERS))?;
        read_counters(&counters, indices)
    }

    /// Attaches XDP to `iface`. `Auto` tries native first and says so when it
    /// falls back. Returns the mode in force.
    pub(crate) fn attach_xdp(
        &mut self,
        iface: &str,
        mode: AttachMode,
    ) -> Result<(XdpLink, &'static str), LoadError> {
        let xdp = self.xdp()?;
        let attempt = |xdp: &mut Xdp, m: XdpMode| -> Result<XdpLink, LoadError> {
            let id = xdp
                .attach(iface, m)
                .map_err(|e| classify_attach_error(iface, e))?;
            xdp.take_link(id).map_err(prog_err("portguard"))
        };
        match mode {
            AttachMode::Native => Ok((attempt(xdp, XdpMode::Driver)?, "native")),
            AttachMode::Generic => Ok((attempt(xdp, XdpMode::Skb)?, "generic")),
            AttachMode::Auto => match attempt(xdp, XdpMode::Driver) {
                Ok(link) => Ok((link, "native")),
                Err(
                    e @ (LoadError::Busy { .. }
                    | LoadError::NoInterface(_)
                    | LoadError::Permission(_)),
                ) => Err(e),
                Err(e) => {
                    log::warn!(
                        "native XDP is not available on {iface} ({e}); falling back to generic XDP"
                    );
                    Ok((attempt(xdp, XdpMode::Skb)?, "generic"))
                }
            },
        }
    }

    /// Moves an existing (pinned) XDP link onto this program in one step: the
    /// interface is never without a program.
    pub(crate) fn take_over_xdp(&mut self, link: FdLink) -> Result<XdpLink, LoadError> {
        let xdp = self.xdp()?;
        let link = XdpLink::try_from(link).map_err(LoadError::Link)?;
        let id = xdp.attach_to_link(link).map_err(prog_err("portguard"))?;
        xdp.take_link(id).map_err(prog_err("portguard"))
    }

    /// Attaches the egress flow recorder. Returns its link as an fd link
    /// (TCX on kernels >= 6.6) for pinning.
    pub(crate) fn attach_tc(&mut self, iface: &str) -> Result<Option<FdLink>, LoadError> {
        // clsact is only needed on kernels without TCX; an existing one is fine.
        let _ = tc::qdisc_add_clsact(iface);
        let tc = self.tc()?;
        let id = tc
            .attach(iface, TcAttachType::Egress)
            .map_err(prog_err("portguard_egress"))?;
        let link = tc.take_link(id).map_err(prog_err("portguard_egress"))?;
        Ok(FdLink::try_from(link).ok())
    }

    pub(crate) fn take_over_tc(&mut self, link: FdLink) -> Result<FdLink, LoadError> {
        use aya::programs::tc::SchedClassifierLink;
        let tc = self.tc()?;
        let link = SchedClassifierLink::try_from(link).map_err(LoadError::Link)?;
        let id = tc
            .attach_to_link(link)
            .map_err(prog_err("portguard_egress"))?;
        let link = tc.take_link(id).map_err(prog_err("portguard_egress"))?;
        FdLink::try_from(link).map_err(LoadError::Link)
    }
}

/// Map pins that a portguard with another map layout left (an upgrade that
/// changed a map's size) cannot be reused: the verifier would refuse the new
/// program against them. They are unpinned so that fresh maps replace them,
/// all together because the counters, slots and policy belong together. The
/// link pins stay, so the takeover still swaps the programs without a gap;
/// counters restart and the flow table starts empty, which the log says.
fn drop_incompatible_pins(object: &[u8], dir: &Path, limits: &FlowLimits) -> Result<(), LoadError> {
    let obj = aya_obj::Object::parse(object).map_err(|e| LoadError::Object(e.to_string()))?;
    let mut differs = Vec::new();
    for name in map_names::ALL {
        let path = dir.join(name);
        let (Some(def), true) = (obj.maps.get(name), path.exists()) else {
            continue;
        };
        match aya::maps::MapInfo::from_pin(&path) {
            Ok(info)
                if info.key_size() == def.key_size()
                    && info.value_size() == def.value_size()
                    && info.max_entries() == limits.size_of(name, def.max_entries()) => {}
            Ok(info) => differs.push(format!(
                "{name} (key {} value {} entries {}, this build {} {} {})",
                info.key_size(),
                info.value_size(),
                info.max_entries(),
                def.key_size(),
                def.value_size(),
                limits.size_of(name, def.max_entries())
            )),
            Err(e) => differs.push(format!("{name} ({e})")),
        }
    }
    if differs.is_empty() {
        return Ok(());
    }
    log::warn!(
        "{}: maps pinned by a portguard with another layout ({}): replacing them; counters restart from zero and the flow table starts empty (pinned links are still taken over without a gap)",
        dir.display(),
        differs.join(", ")
    );
    for name in map_names::ALL {
        let path = dir.join(name);
        if path.exists() {
            std::fs::remove_file(&path).map_err(|source| LoadError::Pin {
                path: path.clone(),
                source,
            })?;
        }
    }
    Ok(())
}

/// A load refused for want of a capability gets a message naming it, not the
/// verifier's log. The process's own capabilities decide, because a genuine
/// verifier rejection also returns EACCES.
/// Loads a program, again if the verifier gave up with EAGAIN: it stops
/// when a signal is pending for the loading thread (a child's SIGCHLD, a
/// timer), and the load is then simply worth repeating, as libbpf does (five
/// attempts).
fn verify_retrying(mut load: impl FnMut() -> Result<(), ProgramError>) -> Result<(), ProgramError> {
    const ATTEMPTS: u32 = 5;
    let mut attempt = 1;
    loop {
        match load() {
            Err(ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && attempt < ATTEMPTS =>
            {
                log::debug!(
                    "the verifier was interrupted (EAGAIN), attempt {attempt} of {ATTEMPTS}"
                );
                attempt += 1;
            }
            other => return other,
        }
    }
}

fn permission_or(e: ProgramError, name: &'static str) -> LoadError {
    let denied = matches!(&e, ProgramError::LoadError { io_error, .. }
        if matches!(io_error.raw_os_error(), Some(libc::EPERM | libc::EACCES)));
    let effective = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        })
        .unwrap_or(0);
    let missing: Vec<&str> = [(12, "CAP_NET_ADMIN"), (38, "CAP_PERFMON"), (39, "CAP_BPF")]
        .iter()
        .filter(|(bit, _)| effective & (1u64 << bit) == 0)
        .map(|(_, cap)| *cap)
        .collect();
    if denied && !missing.is_empty() {
        LoadError::Permission(format!("loading {name} (missing {})", missing.join(", ")))
    } else {
        LoadError::Program { name, source: e }
    }
}

fn classify_attach_error(iface: &str, e: ProgramError) -> LoadError {
    match &e {
        ProgramError::UnknownInterface { .. } => LoadError::NoInterface(iface.to_string()),
        ProgramError::SyscallError(s)
            if s.io_error.raw_os_error() == Some(libc::EBUSY)
                || s.io_error.raw_os_error() == Some(libc::EEXIST) =>
        {
            LoadError::Busy {
                iface: iface.to_string(),
            }
        }
        ProgramError::SyscallError(s) if s.io_error.kind() == io::ErrorKind::PermissionDenied => {
            LoadError::Permission(format!("attaching to {iface}"))
        }
        _ => LoadError::Program {
            name: "portguard",
            source: e,
        },
    }
}

/// Reads only the entries asked for: a scrape touches the slots in use and
/// the reason counters, not all 16k slots.
pub(crate) fn read_counters<M: std::borrow::Borrow<MapData>>(
    counters: &PerCpuArray<M, Counter>,
    indices: impl IntoIterator<Item = u32>,
) -> Result<Vec<(u32, Counter)>, LoadError> {
    let mut out = Vec::new();
    for i in indices {
        if i >= COUNTER_MAP_ENTRIES {
            continue;
        }
        let per_cpu = counters.get(&i, 0).map_err(map_err(map_names::COUNTERS))?;
        let mut sum = Counter::default();
        for c in per_cpu.iter() {
            sum.packets += c.packets;
            sum.bytes += c.bytes;
        }
        out.push((i, sum));
    }
    Ok(out)
}

/// The pin directory of an interface.
pub fn pin_dir(bpffs: &Path, iface: &str) -> PathBuf {
    bpffs.join("portguard").join(iface)
}

pub(crate) const XDP_LINK_PIN: &str = "xdp_link";
pub(crate) const TC_LINK_PIN: &str = "tc_link";

/// The pin of a leg's link: the first leg's is `base` (as a one-interface
/// instance has always named it), another's `base@IF` (bpffs refuses dots in names).
pub(crate) fn link_pin_name(base: &str, leg: u32, iface: &str) -> String {
    if leg == 0 {
        base.to_string()
    } else {
        format!("{base}@{iface}")
    }
}

/// Opens a pinned link if there is one.
pub(crate) fn pinned_link(dir: &Path, name: &str) -> Result<Option<FdLink>, LoadError> {
    let path = dir.join(name);
    if !path.exists() {
        return Ok(None);
    }
    // Keep the pin file: if this process dies before it pins again, the
    // link (and so the protection) stays.
    Ok(Some(FdLink::from(PinnedLink::from_pin(&path)?)))
}

/// Opens a pinned BPF object (`BPF_OBJ_GET`).
fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    const BPF_OBJ_GET: libc::c_long = 7;
    let c =
        std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // union bpf_attr for BPF_OBJ_GET: pathname, bpf_fd, file_flags, path_fd.
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
    }
    let attr = ObjGet {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
    };
    // SAFETY: the attr outlives the call and its size is passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &attr as *const ObjGet,
            size_of::<ObjGet>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Detaches a link's program now (`BPF_LINK_DETACH`), whoever else holds
/// the link: it stays, defunct, until its last descriptor or pin goes.
fn detach_link(link: &OwnedFd) -> io::Result<()> {
    const BPF_LINK_DETACH: libc::c_long = 34;
    #[repr(C)]
    struct LinkDetach {
        link_fd: u32,
    }
    let attr = LinkDetach {
        link_fd: link.as_raw_fd() as u32,
    };
    // SAFETY: the attr outlives the call and its size is passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_DETACH,
            &attr as *const LinkDetach,
            size_of::<LinkDetach>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The interface index a pinned XDP or TCX link is attached to, asked of the
/// kernel (`BPF_OBJ_GET` + `BPF_OBJ_GET_INFO_BY_FD`). 0 means the link is
/// defunct: its interface was deleted, and `bpf_link_update` on it fails.
pub(crate) fn pinned_link_ifindex(path: &Path) -> io::Result<u32> {
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    let fd = obj_get(path)?;
    // struct bpf_link_info: type, id, prog_id, then an 8-aligned union whose
    // xdp and tcx members start with the ifindex.
    let mut info = [0u64; 16];
    #[repr(C)]
    struct InfoByFd {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let attr = InfoByFd {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: size_of_val(&info) as u32,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: `info` is writable for `info_len` bytes and outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &attr as *const InfoByFd,
            size_of::<InfoByFd>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((info[2] & 0xffff_ffff) as u32)
}

/// Pins a link, replacing a stale pin of the same name.
pub(crate) fn pin_link(dir: &Path, name: &str, link: FdLink) -> Result<PinnedLink, LoadError> {
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    link.pin(&path).map_err(|e| LoadError::Pin {
        path,
        source: io::Error::other(e.to_string()),
    })
}

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Makes sure `dir` is a bpffs. `ip netns exec` remounts /sys and hides the
/// host's bpffs, so inside it a fresh one is mounted on the existing
/// directory. A directory that does not exist is an error (`NotFound`): a
/// typo in `--bpffs` must not leave a new directory and a mount behind.
pub fn ensure_bpffs(dir: &Path) -> io::Result<()> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // SAFETY: statfs writes into the zeroed struct we own; `c` is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0 && st.f_type as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    if !dir.is_dir() {
        return Err(io::Error::new(io::ErrorKind::NotFound, "no such directory"));
    }
    let fstype = c"bpf";
    // SAFETY: all pointers are valid NUL-terminated strings; data is null.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            c.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The link pins in an interface's pin directory: `xdp_link`, `tc_link`
/// and an appliance's other legs' (`xdp_link@IF`, `tc_link@IF`).
fn link_pins(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            [XDP_LINK_PIN, TC_LINK_PIN]
                .iter()
                .any(|base| *name == **base || name.starts_with(&format!("{base}@")))
        })
        .map(|e| e.path())
        .collect()
}

/// Removes the pins of an interface: maps, links and the directory. The
/// programs the link pins attach are detached before this returns.
pub fn remove_pins(dir: &Path) {
    // A removed pin lets go of its link only after an RCU grace period and
    // a work queue: the program would stay attached a moment longer (a
    // `detach` that returned, a fresh attach refused as busy).
    let links = link_pins(dir);
    for path in &links {
        if let Err(e) = obj_get(path).and_then(|fd| detach_link(&fd)) {
            log::debug!("{}: detaching: {e}", path.display());
        }
    }
    for name in map_names::ALL {
        let _ = std::fs::remove_file(dir.join(name));
    }
    // Nothing else that may be in the directory is ours to remove.
    for path in &links {
        let _ = std::fs::remove_file(path);
    }
    let _ = std::fs::remove_dir(dir);
    // The shared parent goes too once no interface is left in it.
    if let Some(parent) = dir.parent() {
        let _ = std::fs::remove_dir(parent);
    }
}

/// A warning when the NIC strips VLAN tags before XDP sees them: the policy
/// then applies to the inner packet of every VLAN alike, which the operator
/// should know.
pub(crate) fn vlan_offload_warning(iface: &str) -> Option<String> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GFLAGS: u32 = 0x25;
    const ETH_FLAG_RXVLAN: u32 = 1 << 8;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    let mut value = EthtoolValue {
        cmd: ETHTOOL_GFLAGS,
        data: 0,
    };
    // SAFETY: a zeroed ifreq is valid; we copy at most IFNAMSIZ-1 bytes of the name.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = iface.as_bytes();
    if name.len() >= ifr.ifr_name.len() {
        return None;
    }
    for (d, s) in ifr.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = (&mut value as *mut EthtoolValue).cast();
    // SAFETY: plain socket + ioctl on structures that outlive the call.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    if fd < 0 {
        return None;
    }
    let rc = unsafe { libc::ioctl(fd, SIOCETHTOOL as _, &mut ifr) };
    unsafe { libc::close(fd) };
    (rc == 0 && value.data & ETH_FLAG_RXVLAN != 0).then(|| {
        format!(
            "{iface} strips VLAN tags in hardware (rx-vlan-offload on): XDP sees untagged frames and \
             classifies every VLAN's traffic alike; `ethtool -K {iface} rxvlan off` lets portguard see the tags"
        )
    })
}
