//! The kernel program under `BPF_PROG_TEST_RUN` for the packet-policy tests
//! (verdicts, fuzz, differential, corpus). `Kernel::new` pins its maps in a
//! private bpffs directory, so that a test can also reach `FRAGMENTS` and run
//! the TC egress recorder on frames of its own; `Kernel::unpinned` leaves
//! nothing on the bpffs (for a kernel that lives in a `static`);
//! `Kernel::appliance` gives the program legs (real interfaces in a
//! namespace of the test's own), so that a test can say which leg a frame
//! arrives on and which it leaves by.

use std::{
    path::{Path, PathBuf},
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
};

use aya::{
    EbpfLoader,
    maps::{HashMap, Map, MapData},
    programs::{SchedClassifier, TestRun as _, TestRunOptions},
};
use classifier_common::{
    Counter, FlowKey, FlowState, FragKey, FragVerdict, TC_EGRESS_PROGRAM, map_names,
};
use portguard::{
    catalog::Catalog,
    ebpf_object,
    loader::{self, Classifier, FlowLimits},
    policy::{self, CompiledPolicy, PolicySpec, SlotRegistry},
};

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

static SEQ: AtomicU32 = AtomicU32::new(0);

const BPFFS: &str = "/sys/fs/bpf";

/// Makes sure /sys/fs/bpf is a bpffs, as `portguard run` does: a machine
/// whose init does not mount one (a container, a minimal VM) has a bare
/// sysfs directory there until something mounts it, and the pins must not
/// depend on a daemon of an earlier test having done so. Once per process,
/// so that this process's tests never stack a second bpffs on the first.
fn ensure_bpffs() {
    static MOUNTED: OnceLock<Result<(), String>> = OnceLock::new();
    if let Err(e) =
        MOUNTED.get_or_init(|| loader::ensure_bpffs(Path::new(BPFFS)).map_err(|e| e.to_string()))
    {
        panic!("{BPFFS} is not a bpffs and mounting one failed: {e}");
    }
}

/// The kernel program under a policy, with tracing on.
pub struct Kernel {
    pub classifier: Classifier,
    pub registry: SlotRegistry,
    pub policy: CompiledPolicy,
    /// `None` for an unpinned kernel.
    pins: Option<PathBuf>,
    egress: Option<aya::Ebpf>,
    legs: Option<Legs>,
}

/// An appliance's legs for `BPF_PROG_TEST_RUN`: veth interfaces in a
/// network namespace the test thread has entered (the kernel looks a test
/// run's interface up in the caller's namespace). Nothing is sent on them.
struct Legs {
    _ns: testkit::netns::NetNs,
    ifindexes: Vec<u32>,
}

impl Legs {
    /// `n` legs: veth pairs, up, with GRO on (which registers the receive
    /// queues an XDP test run on an interface needs).
    fn new(n: usize) -> Legs {
        let ns = testkit::netns::NetNs::new("pgleg").expect("a namespace for the legs");
        let mut ifindexes = Vec::new();
        for i in 0..n {
            let (a, b) = (format!("leg{i}"), format!("peer{i}"));
            ns.ip(&["link", "add", &a, "type", "veth", "peer", "name", &b])
                .unwrap_or_else(|e| panic!("veth {a}: {e}"));
            for dev in [&a, &b] {
                ns.ip(&["link", "set", dev, "up"])
                    .unwrap_or_else(|e| panic!("{dev} up: {e}"));
            }
            testkit::netns::run(
                testkit::netns::ns_exec(&ns, "ethtool", &["-K", &a, "gro", "on"])
                    .stdout(std::process::Stdio::null()),
            )
            .unwrap_or_else(|e| panic!("GRO on {a}: {e}"));
            let text = ns
                .ip(&["-o", "link", "show", "dev", &a])
                .unwrap_or_else(|e| panic!("{a}: {e}"));
            let ifindex = text
                .split(':')
                .next()
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or_else(|| panic!("no ifindex in {text:?}"));
            ifindexes.push(ifindex);
        }
        let file = std::fs::File::open(ns.path())
            .unwrap_or_else(|e| panic!("opening {}: {e}", ns.path().display()));
        // SAFETY: setns on this (the test's) thread only; `file` is open.
        let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "entering the legs' namespace: {}",
            std::io::Error::last_os_error()
        );
        Legs { _ns: ns, ifindexes }
    }
}

impl Kernel {
    /// Pinned in a private bpffs directory, removed on drop. `None` when this
    /// process may not load BPF (and CI is not set).
    pub fn new(test: &str, spec: &PolicySpec) -> Option<Kernel> {
        if !testkit::require_privileges(test) {
            return None;
        }
        Some(Kernel::pinned(test, spec, &Kernel::unshared()))
    }

    fn pinned(test: &str, spec: &PolicySpec, limits: &FlowLimits) -> Kernel {
        ensure_bpffs();
        let pins = PathBuf::from(BPFFS).join(format!(
            "pg-pktpolicy-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        loader::remove_pins(&pins);
        std::fs::create_dir_all(&pins)
            .unwrap_or_else(|e| panic!("creating {}: {e}", pins.display()));
        // A load that panics (the verifier refusing the program) must not
        // leave the directory behind: the Kernel that would remove it on drop
        // never exists.
        struct Leftover<'a>(&'a Path);
        impl Drop for Leftover<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    loader::remove_pins(self.0);
                }
            }
        }
        let guard = Leftover(&pins);
        let kernel = Kernel::load(test, spec, Some(pins.clone()), limits);
        drop(guard);
        kernel
    }

    /// The tables' default sizes, with no per-source share: the reference
    /// classifier the packet-policy tests hold the program to has none (a
    /// share depends on time). `Kernel::appliance` keeps the shares.
    fn unshared() -> FlowLimits {
        FlowLimits {
            flow_share: 0,
            fragment_share: 0,
            ..FlowLimits::default()
        }
    }

    /// Pinned, with `legs` legs (leg 0 first, as `--iface` order): frames
    /// run with [`Kernel::run_on`] and [`Kernel::egress_on`] arrive and
    /// leave by a leg. The calling thread moves into the legs' namespace
    /// for good; the test's thread is its own, so nothing else notices.
    pub fn appliance(test: &str, spec: &PolicySpec, legs: usize) -> Option<Kernel> {
        if !testkit::require_privileges(test) {
            return None;
        }
        let legs = Legs::new(legs);
        let mut kernel = Kernel::pinned(test, spec, &FlowLimits::default());
        kernel
            .classifier
            .set_legs(&legs.ifindexes)
            .unwrap_or_else(|e| panic!("{test}: the legs: {e}"));
        kernel.legs = Some(legs);
        Some(kernel)
    }

    fn leg_ifindex(&self, leg: usize) -> u32 {
        self.legs
            .as_ref()
            .and_then(|l| l.ifindexes.get(leg).copied())
            .unwrap_or_else(|| panic!("no leg {leg}: use Kernel::appliance"))
    }

    /// One frame through XDP as it arrives on `leg`: (pass, counter).
    pub fn run_on(&mut self, leg: usize, frame: &[u8]) -> (bool, u32) {
        let ifindex = self.leg_ifindex(leg);
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
        // rx_queue_index, egress_ifindex.
        let md: [u32; 6] = [0, frame.len() as u32, 0, ifindex, 0, 0];
        let ctx: Vec<u8> = md.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let opts = TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            repeat: 1,
            ..TestRunOptions::default()
        };
        let r = self
            .classifier
            .xdp_ref()
            .expect("the XDP program")
            .test_run(opts)
            .unwrap_or_else(|e| panic!("test_run on leg {leg} of {}: {e}", hex(frame)));
        let counter = self.classifier.last_counter().expect("reading TRACE");
        match r.return_value {
            XDP_PASS => (true, counter),
            XDP_DROP => (false, counter),
            other => panic!("XDP returned {other} (not pass or drop) for {}", hex(frame)),
        }
    }

    /// The egress recorder on a frame leaving by leg `out`, forwarded from
    /// leg `from` (`None`: the box's own packet).
    pub fn egress_on(&mut self, out: usize, from: Option<usize>, frame: &[u8]) {
        let ifindex = self.leg_ifindex(out);
        let ingress = from.map_or(0, |l| self.leg_ifindex(l));
        // struct __sk_buff up to `ifindex`: len, pkt_type, mark,
        // queue_mapping, protocol, vlan_present, vlan_tci, vlan_proto,
        // priority, ingress_ifindex, ifindex.
        let mut skb = [0u32; 11];
        skb[9] = ingress;
        skb[10] = ifindex;
        let ctx: Vec<u8> = skb.iter().flat_map(|w| w.to_ne_bytes()).collect();
        self.egress_with(frame, Some(&ctx));
    }

    /// Nothing pinned: `fragment_entries`, `clear_fragments` and `egress`
    /// are not available. `None` when this process may not load BPF.
    pub fn unpinned(test: &str, spec: &PolicySpec) -> Option<Kernel> {
        if !testkit::require_privileges(test) {
            return None;
        }
        Some(Kernel::load(test, spec, None, &Kernel::unshared()))
    }

    fn load(test: &str, spec: &PolicySpec, pins: Option<PathBuf>, limits: &FlowLimits) -> Kernel {
        let mut registry = SlotRegistry::default();
        let policy = policy::resolve(&Catalog::embedded(), spec)
            .and_then(|r| policy::compile(&r, &mut registry))
            .unwrap_or_else(|e| panic!("{test}: the policy must compile: {e}"));
        let mut classifier = Classifier::load_with(pins.as_deref(), limits)
            .unwrap_or_else(|e| panic!("{test}: loading the XDP program: {e}"));
        classifier
            .install(&policy, 1)
            .unwrap_or_else(|e| panic!("{test}: installing the policy: {e}"));
        classifier
            .set_trace(true)
            .unwrap_or_else(|e| panic!("{test}: enabling trace: {e}"));
        Kernel {
            classifier,
            registry,
            policy,
            pins,
            egress: None,
            legs: None,
        }
    }

    /// Installs `spec` as a reload does (the other generation, then the
    /// flip), keeping the slot registry so that rules keep their counters.
    pub fn reload(&mut self, spec: &PolicySpec, catalog_generation: u32) {
        self.policy = policy::resolve(&Catalog::embedded(), spec)
            .and_then(|r| policy::compile(&r, &mut self.registry))
            .unwrap_or_else(|e| panic!("reload {catalog_generation}: the policy compiles: {e}"));
        self.classifier
            .install(&self.policy, catalog_generation)
            .unwrap_or_else(|e| panic!("reload {catalog_generation}: install: {e}"));
    }

    fn pins(&self) -> &Path {
        self.pins
            .as_deref()
            .expect("this needs a pinned Kernel (Kernel::new)")
    }

    /// The packets and bytes counted under a `COUNTERS` index, all CPUs.
    pub fn counter(&mut self, index: u32) -> Counter {
        self.classifier
            .counters([index])
            .unwrap_or_else(|e| panic!("reading counter {index}: {e}"))
            .first()
            .map_or(Counter::default(), |(_, c)| *c)
    }

    /// One frame through XDP: the action and the counter index it bumped.
    pub fn run_raw(&mut self, frame: &[u8]) -> (u32, u32) {
        let r = self.classifier.test_run(frame, 1).unwrap_or_else(|e| {
            panic!(
                "test_run on a {}-byte frame {}: {e}",
                frame.len(),
                hex(frame)
            )
        });
        let counter = self.classifier.last_counter().expect("reading TRACE");
        (r.return_value, counter)
    }

    /// One frame through XDP as (pass, counter); an abort is a failure.
    pub fn run(&mut self, frame: &[u8]) -> (bool, u32) {
        let (action, counter) = self.run_raw(frame);
        match action {
            XDP_PASS => (true, counter),
            XDP_DROP => (false, counter),
            other => panic!("XDP returned {other} (not pass or drop) for {}", hex(frame)),
        }
    }

    fn fragments(&self) -> HashMap<MapData, FragKey, FragVerdict> {
        let path = self.pins().join(map_names::FRAGMENTS);
        let data =
            MapData::from_pin(&path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
        let map = Map::from_map_data(data).expect("FRAGMENTS");
        HashMap::try_from(map).expect("FRAGMENTS as a hash map")
    }

    /// Entries in the kernel's fragment map.
    pub fn fragment_entries(&self) -> usize {
        self.fragments().keys().filter(Result::is_ok).count()
    }

    /// Empties the kernel's fragment map.
    pub fn clear_fragments(&mut self) {
        let mut map = self.fragments();
        let keys: Vec<FragKey> = map.keys().filter_map(Result::ok).collect();
        for k in keys {
            map.remove(&k).expect("removing a fragment entry");
        }
    }

    fn flow_table(&self, name: &str) -> HashMap<MapData, FlowKey, FlowState> {
        let path = self.pins().join(name);
        let data =
            MapData::from_pin(&path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
        let map = Map::from_map_data(data).unwrap_or_else(|e| panic!("{name}: {e}"));
        HashMap::try_from(map).unwrap_or_else(|e| panic!("{name} as a hash map: {e}"))
    }

    /// Empties both flow tables and starts the recorder afresh (its per-CPU
    /// cache empty), as a restart with `--clean-start` or a failover to a
    /// standby box would.
    pub fn restart_flows(&mut self) {
        self.clear_flows();
        self.egress = None;
    }

    /// Empties both flow tables, as evictions under pressure would (the
    /// recorder's cache stays).
    pub fn clear_flows(&mut self) {
        for name in [map_names::FLOWS, map_names::FLOWS_NEW] {
            let mut flows = self.flow_table(name);
            let keys: Vec<FlowKey> = flows.keys().filter_map(Result::ok).collect();
            for k in keys {
                flows
                    .remove(&k)
                    .unwrap_or_else(|e| panic!("removing a {name} entry: {e}"));
            }
        }
    }

    /// The entries of the confirmed (`FLOWS`) or unconfirmed (`FLOWS_NEW`)
    /// flow table.
    pub fn flows(&self, confirmed: bool) -> Vec<(FlowKey, FlowState)> {
        let name = if confirmed {
            map_names::FLOWS
        } else {
            map_names::FLOWS_NEW
        };
        self.flow_table(name)
            .iter()
            .map(|r| r.unwrap_or_else(|e| panic!("reading {name}: {e}")))
            .collect()
    }

    /// Runs the TC egress recorder on a frame the host sends (it shares
    /// the flow tables with the XDP program through the pins).
    pub fn egress(&mut self, frame: &[u8]) {
        self.egress_with(frame, None);
    }

    fn egress_with(&mut self, frame: &[u8], ctx: Option<&[u8]>) {
        if self.egress.is_none() {
            let mut l = EbpfLoader::new();
            let paths: Vec<(&str, PathBuf)> = map_names::ALL
                .iter()
                .map(|n| (*n, self.pins().join(n)))
                .collect();
            for (name, path) in &paths {
                l.map_pin_path(name, path.as_path());
            }
            let mut ebpf = l
                .load(ebpf_object::PORTGUARD)
                .expect("loading the object again");
            let tc: &mut SchedClassifier = ebpf
                .program_mut(TC_EGRESS_PROGRAM)
                .unwrap_or_else(|| panic!("no {TC_EGRESS_PROGRAM} in the object"))
                .try_into()
                .unwrap_or_else(|e| panic!("{TC_EGRESS_PROGRAM}: {e}"));
            tc.load()
                .unwrap_or_else(|e| panic!("loading {TC_EGRESS_PROGRAM}: {e}"));
            self.egress = Some(ebpf);
        }
        let Some(ebpf) = self.egress.as_ref() else {
            unreachable!("just loaded")
        };
        let tc: &SchedClassifier = ebpf
            .program(TC_EGRESS_PROGRAM)
            .unwrap_or_else(|| panic!("no {TC_EGRESS_PROGRAM}"))
            .try_into()
            .unwrap_or_else(|e| panic!("{TC_EGRESS_PROGRAM}: {e}"));
        let opts = TestRunOptions {
            data_in: Some(frame),
            ctx_in: ctx,
            repeat: 1,
            ..TestRunOptions::default()
        };
        tc.test_run(opts).expect("test_run of the egress recorder");
    }

    /// `role/proto/service` of a rule slot, for messages and the corpus.
    pub fn rule(&self, slot: u32) -> Option<String> {
        let key = u16::try_from(slot)
            .ok()
            .and_then(|s| self.registry.get(s))?;
        Some(format!(
            "{}/{}/{}-{}",
            key.role, key.proto, key.port_start, key.port_end
        ))
    }

    /// A counter index in words: a reason entry or a rule.
    pub fn describe(&self, counter: u32) -> String {
        if let Some((media, verdict, reason)) = classifier_common::decode_media_counter(counter) {
            let slot = u32::from(classifier_common::media::MEDIA_SLOT_FLAG) | media;
            return format!(
                "media rule {} {} {}",
                self.rule(slot)
                    .unwrap_or_else(|| format!("<media index {media}>")),
                verdict.name(),
                reason.name()
            );
        }
        match self.rule(counter) {
            Some(r) => format!("rule {r}"),
            None => crate::reference::describe(counter),
        }
    }
}

impl Drop for Kernel {
    fn drop(&mut self) {
        if let Some(pins) = &self.pins {
            loader::remove_pins(pins);
        }
    }
}

/// Keeps the calling thread on CPU 0, so that every `BPF_PROG_TEST_RUN` it
/// makes meets the same CPU's per-CPU maps (the recorders' and the
/// profile cache, the event budget).
pub fn pin_this_thread_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t with CPU 0 set, for this thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
            0,
            "pinning the test thread to CPU 0"
        );
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn unhex(s: &str) -> Result<Vec<u8>, String> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if !s.len().is_multiple_of(2) {
        return Err(format!("odd number of hex digits ({})", s.len()));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|e| format!("at {i}: {e}")))
        .collect()
}
