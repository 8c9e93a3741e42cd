//! docs/api.yaml against the real API: a VM with a disk, vsock and a talking
//! agent serves every endpoint, and each answer (and each error) is
//! validated against the schema the document gives for its path and status.
//!
//! The validator covers the OpenAPI 3.0 subset the document uses: `$ref`,
//! `allOf`, `type`, `nullable`, `properties`, `required`, `additionalProperties`,
//! `items`, `enum`, `minimum`. It is strict where OpenAPI is lenient: an
//! object schema with `properties` and no `additionalProperties` is closed,
//! so a field the API serves but the document does not describe fails.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vmm::api::client;

fn doc() -> Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/api.yaml"))
        .expect("docs/api.yaml");
    serde_norway::from_str(&text).expect("docs/api.yaml is YAML")
}

fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let ptr = r
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("only local $ref: {r}"));
            resolve(
                doc,
                doc.pointer(ptr).unwrap_or_else(|| panic!("dangling $ref {r}")),
            )
        }
        None => schema,
    }
}

/// Every way `v` breaks `schema`, as `path: what` lines.
fn validate(doc: &Value, schema: &Value, v: &Value, at: &str, errors: &mut Vec<String>) {
    let s = resolve(doc, schema);
    if v.is_null() {
        if s.get("nullable") != Some(&Value::Bool(true)) {
            errors.push(format!("{at}: null but not nullable"));
        }
        return;
    }
    for sub in s.get("allOf").and_then(Value::as_array).into_iter().flatten() {
        validate(doc, sub, v, at, errors);
    }
    if let Some(allowed) = s.get("enum").and_then(Value::as_array) {
        if !allowed.contains(v) {
            errors.push(format!("{at}: {v} not in {allowed:?}"));
        }
    }
    let ty = s.get("type").and_then(Value::as_str);
    let ok = match ty {
        Some("object") => v.is_object(),
        Some("array") => v.is_array(),
        Some("string") => v.is_string(),
        Some("integer") => v.is_i64() || v.is_u64(),
        Some("number") => v.is_number(),
        Some("boolean") => v.is_boolean(),
        Some(other) => panic!("{at}: schema type {other} not handled"),
        None => true,
    };
    if !ok {
        errors.push(format!("{at}: expected {}, got {v}", ty.unwrap_or("?")));
        return;
    }
    if let (Some(min), Some(n)) = (s.get("minimum").and_then(Value::as_f64), v.as_f64()) {
        if n < min {
            errors.push(format!("{at}: {n} below the minimum {min}"));
        }
    }
    if let Some(items) = s.get("items") {
        for (i, item) in v.as_array().into_iter().flatten().enumerate() {
            validate(doc, items, item, &format!("{at}[{i}]"), errors);
        }
    }
    if let Some(obj) = v.as_object() {
        let props = s.get("properties").and_then(Value::as_object);
        for r in s.get("required").and_then(Value::as_array).into_iter().flatten() {
            let r = r.as_str().unwrap();
            if !obj.contains_key(r) {
                errors.push(format!("{at}: required `{r}` missing"));
            }
        }
        let extra = s.get("additionalProperties");
        for (k, val) in obj {
            match (props.and_then(|p| p.get(k)), extra) {
                (Some(ps), _) => validate(doc, ps, val, &format!("{at}.{k}"), errors),
                (None, Some(Value::Bool(true))) => {}
                (None, Some(extra)) if extra.is_object() => {
                    validate(doc, extra, val, &format!("{at}.{k}"), errors)
                }
                (None, _) if props.is_none() && extra.is_none() => {}
                (None, _) => errors.push(format!("{at}: `{k}` is not documented")),
            }
        }
    }
}

/// The documented schema of `path` (a templated path as in the document)
/// answering `status` with JSON.
fn response_schema<'a>(doc: &'a Value, method: &str, path: &str, status: u16) -> &'a Value {
    let op = &doc["paths"][path][method.to_ascii_lowercase()];
    assert!(op.is_object(), "docs/api.yaml has no {method} {path}");
    let r = resolve(doc, &op["responses"][status.to_string()]);
    assert!(
        r.is_object(),
        "docs/api.yaml: {method} {path} documents no {status}"
    );
    let schema = &r["content"]["application/json"]["schema"];
    assert!(schema.is_object(), "{method} {path} {status}: no JSON schema");
    schema
}

fn check(doc: &Value, sock: &Path, target: &str, path: &str, status: u16) -> Value {
    check_call(doc, sock, ("GET", target, None), path, status)
}

/// `(method, target, body)` must answer `status` as documented for `path`.
fn check_call(doc: &Value, sock: &Path, call: (&str, &str, Option<&str>), path: &str, status: u16) -> Value {
    let (method, target, body) = call;
    let r = client::request(sock, method, target, body).expect("a request over the socket");
    assert_eq!(r.status, status, "{method} {target}: {}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{method} {target}: {e}"));
    let mut errors = Vec::new();
    validate(
        doc,
        response_schema(doc, method, path, status),
        &v,
        "$",
        &mut errors,
    );
    assert!(
        errors.is_empty(),
        "{method} {target} breaks docs/api.yaml:\n{}",
        errors.join("\n")
    );
    v
}

fn scratch(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("resourceful-oa-{name}-{}", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(Instant::now() < deadline, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn send(s: &mut UnixStream, v: &Value) {
    let body = serde_json::to_vec(v).unwrap();
    s.write_all(&u32::try_from(body.len()).unwrap().to_be_bytes())
        .unwrap();
    s.write_all(&body).unwrap();
}

#[test]
fn validator_catches_what_it_should() {
    let d = json!({"components": {"schemas": {"A": {"type": "object", "required": ["x"],
        "properties": {"x": {"type": "integer", "minimum": 0}, "y": {"type": "string", "nullable": true}}}}}});
    let s = json!({"$ref": "#/components/schemas/A"});
    let errs = |v: Value| {
        let mut e = Vec::new();
        validate(&d, &s, &v, "$", &mut e);
        e
    };
    assert!(errs(json!({"x": 1, "y": null})).is_empty());
    assert_eq!(errs(json!({"y": "a"})).len(), 1, "missing required");
    assert_eq!(errs(json!({"x": -1})).len(), 1, "below minimum");
    assert_eq!(errs(json!({"x": 1, "z": 2})).len(), 1, "undocumented field");
    assert_eq!(errs(json!({"x": "1"})).len(), 1, "wrong type");
    assert_eq!(errs(json!(null)).len(), 1, "not nullable");
}

#[test]
fn every_endpoint_answers_as_documented() {
    let doc = doc();
    let api = scratch("api.sock");
    let agent = scratch("agent.sock");
    let disk = scratch("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let mut config = resourceful_tests::config("demo loop=1", 2);
    config.api_sock = Some(api.clone());
    config.agent_sock = Some(agent.clone());
    config.time_limit_ms = Some(3000);
    config.disks = vec![format!("{}", disk.display()).parse().unwrap()];
    config.vsock = Some("cid=3".parse().unwrap());
    let vm = std::thread::spawn(move || resourceful_tests::boot(config));
    wait_for(&api);
    wait_for(&agent);

    // An agent with a container, a request with a trace id, and a report.
    let mut a = UnixStream::connect(&agent).unwrap();
    send(
        &mut a,
        &json!({"type": "hello", "protocol": 3, "agent_version": "t", "kernel": "k", "boot_id": "b"}),
    );
    send(
        &mut a,
        &json!({"type": "declare_container", "id": 0x1000_0001u32, "name": "svc", "cgroup": "/svc"}),
    );
    send(
        &mut a,
        &json!({"type": "begin_request", "id": 0x1000_0002u32, "container": 0x1000_0001u32,
                "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "attributes": {"k": "v"}}),
    );
    send(
        &mut a,
        &json!({"type": "context", "seq": 1, "taken_ns": 1, "interval_ms": 1000,
                "processes": [{"pid": 7, "ppid": 1, "comm": "svc", "cgroup": "/svc", "user_ns": 5, "system_ns": 6,
                               "voluntary_switches": 1, "involuntary_switches": 2, "read_bytes": 3,
                               "write_bytes": 4, "rss_bytes": 4096,
                               "threads": [{"tid": 7, "comm": "svc", "user_ns": 5, "system_ns": 6,
                                            "voluntary_switches": 1, "involuntary_switches": 2}]}],
                "cgroups": [{"path": "/svc", "cpu_usage_us": 11, "cpu_user_us": 6, "cpu_system_us": 5,
                             "memory_current": 8192,
                             "cpu_pressure": {"some_avg10": 0.5, "some_total_us": 9, "full_avg10": 0.0,
                                              "full_total_us": 0}}]}),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let p = check(&doc, &api, "/v1/processes", "/v1/processes", 200);
        if !p["context"].is_null() {
            break;
        }
        assert!(Instant::now() < deadline, "no context report: {p}");
        std::thread::sleep(Duration::from_millis(10));
    }

    let vm_view = check(&doc, &api, "/v1/vm", "/v1/vm", 200);
    assert_eq!(vm_view["agent"]["connected"], true);
    let containers = check(&doc, &api, "/v1/containers", "/v1/containers", 200);
    assert!(containers
        .as_array()
        .unwrap()
        .iter()
        .any(|c| !c["guest"].is_null()));
    check(&doc, &api, "/v1/containers/1", "/v1/containers/{index}", 200);
    for target in [
        "/v1/requests",
        "/v1/requests?order=cost&limit=5",
        "/v1/requests?container=1&order=begin&limit=3",
    ] {
        check(&doc, &api, target, "/v1/requests", 200);
    }
    let all = check(&doc, &api, "/v1/requests?limit=10000", "/v1/requests", 200);
    assert!(all.as_array().unwrap().iter().any(|r| !r["trace_id"].is_null()));
    // Filtered by trace id: exactly the request the agent began with it.
    let traced = check(
        &doc,
        &api,
        "/v1/requests?trace_id=4bf92f3577b34da6a3ce929d0e0e4736",
        "/v1/requests",
        200,
    );
    let traced = traced.as_array().unwrap();
    assert_eq!(traced.len(), 1, "{traced:?}");
    assert_eq!(traced[0]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    check(&doc, &api, "/v1/requests?trace_id=4bf9", "/v1/requests", 400);
    // Errors as documented.
    check(&doc, &api, "/v1/containers/999999", "/v1/containers/{index}", 404);
    check(&doc, &api, "/v1/containers/x", "/v1/containers/{index}", 400);
    check(&doc, &api, "/v1/requests?order=sideways", "/v1/requests", 400);
    check(&doc, &api, "/v1/requests?limit=-1", "/v1/requests", 400);
    // The flame graph: both media types as documented, every resource the
    // server knows listed, errors as JSON.
    let flame = &doc["paths"]["/v1/flamegraph.svg"]["get"];
    for (target, media) in [
        ("/v1/flamegraph.svg?resource=exits", "image/svg+xml"),
        (
            "/v1/flamegraph.svg?resource=host_ns&format=folded",
            "text/plain; charset=utf-8",
        ),
    ] {
        let r = client::get(&api, target).unwrap();
        assert_eq!(r.status, 200, "GET {target}: {}", r.body);
        assert_eq!(r.content_type.as_deref(), Some(media), "{target}");
        assert!(
            flame["responses"]["200"]["content"].get(media).is_some(),
            "docs/api.yaml: /v1/flamegraph.svg does not document {media}"
        );
    }
    let names: Vec<Value> = vmm::api::flame::Resource::ALL
        .iter()
        .map(|r| json!(r.name()))
        .collect();
    assert_eq!(flame["parameters"][0]["schema"]["enum"], json!(names));
    check(
        &doc,
        &api,
        "/v1/flamegraph.svg?resource=cpu",
        "/v1/flamegraph.svg",
        400,
    );
    check(
        &doc,
        &api,
        "/v1/flamegraph.svg?format=png",
        "/v1/flamegraph.svg",
        400,
    );
    // The limits: set, read, refused, removed.
    let one = "/v1/limits/{container}";
    check(&doc, &api, "/v1/limits", "/v1/limits", 200);
    check(&doc, &api, "/v1/limits/batch", one, 404);
    let set = Some(r#"{"blk-ops": "100/s", "blk-bytes-burst": 4096, "blk-bytes": "1MiB/s"}"#);
    let l = check_call(&doc, &api, ("PUT", "/v1/limits/batch", set), one, 200);
    assert_eq!(l["devices"][0]["device"], "disk0", "{l}");
    check_call(&doc, &api, ("PUT", "/v1/limits/batch", Some("{}")), one, 400);
    let all = Some(
        r#"{"limits": [{"container": "db", "net-tx-frames": "5/s"}, {"container": "web/*", "blk-ops": "1/s"}]}"#,
    );
    check_call(&doc, &api, ("PUT", "/v1/limits", all), "/v1/limits", 200);
    check_call(&doc, &api, ("PUT", "/v1/limits", Some("[]")), "/v1/limits", 400);
    let v = check(&doc, &api, "/v1/limits", "/v1/limits", 200);
    assert_eq!(v["limits"].as_array().unwrap().len(), 2, "{v}");
    check(&doc, &api, "/v1/limits/web%2F*", one, 200);
    check_call(&doc, &api, ("DELETE", "/v1/limits/db", None), one, 200);
    check_call(&doc, &api, ("DELETE", "/v1/limits/db", None), one, 404);
    check_call(&doc, &api, ("DELETE", "/v1/limits", None), "/v1/limits", 200);
    // Every path the document lists was exercised above, or is /metrics.
    let documented: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
    for p in &documented {
        assert!(
            [
                "/v1/vm",
                "/v1/containers",
                "/v1/containers/{index}",
                "/v1/requests",
                "/v1/processes",
                "/v1/flamegraph.svg",
                "/v1/limits",
                "/v1/limits/{container}",
                "/metrics"
            ]
            .contains(&p.as_str()),
            "untested documented path {p}"
        );
    }
    drop(a);
    let run = vm.join().unwrap();
    run.assert_conserved();
    let _ = std::fs::remove_file(&disk);
}
