//! The packet path's anomaly lines, named. The XDP programs log an anomaly
//! reason's counter when this CPU's count of it reaches a power of two, as
//! two numbers (`anomaly counter=N packets=M`): a reason's name chosen in
//! the kernel was a path per reason for the verifier to walk from every
//! exit. [`AnomalyLines`] sits between aya-log and the daemon's logger and
//! turns the numbers into the reason, verdict and protocol class, the way
//! [`super::record`] reads an event's headers from its bytes.

use classifier_common::{PCLASS_NAMES, Verdict, decode_media_counter, decode_reason_counter};

/// The log the eBPF side's lines go through: anomaly lines named, anything
/// else passed on as it came.
pub(crate) struct AnomalyLines;

/// The one instance the loader hands to aya-log.
pub(crate) static ANOMALY_LINES: AnomalyLines = AnomalyLines;

impl log::Log for AnomalyLines {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        log::logger().enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        let text = record.args().to_string();
        match describe(&text) {
            Some(line) => log::logger().log(
                &log::Record::builder()
                    .args(format_args!("{line}"))
                    .level(record.level())
                    .target(record.target())
                    .module_path(record.module_path())
                    .file(record.file())
                    .line(record.line())
                    .build(),
            ),
            None => log::logger().log(record),
        }
    }

    fn flush(&self) {
        log::logger().flush();
    }
}

/// The line an anomaly record of the packet path stands for; `None` for a
/// text that is not one.
pub(crate) fn describe(text: &str) -> Option<String> {
    let rest = text.strip_prefix("anomaly counter=")?;
    let (counter, packets) = rest.split_once(" packets=")?;
    let counter: u32 = counter.parse().ok()?;
    let packets: u64 = packets.parse().ok()?;
    if let Some((reason, verdict, pclass)) = decode_reason_counter(counter) {
        let class = PCLASS_NAMES
            .get(pclass as usize)
            .copied()
            .unwrap_or("other");
        return Some(format!(
            "portguard: {packets} {class} packets {} as {} on one CPU",
            verdict_words(Verdict::from_index(verdict)),
            reason.name(),
        ));
    }
    if let Some((media, verdict, reason)) = decode_media_counter(counter) {
        return Some(format!(
            "portguard: {packets} packets {} as {} by media rule {media} on one CPU",
            verdict_words(Some(verdict)),
            reason.name(),
        ));
    }
    Some(format!(
        "portguard: {packets} packets under counter {counter} on one CPU"
    ))
}

fn verdict_words(verdict: Option<Verdict>) -> &'static str {
    match verdict {
        Some(Verdict::Pass) => "passed",
        Some(Verdict::Drop) => "dropped",
        Some(Verdict::WouldDrop) => "would have been dropped (monitor)",
        None => "counted",
    }
}

#[cfg(test)]
mod tests {
    use classifier_common::{PCLASS_UDP, Reason, media_reason, reason_counter_index};

    use super::*;

    #[test]
    fn a_reason_counter_is_named_with_its_verdict_and_class() {
        let counter =
            reason_counter_index(Reason::Malformed as u32, Verdict::Drop as u32, PCLASS_UDP);
        assert_eq!(
            describe(&format!("anomaly counter={counter} packets=1024")).as_deref(),
            Some("portguard: 1024 udp packets dropped as malformed on one CPU")
        );
        let monitored =
            reason_counter_index(Reason::FragmentOrphan as u32, Verdict::WouldDrop as u32, 3);
        assert_eq!(
            describe(&format!("anomaly counter={monitored} packets=2")).as_deref(),
            Some(
                "portguard: 2 other packets would have been dropped (monitor) as fragment_orphan on one CPU"
            )
        );
    }

    #[test]
    fn a_media_rule_counter_names_its_rule() {
        let counter = reason_counter_index(media_reason(4, 1), Verdict::Drop as u32, PCLASS_UDP);
        assert_eq!(
            describe(&format!("anomaly counter={counter} packets=64")).as_deref(),
            Some("portguard: 64 packets dropped as reflection by media rule 4 on one CPU")
        );
    }

    #[test]
    fn other_lines_are_left_alone() {
        for text in [
            "anomaly counter=x packets=1",
            "anomaly counter=1",
            "something else",
            "",
        ] {
            assert_eq!(describe(text), None, "{text:?}");
        }
    }
}
