//! Role inclusions and the one-rule-per-port assignment.

use std::collections::{BTreeSet, HashMap, HashSet};

use super::{
    model::{
        Catalog, CatalogError, Diagnostic, Direction, EffectiveRule, MatchSide, PortAssignment,
        Protocol, RoleDef, Severity,
    },
    parse::known_roles_hint,
};

/// The requested roles and everything they include, depth first, each once.
/// Each role and include is visited once (a set of the roles seen and an
/// index by id), so a chain of thousands of roles costs its length.
pub(super) fn closure(catalog: &Catalog, roles: &[String]) -> Result<Vec<String>, CatalogError> {
    let index: HashMap<&str, &RoleDef> = catalog.roles.iter().map(|r| (r.id.as_str(), r)).collect();
    let unknown: Vec<Diagnostic> = roles
        .iter()
        .filter(|r| !index.contains_key(r.as_str()))
        .map(|r| Diagnostic {
            origin: "--role".into(),
            line: 0,
            column: 0,
            severity: Severity::Error,
            message: format!("unknown role `{r}`; {}", known_roles_hint(&catalog.roles)),
            hint: None,
        })
        .collect();
    if !unknown.is_empty() {
        return Err(CatalogError {
            diagnostics: unknown,
        });
    }
    let mut out: Vec<String> = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    let mut stack: Vec<&str> = roles.iter().rev().map(String::as_str).collect();
    while let Some(role) = stack.pop() {
        if !seen.insert(role) {
            continue;
        }
        out.push(role.to_string());
        if let Some(def) = index.get(role) {
            // Reversed so that the first include is visited first; cycles were refused at parse time,
            // and the `seen` check above stops them anyway.
            stack.extend(
                def.includes
                    .iter()
                    .rev()
                    .map(String::as_str)
                    .filter(|r| !seen.contains(r)),
            );
        }
    }
    Ok(out)
}

/// For each protocol, the destination ports of `rules`' inbound rules split
/// into ranges, each owned by exactly one rule: the narrowest range wins, then
/// the earlier rule. Source-side rules compile to nothing, and so do outbound
/// rules: they are the host's own connections, whose replies the flow
/// recorder lets back in. Sorted by (protocol, start).
#[cfg(test)]
pub(crate) fn assign_ports(rules: &[EffectiveRule]) -> Vec<PortAssignment> {
    assign_ports_in(rules, Direction::Inbound)
}

/// [`assign_ports`] for the rules of one direction: appliance mode compiles
/// the outbound rows too, matched against the packet's source address.
pub(crate) fn assign_ports_in(
    rules: &[EffectiveRule],
    direction: Direction,
) -> Vec<PortAssignment> {
    let mut out: Vec<PortAssignment> = Vec::new();
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        let candidates: Vec<(usize, &EffectiveRule)> = rules
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                r.protocol == protocol
                    && r.side == MatchSide::Destination
                    && r.direction == direction
                    && r.port_start <= r.port_end
            })
            .collect();
        // Between two consecutive boundaries the set of covering rules is
        // constant: a sweep keeps it ordered by (width, index), so the winner
        // of each stretch is its first element and the work is n log n.
        let mut events: Vec<(u32, bool, usize)> = candidates
            .iter()
            .flat_map(|&(i, r)| {
                [
                    (u32::from(r.port_start), true, i),
                    (u32::from(r.port_end) + 1, false, i),
                ]
            })
            .collect();
        events.sort_unstable();
        let mut active: BTreeSet<(u32, usize)> = BTreeSet::new();
        let mut e = 0;
        while e < events.len() {
            let lo = events[e].0;
            while e < events.len() && events[e].0 == lo {
                let (_, starts, i) = events[e];
                let key = (rules[i].width(), i);
                if starts {
                    active.insert(key);
                } else {
                    active.remove(&key);
                }
                e += 1;
            }
            let Some(&(_, rule)) = active.first() else {
                continue;
            };
            // The stretch ends before the next boundary; the last boundary is an end.
            let Some(&(next, _, _)) = events.get(e) else {
                continue;
            };
            let hi = next - 1;
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
