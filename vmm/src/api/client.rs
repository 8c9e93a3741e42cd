//! A minimal HTTP/1.1 GET client over a Unix socket (one request per
//! connection, `Connection: close`), for `resourceful report --api-sock`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// A response: status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The HTTP status code.
    pub status: u16,
    /// `Content-Type`, if sent.
    pub content_type: Option<String>,
    /// The body (de-chunked).
    pub body: String,
    /// The target of a `Link: <…>; rel="next"` header (a paged list's next
    /// page), if sent.
    pub next: Option<String>,
}

/// Why a GET failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error("cannot connect to {path} (is the VM running with --api-sock {path}?)")]
    Connect {
        /// The socket path.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The exchange failed midway.
    #[error("API request failed: {0}")]
    Io(#[from] std::io::Error),
    /// The answer was not HTTP/1.1 as expected.
    #[error("malformed API response: {0}")]
    Malformed(String),
}

/// GETs `target` (a path with an optional query) from the server on `sock`.
pub fn get(sock: &Path, target: &str) -> Result<Response, ClientError> {
    request(sock, "GET", target, None)
}

/// Sends `method target` with `body` (JSON, if any) to the server on `sock`.
pub fn request(sock: &Path, method: &str, target: &str, body: Option<&str>) -> Result<Response, ClientError> {
    let mut s = UnixStream::connect(sock).map_err(|source| ClientError::Connect {
        path: sock.display().to_string(),
        source,
    })?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    let body_head = body.map_or(String::new(), |b| {
        format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        )
    });
    write!(
        s,
        "{method} {target} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n{body_head}Connection: close\r\n\r\n{}",
        body.unwrap_or("")
    )?;
    parse_response(&read_bounded(&mut s, MAX_RESPONSE, RESPONSE_DEADLINE)?)
}

/// Largest answer the client reads: a page of 10,000 containers is about
/// 15 MB; a hostile or broken server cannot make it hold more.
pub const MAX_RESPONSE: usize = 64 << 20;
/// Longest a whole answer may take (each read also times out after 10 s).
pub const RESPONSE_DEADLINE: Duration = Duration::from_secs(60);

/// Reads `r` to its end, refusing more than `max` bytes or a trickle that
/// outlasts `deadline`.
fn read_bounded(r: &mut impl Read, max: usize, deadline: Duration) -> Result<Vec<u8>, ClientError> {
    let until = std::time::Instant::now() + deadline;
    let mut raw = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(raw);
        }
        if raw.len() + n > max {
            return Err(ClientError::Malformed(format!(
                "the answer is larger than {} MiB: not read further",
                max >> 20
            )));
        }
        raw.extend_from_slice(&buf[..n]);
        if std::time::Instant::now() > until {
            return Err(ClientError::Malformed(format!(
                "the answer took longer than {deadline:?}: not read further"
            )));
        }
    }
}

/// Parses a complete HTTP/1.1 response (read to the end of the connection).
pub fn parse_response(raw: &[u8]) -> Result<Response, ClientError> {
    let bad = |m: &str| ClientError::Malformed(m.to_string());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| bad("headers are not UTF-8"))?;
    let mut rest = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let (mut content_type, mut length, mut chunked, mut next) = (None, None, false, None);
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            return Err(bad("bad header line"));
        };
        let v = v.trim();
        match k.trim().to_ascii_lowercase().as_str() {
            "content-type" => content_type = Some(v.to_string()),
            "content-length" => length = Some(v.parse::<usize>().map_err(|_| bad("bad Content-Length"))?),
            "transfer-encoding" => chunked = v.eq_ignore_ascii_case("chunked"),
            "link" if v.ends_with("rel=\"next\"") => {
                next = v
                    .strip_prefix('<')
                    .and_then(|v| v.split_once('>'))
                    .map(|(target, _)| target.to_string());
            }
            _ => {}
        }
    }
    let body = if chunked {
        let mut body = Vec::new();
        loop {
            let eol = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or_else(|| bad("truncated chunk"))?;
            let size_text = std::str::from_utf8(&rest[..eol]).map_err(|_| bad("bad chunk size"))?;
            let size_text = size_text.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_text, 16).map_err(|_| bad("bad chunk size"))?;
            rest = &rest[eol + 2..];
            if size == 0 {
                break;
            }
            let chunk = rest.get(..size).ok_or_else(|| bad("truncated chunk"))?;
            body.extend_from_slice(chunk);
            rest = rest.get(size + 2..).ok_or_else(|| bad("truncated chunk"))?;
        }
        body
    } else if let Some(n) = length {
        rest.get(..n)
            .ok_or_else(|| bad("body shorter than Content-Length"))?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response {
        status,
        content_type,
        body: String::from_utf8(body).map_err(|_| bad("body is not UTF-8"))?,
        next,
    })
}

/// Most pages [`get_all`] follows.
const MAX_PAGES: usize = 100_000;
/// Most elements [`get_all`] gathers over all pages (a VM's containers are
/// far fewer; a server that pages forever cannot make it hold more).
const MAX_ELEMENTS: usize = 4_000_000;

/// GETs a paged list (`/v1/containers`) page after page, following each
/// `Link: <…>; rel="next"`, and answers with one response whose body is the
/// JSON array of every page's elements. The first answer that is not a 200
/// JSON array is returned as it is.
pub fn get_all(sock: &Path, target: &str) -> Result<Response, ClientError> {
    let mut all: Vec<serde_json::Value> = Vec::new();
    let mut target = target.to_string();
    for _ in 0..MAX_PAGES {
        let page = get(sock, &target)?;
        let items = match serde_json::from_str::<Vec<serde_json::Value>>(&page.body) {
            Ok(items) if page.status == 200 => items,
            _ => return Ok(page),
        };
        if all.len() + items.len() > MAX_ELEMENTS {
            return Err(ClientError::Malformed(format!(
                "more than {MAX_ELEMENTS} elements over the pages of {target}"
            )));
        }
        all.extend(items);
        match page.next {
            Some(next) => target = next,
            None => {
                return Ok(Response {
                    body: serde_json::Value::Array(all).to_string(),
                    next: None,
                    ..page
                })
            }
        }
    }
    Err(ClientError::Malformed(format!("more than {MAX_PAGES} pages")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_within_a_size_and_a_time() {
        let big = vec![b'x'; 300 * 1024];
        assert_eq!(
            read_bounded(&mut &big[..], 1 << 20, Duration::from_secs(5)).unwrap(),
            big
        );
        let e = read_bounded(&mut &big[..], 100 * 1024, Duration::from_secs(5)).unwrap_err();
        assert!(e.to_string().contains("larger than"), "{e}");
        // An endless server: refused at the size, not read forever.
        let mut endless = std::io::repeat(b'y');
        assert!(read_bounded(&mut endless, 1 << 20, Duration::from_secs(5)).is_err());
    }

    #[test]
    fn parses_length_and_chunked_bodies() {
        let r =
            parse_response(b"HTTP/1.1 200 OK\r\ncontent-type: a/b\r\ncontent-length: 2\r\n\r\nhi").unwrap();
        assert_eq!(
            (r.status, r.content_type.as_deref(), r.body.as_str()),
            (200, Some("a/b"), "hi")
        );
        let r = parse_response(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n1\r\nd\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_str()), (404, "abcd"));
        assert!(parse_response(b"garbage").is_err());
    }

    #[test]
    fn connection_errors_name_the_flag() {
        let err = get(Path::new("/nonexistent/rsrc.sock"), "/v1/vm").unwrap_err();
        assert!(
            err.to_string().contains("--api-sock /nonexistent/rsrc.sock"),
            "{err}"
        );
    }
}
