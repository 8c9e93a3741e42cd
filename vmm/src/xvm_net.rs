//! The host side of a request across two VMs (docs/distributed-requests.md):
//! a private network namespace with a bridge and two TAPs, and a host-side
//! agent connection (`--agent-sock`, docs/agent-protocol.md) that begins a
//! VM's part of a distributed request. Shared by `resourceful demo`
//! (`crate::fleet_xvm`) and `vmm/tests/cross_vm.rs`.

use std::io::{Read, Write};
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The client guest's MAC (`xvm-client`, on `tapa`).
pub const CLIENT_MAC: &str = "02:00:00:00:00:0a";
/// The server guest's MAC (`xvm-server`, on `tapb`).
pub const SERVER_MAC: &str = "02:00:00:00:00:0b";

/// Runs `prog args`, or says what it printed on failure.
pub fn run(prog: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(prog)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {prog}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{prog} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A private network namespace with a bridge `br0` (10.77.0.254/24) and two
/// TAPs on it, `tapa` (the client's, [`CLIENT_MAC`]) and `tapb` (the
/// server's, [`SERVER_MAC`]), removed with everything in it on drop (also
/// when the caller fails). No IPv6 anywhere; static forwarding entries for
/// both guests' MACs and no flooding to the TAPs, so a guest receives only
/// frames sent to its MAC; a static neighbour for the client, so the host
/// never ARPs.
#[derive(Debug)]
pub struct NetNs {
    /// The namespace's name (`ip netns`).
    pub name: String,
}

impl NetNs {
    /// Creates the namespace `name` (an old one of that name is removed
    /// first) and everything in it.
    pub fn new(name: &str) -> Result<Self, String> {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        run("ip", &["netns", "add", name])?;
        let ns = Self { name: name.into() };
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])?;
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"])?;
        // No multicast snooping: the bridge then joins no group and sends
        // no IGMP report of its own.
        ns.exec(&[
            "ip",
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        for (tap, mac) in [("tapa", CLIENT_MAC), ("tapb", SERVER_MAC)] {
            ns.exec(&["ip", "tuntap", "add", "dev", tap, "mode", "tap"])?;
            ns.exec(&["ip", "link", "set", tap, "master", "br0"])?;
            // Only frames for the guest's own MAC reach it: nothing is
            // flooded (unknown unicast, multicast, broadcast).
            ns.exec(&[
                "ip",
                "link",
                "set",
                tap,
                "type",
                "bridge_slave",
                "flood",
                "off",
                "mcast_flood",
                "off",
                "bcast_flood",
                "off",
            ])?;
            ns.exec(&["ip", "link", "set", tap, "up"])?;
            ns.exec(&["bridge", "fdb", "add", mac, "dev", tap, "master", "static"])?;
        }
        ns.exec(&["ip", "addr", "add", "10.77.0.254/24", "dev", "br0"])?;
        ns.exec(&["ip", "link", "set", "br0", "up"])?;
        ns.exec(&[
            "ip",
            "neigh",
            "replace",
            "10.77.0.2",
            "lladdr",
            CLIENT_MAC,
            "dev",
            "br0",
            "nud",
            "permanent",
        ])?;
        Ok(ns)
    }

    /// Runs `args` inside the namespace.
    pub fn exec(&self, args: &[&str]) -> Result<(), String> {
        let mut full = vec!["netns", "exec", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Waits (up to 30 s) until the bridge forwards to and from `tap`. The
    /// TAP's carrier comes up when its VMM opens it, but the kernel applies
    /// that (the queue's activation, the bridge port's state) later, from
    /// its link-watch work, up to a second on: a frame sent before is
    /// dropped.
    pub fn wait_forwarding(&self, tap: &str) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = Command::new("ip")
                .args(["netns", "exec", &self.name, "cat"])
                .arg(format!("/sys/class/net/{tap}/brport/state"))
                .output()
                .map_err(|e| format!("cannot run ip netns exec: {e}"))?;
            // BR_STATE_FORWARDING.
            if String::from_utf8_lossy(&out.stdout).trim() == "3" {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("{tap} in {} never forwarding", self.name));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends the client's gate, `go` from 10.77.0.254:7100 to
    /// 10.77.0.2:7100, from a thread in the namespace.
    pub fn send_gate(&self) -> Result<(), String> {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || -> Result<(), String> {
            let f = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
            // SAFETY: setns on a valid namespace fd; it moves only this thread.
            let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(format!("setns: {}", std::io::Error::last_os_error()));
            }
            let s = UdpSocket::bind("10.77.0.254:7100").map_err(|e| format!("the gate's socket: {e}"))?;
            s.send_to(b"go", "10.77.0.2:7100")
                .map_err(|e| format!("the gate: {e}"))?;
            Ok(())
        })
        .join()
        .map_err(|_| "the gate's thread failed".to_string())?
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// The largest frame accepted from the VMM on the agent socket.
const MAX_FRAME: usize = 1 << 20;

/// A host-side agent connection (docs/agent-protocol.md) to one VMM's
/// `--agent-sock`: length-prefixed JSON frames, `hello` answered by
/// `welcome` and `held`.
#[derive(Debug)]
pub struct HostAgent(UnixStream);

impl HostAgent {
    /// Connects and says `hello` as `agent_version`.
    pub fn connect(path: &Path, agent_version: &str) -> Result<Self, String> {
        let s = UnixStream::connect(path).map_err(|e| format!("{}: {e}", path.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let mut a = Self(s);
        a.send(
            &json!({"type": "hello", "protocol": 3, "agent_version": agent_version, "kernel": "none",
                       "boot_id": agent_version, "hostname": "host"}),
        )?;
        for want in ["welcome", "held"] {
            let got = a.recv()?;
            if got["type"] != want {
                return Err(format!("the VMM answered {got} where {want} was expected"));
            }
        }
        Ok(a)
    }

    /// Sends one message.
    pub fn send(&mut self, v: &Value) -> Result<(), String> {
        let body = serde_json::to_vec(v).map_err(|e| e.to_string())?;
        let len = u32::try_from(body.len()).map_err(|_| "a message too long".to_string())?;
        self.0
            .write_all(&len.to_be_bytes())
            .and_then(|()| self.0.write_all(&body))
            .map_err(|e| format!("the agent socket: {e}"))
    }

    /// Reads one message.
    pub fn recv(&mut self) -> Result<Value, String> {
        let mut len = [0u8; 4];
        self.0
            .read_exact(&mut len)
            .map_err(|e| format!("no frame from the VMM: {e}"))?;
        let n = u32::from_be_bytes(len) as usize;
        if n > MAX_FRAME {
            return Err(format!("a frame of {n} bytes from the VMM"));
        }
        let mut body = vec![0u8; n];
        self.0
            .read_exact(&mut body)
            .map_err(|e| format!("a short frame from the VMM: {e}"))?;
        serde_json::from_slice(&body).map_err(|e| format!("a frame from the VMM is not JSON: {e}"))
    }

    /// Sends `msgs`, then `sync`: every one must be applied (nothing
    /// refused: the first answer must be `synced`).
    pub fn apply(&mut self, msgs: &[Value], seq: u64) -> Result<(), String> {
        for m in msgs {
            self.send(m)?;
        }
        self.send(&json!({"type": "sync", "seq": seq}))?;
        let got = self.recv()?;
        if got == json!({"type": "synced", "seq": seq}) {
            Ok(())
        } else {
            Err(format!("the VMM answered {got} to sync {seq}"))
        }
    }

    /// Declares container `container` named `name` and begins request
    /// `request` in it under `trace_id`, with `extra` messages after.
    pub fn begin_part(
        &mut self,
        container: u32,
        name: &str,
        request: u32,
        trace_id: &str,
        extra: &[Value],
    ) -> Result<(), String> {
        let mut msgs = vec![
            json!({"type": "declare_container", "id": container, "name": name}),
            json!({"type": "begin_request", "id": request, "container": container, "trace_id": trace_id}),
        ];
        msgs.extend_from_slice(extra);
        self.apply(&msgs, 1)
    }
}
