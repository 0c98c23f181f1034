//! Hostile catalogs: files that are not files, files too large, and shapes
//! that used to blow up time, memory or output (issue 10, items 3, 9 and 10).

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    sync::mpsc,
    time::{Duration, Instant},
};

use super::{
    Catalog, CatalogError, MAX_CATALOG_BYTES, MAX_DIAGNOSTICS, MAX_OVERLAPS_LISTED, MAX_ROLES,
    MAX_RULE_ENTRIES, ReadError, Severity, count_findings, read_bounded,
};

/// A directory of its own under the temp dir, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "portguard-hostile-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `Catalog::load`, which must come back within 5 s whatever the path is.
fn load_within(path: &Path) -> Result<(Catalog, Vec<super::Diagnostic>), CatalogError> {
    let (tx, rx) = mpsc::channel();
    let p = path.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(Catalog::load(&p));
    });
    rx.recv_timeout(Duration::from_secs(5))
        .unwrap_or_else(|_| panic!("loading {} blocked for 5 s", path.display()))
}

/// The single error `load` gives for `path`, which must name it and contain `what`.
fn assert_refused(path: &Path, what: &str) {
    let e = match load_within(path) {
        Ok(_) => panic!("{} was accepted as a catalog", path.display()),
        Err(e) => e,
    };
    assert_eq!(e.diagnostics.len(), 1, "one error: {e}");
    let d = &e.diagnostics[0];
    assert_eq!(d.severity, Severity::Error, "{d}");
    assert_eq!(d.origin, path.display().to_string(), "names the file: {d}");
    assert!(
        d.message.contains(what),
        "the error for {} should say `{what}`: {d}",
        path.display()
    );
}

#[test]
fn devices_are_refused_without_reading_them() {
    assert_refused(
        Path::new("/dev/zero"),
        "not a regular file: it is a character device",
    );
    assert_refused(Path::new("/dev/urandom"), "character device");
}

#[test]
fn a_symlink_to_a_device_is_refused_and_one_to_a_file_is_read() {
    let s = Scratch::new("symlink");
    let zero = s.path("zero.toml");
    std::os::unix::fs::symlink("/dev/zero", &zero).expect("symlink");
    assert_refused(&zero, "character device");

    let real = s.path("real.toml");
    std::fs::write(&real, Catalog::embedded_text()).expect("write");
    let link = s.path("link.toml");
    std::os::unix::fs::symlink(&real, &link).expect("symlink");
    let (catalog, _) = load_within(&link).expect("a symlink to a file");
    let embedded = Catalog::embedded();
    assert_eq!(
        (catalog.roles, catalog.rules),
        (embedded.roles, embedded.rules),
        "the symlinked catalog"
    );
}

#[test]
fn a_fifo_is_refused_at_once_without_a_writer() {
    let s = Scratch::new("fifo");
    let fifo = s.path("catalog.toml");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: `c` is a valid NUL-terminated path.
    let r = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(r, 0, "mkfifo {}", fifo.display());
    let started = Instant::now();
    assert_refused(&fifo, "it is a FIFO");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refusing a FIFO took {:?}",
        started.elapsed()
    );
}

#[test]
fn directories_and_sockets_are_refused() {
    let s = Scratch::new("dir");
    assert_refused(&s.0, "it is a directory");
    let sock = s.path("catalog.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock)
        .unwrap_or_else(|e| panic!("binding {}: {e}", sock.display()));
    assert_refused(&sock, "it is a socket");
}

#[test]
fn a_file_over_the_cap_is_refused_and_one_at_the_cap_is_read() {
    let s = Scratch::new("size");
    let p = s.path("small.toml");
    std::fs::write(&p, b"0123456789").expect("write");
    match read_bounded(&p, 10) {
        Ok(bytes) => assert_eq!(bytes, b"0123456789"),
        Err(e) => panic!("10 bytes with a cap of 10: {e}"),
    }
    match read_bounded(&p, 9) {
        Err(ReadError::TooLarge { size: 10, cap: 9 }) => {}
        other => panic!("10 bytes with a cap of 9: {other:?}"),
    }

    let big = s.path("big.toml");
    let mut text = Catalog::embedded_text().to_string();
    let pad = usize::try_from(MAX_CATALOG_BYTES).unwrap_or(usize::MAX) + 1 - text.len();
    text.push_str(&"#".repeat(pad));
    std::fs::write(&big, &text).expect("write");
    assert_refused(&big, "more than the 1048576 bytes a catalog may have");
}

/// `n` roles, each including the next, each with one rule of its own port.
fn chain(n: usize) -> String {
    let mut t = String::from("version = 1\n");
    for i in 0..n {
        let _ = write!(
            t,
            "[[role]]\nid = \"r{i}\"\nlabel = \"R\"\ntable = \"server\"\nwhy = \"chain\"\n"
        );
        if i + 1 < n {
            let _ = writeln!(t, "includes = [\"r{}\"]", i + 1);
        }
    }
    for i in 0..n {
        let _ = write!(
            t,
            "[[rule]]\nrole = \"r{i}\"\nservice = \"s\"\nprotocol = \"tcp\"\nports = {}\ntransport = \"TCP\"\ntable = \"server\"\nnote = \"\"\n",
            i + 1
        );
    }
    t
}

/// One role `a` and `n` rules of its own, each rule with these ports.
fn rules_of(n: usize, role: &str, ports: impl Fn(usize) -> String) -> String {
    let mut t =
        String::from("version = 1\n[[role]]\nid = \"a\"\nlabel = \"A\"\ntable = \"server\"\n");
    for i in 0..n {
        let _ = write!(
            t,
            "[[rule]]\nrole = \"{role}\"\nservice = \"s{i}\"\nprotocol = \"tcp\"\nports = {}\ntransport = \"TCP\"\ntable = \"server\"\nnote = \"\"\n",
            ports(i)
        );
    }
    t
}

#[test]
fn a_chain_of_4000_roles_resolves_in_linear_time() {
    let text = chain(4_000);
    let started = Instant::now();
    let (catalog, warnings) = Catalog::parse(&text, "chain.toml").expect("the chain should parse");
    let rules = catalog
        .effective_rules(&["r0".to_string()])
        .expect("resolving r0");
    let took = started.elapsed();
    assert!(warnings.is_empty(), "no overlaps in a chain: {warnings:?}");
    assert_eq!(rules.len(), 4_000, "r0 resolves to every rule of the chain");
    assert_eq!(
        catalog
            .resolve_roles(&["r3999".to_string(), "r0".to_string()])
            .map(|r| r.len())
            .ok(),
        Some(4_000),
        "each role once"
    );
    assert!(
        took < Duration::from_secs(2),
        "a chain of 4,000 roles took {took:?}"
    );
}

#[test]
fn nested_overlaps_are_counted_and_only_the_first_listed() {
    let n = 2_000;
    let text = rules_of(n, "a", |i| format!("\"{}-{}\"", i + 1, 65_535 - i));
    let started = Instant::now();
    let (_, warnings) = Catalog::parse(&text, "nested.toml").expect("nested rules");
    let took = started.elapsed();
    assert_eq!(
        warnings.len(),
        MAX_OVERLAPS_LISTED + 1,
        "the first {MAX_OVERLAPS_LISTED} overlaps and a summary, got {}",
        warnings.len()
    );
    let pairs = n * (n - 1) / 2;
    let summary = format!("{pairs} overlapping rule pairs in all");
    assert!(
        warnings.iter().any(|w| w.message.contains(&summary)),
        "a summary saying `{summary}`: {:#?}",
        warnings.last()
    );
    assert!(
        took < Duration::from_secs(2),
        "2,000 nested rules took {took:?}"
    );
}

#[test]
fn ten_thousand_unknown_roles_give_a_bounded_list_and_a_true_count() {
    let n = 10_000;
    let text = rules_of(n, "nope", |i| (i % 60_000 + 1).to_string());
    let e = match Catalog::parse(&text, "unknown.toml") {
        Ok(_) => panic!("rules of an unknown role were accepted"),
        Err(e) => e,
    };
    assert_eq!(
        e.diagnostics.len(),
        MAX_DIAGNOSTICS + 1,
        "the first {MAX_DIAGNOSTICS} and one for the rest"
    );
    assert_eq!(
        count_findings(&e.diagnostics),
        (n, 0),
        "every error is counted"
    );
    let first_line = text
        .lines()
        .position(|l| l == "role = \"nope\"")
        .map_or(0, |i| i + 1);
    assert_eq!(e.diagnostics[0].line, first_line, "the first in file order");
    let rest = &e.diagnostics[MAX_DIAGNOSTICS];
    assert_eq!(
        rest.omitted_counts(),
        Some((n - MAX_DIAGNOSTICS, 0)),
        "the last one counts the rest: {rest}"
    );
    assert!(
        rest.line > e.diagnostics[MAX_DIAGNOSTICS - 1].line,
        "placed at the first one not shown: {rest}"
    );
    assert!(
        e.to_string().len() < 64 * 1024,
        "the rendered errors are {} bytes",
        e.to_string().len()
    );
}

#[test]
fn more_rules_than_counter_slots_are_refused_at_the_rule_that_overflows() {
    let fits = rules_of(MAX_RULE_ENTRIES, "a", |i| (i + 1).to_string());
    if let Err(e) = Catalog::parse(&fits, "fits.toml") {
        panic!("{MAX_RULE_ENTRIES} rules fit the counter table:\n{e}");
    }
    let text = rules_of(MAX_RULE_ENTRIES + 5_000, "a", |i| (i + 1).to_string());
    let started = Instant::now();
    let e = match Catalog::parse(&text, "many.toml") {
        Ok(_) => panic!("{} rules were accepted", MAX_RULE_ENTRIES + 5_000),
        Err(e) => e,
    };
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(e.diagnostics.len(), 1, "{e}");
    let d = &e.diagnostics[0];
    assert_eq!(
        d.message, "more than 16383 distinct rules; the counter table is full",
        "{d}"
    );
    let overflow = text
        .match_indices("[[rule]]")
        .nth(MAX_RULE_ENTRIES)
        .map(|(at, _)| text[..at].lines().count() + 1);
    assert_eq!(Some(d.line), overflow, "at the 16,384th rule: {d}");
}

#[test]
fn a_rule_for_both_protocols_takes_two_slots() {
    let text = rules_of(MAX_RULE_ENTRIES / 2 + 1, "a", |i| (i + 1).to_string())
        .replace("protocol = \"tcp\"", "protocol = \"both\"");
    match Catalog::parse(&text, "both.toml") {
        Ok(_) => panic!("{} rule entries were accepted", MAX_RULE_ENTRIES + 1),
        Err(e) => assert!(e.to_string().contains("distinct rules"), "{e}"),
    }
}

#[test]
fn more_roles_than_the_cap_are_refused_before_resolving() {
    let mut text = String::from("version = 1\n");
    for i in 0..=MAX_ROLES {
        let _ = write!(
            text,
            "[[role]]\nid = \"r{i}\"\nlabel = \"R\"\ntable = \"server\"\n"
        );
    }
    let e = match Catalog::parse(&text, "roles.toml") {
        Ok(_) => panic!("{} roles were accepted", MAX_ROLES + 1),
        Err(e) => e,
    };
    assert_eq!(e.diagnostics.len(), 1, "{e}");
    let d = &e.diagnostics[0];
    assert_eq!(
        d.line,
        1 + 4 * MAX_ROLES + 1,
        "at the role past the cap: {d}"
    );
    assert!(d.message.contains("more than 8192 roles"), "{d}");
}

#[test]
fn thousands_of_include_cycles_are_listed_up_to_the_cap_and_counted() {
    // A chain of 3,000 roles where every role but the first also includes
    // the first: 2,999 cycles, up to 3,000 roles long.
    let n = 3_000;
    let mut text = String::from("version = 1\n");
    for i in 0..n {
        let _ = write!(
            text,
            "[[role]]\nid = \"r{i}\"\nlabel = \"R\"\ntable = \"server\"\nwhy = \"cycles\"\n"
        );
        match (i, i + 1 < n) {
            (0, _) => {
                let _ = writeln!(text, "includes = [\"r1\"]");
            }
            (_, true) => {
                let _ = writeln!(text, "includes = [\"r{}\", \"r0\"]", i + 1);
            }
            (_, false) => {
                let _ = writeln!(text, "includes = [\"r0\"]");
            }
        }
    }
    let started = Instant::now();
    let e = match Catalog::parse(&text, "cycles.toml") {
        Ok(_) => panic!("cycles were accepted"),
        Err(e) => e,
    };
    let took = started.elapsed();
    let cycles: Vec<_> = e
        .errors()
        .filter(|d| d.message.starts_with("include cycle: r0 -> r1 -> "))
        .collect();
    assert_eq!(cycles.len(), 20, "the first 20 cycles are listed:\n{e}");
    assert!(
        cycles
            .iter()
            .any(|d| d.message.ends_with("r2998 -> r2999 -> r0")),
        "the longest cycle is among them"
    );
    let more: Vec<_> = e
        .errors()
        .filter(|d| {
            d.message
                .contains("2978 more includes close further cycles")
        })
        .collect();
    assert_eq!(more.len(), 1, "the other 2,979 are counted:\n{e}");
    assert_eq!(e.diagnostics.len(), 21, "nothing else: {e}");
    assert!(
        took < Duration::from_secs(2),
        "{n} roles with cycles took {took:?}"
    );
}

#[test]
fn the_known_roles_hint_names_a_bounded_number_of_roles() {
    let mut text = String::from("version = 1\n");
    for i in 0..100 {
        let _ = write!(
            text,
            "[[role]]\nid = \"r{i}\"\nlabel = \"R\"\ntable = \"server\"\n"
        );
    }
    text.push_str(
        "[[rule]]\nrole = \"nope\"\nservice = \"s\"\nprotocol = \"tcp\"\nports = 1\ntransport = \"T\"\ntable = \"server\"\nnote = \"\"\n",
    );
    let e = match Catalog::parse(&text, "hint.toml") {
        Ok(_) => panic!("a rule of an unknown role was accepted"),
        Err(e) => e,
    };
    let hint = e.diagnostics[0].hint.clone().unwrap_or_default();
    assert!(
        hint.starts_with("known roles: r0, r1, ") && hint.ends_with("r39, ... (60 more)"),
        "the first 40 roles and a count: {hint}"
    );
}
