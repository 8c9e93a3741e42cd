//! Linux tasks charged to their containers: L2's agent tags each vCPU's
//! slot at every context switch (eBPF, guest-agent/src/tagger) and
//! registers the slot pages with the VMM (`register_slots`). Two cgroups,
//! rule containers rsrc-a and rsrc-b, each run `rsrc-mmio`: 4000 and 2500
//! writes to the accounting device's scratch register, which only they
//! make. Each container is charged at least its own writes, and (the slot
//! follows the task) nowhere near the other's.

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
    let total = r["totals"]["exits"]["mmio_write"]["count"].as_u64().unwrap_or(0);
    let un = container(r, "unattributed").map_or(0, mmio_writes);
    for (name, want, other) in [("rsrc-a", 4000, 2500), ("rsrc-b", 2500, 4000)] {
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
}
