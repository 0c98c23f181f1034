//! `cargo xtask dist`: the Debian package, `target/dist/portguard_V-1_ARCH.deb`.
//!
//! Assembled here and built with `dpkg-deb`, not with cargo-deb: cargo-deb
//! would be one more crate to compile on a fresh machine (a few minutes on
//! two cores) for what is a directory tree and a control file, while
//! dpkg-deb, dpkg-shlibdeps and lintian are Debian's own tools and come with
//! `cargo xtask setup`. The man pages and completions come from
//! `portguard-docgen` (crate `docgen`), so the shipped binary carries no
//! generator.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail, ensure};

/// The upstream version is the workspace's; `-1` is the Debian revision.
pub const DEB_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "-1");

const MAINTAINER: &str = "portguard maintainers <maintainers@portguard.example>";

const DESCRIPTION: &str = "\
XDP port firewall for Skype for Business Server 2015 hosts
 portguard enforces the port and protocol requirements Microsoft publishes
 for Skype for Business Server 2015 server roles, hardware load balancers and
 clients: an XDP program passes the SIP, PSOM, STUN/TURN, HTTPS and media
 traffic of the roles a host runs, drops the rest, and counts every verdict
 for Prometheus. Policy reloads are atomic, restarts and upgrades keep the
 interface protected without a gap.
 .
 One binary with the eBPF object embedded, a systemd template unit
 (portguard@IFACE.service) and the default catalog.";

/// Shell the maintainer scripts, with the file name they take in DEBIAN/.
const MAINTAINER_SCRIPTS: [&str; 3] = ["postinst", "prerm", "postrm"];

/// Documentation shipped under /usr/share/doc/portguard/ (repository path,
/// installed name).
const DOCS: [(&str, &str); 9] = [
    ("README.md", "README.md"),
    ("docs/operations.md", "operations.md"),
    ("docs/cli.md", "cli.md"),
    ("docs/metrics.md", "metrics.md"),
    ("docs/catalog.md", "catalog.md"),
    ("docs/perimeter.md", "perimeter.md"),
    ("docs/packet-policy.md", "packet-policy.md"),
    ("docs/alerts.yml", "alerts.yml"),
    ("docs/grafana/portguard.json", "grafana/portguard.json"),
];

/// Runs a command and returns its stdout, failing with its stderr.
fn output(what: &str, cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("{what}: running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The package's file tree under construction.
struct Stage {
    root: PathBuf,
}

impl Stage {
    /// Creates `rel`'s parent directories and writes `bytes` with `mode`.
    fn write(&self, rel: &str, bytes: &[u8], mode: u32) -> Result<()> {
        let path = self.root.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
            .with_context(|| format!("chmod {}", path.display()))
    }

    fn copy(&self, from: &Path, rel: &str, mode: u32) -> Result<()> {
        let bytes = fs::read(from).with_context(|| format!("reading {}", from.display()))?;
        self.write(rel, &bytes, mode)
    }

    /// gzip -9n (no name, no timestamp: the same input gives the same bytes).
    fn gzip(&self, from: &Path, rel: &str) -> Result<()> {
        let out = Command::new("gzip")
            .args(["-9n", "-c"])
            .arg(from)
            .output()
            .with_context(|| format!("gzip {}", from.display()))?;
        ensure!(
            out.status.success(),
            "gzip {} failed: {}",
            from.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        self.write(rel, &out.stdout, 0o644)
    }

    /// Every file and directory under the root but DEBIAN/, relative, sorted.
    fn entries(&self) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
        fn walk(
            dir: &Path,
            base: &Path,
            files: &mut Vec<PathBuf>,
            dirs: &mut Vec<PathBuf>,
        ) -> Result<()> {
            for e in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
                let path = e?.path();
                let rel = path.strip_prefix(base)?.to_path_buf();
                if rel.starts_with("DEBIAN") {
                    continue;
                }
                if path.is_dir() {
                    dirs.push(rel);
                    walk(&path, base, files, dirs)?;
                } else {
                    files.push(rel);
                }
            }
            Ok(())
        }
        let (mut files, mut dirs) = (Vec::new(), Vec::new());
        walk(&self.root, &self.root, &mut files, &mut dirs)?;
        files.sort();
        dirs.sort();
        Ok((files, dirs))
    }
}

/// `Depends:` as dpkg-shlibdeps computes it from the binary's dynamic
/// libraries and their symbol versions. dpkg-shlibdeps insists on a
/// debian/control, so it runs in a scratch directory that has one.
fn shlib_depends(dist: &Path, binary: &Path) -> Result<String> {
    let scratch = dist.join("shlibdeps");
    fs::create_dir_all(scratch.join("debian"))?;
    fs::write(
        scratch.join("debian/control"),
        "Source: portguard\n\nPackage: portguard\nArchitecture: any\n",
    )?;
    let out = output(
        "dpkg-shlibdeps",
        Command::new("dpkg-shlibdeps")
            .current_dir(&scratch)
            .arg("-O")
            .arg(format!("-e{}", binary.display())),
    )?;
    let depends = out
        .lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .context("dpkg-shlibdeps printed no shlibs:Depends")?
        .trim()
        .to_string();
    ensure!(!depends.is_empty(), "dpkg-shlibdeps found no dependency");
    Ok(depends)
}

/// Installed-Size as dpkg-gencontrol counts it: KiB per file, rounded up,
/// and one per directory.
fn installed_size_kib(root: &Path, files: &[PathBuf], dirs: &[PathBuf]) -> Result<u64> {
    let mut kib = dirs.len() as u64;
    for f in files {
        kib += fs::metadata(root.join(f))?.len().div_ceil(1024);
    }
    Ok(kib)
}

/// The changelog's first line must name the version being built.
fn check_changelog(changelog: &str) -> Result<()> {
    let want = format!("portguard ({DEB_VERSION}) ");
    ensure!(
        changelog.starts_with(&want),
        "packaging/changelog does not start with `{want}`: add an entry for {DEB_VERSION}"
    );
    Ok(())
}

pub fn control(arch: &str, depends: &str, installed_kib: u64) -> String {
    format!(
        "Package: portguard\n\
         Version: {DEB_VERSION}\n\
         Architecture: {arch}\n\
         Maintainer: {MAINTAINER}\n\
         Installed-Size: {installed_kib}\n\
         Depends: {depends}\n\
         Section: net\n\
         Priority: optional\n\
         Homepage: https://example.invalid/portguard\n\
         Description: {DESCRIPTION}\n"
    )
}

/// Builds the package and returns its path.
pub fn dist() -> Result<PathBuf> {
    crate::cargo(
        &["build", "--release", "-p", "portguard-cli", "-p", "docgen"],
        &[],
        &[],
    )?;
    let repo = crate::root();
    let release = repo.join("target/release");
    let dist = repo.join("target/dist");
    let arch = output(
        "dpkg --print-architecture",
        Command::new("dpkg").arg("--print-architecture"),
    )?
    .trim()
    .to_string();
    let name = format!("portguard_{DEB_VERSION}_{arch}");
    let stage = Stage {
        root: dist.join(&name),
    };
    if stage.root.exists() {
        fs::remove_dir_all(&stage.root)
            .with_context(|| format!("removing {}", stage.root.display()))?;
    }
    fs::create_dir_all(&stage.root)?;

    // The binary, stripped as dh_strip strips executables.
    let sbin = stage.root.join("usr/sbin");
    fs::create_dir_all(&sbin)?;
    output(
        "strip",
        Command::new("strip")
            .args([
                "--remove-section=.comment",
                "--remove-section=.note",
                "--strip-unneeded",
                "-o",
            ])
            .arg(sbin.join("portguard"))
            .arg(release.join("portguard")),
    )?;
    fs::set_permissions(sbin.join("portguard"), fs::Permissions::from_mode(0o755))?;
    // Built without the library's test hooks: the daemon's eBPF object is
    // embedded, the benchmark's empty floor program is not.
    let shipped = fs::read(sbin.join("portguard"))?;
    let objects = embedded_bpf_objects(&shipped);
    ensure!(
        objects.len() == 1,
        "the shipped binary embeds {} eBPF objects, not the daemon's alone: was portguard built with the `test-hooks` feature?",
        objects.len()
    );
    // Nor the tests' trace: the TRACE map exists only in the object built
    // for the test hooks.
    let maps = bpf_map_names(&shipped[objects[0]..])?;
    ensure!(
        !maps.iter().any(|m| m == "TRACE"),
        "the shipped eBPF object declares the tests' TRACE map (maps: {})",
        maps.join(", ")
    );

    stage.copy(
        &repo.join("packaging/portguard@.service"),
        "lib/systemd/system/portguard@.service",
        0o644,
    )?;
    stage.copy(
        &repo.join("packaging/example.env"),
        "etc/portguard/example.env",
        0o644,
    )?;
    stage.copy(
        &repo.join("catalog/sfb2015.toml"),
        "usr/share/portguard/sfb2015.toml",
        0o644,
    )?;
    // The microsoft-365 set's source list, for `file =` in a copied catalog.
    stage.copy(
        &repo.join("catalog/microsoft-365.txt"),
        "usr/share/portguard/microsoft-365.txt",
        0o644,
    )?;
    // Derived from the built-in 2015 catalog: it loads from anywhere.
    stage.copy(
        &repo.join("catalog/sfb2019.toml"),
        "usr/share/portguard/sfb2019.toml",
        0o644,
    )?;

    let doc = "usr/share/doc/portguard";
    stage.copy(
        &repo.join("packaging/copyright"),
        &format!("{doc}/copyright"),
        0o644,
    )?;
    let changelog = repo.join("packaging/changelog");
    check_changelog(&fs::read_to_string(&changelog).context("reading packaging/changelog")?)?;
    stage.gzip(&changelog, &format!("{doc}/changelog.Debian.gz"))?;
    for (from, to) in DOCS {
        stage.copy(&repo.join(from), &format!("{doc}/{to}"), 0o644)?;
    }

    // Man pages and completions from the clap definitions.
    let generated = dist.join("generated");
    if generated.exists() {
        fs::remove_dir_all(&generated)?;
    }
    let docgen = release.join("portguard-docgen");
    for what in ["man", "completions"] {
        output(
            &format!("portguard-docgen {what}"),
            Command::new(&docgen).arg(what).arg(generated.join(what)),
        )?;
    }
    let mut pages: Vec<PathBuf> = fs::read_dir(generated.join("man"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    pages.sort();
    ensure!(!pages.is_empty(), "portguard-docgen wrote no man page");
    for page in pages {
        let file = page
            .file_name()
            .context("man page without a name")?
            .to_string_lossy()
            .into_owned();
        stage.gzip(&page, &format!("usr/share/man/man8/{file}.gz"))?;
    }
    for (file, dest) in [
        (
            "portguard.bash",
            "usr/share/bash-completion/completions/portguard",
        ),
        ("_portguard", "usr/share/zsh/vendor-completions/_portguard"),
        (
            "portguard.fish",
            "usr/share/fish/vendor_completions.d/portguard.fish",
        ),
    ] {
        stage.copy(&generated.join("completions").join(file), dest, 0o644)?;
    }

    // DEBIAN/: control, conffiles, md5sums, maintainer scripts.
    let (files, dirs) = stage.entries()?;
    for d in &dirs {
        fs::set_permissions(stage.root.join(d), fs::Permissions::from_mode(0o755))?;
    }
    let depends = shlib_depends(&dist, &sbin.join("portguard"))?;
    let installed = installed_size_kib(&stage.root, &files, &dirs)?;
    stage.write(
        "DEBIAN/control",
        control(&arch, &depends, installed).as_bytes(),
        0o644,
    )?;
    let conffiles: String = files
        .iter()
        .filter(|f| f.starts_with("etc"))
        .map(|f| format!("/{}\n", f.display()))
        .collect();
    stage.write("DEBIAN/conffiles", conffiles.as_bytes(), 0o644)?;
    let md5sums = output(
        "md5sum",
        Command::new("md5sum")
            .current_dir(&stage.root)
            .args(files.iter().filter(|f| !f.starts_with("etc"))),
    )?;
    stage.write("DEBIAN/md5sums", md5sums.as_bytes(), 0o644)?;
    for script in MAINTAINER_SCRIPTS {
        stage.copy(
            &repo.join("packaging/maintainer-scripts").join(script),
            &format!("DEBIAN/{script}"),
            0o755,
        )?;
    }
    fs::set_permissions(stage.root.join("DEBIAN"), fs::Permissions::from_mode(0o755))?;

    let deb = dist.join(format!("{name}.deb"));
    output(
        "dpkg-deb --build",
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&stage.root)
            .arg(&deb),
    )?;
    lintian(&deb)?;
    Ok(deb)
}

/// lintian on the package: any error fails dist; warnings are printed.
fn lintian(deb: &Path) -> Result<()> {
    let out = Command::new("lintian")
        .args(["--fail-on", "error", "--display-level", ">=warning"])
        .arg(deb)
        .output()
        .context("running lintian (`cargo xtask setup` installs it)")?;
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report = report.trim();
    if !report.is_empty() {
        eprintln!("{report}");
    }
    ensure!(
        out.status.success(),
        "lintian reports errors for {}",
        deb.display()
    );
    eprintln!("xtask dist: lintian: no errors");
    Ok(())
}

/// The offsets of the eBPF ELF objects (64-bit little-endian, `e_machine`
/// EM_BPF) embedded in `bin`.
fn embedded_bpf_objects(bin: &[u8]) -> Vec<usize> {
    const EM_BPF: u16 = 247;
    bin.windows(20)
        .enumerate()
        .filter(|(_, h)| {
            h.starts_with(b"\x7fELF")
                && h[4] == 2
                && h[5] == 1
                && u16::from_le_bytes([h[18], h[19]]) == EM_BPF
        })
        .map(|(at, _)| at)
        .collect()
}

/// The maps an eBPF object declares: the symbols of its `maps` section. The
/// object may be followed by the rest of the binary it is embedded in; its
/// headers locate everything relative to its start.
fn bpf_map_names(elf: &[u8]) -> Result<Vec<String>> {
    use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
    let file = object::File::parse(elf).context("parsing the embedded eBPF object")?;
    let maps = file
        .section_by_name("maps")
        .context("the embedded eBPF object has no maps section")?
        .index();
    Ok(file
        .symbols()
        .filter(|s| s.section_index() == Some(maps))
        .filter_map(|s| s.name().ok().map(str::to_string))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_bpf_objects_are_counted_and_the_host_elf_is_not() {
        let elf = |machine: u16| {
            let mut h = vec![0u8; 64];
            h[..4].copy_from_slice(b"\x7fELF");
            h[4] = 2;
            h[5] = 1;
            h[18..20].copy_from_slice(&machine.to_le_bytes());
            h
        };
        let mut bin = elf(62);
        assert_eq!(embedded_bpf_objects(&bin), [], "an x86-64 ELF alone");
        bin.extend(b"rodata");
        bin.extend(elf(247));
        assert_eq!(embedded_bpf_objects(&bin), [70], "one BPF object embedded");
        bin.extend(elf(247));
        assert_eq!(
            embedded_bpf_objects(&bin),
            [70, 134],
            "two BPF objects embedded"
        );
    }

    #[test]
    fn the_changelog_names_this_version() {
        let text = fs::read_to_string(crate::root().join("packaging/changelog"))
            .expect("packaging/changelog");
        if let Err(e) = check_changelog(&text) {
            panic!("{e}");
        }
        assert!(
            check_changelog("portguard (0.0.1-1) unstable; urgency=medium\n").is_err(),
            "an older version passed the changelog check"
        );
    }

    #[test]
    fn the_control_file_has_the_fields_dpkg_needs() {
        let c = control("amd64", "libc6 (>= 2.34)", 4321);
        for field in [
            "Package: portguard\n",
            &format!("Version: {DEB_VERSION}\n"),
            "Architecture: amd64\n",
            "Installed-Size: 4321\n",
            "Depends: libc6 (>= 2.34)\n",
            "Description: XDP port firewall",
        ] {
            assert!(c.contains(field), "control lacks {field:?}:\n{c}");
        }
        // Continuation lines of the long description start with a space.
        let desc = c
            .split("Description: ")
            .nth(1)
            .unwrap_or_else(|| panic!("no Description in {c}"));
        for line in desc.lines().skip(1) {
            assert!(
                line.starts_with(' '),
                "description line {line:?} is not indented"
            );
        }
        assert!(c.ends_with('\n'));
    }
}
