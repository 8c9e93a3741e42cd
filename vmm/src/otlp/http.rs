//! A small blocking HTTP/1.1 client for OTLP/HTTP: one POST per
//! connection (`Connection: close`), plain `http://` only, the whole
//! exchange under one deadline (a collector that accepts and then trickles
//! or says nothing cannot hold the thread past it), the answer's head read
//! up to a bound and its body discarded.
//! It runs on the exporter's own thread, so blocking there never touches a
//! vCPU or the device thread.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Longest answer head read; a longer one is a failed POST.
const MAX_HEAD: usize = 16 * 1024;

/// What a POST came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx: accepted.
    Accepted,
    /// 429, 5xx or a connection-level failure: worth another try.
    Retry(String),
    /// Any other status: trying again would not help.
    Refused(String),
}

/// Where to POST: the resolved address, the `Host` header and the path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Resolved once, when the VMM starts.
    pub addr: SocketAddr,
    /// `HOST:PORT` as given.
    pub host: String,
    /// `/…/v1/traces` or `/…/v1/metrics`.
    pub path: String,
}

impl Target {
    /// `http://HOST:PORT/PATH`, for logs and the report.
    pub fn url(&self) -> String {
        format!("http://{}{}", self.host, self.path)
    }
}

/// POSTs `body` as `application/x-protobuf` to `t`, connecting, sending
/// and reading the answer all before `deadline`.
pub fn post(t: &Target, body: &[u8], deadline: Instant) -> Outcome {
    match exchange(t, body, deadline) {
        Ok(status) => classify(status),
        Err(e) => Outcome::Retry(format!("{}: {e}", t.url())),
    }
}

fn classify(status: u16) -> Outcome {
    match status {
        200..=299 => Outcome::Accepted,
        // Throttled or a server-side failure: maybe not next time.
        429 | 500..=599 => Outcome::Retry(format!("HTTP {status}")),
        _ => Outcome::Refused(format!("HTTP {status}")),
    }
}

/// What is left until `deadline`, or a timeout error.
fn left(deadline: Instant) -> std::io::Result<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::TimedOut, "the POST ran out of time"))
}

/// A connection whose every read and write may only take what is left
/// until the deadline.
struct Deadlined {
    s: TcpStream,
    deadline: Instant,
}

impl Read for Deadlined {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.s.set_read_timeout(Some(left(self.deadline)?))?;
        self.s.read(buf)
    }
}

impl Write for Deadlined {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.s.set_write_timeout(Some(left(self.deadline)?))?;
        self.s.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.s.flush()
    }
}

fn exchange(t: &Target, body: &[u8], deadline: Instant) -> std::io::Result<u16> {
    let s = TcpStream::connect_timeout(&t.addr, left(deadline)?)?;
    s.set_nodelay(true)?;
    let mut s = Deadlined { s, deadline };
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\nConnection: close\r\nUser-Agent: resourceful/{}\r\n\r\n",
        t.path,
        t.host,
        body.len(),
        env!("CARGO_PKG_VERSION"),
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    s.flush()?;
    read_status(&mut s)
}

/// Reads the answer's head (at most [`MAX_HEAD`] bytes) and returns its
/// status code; the body is not read.
fn read_status(s: &mut impl Read) -> std::io::Result<u16> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut buf = vec![0u8; MAX_HEAD];
    let mut len = 0;
    loop {
        if let Some(line_end) = buf[..len].windows(2).position(|w| w == b"\r\n") {
            let line =
                std::str::from_utf8(&buf[..line_end]).map_err(|_| bad("a status line that is not UTF-8"))?;
            let mut parts = line.splitn(3, ' ');
            let (version, code) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            if !version.starts_with("HTTP/1.") || code.len() != 3 {
                return Err(bad("not an HTTP/1.x status line"));
            }
            return code
                .parse()
                .map_err(|_| bad("a status code that is not a number"));
        }
        if len == buf.len() {
            return Err(bad("an answer head over 16 KiB"));
        }
        let n = s.read(&mut buf[len..])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the collector closed the connection before answering",
            ));
        }
        len += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_as_otlp_http_says() {
        assert_eq!(classify(200), Outcome::Accepted);
        assert_eq!(classify(204), Outcome::Accepted);
        for s in [429, 500, 502, 503, 504] {
            assert!(matches!(classify(s), Outcome::Retry(_)), "{s}");
        }
        for s in [301, 400, 404, 413] {
            assert!(matches!(classify(s), Outcome::Refused(_)), "{s}");
        }
    }

    #[test]
    fn the_status_line_is_read_and_garbage_refused() {
        assert_eq!(read_status(&mut &b"HTTP/1.1 503 Busy\r\n\r\n"[..]).unwrap(), 503);
        assert_eq!(
            read_status(&mut &b"HTTP/1.0 200 OK\r\nX: y\r\n\r\nbody"[..]).unwrap(),
            200
        );
        assert!(read_status(&mut &b"SSH-2.0-OpenSSH\r\n"[..]).is_err());
        assert!(read_status(&mut &b"HTTP/1.1 2000 x\r\n"[..]).is_err());
        assert!(read_status(&mut &b"HTTP/1.1 200"[..]).is_err());
        assert!(read_status(&mut &vec![b'a'; MAX_HEAD + 10][..]).is_err());
    }
}
