//! Floors that need no compiler: a program of two instructions,
//! `r0 = ACTION; exit`, loaded with `bpf(BPF_PROG_LOAD)`. The empty TC
//! program is pinned so that aya opens it like any other program (`from_pin`)
//! and runs it in the per-packet rounds through the same code as the rest;
//! the live-frames section runs every program, aya's and these, through
//! [`test_run`] here, which sets what aya's options do not reach for a
//! program it did not load.
//!
//! The XDP floor that returns `XDP_PASS` is built from Rust by the eBPF crate
//! (classifier-ebpf/src/bin/floor.rs); its object is those same two
//! instructions. The empty TC program and an XDP floor that returns
//! `XDP_DROP` are written here instead because the eBPF crates are tuned
//! separately and a benchmark should not add programs to the shipped object.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use aya::programs::SchedClassifier;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_PROG_TYPE_XDP: u32 = 6;

/// `TC_ACT_OK`: what `portguard_egress` returns for every packet.
pub const TC_ACT_OK: u32 = 0;

/// The `BPF_PROG_LOAD` part of `union bpf_attr` (linux/bpf.h), up to
/// `expected_attach_type`; the kernel reads a shorter attr as zero-extended.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The `BPF_OBJ_PIN` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ObjPinAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    pad: u32,
}

/// The `BPF_PROG_TEST_RUN` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    pad: u32,
}

/// What one `BPF_PROG_TEST_RUN` returned.
pub struct TestRunOut {
    /// The program's return value (not set for live frames).
    pub retval: u32,
    /// The kernel's time per run, whole ns.
    pub duration_ns: u32,
}

/// `BPF_PROG_TEST_RUN` of `prog` on `frame`, with a context (`ctx_in`, e.g.
/// a `struct xdp_md`), flags and batch size as given.
pub fn test_run(
    prog: BorrowedFd<'_>,
    frame: &[u8],
    ctx: &[u8],
    repeat: u32,
    flags: u32,
    batch_size: u32,
) -> io::Result<TestRunOut> {
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat,
        ctx_size_in: ctx.len() as u32,
        ctx_in: if ctx.is_empty() {
            0
        } else {
            ctx.as_ptr() as u64
        },
        flags,
        batch_size,
        ..TestRunAttr::default()
    };
    sys_bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    Ok(TestRunOut {
        retval: attr.retval,
        duration_ns: attr.duration,
    })
}

/// `r0 = ret; exit` as two 8-byte instructions (`BPF_ALU64 | BPF_MOV | BPF_K`
/// into r0, then `BPF_JMP | BPF_EXIT`).
fn return_insns(ret: u32) -> [u64; 2] {
    let mov_r0 = 0xb7u64 | (u64::from(ret) << 32);
    let exit = 0x95u64;
    [mov_r0, exit]
}

fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, initialised #[repr(C)] prefix of `union
    // bpf_attr` for `cmd`, and its size is passed with it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Loads `r0 = ret; exit` as a program of `prog_type`.
fn load(prog_type: u32, name: &str, ret: u32) -> Result<OwnedFd> {
    let insns = return_insns(ret);
    let license = c"Dual MIT/GPL";
    let mut attr = ProgLoadAttr {
        prog_type,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..ProgLoadAttr::default()
    };
    if name.len() >= attr.prog_name.len() {
        bail!("program name {name} is longer than 15 bytes");
    }
    attr.prog_name[..name.len()].copy_from_slice(name.as_bytes());
    let fd = sys_bpf(BPF_PROG_LOAD, &mut attr)
        .with_context(|| format!("BPF_PROG_LOAD of {name} (r0 = {ret}; exit)"))?;
    // SAFETY: BPF_PROG_LOAD returned a new file descriptor that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Loads `r0 = ret; exit` as a program of `prog_type` and pins it at `path`.
fn load_and_pin(prog_type: u32, name: &str, ret: u32, path: &Path) -> Result<()> {
    let fd = load(prog_type, name, ret)?;
    let cpath = CString::new(path.as_os_str().as_bytes()).context("pin path")?;
    let mut pin = ObjPinAttr {
        pathname: cpath.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        ..ObjPinAttr::default()
    };
    sys_bpf(BPF_OBJ_PIN, &mut pin)
        .with_context(|| format!("pinning {name} at {}", path.display()))?;
    Ok(())
}

/// A bpffs directory for a bench's pins; emptied and removed on drop.
pub struct PinDir(pub PathBuf);

impl PinDir {
    pub fn new(what: &str) -> Result<PinDir> {
        let dir = PinDir(PathBuf::from(format!(
            "/sys/fs/bpf/portguard-bench-{}-{what}",
            std::process::id()
        )));
        std::fs::create_dir_all(&dir.0).with_context(|| format!("creating {}", dir.0.display()))?;
        Ok(dir)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(&self.0) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// The two-instruction floors, opened through aya.
pub struct RawFloors {
    /// The empty TC (sched_cls) program: returns `TC_ACT_OK`.
    pub tc: SchedClassifier,
    /// An XDP program that only returns `XDP_DROP`: the floor for live
    /// frames that are dropped (an `XDP_PASS` floor sends them up the stack).
    pub xdp_drop: OwnedFd,
    _pins: PinDir,
}

impl RawFloors {
    pub fn load() -> Result<RawFloors> {
        let pins = PinDir::new("floors")?;
        let tc_path = pins.0.join("tc_floor");
        load_and_pin(BPF_PROG_TYPE_SCHED_CLS, "tc_floor", TC_ACT_OK, &tc_path)?;
        let tc = SchedClassifier::from_pin(&tc_path).context("opening the empty TC program")?;
        let xdp_drop = load(
            BPF_PROG_TYPE_XDP,
            "xdp_drop_floor",
            portguard_testsupport::kernel::XDP_DROP,
        )?;
        Ok(RawFloors {
            tc,
            xdp_drop,
            _pins: pins,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_insns_encode_mov_r0_imm_then_exit() {
        // The bytes of the `xdp` section of the Rust-built floor object.
        let bytes: Vec<u8> = return_insns(2)
            .iter()
            .flat_map(|i| i.to_le_bytes())
            .collect();
        assert_eq!(
            bytes,
            [
                0xb7, 0, 0, 0, 2, 0, 0, 0, //
                0x95, 0, 0, 0, 0, 0, 0, 0
            ],
            "r0 = 2; exit must encode as in the kernel's BPF_MOV64_IMM and BPF_EXIT_INSN"
        );
    }

    #[test]
    fn attrs_have_the_kernels_layout() {
        assert_eq!(
            size_of::<ProgLoadAttr>(),
            72,
            "BPF_PROG_LOAD attr up to expected_attach_type"
        );
        assert_eq!(
            std::mem::offset_of!(ProgLoadAttr, prog_name),
            48,
            "prog_name offset"
        );
        assert_eq!(size_of::<ObjPinAttr>(), 24, "BPF_OBJ_PIN attr");
        assert_eq!(
            std::mem::offset_of!(TestRunAttr, flags),
            64,
            "BPF_PROG_TEST_RUN flags offset"
        );
        assert_eq!(
            std::mem::offset_of!(TestRunAttr, batch_size),
            72,
            "BPF_PROG_TEST_RUN batch_size offset"
        );
    }
}
