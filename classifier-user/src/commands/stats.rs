//! `portguard stats`: counters read straight from the pinned maps, so it
//! works without talking to the daemon and after a crash.

use std::path::Path;

use aya::maps::{Map, MapData, PerCpuArray};
use classifier_common::{Counter, map_names};

use crate::{
    cli::{EXIT_FAILURE, EXIT_OK, EXIT_USAGE, StatsArgs},
    counters,
    loader::{self, LoadError},
    state,
};

pub fn stats(args: StatsArgs) -> u8 {
    if let Some(i) = &args.iface
        && let Err(e) = crate::iface::validate(i)
    {
        eprintln!("portguard stats: {e}");
        return EXIT_USAGE;
    }
    let root = args.bpffs.join("portguard");
    let ifaces: Vec<String> = match &args.iface {
        Some(i) => vec![i.clone()],
        None => match std::fs::read_dir(&root) {
            Ok(entries) => entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| crate::iface::validate(name).is_ok())
                .collect(),
            Err(_) => Vec::new(),
        },
    };
    if ifaces.is_empty() {
        eprintln!(
            "portguard stats: no running instance (nothing pinned under {})",
            root.display()
        );
        return EXIT_FAILURE;
    }
    let mut code = EXIT_OK;
    for iface in ifaces {
        match one(&args.bpffs, &iface) {
            Ok(table) => println!("{iface}\n{table}\n"),
            Err(e) => {
                eprintln!("portguard stats --iface {iface}: {e}");
                code = if args.iface.is_some() && !loader::pin_dir(&args.bpffs, &iface).exists() {
                    EXIT_USAGE
                } else {
                    EXIT_FAILURE
                };
            }
        }
    }
    code
}

fn one(bpffs: &Path, iface: &str) -> Result<String, String> {
    let dir = loader::pin_dir(bpffs, iface);
    if !dir.exists() {
        return Err(format!(
            "no instance on {iface} (nothing pinned under {})",
            dir.display()
        ));
    }
    let st = state::load(&state::path(Path::new(state::RUN_DIR), iface)).unwrap_or_default();
    let registry = st.registry();
    let data = MapData::from_pin(dir.join(map_names::COUNTERS)).map_err(|e| e.to_string())?;
    let map = Map::from_map_data(data).map_err(|e| e.to_string())?;
    let counters: PerCpuArray<MapData, Counter> =
        PerCpuArray::try_from(map).map_err(|e| e.to_string())?;
    let raw = loader::read_counters(&counters, counters::indices(&registry))
        .map_err(|e: LoadError| e.to_string())?;
    let snap = counters::snapshot(&registry, &raw);
    Ok(format!(
        "mode {} ({} XDP), catalog generation {}\n{}",
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
        snap.table()
    ))
}
