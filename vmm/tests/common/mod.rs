//! Helpers shared by the tests that scrape `--metrics-addr` over TCP: a
//! VMM child process that is killed if the test fails, and a tiny HTTP/1.1
//! GET over `std::net::TcpStream`.

#![allow(dead_code)] // Each test file uses its own part.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The line the VMM logs once `--metrics-addr` is bound.
pub const SERVING: &str = "serving Prometheus metrics on http://";

/// A scratch path unique to this process and `name`.
pub fn scratch(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("resourceful-prom-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

/// `GET target` over HTTP/1.1 with `Connection: close`: status and body.
pub fn http_get(addr: SocketAddr, target: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no end of headers in {raw:?}")))?;
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    let chunked = head
        .lines()
        .any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.contains("chunked"));
    Ok((status, if chunked { dechunk(body)? } else { body.to_string() }))
}

/// The body of a `Transfer-Encoding: chunked` answer (Prometheus' Go
/// server sends larger answers so).
fn dechunk(mut raw: &str) -> std::io::Result<String> {
    let bad = || std::io::Error::other("bad chunked body");
    let mut out = String::new();
    loop {
        let (size, rest) = raw.split_once("\r\n").ok_or_else(bad)?;
        let size =
            usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16).map_err(|_| bad())?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(rest.get(..size).ok_or_else(bad)?);
        raw = rest.get(size + 2..).ok_or_else(bad)?;
    }
}

/// `s` percent-encoded for a URL query value.
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Sums the samples of `name` in an exposition by the value of `label`
/// (`""`: one sum over all).
pub fn sum_by(text: &str, name: &str, label: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name).and_then(|r| r.strip_prefix('{')) else {
            continue;
        };
        let (labels, value) = rest.rsplit_once("} ").expect("labels and value");
        let key = labels
            .split("\",")
            .filter_map(|kv| kv.split_once("=\""))
            .find(|(k, _)| *k == label)
            .map(|(_, v)| v.trim_end_matches('"').to_string())
            .unwrap_or_default();
        *out.entry(key).or_insert(0.0) += value.parse::<f64>().expect("a number");
    }
    out
}

/// A VMM child process, killed (and its files removed) when dropped, so a
/// failing test leaves nothing running.
pub struct Vmm {
    child: Child,
    stderr: Arc<Mutex<String>>,
    /// Its API socket.
    pub api_sock: PathBuf,
    /// Its JSON report, written when it ends.
    pub report: PathBuf,
    /// Its console.
    pub console: PathBuf,
    /// More files of the test's removed with it (sockets the VMM made).
    pub also_remove: Vec<PathBuf>,
}

impl Vmm {
    /// Starts `resourceful run` of the test guest with `cmdline` for
    /// `tenant`, its API on a scratch socket, its report to a scratch file,
    /// and `extra` flags.
    pub fn start(tenant: &str, cmdline: &str, vcpus: u8, extra: &[&str]) -> Self {
        Self::start_in(None, tenant, cmdline, vcpus, extra)
    }

    /// As [`Vmm::start`], in the network namespace `netns` if given (run
    /// through `ip netns exec`, which execs the VMM: the child is the VMM).
    pub fn start_in(netns: Option<&str>, tenant: &str, cmdline: &str, vcpus: u8, extra: &[&str]) -> Self {
        let api_sock = scratch(&format!("{tenant}.sock"));
        let report = scratch(&format!("{tenant}.json"));
        let console = scratch(&format!("{tenant}.console"));
        let bin = env!("CARGO_BIN_EXE_resourceful");
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, bin]);
                c
            }
            None => Command::new(bin),
        };
        let mut child = cmd
            .args(["run", "--kernel", "builtin:test-guest", "--cmdline", cmdline])
            .args(["--tenant", tenant, "--vcpus", &vcpus.to_string()])
            .arg("--api-sock")
            .arg(&api_sock)
            .arg("--report-json")
            .arg(&report)
            .arg("--console")
            .arg(&console)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the VMM starts");
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().expect("stderr is piped");
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Self {
            child,
            stderr,
            api_sock,
            report,
            console,
            also_remove: Vec::new(),
        }
    }

    /// What the VMM wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits for the logged metrics address (fails if the VMM ends first).
    pub fn metrics_addr(&mut self) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let err = self.stderr();
            if let Some(rest) = err.split(SERVING).nth(1) {
                let addr = rest.split("/metrics").next().unwrap();
                return addr.parse().unwrap_or_else(|e| panic!("{addr:?}: {e}"));
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the VMM ended ({status}) before serving metrics:\n{err}");
            }
            assert!(Instant::now() < deadline, "no metrics address logged:\n{err}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls `/metrics` until the exits of every container add up to
    /// `exits` (the guest then holds, and the books no longer move);
    /// returns that exposition.
    pub fn wait_for_exits(&mut self, addr: SocketAddr, exits: f64) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, text) = http_get(addr, "/metrics").expect("GET /metrics");
            assert_eq!(status, 200);
            let total = sum_by(&text, "resourceful_exits_total", "").values().sum::<f64>();
            if total == exits {
                return text;
            }
            assert!(total < exits, "more exits than the scenario makes: {total}");
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the VMM ended ({status}) at {total} exits:\n{}", self.stderr());
            }
            assert!(Instant::now() < deadline, "still {total} exits of {exits}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERMs the VMM and waits (at most 30 s) for it to end; its exit
    /// status code.
    pub fn stop(&mut self) -> Option<i32> {
        // SAFETY: kill(2) on our own child's pid, which has not been reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "the VMM did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for p in [&self.api_sock, &self.report, &self.console]
            .into_iter()
            .chain(&self.also_remove)
        {
            let _ = std::fs::remove_file(p);
        }
    }
}
