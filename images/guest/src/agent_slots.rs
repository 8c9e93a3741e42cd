//! The `agent-slots` scenario: the test guest registers its tag slot the way
//! a Linux guest's agent does, as a list of guest-physical pages sent over
//! the agent protocol (`register_slots`, docs/agent-protocol.md), instead of
//! a region registered through the accounting device (which it never
//! touches here: the device's region would win).
//!
//! vCPU 0's slot is slot [`SLOT`] (not 0, so the VMM's slot-number mapping
//! is what finds it) of one page-aligned page of the guest's own `.bss`
//! (identity-mapped: its address is its GPA). The guest checks the VMM's
//! answer byte for byte, waits on the gate (served by the test, which opens
//! it once `GET /v1/vm` shows the slots), stores its container's tag in the
//! slot, does [`WORK`] port writes and stores tag 0 again.
//!
//! With `slots_page=outside` it names a page of the MMIO gap instead: the
//! VMM answers `refused` (`slots_not_in_ram`), and the same work stays
//! unattributed. Exact counts: docs/guest-scenarios.md, `agent-slots`.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::agent::{fail, open, status, Frame, FRAME_MAX};
use crate::io::{port_work, print};
use crate::vsock::{self, op};
use crate::{arg, finish, Boot};
use accounting::abi::{tag, ACCT_MMIO_BASE, NO_REQUEST};

/// The container declared over the agent channel (`slots-svc`).
pub const AS_SVC: u32 = 0x1000_0002;
/// vCPU 0's slot number in the page.
pub const SLOT: usize = 5;
/// Port writes charged through the slot.
pub const WORK: u32 = 9;
/// Guest ports: the agent connection and the gate.
const PORT_AGENT: u32 = 42_000;
const PORT_GATE: u32 = 42_001;

/// One 4 KiB page of 64 slots of 64 bytes (the tag is each slot's first
/// word).
#[repr(C, align(4096))]
struct SlotPage([AtomicU64; 512]);

static SLOT_PAGE: SlotPage = SlotPage([const { AtomicU64::new(0) }; 512]);

/// Stores `t` in vCPU 0's slot of the page.
fn set_page_tag(t: u64) {
    SLOT_PAGE.0[SLOT * 8].store(t, Ordering::Release);
}

fn declare_container() -> Frame {
    Frame::new()
        .s(b"{\"type\":\"declare_container\",\"id\":")
        .n(u64::from(AS_SVC))
        .s(b",\"name\":\"slots-svc\"}")
        .done()
}

fn register_slots(page: u64) -> Frame {
    Frame::new()
        .s(b"{\"type\":\"register_slots\",\"pages\":[")
        .n(page)
        .s(b"],\"cpus\":[{\"apic_id\":0,\"slot\":")
        .n(SLOT as u64)
        .s(b"}]}")
        .done()
}

/// The answer to a registration inside RAM.
const REGISTERED: &[u8] = b"{\"type\":\"slots_registered\",\"vcpus\":[0]}";
/// The answer to a page outside RAM.
const REFUSED: &[u8] =
    b"{\"type\":\"refused\",\"message\":\"register_slots\",\"reason\":\"slots_not_in_ram\"}";

/// See the module documentation and docs/guest-scenarios.md.
pub fn scenario(b: &Boot) -> ! {
    print("slots: start\n");
    let outside = arg(b.cmdline, b"slots_page=outside").is_some();
    let (page, want) = if outside {
        (ACCT_MMIO_BASE, REFUSED)
    } else {
        (SLOT_PAGE.0.as_ptr() as u64, REGISTERED)
    };
    let (mut r, mut a, mut g) = open(b, PORT_AGENT, PORT_GATE);
    let mut buf = [0u8; FRAME_MAX];

    // 1. The gate, then the agent connection: hello, welcome,
    //    declare_container, register_slots and its answer.
    r.connect(&mut g);
    r.connect(&mut a);
    r.handshake(&mut a, &mut buf);
    r.send(&a, op::RW, declare_container().bytes(), 0);
    r.send(&a, op::RW, register_slots(page).bytes(), 0);
    let n = r.recv_frame(&mut a, &mut buf, status::SLOTS_REPLY, "slots: bad answer\n");
    if n != 4 + want.len() || &buf[4..n] != want {
        fail(b, "slots: bad answer\n", status::SLOTS_REPLY);
    }

    // 2. The test saw the slots (or the refusal) in GET /v1/vm.
    r.gate(&mut g, b'1');

    // 3. Work under the container's tag, in the registered slot.
    set_page_tag(tag(AS_SVC, NO_REQUEST));
    port_work(WORK);
    set_page_tag(0);

    // 4. Close both streams: SHUTDOWN, answered by RST.
    r.send(&a, op::SHUTDOWN, &[], vsock::SHUTDOWN_BOTH);
    r.expect(&mut a, op::RST, status::UNEXPECTED, "agent: unexpected packet\n");
    r.send(&g, op::SHUTDOWN, &[], vsock::SHUTDOWN_BOTH);
    r.expect(&mut g, op::RST, status::UNEXPECTED, "agent: unexpected packet\n");

    print("slots: done\n");
    finish(b, 0)
}
