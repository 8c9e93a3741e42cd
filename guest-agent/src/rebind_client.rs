//! The application's side of a rebind page (docs/tagging.md, "Rebind
//! pages"): ask the agent for one over the local socket, map it, and
//! rebind a thread by storing a request id in its word.
//!
//! ```no_run
//! # use std::os::unix::net::UnixStream;
//! # use guest_agent::rebind_client::RebindPage;
//! let s = UnixStream::connect("/run/resourceful-agent.sock")?;
//! let page = RebindPage::request(&s, "web")?;
//! // {"op":"rebind_thread","page":N,"index":0,"tid":TID} on `s` once, then:
//! page.set(0, 268_435_456); // this thread works for request 268435456
//! page.set(0, 0); // back to the container
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::local::Reply;
use crate::tagger::REBIND_SLOTS;

const PAGE: usize = 4096;

/// A mapped rebind page.
#[derive(Debug)]
pub struct RebindPage {
    page: u32,
    words: NonNull<AtomicU64>,
}

// SAFETY: the mapping is shared memory accessed only through atomics.
unsafe impl Send for RebindPage {}
// SAFETY: as above.
unsafe impl Sync for RebindPage {}

impl RebindPage {
    /// Asks the agent on `s` for a page for requests of `container`. `s`
    /// must have no reply pending (nothing read ahead of this reply).
    pub fn request(s: &UnixStream, container: &str) -> io::Result<Self> {
        let line = serde_json::json!({"op": "rebind_page", "container": container}).to_string();
        (&mut &*s).write_all(format!("{line}\n").as_bytes())?;
        let (reply, fd) = read_reply_with_fd(s)?;
        let r: Reply = serde_json::from_slice(&reply).map_err(io::Error::other)?;
        match (r.ok, r.page, fd) {
            (true, Some(page), Some(fd)) => Self::map(page, &fd),
            (true, _, _) => Err(io::Error::other("the agent's reply carried no page descriptor")),
            (false, _, _) => Err(io::Error::other(
                r.error.unwrap_or_else(|| "the agent refused".into()),
            )),
        }
    }

    /// Maps page `page` from its descriptor, read-write.
    pub fn map(page: u32, fd: &OwnedFd) -> io::Result<Self> {
        // SAFETY: a fresh shared mapping of one page of the array; the
        // kernel checks the length and the descriptor.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let words = NonNull::new(p.cast::<AtomicU64>()).ok_or_else(|| io::Error::other("mmap gave NULL"))?;
        Ok(Self { page, words })
    }

    /// The page's number (for `rebind_thread`).
    pub fn page(&self) -> u32 {
        self.page
    }

    /// Word `index`.
    pub fn word(&self, index: u32) -> Option<&AtomicU64> {
        // SAFETY: in bounds of the live page (checked), 8-byte aligned.
        (index < REBIND_SLOTS).then(|| unsafe { &*self.words.as_ptr().add(index as usize) })
    }

    /// The thread registered at `index` works for `request` from its next
    /// switch-in (0: for its page's container alone).
    pub fn set(&self, index: u32, request: u32) {
        if let Some(w) = self.word(index) {
            w.store(u64::from(request), Ordering::Release);
        }
    }
}

impl Drop for RebindPage {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe { libc::munmap(self.words.as_ptr().cast(), PAGE) };
    }
}

/// One reply line from `s`, read a byte at a time (so nothing after it is
/// consumed), and the descriptor that came with it, if any.
pub fn read_reply_with_fd(s: &UnixStream) -> io::Result<(Vec<u8>, Option<OwnedFd>)> {
    let mut line = Vec::new();
    let mut fd = None;
    loop {
        let mut b = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let space = crate::rebind::libc_cmsg_space();
        let mut control = vec![0u8; space];
        // SAFETY: an all-zero msghdr is valid; it is filled in below.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: `msg` points at live buffers for the call.
        let n = unsafe { libc::recvmsg(s.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the agent closed the connection",
            ));
        }
        // SAFETY: the kernel filled `msg`; the header walk stays within
        // `msg_controllen`.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    let raw = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<i32>());
                    fd = Some(OwnedFd::from_raw_fd(raw));
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        if b[0] == b'\n' {
            return Ok((line, fd));
        }
        line.push(b[0]);
        if line.len() > crate::local::MAX_LINE {
            return Err(io::Error::other("the agent's reply line is too long"));
        }
    }
}
