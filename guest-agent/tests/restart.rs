//! Issue 14's reproduction, with the real agent binary against a running
//! VMM: an agent restarted with a different configuration never books work
//! to another container, live container names stay unique, and a refusal
//! reaches the application that asked.
//!
//! The demo guest declares `frontend`, `frontend/api`, `db` and `batch`
//! through its tag ABI ring. The agent's cgroup root is a plain directory
//! with `web/`, `batch/` and `api/` in it.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{App, TempDir};
use serde_json::Value;
use vmm::api::client;

fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
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

/// A running agent, killed on drop (a failing test leaves none behind).
struct AgentProc(Child);

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_agent(dir: &TempDir, config: &str) -> AgentProc {
    let path = dir.join("agent.json");
    std::fs::write(&path, config).unwrap();
    let _ = std::fs::remove_file(dir.join("local.sock"));
    let child = Command::new(env!("CARGO_BIN_EXE_resourceful-agent"))
        .arg("--connect")
        .arg(format!("unix:{}", dir.join("agent.sock").display()))
        .arg("--listen")
        .arg(dir.join("local.sock"))
        .arg("--config")
        .arg(&path)
        .arg("--cgroup-root")
        .arg(dir.join("cgroup"))
        .args(["--interval-ms", "100", "--no-threads", "--tagging", "off"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("resourceful-agent starts");
    AgentProc(child)
}

/// An application connected to the agent's local socket.
fn connect_app(dir: &TempDir) -> App {
    App::new(eventually("the agent's local socket", || {
        UnixStream::connect(dir.join("local.sock")).ok()
    }))
}

/// Begins a request in `container`; it must be confirmed.
fn begin(app: &mut App, container: &str) -> u64 {
    let r = app.call(&format!(r#"{{"op":"begin","container":"{container}"}}"#));
    assert_eq!(r["ok"], true, "begin in {container}: {r}");
    r["request"].as_u64().unwrap()
}

/// Live containers by path; fails if a path is live twice.
fn live(api_sock: &Path) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    for c in api(api_sock, "/v1/containers").as_array().unwrap() {
        if c["retired"] == false {
            let path = c["path"].as_str().unwrap().to_string();
            let id = c["id"].as_u64().unwrap();
            assert!(out.insert(path.clone(), id).is_none(), "{path} is live twice");
        }
    }
    out
}

/// The container path `/v1/requests` books request `id` under.
fn booked_under(api_sock: &Path, id: u64) -> Option<String> {
    let rs = api(api_sock, "/v1/requests?order=begin&limit=10000");
    rs.as_array()?
        .iter()
        .rev()
        .find(|r| r["id"] == id)
        .map(|r| r["container_path"].as_str().unwrap_or_default().to_string())
}

#[test]
fn a_restart_with_another_config_books_every_request_where_its_application_said() {
    let dir = TempDir::new("restart");
    for d in ["web", "batch", "api"] {
        std::fs::create_dir_all(dir.join("cgroup").join(d)).unwrap();
    }
    let (agent_sock, api_sock) = (dir.join("agent.sock"), dir.join("api.sock"));
    let mut vm_config = resourceful_tests::config("demo loop=1", 2);
    vm_config.agent_sock = Some(agent_sock.clone());
    vm_config.api_sock = Some(api_sock.clone());
    vm_config.time_limit_ms = Some(15_000);
    let vm = std::thread::spawn(move || resourceful_tests::boot(vm_config));
    eventually("the VM's sockets", || {
        (agent_sock.exists() && api_sock.exists()).then_some(())
    });
    eventually("the demo's batch", || {
        live(&api_sock).contains_key("batch").then_some(())
    });

    // The first agent: rules /web, /batch. `batch` is the demo's name: the
    // VMM refuses the agent's, and an application asking for it hears so.
    let agent = start_agent(&dir, r#"{"containers":[{"cgroup":"/web"},{"cgroup":"/batch"}]}"#);
    let web_id = eventually("web declared", || live(&api_sock).get("web").copied());
    eventually("the agent's batch refused", || {
        let s = &api(&api_sock, "/v1/vm")["agent"]["stats"];
        (s["rejected"].as_u64()? >= 1).then_some(())
    });
    let mut app = connect_app(&dir);
    let r = app.call(r#"{"op":"declare","container":"batch"}"#);
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(
        r["error"], "the VMM refused declare_container: ring_duplicate_name",
        "{r}"
    );
    let first = begin(&mut app, "web");
    assert_eq!(booked_under(&api_sock, first).as_deref(), Some("web"));
    assert_eq!(
        app.call(&format!(r#"{{"op":"end","request":{first}}}"#))["ok"],
        true
    );
    let open = begin(&mut app, "web");
    drop(agent);
    drop(app);

    // The second agent: rules /api, /web, /batch, matching in another order.
    let _agent = start_agent(
        &dir,
        r#"{"containers":[{"cgroup":"/api"},{"cgroup":"/web"},{"cgroup":"/batch"}]}"#,
    );
    eventually("api declared", || live(&api_sock).get("api").copied());
    let mut app = connect_app(&dir);
    let api_req = begin(&mut app, "api");
    let web_req = begin(&mut app, "web");
    assert_eq!(booked_under(&api_sock, api_req).as_deref(), Some("api"));
    assert_eq!(booked_under(&api_sock, web_req).as_deref(), Some("web"));
    let now = live(&api_sock);
    assert_eq!(now.get("web"), Some(&web_id), "web adopted under its id");
    assert!(now.contains_key("api") && now.contains_key("batch"));
    // The request the first agent's application left open ended with it.
    let rs = api(&api_sock, "/v1/requests?order=begin&limit=10000");
    let left = rs.as_array().unwrap().iter().find(|r| r["id"] == open).unwrap();
    assert_eq!(left["state"], "finished", "{left}");
    assert_eq!(left["container_path"], "web");
    // Ids never repeat: each request is booked once.
    for id in [first, open, api_req, web_req] {
        let n = rs.as_array().unwrap().iter().filter(|r| r["id"] == id).count();
        assert_eq!(n, 1, "request {id} appears {n} times");
    }
    drop(app);

    // A script's client: one begin confirmed, one declaration refused.
    let mut child = Command::new(env!("CARGO_BIN_EXE_resourceful-agent"))
        .arg("--client")
        .arg("--listen")
        .arg(dir.join("local.sock"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"{\"op\":\"begin\",\"container\":\"api\"}\n{\"op\":\"declare\",\"container\":\"db\"}\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0]["ok"], true, "{text}");
    assert_eq!(
        lines[1]["error"], "the VMM refused declare_container: ring_duplicate_name",
        "{text}"
    );
    assert_eq!(out.status.code(), Some(1), "a reply was not ok");

    let run = vm.join().unwrap();
    run.assert_conserved();
}
