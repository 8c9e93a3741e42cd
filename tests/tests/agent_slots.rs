//! Tag slots registered by the agent as guest-physical pages, end to end:
//! the test guest's `agent-slots` scenario registers no region with the
//! accounting device; it tells the VMM over the agent protocol (vsock port
//! 1024, `register_slots`) that vCPU 0's slot is slot 5 of a page of its
//! own RAM, checks the `slots_registered` answer, waits on a gate, and does
//! 9 port writes with its container's tag in that slot. The exits must be
//! charged to the container exactly: the VMM reads the slot through the
//! page. A second VM names a page of the MMIO gap: refused, counted, and
//! the same work stays unattributed.
//!
//! Exact counts: docs/guest-scenarios.md, `agent-slots`.

use std::io::{Read, Write};

use accounting::agent;
use resourceful_tests::{api_json, boot_gated, scratch_dir, wait_for, Run};
use serde_json::{json, Value};

const GATE_PORT: u32 = 5000;
/// Port writes the guest does with the container's tag in its slot.
const WORK: u64 = 9;

/// Boots `agent-slots` with `extra` on the command line, opens the gate
/// once `GET /v1/vm` shows `slots` satisfying `ready`, and returns the run
/// and the `slots` seen then.
fn run(case: &str, extra: &str, ready: impl Fn(&Value) -> bool) -> (Run, Value) {
    let dir = scratch_dir(&format!("agent-slots-{case}"));
    let (vm, mut gate, api_sock) = boot_gated(
        &dir,
        "agent-slots",
        format!("scenario=agent-slots agent_gate_port={GATE_PORT} {extra}"),
        GATE_PORT,
    );
    let slots = wait_for("the slots in GET /v1/vm", &vm, || {
        let s = api_json(&api_sock, "/v1/vm")["slots"].clone();
        ready(&s).then_some(s)
    });
    gate.write_all(b"1").unwrap();
    let mut rest = Vec::new();
    assert_eq!(
        gate.read_to_end(&mut rest).unwrap(),
        0,
        "the guest closes the gate"
    );
    let run = vm.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (run, slots)
}

#[test]
fn exits_are_charged_through_a_slot_the_agent_registered_as_a_page() {
    // The answer the guest compares byte for byte
    // (images/guest/src/agent_slots.rs).
    let reply = agent::encode(&agent::VmmMessage::SlotsRegistered { vcpus: vec![0] }).unwrap();
    assert_eq!(&reply[4..], br#"{"type":"slots_registered","vcpus":[0]}"#);

    let (run, slots) = run("in-ram", "", |s| s["registrations"] == 1);
    assert_eq!(
        slots,
        json!({"source": "agent", "vcpus": [0], "pages": 1, "registrations": 1, "refusals": 0})
    );
    // Exit status 0: the guest got `slots_registered` (50 otherwise).
    run.assert_clean();
    assert!(
        run.report.guest_errors.is_empty(),
        "{:?}",
        run.report.guest_errors
    );
    // Exits: [port_in, port_out, mmio_read, mmio_write, shutdown].
    assert_eq!(run.counts_of("slots-svc"), [0, WORK, 0, 0, 0], "{}", run.console);
    assert_eq!(
        run.counts_of("unattributed"),
        [0, 26, 15, 53, 0],
        "{}",
        run.console
    );
    // The report's vm.slots as the API showed it: the registration stays
    // in force to the end.
    let s = &run.report.vm.slots;
    assert_eq!(
        (s.source.as_str(), s.vcpus.as_slice(), s.pages),
        ("agent", &[0u32][..], 1)
    );
    assert_eq!((s.registrations, s.refusals), (1, 0));
    assert!(run.console.contains("slots: done"), "{}", run.console);
}

#[test]
fn a_page_outside_ram_is_refused_counted_and_the_work_stays_unattributed() {
    let (run, slots) = run("outside", "slots_page=outside", |s| s["refusals"] == 1);
    assert_eq!(
        slots,
        json!({"source": "none", "vcpus": [], "pages": 0, "registrations": 0, "refusals": 1})
    );
    // Exit status 0: the guest got `refused` with `slots_not_in_ram`.
    run.assert_clean();
    assert_eq!(run.error("slots_not_in_ram"), 1);
    assert_eq!(run.report.guest_errors.len(), 1, "{:?}", run.report.guest_errors);
    assert_eq!(run.counts_of("slots-svc"), [0, 0, 0, 0, 0]);
    // The same exits as above, the 9 port writes among them.
    assert_eq!(
        run.counts_of("unattributed"),
        [0, 26 + WORK, 15, 53, 0],
        "{}",
        run.console
    );
    assert_eq!(run.report.vm.slots.refusals, 1);
    assert_eq!(run.report.agent.get("rejected"), Some(&1));
}
