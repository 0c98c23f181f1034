//! The verdict spec (tests/data/verdicts.toml): every hand-stated case, run
//! through the kernel program (`BPF_PROG_TEST_RUN`) and through the
//! reference classifier, with packet events off and on; and the golden
//! corpus generated from it.
//!
//! The corpus (tests/corpus/packet-policy.txt) holds the same cases with
//! their frames in hex, one a line (`#` starts a comment):
//! - `[policy NAME]` switches to a fresh program under policy NAME;
//! - `NAME | VERDICT | WHY | HEX` where VERDICT is `pass`, `drop` or
//!   `would_drop`, and WHY is `REASON/PCLASS` (a reason counter, e.g.
//!   `port_not_allowed/tcp`) or `rule:[ROLE/]PROTO/PORT` (passed under a
//!   catalog rule of that protocol whose range holds PORT);
//! - `NAME | egress | - | HEX`: a frame the host sends, run through the TC
//!   egress recorder (it opens the flows that replies then follow).
//!
//! It is what the spec gives, byte for byte (a test keeps the two in step;
//! `PORTGUARD_WRITE_CORPUS=1` rewrites it): a change to the frame builders
//! shows in its diff, and tools outside Rust can replay it.

use std::path::PathBuf;

use classifier_common::Reason;
use portguard_testsupport::{
    kernel::{Kernel, hex},
    reference::{self, RefState},
    verdict_spec::{self, Expect, Spec, Why},
};

fn corpus_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus/packet-policy.txt")
}

/// The corpus file the spec gives: its host sections and their cases,
/// frames in hex.
fn build_corpus(spec: &Spec) -> String {
    let mut text = String::from(
        "# portguard packet-policy corpus: NAME | VERDICT | WHY | HEX (see tests/tests/policy/corpus.rs)\n\
         # Generated from tests/data/verdicts.toml (PORTGUARD_WRITE_CORPUS=1); expectations are hand-written there.\n",
    );
    for s in spec
        .sections
        .iter()
        .filter(|s| !spec.is_appliance(&s.policy))
    {
        text.push_str(&format!("\n# {}\n[policy {}]\n", s.note, s.policy));
        for c in &s.cases {
            let (verdict, why) = match c.expect.text().split_once(' ') {
                Some((v, w)) => (v.to_string(), w.to_string()),
                None => ("egress".to_string(), "-".to_string()),
            };
            assert!(!c.name.contains('|') && !why.contains('|'), "{}", c.name);
            text.push_str(&format!(
                "{} | {verdict} | {why} | {}\n",
                c.name,
                hex(&c.bytes)
            ));
        }
    }
    text
}

#[test]
fn corpus_file_is_what_the_generator_writes() {
    let built = build_corpus(&Spec::load());
    let path = corpus_path();
    if std::env::var("PORTGUARD_WRITE_CORPUS").as_deref() == Ok("1") {
        std::fs::create_dir_all(path.parent().expect("no parent")).expect("creating tests/corpus");
        std::fs::write(&path, &built).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }
    let on_disk = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    assert!(
        on_disk == built,
        "{} differs from what tests/data/verdicts.toml gives: rerun with PORTGUARD_WRITE_CORPUS=1 and review the diff",
        path.display()
    );
}

#[test]
fn corpus_covers_every_reason() {
    let spec = Spec::load();
    // A media rule's refusals are counted under its pseudo-reasons, never
    // in these entries, and the reference classifier reads no payloads:
    // media.rs covers them in the kernel.
    let media = [Reason::NotMedia, Reason::Reflection, Reason::RateLimited];
    for r in Reason::ALL.into_iter().filter(|r| !media.contains(r)) {
        assert!(
            spec.cases().any(|c| matches!(
                &c.expect,
                Expect::Verdict { why: Why::Reason { reason, .. }, .. } if *reason == r
            )),
            "the corpus has no frame counted as {}",
            r.name()
        );
    }
}

#[test]
fn corpus_verdicts_in_the_kernel_and_the_reference() {
    run_corpus(false);
}

/// The same corpus with packet events on for every verdict: the verdicts do
/// not change, and each frame leaves exactly one event that names its
/// verdict, reason (or rule slot), length and first bytes.
#[test]
fn corpus_verdicts_with_events_on() {
    run_corpus(true);
}

fn check_event(
    ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
    frame: &[u8],
    expect: &Expect,
    counter: u32,
) -> Result<(), String> {
    use classifier_common::{EVENT_REASON_RULE, EVENT_SNAPLEN, Event, REASON_COUNTER_BASE};
    let Some(item) = ring.next() else {
        return Err("no event".into());
    };
    let e: Event = bytemuck::pod_read_unaligned(&item[..size_of::<Event>()]);
    drop(item);
    let Expect::Verdict { verdict, .. } = expect else {
        return Err("an event for an egress frame".into());
    };
    let want_verdict = *verdict as u32;
    let (want_reason, want_slot) = if counter < REASON_COUNTER_BASE {
        (EVENT_REASON_RULE, counter)
    } else {
        let (r, _, _) = classifier_common::decode_reason_counter(counter)
            .ok_or_else(|| format!("counter {counter} decodes to nothing"))?;
        (r as u32, 0)
    };
    let cap = frame.len().min(EVENT_SNAPLEN);
    let got = (e.verdict, e.reason, e.slot, e.len, e.captured);
    let want = (
        want_verdict,
        want_reason,
        want_slot,
        frame.len() as u32,
        cap as u32,
    );
    if got != want {
        return Err(format!(
            "event (verdict, reason, slot, len, captured) = {got:?}, expected {want:?}"
        ));
    }
    if e.data[..cap] != frame[..cap] {
        return Err(format!(
            "event bytes {} differ from the frame's",
            hex(&e.data[..cap])
        ));
    }
    if ring.next().is_some() {
        return Err("more than one event for one frame".into());
    }
    Ok(())
}

fn run_corpus(events: bool) {
    let spec = Spec::load();
    let mut failures = Vec::new();
    let mut ran = 0;
    // One program per policy (a load is the slow part): the sections of a
    // policy run one after the other, the flow and fragment tables emptied
    // and the egress recorder restarted between them.
    // Appliance sections need legs: appliance_verdicts.rs runs them.
    let mut sections: Vec<_> = spec
        .sections
        .iter()
        .filter(|s| !spec.is_appliance(&s.policy))
        .collect();
    let first_seen = |policy: &str| spec.sections.iter().position(|s| s.policy == policy);
    sections.sort_by_key(|s| first_seen(&s.policy));
    let mut current: Option<(&str, Kernel)> = None;
    let mut ring = None;
    for section in sections {
        let k = match &mut current {
            Some((policy, k)) if *policy == section.policy => {
                k.restart_flows();
                k.clear_fragments();
                k
            }
            _ => {
                // The previous program and its pins go first.
                current = None;
                let Some(mut k) = Kernel::new("corpus", &spec.policy(&section.policy)) else {
                    return;
                };
                ring = events.then(|| {
                    k.classifier
                        .set_events(1_000_000, true)
                        .expect("turning events on");
                    k.classifier.take_events_ring().expect("the events ring")
                });
                &mut current.insert((section.policy.as_str(), k)).1
            }
        };
        let mut state = RefState::default();
        for case in &section.cases {
            let frame = &case.bytes;
            ran += 1;
            if case.expect == Expect::Egress {
                k.egress(frame);
                if let Some(flow) = reference::egress_flow(frame, &k.policy) {
                    state.flows.insert(flow);
                }
                continue;
            }
            let got = k.run(frame);
            let mut problems = Vec::new();
            if let Some(r) = ring.as_mut()
                && let Err(e) = check_event(r, frame, &case.expect, got.1)
            {
                problems.push(e);
            }
            problems.extend(verdict_spec::check(k, &case.expect, got));
            let reference = reference::classify(frame, &k.policy, &mut state);
            if reference != got {
                problems.push(format!(
                    "the reference says {} {}",
                    if reference.0 { "pass" } else { "drop" },
                    k.describe(reference.1)
                ));
            }
            if !problems.is_empty() {
                failures.push(format!(
                    "[policy {}] {} ({}): {}\n    {}",
                    section.policy,
                    case.name,
                    case.packet,
                    problems.join("; "),
                    hex(frame)
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} cases of tests/data/verdicts.toml failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!(
        "corpus (events {}): {ran} frames agree with their expectations and the reference",
        if events { "on" } else { "off" }
    );
    assert!(ran > 150, "the corpus ran only {ran} frames");
}
