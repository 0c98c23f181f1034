//! Role inclusions and the one-rule-per-port assignment.

use super::{
    model::{
        Catalog, CatalogError, Diagnostic, Direction, EffectiveRule, MatchSide, PortAssignment,
        Protocol, Severity,
    },
    parse::known_roles_hint,
};

/// The requested roles and everything they include, depth first, each once.
pub(super) fn closure(catalog: &Catalog, roles: &[String]) -> Result<Vec<String>, CatalogError> {
    let known = catalog.role_ids();
    let unknown: Vec<Diagnostic> = roles
        .iter()
        .filter(|r| !known.contains(&r.as_str()))
        .map(|r| Diagnostic {
            origin: "--role".into(),
            line: 0,
            column: 0,
            severity: Severity::Error,
            message: format!("unknown role `{r}`; {}", known_roles_hint(&known)),
            hint: None,
        })
        .collect();
    if !unknown.is_empty() {
        return Err(CatalogError {
            diagnostics: unknown,
        });
    }
    let mut out: Vec<String> = Vec::new();
    let mut stack: Vec<&str> = roles.iter().rev().map(String::as_str).collect();
    while let Some(role) = stack.pop() {
        if out.iter().any(|r| r == role) {
            continue;
        }
        out.push(role.to_string());
        if let Some(def) = catalog.role(role) {
            // Reversed so that the first include is visited first; cycles were refused at parse time,
            // and the `out` check above stops them anyway.
            stack.extend(def.includes.iter().rev().map(String::as_str));
        }
    }
    Ok(out)
}

/// For each protocol, the destination ports of `rules`' inbound rules split
/// into ranges, each owned by exactly one rule: the narrowest range wins, then
/// the earlier rule. Source-side rules compile to nothing, and so do outbound
/// rules: they are the host's own connections, whose replies the flow
/// recorder lets back in. Sorted by (protocol, start).
pub fn assign_ports(rules: &[EffectiveRule]) -> Vec<PortAssignment> {
    let mut out: Vec<PortAssignment> = Vec::new();
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        let candidates: Vec<(usize, &EffectiveRule)> = rules
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                r.protocol == protocol
                    && r.side == MatchSide::Destination
                    && r.direction == Direction::Inbound
                    && r.port_start <= r.port_end
            })
            .collect();
        // Between two consecutive boundaries the set of covering rules is constant.
        let mut bounds: Vec<u32> = candidates
            .iter()
            .flat_map(|(_, r)| [u32::from(r.port_start), u32::from(r.port_end) + 1])
            .collect();
        bounds.sort_unstable();
        bounds.dedup();
        for w in bounds.windows(2) {
            let (lo, hi) = (w[0], w[1] - 1);
            let best = candidates
                .iter()
                .filter(|(_, r)| u32::from(r.port_start) <= lo && hi <= u32::from(r.port_end))
                .min_by_key(|(i, r)| (r.width(), *i));
            let Some(&(rule, _)) = best else { continue };
            // Bounds come from u16 ports, and hi < the largest bound, so both fit.
            let (Ok(start), Ok(end)) = (u16::try_from(lo), u16::try_from(hi)) else {
                continue;
            };
            match out.last_mut() {
                Some(last)
                    if last.protocol == protocol
                        && last.rule == rule
                        && u32::from(last.end) + 1 == lo =>
                {
                    last.end = end;
                }
                _ => out.push(PortAssignment {
                    protocol,
                    start,
                    end,
                    rule,
                }),
            }
        }
    }
    out
}
