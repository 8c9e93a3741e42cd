//! OpenTelemetry export (`--otlp-endpoint URL`, docs/opentelemetry.md):
//! every finished request becomes a span and the per-container counters
//! become cumulative sums, posted as OTLP/HTTP protobuf by one exporter
//! thread (`rsrc-otlp`, its own seccomp filter) that reads the books with
//! a cursor. Nothing is added to the vCPU exit path or the device thread,
//! and nothing is started without the flag.
//!
//! - [`proto`]: the protobuf encoding of the two export requests;
//! - [`http`]: the blocking HTTP/1.1 POST;
//! - [`exporter`]: the thread: cursor, queue, batches, retries, counters.

use std::net::ToSocketAddrs;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod exporter;
pub mod http;
pub mod proto;

pub use exporter::{span_id, Exporter, OtlpStats};

/// Default `--otlp-interval`: seconds between metric exports.
pub const DEFAULT_INTERVAL_MS: u64 = 10_000;
/// The shortest and longest `--otlp-interval`, ms.
pub const INTERVAL_RANGE_MS: std::ops::RangeInclusive<u64> = 100..=3_600_000;
/// OTLP/HTTP's default port, used when the URL has none.
pub const DEFAULT_PORT: u16 = 4318;

/// What `--otlp-endpoint` and `--otlp-interval` asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OtlpConfig {
    /// The collector's base URL, `http://HOST[:PORT][/BASE]`: `/v1/traces`
    /// and `/v1/metrics` are appended, as OTLP's
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` does.
    pub endpoint: String,
    /// Milliseconds between metric exports.
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
}

fn default_interval() -> u64 {
    DEFAULT_INTERVAL_MS
}

/// What a user can get wrong.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    /// The URL is not of the expected form.
    #[error("--otlp-endpoint {url:?}: {why}; expected the collector's base URL http://HOST[:PORT][/PATH], e.g. http://127.0.0.1:4318 (the VMM appends /v1/traces and /v1/metrics, as OTEL_EXPORTER_OTLP_ENDPOINT does; the port defaults to 4318)")]
    Endpoint {
        /// As given.
        url: String,
        /// What is wrong.
        why: String,
    },
    /// The host name did not resolve.
    #[error("--otlp-endpoint {url:?}: cannot resolve {host}")]
    Resolve {
        /// As given.
        url: String,
        /// `HOST:PORT`.
        host: String,
        /// The resolver's error.
        #[source]
        source: std::io::Error,
    },
    /// Out of range.
    #[error("--otlp-interval: {0} ms is out of range: expected seconds from 0.1 to 3600")]
    Interval(u64),
    /// The thread could not be started.
    #[error("cannot start the OTLP exporter thread")]
    Spawn(#[source] std::io::Error),
}

/// A parsed endpoint: `HOST:PORT` and the base path (no trailing `/`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `HOST:PORT` (the port filled in).
    pub authority: String,
    /// The base path, empty or starting with `/`, without a trailing `/`.
    pub base: String,
}

impl Endpoint {
    /// Parses `http://HOST[:PORT][/BASE]`.
    pub fn parse(url: &str) -> Result<Self, OtlpError> {
        let err = |why: &str| OtlpError::Endpoint {
            url: url.to_string(),
            why: why.to_string(),
        };
        let rest = if let Some(r) = url.strip_prefix("http://") {
            r
        } else if url.starts_with("https://") {
            return Err(err("https is not supported (plain http only: a collector or agent on this host or a trusted network)"));
        } else {
            return Err(err("the URL must start with http://"));
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if authority.is_empty() {
            return Err(err("no host"));
        }
        if authority.contains('@')
            || path.contains(['?', '#'])
            || !url.is_ascii()
            || url.contains(char::is_whitespace)
        {
            return Err(err(
                "user info, a query, a fragment, spaces or non-ASCII characters are not accepted",
            ));
        }
        // A port after the last ':' (outside an IPv6 literal's brackets).
        let authority = match authority.rsplit_once(':') {
            Some((host, port)) if !port.contains(']') => {
                if host.is_empty() {
                    return Err(err("no host"));
                }
                port.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| err("the port is not a number from 1 to 65535"))?;
                authority.to_string()
            }
            _ => format!("{authority}:{DEFAULT_PORT}"),
        };
        let base = path.trim_end_matches('/').to_string();
        if base.ends_with("/v1/traces") || base.ends_with("/v1/metrics") {
            return Err(err("give the base URL without /v1/traces or /v1/metrics"));
        }
        Ok(Self { authority, base })
    }

    /// Resolves the host once (at start: the exporter's sandbox has no
    /// resolver) into the two POST targets, traces then metrics.
    pub fn resolve(&self, url: &str) -> Result<(http::Target, http::Target), OtlpError> {
        let addr = self
            .authority
            .to_socket_addrs()
            .and_then(|mut a| {
                a.next()
                    .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))
            })
            .map_err(|source| OtlpError::Resolve {
                url: url.to_string(),
                host: self.authority.clone(),
                source,
            })?;
        let target = |what: &str| http::Target {
            addr,
            host: self.authority.clone(),
            path: format!("{}/v1/{what}", self.base),
        };
        Ok((target("traces"), target("metrics")))
    }
}

impl OtlpConfig {
    /// Checks the URL's form and the interval.
    pub fn validate(&self) -> Result<Endpoint, OtlpError> {
        if !INTERVAL_RANGE_MS.contains(&self.interval_ms) {
            return Err(OtlpError::Interval(self.interval_ms));
        }
        Endpoint::parse(&self.endpoint)
    }

    /// The interval between metric exports.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(url: &str) -> (String, String) {
        let e = Endpoint::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        (e.authority, e.base)
    }

    #[test]
    fn the_base_url_gets_its_port_and_loses_its_trailing_slash() {
        assert_eq!(ok("http://127.0.0.1:4318"), ("127.0.0.1:4318".into(), "".into()));
        assert_eq!(ok("http://127.0.0.1:9/"), ("127.0.0.1:9".into(), "".into()));
        assert_eq!(ok("http://collector"), ("collector:4318".into(), "".into()));
        assert_eq!(
            ok("http://[::1]:55681/otlp/"),
            ("[::1]:55681".into(), "/otlp".into())
        );
        assert_eq!(ok("http://[::1]"), ("[::1]:4318".into(), "".into()));
        let (t, m) = Endpoint::parse("http://127.0.0.1:1/base/")
            .unwrap()
            .resolve("x")
            .unwrap();
        assert_eq!(
            (t.path.as_str(), m.path.as_str()),
            ("/base/v1/traces", "/base/v1/metrics")
        );
        assert_eq!(t.url(), "http://127.0.0.1:1/base/v1/traces");
    }

    #[test]
    fn wrong_urls_name_the_flag_and_the_expected_form() {
        for (url, why) in [
            ("https://c:4318", "https is not supported"),
            ("c:4318", "must start with http://"),
            ("http://", "no host"),
            ("http://:80", "no host"),
            ("http://c:0", "port"),
            ("http://c:99999", "port"),
            ("http://c:x", "port"),
            ("http://c:4318/v1/traces", "without /v1/traces"),
            ("http://u@c:4318", "user info"),
            ("http://c:4318/?q", "query"),
        ] {
            let e = Endpoint::parse(url).unwrap_err().to_string();
            assert!(e.contains(why), "{url}: {e}");
            assert!(
                e.starts_with("--otlp-endpoint") && e.contains("http://HOST[:PORT][/PATH]"),
                "{e}"
            );
        }
        let c = OtlpConfig {
            endpoint: "http://c".into(),
            interval_ms: 10,
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("--otlp-interval"));
    }
}
