//! The exporter thread (`rsrc-otlp`): every [`SPAN_TICK`] it reads the
//! requests that finished since its cursor (finish numbers, in end order;
//! the registry lock taken per [`LOCK_STEP`] requests), queues them as
//! spans (at most [`QUEUE_MAX`]), and posts them in batches of at most
//! [`BATCH_MAX`]; every `--otlp-interval` it posts the per-container
//! counters. A failed POST (connection error, timeout, 429, 5xx) is tried
//! again after 100 ms, 200 ms, … up to [`MAX_TRIES`] tries, then its
//! spans are dropped and counted. While it waits the guest goes on: a
//! request that falls out of retention before the cursor reaches it is
//! counted as dropped (`spans_dropped_evicted`). When the VM ends, one last
//! read and export run under [`FLUSH_LIMIT`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use accounting::ledger::Accounting;
use accounting::registry::RequestRow;
use accounting::report::OtlpInfo;

use super::http::{self, Outcome, Target};
use super::proto::{self, int, ContainerPoint, SpanData, Value};
use super::{OtlpConfig, OtlpError};
use crate::sandbox::{self, Seccomp, ThreadKind};

/// How often finished requests are read and sent.
pub const SPAN_TICK: Duration = Duration::from_millis(200);
/// Most spans read but not yet sent; the cursor waits while it is full.
pub const QUEUE_MAX: usize = 1024;
/// Most spans in one POST.
pub const BATCH_MAX: usize = 512;
/// Most containers in one metrics POST.
pub const METRIC_CONTAINERS_MAX: usize = 1024;
/// Requests read per hold of the registry lock.
pub const LOCK_STEP: usize = 128;
/// Finished requests whose charges a writer may still add to, set aside
/// until they settle (the cursor waits when this many are).
pub const WAITING_MAX: usize = 256;
/// Tries per POST.
pub const MAX_TRIES: u32 = 5;
/// The first retry's delay; each next one doubles.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// A whole POST: connect, send, answer.
pub const POST_TIMEOUT: Duration = Duration::from_secs(2);
/// The last export after the VM ended gives up after this long.
pub const FLUSH_LIMIT: Duration = Duration::from_secs(3);

/// The exporter's counters, shared with the API (`GET /v1/vm`) and the
/// report; see [`OtlpInfo`] for each one's meaning.
#[derive(Debug, Default)]
pub struct OtlpStats {
    base: OtlpInfo,
    spans_exported: AtomicU64,
    spans_queued: AtomicU64,
    spans_dropped_evicted: AtomicU64,
    spans_dropped_failed: AtomicU64,
    metric_exports: AtomicU64,
    metric_points_exported: AtomicU64,
    metric_exports_dropped: AtomicU64,
    post_errors: AtomicU64,
    retries: AtomicU64,
}

impl OtlpStats {
    /// As of now.
    pub fn info(&self) -> OtlpInfo {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (evicted, failed) = (get(&self.spans_dropped_evicted), get(&self.spans_dropped_failed));
        OtlpInfo {
            spans_exported: get(&self.spans_exported),
            spans_queued: get(&self.spans_queued),
            spans_dropped: evicted + failed,
            spans_dropped_evicted: evicted,
            spans_dropped_failed: failed,
            metric_exports: get(&self.metric_exports),
            metric_points_exported: get(&self.metric_points_exported),
            metric_exports_dropped: get(&self.metric_exports_dropped),
            post_errors: get(&self.post_errors),
            retries: get(&self.retries),
            ..self.base.clone()
        }
    }
}

fn add(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Relaxed);
}

/// A request's span id: 8 bytes derived from the VM id and the request's
/// begin order (`seq`, unique over the VM's life) by SplitMix64's
/// finalizer, a bijection of `seq` for a given VM id: two requests of one
/// VM get different span ids (but for the one `seq` whose image is zero,
/// the invalid span id, which gets 1 instead).
pub fn span_id(vm_id: u64, seq: u64) -> [u8; 8] {
    let mut z = vm_id ^ seq.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (if z == 0 { 1 } else { z }).to_be_bytes()
}

/// The trace id of a request the guest gave none: the VM id, then `seq`,
/// big-endian (never zero: the VM id is not).
pub fn generated_trace_id(vm_id: u64, seq: u64) -> [u8; 16] {
    let mut t = [0u8; 16];
    t[..8].copy_from_slice(&vm_id.to_be_bytes());
    t[8..].copy_from_slice(&seq.to_be_bytes());
    t
}

/// A running exporter; [`Exporter::finish`] ends it.
pub struct Exporter {
    stats: Arc<OtlpStats>,
    stop: Arc<AtomicBool>,
    /// Set when dropped without [`Exporter::finish`] (the VM failed to
    /// start): the thread ends without a last export.
    abort: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// A random, non-zero VM id.
fn draw_vm_id() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: getrandom(2) writes at most `b.len()` bytes into `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    let id = if n == 8 {
        u64::from_ne_bytes(b)
    } else {
        // No entropy call: time and pid still tell VMs apart.
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        // The low 64 bits of the time are what differs between VMs.
        #[allow(clippy::cast_possible_truncation)]
        let low = t as u64;
        low ^ (u64::from(std::process::id()) << 32)
    };
    id.max(1)
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl Exporter {
    /// Checks `config`, resolves the collector and starts the thread
    /// (sandboxed as [`ThreadKind::Otlp`]).
    pub fn start(config: &OtlpConfig, acct: &Arc<Accounting>, seccomp: Seccomp) -> Result<Self, OtlpError> {
        let endpoint = config.validate()?;
        let (traces, metrics) = endpoint.resolve(&config.endpoint)?;
        let vm_id = draw_vm_id();
        let epoch_unix_ns = unix_ns().saturating_sub(acct.now_ns());
        let stats = Arc::new(OtlpStats {
            base: OtlpInfo {
                traces_url: traces.url(),
                metrics_url: metrics.url(),
                vm_id: format!("{vm_id:016x}"),
                epoch_unix_ns,
                ..OtlpInfo::default()
            },
            ..OtlpStats::default()
        });
        let stop = Arc::new(AtomicBool::new(false));
        let abort = Arc::new(AtomicBool::new(false));
        let tenant = acct.tenant().to_string();
        let resource = vec![
            ("service.name".to_string(), Value::Str("resourceful".into())),
            ("resourceful.tenant".to_string(), Value::Str(tenant.clone())),
            (
                "resourceful.vm.id".to_string(),
                Value::Str(format!("{vm_id:016x}")),
            ),
        ];
        let worker = Worker {
            acct: Arc::clone(acct),
            stats: Arc::clone(&stats),
            stop: Arc::clone(&stop),
            abort: Arc::clone(&abort),
            traces,
            metrics,
            interval: config.interval(),
            vm_id,
            tenant,
            epoch_unix_ns,
            resource,
            cursor: 0,
            waiting: Vec::new(),
            queue: VecDeque::new(),
            flush_deadline: None,
        };
        let thread = std::thread::Builder::new()
            .name("rsrc-otlp".into())
            .spawn(move || {
                sandbox::enter_or_exit(ThreadKind::Otlp, seccomp);
                worker.run();
            })
            .map_err(OtlpError::Spawn)?;
        Ok(Self {
            stats,
            stop,
            abort,
            thread: Some(thread),
        })
    }

    /// The counters, for the API.
    pub fn stats(&self) -> Arc<OtlpStats> {
        Arc::clone(&self.stats)
    }

    /// Runs the last export (every request finished so far, the final
    /// counters; at most [`FLUSH_LIMIT`]) and ends the thread. Call it once
    /// no ledger writer runs any more, so what it sends is final.
    pub fn finish(mut self) -> OtlpInfo {
        self.end();
        self.stats.info()
    }

    fn end(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            if t.join().is_err() {
                log::error!("the OTLP exporter thread panicked");
            }
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.abort.store(true, Ordering::Release);
        self.end();
    }
}

struct Worker {
    acct: Arc<Accounting>,
    stats: Arc<OtlpStats>,
    stop: Arc<AtomicBool>,
    abort: Arc<AtomicBool>,
    traces: Target,
    metrics: Target,
    interval: Duration,
    vm_id: u64,
    tenant: String,
    epoch_unix_ns: u64,
    resource: Vec<(String, Value)>,
    /// The next finish number to read.
    cursor: u64,
    /// Finish numbers read while their charges were still pending.
    waiting: Vec<u64>,
    queue: VecDeque<SpanData>,
    /// Set once the VM ended: retries stop here.
    flush_deadline: Option<Instant>,
}

impl Worker {
    fn run(mut self) {
        let mut next_metrics = Instant::now() + self.interval;
        let mut behind = false;
        loop {
            // Nothing has finished when the VM starts: the first read waits
            // a tick too, off the CPUs while the guest boots. A read cut
            // short by the full queue goes on at once.
            let wake = if behind {
                Instant::now()
            } else {
                (Instant::now() + SPAN_TICK).min(next_metrics)
            };
            while !self.stop.load(Ordering::Acquire) {
                let now = Instant::now();
                if now >= wake {
                    break;
                }
                std::thread::park_timeout(wake - now);
            }
            if self.stop.load(Ordering::Acquire) {
                if !self.abort.load(Ordering::Acquire) {
                    self.flush();
                }
                return;
            }
            behind = self.collect(false);
            self.send_spans();
            if Instant::now() >= next_metrics {
                self.send_metrics();
                next_metrics = Instant::now() + self.interval;
            }
        }
    }

    /// The last export: every request finished so far (queue-full rounds
    /// repeated), then the final counters, until [`FLUSH_LIMIT`]; what is
    /// left is counted as dropped.
    fn flush(&mut self) {
        let deadline = *self.flush_deadline.get_or_insert(Instant::now() + FLUSH_LIMIT);
        loop {
            let _ = self.collect(true);
            self.send_spans();
            let behind = {
                let reg = self.acct.registry();
                self.cursor < reg.next_fin() || !self.waiting.is_empty()
            };
            if !behind || Instant::now() >= deadline {
                break;
            }
        }
        self.send_metrics();
        let reg = self.acct.registry();
        let front = reg.front_fin();
        if self.cursor < front {
            add(&self.stats.spans_dropped_evicted, front - self.cursor);
            self.cursor = front;
        }
        let unread = reg.next_fin() - self.cursor + self.waiting.len() as u64 + self.queue.len() as u64;
        drop(reg);
        add(&self.stats.spans_dropped_failed, unread);
        self.stats.spans_queued.store(0, Ordering::Relaxed);
    }

    /// Reads finished requests into the queue. With `last` (every writer
    /// stopped) pending charges are final and read as they are. Whether it
    /// stopped with more to read (the queue full).
    fn collect(&mut self, last: bool) -> bool {
        let mut rows: Vec<(RequestRow, Arc<str>)> = Vec::new();
        let mut behind = false;
        loop {
            let room = QUEUE_MAX.saturating_sub(self.queue.len() + rows.len());
            let mut caught_up = false;
            {
                let mut reg = self.acct.registry();
                reg.sweep();
                let front = reg.front_fin();
                if self.cursor < front {
                    add(&self.stats.spans_dropped_evicted, front - self.cursor);
                    self.cursor = front;
                }
                let mut budget = room.min(LOCK_STEP);
                let mut kept = Vec::with_capacity(self.waiting.len());
                for &fin in &self.waiting {
                    match reg.finished_at(fin) {
                        None => add(&self.stats.spans_dropped_evicted, 1),
                        Some((row, pending)) if (!pending || last) && budget > 0 => {
                            budget -= 1;
                            let path = reg.containers()[row.container].path.clone();
                            rows.push((row, path));
                        }
                        Some(_) => kept.push(fin),
                    }
                }
                self.waiting = kept;
                let end = reg.next_fin();
                while budget > 0 && self.cursor < end {
                    let Some((row, pending)) = reg.finished_at(self.cursor) else {
                        break;
                    };
                    if pending && !last {
                        if self.waiting.len() >= WAITING_MAX {
                            break;
                        }
                        self.waiting.push(self.cursor);
                    } else {
                        let path = reg.containers()[row.container].path.clone();
                        rows.push((row, path));
                        budget -= 1;
                    }
                    self.cursor += 1;
                }
                if self.cursor >= end || budget > 0 || room <= LOCK_STEP {
                    caught_up = true;
                    behind = self.cursor < end && budget == 0;
                }
            }
            if caught_up {
                break;
            }
        }
        add(&self.stats.spans_queued, rows.len() as u64);
        for (row, path) in rows {
            let span = self.span(&row, &path);
            self.queue.push_back(span);
        }
        behind
    }

    fn span(&self, row: &RequestRow, container: &str) -> SpanData {
        let given = row.meta.as_ref().and_then(|m| m.trace_id);
        let c = &row.charges;
        let mut attributes = vec![
            ("resourceful.tenant".to_string(), Value::Str(self.tenant.clone())),
            (
                "resourceful.vm.id".to_string(),
                Value::Str(format!("{:016x}", self.vm_id)),
            ),
            (
                "resourceful.container".to_string(),
                Value::Str(container.to_string()),
            ),
            ("resourceful.request.id".to_string(), int(u64::from(row.guest_id))),
            ("resourceful.request.seq".to_string(), int(row.seq)),
            (
                "resourceful.request.external_id".to_string(),
                int(row.external_id),
            ),
            (
                "resourceful.trace_id.generated".to_string(),
                Value::Bool(given.is_none()),
            ),
        ];
        for (key, _, v) in proto::container_counters(c) {
            attributes.push((format!("resourceful.request.{key}"), int(v)));
        }
        if let Some(m) = &row.meta {
            for (k, v) in &m.attributes {
                attributes.push((format!("resourceful.request.attr.{k}"), Value::Str(v.clone())));
            }
        }
        SpanData {
            trace_id: given.unwrap_or_else(|| generated_trace_id(self.vm_id, row.seq)),
            span_id: span_id(self.vm_id, row.seq),
            start_unix_ns: self.epoch_unix_ns.saturating_add(row.begin_ns),
            end_unix_ns: self
                .epoch_unix_ns
                .saturating_add(row.end_ns.unwrap_or(row.begin_ns)),
            attributes,
        }
    }

    fn send_spans(&mut self) {
        while !self.queue.is_empty() {
            let n = self.queue.len().min(BATCH_MAX);
            let batch: Vec<SpanData> = self.queue.drain(..n).collect();
            let body = proto::encode_traces(&self.resource, &batch);
            let sent = self.post(&self.traces.clone(), &body);
            self.stats.spans_queued.fetch_sub(n as u64, Ordering::Relaxed);
            if sent {
                add(&self.stats.spans_exported, n as u64);
            } else {
                add(&self.stats.spans_dropped_failed, n as u64);
            }
        }
    }

    fn send_metrics(&mut self) {
        let (views, _) = self.acct.containers_view();
        let now = unix_ns();
        for chunk in views.chunks(METRIC_CONTAINERS_MAX) {
            let points: Vec<ContainerPoint> = chunk
                .iter()
                .map(|v| ContainerPoint {
                    attributes: vec![
                        ("resourceful.tenant".to_string(), Value::Str(self.tenant.clone())),
                        (
                            "resourceful.container".to_string(),
                            Value::Str(v.row.path.to_string()),
                        ),
                        (
                            "resourceful.vm.id".to_string(),
                            Value::Str(format!("{:016x}", self.vm_id)),
                        ),
                    ],
                    charges: v.charges,
                })
                .collect();
            let (body, n) = proto::encode_metrics(&self.resource, self.epoch_unix_ns, now, &points);
            if self.post(&self.metrics.clone(), &body) {
                add(&self.stats.metric_exports, 1);
                add(&self.stats.metric_points_exported, n);
            } else {
                add(&self.stats.metric_exports_dropped, 1);
            }
        }
    }

    /// POSTs with retries; whether the collector accepted it.
    fn post(&mut self, target: &Target, body: &[u8]) -> bool {
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=MAX_TRIES {
            if self.abort.load(Ordering::Acquire) || self.flush_deadline.is_some_and(|d| Instant::now() >= d)
            {
                return false;
            }
            if attempt > 1 {
                add(&self.stats.retries, 1);
            }
            // Never past the last round's deadline.
            let mut until = Instant::now() + POST_TIMEOUT;
            if let Some(d) = self.flush_deadline {
                until = until.min(d);
            }
            match http::post(target, body, until) {
                Outcome::Accepted => return true,
                Outcome::Refused(why) => {
                    add(&self.stats.post_errors, 1);
                    accounting::warn_rl!("OTLP export to {} refused ({why}); dropped", target.url());
                    return false;
                }
                Outcome::Retry(why) => {
                    add(&self.stats.post_errors, 1);
                    if attempt == MAX_TRIES {
                        accounting::warn_rl!(
                            "OTLP export to {} failed {MAX_TRIES} times ({why}); dropped",
                            target.url()
                        );
                        return false;
                    }
                }
            }
            if !self.sleep(backoff) {
                accounting::warn_rl!(
                    "OTLP export to {}: out of time after the VM ended; dropped",
                    target.url()
                );
                return false;
            }
            backoff *= 2;
        }
        false
    }

    /// Sleeps `d`, cut short by the end of the VM (then only until the
    /// flush deadline); false if the deadline passed.
    fn sleep(&mut self, d: Duration) -> bool {
        let until = Instant::now() + d;
        loop {
            if self.stop.load(Ordering::Acquire) {
                let deadline = *self.flush_deadline.get_or_insert(Instant::now() + FLUSH_LIMIT);
                if until >= deadline {
                    return false;
                }
            }
            let now = Instant::now();
            if now >= until {
                return true;
            }
            std::thread::park_timeout(until - now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_ids_of_one_vm_are_distinct_and_never_zero() {
        let mut seen = std::collections::HashSet::new();
        for vm in [1u64, 0xdead_beef, u64::MAX] {
            seen.clear();
            for seq in 0..10_000 {
                let id = span_id(vm, seq);
                assert_ne!(id, [0; 8]);
                assert!(seen.insert(id), "vm {vm} seq {seq}");
            }
        }
        assert_eq!(span_id(7, 3), span_id(7, 3));
        let t = generated_trace_id(0x0102_0304_0506_0708, 9);
        assert_eq!(t, [1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0, 0, 9]);
    }
}
