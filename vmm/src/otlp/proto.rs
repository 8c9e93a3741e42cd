//! OTLP/protobuf encoding of finished requests (spans) and per-container
//! counters (cumulative monotonic sums), written by hand: the handful of
//! messages the exporter sends need a few dozen lines of protobuf writer,
//! not a code generator and its runtime in the VMM. The field numbers are
//! those of opentelemetry-proto's `.proto` files (`collector/trace/v1`,
//! `collector/metrics/v1`, `trace/v1`, `metrics/v1`, `common/v1`,
//! `resource/v1`); the test decodes every message with the
//! `opentelemetry-proto` crate's generated types.

use accounting::resource::Charges;

/// Protobuf wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;

/// A protobuf writer: fields appended in order; a nested message is
/// written into its own buffer and appended with its length.
#[derive(Default)]
pub struct Msg(Vec<u8>);

impl Msg {
    fn key(&mut self, field: u32, wire: u8) {
        self.varint(u64::from(field << 3 | u32::from(wire)));
    }

    // Each byte takes seven bits of `v`, masked.
    #[allow(clippy::cast_possible_truncation)]
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            // The low seven bits, with the continuation bit.
            self.0.push((v as u8 & 0x7f) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    /// A varint field (uint32/uint64/int32 ≥ 0/enum/bool).
    fn uint(&mut self, field: u32, v: u64) -> &mut Self {
        self.key(field, VARINT);
        self.varint(v);
        self
    }

    /// A fixed64 (or sfixed64) field.
    fn fixed64(&mut self, field: u32, v: u64) -> &mut Self {
        self.key(field, FIXED64);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// A bytes or string field.
    fn bytes(&mut self, field: u32, b: &[u8]) -> &mut Self {
        self.key(field, LEN);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }

    /// An embedded message field.
    fn msg(&mut self, field: u32, m: &Msg) -> &mut Self {
        self.bytes(field, &m.0)
    }

    /// The encoded bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// An attribute value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// `string_value` (1).
    Str(String),
    /// `int_value` (3). Counters above `i64::MAX` are clamped to it.
    Int(i64),
    /// `bool_value` (2).
    Bool(bool),
}

/// A `u64` counter as an OTLP int (clamped at `i64::MAX`).
pub fn int(v: u64) -> Value {
    Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
}

/// A `KeyValue` (common/v1): key 1, value 2 (`AnyValue`).
fn key_value(key: &str, value: &Value) -> Msg {
    let mut any = Msg::default();
    match value {
        Value::Str(s) => any.bytes(1, s.as_bytes()),
        Value::Bool(b) => any.uint(2, u64::from(*b)),
        // int64 is a two's-complement varint.
        Value::Int(i) => any.uint(3, *i as u64),
    };
    let mut kv = Msg::default();
    kv.bytes(1, key.as_bytes()).msg(2, &any);
    kv
}

fn attributes(m: &mut Msg, field: u32, attrs: &[(String, Value)]) {
    for (k, v) in attrs {
        m.msg(field, &key_value(k, v));
    }
}

/// The `Resource` (resource/v1, attributes 1) and `InstrumentationScope`
/// (common/v1: name 1, version 2) every export carries.
fn resource_and_scope(resource: &[(String, Value)]) -> (Msg, Msg) {
    let mut r = Msg::default();
    attributes(&mut r, 1, resource);
    let mut scope = Msg::default();
    scope
        .bytes(1, b"resourceful")
        .bytes(2, env!("CARGO_PKG_VERSION").as_bytes());
    (r, scope)
}

/// One finished request, ready to encode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpanData {
    /// 16 bytes, never all zero.
    pub trace_id: [u8; 16],
    /// 8 bytes, never all zero.
    pub span_id: [u8; 8],
    /// Unix ns.
    pub start_unix_ns: u64,
    /// Unix ns.
    pub end_unix_ns: u64,
    /// Span attributes.
    pub attributes: Vec<(String, Value)>,
}

/// The span name of every request.
pub const SPAN_NAME: &str = "resourceful.request";
/// `SPAN_KIND_SERVER`: a request the guest served.
pub const SPAN_KIND_SERVER: u64 = 2;

/// An `ExportTraceServiceRequest` with one `ResourceSpans` (resource 1,
/// scope_spans 2) holding one `ScopeSpans` (scope 1, spans 2).
pub fn encode_traces(resource: &[(String, Value)], spans: &[SpanData]) -> Vec<u8> {
    let (r, scope) = resource_and_scope(resource);
    let mut ss = Msg::default();
    ss.msg(1, &scope);
    for s in spans {
        // Span: trace_id 1, span_id 2, name 5, kind 6, start 7 and end 8
        // (fixed64), attributes 9.
        let mut m = Msg::default();
        m.bytes(1, &s.trace_id)
            .bytes(2, &s.span_id)
            .bytes(5, SPAN_NAME.as_bytes())
            .uint(6, SPAN_KIND_SERVER)
            .fixed64(7, s.start_unix_ns)
            .fixed64(8, s.end_unix_ns);
        attributes(&mut m, 9, &s.attributes);
        ss.msg(2, &m);
    }
    let mut rs = Msg::default();
    rs.msg(1, &r).msg(2, &ss);
    let mut req = Msg::default();
    req.msg(1, &rs);
    req.into_bytes()
}

/// The counters exported per container (metric `resourceful.container.KEY`)
/// and per request (span attribute `resourceful.request.KEY`): key, unit,
/// value.
pub fn container_counters(c: &Charges) -> [(&'static str, &'static str, u64); 9] {
    let exits = c.exits_total();
    let b = &c.block;
    [
        ("exits", "{exit}", exits.count),
        ("exit_host_ns", "ns", exits.host_ns),
        ("run_ns", "ns", c.guest_run_ns),
        ("blk.ops", "{op}", b.reads + b.writes + b.flushes + b.other),
        ("blk.bytes", "By", b.bytes_read + b.bytes_written),
        ("net.frames", "{frame}", c.net.tx_frames + c.net.rx_frames),
        ("net.bytes", "By", c.net.tx_bytes + c.net.rx_bytes),
        ("vsock.bytes", "By", c.vsock.tx_bytes + c.vsock.rx_bytes),
        ("throttled_ns", "ns", b.throttled_ns + c.net.throttled_ns),
    ]
}

/// `AGGREGATION_TEMPORALITY_CUMULATIVE`.
const CUMULATIVE: u64 = 2;

/// One container's point attributes and counters.
pub struct ContainerPoint {
    /// `resourceful.tenant`, `resourceful.container`, `resourceful.vm.id`.
    pub attributes: Vec<(String, Value)>,
    /// Its charges.
    pub charges: Charges,
}

/// An `ExportMetricsServiceRequest`: one `ResourceMetrics` (resource 1,
/// scope_metrics 2), one `ScopeMetrics` (scope 1, metrics 2), one `Metric`
/// (name 1, description 2, unit 3, sum 7) per counter of
/// [`container_counters`], each a `Sum` (data_points 1, temporality 2,
/// is_monotonic 3) with one `NumberDataPoint` per container (start 2 and
/// time 3 fixed64, as_int 6 sfixed64, attributes 7). Returns the bytes and
/// the number of points.
pub fn encode_metrics(
    resource: &[(String, Value)],
    start_unix_ns: u64,
    now_unix_ns: u64,
    points: &[ContainerPoint],
) -> (Vec<u8>, u64) {
    let (r, scope) = resource_and_scope(resource);
    let mut sm = Msg::default();
    sm.msg(1, &scope);
    let counters: Vec<_> = points.iter().map(|p| container_counters(&p.charges)).collect();
    let mut n = 0u64;
    for (i, (name, unit, _)) in container_counters(&Charges::default()).iter().enumerate() {
        let mut sum = Msg::default();
        for (p, values) in points.iter().zip(&counters) {
            let mut dp = Msg::default();
            dp.fixed64(2, start_unix_ns)
                .fixed64(3, now_unix_ns)
                .fixed64(6, i64::try_from(values[i].2).unwrap_or(i64::MAX) as u64);
            attributes(&mut dp, 7, &p.attributes);
            sum.msg(1, &dp);
            n += 1;
        }
        sum.uint(2, CUMULATIVE).uint(3, 1);
        let mut metric = Msg::default();
        let name = format!("resourceful.container.{name}");
        metric
            .bytes(1, name.as_bytes())
            .bytes(3, unit.as_bytes())
            .msg(7, &sum);
        sm.msg(2, &metric);
    }
    let mut rm = Msg::default();
    rm.msg(1, &r).msg(2, &sm);
    let mut req = Msg::default();
    req.msg(1, &rm);
    (req.into_bytes(), n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_are_little_endian_groups_of_seven() {
        let mut m = Msg::default();
        m.varint(0);
        m.varint(127);
        m.varint(128);
        m.varint(300);
        m.varint(u64::MAX);
        assert_eq!(
            m.into_bytes(),
            [
                &[0x00, 0x7f, 0x80, 0x01, 0xac, 0x02][..],
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
            ]
            .concat()
        );
    }

    #[test]
    fn a_negative_int_is_ten_bytes_of_twos_complement() {
        let kv = key_value("k", &Value::Int(-1)).into_bytes();
        // key "k", then AnyValue { int_value: -1 }.
        assert_eq!(kv[..3], [0x0a, 1, b'k']);
        assert_eq!(kv[3..5], [0x12, 11]);
        assert_eq!(kv[5], 3 << 3);
        assert_eq!(kv.len(), 5 + 11);
    }
}
