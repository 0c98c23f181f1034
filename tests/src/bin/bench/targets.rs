//! Goals judged from the figures of one run. Issue 14's: the packet path
//! against xdp-filter's `dny_udp` and against the floor, and the egress
//! recorder against an empty TC program. Issue 11's: a forwarded packet
//! against today's local one.

use crate::report::Target;

/// (portguard − floor) / (dny_udp − floor) on each packet.
pub const ABOVE_FLOOR_VS_DNY_UDP: f64 = 1.5;
/// portguard / floor on the allowed IPv4 packet.
pub const ALLOWED_VS_FLOOR: f64 = 1.3;
/// portguard_egress / empty TC program on an established flow.
pub const EGRESS_VS_TC_FLOOR: f64 = 1.5;

const ISSUE: u32 = 14;

/// One packet shape measured on portguard and on `dny_udp`, ns per packet.
pub struct Pair<'a> {
    pub packet: &'a str,
    pub portguard: f64,
    pub dny_udp: f64,
}

/// portguard's cost above the floor against `dny_udp`'s, per packet. A
/// `dny_udp` that does not rise above the floor leaves nothing to divide by:
/// the target is then missed, with the figures that say why.
pub fn above_floor(floor: f64, pairs: &[Pair<'_>]) -> Vec<Target> {
    pairs
        .iter()
        .map(|p| {
            let (pg, xf) = (p.portguard - floor, p.dny_udp - floor);
            let what = format!(
                "{}: portguard's ns above the floor ≤ {ABOVE_FLOOR_VS_DNY_UDP}x xdp-filter dny_udp's",
                p.packet
            );
            if xf > 0.0 && pg.is_finite() {
                let r = pg / xf;
                Target::new(
                    ISSUE,
                    &what,
                    format!("{r:.2}x ({pg:.2} vs {xf:.2} ns above {floor:.2} ns)"),
                    r <= ABOVE_FLOOR_VS_DNY_UDP,
                )
            } else {
                Target::new(
                    ISSUE,
                    &what,
                    format!(
                        "no ratio: dny_udp {:.2} ns is not above the floor {floor:.2} ns (portguard {pg:.2} ns above)",
                        p.dny_udp
                    ),
                    false,
                )
            }
        })
        .collect()
}

/// The allowed IPv4 packet against the floor, with `dny_udp`'s own ratio
/// on the same packet beside it: what a one-lookup filter costs here says
/// whether the goal can be met on this machine at all.
pub fn allowed_vs_floor(floor: f64, allowed: f64, dny_udp: f64) -> Target {
    let r = allowed / floor;
    Target::new(
        ISSUE,
        &format!("allowed IPv4 UDP: portguard ≤ {ALLOWED_VS_FLOOR}x the empty XDP program"),
        format!(
            "{r:.2}x ({allowed:.2} ns vs {floor:.2} ns; xdp-filter dny_udp {:.2}x)",
            dny_udp / floor
        ),
        floor > 0.0 && r <= ALLOWED_VS_FLOOR,
    )
}

/// The egress recorder on an established flow against the empty TC program.
pub fn egress(tc_floor: f64, packet: &str, recorder: f64) -> Target {
    let r = recorder / tc_floor;
    Target::new(
        ISSUE,
        &format!(
            "egress recorder, {packet} on an established flow: ≤ {EGRESS_VS_TC_FLOOR}x the empty TC program"
        ),
        format!("{r:.2}x ({recorder:.2} ns vs {tc_floor:.2} ns)"),
        tc_floor > 0.0 && r <= EGRESS_VS_TC_FLOOR,
    )
}

/// Issue 11: a forwarded allowed packet (appliance mode) costs no more than
/// the local allowed packet of host mode; both are also shown above the floor.
pub fn forwarded_vs_local(floor: f64, forwarded: f64, local: f64) -> Target {
    Target::new(
        11,
        "appliance mode: a forwarded allowed UDP packet costs no more than host mode's local one",
        format!(
            "{forwarded:.2} ns vs {local:.2} ns ({:.2} vs {:.2} ns above the floor)",
            forwarded - floor,
            local - floor
        ),
        forwarded <= local,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Report;

    fn table(targets: Vec<Target>) -> String {
        let mut r = Report::default();
        for t in targets {
            r.target(t);
        }
        r.targets_table()
    }

    #[test]
    fn above_floor_divides_the_costs_above_the_floor_and_judges_each_packet() {
        // The issue's own figures: floor 30.0, dny_udp 41.6 (11.6 above).
        let t = table(above_floor(
            30.0,
            &[
                Pair {
                    packet: "allowed",
                    portguard: 62.8,
                    dny_udp: 41.6,
                },
                Pair {
                    packet: "dropped",
                    portguard: 48.0,
                    dny_udp: 42.0,
                },
            ],
        ));
        let rows: Vec<&str> = t.lines().skip(2).collect();
        assert_eq!(rows.len(), 2, "one row per packet in\n{t}");
        assert!(
            rows[0].starts_with("| 14 | allowed:")
                && rows[0].contains("2.83x (32.80 vs 11.60 ns above 30.00 ns)")
                && rows[0].ends_with("| **missed** |"),
            "32.8 / 11.6 = 2.83 > 1.5 must be missed: {}",
            rows[0]
        );
        assert!(
            rows[1].contains("1.50x (18.00 vs 12.00 ns above 30.00 ns)")
                && rows[1].ends_with("| met |"),
            "18 / 12 = 1.5 is within 1.5: {}",
            rows[1]
        );
    }

    #[test]
    fn a_dny_udp_at_or_below_the_floor_gives_no_ratio_and_misses() {
        let t = table(above_floor(
            30.0,
            &[Pair {
                packet: "IPv6",
                portguard: 31.0,
                dny_udp: 29.5,
            }],
        ));
        assert!(
            t.contains("no ratio: dny_udp 29.50 ns is not above the floor 30.00 ns")
                && t.contains("**missed**"),
            "a negative denominator must not turn into a met target:\n{t}"
        );
    }

    #[test]
    fn a_forwarded_packet_meets_its_target_only_at_or_below_the_local_one() {
        let t = table(vec![
            forwarded_vs_local(10.0, 40.0, 40.0),
            forwarded_vs_local(10.0, 40.5, 40.0),
        ]);
        let rows: Vec<&str> = t.lines().skip(2).collect();
        assert!(
            rows[0].starts_with("| 11 |")
                && rows[0].contains("40.00 ns vs 40.00 ns (30.00 vs 30.00 ns above the floor)")
                && rows[0].ends_with("| met |"),
            "equal costs meet \"no more than\": {}",
            rows[0]
        );
        assert!(
            rows[1].ends_with("| **missed** |"),
            "half a ns more misses: {}",
            rows[1]
        );
    }

    #[test]
    fn allowed_and_egress_are_judged_against_their_own_floor() {
        let t = table(vec![
            allowed_vs_floor(30.0, 39.0, 41.6),
            allowed_vs_floor(30.0, 39.1, 41.6),
            egress(20.0, "UDP", 30.0),
            egress(20.0, "TCP ACK", 41.0),
        ]);
        let rows: Vec<&str> = t.lines().skip(2).collect();
        let verdicts: Vec<bool> = rows.iter().map(|r| r.ends_with("| met |")).collect();
        assert_eq!(
            verdicts,
            [true, false, true, false],
            "1.30x met, 1.30333x missed, 1.50x met, 2.05x missed:\n{t}"
        );
        assert!(
            rows[0].contains("1.30x (39.00 ns vs 30.00 ns; xdp-filter dny_udp 1.39x)"),
            "dny_udp's own ratio stands beside portguard's: {}",
            rows[0]
        );
        assert!(
            rows[2].contains("1.50x (30.00 ns vs 20.00 ns)"),
            "{}",
            rows[2]
        );
    }
}
