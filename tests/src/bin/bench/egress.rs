//! The TC egress recorder (`portguard_egress`) on a flow it has already
//! recorded: the per-packet cost a media server pays on every RTP datagram it
//! sends, measured against an empty TC program in the per-packet rounds.
//!
//! The recorder shares FLOWS and FLOW_PORTS with the XDP program through
//! pins, as the daemon's two programs do; the XDP side is used once to prove
//! that the flow is established (its reply passes as `established` and was
//! dropped before).

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    programs::{SchedClassifier, TestRun as _, TestRunOptions},
};
use classifier_common::{Reason, TC_EGRESS_PROGRAM, decode_reason_counter, map_names};
use portguard::{ebpf_object, loader::Classifier, policy::CompiledPolicy};
use portguard_testsupport::{
    frames::{Packet, TCP_ACK, TCP_SYN},
    kernel::{XDP_DROP, XDP_PASS},
};

use crate::rawprog::{PinDir, TC_ACT_OK};

/// The host that sends, and the peer it sends to.
const LOCAL: &str = "198.18.0.2";
const REMOTE: &str = "198.18.0.1";
/// Local ports the bench's policy does not open, so that a reply can only
/// pass on the recorded flow.
const LOCAL_UDP_PORT: u16 = 40_000;
const LOCAL_TCP_PORT: u16 = 40_001;
/// The peer's RTP port and the SIP-over-TLS port the host connects to.
const REMOTE_UDP_PORT: u16 = 50_000;
const REMOTE_TCP_PORT: u16 = 5_061;

/// The frames of one egress case: what opens the flow (run once before the
/// rounds), the packet that is measured, and the reply that proves the flow.
pub struct EgressFrames {
    pub open: Vec<u8>,
    pub measured: Vec<u8>,
    pub reply: Vec<u8>,
}

/// One RTP datagram out (64 bytes): the flow is opened by the same datagram.
pub fn rtp() -> EgressFrames {
    let out = Packet::udp(LOCAL, REMOTE, LOCAL_UDP_PORT, REMOTE_UDP_PORT)
        .payload(22)
        .build();
    EgressFrames {
        open: out.clone(),
        measured: out,
        reply: Packet::udp(REMOTE, LOCAL, REMOTE_UDP_PORT, LOCAL_UDP_PORT)
            .payload(22)
            .build(),
    }
}

/// A TCP ACK (64 bytes) of a connection the host opened with a SYN.
pub fn tcp_ack() -> EgressFrames {
    let tcp = |flags| {
        Packet::tcp_flags(LOCAL, REMOTE, LOCAL_TCP_PORT, REMOTE_TCP_PORT, flags)
            .payload(10)
            .build()
    };
    EgressFrames {
        open: tcp(TCP_SYN),
        measured: tcp(TCP_ACK),
        reply: Packet::tcp_flags(
            REMOTE,
            LOCAL,
            REMOTE_TCP_PORT,
            LOCAL_TCP_PORT,
            TCP_SYN | TCP_ACK,
        )
        .payload(10)
        .build(),
    }
}

/// The answers XDP sees on the TCP flow of [`tcp_ack`]: the peer's SYN-ACK
/// (the flow still unconfirmed: two table lookups) and its ACK once the
/// flow is confirmed (one lookup).
pub fn tcp_answers() -> (Vec<u8>, Vec<u8>) {
    let tcp = |flags| {
        Packet::tcp_flags(REMOTE, LOCAL, REMOTE_TCP_PORT, LOCAL_TCP_PORT, flags)
            .payload(10)
            .build()
    };
    (tcp(TCP_SYN | TCP_ACK), tcp(TCP_ACK))
}

/// portguard's two programs on shared, pinned maps.
pub struct Egress {
    xdp: Classifier,
    tc: Ebpf,
    _pins: PinDir,
}

impl Egress {
    /// `name` tells apart the pin directories of two instances.
    pub fn load(name: &str, policy: &CompiledPolicy) -> Result<Egress> {
        let pins = PinDir::new(name)?;
        let mut xdp = Classifier::load(Some(&pins.0)).context("loading portguard (pinned)")?;
        xdp.install(policy, 1)?;
        let mut loader = EbpfLoader::new();
        let paths: Vec<(&str, std::path::PathBuf)> = map_names::ALL
            .iter()
            .map(|n| (*n, pins.0.join(n)))
            .collect();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut tc = loader
            .load(ebpf_object::PORTGUARD)
            .context("loading the object again on the pinned maps")?;
        let prog: &mut SchedClassifier = tc
            .program_mut(TC_EGRESS_PROGRAM)
            .with_context(|| format!("no {TC_EGRESS_PROGRAM} in the object"))?
            .try_into()?;
        prog.load()
            .with_context(|| format!("verifying {TC_EGRESS_PROGRAM}"))?;
        Ok(Egress {
            xdp,
            tc,
            _pins: pins,
        })
    }

    /// The XDP program that shares the recorder's tables.
    pub fn xdp(&self) -> Result<&aya::programs::Xdp> {
        Ok(self.xdp.xdp_ref()?)
    }

    /// Confirms the TCP flow `frames` opened: the peer's ACK (past the
    /// handshake) passes as `established` and moves the entry into the
    /// confirmed table, which then holds exactly one flow.
    pub fn confirm(&mut self, ack: &[u8]) -> Result<()> {
        self.xdp.set_trace(true)?;
        let action = self.xdp.test_run(ack, 1)?.return_value;
        let reason = decode_reason_counter(self.xdp.last_counter()?).map(|(r, _, _)| r);
        self.xdp.set_trace(false)?;
        if action != XDP_PASS || reason != Some(Reason::Established) {
            bail!("the peer's ACK returned {action} ({reason:?}), not a pass as established");
        }
        let path = self._pins.0.join(map_names::FLOWS);
        let map = aya::maps::Map::HashMap(
            aya::maps::MapData::from_pin(&path)
                .with_context(|| format!("opening {}", path.display()))?,
        );
        let flows: aya::maps::HashMap<_, classifier_common::FlowKey, classifier_common::FlowState> =
            aya::maps::HashMap::try_from(map)?;
        let confirmed = flows.keys().filter(Result::is_ok).count();
        if confirmed != 1 {
            bail!("after the peer's ACK the confirmed table holds {confirmed} flows, not 1");
        }
        Ok(())
    }

    pub fn tc(&self) -> Result<&SchedClassifier> {
        Ok(self
            .tc
            .program(TC_EGRESS_PROGRAM)
            .with_context(|| format!("no {TC_EGRESS_PROGRAM}"))?
            .try_into()?)
    }

    /// Sends `frames.open` through the recorder once, and proves the flow is
    /// there: the reply was dropped before and passes as `established` after.
    pub fn establish(&mut self, what: &str, frames: &EgressFrames) -> Result<()> {
        self.xdp.set_trace(true)?;
        let before = self.xdp.test_run(&frames.reply, 1)?.return_value;
        if before != XDP_DROP {
            bail!(
                "{what}: the reply passed ({before}) before any flow was recorded: its local port is open, so it cannot prove the flow"
            );
        }
        let opts = TestRunOptions {
            data_in: Some(&frames.open),
            repeat: 1,
            ..TestRunOptions::default()
        };
        let ret = self
            .tc()?
            .test_run(opts)
            .with_context(|| format!("{what}: running {TC_EGRESS_PROGRAM} once"))?
            .return_value;
        if ret != TC_ACT_OK {
            bail!("{what}: {TC_EGRESS_PROGRAM} returned {ret}, not TC_ACT_OK");
        }
        let after = self.xdp.test_run(&frames.reply, 1)?.return_value;
        let counter = self.xdp.last_counter()?;
        let reason = decode_reason_counter(counter).map(|(r, _, _)| r);
        if after != XDP_PASS || reason != Some(Reason::Established) {
            bail!(
                "{what}: after the recorder ran, the reply returned {after} with reason {:?}, not a pass as established",
                reason.map(Reason::name)
            );
        }
        self.xdp.set_trace(false)?;
        Ok(())
    }
}
