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

use devices::virtio::limiter::Class;
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
    /// The same for the buckets only reads draw from (`blk-read-*`).
    pub read_ops_tokens: Option<u64>,
    /// As above.
    pub read_bytes_tokens: Option<u64>,
    /// The same for the buckets only writes draw from (`blk-write-*`).
    pub write_ops_tokens: Option<u64>,
    /// As above.
    pub write_bytes_tokens: Option<u64>,
    /// Requests or frames it holds now.
    pub held: u64,
    /// Requests or frames it held (or holds) since it was set.
    pub throttle_events: u64,
    /// Nanoseconds the ones it let go were held.
    pub throttled_ns: u64,
    /// Received frames it dropped (`net-rx-drop`) since it was set.
    pub dropped: u64,
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
    pub blk_read_ops: Option<BucketConfig>,
    /// As above.
    pub blk_read_bytes: Option<BucketConfig>,
    /// As above.
    pub blk_write_ops: Option<BucketConfig>,
    /// As above.
    pub blk_write_bytes: Option<BucketConfig>,
    /// As above.
    pub net_tx_frames: Option<BucketConfig>,
    /// As above.
    pub net_tx_bytes: Option<BucketConfig>,
    /// As above.
    pub net_rx_frames: Option<BucketConfig>,
    /// As above.
    pub net_rx_bytes: Option<BucketConfig>,
    /// As above.
    pub vsock_bytes: Option<BucketConfig>,
    /// Its priority for held block work (`null`: not set, the lowest, 0).
    pub priority: Option<u8>,
    /// Its share of contended block work (`null`: not set, 1).
    pub share: Option<u32>,
    /// Whether received frames over the `net-rx-*` buckets are dropped
    /// (`net-rx-drop=on`) instead of held.
    pub net_rx_drop: bool,
    /// The guest CPU share (`null`: none).
    pub cpu: Option<crate::config::CpuShare>,
    /// Its state on each device that takes it (`cpu`: the guest CPU
    /// limiter, whose `ops_tokens` are ns of run time left in the budget,
    /// 0 while in debt, and whose `held` are vCPUs held now).
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
                let (read_ops_tokens, read_bytes_tokens) = s.class_tokens_now(Class::Read);
                let (write_ops_tokens, write_bytes_tokens) = s.class_tokens_now(Class::Write);
                DeviceLimitView {
                    device: device.clone(),
                    ops_tokens,
                    bytes_tokens,
                    read_ops_tokens,
                    read_bytes_tokens,
                    write_ops_tokens,
                    write_bytes_tokens,
                    held: s.held,
                    throttle_events: s.throttle_events,
                    throttled_ns: s.throttled_ns,
                    dropped: s.dropped,
                }
            })
        })
        .collect();
    LimitView {
        path: l.path,
        blk_ops: l.blk_ops,
        blk_bytes: l.blk_bytes,
        blk_read_ops: l.blk_read_ops,
        blk_read_bytes: l.blk_read_bytes,
        blk_write_ops: l.blk_write_ops,
        blk_write_bytes: l.blk_write_bytes,
        net_tx_frames: l.net_tx_frames,
        net_tx_bytes: l.net_tx_bytes,
        net_rx_frames: l.net_rx_frames,
        net_rx_bytes: l.net_rx_bytes,
        vsock_bytes: l.vsock_bytes,
        priority: l.priority,
        share: l.share,
        net_rx_drop: l.net_rx_drop,
        cpu: l.cpu,
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn live() -> LiveLimits {
        LiveLimits::new(vec!["web:blk-ops=10/s".parse().unwrap()])
    }

    #[test]
    fn a_dropping_rx_limit_is_set_and_shown_live() {
        let l = live();
        let put = |path: &str, body: &str| route(Some(&l), "PUT", path, Some(body.as_bytes())).unwrap();
        let r = put(
            "/v1/limits/flooded",
            r#"{"net-rx-frames": "200/s", "net-rx-drop": "on"}"#,
        );
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let set = l.limits().into_iter().find(|c| c.path == "flooded").unwrap();
        assert!(set.net_rx_drop && set.net_rx().drop);
        let r = route(Some(&l), "GET", "/v1/limits/flooded", None).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["net_rx_drop"], true, "{v}");
        // Without an RX rate it would drop nothing: refused, nothing changes.
        let r = put("/v1/limits/flooded", r#"{"blk-ops": "1/s", "net-rx-drop": "on"}"#);
        assert_eq!(r.status, 400);
        assert!(String::from_utf8_lossy(&r.body).contains("net-rx-drop=on needs"));
        assert!(l.limits().iter().any(|c| c.path == "flooded" && c.net_rx_drop));
    }

    #[test]
    fn changes_are_applied_whole_or_not_at_all() {
        let l = live();
        let put = |path: &str, body: &str| route(Some(&l), "PUT", path, Some(body.as_bytes())).unwrap();
        assert_eq!(put("/v1/limits/db", r#"{"net-rx-frames": "5/s"}"#).status, 200);
        assert_eq!(l.limits().len(), 2);
        // One bad entry in a whole table: nothing changes.
        let r = put(
            "/v1/limits",
            r#"{"limits": [{"container": "a", "blk-ops": "1/s"}, {"container": "b", "blk-ops": "1/0ms"}]}"#,
        );
        assert_eq!(r.status, 400);
        assert!(String::from_utf8_lossy(&r.body).contains("PUT /v1/limits: limit b: blk-ops"));
        assert_eq!(l.limits().len(), 2);
        assert_eq!(l.rejected(), 1);
        // The 65th limit is refused, the 64 stay.
        for i in 2..MAX_CONTAINER_LIMITS {
            assert_eq!(
                put(&format!("/v1/limits/c{i}"), r#"{"blk-ops": "1/s"}"#).status,
                200
            );
        }
        let r = put("/v1/limits/one-more", r#"{"blk-ops": "1/s"}"#);
        assert_eq!(r.status, 400);
        assert_eq!(l.limits().len(), MAX_CONTAINER_LIMITS);
        // Replacing one that exists is fine at the bound.
        assert_eq!(put("/v1/limits/web", r#"{"blk-ops": "20/s"}"#).status, 200);
        assert_eq!(l.limits()[0].blk_ops.unwrap().size, 20);
        // Paths: percent-decoded, slashes kept, `/v1/limits/` names none.
        assert_eq!(put("/v1/limits/c2", r#"{"blk-ops": "2/s"}"#).status, 200);
        let get = |p: &str| route(Some(&l), "GET", p, None).unwrap().status;
        assert_eq!((get("/v1/limits/c%32"), get("/v1/limits/")), (200, 404));
        assert!(
            route(Some(&l), "GET", "/v1/limitsx", None).is_none(),
            "not a limits path"
        );
    }

    #[test]
    fn priorities_and_shares_are_set_shown_and_refused_like_buckets() {
        let l = live();
        let put = |path: &str, body: &str| route(Some(&l), "PUT", path, Some(body.as_bytes())).unwrap();
        assert_eq!(put("/v1/limits/high", r#"{"priority": 7}"#).status, 200);
        assert_eq!(
            put("/v1/limits/batch/*", r#"{"share": "3", "blk-ops": "5/s"}"#).status,
            200
        );
        let r = route(Some(&l), "GET", "/v1/limits", None).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let of = |path: &str| {
            v["limits"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["path"] == path)
                .unwrap()
                .clone()
        };
        assert_eq!(
            (of("high")["priority"].as_u64(), of("high")["share"].is_null()),
            (Some(7), true)
        );
        assert_eq!(
            (of("batch/*")["share"].as_u64(), of("web")["priority"].is_null()),
            (Some(3), true)
        );
        for (path, body, says) in [
            ("/v1/limits/high", r#"{"priority": 8}"#, "from 0 to 7"),
            ("/v1/limits/high", r#"{"share": 0}"#, "from 1 to 1000"),
            (
                "/v1/limits/tenant",
                r#"{"priority": 1, "blk-ops": "1/s"}"#,
                "tenant limit has no priority",
            ),
        ] {
            let r = put(path, body);
            assert_eq!(r.status, 400, "{body}");
            assert!(String::from_utf8_lossy(&r.body).contains(says), "{body}");
        }
        assert_eq!(l.limits().len(), 3, "refusals change nothing");
    }

    proptest! {
        /// Hostile bodies, paths and methods: nothing panics; every answer
        /// is JSON; a change is applied (200) whole and valid, or refused
        /// and changes nothing.
        #[test]
        fn hostile_requests_never_panic_or_half_apply(
            method in prop::sample::select(vec!["GET", "PUT", "DELETE", "POST", "PATCH"]),
            path in prop_oneof![
                Just("/v1/limits".to_string()),
                "/v1/limits/[a-z*%/0-9]{0,12}",
            ],
            body in prop_oneof![
                Just(String::new()),
                "\\PC{0,80}",
                r#"\{"(blk-ops|net-rx-bytes|priority|container|x)": "[0-9]{1,22}/[0-9]{0,3}(s|ms|h)"\}"#,
                r#"\{"limits": \[\{"container": "[a-z*]{0,4}", "(blk-ops|net-tx-frames-burst)": ([0-9]{1,21}|"[0-9KMiB]{1,6}/s")\}\]\}"#,
            ],
        ) {
            let l = live();
            let before = l.limits();
            let Some(r) = route(Some(&l), method, &path, Some(body.as_bytes())) else {
                prop_assert!(!path.starts_with("/v1/limits/") && path != "/v1/limits");
                return Ok(());
            };
            let v: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON");
            let after = l.limits();
            if r.status == 200 {
                prop_assert!(after.len() <= MAX_CONTAINER_LIMITS);
                let mut c = crate::config::VmConfig::new(crate::config::KernelSource::Builtin(
                    crate::config::Builtin::TestGuest,
                ));
                c.container_limits = after;
                prop_assert!(c.validate().is_ok(), "{v}");
            } else {
                prop_assert!([400, 404, 405].contains(&r.status), "{}: {v}", r.status);
                prop_assert!(v["error"].is_string());
                prop_assert_eq!(after, before);
            }
        }
    }
}
