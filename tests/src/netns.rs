//! A private network namespace with a TAP for the VM, for the tests and
//! benchmarks that put a real VM on a real TAP (`tests/tests/net.rs`, the
//! flood experiment): the host end is `HOST_IP`, the guest `GUEST_IP`
//! with the MAC `GUEST_MAC`, known to the host (no ARP).

use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// The host's address on the TAP.
pub const HOST_IP: &str = "10.77.0.1";
/// The guest's address.
pub const GUEST_IP: &str = "10.77.0.2";
/// The guest's MAC (give it to the VM's `NetConfig`).
pub const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// A network namespace with a configured TAP, removed (with the TAP) on drop.
pub struct NetNs {
    /// The namespace's name.
    pub name: String,
    /// The TAP's name (inside the namespace).
    pub tap: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("the ip tool runs (iproute2)");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Default for NetNs {
    fn default() -> Self {
        Self::new()
    }
}

impl NetNs {
    /// A new namespace with a TAP up at `HOST_IP/24`.
    pub fn new() -> Self {
        // One per test: the tests of this file run in parallel.
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("rsrc{}-{n}", std::process::id());
        let tap = format!("rt{}-{n}", std::process::id());
        ip(&["netns", "add", &name]);
        let ns = Self { name, tap };
        let t = ns.tap.as_str();
        ns.exec(&["ip", "tuntap", "add", "dev", t, "mode", "tap"]);
        ns.exec(&["ip", "addr", "add", &format!("{HOST_IP}/24"), "dev", t]);
        // No IPv6 chatter (router solicitations, MLD) on the guest's wire.
        ns.exec(&["sysctl", "-qw", &format!("net.ipv6.conf.{t}.disable_ipv6=1")]);
        ns.exec(&["ip", "link", "set", t, "up"]);
        // The host knows the guest's MAC: no ARP, so RX carries only echoes.
        let mac = GUEST_MAC
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        ns.exec(&[
            "ip",
            "neigh",
            "add",
            GUEST_IP,
            "lladdr",
            &mac,
            "dev",
            t,
            "nud",
            "permanent",
        ]);
        ns
    }

    /// Runs `ip netns exec NAME args...`, which must succeed.
    pub fn exec(&self, args: &[&str]) {
        let mut full = vec!["netns", "exec", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full);
    }

    /// The TAP's MAC (the guest's peer).
    pub fn tap_mac(&self) -> String {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.name,
                "cat",
                &format!("/sys/class/net/{}/address", self.tap),
            ])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// Moves the calling thread into the namespace.
    pub fn enter(&self) {
        let f = std::fs::File::open(format!("/var/run/netns/{}", self.name)).unwrap();
        // SAFETY: setns on a valid namespace fd; it changes only this thread.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}
