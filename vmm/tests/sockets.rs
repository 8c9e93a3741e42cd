//! The VMM's sockets (`--api-sock`, `--agent-sock`) against what other
//! processes and users do to them: a live VMM's socket is never taken over or
//! removed by another VMM, and a removed socket file never stops a VM from
//! ending with its report.

use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use accounting::report::Report;

fn scratch(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("resourceful-sock-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

fn demo(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_resourceful"))
        .args(["demo", "--vms", "1"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the demo starts")
}

fn resourceful(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_resourceful"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(path).is_err() {
        assert!(Instant::now() < deadline, "{} never answered", path.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits for `child` at most `limit`; a VMM still running then is killed and
/// the test fails (this is what a hang looks like).
fn wait_bounded(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the VMM did not end within {limit:?}: its teardown hangs");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ino(p: &Path) -> u64 {
    std::fs::symlink_metadata(p).expect("the socket exists").ino()
}

#[test]
fn a_live_vmms_sockets_are_never_taken_over_or_removed() {
    let (api, agent, other_api) = (scratch("live-api"), scratch("live-agent"), scratch("other-api"));
    let (api_s, agent_s) = (api.to_str().unwrap(), agent.to_str().unwrap());
    let report = scratch("live.json");
    let mut first = demo(&[
        "--duration",
        "30",
        "--api-sock",
        api_s,
        "--agent-sock",
        agent_s,
        "--report-json",
        report.to_str().unwrap(),
    ]);
    wait_for(&api);
    wait_for(&agent);
    let (api_ino, agent_ino) = (ino(&api), ino(&agent));

    // A second VMM on the first one's API socket is refused, once, clearly.
    let second = resourceful(&["demo", "--vms", "1", "--duration", "1", "--api-sock", api_s]);
    let err = String::from_utf8_lossy(&second.stderr).into_owned();
    assert!(!second.status.success());
    assert_eq!(
        err.matches("another process serves this socket").count(),
        1,
        "{err}"
    );
    assert!(err.contains("--api-sock"), "{err}");
    // A third gets its own API socket but is refused the agent socket: it
    // leaves nothing behind of its own and touches nothing of the first's.
    let third = resourceful(&[
        "demo",
        "--vms",
        "1",
        "--duration",
        "1",
        "--api-sock",
        other_api.to_str().unwrap(),
        "--agent-sock",
        agent_s,
    ]);
    let err = String::from_utf8_lossy(&third.stderr).into_owned();
    assert!(!third.status.success());
    assert_eq!(
        err.matches("another process serves this socket").count(),
        1,
        "{err}"
    );
    assert!(err.contains("--agent-sock"), "{err}");
    assert!(!other_api.exists(), "the refused VMM removed its own API socket");

    assert_eq!(
        (ino(&api), ino(&agent)),
        (api_ino, agent_ino),
        "the first VMM's sockets are untouched"
    );
    let live = resourceful(&["report", "--api-sock", api_s, "--json"]);
    assert!(live.status.success(), "the first VMM still answers on its API");

    // SAFETY: plain kill(2) of our own child.
    unsafe { libc::kill(i32::try_from(first.id()).unwrap(), libc::SIGTERM) };
    wait_bounded(&mut first, Duration::from_secs(20));
    assert!(
        !api.exists() && !agent.exists(),
        "the first VMM removed its sockets"
    );
    let r: Report = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r.vm.end, "signal");
    let _ = std::fs::remove_file(&report);
}

/// Removing either socket file while the VM runs: the VM still ends on time
/// with its report, and a socket someone else then made at the path stays.
fn removed_socket_case(remove_api: bool) {
    let name = if remove_api { "gone-api" } else { "gone-agent" };
    let (api, agent) = (scratch(&format!("{name}-api")), scratch(&format!("{name}-agent")));
    let report = scratch(&format!("{name}.json"));
    let mut vmm = demo(&[
        "--duration",
        "2",
        "--api-sock",
        api.to_str().unwrap(),
        "--agent-sock",
        agent.to_str().unwrap(),
        "--report-json",
        report.to_str().unwrap(),
    ]);
    wait_for(&api);
    wait_for(&agent);
    let gone = if remove_api { &api } else { &agent };
    std::fs::remove_file(gone).unwrap();
    // Someone else's socket now lives at that path.
    let squatter = std::os::unix::net::UnixListener::bind(gone).unwrap();
    let status = wait_bounded(&mut vmm, Duration::from_secs(30));
    assert!(status.success(), "the demo ends by its time limit");
    let r: Report = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r.vm.end, "time_limit");
    assert!(r.conservation.holds);
    assert!(gone.exists(), "the other process's socket was left alone");
    drop(squatter);
    let _ = std::fs::remove_file(gone);
    let _ = std::fs::remove_file(&report);
    assert!(!api.exists() && !agent.exists());
}

#[test]
fn removing_the_agent_socket_does_not_hang_teardown() {
    removed_socket_case(false);
}

#[test]
fn removing_the_api_socket_does_not_hang_teardown() {
    removed_socket_case(true);
}

#[test]
fn a_live_vsock_socket_is_not_taken_over() {
    let uds = scratch("vsock");
    let vsock = format!("cid=3,uds={}", uds.display());
    let spin = [
        "run",
        "--kernel",
        "builtin:test-guest",
        "--cmdline",
        "scenario=spin spin_iters=100000000000",
        "--console",
        "/dev/null",
        "--vsock",
    ];
    let mut first = Command::new(env!("CARGO_BIN_EXE_resourceful"))
        .args(spin)
        .arg(&vsock)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&uds);
    let before = ino(&uds);
    // Bounded: a VMM that took the socket over would spin for ever.
    let mut second = Command::new(env!("CARGO_BIN_EXE_resourceful"))
        .args(spin)
        .arg(&vsock)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_bounded(&mut second, Duration::from_secs(20));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "{err}");
    assert_eq!(
        err.matches("another process serves this socket").count(),
        1,
        "{err}"
    );
    assert_eq!(ino(&uds), before, "the first VMM's vsock socket is untouched");
    // SAFETY: plain kill(2) of our own child.
    unsafe { libc::kill(i32::try_from(first.id()).unwrap(), libc::SIGTERM) };
    wait_bounded(&mut first, Duration::from_secs(20));
    assert!(!uds.exists(), "the first VMM removed its socket");
}
