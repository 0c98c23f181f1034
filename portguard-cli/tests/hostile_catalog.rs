//! Hostile catalogs given to the binary (issue 10, items 3, 9 and 10): each
//! is refused or checked promptly, with bounded memory and bounded output,
//! by `catalog check`, `catalog show|export --catalog` and `run --catalog`.
//!
//! Every child runs under a deadline and is reaped with `wait4`, which gives
//! its own peak RSS (`ru_maxrss`).

use std::{
    fmt::Write as _,
    fs,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Mutex, MutexGuard, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

const BIN: &str = env!("CARGO_BIN_EXE_portguard");
/// Every refusal and every check of a blow-up shape must finish within this.
const DEADLINE: Duration = Duration::from_secs(2);
/// A child's peak RSS may not exceed this.
const MAX_RSS_KIB: i64 = 64 * 1024;
/// Nor its output.
const MAX_OUTPUT: usize = 64 * 1024;

/// An interface name that does not exist: `run` reads the catalog before it
/// looks at the interface, so a bad catalog is refused first.
const NO_IFACE: &str = "pgnoiface0";

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
    max_rss_kib: i64,
    /// This process's resident set when the child was forked.
    parent_rss_kib: i64,
}

impl Outcome {
    fn describe(&self) -> String {
        format!(
            "exit {:?} after {:?}, peak RSS {} KiB (the test's own {} KiB at the fork)\nstdout ({} bytes):\n{}\nstderr ({} bytes):\n{}",
            self.code,
            self.took,
            self.max_rss_kib,
            self.parent_rss_kib,
            self.stdout.len(),
            truncate(&self.stdout),
            self.stderr.len(),
            truncate(&self.stderr)
        )
    }
}

fn truncate(s: &str) -> &str {
    let mut end = s.len().min(4_000);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A directory of its own under the temp dir, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "portguard-hostile-bin-{tag}-{}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn file(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.path(name);
        fs::write(&p, contents).unwrap_or_else(|e| panic!("writing {}: {e}", p.display()));
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The tests of this binary run one at a time, so that no test holds a large
/// catalog text in memory while another forks a child: see [`portguard`].
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs portguard; kills it and panics if it is still running after 10 s
/// (so a blocked or runaway child fails the test instead of hanging it).
///
/// The child's `ru_maxrss` also counts the memory of the process it was
/// forked from (the kernel carries the old address space's high-water mark
/// over `exec`). So the child is forked (`pre_exec` rules out `vfork`, which
/// would bring this process's peak), one at a time, while no other test
/// holds a catalog text (each test drops its text before it runs portguard,
/// and [`serial`] keeps the others out): what is measured is portguard's peak or this
/// process's small resident set at the fork, whichever is larger. It can
/// only overstate portguard's peak.
#[expect(
    clippy::zombie_processes,
    reason = "the child is reaped with wait4, which also gives its rusage"
)]
fn portguard(args: &[&str]) -> Outcome {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let out_dir = Scratch::new(&format!("out-{}", RUNS.fetch_add(1, Ordering::Relaxed)));
    let (out_path, err_path) = (out_dir.path("stdout"), out_dir.path("stderr"));
    let file = |p: &Path| fs::File::create(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let parent_rss_kib = own_rss_kib();
    let started = Instant::now();
    let mut cmd = Command::new(BIN);
    // SAFETY: the hook does nothing, so it is async-signal-safe; it is there
    // only to make the standard library fork instead of vfork.
    unsafe {
        cmd.pre_exec(|| Ok(()));
    }
    let child = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(file(&out_path))
        .stderr(file(&err_path))
        .spawn()
        .unwrap_or_else(|e| panic!("running {BIN} {args:?}: {e}"));
    let pid = i32::try_from(child.id()).expect("pid");
    let (status, usage) = loop {
        let mut status = 0;
        // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `status` and `usage` are valid for writes.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            break (status, usage);
        }
        assert_eq!(
            r,
            0,
            "wait4({pid}) failed: {}",
            std::io::Error::last_os_error()
        );
        if started.elapsed() > Duration::from_secs(10) {
            // SAFETY: our own child, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            // SAFETY: as above.
            unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
            panic!(
                "portguard {args:?} was still running after 10 s (peak RSS {} KiB)",
                usage.ru_maxrss
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let took = started.elapsed();
    let read = |p: &Path| String::from_utf8_lossy(&fs::read(p).unwrap_or_default()).into_owned();
    Outcome {
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        stdout: read(&out_path),
        stderr: read(&err_path),
        took,
        max_rss_kib: usage.ru_maxrss,
        parent_rss_kib,
    }
}

/// VmRSS of this process, from /proc/self/status.
fn own_rss_kib() -> i64 {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/self/status:\n{status}"))
}

/// Exit 2 within the deadline, bounded memory and output, and an error that
/// names `path` and says `what`.
fn assert_refused(args: &[&str], path: &Path, what: &str) {
    let o = portguard(args);
    let p = path.display().to_string();
    assert_eq!(o.code, Some(2), "portguard {args:?}: {}", o.describe());
    assert!(
        o.stderr.contains(&p) && o.stderr.contains(what),
        "portguard {args:?} should name {p} and say `{what}`: {}",
        o.describe()
    );
    assert_bounded(args, &o);
}

fn assert_bounded(args: &[&str], o: &Outcome) {
    assert!(
        o.took < DEADLINE,
        "portguard {args:?} took too long: {}",
        o.describe()
    );
    assert!(
        o.max_rss_kib < MAX_RSS_KIB,
        "portguard {args:?} peaked above {MAX_RSS_KIB} KiB: {}",
        o.describe()
    );
    assert!(
        o.stdout.len() + o.stderr.len() < MAX_OUTPUT,
        "portguard {args:?} printed too much: {}",
        o.describe()
    );
}

/// Every command that reads a catalog, for `path`.
fn every_reader(path: &str) -> Vec<Vec<&str>> {
    vec![
        vec!["catalog", "check", path],
        vec!["catalog", "show", "--catalog", path],
        vec!["catalog", "export", "--format", "nft", "--catalog", path],
        vec![
            "run",
            "--iface",
            NO_IFACE,
            "--role",
            "front-end",
            "--catalog",
            path,
        ],
    ]
}

fn assert_refused_everywhere(path: &Path, what: &str) {
    let p = path
        .to_str()
        .unwrap_or_else(|| panic!("non-UTF-8 path {}", path.display()));
    for args in every_reader(p) {
        assert_refused(&args, path, what);
    }
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: `c` is a valid NUL-terminated path.
    let r = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(
        r,
        0,
        "mkfifo {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

#[test]
fn devices_are_refused_by_every_command() {
    let _serial = serial();
    assert_refused_everywhere(
        Path::new("/dev/zero"),
        "not a regular file: it is a character device",
    );
    assert_refused_everywhere(
        Path::new("/dev/urandom"),
        "not a regular file: it is a character device",
    );
    let s = Scratch::new("devlink");
    let link = s.path("catalog.toml");
    std::os::unix::fs::symlink("/dev/zero", &link).expect("symlink");
    assert_refused_everywhere(&link, "not a regular file: it is a character device");
}

#[test]
fn a_fifo_without_a_writer_is_refused_promptly() {
    let _serial = serial();
    let s = Scratch::new("fifo");
    let fifo = s.path("catalog.toml");
    mkfifo(&fifo);
    assert_refused_everywhere(&fifo, "not a regular file: it is a FIFO");
}

#[test]
fn a_directory_is_refused() {
    let _serial = serial();
    let s = Scratch::new("dir");
    assert_refused_everywhere(&s.0, "not a regular file: it is a directory");
}

#[test]
fn an_oversized_catalog_is_refused_before_it_is_parsed() {
    let _serial = serial();
    let s = Scratch::new("big");
    // A valid catalog, padded past the cap with comments.
    let embedded = portguard::catalog::Catalog::embedded_text();
    let pad = 5 * 1024 * 1024 - embedded.len();
    let text = format!("{embedded}\n{}", "# padding\n".repeat(pad / 10));
    let big = s.file("big.toml", &text);
    drop(text);
    assert_refused_everywhere(&big, "more than the 1048576 bytes a catalog may have");
}

/// One role `a`, and `n` rules of role `role` with these ports, written
/// tightly (10,000 rules fit under the size cap).
fn rules_of(n: usize, role: &str, ports: impl Fn(usize) -> String) -> String {
    let mut t =
        String::from("version = 1\n[[role]]\nid = \"a\"\nlabel = \"A\"\ntable = \"server\"\n");
    for i in 0..n {
        let _ = write!(
            t,
            "[[rule]]\nrole=\"{role}\"\nservice=\"s{i}\"\nprotocol=\"tcp\"\nports={}\ntransport=\"T\"\ntable=\"server\"\nnote=\"\"\n",
            ports(i)
        );
    }
    t
}

#[test]
fn a_chain_of_4000_roles_checks_quickly() {
    let _serial = serial();
    let mut t = String::from("version = 1\n");
    for i in 0..4_000 {
        let _ = write!(
            t,
            "[[role]]\nid = \"r{i}\"\nlabel = \"R\"\ntable = \"server\"\nwhy = \"w\"\n"
        );
        if i < 3_999 {
            let _ = writeln!(t, "includes = [\"r{}\"]", i + 1);
        }
    }
    for i in 0..4_000 {
        let _ = write!(
            t,
            "[[rule]]\nrole = \"r{i}\"\nservice = \"s\"\nprotocol = \"tcp\"\nports = \"{}-{}\"\ntransport = \"TCP\"\ntable = \"server\"\nnote = \"\"\n",
            i + 1,
            i + 2
        );
    }
    let s = Scratch::new("chain");
    let p = s.file("chain.toml", &t);
    drop(t);
    let args = ["catalog", "check", p.to_str().unwrap_or_default()];
    let o = portguard(&args);
    assert_eq!(o.code, Some(0), "{}", o.describe());
    // Each rule shares a port with the next, and every role meets every other through r0.
    assert!(
        o.stderr.contains("3999 overlapping rule pairs in all"),
        "the overlaps are counted: {}",
        o.describe()
    );
    assert_bounded(&args, &o);
}

#[test]
fn nested_overlapping_rules_check_quickly_with_a_summary() {
    let _serial = serial();
    let s = Scratch::new("nested");
    let p = s.file(
        "nested.toml",
        &rules_of(2_000, "a", |i| format!("\"{}-{}\"", i + 1, 65_535 - i)),
    );
    let args = ["catalog", "check", p.to_str().unwrap_or_default()];
    let o = portguard(&args);
    assert_eq!(o.code, Some(0), "{}", o.describe());
    assert!(
        o.stderr.contains("1999000 overlapping rule pairs in all"),
        "{}",
        o.describe()
    );
    assert_bounded(&args, &o);
}

#[test]
fn ten_thousand_unknown_roles_print_a_bounded_report() {
    let _serial = serial();
    let s = Scratch::new("unknown");
    let text = rules_of(10_000, "nope", |i| (i + 1).to_string());
    assert!(
        text.len() < 1024 * 1024,
        "{} bytes: over the size cap",
        text.len()
    );
    let p = s.file("unknown.toml", &text);
    drop(text);
    let path = p.to_str().unwrap_or_default();
    let args = ["catalog", "check", path];
    let o = portguard(&args);
    assert_eq!(o.code, Some(2), "{}", o.describe());
    assert!(
        o.stderr.contains("error: unknown role `nope`")
            && o.stderr
                .contains("more errors and 0 more warnings from here on, not shown")
            && o.stderr
                .contains(&format!("{path}: invalid: 10000 errors, 0 warnings")),
        "the first errors, then a count: {}",
        o.describe()
    );
    assert_bounded(&args, &o);
}

const TOO_MANY: &str = "more than 16383 distinct rules; the counter table is full";

/// `n` rules of role `a` for both protocols: `2 * n` counter slots.
fn both_rules(n: usize) -> String {
    rules_of(n, "a", |i| (i + 1).to_string()).replace("protocol=\"tcp\"", "protocol=\"both\"")
}

#[test]
fn more_rules_than_run_can_load_are_refused_by_check_with_runs_message() {
    let _serial = serial();
    let s = Scratch::new("many");
    // 8,192 rules for tcp and udp: 16,384 counter slots, one too many.
    let p = s.file("many.toml", &both_rules(8_192));
    let path = p.to_str().unwrap_or_default();
    let line = 6 + 8_191 * 8;
    for args in [
        vec!["catalog", "check", path],
        vec!["run", "--iface", NO_IFACE, "--role", "a", "--catalog", path],
    ] {
        let o = portguard(&args);
        assert_eq!(o.code, Some(2), "portguard {args:?}: {}", o.describe());
        assert!(
            o.stderr
                .contains(&format!("{path}:{line}:1: error: {TOO_MANY}")),
            "portguard {args:?} names the rule past the limit (line {line}): {}",
            o.describe()
        );
        assert_bounded(&args, &o);
    }
}

#[test]
fn a_catalog_of_100k_rules_is_refused_fast_with_bounded_memory() {
    let _serial = serial();
    let s = Scratch::new("100k");
    // Over the size cap: refused before parsing.
    let huge = s.file(
        "huge.toml",
        &rules_of(100_000, "a", |i| (i % 65_535 + 1).to_string()),
    );
    let args = ["catalog", "check", huge.to_str().unwrap_or_default()];
    let o = portguard(&args);
    assert_eq!(o.code, Some(2), "{}", o.describe());
    assert!(o.stderr.contains("a catalog may have"), "{}", o.describe());
    assert_bounded(&args, &o);

    // As many rules as fit under the cap: all parsed, refused at the rule
    // that takes the 16,384th counter slot.
    let mut text = both_rules(20_000);
    let cap = 1024 * 1024;
    let cut = text[..cap].rfind("[[rule]]").unwrap_or(cap);
    text.truncate(cut);
    let full = s.file("full.toml", &text);
    drop(text);
    let args = ["catalog", "check", full.to_str().unwrap_or_default()];
    let o = portguard(&args);
    assert_eq!(o.code, Some(2), "{}", o.describe());
    assert!(o.stderr.contains(TOO_MANY), "{}", o.describe());
    assert_bounded(&args, &o);
}
