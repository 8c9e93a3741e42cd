//! What the API server did, counted: every answered request, the answers
//! that refused a client (4xx, by status) or failed (5xx), connections
//! refused at the connection bound, and connections that ended in an error
//! before an answer (a malformed or oversized request head, a head or body
//! that did not arrive in time). API clients are hostile: each of these also
//! gets a rate-limited log line (`note_answer`, and the server's accept and
//! connection paths), so a client that probes or floods the socket shows in
//! the log, in `vm.api` (the report, `GET /v1/vm`) and in `/metrics`
//! (`resourceful_api_events_total`).

use std::sync::atomic::{AtomicU64, Ordering};

use accounting::report::ApiInfo;

/// The statuses the server answers with, each counted on its own; any
/// other 4xx or 5xx counts only in its class.
const STATUSES: [u16; 6] = [400, 404, 405, 408, 413, 500];

/// The longest request target a log line shows (the rest is cut).
const LOGGED_TARGET_MAX: usize = 200;

/// The API server's counters (shared by its listeners' connections).
#[derive(Debug, Default)]
pub struct ApiStats {
    requests: AtomicU64,
    client_errors: AtomicU64,
    server_errors: AtomicU64,
    by_status: [AtomicU64; STATUSES.len()],
    refused_connections: AtomicU64,
    bad_connections: AtomicU64,
}

impl ApiStats {
    /// Counts one answer with `status` to `method target`; a refusal of a
    /// request the client could have sent right (400, 405, 408, 413) is
    /// also logged, rate-limited, with the reason the client was given.
    /// A 404 is counted only: asking for a container that is gone is
    /// ordinary.
    pub fn note_answer(&self, status: u16, method: &str, target: &str, body: &[u8]) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if let Some(i) = STATUSES.iter().position(|s| *s == status) {
            self.by_status[i].fetch_add(1, Ordering::Relaxed);
        }
        match status {
            400..=499 => {
                self.client_errors.fetch_add(1, Ordering::Relaxed);
            }
            500..=599 => {
                self.server_errors.fetch_add(1, Ordering::Relaxed);
            }
            _ => return,
        }
        if matches!(status, 400 | 405 | 408 | 413 | 500..=599) {
            accounting::warn_rl!(
                "API: answered {status} to {} {}: {}",
                shown(method, 16),
                shown(target, LOGGED_TARGET_MAX),
                reason(body)
            );
        }
    }

    /// Counts a connection refused because the listener's bound was reached.
    pub fn note_refused(&self) {
        self.refused_connections.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection that ended in an error (logged by the caller).
    pub fn note_bad_connection(&self) {
        self.bad_connections.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now (`vm.api`).
    pub fn info(&self) -> ApiInfo {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ApiInfo {
            requests: load(&self.requests),
            client_errors: load(&self.client_errors),
            server_errors: load(&self.server_errors),
            by_status: STATUSES
                .iter()
                .zip(&self.by_status)
                .filter(|(_, c)| load(c) > 0)
                .map(|(s, c)| (s.to_string(), load(c)))
                .collect(),
            refused_connections: load(&self.refused_connections),
            bad_connections: load(&self.bad_connections),
        }
    }
}

/// `s` for a log line: at most `max` bytes (cut at a character boundary,
/// marked with `…`), control characters escaped, so a hostile target
/// cannot forge log lines or flood one.
fn shown(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut out: String = s[..end].escape_debug().collect();
    if end < s.len() {
        out.push('…');
    }
    out
}

/// The `error` of a JSON error body, else the body's text, shortened.
fn reason(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let msg = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| text.trim().to_string());
    shown(&msg, 300)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_counted_by_class_and_known_status() {
        let s = ApiStats::default();
        s.note_answer(200, "GET", "/v1/vm", b"{}");
        s.note_answer(
            400,
            "GET",
            "/v1/requests?limit=x",
            br#"{"error":"limit: not a number"}"#,
        );
        s.note_answer(404, "GET", "/v1/containers/9", b"{}");
        s.note_answer(418, "GET", "/", b"");
        s.note_answer(500, "GET", "/v1/vm", b"oops");
        s.note_refused();
        s.note_bad_connection();
        s.note_bad_connection();
        let i = s.info();
        assert_eq!((i.requests, i.client_errors, i.server_errors), (5, 3, 1));
        assert_eq!(
            i.by_status.into_iter().collect::<Vec<_>>(),
            [
                ("400".to_string(), 1),
                ("404".to_string(), 1),
                ("500".to_string(), 1)
            ]
        );
        assert_eq!((i.refused_connections, i.bad_connections), (1, 2));
    }

    #[test]
    fn logged_targets_are_short_and_escaped() {
        assert_eq!(shown("/v1/vm", 200), "/v1/vm");
        assert_eq!(shown("/a\nFORGED LINE", 200), "/a\\nFORGED LINE");
        let long = "é".repeat(300);
        let s = shown(&long, 201);
        assert!(s.ends_with('…') && s.len() <= 201 + '…'.len_utf8(), "{s}");
        assert_eq!(reason(br#"{"error":"bad\nthing"}"#), "bad\\nthing");
        assert_eq!(reason(b"  plain text \n"), "plain text");
    }
}
