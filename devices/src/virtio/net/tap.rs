//! The host side of a virtio-net device: a [`NetBackend`], and the TAP
//! interface that implements it.
//!
//! Frames cross the backend with the 12-byte virtio-net v1 header in front
//! (`struct virtio_net_hdr_mrg_rxbuf`): the TAP is opened with
//! `IFF_VNET_HDR` and `TUNSETVNETHDRSZ` = 12, so what the guest sends can
//! be written as it is, and what the TAP reads has room for the header.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// Length of the virtio-net v1 header (`virtio_net_hdr_mrg_rxbuf`).
pub const VNET_HDR_LEN: usize = 12;
/// Longest interface name Linux accepts (IFNAMSIZ less the NUL).
pub const MAX_IFNAME: usize = 15;

/// Where a virtio-net device sends and receives frames. Each frame carries
/// the [`VNET_HDR_LEN`]-byte virtio-net header in front.
pub trait NetBackend: Send {
    /// Reads one frame into `buf`; `ErrorKind::WouldBlock` when none waits.
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize>;
    /// Writes one frame.
    fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<usize>;
    /// A file descriptor that polls readable when a frame waits, if any.
    fn raw_fd(&self) -> Option<RawFd>;
}

/// What went wrong opening a TAP interface (the operator's to fix).
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name is not a valid Linux interface name.
    #[error("invalid TAP name {0:?}: use 1 to 15 bytes, no '/' and no whitespace")]
    InvalidName(String),
    /// `/dev/net/tun` could not be opened.
    #[error("cannot open /dev/net/tun: are you root or in the netdev group, and is the tun module loaded?")]
    OpenTun(#[source] std::io::Error),
    /// `TUNSETIFF` failed.
    #[error(
        "cannot attach to TAP {name}: it may be owned by another user or be a TUN device \
         (create it with `ip tuntap add {name} mode tap vnet_hdr`, or pick another name)"
    )]
    SetIff {
        /// The interface.
        name: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `TUNSETVNETHDRSZ` failed.
    #[error("cannot set the virtio-net header size of TAP {name} (the kernel is too old?)")]
    VnetHdrSize {
        /// The interface.
        name: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Bringing the interface up failed.
    #[error("cannot bring TAP {name} up: are you root (CAP_NET_ADMIN)?")]
    Up {
        /// The interface.
        name: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// `struct ifreq` with the flags member of its union (40 bytes on 64-bit).
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl IfReq {
    fn new(name: &str) -> Self {
        let mut r = Self {
            name: [0; 16],
            flags: 0,
            _pad: [0; 22],
        };
        let n = name.len().min(MAX_IFNAME);
        r.name[..n].copy_from_slice(&name.as_bytes()[..n]);
        r
    }
}

/// Checks a Linux interface name: 1..=15 bytes, no '/', no whitespace, no NUL.
pub fn validate_name(name: &str) -> Result<(), TapError> {
    let ok = (1..=MAX_IFNAME).contains(&name.len())
        && !name
            .bytes()
            .any(|b| b == b'/' || b == 0 || b.is_ascii_whitespace())
        && !name.chars().any(char::is_whitespace)
        && name != "."
        && name != "..";
    if ok {
        Ok(())
    } else {
        Err(TapError::InvalidName(name.to_owned()))
    }
}

/// A TAP interface opened non-blocking with the virtio-net v1 header.
/// Closing it removes the interface unless it was made persistent.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Opens TAP `name`, creating it if it does not exist (which needs
    /// CAP_NET_ADMIN), with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`,
    /// non-blocking, and a 12-byte virtio-net header.
    pub fn open(name: &str) -> Result<Self, TapError> {
        validate_name(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        let mut req = IfReq::new(name);
        // The flags fit in a short: 0x0002 | 0x1000 | 0x4000.
        req.flags = libc::c_short::try_from(libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR)
            .unwrap_or(libc::c_short::MAX);
        // SAFETY: `file` is an open /dev/net/tun descriptor and `req` a valid,
        // writable `struct ifreq` layout that outlives the call.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReq) };
        if rc < 0 {
            return Err(TapError::SetIff {
                name: name.to_owned(),
                source: std::io::Error::last_os_error(),
            });
        }
        let hdr_len = libc::c_int::try_from(VNET_HDR_LEN).unwrap_or(12);
        // SAFETY: `file` is a TAP descriptor; the ioctl reads one int from a
        // valid pointer that outlives the call.
        let rc = unsafe {
            libc::ioctl(
                file.as_raw_fd(),
                libc::TUNSETVNETHDRSZ,
                &hdr_len as *const libc::c_int,
            )
        };
        if rc < 0 {
            return Err(TapError::VnetHdrSize {
                name: name.to_owned(),
                source: std::io::Error::last_os_error(),
            });
        }
        // The kernel may have picked the name (e.g. for "tap%d").
        let end = req.name.iter().position(|&b| b == 0).unwrap_or(req.name.len());
        let name = String::from_utf8_lossy(&req.name[..end]).into_owned();
        Ok(Self { file, name })
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sets the interface administratively up (`SIOCSIFFLAGS` with `IFF_UP`).
    pub fn set_up(&self) -> Result<(), TapError> {
        let err = |source| TapError::Up {
            name: self.name.clone(),
            source,
        };
        let (sock, mut req) = self.read_flags().map_err(err)?;
        req.flags |= libc::c_short::try_from(libc::IFF_UP).unwrap_or(1);
        // SAFETY: `sock` is a valid socket and `req` a valid `struct ifreq`;
        // the kernel only reads it.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req as *mut IfReq) } < 0 {
            return Err(err(std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// The interface's `struct ifreq` with its flags (`SIOCGIFFLAGS`), and
    /// the socket it was read through.
    fn read_flags(&self) -> std::io::Result<(std::os::fd::OwnedFd, IfReq)> {
        // SAFETY: plain socket(2) call with constant arguments.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by socket(2) and is owned by nothing else.
        let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let mut req = IfReq::new(&self.name);
        // SAFETY: `sock` is a valid socket and `req` a valid `struct ifreq`.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req as *mut IfReq) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok((sock, req))
    }

    /// Waits, at most `max`, until the kernel has the interface running
    /// (`IFF_RUNNING`: administratively up and its carrier, which opening
    /// the TAP raises, applied). Until then the kernel's no-op queueing
    /// discipline drops what the host sends to the guest: a guest that
    /// talks at once would lose the first replies. Returns whether it is
    /// running; an interface that is not up is not waited for.
    pub fn wait_running(&self, max: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + max;
        loop {
            match self.flags() {
                Some(f) if f & libc::IFF_RUNNING != 0 => return true,
                Some(f) if f & libc::IFF_UP != 0 && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                _ => return false,
            }
        }
    }

    /// The interface's flags (`SIOCGIFFLAGS`), if they can be read.
    fn flags(&self) -> Option<libc::c_int> {
        let (_, req) = self.read_flags().ok()?;
        Some(libc::c_int::from(req.flags) & 0xffff)
    }

    /// Reads one frame (virtio-net header first); `WouldBlock` when none waits.
    pub fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file.read(buf)
    }

    /// Writes one frame (virtio-net header first).
    pub fn write(&mut self, frame: &[u8]) -> std::io::Result<usize> {
        self.file.write(frame)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl NetBackend for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.read(buf)
    }

    fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<usize> {
        self.write(frame)
    }

    fn raw_fd(&self) -> Option<RawFd> {
        Some(self.as_raw_fd())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The index of interface `name` in the calling thread's namespace (0: none).
    fn if_index(name: &str) -> u32 {
        let c = std::ffi::CString::new(name).unwrap();
        // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
        unsafe { libc::if_nametoindex(c.as_ptr()) }
    }

    #[test]
    fn names_are_validated() {
        for bad in [
            "",
            "a/b",
            "has space",
            "tab\t",
            "sixteen-bytes-xx",
            ".",
            "é\u{3000}",
        ] {
            assert!(
                matches!(validate_name(bad), Err(TapError::InvalidName(_))),
                "{bad:?}"
            );
        }
        for good in ["tap0", "rsrct12345", "fifteen-bytes-x"] {
            assert!(validate_name(good).is_ok(), "{good:?}");
        }
        assert!(matches!(Tap::open("bad/name"), Err(TapError::InvalidName(_))));
    }

    #[test]
    fn a_tap_in_a_fresh_network_namespace_takes_a_frame() {
        let name = format!("rsrct{}", std::process::id());
        let host_name = name.clone();
        // Namespaces are per thread for unshare(CLONE_NEWNET): the host's
        // stays untouched, and the TAP dies with this thread's namespace.
        let outcome = std::thread::spawn(move || -> Result<(), String> {
            // SAFETY: unshare(2) with a constant flag only changes this thread's namespace.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(format!("unshare: {}", std::io::Error::last_os_error()));
            }
            let mut tap =
                Tap::open(&name).map_err(|e| format!("{e}: {:?}", std::error::Error::source(&e)))?;
            assert_eq!(tap.name(), name);
            assert_ne!(if_index(&name), 0);
            tap.set_up().map_err(|e| e.to_string())?;
            let mut frame = vec![0u8; VNET_HDR_LEN];
            frame.extend_from_slice(&[0xff; 6]); // broadcast
            frame.extend_from_slice(&[0x52, 0x54, 0, 0, 0, 1]);
            frame.extend_from_slice(&0x88b5u16.to_be_bytes()); // local experimental
            frame.extend_from_slice(&[0xab; 46]);
            let n = tap.write(&frame).map_err(|e| format!("write: {e}"))?;
            assert_eq!(n, frame.len());
            // Nothing comes back on an isolated interface: non-blocking.
            let mut buf = [0u8; 128];
            let r = tap.read(&mut buf);
            assert!(r.is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock));
            drop(tap);
            assert_eq!(if_index(&name), 0, "a non-persistent TAP goes with its fd");
            Ok(())
        })
        .join()
        .unwrap();
        // Like the VM tests, which need /dev/kvm, this one needs what it
        // tests: CAP_NET_ADMIN/CAP_SYS_ADMIN and /dev/net/tun (CI runs as
        // root). It fails rather than passing without having run.
        if let Err(e) = outcome {
            panic!("{e} (run the tests as root, on a host with /dev/net/tun)");
        }
        assert_eq!(if_index(&host_name), 0, "the host namespace never saw the TAP");
    }
}
