//! The real `resourceful-agent` binary against a running VMM's agent socket
//! (`--agent-sock`): its context appears in `GET /v1/processes`, the
//! container it declares for a real cgroup shows the guest's view beside the
//! hypervisor's charges, an application's request (through the agent's local
//! socket) carries its trace id, and the agent killed and restarted mid-run
//! reconnects and replays without double-declaring, while the VM's own
//! accounting goes on.
//!
//! Needs root (a cgroup v2 directory is made for a child process).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::TempDir;
use serde_json::Value;
use vmm::api::client;

fn eventually<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn api(sock: &Path, target: &str) -> Value {
    let r = client::get(sock, target).expect("GET over the API socket");
    assert_eq!(r.status, 200, "{target}: {}", r.body);
    serde_json::from_str(&r.body).unwrap()
}

/// The cgroup v2 mount point, from /proc/self/mountinfo.
fn find_cgroup2() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        let mount = pre.split(' ').nth(4)?;
        post.starts_with("cgroup2 ").then(|| PathBuf::from(mount))
    })
}

/// The cgroup v2 hierarchy: the mounted one, or (on a host with cgroup v1
/// only) one this test mounts itself (and leaves mounted: the agent of a
/// concurrent run may be reading it), as the agent in a guest would find.
fn cgroup2_root() -> PathBuf {
    if let Some(root) = find_cgroup2() {
        return root;
    }
    let dir = std::env::temp_dir().join(format!("rsrc-cgroup2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "cgroup2", "cgroup2"])
        .arg(&dir)
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "no cgroup2 hierarchy, and mounting one at {} failed (run as root)",
        dir.display()
    );
    find_cgroup2().expect("the cgroup2 hierarchy just mounted")
}

/// A cgroup with one `sleep` in it; removed (after the sleep) on drop.
struct Cgroup {
    dir: PathBuf,
    sleeper: Child,
}

impl Cgroup {
    fn new(name: &str) -> Self {
        let dir = cgroup2_root().join(name);
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e} (run as root)", dir.display()));
        let sleeper = Command::new("sleep").arg("60").spawn().unwrap();
        std::fs::write(dir.join("cgroup.procs"), sleeper.id().to_string()).unwrap();
        Self { dir, sleeper }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = self.sleeper.kill();
        let _ = self.sleeper.wait();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn start_agent(agent_sock: &Path, listen: &Path, config: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_resourceful-agent"))
        .arg("--connect")
        .arg(format!("unix:{}", agent_sock.display()))
        .arg("--listen")
        .arg(listen)
        .arg("--config")
        .arg(config)
        .args(["--interval-ms", "100", "--no-threads", "--tagging", "off"])
        .stderr(Stdio::null())
        .spawn()
        .expect("resourceful-agent starts")
}

/// One line to the agent's local interface, one line back.
fn local_call(sock: &Path, line: &str) -> Value {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    writeln!(s, "{line}").unwrap();
    let mut reply = String::new();
    BufReader::new(&s).read_line(&mut reply).unwrap();
    serde_json::from_str(&reply).unwrap()
}

#[test]
fn the_real_agent_feeds_the_api_and_survives_being_killed() {
    let dir = TempDir::new("with-vmm");
    let (agent_sock, api_sock, listen) = (
        dir.join("agent.sock"),
        dir.join("api.sock"),
        dir.join("local.sock"),
    );
    let name = format!("rsrc-ga-{}", std::process::id());
    let cg = Cgroup::new(&name);
    let config = dir.join("agent.json");
    std::fs::write(
        &config,
        format!(r#"{{"containers": [{{"cgroup": "/{name}", "name": "svc"}}]}}"#),
    )
    .unwrap();

    let mut vm_config = resourceful_tests::config("demo loop=1", 2);
    vm_config.agent_sock = Some(agent_sock.clone());
    vm_config.api_sock = Some(api_sock.clone());
    vm_config.time_limit_ms = Some(12_000);
    let vm = std::thread::spawn(move || resourceful_tests::boot(vm_config));
    eventually("the VM's sockets", 10, || {
        (agent_sock.exists() && api_sock.exists()).then_some(())
    });

    let mut agent = start_agent(&agent_sock, &listen, &config);
    let cgroup = format!("/{name}");
    let sleeper = cg.sleeper.id();

    // The agent's context, from this machine's real /proc and cgroup tree.
    let procs = eventually("the sleeper in /v1/processes", 10, || {
        let p = api(&api_sock, "/v1/processes");
        let found = p["context"]["report"]["processes"]
            .as_array()?
            .iter()
            .any(|x| x["pid"] == sleeper && x["comm"] == "sleep" && x["cgroup"] == cgroup.as_str());
        found.then_some(p)
    });
    assert_eq!(procs["agent"]["connected"], true);
    assert_eq!(procs["agent"]["peer"]["hello"]["protocol"], 3);
    let me = std::process::id();
    assert!(procs["context"]["report"]["processes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["pid"] == me));

    // The joined view: container `svc` stands for the cgroup.
    let svc = eventually("container svc with a guest view", 10, || {
        let cs = api(&api_sock, "/v1/containers");
        cs.as_array()?
            .iter()
            .find(|c| c["path"] == "svc" && c["guest"]["processes"] == 1)
            .cloned()
    });
    assert_eq!(svc["guest"]["provenance"], "agent");
    assert_eq!(svc["guest"]["cgroup"], cgroup.as_str());
    assert!(svc["guest"]["cpu_usage_us"].is_u64(), "{svc}");
    assert!(svc["charges"].is_object());

    // An application begins a request through the agent's local socket.
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let begun = local_call(
        &listen,
        &format!(r#"{{"op":"begin","container":"svc","external_id":7,"trace_id":"{trace}"}}"#),
    );
    assert_eq!(begun["ok"], true, "{begun}");
    let rid = begun["request"].as_u64().unwrap();
    eventually("the request in /v1/requests", 10, || {
        let rs = api(&api_sock, "/v1/requests?order=begin&limit=10000");
        rs.as_array()?
            .iter()
            .any(|r| r["id"] == rid && r["trace_id"] == trace)
            .then_some(())
    });

    // Kill the agent: the VMM notices, its accounting goes on.
    let declared = api(&api_sock, "/v1/vm")["agent"]["stats"].clone();
    agent.kill().unwrap();
    agent.wait().unwrap();
    eventually("the agent seen as gone", 10, || {
        (api(&api_sock, "/v1/vm")["agent"]["connected"] == false).then_some(())
    });
    let exits_before = api(&api_sock, "/v1/vm")["totals"]["exits_total"]["count"]
        .as_u64()
        .unwrap();
    eventually("exits charged while no agent is connected", 10, || {
        let now = api(&api_sock, "/v1/vm")["totals"]["exits_total"]["count"].as_u64()?;
        (now > exits_before).then_some(())
    });

    // Restart it: it reconnects, replays container svc (a no-op, not a new
    // container) and reports again.
    let _ = std::fs::remove_file(&listen);
    let mut agent = start_agent(&agent_sock, &listen, &config);
    let stats = eventually("a second connection that replayed", 10, || {
        let v = api(&api_sock, "/v1/vm");
        let s = &v["agent"]["stats"];
        (v["agent"]["connected"] == true
            && s["connections"].as_u64()? > declared["connections"].as_u64()?
            && s["replayed"].as_u64()? >= 1
            && s["reports"].as_u64()? > declared["reports"].as_u64()?)
        .then(|| s.clone())
    });
    assert_eq!(stats["malformed"], 0, "{stats}");
    assert_eq!(stats["invalid"], 0, "{stats}");
    let svc_count = api(&api_sock, "/v1/containers")
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["path"] == "svc")
        .count();
    assert_eq!(svc_count, 1, "the replay declared nothing new");

    let run = vm.join().unwrap();
    agent.kill().unwrap();
    agent.wait().unwrap();
    assert_eq!(run.end, vmm::vcpu::exit::VmEnd::TimeLimit, "{}", run.console);
    run.assert_conserved();
    assert!(!run.container("svc").retired);
    for path in ["frontend", "frontend/api", "db", "batch"] {
        assert!(run.container(path).charges.exits_total.count > 0, "{path}");
    }
}
