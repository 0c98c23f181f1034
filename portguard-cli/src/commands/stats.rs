//! `portguard stats`: counters read straight from the pinned maps, so it
//! works without talking to the daemon and after a crash.

use std::path::Path;

use crate::cli::StatsArgs;
use portguard::{exit, loader, pinned::PinnedInstance};

pub fn stats(args: StatsArgs) -> u8 {
    if let Some(i) = &args.iface
        && let Err(e) = portguard::iface::validate(i)
    {
        eprintln!("portguard stats: {e}");
        return exit::USAGE;
    }
    let root = args.bpffs.join("portguard");
    let ifaces: Vec<String> = match &args.iface {
        Some(i) => vec![i.clone()],
        None => match std::fs::read_dir(&root) {
            Ok(entries) => entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| portguard::iface::validate(name).is_ok())
                .collect(),
            Err(_) => Vec::new(),
        },
    };
    if ifaces.is_empty() {
        eprintln!(
            "portguard stats: no running instance (nothing pinned under {})",
            root.display()
        );
        return exit::FAILURE;
    }
    let mut code = exit::OK;
    for iface in ifaces {
        match one(&args.bpffs, &iface) {
            Ok(table) => println!("{iface}\n{table}\n"),
            Err(e) => {
                eprintln!("portguard stats --iface {iface}: {e}");
                code = if args.iface.is_some()
                    && PinnedInstance::find(&args.bpffs, &iface).is_none()
                {
                    exit::USAGE
                } else {
                    exit::FAILURE
                };
            }
        }
    }
    code
}

fn one(bpffs: &Path, iface: &str) -> Result<String, String> {
    let Some(instance) = PinnedInstance::find(bpffs, iface) else {
        return Err(format!(
            "no instance on {iface} (nothing pinned under {})",
            loader::pin_dir(bpffs, iface).display()
        ));
    };
    let st = &instance.state;
    let snaps = instance.snapshots()?;
    let mut out = format!(
        "mode {} ({} XDP), catalog generation {}",
        if st.mode.is_empty() {
            "unknown"
        } else {
            &st.mode
        },
        if st.xdp_mode.is_empty() {
            "unknown"
        } else {
            &st.xdp_mode
        },
        st.catalog_generation,
    );
    if snaps.len() == 1 {
        out.push('\n');
        out.push_str(&snaps[0].1.table());
    } else {
        // An appliance: one table per leg, as the metrics label them.
        for (leg, snap) in &snaps {
            out.push_str(&format!("\n\nleg {leg}\n{}", snap.table()));
        }
    }
    match portguard::flow_table::figures_from_pins(&loader::pin_dir(bpffs, iface)) {
        Ok(f) => {
            out.push_str("\n\n");
            out.push_str(&flow_table_text(&f));
        }
        Err(e) => out.push_str(&format!("\n\nflow tables: unreadable ({e})")),
    }
    Ok(out)
}

/// The flow and fragment tables: fill, evictions and refusals.
fn flow_table_text(f: &portguard::flow_table::FlowFigures) -> String {
    let mut out = format!(
        "{:<24} {:>10} {:>10} {:>6} {:>12} {:>12}",
        "table", "entries", "capacity", "fill", "evictions", "refusals"
    );
    for (table, kind, t) in f.rows() {
        let name = match kind {
            Some(k) => format!("{table} ({k})"),
            None => table.to_string(),
        };
        let fill = if t.capacity == 0 {
            0.0
        } else {
            100.0 * t.entries as f64 / t.capacity as f64
        };
        out.push_str(&format!(
            "\n{name:<24} {:>10} {:>10} {fill:>5.1}% {:>12} {:>12}",
            t.entries, t.capacity, t.evictions, t.refusals
        ));
    }
    out
}
