//! Scenario 4: the resourceful agent over vsock. The workload makes two
//! cgroups with a sleep in each; the agent (rule "/rsrc-*") declares them as
//! containers. L1 polls /v1/containers and /v1/processes over --api-sock.
//! The workload restarts the agent with rules for rsrc-a and rsrc-b, then
//! again with another config (rsrc-c first, then rsrc-b, rsrc-a): it
//! reconnects, adopts rsrc-a and rsrc-b (declared once each over the whole
//! run), and a request an application begins in rsrc-c (`resourceful-agent
//! --client`) is booked in rsrc-c.

use linux_e2e::{http_json, run, scenario_script, u64_at, Scenario};
use serde_json::Value;

fn names(containers: &Value) -> Vec<String> {
    containers
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn agent_declares_cgroups_and_survives_a_restart() {
    let out = run(&Scenario::new("agent", &scenario_script("agent")));
    let r = out.check_common("agent");
    eprintln!("linux-e2e agent: report agent counters {}", r["agent"]);

    // Live API answers, in the order L1 took them.
    let mut files: Vec<_> = std::fs::read_dir(out.dir.join("results/api"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    let snaps: Vec<Vec<String>> = files
        .iter()
        .filter(|f| f.starts_with("containers-"))
        .filter_map(|f| http_json(&out.result_text(&format!("api/{f}"))))
        .map(|v| names(&v))
        .collect();
    eprintln!(
        "linux-e2e agent: {} /v1/containers snapshots; last {:?}",
        snaps.len(),
        snaps.last()
    );
    let both = |s: &Vec<String>| s.iter().any(|n| n == "rsrc-a") && s.iter().any(|n| n == "rsrc-b");
    out.check(
        snaps.iter().any(both),
        "/v1/containers never listed rsrc-a and rsrc-b",
    );
    out.check(
        snaps.last().is_some_and(both),
        "the last /v1/containers lost rsrc-a or rsrc-b",
    );

    let procs = http_json(&out.result_text("api/processes-last.http")).unwrap_or(Value::Null);
    let cgroups: Vec<&str> = procs
        .pointer("/context/report/processes")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter(|p| p["comm"] == "sleep")
                .filter_map(|p| p["cgroup"].as_str())
                .collect()
        })
        .unwrap_or_default();
    out.check(
        cgroups.contains(&"/rsrc-a") && cgroups.contains(&"/rsrc-b"),
        &format!("/v1/processes: sleeps in cgroups {cgroups:?}, want /rsrc-a and /rsrc-b"),
    );

    // The final report: the restart made a second connection, and each
    // container is there once (replayed, not declared twice).
    out.check(
        out.l2_console.contains("RSRC-L2: agent restarted"),
        "the workload restarted the agent",
    );
    assert!(
        u64_at(r, "/agent/connections") >= 2,
        "agent connections: {}",
        r["agent"]
    );
    let all = names(&r["containers"]);
    for c in ["rsrc-a", "rsrc-b"] {
        assert_eq!(
            all.iter().filter(|n| *n == c).count(),
            1,
            "container {c} once in the report (adopted, never declared again): {all:?}"
        );
    }
    // No path is live twice.
    let live: Vec<&str> = r["containers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|c| c["retired"] == false)
                .filter_map(|c| c["path"].as_str())
                .collect()
        })
        .unwrap_or_default();
    let mut unique = live.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), live.len(), "a live path twice: {live:?}");
    assert!(live.contains(&"rsrc-c"), "rsrc-c live: {live:?}");
    // The application's request, confirmed by the VMM, booked in rsrc-c.
    let reply = out.l2_value("RSRC-L2: client begin rsrc-c: ");
    out.check(
        reply.starts_with("{\"ok\":true,\"request\":") && reply.ends_with("rc=0"),
        &format!("the client's begin in rsrc-c: {reply}"),
    );
    let booked: Vec<&Value> = r["requests"]
        .as_array()
        .map(|a| a.iter().filter(|q| q["external_id"] == 77).collect())
        .unwrap_or_default();
    assert_eq!(booked.len(), 1, "one request with external id 77: {booked:?}");
    assert_eq!(booked[0]["container_path"], "rsrc-c", "{:?}", booked[0]);
    assert_eq!(
        booked[0]["state"], "finished",
        "it ended with the client's connection"
    );
    assert_eq!(
        r["agent"]["rejected"].as_u64().unwrap_or(0),
        0,
        "nothing refused (zero counters are left out): {}",
        r["agent"]
    );
}
