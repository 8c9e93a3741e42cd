//! OpenTelemetry export (`--otlp-endpoint`, docs/opentelemetry.md) against
//! a real VM with the sandbox on: a receiver in the test (a TCP listener
//! speaking just enough HTTP/1.1) decodes every POST with the
//! `opentelemetry-proto` crate's generated types, and every field of every
//! span and data point is checked against the VM's own final report.
//! Then a collector that answers 503 a few times (retried, nothing lost),
//! and no collector at all (every span counted as dropped, the VM ends
//! normally).

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use accounting::report::{ChargesReport, OtlpInfo, Report};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::{json, Value};
use vmm::vcpu::exit::VmEnd;

/// What the receiver was sent and accepted, in order.
#[derive(Default)]
struct Received {
    traces: Vec<ExportTraceServiceRequest>,
    metrics: Vec<ExportMetricsServiceRequest>,
    /// POSTs answered 503.
    refused: usize,
}

/// A collector on 127.0.0.1: answers the first `fail_first` POSTs with
/// 503 (their bodies are not kept), the others with 200.
struct Receiver {
    url: String,
    got: Arc<Mutex<Received>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    fn start(fail_first: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        listener.set_nonblocking(true).unwrap();
        let got = Arc::new(Mutex::new(Received::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, s) = (Arc::clone(&got), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let mut posts = 0;
            while !s.load(Ordering::Acquire) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        posts += 1;
                        serve(conn, posts <= fail_first, &g);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            }
        });
        Self {
            url,
            got,
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Received {
        self.stop.store(true, Ordering::Release);
        self.thread.take().unwrap().join().expect("the receiver thread");
        std::mem::take(&mut *self.got.lock().unwrap())
    }
}

/// One HTTP/1.1 POST: head, `Content-Length` body, decoded by path.
fn serve(mut conn: TcpStream, fail: bool, got: &Mutex<Received>) {
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = conn.read(&mut chunk).expect("the POST's head");
        assert!(n > 0, "the connection closed in the head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end]).unwrap().to_string();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect();
    assert_eq!(headers["content-type"], "application/x-protobuf", "{head}");
    let len: usize = headers["content-length"].parse().unwrap();
    while buf.len() < head_end + len {
        let n = conn.read(&mut chunk).expect("the POST's body");
        assert!(n > 0, "the connection closed in the body");
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = &buf[head_end..head_end + len];
    if fail {
        got.lock().unwrap().refused += 1;
        let _ = conn.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n");
        return;
    }
    let mut g = got.lock().unwrap();
    match request_line {
        "POST /v1/traces HTTP/1.1" => g
            .traces
            .push(ExportTraceServiceRequest::decode(body).expect("a trace export that decodes")),
        "POST /v1/metrics HTTP/1.1" => g
            .metrics
            .push(ExportMetricsServiceRequest::decode(body).expect("a metrics export that decodes")),
        other => panic!("unexpected request line {other:?}"),
    }
    drop(g);
    conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n")
        .unwrap();
}

fn s(v: &str) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::StringValue(v.into())),
    }
}

fn i(v: u64) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::IntValue(i64::try_from(v).unwrap())),
    }
}

fn kv(attrs: &[KeyValue]) -> BTreeMap<String, AnyValue> {
    let map: BTreeMap<_, _> = attrs
        .iter()
        .map(|a| (a.key.clone(), a.value.clone().expect("a value")))
        .collect();
    assert_eq!(map.len(), attrs.len(), "a key twice in {attrs:?}");
    map
}

/// The nine counters of docs/opentelemetry.md, from the report's charges.
fn counters(c: &ChargesReport) -> [(&'static str, u64); 9] {
    let b = &c.block;
    [
        ("exits", c.exits_total.count),
        ("exit_host_ns", c.exits_total.host_ns),
        ("run_ns", c.guest_run_ns),
        ("blk.ops", b.reads + b.writes + b.flushes + b.other),
        ("blk.bytes", b.bytes_read + b.bytes_written),
        ("net.frames", c.net.tx_frames + c.net.rx_frames),
        ("net.bytes", c.net.tx_bytes + c.net.rx_bytes),
        ("vsock.bytes", c.vsock.tx_bytes + c.vsock.rx_bytes),
        ("throttled_ns", b.throttled_ns + c.net.throttled_ns),
    ]
}

fn vm_id(o: &OtlpInfo) -> u64 {
    assert_eq!(o.vm_id.len(), 16, "{}", o.vm_id);
    u64::from_str_radix(&o.vm_id, 16).unwrap()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn resource_is_ours(attrs: &[KeyValue], report: &Report, o: &OtlpInfo) {
    let expected = BTreeMap::from([
        ("service.name".to_string(), s("resourceful")),
        ("resourceful.tenant".to_string(), s(&report.tenant)),
        ("resourceful.vm.id".to_string(), s(&o.vm_id)),
    ]);
    assert_eq!(kv(attrs), expected);
}

/// Every span against the report: one per finished request, each field.
fn check_spans(got: &Received, report: &Report, o: &OtlpInfo) {
    let spans = spans_by_seq(got, report, o);
    let finished = report.requests.iter().filter(|r| r.state == "finished").count();
    assert_eq!(spans.len(), finished, "one span per finished request");
    assert_eq!(o.spans_exported, finished as u64);
    check_retained_spans(&spans, report, o);
}

/// The spans received, by request `seq` (none twice), each export's
/// resource and scope checked.
fn spans_by_seq(got: &Received, report: &Report, o: &OtlpInfo) -> HashMap<u64, Span> {
    let mut spans = HashMap::new();
    for export in &got.traces {
        assert_eq!(export.resource_spans.len(), 1);
        let rs = &export.resource_spans[0];
        resource_is_ours(&rs.resource.as_ref().unwrap().attributes, report, o);
        assert_eq!(rs.scope_spans.len(), 1);
        let scope = rs.scope_spans[0].scope.as_ref().unwrap();
        assert_eq!(
            (scope.name.as_str(), scope.version.as_str()),
            ("resourceful", env!("CARGO_PKG_VERSION"))
        );
        for span in &rs.scope_spans[0].spans {
            let seq = match kv(&span.attributes)["resourceful.request.seq"].value {
                Some(any_value::Value::IntValue(v)) => u64::try_from(v).unwrap(),
                ref other => panic!("seq {other:?}"),
            };
            assert!(
                spans.insert(seq, span.clone()).is_none(),
                "seq {seq} exported twice"
            );
        }
    }
    spans
}

/// Each finished request of the report has its span, every field as the
/// report says.
fn check_retained_spans(spans: &HashMap<u64, Span>, report: &Report, o: &OtlpInfo) {
    let vm = vm_id(o);
    for r in report.requests.iter().filter(|r| r.state == "finished") {
        let span = spans
            .get(&r.seq)
            .unwrap_or_else(|| panic!("no span for request seq {}", r.seq));
        let trace = match &r.trace_id {
            Some(t) => t.clone(),
            None => hex(&vmm::otlp::exporter::generated_trace_id(vm, r.seq)),
        };
        assert_eq!(hex(&span.trace_id), trace);
        assert_eq!(span.span_id, vmm::otlp::span_id(vm, r.seq));
        assert!(span.parent_span_id.is_empty() && span.trace_state.is_empty());
        assert_eq!(span.name, "resourceful.request");
        assert_eq!(span.kind, 2, "SPAN_KIND_SERVER");
        assert_eq!(span.start_time_unix_nano, o.epoch_unix_ns + r.begin_ns);
        assert_eq!(span.end_time_unix_nano, o.epoch_unix_ns + r.end_ns.unwrap());
        assert!(span.events.is_empty() && span.links.is_empty() && span.status.is_none());
        assert_eq!(span.dropped_attributes_count, 0);
        let mut expected = BTreeMap::from([
            ("resourceful.tenant".to_string(), s(&report.tenant)),
            ("resourceful.vm.id".to_string(), s(&o.vm_id)),
            ("resourceful.container".to_string(), s(&r.container_path)),
            ("resourceful.request.id".to_string(), i(u64::from(r.id))),
            ("resourceful.request.seq".to_string(), i(r.seq)),
            ("resourceful.request.external_id".to_string(), i(r.external_id)),
            (
                "resourceful.trace_id.generated".to_string(),
                AnyValue {
                    value: Some(any_value::Value::BoolValue(r.trace_id.is_none())),
                },
            ),
        ]);
        for (name, v) in counters(&r.charges) {
            expected.insert(format!("resourceful.request.{name}"), i(v));
        }
        for (k, v) in &r.attributes {
            expected.insert(format!("resourceful.request.attr.{k}"), s(v));
        }
        assert_eq!(kv(&span.attributes), expected, "request seq {}", r.seq);
    }
}

/// The metrics: every export well-formed and cumulative (never going
/// down), and the last one equal to the report's containers.
fn check_metrics(got: &Received, report: &Report, o: &OtlpInfo) {
    assert!(!got.metrics.is_empty());
    assert_eq!(o.metric_exports, got.metrics.len() as u64);
    let mut last: BTreeMap<(String, String), i64> = BTreeMap::new();
    let mut points = 0;
    for export in &got.metrics {
        assert_eq!(export.resource_metrics.len(), 1);
        let rm = &export.resource_metrics[0];
        resource_is_ours(&rm.resource.as_ref().unwrap().attributes, report, o);
        assert_eq!(rm.scope_metrics.len(), 1);
        let metrics = &rm.scope_metrics[0].metrics;
        let names: Vec<_> = metrics.iter().map(|m| m.name.as_str()).collect();
        let expected_names: Vec<_> = counters(&ChargesReport::default())
            .iter()
            .map(|(n, _)| format!("resourceful.container.{n}"))
            .collect();
        assert_eq!(names, expected_names);
        let mut now = BTreeMap::new();
        for m in metrics {
            let unit = if m.name.ends_with("_ns") {
                "ns"
            } else if m.name.ends_with("bytes") {
                "By"
            } else {
                m.unit.as_str()
            };
            assert_eq!(m.unit, unit);
            assert!(
                ["ns", "By", "{exit}", "{op}", "{frame}"].contains(&m.unit.as_str()),
                "{}",
                m.unit
            );
            let Some(metric::Data::Sum(sum)) = &m.data else {
                panic!("{} is not a Sum", m.name)
            };
            assert!(sum.is_monotonic, "{}", m.name);
            assert_eq!(sum.aggregation_temporality, 2, "cumulative");
            // Every container declared by then (later ones join later
            // exports); the same ones in each metric of an export.
            assert!(sum.data_points.len() <= report.containers.len());
            assert_eq!(
                sum.data_points.len(),
                metrics[0].data.as_ref().map_or(0, |d| match d {
                    metric::Data::Sum(s) => s.data_points.len(),
                    _ => 0,
                })
            );
            for p in &sum.data_points {
                assert_eq!(p.start_time_unix_nano, o.epoch_unix_ns);
                assert!(p.time_unix_nano > p.start_time_unix_nano);
                assert!(p.exemplars.is_empty() && p.flags == 0);
                let a = kv(&p.attributes);
                assert_eq!(a.len(), 3);
                assert_eq!(a["resourceful.tenant"], s(&report.tenant));
                assert_eq!(a["resourceful.vm.id"], s(&o.vm_id));
                let Some(any_value::Value::StringValue(path)) = &a["resourceful.container"].value else {
                    panic!("container {a:?}")
                };
                let Some(number_data_point::Value::AsInt(v)) = p.value else {
                    panic!("{} is not an int", m.name)
                };
                let key = (m.name.clone(), path.clone());
                assert!(
                    last.get(&key).is_none_or(|&before| v >= before),
                    "{key:?} went down"
                );
                assert!(now.insert(key, v).is_none(), "a container twice");
                points += 1;
            }
        }
        last = now;
    }
    assert_eq!(o.metric_points_exported, points);
    let mut expected = BTreeMap::new();
    for c in &report.containers {
        for (name, v) in counters(&c.charges) {
            expected.insert(
                (format!("resourceful.container.{name}"), c.path.clone()),
                i64::try_from(v).unwrap(),
            );
        }
    }
    assert_eq!(last, expected, "the last export is the report");
}

fn send(s: &mut UnixStream, v: &Value) {
    let body = serde_json::to_vec(v).unwrap();
    s.write_all(&u32::try_from(body.len()).unwrap().to_be_bytes())
        .unwrap();
    s.write_all(&body).unwrap();
}

fn recv(s: &mut UnixStream) -> Value {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).expect("a frame from the VMM");
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    serde_json::from_slice(&body).unwrap()
}

const OTEL: u32 = 0x2000_0001;
const TRACED: u32 = 0x2000_0100;
const UNTRACED: u32 = 0x2000_0101;
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// Over the agent socket: a container, a request with a trace id,
/// external id and attributes, and one without; both ended, and seen
/// finished through the API before the VM's time runs out.
fn declare_traced_requests(agent_sock: &Path, api_sock: &Path, vm: &JoinHandle<resourceful_tests::Run>) {
    let mut a = UnixStream::connect(agent_sock).unwrap();
    a.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    send(
        &mut a,
        &json!({"type": "hello", "protocol": 3, "agent_version": "otlp-test", "kernel": "k",
                "boot_id": "5b2a0c1e-0000-4000-8000-00000000000f", "hostname": "guest"}),
    );
    assert_eq!(recv(&mut a)["type"], "welcome");
    assert_eq!(recv(&mut a)["type"], "held");
    send(
        &mut a,
        &json!({"type": "declare_container", "id": OTEL, "name": "otel"}),
    );
    send(
        &mut a,
        &json!({"type": "begin_request", "id": TRACED, "container": OTEL, "external_id": 77,
                "trace_id": TRACE, "attributes": {"route": "/checkout", "http.method": "POST"}}),
    );
    send(
        &mut a,
        &json!({"type": "begin_request", "id": UNTRACED, "container": OTEL}),
    );
    send(&mut a, &json!({"type": "end_request", "id": TRACED}));
    send(&mut a, &json!({"type": "end_request", "id": UNTRACED}));
    resourceful_tests::wait_for("the agent's requests to finish", vm, || {
        let containers = resourceful_tests::api_json(api_sock, "/v1/containers");
        let idx = containers.as_array()?.iter().find(|c| c["path"] == "otel")?["index"].as_u64()?;
        let reqs = resourceful_tests::api_json(api_sock, &format!("/v1/requests?container={idx}&limit=10"));
        let done = reqs
            .as_array()?
            .iter()
            .filter(|r| r["state"] == "finished")
            .count();
        (done == 2).then_some(())
    });
    // The API shows the exporter while the VM runs.
    let v = resourceful_tests::api_json(api_sock, "/v1/vm");
    assert!(
        v["otlp"]["traces_url"].as_str().unwrap().ends_with("/v1/traces"),
        "{v}"
    );
    assert_eq!(v["otlp"]["vm_id"].as_str().unwrap().len(), 16);
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        keys(&v["otlp"]),
        keys(&serde_json::to_value(OtlpInfo::default()).unwrap())
    );
    // Its thread, by name.
    let threads: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .collect();
    assert!(threads.iter().any(|c| c.trim() == "rsrc-otlp"), "{threads:?}");
    // And its counters in the Prometheus exposition.
    let m = vmm::api::client::get(api_sock, "/metrics").expect("GET /metrics");
    assert_eq!(m.status, 200);
    for counter in [
        "spans_exported",
        "spans_dropped_evicted",
        "spans_dropped_failed",
        "metric_exports",
        "metric_points_exported",
        "metric_exports_dropped",
        "post_errors",
        "retries",
    ] {
        let series = format!("resourceful_otlp_events_total{{tenant=\"acme\",counter=\"{counter}\"}} ");
        assert!(
            m.body.lines().any(|l| l.starts_with(&series)),
            "{series} in:\n{}",
            m.body
        );
    }
}

#[test]
fn spans_and_metrics_match_the_report_field_by_field() {
    let rx = Receiver::start(0);
    let url = rx.url.clone();
    let dir = resourceful_tests::scratch_dir("otlp-fields");
    let (agent_sock, api_sock) = (dir.join("agent.sock"), dir.join("api.sock"));
    // The demo in rounds, ended by the time limit: its own requests (no
    // trace id) beside the agent's.
    let mut config = resourceful_tests::config("demo loop=1", 2);
    config.agent_sock = Some(agent_sock.clone());
    config.api_sock = Some(api_sock.clone());
    config.time_limit_ms = Some(2500);
    config.otlp = Some(vmm::otlp::OtlpConfig {
        endpoint: format!("{}/", rx.url),
        interval_ms: 300,
    });
    let vm = std::thread::spawn(move || resourceful_tests::boot(config));
    resourceful_tests::wait_for("the sockets", &vm, || {
        (agent_sock.exists() && api_sock.exists()).then_some(())
    });
    declare_traced_requests(&agent_sock, &api_sock, &vm);
    let run = vm.join().unwrap();
    let got = rx.finish();
    assert_eq!(run.end, VmEnd::TimeLimit, "console:\n{}", run.console);
    run.assert_conserved();
    let o = run.report.vm.otlp.clone().expect("vm.otlp in the report");
    // The trailing '/' of the base URL is dropped.
    assert_eq!(o.traces_url, format!("{url}/v1/traces"));
    assert_eq!(o.metrics_url, format!("{url}/v1/metrics"));
    assert_eq!(
        (
            o.spans_dropped,
            o.spans_queued,
            o.metric_exports_dropped,
            o.post_errors,
            o.retries
        ),
        (0, 0, 0, 0, 0)
    );
    assert_eq!(got.refused, 0);
    let traced = run.request(TRACED);
    assert_eq!(traced.trace_id.as_deref(), Some(TRACE));
    assert_eq!(traced.external_id, 77);
    // Many demo requests, with charges, and the agent's two.
    assert!(run.report.requests.len() > 10);
    check_spans(&got, &run.report, &o);
    check_metrics(&got, &run.report, &o);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A VM of the plain demo (it ends by itself) exporting to `endpoint`.
fn run_demo(endpoint: String) -> resourceful_tests::Run {
    let mut config = resourceful_tests::config("demo", 2);
    config.otlp = Some(vmm::otlp::OtlpConfig {
        endpoint,
        interval_ms: 200,
    });
    resourceful_tests::boot(config)
}

#[test]
fn a_collector_that_answers_503_three_times_loses_nothing() {
    let rx = Receiver::start(3);
    let run = run_demo(rx.url.clone());
    let got = rx.finish();
    run.assert_clean();
    let o = run.report.vm.otlp.clone().unwrap();
    assert_eq!(got.refused, 3);
    assert_eq!((o.post_errors, o.retries), (3, 3), "{o:?}");
    assert_eq!(
        (o.spans_dropped, o.spans_queued, o.metric_exports_dropped),
        (0, 0, 0)
    );
    check_spans(&got, &run.report, &o);
    check_metrics(&got, &run.report, &o);
}

#[test]
fn without_a_collector_every_span_is_counted_dropped_and_the_vm_ends_normally() {
    // A port nobody listens on: connections are refused.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let run = run_demo(format!("http://127.0.0.1:{port}"));
    run.assert_clean();
    let o = run.report.vm.otlp.clone().unwrap();
    let finished = run
        .report
        .requests
        .iter()
        .filter(|r| r.state == "finished")
        .count() as u64;
    assert!(finished > 0);
    assert_eq!(
        (o.spans_exported, o.metric_exports, o.metric_points_exported),
        (0, 0, 0)
    );
    assert_eq!(
        (o.spans_dropped, o.spans_dropped_failed, o.spans_dropped_evicted),
        (finished, finished, 0)
    );
    assert_eq!(o.spans_queued, 0);
    assert!(o.metric_exports_dropped >= 1, "{o:?}");
    // Each failed try is counted, and a POST's first try is no retry.
    assert!(o.post_errors > o.retries && o.retries > 0, "{o:?}");
}

#[test]
fn requests_evicted_before_the_exporter_reads_them_are_counted_dropped() {
    let rx = Receiver::start(0);
    let mut config = resourceful_tests::config("demo", 2);
    // 200 requests, 10 retained: the rest are evicted as the guest goes
    // on, most or all before the exporter's first read.
    config.limits.retained_requests = 10;
    config.otlp = Some(vmm::otlp::OtlpConfig {
        endpoint: rx.url.clone(),
        interval_ms: 200,
    });
    let run = resourceful_tests::boot(config);
    let got = rx.finish();
    run.assert_clean();
    let o = run.report.vm.otlp.clone().unwrap();
    let d = &run.report.declarations;
    let finished = d.requests_ended + d.requests_ended_by_retire;
    assert_eq!(finished, 200);
    assert_eq!(d.requests_evicted, 190);
    // Every finished request exported or counted, none twice.
    assert_eq!(o.spans_exported + o.spans_dropped_evicted, finished, "{o:?}");
    assert_eq!((o.spans_dropped_failed, o.spans_queued), (0, 0));
    assert!(
        o.spans_dropped_evicted > 0 && o.spans_dropped_evicted <= 190,
        "{o:?}"
    );
    let spans = spans_by_seq(&got, &run.report, &o);
    assert_eq!(spans.len() as u64, o.spans_exported);
    // The 10 retained are among them, exactly as the report has them.
    check_retained_spans(&spans, &run.report, &o);
    check_metrics(&got, &run.report, &o);
}

#[test]
fn a_collector_that_accepts_and_never_answers_cannot_hold_the_vm() {
    // Connections are accepted (and their bytes read) but never answered.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    listener.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s = Arc::clone(&stop);
    let silent = std::thread::spawn(move || {
        let mut held = Vec::new();
        while !s.load(Ordering::Acquire) {
            if let Ok((c, _)) = listener.accept() {
                held.push(c);
            }
            for c in &mut held {
                c.set_nonblocking(true).unwrap();
                let mut sink = [0u8; 65536];
                while matches!(c.read(&mut sink), Ok(n) if n > 0) {}
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        held.len()
    });
    let run = run_demo(url);
    stop.store(true, Ordering::Release);
    let connections = silent.join().unwrap();
    run.assert_clean();
    let o = run.report.vm.otlp.clone().unwrap();
    let finished = run
        .report
        .requests
        .iter()
        .filter(|r| r.state == "finished")
        .count() as u64;
    assert_eq!((o.spans_exported, o.metric_exports), (0, 0), "{o:?}");
    assert_eq!(
        (o.spans_dropped, o.spans_dropped_failed),
        (finished, finished),
        "{o:?}"
    );
    // The collector took connections, and every try on one failed (a try
    // cut short by the last round's deadline may not have connected).
    assert!(
        connections >= 1 && o.post_errors >= connections as u64,
        "{o:?} {connections}"
    );
}
