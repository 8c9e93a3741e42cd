//! Unix sockets only the VMM's user may connect to.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Binds a listening Unix socket at `path` with mode 0600.
///
/// The socket is bound under a temporary name in the same directory, made
/// 0600 and only then renamed into place, so nobody ever finds it at `path`
/// with a wider mode (binding at `path` and then changing the mode leaves a
/// window in which anyone may connect). The caller deals with whatever was
/// at `path` before.
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
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn the_socket_appears_private_and_serves() {
        let p = std::env::temp_dir().join(format!("rsrc-sock-test-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&p);
        let l = bind_private(&p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let _c = UnixStream::connect(&p).unwrap();
        assert!(l.accept().is_ok());
        std::fs::remove_file(&p).unwrap();
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
}
