//! Two namespaces joined by a veth pair, the server side for portguard.

use std::{
    fs,
    net::{Ipv4Addr, UdpSocket},
    path::{Path, PathBuf},
    time::Duration,
};

use super::{Daemon, MEDIA, METRICS, ROLES, Scrape, Stream, http_get, ok, ok_any};
use crate::netns::{NetNs, addr, in_netns, veth_pair};

pub fn pin_dir(iface: &str) -> PathBuf {
    PathBuf::from("/sys/fs/bpf/portguard").join(iface)
}

pub fn state_file(iface: &str) -> PathBuf {
    PathBuf::from("/run/portguard").join(format!("{iface}.json"))
}

/// Removes pins and state a crashed earlier run of the same test left
/// (interface names are unique to each test).
pub fn forget_iface(iface: &str) {
    let _ = fs::remove_dir_all(pin_dir(iface));
    let _ = fs::remove_file(state_file(iface));
    // What a killed daemon leaves next to its state: the events control
    // socket and the instance lock file (harmless, but not ours to keep).
    for ext in ["sock", "lock"] {
        let _ = fs::remove_file(PathBuf::from("/run/portguard").join(format!("{iface}.{ext}")));
    }
}

/// Two namespaces joined by a veth pair: `client` at 198.18.N.1, `server`
/// at 198.18.N.2, interfaces `<tag>c` and `<tag>s`. On drop, whatever portguard
/// left for the server interface is removed too.
pub struct Pair {
    pub client: NetNs,
    pub server: NetNs,
    pub client_if: String,
    pub server_if: String,
    pub client_ip: Ipv4Addr,
    pub server_ip: Ipv4Addr,
}

impl Pair {
    pub fn new(tag: &str, subnet: u8) -> Pair {
        assert!(tag.len() <= 12, "interface tag {tag} too long");
        let client = ok_any("client namespace", NetNs::new(&format!("{tag}-c")));
        let server = ok_any("server namespace", NetNs::new(&format!("{tag}-s")));
        let (client_if, server_if) = (format!("{tag}c"), format!("{tag}s"));
        forget_iface(&server_if);
        let pair = Pair {
            client,
            server,
            client_if,
            server_if,
            client_ip: Ipv4Addr::new(198, 18, subnet, 1),
            server_ip: Ipv4Addr::new(198, 18, subnet, 2),
        };
        pair.link();
        pair
    }

    /// Creates the veth pair and its addresses: at start, and again after a
    /// test deleted the interface under a running daemon.
    pub fn link(&self) {
        ok_any(
            "veth pair",
            veth_pair(&self.client, &self.client_if, &self.server, &self.server_if),
        );
        ok_any(
            "client address",
            addr(
                &self.client,
                &self.client_if,
                &format!("{}/24", self.client_ip),
            ),
        );
        ok_any(
            "server address",
            addr(
                &self.server,
                &self.server_if,
                &format!("{}/24", self.server_ip),
            ),
        );
    }

    /// `ip -n SERVER link show dev IF`.
    pub fn server_link(&self) -> String {
        ok_any(
            "ip link show",
            self.server.ip(&["link", "show", "dev", &self.server_if]),
        )
    }

    /// Whether an XDP program is attached to the server interface.
    pub fn xdp_attached(&self) -> bool {
        self.server_link().contains("prog/xdp")
    }

    /// The id of the XDP program on the server interface.
    pub fn xdp_prog_id(&self) -> Option<u32> {
        let link = self.server_link();
        let rest = link.split("prog/xdp id ").nth(1)?;
        rest.split_whitespace().next()?.parse().ok()
    }

    /// `run --iface <server_if> --role ROLES --client-media-ports MEDIA
    /// --xdp-mode native --metrics-addr METRICS` plus `extra`.
    pub fn run_args(&self, extra: &[&str]) -> Vec<String> {
        #[rustfmt::skip]
        let mut args: Vec<String> = [
            "run", "--iface", &self.server_if, "--role", ROLES, "--client-media-ports", MEDIA,
            "--xdp-mode", "native", "--metrics-addr", METRICS,
            // The port and flow behaviour is what these tests watch; their
            // datagrams carry text, which the media rules' payload check
            // (tests/tests/policy/media.rs) would refuse.
            "--media-check", "off",
        ]
        .iter()
        .map(|s| (*s).to_string())
        .collect();
        args.extend(extra.iter().map(|s| (*s).to_string()));
        args
    }

    /// `portguard` + `run_args(extra)`, waited for until it is attached.
    pub fn start(&self, dir: &Path, name: &str, extra: &[&str]) -> Daemon {
        self.start_wrapped(&[], dir, name, extra)
    }

    /// Like `start`, through a wrapper (`setpriv --bounding-set … --`).
    pub fn start_wrapped(
        &self,
        wrapper: &[&str],
        dir: &Path,
        name: &str,
        extra: &[&str],
    ) -> Daemon {
        let args = self.run_args(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut d = Daemon::spawn_wrapped(&self.server, wrapper, &args, dir, name);
        d.wait_ready(self);
        d
    }

    /// Scrapes portguard's metrics endpoint inside the server namespace.
    pub fn scrape(&self) -> Scrape {
        let text = ok_any(
            "setns into the server namespace",
            in_netns(&self.server, || http_get(METRICS, "/metrics")),
        );
        Scrape::parse(&ok("GET /metrics", text))
    }

    /// Sequence-numbered UDP from the client to the server's `port`, at `pps`.
    pub fn stream(&self, port: u16, pps: u32) -> Stream {
        Stream::start(self, port, pps)
    }

    /// Sends `n` datagrams from the client to each of `ports`, paced.
    pub fn send_udp(&self, ports: &[u16], n: u32) {
        let to = self.server_ip;
        let from = self.client_ip;
        ok_any(
            "setns into the client namespace",
            in_netns(&self.client, || {
                let sock = ok("binding in the client", UdpSocket::bind((from, 0)));
                for port in ports {
                    for i in 0..n {
                        ok(
                            "send",
                            sock.send_to(format!("portguard ops {i}").as_bytes(), (to, *port)),
                        );
                        std::thread::sleep(Duration::from_micros(300));
                    }
                }
            }),
        );
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        // An interface portguard still holds through a pinned link keeps the
        // program; the pins go with the test.
        forget_iface(&self.server_if);
    }
}
