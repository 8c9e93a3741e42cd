//! Scenario 4: the resourceful agent over vsock. The workload makes two
//! cgroups with a sleep in each; the agent (rule "/rsrc-*") declares them as
//! containers. L1 polls /v1/containers and /v1/processes over --api-sock.
//! The workload kills the agent and starts it again: it reconnects, and the
//! containers stay declared once each.

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
            "container {c} once in the report: {all:?}"
        );
    }
}
