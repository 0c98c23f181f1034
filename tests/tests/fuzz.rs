//! Property-based fuzzing of the inputs an attacker or a typo controls:
//! catalog text, and frames on the wire (the real XDP program under
//! `BPF_PROG_TEST_RUN`).
//!
//! Bounded for `cargo xtask test` (well under a minute in all);
//! `PORTGUARD_FUZZ_CASES=N` (or `PROPTEST_CASES=N`) gives every property N cases.

use std::sync::{Mutex, OnceLock};

use classifier_common::{MAX_RULE_SLOTS, Verdict, decode_reason_counter};
use portguard::catalog::{Catalog, Severity};
use portguard_testsupport::{
    frames::{ETH_P_8021AD, ETH_P_8021Q, Ext, L4, Packet, TCP_ACK, TCP_SYN},
    kernel::{Kernel, XDP_ABORTED, XDP_DROP, XDP_PASS},
    reference::{self, RefState},
    spec::lab_spec,
};
use proptest::{prelude::*, test_runner::Config};

fn cases(default: u32) -> u32 {
    ["PORTGUARD_FUZZ_CASES", "PROPTEST_CASES"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
        .unwrap_or(default)
}

fn config(default: u32) -> Config {
    Config {
        cases: cases(default),
        failure_persistence: None,
        ..Config::default()
    }
}

// ------------------------------------------------------------ catalog parser

/// Every error is located (line ≥ 1, within the text); none is about I/O here.
fn check_diagnostics(text: &[u8]) -> Result<(), TestCaseError> {
    let lines = text.iter().filter(|&&b| b == b'\n').count() + 1;
    if let Err(e) = Catalog::from_bytes(text, "fuzz.toml") {
        prop_assert!(
            e.errors().next().is_some(),
            "an error without any error diagnostic: {e}"
        );
        for d in e.errors() {
            prop_assert!(d.line >= 1, "error without a line: {d}");
            prop_assert!(
                d.line <= lines + 1,
                "error at line {} of a {lines}-line text: {d}",
                d.line
            );
        }
        for d in &e.diagnostics {
            prop_assert!(d.severity == Severity::Warning || d.line >= 1, "{d}");
        }
    }
    Ok(())
}

/// A mutation of the embedded catalog, line-wise or byte-wise.
#[derive(Clone, Debug)]
enum Mutation {
    DeleteLine(usize),
    DuplicateLine(usize, usize),
    SwapLines(usize, usize),
    ReplaceBytes { at: usize, bytes: Vec<u8> },
    InsertToken { at: usize, token: &'static str },
    Truncate(usize),
}

const TOKENS: &[&str] = &[
    "\"",
    "'",
    "[",
    "]",
    "[[rule]]",
    "[[role]]",
    "=",
    "\n",
    "ports = \"0\"",
    "ports = \"70000\"",
    "ports = \"9-1\"",
    "ports = 5061",
    "protocol = \"sctp\"",
    "role = \"nope\"",
    "includes = [\"front-end\"]",
    "version = 2",
    "{",
    "}",
    "\u{feff}",
    "é",
    "\\",
    "#",
    "1e999",
    "ports = \"1-\"",
    "ports = \"-\"",
    "match = \"source\"",
    "media = true",
];

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::DeleteLine),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::DuplicateLine(a, b)),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(at, bytes)| Mutation::ReplaceBytes { at, bytes }),
        (any::<usize>(), proptest::sample::select(TOKENS))
            .prop_map(|(at, token)| Mutation::InsertToken { at, token }),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(text: &str, ms: &[Mutation]) -> Vec<u8> {
    let mut bytes = text.as_bytes().to_vec();
    for m in ms {
        let mut lines: Vec<Vec<u8>> = bytes.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
        let n = lines.len().max(1);
        match m {
            Mutation::DeleteLine(i) => {
                lines.remove(i % n.min(lines.len()).max(1));
            }
            Mutation::DuplicateLine(i, j) => {
                let l = lines[i % n].clone();
                lines.insert(j % n, l);
            }
            Mutation::SwapLines(i, j) => lines.swap(i % n, j % n),
            Mutation::ReplaceBytes { at, bytes: b } => {
                let mut flat = lines.join(&b'\n');
                let at = at % flat.len().max(1);
                let end = (at + b.len()).min(flat.len());
                flat.splice(at..end, b.iter().copied());
                bytes = flat;
                continue;
            }
            Mutation::InsertToken { at, token } => {
                let mut flat = lines.join(&b'\n');
                let at = at % flat.len().max(1);
                flat.splice(at..at, token.bytes());
                bytes = flat;
                continue;
            }
            Mutation::Truncate(at) => {
                bytes.truncate(at % bytes.len().max(1));
                continue;
            }
        }
        bytes = lines.join(&b'\n');
    }
    bytes
}

proptest! {
    #![proptest_config(config(10_000))]

    #[test]
    fn catalog_parser_survives_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        check_diagnostics(&bytes)?;
    }

    #[test]
    fn catalog_parser_survives_arbitrary_text(text in "[\\[\\]a-z0-9=\"\\-,. #\n]{0,300}") {
        check_diagnostics(text.as_bytes())?;
    }
}

proptest! {
    #![proptest_config(config(5_000))]

    #[test]
    fn catalog_parser_survives_mutated_catalogs(ms in proptest::collection::vec(mutation(), 1..4)) {
        check_diagnostics(&mutate(Catalog::embedded_text(), &ms))?;
    }
}

// ------------------------------------------------------------ the XDP program

/// One loaded classifier shared by the frame properties (loading verifies
/// the program, which takes a while); `None` without privileges. Unpinned: a
/// `static` is never dropped, so nothing may be left on the bpffs.
fn xdp() -> Option<&'static Mutex<Kernel>> {
    static XDP: OnceLock<Option<Mutex<Kernel>>> = OnceLock::new();
    XDP.get_or_init(|| Kernel::unpinned("fuzz", &lab_spec()).map(Mutex::new))
        .as_ref()
}

/// Never aborted; a pass is counted under a rule slot or a pass reason, a
/// drop under a drop reason (enforce mode: no would_drop).
fn check_any_frame(x: &mut Kernel, frame: &[u8]) -> Result<(u32, u32), TestCaseError> {
    let (action, counter) = x.run_raw(frame);
    prop_assert_ne!(action, XDP_ABORTED, "XDP_ABORTED on {:02x?}", frame);
    prop_assert!(
        action == XDP_PASS || action == XDP_DROP,
        "action {} on {:02x?}",
        action,
        frame
    );
    let verdict = decode_reason_counter(counter).map(|(_, v, _)| v);
    if action == XDP_PASS {
        let rule = counter > 0
            && counter < MAX_RULE_SLOTS
            && x.policy.profiles[0]
                .blocks
                .iter()
                .any(|b| b.slots.contains(&(counter as u16)));
        prop_assert!(
            rule || verdict == Some(Verdict::Pass as u32),
            "passed under counter {} ({:?}), neither a rule slot in force nor a pass reason: {:02x?}",
            counter,
            decode_reason_counter(counter),
            frame
        );
    } else {
        prop_assert_eq!(
            verdict,
            Some(Verdict::Drop as u32),
            "dropped under counter {} ({:?})",
            counter,
            decode_reason_counter(counter)
        );
    }
    Ok((action, counter))
}

/// Frames that look like real traffic, for mutation.
fn seed_frame() -> impl Strategy<Value = Vec<u8>> {
    let v4 = ("198.18.0.1", "198.18.0.2");
    let v6 = ("2001:db8::1", "2001:db8::2");
    (
        any::<bool>(),
        0u8..6,
        any::<u16>(),
        any::<u16>(),
        0usize..40,
        0u8..4,
    )
        .prop_map(move |(six, kind, sport, dport, payload, shape)| {
            let (s, d) = if six { v6 } else { v4 };
            let mut p = match kind {
                0 | 1 => Packet::udp(s, d, sport, dport),
                2 | 3 => Packet::tcp(s, d, sport, dport),
                4 => Packet::icmp(s, d, (dport & 0xff) as u8),
                _ => {
                    let mut p = Packet::udp(s, d, sport, dport);
                    p.l4 = L4::Raw {
                        proto: (dport & 0xff) as u8,
                    };
                    p
                }
            };
            p = p.payload(payload);
            match shape {
                1 => p = p.vlan(ETH_P_8021Q, 7),
                2 => p = p.vlan(ETH_P_8021AD, 7).vlan(ETH_P_8021Q, 8),
                3 if six => {
                    p = p.ext(Ext::HopByHop).ext(Ext::Fragment {
                        offset: 0,
                        more: true,
                        id: u32::from(sport),
                    })
                }
                3 => p.ipv4_frag = Some((dport & 7, true, sport)),
                _ => {}
            }
            p.build()
        })
}

fn mutated_frame() -> impl Strategy<Value = Vec<u8>> {
    (
        seed_frame(),
        proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        any::<Option<usize>>(),
    )
        .prop_map(|(mut f, flips, cut)| {
            for (at, b) in flips {
                let i = at % f.len();
                f[i] = b;
            }
            if let Some(c) = cut {
                f.truncate((c % f.len()).max(14));
            }
            f
        })
}

fn random_frame() -> impl Strategy<Value = Vec<u8>> {
    // Half of them with an ethertype the parser goes further for.
    (
        proptest::collection::vec(any::<u8>(), 14..160),
        proptest::sample::select(&[0x0800u16, 0x86dd, 0x8100, 0x88a8, 0x0806, 0][..]),
    )
        .prop_map(|(mut f, et)| {
            if et != 0 {
                f[12..14].copy_from_slice(&et.to_be_bytes());
                if et == 0x0800 && f.len() > 14 {
                    f[14] = 0x45;
                } else if et == 0x86dd && f.len() > 14 {
                    f[14] = 0x60;
                }
            }
            f
        })
}

proptest! {
    #![proptest_config(config(30_000))]

    #[test]
    fn xdp_never_aborts_on_random_frames(frame in random_frame()) {
        let Some(x) = xdp() else { return Ok(()) };
        let mut x = x.lock().unwrap_or_else(|e| e.into_inner());
        check_any_frame(&mut x, &frame)?;
    }

    #[test]
    fn xdp_never_aborts_on_mutated_frames(frame in mutated_frame()) {
        let Some(x) = xdp() else { return Ok(()) };
        let mut x = x.lock().unwrap_or_else(|e| e.into_inner());
        check_any_frame(&mut x, &frame)?;
    }

    #[test]
    fn xdp_passes_a_well_formed_packet_only_if_the_policy_allows_it(
        six in any::<bool>(),
        tcp in any::<bool>(),
        sport in any::<u16>(),
        dport in prop_oneof![any::<u16>(), Just(22u16), Just(68), Just(5061), Just(3478), Just(50_000), Just(50_020), Just(500), Just(4500), 49_000u16..58_000],
        ack in any::<bool>(),
        vlans in 0usize..3,
        payload in 0usize..64,
    ) {
        let Some(x) = xdp() else { return Ok(()) };
        let mut x = x.lock().unwrap_or_else(|e| e.into_inner());
        let (s, d) = if six { ("2001:db8::1", "2001:db8::2") } else { ("198.18.0.1", "198.18.0.2") };
        let mut p = if tcp { Packet::tcp(s, d, sport, dport) } else { Packet::udp(s, d, sport, dport) };
        if let L4::Tcp { flags, .. } = &mut p.l4 {
            *flags = if ack { TCP_ACK } else { TCP_SYN };
        }
        for v in 0..vlans {
            p = p.vlan(if v == 0 && vlans == 2 { ETH_P_8021AD } else { ETH_P_8021Q }, 10 + v as u16);
        }
        let frame = p.payload(payload).build();
        let (action, counter) = check_any_frame(&mut x, &frame)?;
        // The reference classifier is the oracle (no flow or fragment is in
        // play: nothing here runs the egress recorder or fragments).
        let want = reference::classify(&frame, &x.policy, &mut RefState::default());
        prop_assert_eq!(
            (action == XDP_PASS, counter),
            want,
            "{} {} {}→{} ({} VLAN tags): kernel {} {}, reference {} {}",
            if six { "IPv6" } else { "IPv4" },
            if tcp { "TCP" } else { "UDP" },
            sport,
            dport,
            vlans,
            if action == XDP_PASS { "pass" } else { "drop" },
            x.describe(counter),
            if want.0 { "pass" } else { "drop" },
            x.describe(want.1)
        );
    }
}
