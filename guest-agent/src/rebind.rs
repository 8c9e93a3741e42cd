//! The local interface's rebind-page ops (docs/tagging.md, "Rebind
//! pages"): `rebind_page` gives the client a page of its own (a one-page
//! `BPF_F_MMAPABLE` array, its descriptor passed with the reply by
//! `SCM_RIGHTS`), fixed to one container; `rebind_thread` registers a
//! thread of the client's process at one word of such a page. A thread
//! then rebinds by storing a request id in its word (0: back to the
//! container), with no call to the agent.

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use crate::agent::Inner;
use crate::state::ClientId;

/// `rebind_page`: a new page for requests of `container`.
pub fn page(g: &mut Inner, client: ClientId, container: &str) -> Result<(u32, OwnedFd), String> {
    let r = give(g, client, container);
    count(g, &r);
    r
}

fn give(g: &mut Inner, client: ClientId, container: &str) -> Result<(u32, OwnedFd), String> {
    let Some(t) = &g.tagging.tagger else {
        return Err("slot tagging is off in this agent (see its --tagging and its log)".into());
    };
    let id = g
        .state
        .container_by_name(container)
        .map(|c| c.decl.id)
        .ok_or_else(|| format!("container {container:?} is not live (declare it first)"))?;
    g.tagging.pages.give(t, client, id)
}

/// `rebind_thread`: thread `tid` (default: the client's main thread) reads
/// word `index` of page `page` from its next switch-in; without `page`, no
/// page any more.
pub fn thread(
    g: &mut Inner,
    client: ClientId,
    peer: Option<u32>,
    page: Option<u32>,
    index: u32,
    tid: Option<u32>,
) -> Result<(), String> {
    let r = register(g, client, peer, page, index, tid);
    count(g, &r);
    r
}

fn register(
    g: &mut Inner,
    client: ClientId,
    peer: Option<u32>,
    page: Option<u32>,
    index: u32,
    tid: Option<u32>,
) -> Result<(), String> {
    let Some(pid) = peer else {
        return Err(
            "rebind_thread needs the client's process (SO_PEERCRED), which this connection lacks".into(),
        );
    };
    let tid = tid.unwrap_or(pid);
    if tid == 0 || !Path::new(&format!("/proc/{pid}/task/{tid}")).exists() {
        return Err(format!(
            "thread {tid} is not a thread of the client's process {pid}"
        ));
    }
    let Some(t) = &g.tagging.tagger else {
        return Err("slot tagging is off in this agent (see its --tagging and its log)".into());
    };
    match page {
        Some(p) => g.tagging.pages.bind(t, client, (pid, tid), p, index),
        None => g.tagging.pages.unbind(t, client, tid),
    }
}

/// Drops the registrations of page threads that have exited (each
/// interval): Linux gives their ids to new threads, maybe of another
/// process.
pub fn prune_exited(g: &mut Inner) {
    let Some(t) = &g.tagging.tagger else {
        return;
    };
    let failed = g.tagging.pages.prune_exited(t, |pid, tid| {
        Path::new(&format!("/proc/{pid}/task/{tid}")).exists()
    });
    if failed > 0 {
        g.tagging.errors += 1;
        log::warn!(
            "cannot remove {failed} exited threads from the tagger's rebind thread map; retried later"
        );
    }
}

/// Counts a refusal and logs it, rate-limited (the 1st, 2nd, 4th, 8th…).
fn count<T>(g: &mut Inner, r: &Result<T, String>) {
    if let Err(e) = r {
        let n = &mut g.tagging.pages.refused;
        *n += 1;
        if n.is_power_of_two() {
            log::warn!("rebind page request refused: {e} ({n} refused in all)");
        }
    }
}

/// Writes `line` to `s` with `fd` attached (`SCM_RIGHTS`), retrying the
/// rest of the line without it if the first write is short.
pub fn send_with_fd(s: &UnixStream, line: &[u8], fd: &OwnedFd) -> io::Result<()> {
    let raw = fd.as_raw_fd();
    let space = libc_cmsg_space();
    let mut control = vec![0u8; space];
    let iov = [IoSlice::new(line)];
    // SAFETY: an all-zero msghdr is valid; it is filled in below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr().cast_mut().cast();
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: `control` has CMSG_SPACE(4) bytes, so the first header and
    // its 4 data bytes are in bounds.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(FD_BYTES) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<i32>(), raw);
    }
    // SAFETY: `msg` points at live buffers for the call.
    let n = unsafe { libc::sendmsg(s.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    if n < line.len() {
        io::Write::write_all(&mut &*s, &line[n..])?;
    }
    Ok(())
}

/// One descriptor's bytes in a control message.
pub(crate) const FD_BYTES: u32 = 4;

/// `CMSG_SPACE` of one descriptor.
pub(crate) fn libc_cmsg_space() -> usize {
    // SAFETY: CMSG_SPACE is arithmetic.
    unsafe { libc::CMSG_SPACE(FD_BYTES) as usize }
}
