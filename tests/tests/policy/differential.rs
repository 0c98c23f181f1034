//! Differential test: the kernel program (`BPF_PROG_TEST_RUN`) against the
//! plain-Rust reference classifier (`portguard_testsupport::reference`), on generated
//! frames of every kind and on byte-level mutations of them. Both must give
//! the same verdict and the same counter (rule slot, or reason + verdict +
//! protocol class) for every frame.
//!
//! The generator is a seeded SplitMix64, so a failure is reproducible: the
//! seed and the frame's hex are printed. The fragment map is kept in step:
//! fragment identifications come from a small pool, and both sides' fragment
//! memory is emptied long before the kernel's LRU (8,192 entries) could evict.
//!
//! The runs (policy, seed, frame count, the outcomes each must reach) are
//! the `[[differential]]` entries of tests/data/verdicts.toml.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use classifier_common::{MAX_RULE_SLOTS, decode_reason_counter};
use portguard::policy::PolicySpec;
use portguard_testsupport::{
    frames::{ETH_P_8021AD, ETH_P_8021Q, Ext, L4, Packet, arp, non_ip},
    kernel::{Kernel, hex},
    reference::{self, RefState},
    verdict_spec::Spec,
};

/// SplitMix64: small, seedable, good enough to pick cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

const SRC4: [&str; 5] = [
    "198.18.0.1",
    "198.18.0.254",
    "198.18.9.9",
    "10.0.0.1",
    "203.0.113.5",
];
const DST4: [&str; 7] = [
    "198.18.0.2",
    "198.18.1.9",
    "198.18.2.9",
    "198.18.2.200",
    "198.18.3.1",
    "255.255.255.255",
    "224.0.0.5",
];
const SRC6: [&str; 4] = ["2001:db8::1", "fe80::1", "2001:db8:9::1", "2001:db8:1::99"];
const DST6: [&str; 6] = [
    "2001:db8::2",
    "2001:db8:1::5",
    "2001:db8:2::7",
    "2001:db8:3::1",
    "ff02::1",
    "fe80::2",
];

/// Ports the catalogs and the policy care about, and their neighbours.
const PORTS: [u16; 40] = [
    0, 1, 22, 53, 67, 68, 80, 135, 161, 443, 444, 445, 448, 500, 546, 547, 1433, 1434, 2222, 3389,
    3478, 4443, 4500, 5060, 5061, 5062, 5063, 5064, 5065, 5067, 5068, 5070, 5071, 5086, 8057, 8080,
    49_152, 50_000, 50_019, 50_020,
];

const ICMP4_TYPES: [u8; 10] = [0, 3, 4, 5, 8, 11, 12, 13, 9, 255];
const ICMP6_TYPES: [u8; 16] = [
    1, 2, 3, 4, 5, 127, 128, 129, 130, 133, 134, 135, 136, 137, 143, 200,
];
const OTHER_PROTOS: [u8; 10] = [50, 51, 47, 132, 0, 43, 60, 41, 89, 255];

/// How the last generated frame is laid out, for targeted mutations.
struct Layout {
    /// Offset of the IP header (after the VLAN tags), if there is one.
    l3: Option<usize>,
    v6: bool,
}

fn port(r: &mut Rng) -> u16 {
    if r.chance(80) {
        r.pick(&PORTS)
    } else {
        r.next() as u16
    }
}

fn addrs(r: &mut Rng, v6: bool) -> (IpAddr, IpAddr) {
    let ip = portguard_testsupport::frames::ip;
    if v6 {
        (ip(r.pick(&SRC6)), ip(r.pick(&DST6)))
    } else {
        (ip(r.pick(&SRC4)), ip(r.pick(&DST4)))
    }
}

fn l4(r: &mut Rng, v6: bool) -> L4 {
    match r.below(10) {
        0..=3 => {
            let any = r.byte();
            let flags = r.pick(&[0x02, 0x02, 0x12, 0x10, 0x18, 0x11, 0x04, 0x00, 0x03, any]);
            L4::Tcp {
                sport: port(r),
                dport: port(r),
                flags,
            }
        }
        4..=6 => {
            let (sport, dport) = match r.below(6) {
                0 => (r.pick(&[67, 547]), r.pick(&[68, 546])),
                1 => (r.pick(&[500, 4500, 40_000]), r.pick(&[500, 4500])),
                _ => (port(r), port(r)),
            };
            L4::Udp { sport, dport }
        }
        7 | 8 => {
            let icmp_type = if v6 {
                r.pick(&ICMP6_TYPES)
            } else {
                r.pick(&ICMP4_TYPES)
            };
            if r.chance(5) {
                // ICMP of the other family: not ICMP here.
                L4::Raw {
                    proto: if v6 { 1 } else { 58 },
                }
            } else {
                L4::Icmp {
                    icmp_type,
                    code: r.byte() % 4,
                }
            }
        }
        _ => L4::Raw {
            proto: r.pick(&OTHER_PROTOS),
        },
    }
}

fn l4_proto(l4: &L4, v6: bool) -> u8 {
    match l4 {
        L4::Tcp { .. } => 6,
        L4::Udp { .. } => 17,
        L4::Icmp { .. } => {
            if v6 {
                58
            } else {
                1
            }
        }
        L4::Raw { proto } => *proto,
    }
}

/// A valid frame of a random kind, and where its IP header is.
fn generate(r: &mut Rng) -> (Vec<u8>, Layout) {
    let kind = r.below(100);
    let tags = match r.below(20) {
        0..=10 => 0,
        11..=14 => 1,
        15..=17 => 2,
        _ => 3,
    };
    let vlans: Vec<(u16, u16)> = (0..tags)
        .map(|_| {
            (
                r.pick(&[ETH_P_8021Q, ETH_P_8021AD]),
                r.next() as u16 & 0x0fff,
            )
        })
        .collect();
    if !(4..98).contains(&kind) {
        let mut f = if kind < 4 { arp() } else { non_ip() };
        let mut tagged = f[..12].to_vec();
        for (tpid, vid) in &vlans {
            tagged.extend_from_slice(&tpid.to_be_bytes());
            tagged.extend_from_slice(&vid.to_be_bytes());
        }
        tagged.extend_from_slice(&f[12..]);
        f = tagged;
        return (
            f,
            Layout {
                l3: None,
                v6: false,
            },
        );
    }
    let v6 = kind >= 52;
    let (src, dst) = addrs(r, v6);
    let mut transport = l4(r, v6);
    let proto = l4_proto(&transport, v6);
    let payload = r.pick(&[0, 0, 1, 4, 8, 18, 32, 64, 200]);
    // Fragments: first (offset 0, more), later (offset > 0), with a small
    // pool of identifications so that later ones find their first.
    let frag = match r.below(10) {
        0 | 1 => Some((0u16, true)),
        2 | 3 => Some((1 + r.below(200) as u16, r.chance(50))),
        _ => None,
    };
    let frag_id = r.below(12) as u16 + 1;
    if frag.is_some_and(|(offset, _)| offset > 0) {
        // A later fragment carries no transport header.
        transport = L4::Raw { proto };
    }
    let mut p = Packet::new(src, dst, transport).payload(payload);
    p.vlans = vlans;
    if v6 {
        let depth = match r.below(10) {
            0..=4 => 0,
            5 | 6 => 1 + r.below(3),
            7 | 8 => 4 + r.below(3),
            _ => 7,
        };
        let mut exts: Vec<Ext> = (0..depth)
            .map(|_| r.pick(&[Ext::HopByHop, Ext::Routing, Ext::DestOpts]))
            .collect();
        if let Some((offset, more)) = frag {
            let at = r.below(exts.len() + 1);
            exts.insert(
                at,
                Ext::Fragment {
                    offset,
                    more,
                    id: u32::from(frag_id),
                },
            );
        }
        p.ipv6_ext = exts;
    } else {
        if r.chance(15) {
            let n = 1 + r.below(40);
            p.ipv4_options = (0..n)
                .map(|_| {
                    let any = r.byte();
                    r.pick(&[1, 1, 0x94, 4, 0, any])
                })
                .collect();
        }
        if let Some((offset, more)) = frag {
            p.ipv4_frag = Some((offset, more, frag_id));
        } else if r.chance(20) {
            // Don't-fragment set, or a random identification: not a fragment.
            p.ipv4_frag = Some((0, false, r.next() as u16));
        }
    }
    let f = p.build();
    (
        f,
        Layout {
            l3: Some(14 + 4 * tags),
            v6,
        },
    )
}

/// Byte-level damage: flips, random bytes, truncation, padding, and the
/// length, IHL, fragment and extension-length fields.
fn mutate(r: &mut Rng, f: &mut Vec<u8>, layout: &Layout) {
    for _ in 0..1 + r.below(3) {
        match r.below(10) {
            0 | 1 => {
                let i = r.below(f.len().min(100));
                f[i] ^= 1 << r.below(8);
            }
            2 => {
                let i = r.below(f.len());
                f[i] = r.byte();
            }
            3 => {
                let len = 14 + r.below(f.len().saturating_sub(14).max(1));
                f.truncate(len);
            }
            4 => {
                let n = 1 + r.below(48);
                f.extend((0..n).map(|_| r.byte()));
            }
            _ => {
                let Some(l3) = layout.l3 else { continue };
                let set = |f: &mut Vec<u8>, at: usize, v: u8| {
                    if let Some(b) = f.get_mut(at) {
                        *b = v;
                    }
                };
                let delta = r.pick(&[1u8, 2, 4, 8, 0xff, 0xfe, 0xf8]);
                let old = |f: &Vec<u8>, at: usize| f.get(at).copied().unwrap_or(0);
                if layout.v6 {
                    match r.below(5) {
                        // Payload length, low and high byte.
                        0 => set(f, l3 + 5, old(f, l3 + 5).wrapping_add(delta)),
                        1 => set(f, l3 + 4, r.pick(&[0, 1, 0xff])),
                        // Next header.
                        2 => set(f, l3 + 6, r.pick(&[0, 43, 44, 60, 6, 17, 58, 50, 59])),
                        // The first extension header's length or next header.
                        3 => set(f, l3 + 41, r.pick(&[0, 1, 2, 0xff])),
                        _ => set(f, l3 + 40, r.pick(&[0, 43, 44, 60, 6, 17, 58])),
                    }
                } else {
                    match r.below(6) {
                        // Version and IHL.
                        0 => set(f, l3, r.pick(&[0x45, 0x44, 0x46, 0x4f, 0x40, 0x65, 0x35])),
                        // Total length.
                        1 => set(f, l3 + 3, old(f, l3 + 3).wrapping_add(delta)),
                        2 => set(f, l3 + 2, r.pick(&[0, 1, 0xff])),
                        // Flags and fragment offset.
                        3 => set(f, l3 + 6, r.pick(&[0x00, 0x20, 0x40, 0x21, 0x1f, 0xff])),
                        4 => set(f, l3 + 7, r.byte()),
                        // Protocol.
                        _ => set(f, l3 + 9, r.pick(&[1, 6, 17, 50, 51, 58, 0])),
                    }
                }
            }
        }
    }
    if f.len() < 14 {
        f.resize(14, 0);
    }
}

/// Runs `frames` generated frames (half of them mutated) under `spec`;
/// returns how often each outcome was seen.
fn differential(
    name: &str,
    spec: &PolicySpec,
    seed: u64,
    frames: usize,
) -> Option<BTreeMap<String, u64>> {
    let mut kernel = Kernel::new(name, spec)?;
    let mut state = RefState::default();
    let mut rng = Rng(seed);
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    let mut mismatches = Vec::new();
    let mut writes_at_clear = 0;
    let started = Instant::now();
    for i in 0..frames {
        let (mut frame, layout) = generate(&mut rng);
        if rng.chance(50) {
            mutate(&mut rng, &mut frame, &layout);
        }
        let want = reference::classify(&frame, &kernel.policy, &mut state);
        let got = kernel.run(&frame);
        if got != want {
            mismatches.push(format!(
                "frame {i} (seed {seed:#x}): kernel {} {}, reference {} {}\n  {}",
                if got.0 { "PASS" } else { "DROP" },
                kernel.describe(got.1),
                if want.0 { "PASS" } else { "DROP" },
                kernel.describe(want.1),
                hex(&frame)
            ));
            if mismatches.len() >= 20 {
                break;
            }
        }
        let label = match decode_reason_counter(got.1) {
            Some((reason, verdict, _)) => format!(
                "{}:{}",
                reason.name(),
                ["pass", "drop", "would_drop"][verdict as usize]
            ),
            None if got.1 > 0 && got.1 < MAX_RULE_SLOTS => "rule".to_string(),
            None => format!("? {}", got.1),
        };
        *seen.entry(label).or_default() += 1;
        // Keep both fragment memories far from the LRU's size: the kernel
        // map evicts at 8,192 entries (earlier on some CPUs' free lists).
        if state.fragment_writes - writes_at_clear >= 1_000 {
            kernel.clear_fragments();
            state.fragments.clear();
            writes_at_clear = state.fragment_writes;
        }
    }
    let elapsed = started.elapsed();
    assert!(
        mismatches.is_empty(),
        "{name}: the kernel and the reference disagree on {}{} frames:\n{}",
        mismatches.len(),
        if mismatches.len() >= 20 { "+" } else { "" },
        mismatches.join("\n")
    );
    eprintln!(
        "{name}: {frames} frames agree in {:.2} s ({:.1} µs/frame); {} later fragments followed their first; outcomes: {seen:?}",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / frames as f64,
        state.fragment_replays,
    );
    assert!(
        state.fragment_replays > 0,
        "{name}: no later fragment ever met its first fragment"
    );
    assert!(
        elapsed < Duration::from_secs(60),
        "{name}: {elapsed:?} is over the 60 s budget"
    );
    Some(seen)
}

/// Runs the spec's differential run `name` and checks the outcomes it
/// must and must not reach.
fn run_spec(name: &str) -> Option<BTreeMap<String, u64>> {
    let spec = Spec::load();
    let run = spec
        .differential
        .iter()
        .find(|d| d.name == name)
        .unwrap_or_else(|| panic!("verdicts.toml has no differential run `{name}`"));
    let policy = spec.policy(&run.policy);
    let seen = differential(
        &format!("differential: {name}"),
        &policy,
        run.seed,
        run.frames,
    )?;
    for l in &run.covers {
        assert!(
            seen.get(l).is_some_and(|n| *n > 0),
            "{name}: no frame ended as {l}; seen {seen:?}"
        );
    }
    for l in &run.never {
        assert!(
            !seen.contains_key(l),
            "{name}: {l} must never happen; seen {seen:?}"
        );
    }
    if policy.monitor {
        assert!(
            !seen.keys().any(|k| k.ends_with(":drop")),
            "{name}: monitor mode dropped something: {seen:?}"
        );
    }
    Some(seen)
}

#[test]
fn lab_policy_kernel_matches_reference() {
    run_spec("lab");
}

#[test]
fn profiles_in_monitor_mode_kernel_matches_reference() {
    run_spec("profiles, monitor");
}

#[test]
fn profiles_with_default_role_and_strict_flags_kernel_matches_reference() {
    run_spec("profiles, strict");
}

#[test]
fn every_differential_run_of_the_spec_has_a_test() {
    let names: Vec<String> = Spec::load()
        .differential
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(
        names,
        ["lab", "profiles, monitor", "profiles, strict"],
        "a differential run in verdicts.toml without a #[test] here (or the reverse)"
    );
}
