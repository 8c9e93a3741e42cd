//! `/v1/limits`: the per-container limits, read and changed while the VM
//! runs (docs/limits-per-container.md, docs/api.yaml).
//!
//! - `GET /v1/limits`: every limit with its state on each device.
//! - `PUT /v1/limits`: replaces them all (the `--limits` file's form).
//! - `DELETE /v1/limits`: removes them all.
//! - `GET`, `PUT`, `DELETE /v1/limits/{container}`: one limit (`PUT`'s
//!   body: one entry's keys, without `container`).
//!
//! A change is checked whole before anything is applied (the flag's own
//! parser, the same bounds); a refused one answers 400 with the reason,
//! is logged (rate-limited) and counted (`rejected_changes`), and changes
//! nothing.

use serde::Serialize;

use super::{percent_decode, Reply};
use crate::config::{BucketConfig, ContainerLimit, MAX_CONTAINER_LIMITS};
use crate::limits_file::{self, LimitEntry};
use crate::live_limits::LiveLimits;

/// One limit on one device, now.
#[derive(Debug, Serialize)]
pub struct DeviceLimitView {
    /// The device (`disk0`, `net0`).
    pub device: String,
    /// Tokens in the operations (requests, frames) bucket now; `null`:
    /// no such bucket.
    pub ops_tokens: Option<u64>,
    /// Tokens in the bytes bucket now; `null`: no such bucket.
    pub bytes_tokens: Option<u64>,
    /// Requests or frames it holds now.
    pub held: u64,
    /// Requests or frames it held (or holds) since it was set.
    pub throttle_events: u64,
    /// Nanoseconds the ones it let go were held.
    pub throttled_ns: u64,
}

/// One limit: its configuration and its state on each device it applies to.
#[derive(Debug, Serialize)]
pub struct LimitView {
    /// The container path or pattern.
    pub path: String,
    /// The buckets (`null`: none).
    pub blk_ops: Option<BucketConfig>,
    /// As above.
    pub blk_bytes: Option<BucketConfig>,
    /// As above.
    pub net_tx_frames: Option<BucketConfig>,
    /// As above.
    pub net_tx_bytes: Option<BucketConfig>,
    /// As above.
    pub net_rx_frames: Option<BucketConfig>,
    /// As above.
    pub net_rx_bytes: Option<BucketConfig>,
    /// Its state on each device that takes it.
    pub devices: Vec<DeviceLimitView>,
}

/// `GET /v1/limits`.
#[derive(Debug, Serialize)]
pub struct LimitsView {
    /// Every limit, in the order they were set.
    pub limits: Vec<LimitView>,
    /// Changes refused so far (each answered 400).
    pub rejected_changes: u64,
}

fn view(live: &LiveLimits, l: ContainerLimit) -> LimitView {
    let devices = live
        .states()
        .into_iter()
        .flat_map(|(device, states)| {
            states.into_iter().filter(|s| *s.path == *l.path).map(move |s| {
                let (ops_tokens, bytes_tokens) = s.tokens_now();
                DeviceLimitView {
                    device: device.clone(),
                    ops_tokens,
                    bytes_tokens,
                    held: s.held,
                    throttle_events: s.throttle_events,
                    throttled_ns: s.throttled_ns,
                }
            })
        })
        .collect();
    LimitView {
        path: l.path,
        blk_ops: l.blk_ops,
        blk_bytes: l.blk_bytes,
        net_tx_frames: l.net_tx_frames,
        net_tx_bytes: l.net_tx_bytes,
        net_rx_frames: l.net_rx_frames,
        net_rx_bytes: l.net_rx_bytes,
        devices,
    }
}

fn all(live: &LiveLimits) -> Reply {
    let limits = live.limits().into_iter().map(|l| view(live, l)).collect();
    Reply::json(
        200,
        &LimitsView {
            limits,
            rejected_changes: live.rejected(),
        },
    )
}

fn one(live: &LiveLimits, path: &str) -> Reply {
    match live.limits().into_iter().find(|l| l.path == path) {
        Some(l) => Reply::json(200, &view(live, l)),
        None => Reply::error(404, format!("no limit on `{path}`: see GET /v1/limits")),
    }
}

/// A refused change: logged, counted, 400 (or `status`) with `reason`.
fn refuse(live: &LiveLimits, status: u16, reason: String) -> Reply {
    live.count_rejected();
    accounting::warn_rl!("API: limit change refused: {reason}");
    Reply::error(status, reason)
}

fn body_text<'a>(body: Option<&'a [u8]>, what: &str) -> Result<&'a str, String> {
    let b = body
        .filter(|b| !b.is_empty())
        .ok_or_else(|| format!("{what} needs a JSON body"))?;
    std::str::from_utf8(b).map_err(|_| format!("{what}: the body is not UTF-8 text"))
}

/// `PUT /v1/limits`: the whole table.
fn put_all(live: &LiveLimits, body: Option<&[u8]>) -> Reply {
    let source = "PUT /v1/limits";
    let parsed = body_text(body, source).and_then(|t| limits_file::parse_as(t, source));
    match parsed {
        Err(e) => refuse(live, 400, e),
        Ok(limits) => {
            let _ = live.update(|l| {
                *l = limits;
                Ok::<(), ()>(())
            });
            all(live)
        }
    }
}

/// `PUT /v1/limits/{path}`: one limit, added or replaced.
fn put_one(live: &LiveLimits, path: &str, body: Option<&[u8]>) -> Reply {
    let source = format!("PUT /v1/limits/{path}");
    let parsed = body_text(body, &source).and_then(|t| {
        let entry: LimitEntry = serde_json::from_str(t).map_err(|e| {
            format!(r#"{source}: {e} (expected {{"blk-ops": "100/s", ...}} with --limit's keys)"#)
        })?;
        if entry.container.is_some() {
            return Err(format!(
                "{source}: `container` is named by the URL: remove the key"
            ));
        }
        entry.limit(path, &source)
    });
    let limit = match parsed {
        Ok(l) => l,
        Err(e) => return refuse(live, 400, e),
    };
    let applied = live.update(|l| {
        let full = l.len() >= MAX_CONTAINER_LIMITS;
        match l.iter_mut().find(|o| o.path == limit.path) {
            Some(o) => *o = limit,
            None if full => {
                return Err(format!(
                    "{source}: {MAX_CONTAINER_LIMITS} limits are set, the most there may be: delete one first"
                ))
            }
            None => l.push(limit),
        }
        Ok(())
    });
    match applied {
        Ok(()) => one(live, path),
        Err(e) => refuse(live, 400, e),
    }
}

fn delete_one(live: &LiveLimits, path: &str) -> Reply {
    let removed = live.update(|l| {
        let before = l.len();
        l.retain(|o| o.path != path);
        if l.len() == before {
            Err(())
        } else {
            Ok(())
        }
    });
    match removed {
        Ok(()) => Reply::json(200, &serde_json::json!({ "deleted": path })),
        Err(()) => Reply::error(404, format!("no limit on `{path}`: see GET /v1/limits")),
    }
}

/// The methods `/v1/limits` and `/v1/limits/{container}` take.
pub const ALLOW: &str = "GET, HEAD, PUT, DELETE";

/// Answers `method path` if `path` is `/v1/limits` or under it (`None`
/// otherwise); `body` is the request's body (`PUT` only).
pub(super) fn route(
    live: Option<&LiveLimits>,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Option<Reply> {
    let rest = match path.strip_prefix("/v1/limits") {
        Some("") => None,
        Some(r) => Some(r.strip_prefix('/')?),
        None => return None,
    };
    let Some(live) = live else {
        return Some(Reply::error(404, "limits are served only on --api-sock".into()));
    };
    let target = rest.map(percent_decode);
    Some(match (method, target.as_deref()) {
        (_, Some("")) => Reply::error(404, "name a container: /v1/limits/{container}".into()),
        ("GET" | "HEAD", None) => all(live),
        ("GET" | "HEAD", Some(p)) => one(live, p),
        ("PUT", None) => put_all(live, body),
        ("PUT", Some(p)) => put_one(live, p, body),
        ("DELETE", None) => {
            let _ = live.update(|l| {
                l.clear();
                Ok::<(), ()>(())
            });
            all(live)
        }
        ("DELETE", Some(p)) => delete_one(live, p),
        (m, _) => refuse(live, 405, format!("{m} is not allowed here: use {ALLOW}")),
    })
}
