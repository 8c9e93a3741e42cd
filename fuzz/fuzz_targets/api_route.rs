//! The host API's router and query parsing (`vmm::api::route`,
//! `vmm::api::parse_query`, `ContainerQuery::parse`, `RequestQuery::parse`)
//! over small real books:
//! an `Accounting` with a few containers (one a child, one retired) and
//! finished and live requests.
//!
//! The input is a method and a target: free text, a container segment
//! (canonical, with leading zeros, a sign, percent-encoded, or anything),
//! a `/v1/containers` or `/v1/requests` query from fuzzed pairs, or a known
//! path with any query. Nothing may panic, and:
//! - the status is one `docs/api.yaml` documents for `route` (200, 400,
//!   404, 405; 413 and 431 come from the HTTP layer, not from `route`);
//! - every body but `/metrics`' is JSON, an error is `{"error": "..."}`;
//! - a known endpoint with a method other than GET or HEAD is 405;
//! - `/v1/containers/{index}` answers 200 exactly for a canonical decimal
//!   index (no leading zero, sign or percent-encoding) of a container, 404
//!   for a canonical one past the end, and 400 otherwise;
//! - `/v1/containers` is 400 exactly when `ContainerQuery::parse` refuses
//!   its query, and otherwise lists `limit` containers (fewer on the last
//!   page) in index order from `after + 1`, with a `Link` to the next page
//!   exactly when containers remain, which answers 200 and goes on from
//!   there;
//! - `/v1/requests` lists at most `limit` requests, all of the `container`
//!   asked for, and is 400 exactly when `RequestQuery::parse` refuses;
//! - `/v1/flamegraph.svg` is 400 exactly when `resource` or `format` is
//!   not one it knows, and otherwise an SVG or folded stacks (text);
//! - no other answer has a `Link`;
//! - `parse_query` of percent-encoded pairs gives back the pairs (a later
//!   repeat of a name wins).
#![no_main]

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use accounting::abi::{tag, EntryKind, RingEntry};
use accounting::ledger::Accounting;
use accounting::report::VmInfo;
use accounting::resource::ExitReason;
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use vmm::api::{parse_query, route, ApiState, ContainerQuery, DevicesInfo, RequestQuery};

#[derive(Arbitrary, Debug)]
enum Method {
    Get,
    Head,
    Post,
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum Segment {
    /// `{zeros}{sign}{n}`, percent-encoding the digits when asked.
    Number {
        n: u64,
        small: bool,
        zeros: u8,
        plus: bool,
        percent: bool,
    },
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum Target {
    Raw(String),
    Container(Segment, String),
    /// `/v1/requests` (or `/v1/containers` when the flag is set).
    Query(Vec<(Key, String)>, bool, bool),
    Known(u8, String),
}

#[derive(Arbitrary, Debug)]
enum Key {
    Container,
    Order,
    Limit,
    After,
    Other(String),
}

#[derive(Arbitrary, Debug)]
struct Input {
    method: Method,
    target: Target,
    pairs: Vec<(String, String)>,
}

const PATHS: [&str; 6] = [
    "/v1/vm",
    "/v1/containers",
    "/v1/requests",
    "/v1/processes",
    "/v1/flamegraph.svg",
    "/metrics",
];

fuzz_target!(|input: Input| {
    let state = state();
    let method = match &input.method {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        Method::Other(m) => m.as_str(),
    };
    let target = match &input.target {
        Target::Raw(t) => t.clone(),
        Target::Container(seg, tail) => format!("/v1/containers/{}{tail}", segment(seg)),
        Target::Query(pairs, encode, containers) => {
            let q: Vec<String> = pairs
                .iter()
                .map(|(k, v)| {
                    let k = match k {
                        Key::Container => "container",
                        Key::Order => "order",
                        Key::Limit => "limit",
                        Key::After => "after",
                        Key::Other(k) => k,
                    };
                    if *encode {
                        format!("{}={}", pct(k), pct(v))
                    } else {
                        format!("{k}={v}")
                    }
                })
                .collect();
            let path = if *containers {
                "/v1/containers"
            } else {
                "/v1/requests"
            };
            format!("{path}?{}", q.join("&"))
        }
        Target::Known(i, q) => format!("{}?{q}", PATHS[usize::from(*i) % PATHS.len()]),
    };
    check_route(state, method, &target);
    check_query_round_trip(&input.pairs);
});

fn check_route(state: &ApiState, method: &str, target: &str) {
    let reply = route(state, method, target);
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    assert!(
        matches!(reply.status, 200 | 400 | 404 | 405),
        "{method} {target:?}: status {} is not documented",
        reply.status
    );
    let json = serde_json::from_slice::<serde_json::Value>(&reply.body);
    if reply.status == 200 && path == "/metrics" {
        assert!(std::str::from_utf8(&reply.body).is_ok(), "metrics are not text");
    } else if reply.status == 200 && path == "/v1/flamegraph.svg" {
        let text = std::str::from_utf8(&reply.body).expect("a flame graph is text");
        match reply.content_type {
            "image/svg+xml" => assert!(text.starts_with("<?xml"), "{target:?}: not an SVG"),
            "text/plain; charset=utf-8" => assert!(
                text.lines().all(|l| l.rsplit_once(' ').is_some_and(|(_, n)| n.parse::<u64>().is_ok())),
                "{target:?}: not folded stacks"
            ),
            other => panic!("{target:?}: content type {other}"),
        }
    } else {
        assert_eq!(reply.content_type, "application/json");
        let v = json.unwrap_or_else(|e| panic!("{method} {target:?}: body is not JSON: {e}"));
        if reply.status != 200 {
            assert!(v["error"].is_string(), "{method} {target:?}: error body {v}");
        }
    }
    let segment = path
        .strip_prefix("/v1/containers/")
        .filter(|s| !s.is_empty() && !s.contains('/'));
    let known = PATHS.contains(&path) || segment.is_some();
    if !known {
        assert_eq!(reply.status, 404, "{method} {target:?}: unknown path");
        return;
    }
    if method != "GET" && method != "HEAD" {
        assert_eq!(reply.status, 405, "{method} {target:?}");
        return;
    }
    if let Some(seg) = segment {
        let count = state_count();
        let canonical = !seg.is_empty()
            && seg.bytes().all(|b| b.is_ascii_digit())
            && (seg == "0" || !seg.starts_with('0'));
        let want = match canonical.then(|| seg.parse::<usize>().ok()).flatten() {
            Some(i) if i < count => 200,
            Some(_) => 404,
            None => 400,
        };
        assert_eq!(reply.status, want, "GET /v1/containers/{seg:?}");
        return;
    }
    if path != "/v1/containers" {
        assert_eq!(reply.link, None, "{target:?}: a Link on an unpaged answer");
    }
    if path == "/v1/containers" {
        match ContainerQuery::parse(&parse_query(query)) {
            Ok(q) => {
                assert_eq!(reply.status, 200, "{target:?}");
                check_page(state, target, q, &reply, 0);
            }
            Err(_) => assert_eq!(reply.status, 400, "{target:?}"),
        }
        return;
    }
    if path == "/v1/requests" {
        match RequestQuery::parse(&parse_query(query)) {
            Ok(q) => {
                assert_eq!(reply.status, 200, "{target:?}");
                assert!(q.limit <= vmm::api::MAX_REQUEST_LIMIT);
                let v: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
                let rows = v.as_array().expect("/v1/requests is an array");
                assert!(rows.len() <= q.limit, "{} rows for limit {}", rows.len(), q.limit);
                if let Some(c) = q.container {
                    for r in rows {
                        assert_eq!(r["container"].as_u64(), Some(c as u64), "{target:?}: {r}");
                    }
                }
            }
            Err(_) => assert_eq!(reply.status, 400, "{target:?}"),
        }
        return;
    }
    if path == "/v1/flamegraph.svg" {
        let q = parse_query(query);
        let resource_ok = q
            .get("resource")
            .is_none_or(|r| vmm::api::flame::Resource::parse(r).is_some());
        let format_ok = matches!(q.get("format").map(String::as_str), None | Some("svg" | "folded"));
        let want = if resource_ok && format_ok { 200 } else { 400 };
        assert_eq!(reply.status, want, "{target:?}");
        return;
    }
    assert_eq!(reply.status, 200, "{method} {target:?}");
}

/// A 200 page of `/v1/containers` for `q`: `limit` rows (fewer on the last
/// page), indices increasing from `after + 1`, and a `Link` to the next page
/// exactly when containers remain; the next page is checked the same way
/// (a few deep).
fn check_page(state: &ApiState, target: &str, q: ContainerQuery, reply: &vmm::api::Reply, depth: u32) {
    let v: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    let rows = v.as_array().expect("/v1/containers is an array");
    let first = q.after.map_or(0, |a| a.saturating_add(1));
    let count = state_count();
    let want = count.saturating_sub(first).min(q.limit);
    assert_eq!(
        rows.len(),
        want,
        "{target:?}: {} rows, {count} containers",
        rows.len()
    );
    for (k, r) in rows.iter().enumerate() {
        assert_eq!(
            r["index"].as_u64(),
            Some((first + k) as u64),
            "{target:?}: row {k} {r}"
        );
    }
    let end = first + rows.len();
    match &reply.link {
        Some(link) => {
            assert!(
                !rows.is_empty() && end < count,
                "{target:?}: a Link after the last container"
            );
            let want = format!(
                "</v1/containers?after={}&limit={}>; rel=\"next\"",
                end - 1,
                q.limit
            );
            assert_eq!(link, &want, "{target:?}");
            if depth < 4 {
                let next = &link[1..link.find('>').unwrap()];
                let r = route(state, "GET", next);
                assert_eq!(r.status, 200, "{next:?}");
                let nq = ContainerQuery::parse(&parse_query(next.split_once('?').unwrap().1)).unwrap();
                check_page(state, next, nq, &r, depth + 1);
            }
        }
        None => assert!(
            rows.is_empty() || end >= count,
            "{target:?}: no Link at {end} of {count}"
        ),
    }
}

/// Percent-encoded pairs come back from `parse_query` as they were.
fn check_query_round_trip(pairs: &[(String, String)]) {
    let q: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{}={}", pct(k), pct(v)))
        .collect();
    let want: HashMap<String, String> = pairs.iter().cloned().collect();
    assert_eq!(parse_query(&q.join("&")), want, "query {:?}", q.join("&"));
    // Whatever the query, parsing it does not panic.
    for (k, v) in pairs {
        let _ = RequestQuery::parse(&parse_query(&format!("{k}={v}&{v}")));
    }
}

/// Every byte outside `[A-Za-z0-9._~-]` as `%XX`.
fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-') {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn segment(seg: &Segment) -> String {
    match seg {
        Segment::Number {
            n,
            small,
            zeros,
            plus,
            percent,
        } => {
            let n = if *small { n % 8 } else { *n };
            let digits = format!("{}{n}", "0".repeat(usize::from(zeros % 3)));
            let digits = if *percent { pct_all(&digits) } else { digits };
            format!("{}{digits}", if *plus { "+" } else { "" })
        }
        Segment::Raw(s) => s.clone(),
    }
}

fn pct_all(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

static STATE: OnceLock<(ApiState, usize)> = OnceLock::new();

fn state() -> &'static ApiState {
    &STATE.get_or_init(build).0
}

fn state_count() -> usize {
    STATE.get_or_init(build).1
}

/// Containers web (1), web/api (2), db (3) and old (4, retired); four
/// requests finished and one live.
fn build() -> (ApiState, usize) {
    let acct = Accounting::new("fuzz", 1, 1, Default::default());
    for (id, parent, name) in [(1u32, 0u32, "web"), (2, 1, "api"), (3, 0, "db"), (4, 0, "old")] {
        let e = RingEntry::new(EntryKind::DeclareContainer, id, parent, 0, name.as_bytes());
        acct.apply(&e).expect("declare");
    }
    let (mut w, mut sampler) = (acct.writer(0), acct.writer(1));
    for (id, c, ns, end) in [
        (1u32, 1u32, 10u64, true),
        (2, 2, 50, true),
        (3, 3, 5, true),
        (4, 2, 7, true),
        (5, 1, 1, false),
    ] {
        let ring = |kind: EntryKind| RingEntry {
            kind: kind as u16,
            id,
            arg: c,
            ..Default::default()
        };
        acct.apply(&ring(EntryKind::BeginRequest)).expect("begin");
        w.charge_exit(Some(tag(c, id)), ExitReason::PortOut, ns);
        sampler.charge_run(0, Some(tag(c, id)), ns * 3);
        if end {
            acct.apply(&ring(EntryKind::EndRequest)).expect("end");
        }
    }
    let retire = RingEntry {
        kind: EntryKind::RetireContainer as u16,
        id: 4,
        ..Default::default()
    };
    acct.apply(&retire).expect("retire");
    let count = acct.container_count();
    let state = ApiState::new(Arc::clone(&acct), DevicesInfo::default(), VmInfo::default);
    (state, count)
}
