//! `cargo xtask bench`: per-packet cost of portguard next to the floor (an
//! empty XDP program) and the peers, measured side by side in one run.

use std::{fmt::Write as _, time::Duration};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    programs::{TestRun, TestRunOptions, Xdp},
};
use portguard::{
    catalog::Catalog,
    ebpf_object,
    frames::{ETH_P_8021Q, Packet},
    loader::Classifier,
    policy::{self, Mgmt, PolicySpec, SlotRegistry},
};

/// Repeats per measurement: the kernel loops in place, so timer overhead is
/// amortised over this many runs.
const REPEAT: u32 = 10_000_000;

struct Row {
    name: String,
    ns: f64,
}

fn time_xdp(xdp: &Xdp, frame: &[u8], repeat: u32) -> Result<(u32, Duration)> {
    let r = xdp
        .test_run(TestRunOptions { data_in: Some(frame), repeat, ..TestRunOptions::default() })
        .context("BPF_PROG_TEST_RUN")?;
    Ok((r.return_value, r.duration))
}

fn pad64(mut f: Vec<u8>) -> Vec<u8> {
    if f.len() < 64 {
        f.resize(64, 0);
    }
    f
}

fn main() -> Result<()> {
    let repeat = std::env::var("PORTGUARD_BENCH_REPEAT").ok().and_then(|s| s.parse().ok()).unwrap_or(REPEAT);
    let mut floor_obj = Ebpf::load(ebpf_object::FLOOR).context("loading the floor program")?;
    let floor: &mut Xdp = floor_obj.program_mut("floor").context("no floor program")?.try_into()?;
    floor.load()?;

    let spec = PolicySpec {
        default_roles: Some(vec!["front-end".into(), "client".into()]),
        mgmt: Mgmt::defaults(),
        client_media: Some((50_000, 50_019)),
        ..PolicySpec::default()
    };
    let mut registry = SlotRegistry::default();
    let compiled = policy::compile(&Catalog::embedded(), &spec, &mut registry)?;
    let mut pg = Classifier::load(None)?;
    pg.install(&compiled, 1)?;

    // 64-byte frames (the Ethernet minimum without FCS).
    let allowed = pad64(Packet::udp("198.18.0.1", "198.18.0.2", 40_000, 50_000).payload(22).build());
    let dropped = pad64(Packet::udp("198.18.0.1", "198.18.0.2", 40_000, 161).payload(22).build());
    let vlan = pad64(Packet::udp("198.18.0.1", "198.18.0.2", 40_000, 50_000).vlan(ETH_P_8021Q, 100).payload(18).build());
    let v6 = pad64(Packet::udp("2001:db8::1", "2001:db8::2", 40_000, 50_000).payload(2).build());
    for (n, f) in [("allowed", &allowed), ("dropped", &dropped), ("vlan", &vlan), ("ipv6", &v6)] {
        if f.len() != 64 {
            bail!("{n} frame is {} bytes, not 64", f.len());
        }
    }

    let floor_xdp: &Xdp = floor_obj.program("floor").context("floor")?.try_into()?;
    let pg_xdp = pg.xdp_ref()?;
    let mut rows = Vec::new();
    // Interleave the measurements so that drift (frequency, other load) hits all alike.
    let mut sums = [0f64; 5];
    let rounds = 3;
    for _ in 0..rounds {
        let cases: [(&Xdp, &[u8], u32); 5] = [
            (floor_xdp, &allowed, 2),
            (pg_xdp, &allowed, 2),
            (pg_xdp, &dropped, 1),
            (pg_xdp, &vlan, 2),
            (pg_xdp, &v6, 2),
        ];
        for (i, (prog, frame, expect)) in cases.iter().enumerate() {
            let (ret, d) = time_xdp(prog, frame, repeat / rounds)?;
            if ret != *expect {
                bail!("case {i} returned {ret}, expected {expect}: the bench would measure the wrong path");
            }
            sums[i] += d.as_secs_f64() * 1e9;
        }
    }
    let names = ["empty XDP program (floor)", "portguard, allowed UDP", "portguard, dropped UDP", "portguard, VLAN-tagged UDP", "portguard, IPv6 UDP"];
    for (i, n) in names.iter().enumerate() {
        rows.push(Row { name: n.to_string(), ns: sums[i] / rounds as f64 });
    }
    let floor_ns = rows[0].ns;
    let mut out = String::new();
    let _ = writeln!(out, "per packet under BPF_PROG_TEST_RUN, 64-byte frames, {repeat} repeats each, one run");
    let _ = writeln!(out, "| program | ns/packet | x floor |");
    let _ = writeln!(out, "|---|---:|---:|");
    for r in &rows {
        let _ = writeln!(out, "| {} | {:.1} | {:.2} |", r.name, r.ns, r.ns / floor_ns);
    }
    print!("{out}");
    Ok(())
}
