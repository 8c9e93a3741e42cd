//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

/// `tests/fixtures/NAME`.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "ga-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }

    pub fn join(&self, s: &str) -> PathBuf {
        self.0.join(s)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An application's line connection to an agent's local interface (its
/// requests end when it closes).
pub struct App {
    w: std::os::unix::net::UnixStream,
    r: std::io::BufReader<std::os::unix::net::UnixStream>,
}

impl App {
    /// Wraps a connected stream (replies awaited at most 10 s).
    pub fn new(w: std::os::unix::net::UnixStream) -> Self {
        w.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        Self {
            r: std::io::BufReader::new(w.try_clone().unwrap()),
            w,
        }
    }

    /// One request line, its reply as JSON.
    pub fn call(&mut self, line: &str) -> serde_json::Value {
        use std::io::{BufRead, Write};
        writeln!(self.w, "{line}").unwrap();
        let mut reply = String::new();
        self.r.read_line(&mut reply).unwrap();
        serde_json::from_str(&reply).unwrap()
    }
}
