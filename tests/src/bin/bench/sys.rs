//! What the kernel says: CPU time from /proc/stat, interface and UDP
//! counters inside a namespace, process memory, the machine itself.

use std::{fmt::Write as _, process::Command};

use anyhow::{Context as _, Result, bail};
use testkit::netns::{NetNs, ns_exec, run};

/// Nanoseconds per USER_HZ tick of /proc/stat (USER_HZ is 100 on Linux).
const NS_PER_TICK: f64 = 1e7;

/// CPU time summed over all CPUs, in ns: softirq, and everything not idle.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu {
    pub softirq_ns: f64,
    pub busy_ns: f64,
}

pub fn cpu() -> Result<Cpu> {
    let stat = std::fs::read_to_string("/proc/stat").context("/proc/stat")?;
    let mut c = Cpu::default();
    for line in stat
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
    {
        // cpuN user nice system idle iowait irq softirq steal guest guest_nice
        let v: Vec<f64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        if v.len() < 8 {
            bail!("unexpected /proc/stat line: {line}");
        }
        c.softirq_ns += v[6] * NS_PER_TICK;
        c.busy_ns += (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) * NS_PER_TICK;
    }
    Ok(c)
}

impl std::ops::Sub for Cpu {
    type Output = Cpu;
    fn sub(self, o: Cpu) -> Cpu {
        Cpu {
            softirq_ns: self.softirq_ns - o.softirq_ns,
            busy_ns: self.busy_ns - o.busy_ns,
        }
    }
}

/// CPU time of the calling thread, ns. `BPF_PROG_TEST_RUN` executes in
/// its caller's context, so this is what the runs cost, preemption excluded.
pub fn thread_cpu_ns() -> Result<f64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out pointer for clock_gettime.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Err(std::io::Error::last_os_error()).context("CLOCK_THREAD_CPUTIME_ID");
    }
    Ok(ts.tv_sec as f64 * 1e9 + ts.tv_nsec as f64)
}

/// An interface's packet counters (`ip -s -j link`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Link {
    pub rx_packets: u64,
    pub rx_dropped: u64,
    pub tx_packets: u64,
    pub tx_dropped: u64,
}

pub fn link(ns: &NetNs, ifname: &str) -> Result<Link> {
    let out = run(Command::new("ip").args(["-n", ns.name(), "-s", "-j", "link", "show", ifname]))?;
    let v: serde_json::Value = serde_json::from_str(&out).context("ip -j output")?;
    let s = &v[0]["stats64"];
    let n = |dir: &str, k: &str| s[dir][k].as_u64().unwrap_or(0);
    Ok(Link {
        rx_packets: n("rx", "packets"),
        rx_dropped: n("rx", "dropped"),
        tx_packets: n("tx", "packets"),
        tx_dropped: n("tx", "dropped"),
    })
}

pub fn mac(ns: &NetNs, ifname: &str) -> Result<[u8; 6]> {
    let out = run(Command::new("ip").args(["-n", ns.name(), "-j", "link", "show", ifname]))?;
    let v: serde_json::Value = serde_json::from_str(&out).context("ip -j output")?;
    let text = v[0]["address"].as_str().context("no address")?;
    let mut mac = [0u8; 6];
    for (i, part) in text.split(':').enumerate().take(6) {
        mac[i] = u8::from_str_radix(part, 16).with_context(|| format!("MAC {text}"))?;
    }
    Ok(mac)
}

/// Datagrams that reached the UDP layer of a namespace (delivered, to a
/// closed port, or in error): what the firewall let through.
pub fn udp_reached(ns: &NetNs) -> Result<u64> {
    let out = run(&mut ns_exec(ns, "cat", &["/proc/net/snmp"]))?;
    let mut lines = out.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        bail!("no Udp: lines in /proc/net/snmp")
    };
    let mut total = 0;
    for (n, v) in names
        .split_whitespace()
        .zip(values.split_whitespace())
        .skip(1)
    {
        if matches!(n, "InDatagrams" | "NoPorts" | "InErrors") {
            total += v.parse::<u64>().with_context(|| format!("Udp {n} = {v}"))?;
        }
    }
    Ok(total)
}

/// Packets the IPv4 layer of a namespace received (`Ip: InReceives`):
/// counted after the check that drops frames addressed to another host.
pub fn ip_in_receives(ns: &NetNs) -> Result<u64> {
    let out = run(&mut ns_exec(ns, "cat", &["/proc/net/snmp"]))?;
    let mut lines = out.lines().filter(|l| l.starts_with("Ip:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        bail!("no Ip: lines in /proc/net/snmp")
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "InReceives")
        .context("no Ip InReceives in /proc/net/snmp")?
        .1
        .parse()
        .context("Ip InReceives")
}

/// VmRSS of a process, in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}

/// One BPF map a process holds open, from /proc/PID/fdinfo.
#[derive(Debug, Default)]
pub struct MapFd {
    pub map_type: u32,
    pub key_size: u64,
    pub value_size: u64,
    pub max_entries: u64,
    pub memlock: u64,
    pub id: u64,
}

pub fn maps_of(pid: u32) -> Result<Vec<MapFd>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))?.flatten() {
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        if !text.contains("map_type:") {
            continue;
        }
        let field = |k: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        out.push(MapFd {
            map_type: field("map_type:") as u32,
            key_size: field("key_size:"),
            value_size: field("value_size:"),
            max_entries: field("max_entries:"),
            memlock: field("memlock:"),
            id: field("map_id:"),
        });
    }
    // The same map may be open twice.
    out.sort_by_key(|m| m.id);
    out.dedup_by_key(|m| m.id);
    Ok(out)
}

/// key + value × max entries; per-CPU maps hold one value per possible CPU.
pub fn formula_bytes(m: &MapFd, ncpus: u64) -> u64 {
    const PERCPU: [u32; 3] = [5, 6, 10]; // PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH
    let value = if PERCPU.contains(&m.map_type) {
        m.value_size.div_ceil(8) * 8 * ncpus
    } else {
        m.value_size
    };
    (m.key_size + value) * m.max_entries
}

fn first_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s.lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_else(|| "not found".into())
}

pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let ncpu = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem = mem
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .unwrap_or("")
        .trim()
        .to_string();
    let kernel = std::fs::read_to_string("/proc/version")
        .unwrap_or_default()
        .trim()
        .to_string();
    let load = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string();
    let mut s = String::new();
    let _ = writeln!(s, "- CPU: {model} × {ncpu}");
    let _ = writeln!(s, "- memory: {mem}");
    let _ = writeln!(s, "- kernel: {kernel}");
    let _ = writeln!(s, "- load average at start: {load}");
    let _ = writeln!(s, "- trafgen: {}", first_line("trafgen", &["-v"]));
    let _ = writeln!(
        s,
        "- xdp-filter: {}",
        first_line(
            "dpkg-query",
            &["-W", "-f", "xdp-tools ${Version}", "xdp-tools"]
        )
    );
    let _ = writeln!(s, "- nft: {}", first_line("nft", &["--version"]));
    s
}
