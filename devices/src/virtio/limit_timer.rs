//! The release timer of a device with per-container limits
//! (docs/limits-per-container.md): a non-blocking timerfd on the device's
//! event loop, armed for the moment the first held request's tokens are
//! due, and an eventfd that wakes the device when its limits change live
//! (the API writes it after a change, [`LimitTimer::waker`]). virtio-blk
//! and virtio-net TX both use it.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use accounting::warn_rl;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

/// A non-blocking timerfd armed for held work, and the wake of a live
/// change.
#[derive(Debug)]
pub struct LimitTimer(TimerFd, EventFd);

impl LimitTimer {
    /// A disarmed timer whose reads never block.
    pub fn new() -> io::Result<Self> {
        let timer = TimerFd::new()?;
        // SAFETY: F_GETFL/F_SETFL on an fd this function owns; no memory is passed.
        let flags = unsafe { libc::fcntl(timer.as_raw_fd(), libc::F_GETFL) };
        // SAFETY: as above.
        if flags < 0 || unsafe { libc::fcntl(timer.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(Self(timer, EventFd::new(EFD_NONBLOCK)?))
    }

    /// A handle that wakes the device (its event loop then takes up a
    /// changed limit and re-arms): a duplicate of the wake eventfd.
    pub fn waker(&self) -> io::Result<EventFd> {
        self.1.try_clone()
    }

    /// The wake eventfd, for the event loop.
    pub fn wake_fd(&self) -> &EventFd {
        &self.1
    }

    /// Consumes a wake (non-blocking).
    pub fn acknowledge_wake(&mut self) {
        let _ = self.1.read();
    }

    /// Arms the timer to fire in `next` (at least 1 ns: 0 would disarm it),
    /// or disarms it when nothing is held; `device` names it in the warning
    /// if that fails.
    pub fn arm(&mut self, next: Option<Duration>, device: &str) {
        let r = match next {
            Some(d) => self.0.reset(d.max(Duration::from_nanos(1)), None),
            None => self.0.clear(),
        };
        if let Err(e) = r {
            warn_rl!("{device}: cannot arm the limit timer: {e}");
        }
    }

    /// Consumes an expiry. Non-blocking: nothing to read when it was
    /// re-armed since it fired.
    pub fn acknowledge(&mut self) {
        let _ = self.0.wait();
    }
}

impl AsRawFd for LimitTimer {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}
