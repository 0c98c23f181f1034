//! What the fidelity tests share: a published row as the catalog should
//! hold it, and the words of the documents' protocol and port cells.

use portguard::catalog::{Direction, EffectiveRule, Protocol};

/// One published row as the catalog should hold it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    pub role: String,
    pub direction: Direction,
    pub protocol: Protocol,
    pub start: u16,
    pub end: u16,
}

/// The key of a catalog rule.
pub fn key_of(r: &EffectiveRule) -> Key {
    Key {
        role: r.role.clone(),
        direction: r.direction,
        protocol: r.protocol,
        start: r.port_start,
        end: r.port_end,
    }
}

/// `TCP` or `UDP`, as the tables write it.
pub fn protocol(word: &str) -> Protocol {
    match word {
        "TCP" => Protocol::Tcp,
        "UDP" => Protocol::Udp,
        other => panic!("`{other}` is neither TCP nor UDP"),
    }
}

/// `5061` or `50000-59999`.
pub fn ports(cell: &str) -> (u16, u16) {
    let parse = |s: &str| {
        s.trim()
            .parse::<u16>()
            .unwrap_or_else(|e| panic!("port `{s}` of `{cell}`: {e}"))
    };
    match cell.split_once('-') {
        Some((a, b)) => (parse(a), parse(b)),
        None => (parse(cell), parse(cell)),
    }
}
