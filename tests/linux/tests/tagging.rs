//! Linux tasks charged to their containers: L2's agent tags each vCPU's
//! slot at every context switch (eBPF, guest-agent/src/tagger) and
//! registers the slot pages with the VMM (`register_slots`). Two cgroups,
//! rule containers rsrc-a and rsrc-b, run `rsrc-mmio`: writes to the
//! accounting device's scratch register, which only they make — rsrc-a
//! 4000 with the agent running, rsrc-b 2500 after the agent was killed
//! (the pinned tagger goes on), rsrc-a 1000 more under a restarted agent
//! that reuses the pins (one registration at the VMM in all). Each
//! container is charged at least its own writes, and (the slot follows the
//! task) nowhere near the other's. Then a server in rsrc-srv serves three
//! requests at once on three threads, each bound to its request with
//! `work_for`: each request, found by its trace id, is charged its own 500,
//! 1000 or 1500 writes; three more spin 40, 80 and 120 ms of CPU at once,
//! and each is charged that run time through the tagger's switch log.
//! rsrc-blk's 16 direct block writes are charged to it
//! (the tagger's virtio-blk hook: blk-mq often dispatches from a worker),
//! and rsrc-udp's 200 UDP datagrams to L1 too.

use linux_e2e::{run, scenario_script, Scenario};
use serde_json::Value;

fn container<'a>(r: &'a Value, name: &str) -> Option<&'a Value> {
    r["containers"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name && c["retired"] == false)
}

fn mmio_writes(c: &Value) -> u64 {
    c["charges"]["exits"]["mmio_write"]["count"].as_u64().unwrap_or(0)
}

#[test]
fn each_cgroups_exits_are_charged_to_its_container() {
    let out = run(&Scenario::new("tagging", &scenario_script("tagging")));
    let r = out.check_common("tagging");
    let vm = &r["vm"];
    eprintln!("linux-e2e tagging: vm.slots {}", vm["slots"]);
    out.check(
        vm["slots"]["source"] == "agent",
        &format!("the VMM reads no agent slots: vm.slots {}", vm["slots"]),
    );
    out.check(
        vm["slots"]["vcpus"] == serde_json::json!([0]),
        &format!("vCPU 0 has no slot: vm.slots {}", vm["slots"]),
    );
    out.check(
        out.l2_console.contains("RSRC-L2: agent killed")
            && out
                .l2_value("RSRC-L2: agent restarted: ")
                .contains("reusing the pinned tagger"),
        "the restarted agent did not reuse the pinned tagger",
    );
    out.check(
        vm["slots"]["registrations"] == 1 && vm["slots"]["refusals"] == 0,
        &format!(
            "the restarted agent's registration of the same pages changed something: vm.slots {}",
            vm["slots"]
        ),
    );
    let total = r["totals"]["exits"]["mmio_write"]["count"].as_u64().unwrap_or(0);
    let un = container(r, "unattributed").map_or(0, mmio_writes);
    for (name, want, other) in [("rsrc-a", 5000, 2500), ("rsrc-b", 2500, 5000)] {
        let c = container(r, name)
            .unwrap_or_else(|| panic!("no live container {name} in the report: {}", r["containers"]));
        let got = mmio_writes(c);
        eprintln!("linux-e2e tagging: {name} mmio_write {got} (its process made {want})");
        // Its own writes, plus what the kernel did on that vCPU while it
        // ran (an interrupt's device access); never the other's.
        out.check(
            got >= want && got < want + other / 2,
            &format!("{name} was charged {got} mmio writes, its process made {want}"),
        );
    }
    // Where the rest went (conservation is checked by check_common).
    eprintln!("linux-e2e tagging: unattributed mmio_write {un} of {total}");

    // The server's requests, by trace id: each at least its thread's
    // writes, and less than the next request's share on top.
    let requests = r["requests"].as_array().cloned().unwrap_or_default();
    for i in 1..=3u64 {
        let trace = format!("{i:032x}");
        let want = 500 * i;
        let Some(q) = requests.iter().find(|q| q["trace_id"] == trace.as_str()) else {
            panic!("no request with trace id {trace} in the report: {requests:?}");
        };
        let got = mmio_writes(q);
        eprintln!(
            "linux-e2e tagging: request {} (trace {trace}, external {}) mmio_write {got}, its thread made {want}",
            q["id"], q["external_id"]
        );
        out.check(
            q["container_path"] == "rsrc-srv" && q["external_id"] == i && q["state"] == "finished",
            &format!("request {trace} is not rsrc-srv's finished request {i}: {q}"),
        );
        out.check(
            got >= want && got < want + 250,
            &format!("request {trace} was charged {got} mmio writes, its thread made {want}"),
        );
    }

    // Run time from the switch log: three threads spun 40, 80 and 120 ms
    // of their own CPU time at once, taking turns on the one vCPU (about
    // 100 switches among them). Each request is charged its thread's CPU
    // time as the guest counted it, placed by the logged switches; with
    // sampling every 4 ms the shares would be off by whole samples.
    let log = &vm["run_log"];
    eprintln!("linux-e2e tagging: vm.run_log {log}");
    out.check(
        log["switches"].as_u64().unwrap_or(0) > 100 && log["vcpus_logging"] == 1,
        &format!("the tagger's switch log was not placed: vm.run_log {log}"),
    );
    let mut spins = Vec::new();
    for i in 1..=3u64 {
        let trace = format!("{:032x}", 0x10 + i);
        let Some(q) = requests.iter().find(|q| q["trace_id"] == trace.as_str()) else {
            panic!("no request with trace id {trace} in the report: {requests:?}");
        };
        let tail = format!(" external {i} cpu_ns ");
        let cpu: u64 = out
            .l2_console
            .lines()
            .filter(|l| l.contains("RSRC-L2: request "))
            .find_map(|l| l.split_once(&tail).map(|(_, c)| c.trim().parse().unwrap_or(0)))
            .unwrap_or(0);
        let got = q["charges"]["guest_run_ns"].as_u64().unwrap_or(0);
        eprintln!(
            "linux-e2e tagging: spin request {trace}: guest_run_ns {got}, its thread's CPU time {cpu} ns"
        );
        out.check(
            cpu >= 40_000_000 * i,
            &format!("spin request {trace}: its thread ran only {cpu} ns"),
        );
        spins.push((trace, got, cpu));
    }
    // Within 10 %: the guest counts its CPU time on its own clock, which
    // under the emulator does not tick quite at L1's (measured: within
    // 0.2-2.6 %, where 4 ms samples of three threads taking turns would
    // be off by whole samples). Plus the time the log did not cover: when
    // the host is loaded the sampler may read a slot only after more than
    // three switches, the entries in between are lost (`lost`), and their
    // stretch is charged by sampling (`sampled_ns`, the only inexact part).
    // Seen with four builds beside the suite: lost 14, sampled 76 ms,
    // errors of +9, -26 and +18 ms.
    let sampled = log["sampled_ns"].as_u64().unwrap_or(0);
    for (trace, got, cpu) in &spins {
        out.check(
            got.abs_diff(*cpu) <= cpu / 10 + sampled,
            &format!(
                "spin request {trace} was charged {got} ns of run time, its thread ran {cpu} ns, \
                 the log left {sampled} ns to sampling: {spins:?}"
            ),
        );
    }

    // Disk I/O: rsrc-blk's 16 direct 4 KiB writes, whoever dispatched them.
    out.check(
        out.l2_value("RSRC-L2: tagging ready: ")
            .contains("virtio-blk dispatch hooked"),
        "the tagger's virtio-blk hooks did not load in L2",
    );
    let blk = container(r, "rsrc-blk").expect("a live container rsrc-blk");
    eprintln!("linux-e2e tagging: rsrc-blk block {}", blk["charges"]["block"]);
    out.check(
        blk["charges"]["block"]["writes"] == 16 && blk["charges"]["block"]["bytes_written"] == 65536,
        &format!(
            "rsrc-blk's 16 direct 4 KiB writes were charged as {}",
            blk["charges"]["block"]
        ),
    );

    // Network: rsrc-udp's 200 datagrams of 512 bytes (554-byte frames:
    // Ethernet 14, IPv4 20, UDP 8), sent from its own process. No task of
    // it sends anything else, so never more than 200; a frame whose
    // notification another context made (the driver may skip a kick the
    // device did not ask for) would go elsewhere: 200 of 200 in the runs
    // so far, at least 195 wanted.
    let udp = container(r, "rsrc-udp").expect("a live container rsrc-udp");
    let net = &udp["charges"]["net"];
    eprintln!("linux-e2e tagging: rsrc-udp net {net}");
    let frames = net["tx_frames"].as_u64().unwrap_or(0);
    out.check(
        (195..=200).contains(&frames) && net["tx_bytes"].as_u64() == Some(frames * 554),
        &format!("rsrc-udp's 200 datagrams of 554-byte frames were charged as {net}"),
    );
}
