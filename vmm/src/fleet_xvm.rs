//! The demo's cross-VM request (`resourceful demo` as root): two more VMs,
//! `acme-web` running `xvm-client` and `globex-svc` running `xvm-server`
//! (docs/guest-scenarios.md), their TAPs on a bridge in a private network
//! namespace ([`crate::xvm_net::NetNs`]); host-side agents over
//! `--agent-sock` begin each VM's part under one W3C trace id and bind the
//! server's flow; the client's three UDP calls are answered; then the
//! parts end and `resourceful trace`'s joiner joins them
//! (docs/distributed-requests.md).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::xvm_net::{HostAgent, NetNs, CLIENT_MAC, SERVER_MAC};

/// The demo's distributed request's trace id.
pub const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
/// Each part's container and request ids (each VM has its own books).
pub const CONTAINER: u32 = 0x1000_0001;
/// See [`CONTAINER`].
pub const REQUEST: u32 = 0x1000_0100;
/// Each guest's exits once it holds (docs/guest-scenarios.md, `xvm-*`,
/// `hold=1`).
pub const EXITS: u64 = 115;
/// The `mmio_write` exits of each guest once its net device is set up.
const NET_INIT_WRITES: u64 = 33;

/// Why the cross-VM request is not run, if it is not: it needs root (a
/// network namespace, TAPs) and `ip`/`bridge` (iproute2).
pub fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root: it needs a private network namespace with a bridge and TAPs".into());
    }
    for tool in ["ip", "bridge"] {
        let found = std::process::Command::new(tool)
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!("`{tool}` (iproute2) is missing"));
        }
    }
    None
}

/// One of the pair: its name, tenant, the `run` flags beyond the fleet's
/// own, and its agent socket.
#[derive(Debug, Clone)]
pub struct PairVm {
    /// The tenant.
    pub tenant: &'static str,
    /// The VM's name.
    pub name: &'static str,
    /// The kernel command line.
    pub cmdline: String,
    /// `--net ... --agent-sock ...`.
    pub flags: Vec<String>,
    /// The host-side agent's socket.
    pub agent_sock: PathBuf,
}

/// The server (first: its part must be begun before any call arrives) and
/// the client, their agent sockets in `work`.
pub fn pair(work: &Path) -> [PairVm; 2] {
    let vm = |tenant, name, scenario, tap, mac| {
        let agent_sock = work.join(format!("{name}.agent"));
        PairVm {
            tenant,
            name,
            cmdline: format!(
                "scenario={scenario} hold=1 xvm_container={CONTAINER} xvm_request={REQUEST} \
                 net_peer_mac={SERVER_MAC} xvm_trace={TRACE}"
            ),
            flags: vec![
                "--net".into(),
                format!("tap={tap},mac={mac}"),
                "--agent-sock".into(),
                agent_sock.display().to_string(),
            ],
            agent_sock,
        }
    };
    [
        vm("globex", "globex-svc", "xvm-server", "tapb", SERVER_MAC),
        vm("acme", "acme-web", "xvm-client", "tapa", CLIENT_MAC),
    ]
}

/// Waits (up to 30 s, or until `alive` fails) for `p` to appear.
pub fn wait_for_path(p: &Path, alive: &mut dyn FnMut() -> anyhow::Result<()>) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !p.exists() {
        alive()?;
        if Instant::now() > deadline {
            anyhow::bail!("{} never appeared", p.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn totals(sock: &Path) -> Option<Value> {
    let r = crate::api::client::get(sock, "/v1/vm").ok()?;
    let v: Value = serde_json::from_str(&r.body).ok()?;
    Some(v["totals"].clone())
}

/// Polls a VM's totals (up to 60 s, or until `alive` fails) until `f` holds.
pub fn wait_totals(
    sock: &Path,
    what: &str,
    f: impl Fn(&Value) -> bool,
    alive: &mut dyn FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        alive()?;
        let t = totals(sock);
        if t.as_ref().is_some_and(&f) {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "{}: no {what} in 60 s (totals {})",
                sock.display(),
                t.unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Begins the server's part (with the flow bound) over its agent socket.
pub fn begin_server(agent_sock: &Path) -> Result<HostAgent, String> {
    let mut a = HostAgent::connect(agent_sock, "resourceful-demo")?;
    let binding = json!({"type": "bind_flow", "flow": {"proto": "udp", "local": "10.77.0.1:7000",
                         "remote": "10.77.0.2:5001"}, "container": CONTAINER, "request": REQUEST});
    a.begin_part(CONTAINER, "svc", REQUEST, TRACE, &[binding])?;
    Ok(a)
}

/// Begins the client's part over its agent socket.
pub fn begin_client(agent_sock: &Path) -> Result<HostAgent, String> {
    let mut a = HostAgent::connect(agent_sock, "resourceful-demo")?;
    a.begin_part(CONTAINER, "web", REQUEST, TRACE, &[])?;
    Ok(a)
}

/// With both parts begun: waits for both guests' net set-up and the
/// bridge, opens the client's gate, waits for the three calls and answers,
/// and ends both parts.
pub fn call(
    ns: &NetNs,
    socks: [&Path; 2],
    agents: &mut [HostAgent; 2],
    alive: &mut dyn FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let writes = |t: &Value| t["exits"]["mmio_write"]["count"].as_u64() == Some(NET_INIT_WRITES);
    for s in socks {
        wait_totals(s, "net set-up", writes, alive)?;
    }
    for tap in ["tapa", "tapb"] {
        ns.wait_forwarding(tap).map_err(anyhow::Error::msg)?;
    }
    ns.send_gate().map_err(anyhow::Error::msg)?;
    for s in socks {
        wait_totals(
            s,
            "calls answered",
            |t| t["exits_total"]["count"].as_u64() == Some(EXITS),
            alive,
        )?;
    }
    for a in agents.iter_mut() {
        a.apply(&[json!({"type": "end_request", "id": REQUEST})], 2)
            .map_err(anyhow::Error::msg)?;
    }
    Ok(())
}

/// The joined request over `socks`, as `resourceful trace` prints it.
pub fn joined(socks: &[PathBuf]) -> crate::api::trace::Joined {
    let answers = socks
        .iter()
        .map(|s| (s.display().to_string(), crate::api::trace::read_vm(s, TRACE)))
        .collect();
    crate::api::trace::join(TRACE, answers)
}
