//! The VMM's listening Unix sockets (`--api-sock`, `--agent-sock`): only the
//! VMM's user may connect, a path another live process serves is never taken
//! over, and a VMM removes only the socket file it created.
//!
//! The rules:
//! - a path is taken only if nothing is there, or a socket nobody answers on
//!   (a stale one from a VMM that died); a socket that answers, or any other
//!   kind of file, is refused and left as it is;
//! - the socket is bound under a temporary name, made 0600, then renamed into
//!   place with `RENAME_NOREPLACE`, so nobody ever finds it with a wider mode
//!   and a socket another process put there in the meantime is not replaced;
//! - on the way out the file at the path is removed only if it is still the
//!   one this VMM created (same device and inode);
//! - stopping a listener never goes through the path (see
//!   [`wake_listener`]), so a removed or replaced file cannot hang it.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Why a socket path was not taken.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// A live process answers on the path.
    #[error("another process serves {0}")]
    InUse(PathBuf),
    /// The path is something other than a socket.
    #[error("{0} exists and is not a socket")]
    NotASocket(PathBuf),
    /// A system call failed.
    #[error("cannot {what} at {path}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
}

/// The socket file a VMM created: removed on [`SocketFile::remove`] only if
/// the path still names it.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    /// The path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the path still names the socket this VMM created.
    pub fn is_ours(&self) -> bool {
        std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.file_type().is_socket() && m.dev() == self.dev && m.ino() == self.ino)
    }

    /// Removes the file if it is still ours; anything else at the path (a
    /// socket another VMM made after ours was deleted) stays.
    pub fn remove(&self) {
        if !self.is_ours() {
            log::info!(
                "{} is no longer the socket this VMM created: left as it is",
                self.path.display()
            );
            return;
        }
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                log::warn!("cannot remove the socket {}: {e}", self.path.display());
            }
        }
    }
}

/// Takes `path` for a new listening socket (see the module rules).
pub fn claim(path: &Path) -> Result<(UnixListener, SocketFile), ClaimError> {
    let io = |what| {
        move |source| ClaimError::Io {
            path: path.to_path_buf(),
            what,
            source,
        }
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            // A live server answers; a stale socket from a dead VMM does not.
            if UnixStream::connect(path).is_ok() {
                return Err(ClaimError::InUse(path.to_path_buf()));
            }
            std::fs::remove_file(path).map_err(io("remove the stale socket"))?;
        }
        Ok(_) => return Err(ClaimError::NotASocket(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("look at the path")(e)),
    }
    let listener = bind_private(path).map_err(|e| match e.kind() {
        io::ErrorKind::AlreadyExists => ClaimError::InUse(path.to_path_buf()),
        _ => io("bind the socket with mode 0600")(e),
    })?;
    let m = std::fs::symlink_metadata(path).map_err(io("look at the new socket"))?;
    Ok((
        listener,
        SocketFile {
            path: path.to_path_buf(),
            dev: m.dev(),
            ino: m.ino(),
        },
    ))
}

/// `rename(from, to)` that fails with `AlreadyExists` instead of replacing.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))
    };
    let (from, to) = (c(from)?, c(to)?);
    // SAFETY: both are valid NUL-terminated paths that outlive the call.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Binds a listening Unix socket at `path` with mode 0600, failing with
/// `AlreadyExists` if something is at `path` by the time it is in place.
pub fn bind_private(path: &Path) -> io::Result<UnixListener> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".rsrc-{}-{n}.sock", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp)?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| rename_noreplace(&tmp, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(listener)
}

/// Wakes a thread blocked in `accept` on `listener` (a clone of its socket):
/// on Linux, shutting a listening Unix socket down makes `accept` fail with
/// `EINVAL` at once. Unlike connecting to the path, this works whatever
/// happened to the socket file.
pub fn wake_listener(listener: &UnixListener) {
    // SAFETY: shutdown on a descriptor this process owns; no memory involved.
    unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn temp(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("rsrc-sock-{name}-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    #[test]
    fn the_socket_appears_private_and_serves() {
        let p = temp("private");
        let (l, file) = claim(&p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let _c = UnixStream::connect(&p).unwrap();
        assert!(l.accept().is_ok());
        file.remove();
        assert!(!p.exists());
        // No temporary name is left behind.
        let leftovers = std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!(".rsrc-{}-", std::process::id()))
            })
            .count();
        assert_eq!(leftovers, 0);
    }

    #[test]
    fn a_live_socket_is_refused_and_left_alone() {
        let p = temp("live");
        let (first, file) = claim(&p).unwrap();
        let ino = std::fs::symlink_metadata(&p).unwrap().ino();
        let Err(err) = claim(&p) else {
            panic!("a served path is refused")
        };
        assert!(matches!(err, ClaimError::InUse(_)), "{err}");
        assert_eq!(err.to_string(), format!("another process serves {}", p.display()));
        assert_eq!(std::fs::symlink_metadata(&p).unwrap().ino(), ino, "untouched");
        let _c = UnixStream::connect(&p).unwrap();
        assert!(first.accept().is_ok(), "the first owner still serves");
        file.remove();
    }

    #[test]
    fn a_stale_socket_is_replaced_and_other_files_refused() {
        let p = temp("stale");
        drop(UnixListener::bind(&p).unwrap()); // nobody listens any more
        let (_l, file) = claim(&p).expect("a stale socket is replaced");
        assert!(file.is_ours());
        file.remove();
        std::fs::write(&p, b"data").unwrap();
        assert!(matches!(claim(&p), Err(ClaimError::NotASocket(_))));
        assert_eq!(std::fs::read(&p).unwrap(), b"data");
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn only_the_socket_we_created_is_removed() {
        let p = temp("ours");
        let (_a, a) = claim(&p).unwrap();
        // Someone deletes ours and another server takes the path.
        std::fs::remove_file(&p).unwrap();
        let (_b, b) = claim(&p).unwrap();
        a.remove();
        assert!(b.is_ours(), "the other server's socket is still there");
        b.remove();
        assert!(!p.exists());
    }

    #[test]
    fn rename_never_replaces() {
        let p = temp("noreplace");
        std::fs::write(&p, b"x").unwrap();
        let Err(err) = bind_private(&p) else {
            panic!("the path is taken")
        };
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn a_blocked_accept_wakes_without_the_path() {
        let p = temp("wake");
        let (l, _file) = claim(&p).unwrap();
        let waker = l.try_clone().unwrap();
        std::fs::remove_file(&p).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let r = l.accept();
            let _ = tx.send(r.is_err());
        });
        std::thread::sleep(Duration::from_millis(50));
        wake_listener(&waker);
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(5)),
            Ok(true),
            "accept returned an error at once"
        );
    }
}
