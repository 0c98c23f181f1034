//! What the scenarios judge alike: whether a row of traffic arrived as the
//! policy says, the words for how it did not, and the count of what failed.

use super::PeerResult;

/// Whether a row of traffic arrived as it should: all of it, and something
/// was sent, when it is `expected` to; none of it otherwise.
pub fn arrived_as_expected(expected: bool, sent: u32, received: u32) -> bool {
    if expected {
        received == sent && sent > 0
    } else {
        received == 0
    }
}

/// `sent S received R but it is allowed` (or `forbidden`): how a row that
/// did not arrive as expected differs.
pub fn differs(sent: u32, received: u32, allowed: bool) -> String {
    format!(
        "sent {sent} received {received} but it is {}",
        if allowed { "allowed" } else { "forbidden" }
    )
}

/// How many of the (ok, text) checks and of the peers failed.
pub fn failed(checks: &[(bool, String)], peers: &[PeerResult]) -> usize {
    checks.iter().filter(|(ok, _)| !ok).count() + peers.iter().filter(|p| !p.ok).count()
}
