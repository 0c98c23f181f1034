//! Real protocol peers: sipp (SIP), coturn (STUN and TURN), openssl's test
//! server and curl (HTTPS). Servers that live until dropped, clients run
//! side by side with a deadline each, and how a client's output tells
//! whether its conversation got through.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::netns::{NetNs, ns_exec};

/// One conversation of a real protocol tool through portguard.
#[derive(Debug)]
pub struct PeerResult {
    pub name: String,
    pub target: String,
    /// Whether it did what the policy says: got through if allowed (or
    /// with no firewall), did not if forbidden.
    pub ok: bool,
    pub detail: String,
}

/// A peer's server side, killed when dropped (a process in a namespace
/// outlives the namespace's deletion otherwise).
pub(crate) struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn start(ns: &NetNs, program: &str, args: &[&str]) -> Result<Server> {
    Ok(Server(
        ns_exec(ns, program, args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {program} in {}", ns.name()))?,
    ))
}

/// `sipp` answering calls over TCP at `ip`:`port` (`extra`: more flags).
pub(crate) fn sipp_server(ns: &NetNs, ip: &str, port: &str, extra: &[&str]) -> Result<Server> {
    let mut args = vec!["-sn", "uas", "-i", ip, "-p", port];
    args.extend_from_slice(extra);
    args.extend(["-t", "t1", "-nostdin"]);
    start(ns, "sipp", &args)
}

/// openssl's test HTTPS server on `accept` (`PORT` or `ADDRESS:PORT`).
pub(crate) fn https_server(ns: &NetNs, accept: &str, cert: &Certificate) -> Result<Server> {
    #[rustfmt::skip]
    let args = [
        "s_server", "-accept", accept, "-cert", &cert.cert, "-key", &cert.key, "-www", "-quiet",
    ];
    start(ns, "openssl", &args)
}

/// Waits until every `ADDRESS:PORT` of `sockets` (an IPv6 address in
/// brackets) has a listening TCP or bound UDP socket in `ns` (`ss -Hlntu`),
/// at most `within`: the servers bind after they start, and on a loaded
/// machine later than any fixed pause (coturn took more than 0.7 s in a CI
/// run beside other work).
pub(crate) fn wait_listening(ns: &NetNs, sockets: &[String], within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let out = crate::netns::run(&mut ns_exec(ns, "ss", &["-Hlntu"]))?;
        let bound: Vec<&str> = out
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4))
            .collect();
        let missing: Vec<&String> = sockets
            .iter()
            .filter(|s| !bound.contains(&s.as_str()))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "no server listening on {} in {} within {within:?}",
                missing
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                ns.name()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// coturn's `turnserver` with `args`, quiet: no TLS or DTLS listeners, no
/// CLI, no configuration file, no log.
pub(crate) fn turnserver(ns: &NetNs, args: &[&str]) -> Result<Server> {
    let mut all = args.to_vec();
    all.extend([
        "--no-tls",
        "--no-dtls",
        "--no-cli",
        "-n",
        "--no-stdout-log",
        "--log-file",
        "/dev/null",
    ]);
    start(ns, "turnserver", &all)
}

/// `f` with a scratch directory named after `ns` (unique across runs and
/// parallel tests), removed after it on every path.
pub(crate) fn in_scratch<T>(ns: &NetNs, f: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    let dir = std::env::temp_dir().join(format!("portguard-{}", ns.name()));
    std::fs::create_dir_all(&dir)?;
    let result = f(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// A throwaway self-signed certificate and its key, for the TLS servers.
pub(crate) struct Certificate {
    cert: String,
    key: String,
}

/// Makes a [`Certificate`] in `dir`.
pub(crate) fn test_certificate(dir: &Path) -> Result<Certificate> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let (cert, key) = (
        cert.to_string_lossy().into_owned(),
        key.to_string_lossy().into_owned(),
    );
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &cert,
            "-days",
            "1",
            "-subj",
            "/CN=portguard-lab",
        ])
        .output()
        .context("openssl req")?;
    if !made.status.success() {
        bail!(
            "openssl could not make a test certificate: {}",
            String::from_utf8_lossy(&made.stderr)
        );
    }
    Ok(Certificate { cert, key })
}

/// A client: the command, its deadline, and how its exit status and output
/// read as "got through" (with a detail to show).
pub(crate) struct Client {
    pub program: &'static str,
    pub args: Vec<String>,
    pub secs: u64,
    pub through: fn(bool, &str) -> (bool, String),
}

impl Client {
    /// sipp placing 5 calls (10 a second) over TCP to `to` from `from`,
    /// `extra` flags after those, each call given `timeout` seconds (and
    /// sipp 2 s more to finish).
    pub(crate) fn sipp_calls(to: &str, from: &str, extra: &[String], timeout: u64) -> Client {
        let mut args: Vec<String> = ["-sn", "uac", to, "-i", from].map(String::from).into();
        args.extend_from_slice(extra);
        args.extend(
            [
                "-t",
                "t1",
                "-m",
                "5",
                "-r",
                "10",
                "-nostdin",
                "-timeout",
                &format!("{timeout}s"),
            ]
            .map(String::from),
        );
        Client {
            program: "sipp",
            args,
            secs: timeout + 2,
            through: sipp_through,
        }
    }

    /// `turnutils_stunclient`: one STUN binding request to `to`, from
    /// `local` if given.
    pub(crate) fn stun_binding(local: Option<&str>, to: &str) -> Client {
        let mut args: Vec<String> = ["-p", "3478"].map(String::from).into();
        if let Some(l) = local {
            args.extend(["-L".to_string(), l.to_string()]);
        }
        args.push(to.to_string());
        Client {
            program: "turnutils_stunclient",
            args,
            secs: 5,
            through: stun_through,
        }
    }

    /// curl GETting `url` over TLS (the certificate unchecked), `extra`
    /// flags first; what it reads is the status code.
    pub(crate) fn https_get(extra: &[&str], url: &str) -> Client {
        let mut args: Vec<String> = vec!["-sk".into()];
        args.extend(extra.iter().map(|a| (*a).to_string()));
        args.extend(["-o", "/dev/null", "-w", "%{http_code}", url].map(String::from));
        Client {
            program: "curl",
            args,
            secs: 5,
            through: curl_through,
        }
    }

    /// The same with another deadline.
    pub(crate) fn within(self, secs: u64) -> Client {
        Client { secs, ..self }
    }
}

/// One client run: what it is, whether the rules allow it, the client.
pub(crate) struct PeerRun {
    pub name: String,
    pub target: String,
    pub allowed: bool,
    pub client: Client,
}

/// Runs every client from `ns` side by side and judges each: a forbidden
/// one is OK when it did not get through; without the firewall every one
/// should.
pub(crate) fn run_side_by_side(
    ns: &NetNs,
    runs: Vec<PeerRun>,
    firewall: bool,
) -> Result<Vec<PeerResult>> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = runs
            .into_iter()
            .map(|run| scope.spawn(move || peer_result(ns, run, firewall)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

fn peer_result(ns: &NetNs, run: PeerRun, firewall: bool) -> Result<PeerResult> {
    let expected = run.allowed || !firewall;
    let c = &run.client;
    let args: Vec<&str> = c.args.iter().map(String::as_str).collect();
    let (ok, text) = client_run(ns, c.program, &args, c.secs)?;
    let (through, detail) = (c.through)(ok, &text);
    Ok(PeerResult {
        name: run.name,
        target: run.target,
        ok: through == expected,
        detail: match (through, expected) {
            (true, false) => format!("got through: {detail}"),
            (false, false) => format!("blocked ({detail})"),
            _ => detail,
        },
    })
}

/// Runs a client with a deadline; (exit ok, stdout+stderr).
fn client_run(ns: &NetNs, program: &str, args: &[&str], secs: u64) -> Result<(bool, String)> {
    let mut cmd = ns_exec(ns, "timeout", &[&secs.to_string(), program]);
    cmd.args(args).stdin(Stdio::null());
    let out = cmd.output().with_context(|| format!("running {program}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

/// The last line with something on it, for a detail.
pub(crate) fn last_line(text: &str) -> String {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no output")
        .trim()
        .to_string()
}

/// sipp's "Successful call" row: all 5 calls.
fn sipp_through(ok: bool, text: &str) -> (bool, String) {
    let calls = text
        .lines()
        .find(|l| l.contains("Successful call"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "));
    let all = calls.as_deref().is_some_and(|c| c.ends_with(" 5"));
    (ok && all, calls.unwrap_or_else(|| last_line(text)))
}

/// The reflexive address the STUN server answered with.
fn stun_through(ok: bool, text: &str) -> (bool, String) {
    let mapped = text
        .lines()
        .find(|l| l.contains("reflexive addr"))
        .map(|l| l.trim().to_string());
    (
        ok && mapped.is_some(),
        mapped.unwrap_or_else(|| last_line(text)),
    )
}

/// HTTP 200.
fn curl_through(ok: bool, text: &str) -> (bool, String) {
    (
        ok && text.trim() == "200",
        format!(
            "HTTP {}",
            if text.trim().is_empty() {
                "-"
            } else {
                text.trim()
            }
        ),
    )
}

/// turnutils_uclient's last tally: `tot_send_msgs=N, tot_recv_msgs=M`.
pub(crate) fn turn_through(_ok: bool, text: &str) -> (bool, String) {
    let tally = text.lines().rev().find(|l| l.contains("tot_recv_msgs="));
    let number = |key: &str| -> Option<u32> {
        let rest = tally?.split(key).nth(1)?;
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    match (number("tot_send_msgs="), number("tot_recv_msgs=")) {
        (Some(sent), Some(recv)) => (
            sent > 0 && recv == sent,
            format!("{sent} relayed out, {recv} came back"),
        ),
        _ => (false, last_line(text)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_outputs_are_read() {
        let sipp = "  Successful call        |        0                  |        5    \n";
        assert_eq!(
            sipp_through(true, sipp),
            (true, "Successful call | 0 | 5".to_string())
        );
        assert!(!sipp_through(true, &sipp.replace('5', "0")).0);
        let turn = "1: : start_mclient: msz=1, tot_send_msgs=0, tot_recv_msgs=0\n\
                    3: : start_mclient: tot_send_msgs=20, tot_recv_msgs=20\n\
                    3: : Total lost packets 0 (0.000000%)\n";
        assert_eq!(
            turn_through(true, turn),
            (true, "20 relayed out, 20 came back".to_string())
        );
        let lost =
            "7: : start_mclient: msz=1, tot_send_msgs=20, tot_recv_msgs=0, tot_send_bytes ~ 2000\n";
        assert_eq!(
            turn_through(true, lost),
            (false, "20 relayed out, 0 came back".to_string())
        );
        assert!(stun_through(true, "0: : IPv4. UDP reflexive addr: 198.18.1.2:5000\n").0);
        assert!(!stun_through(true, "").0);
        assert!(curl_through(true, "200").0);
        assert!(!curl_through(false, "000").0);
    }

    #[test]
    fn clients_are_the_commands_the_scenarios_ran() {
        let sipp = Client::sipp_calls("198.18.0.2:5061", "198.18.0.1", &[], 10).within(15);
        assert_eq!(
            sipp.args.join(" "),
            "-sn uac 198.18.0.2:5061 -i 198.18.0.1 -t t1 -m 5 -r 10 -nostdin -timeout 10s"
        );
        assert_eq!(sipp.secs, 15);
        let extra = ["-p", "15061", "-mp", "6000"].map(String::from);
        let sipp = Client::sipp_calls("198.18.2.10:5061", "198.18.1.2", &extra, 6);
        assert_eq!(
            sipp.args.join(" "),
            "-sn uac 198.18.2.10:5061 -i 198.18.1.2 -p 15061 -mp 6000 -t t1 -m 5 -r 10 -nostdin -timeout 6s"
        );
        assert_eq!(
            Client::stun_binding(Some("198.18.1.2"), "198.18.2.12")
                .args
                .join(" "),
            "-p 3478 -L 198.18.1.2 198.18.2.12"
        );
        assert_eq!(
            Client::https_get(&["--max-time", "4"], "https://198.18.2.20:443/")
                .args
                .join(" "),
            "-sk --max-time 4 -o /dev/null -w %{http_code} https://198.18.2.20:443/"
        );
    }
}
