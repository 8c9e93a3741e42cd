//! Per-container limits as the user gives them (`--limit PATH:KEY=VALUE,...`,
//! a `--limits` file entry, a `PUT /v1/limits` body): the keys, their
//! parsing and checks, and each device's form of a limit
//! (docs/limits-per-container.md). [`crate::config`] re-exports them.

use devices::virtio::sched::{MAX_PRIORITY, MAX_SHARE};
use serde::{Deserialize, Serialize};

/// One token bucket of a per-container limit (Firecracker's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketConfig {
    /// Tokens a full bucket holds.
    pub size: u64,
    /// Tokens available once, before the bucket's own, never refilled.
    #[serde(default)]
    pub one_time_burst: u64,
    /// Milliseconds for an empty bucket to fill.
    pub refill_time_ms: u64,
}

impl BucketConfig {
    /// The device's form.
    pub fn bucket(self) -> devices::virtio::block::BucketConfig {
        devices::virtio::block::BucketConfig {
            size: self.size,
            one_time_burst: self.one_time_burst,
            refill_time: std::time::Duration::from_millis(self.refill_time_ms),
        }
    }

    fn from_rate(r: devices::virtio::block::BucketConfig) -> Self {
        Self {
            size: r.size,
            one_time_burst: r.one_time_burst,
            refill_time_ms: u64::try_from(r.refill_time.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// A guest CPU limit: `percent` % of one vCPU's run time over each
/// `period_ms` (`cpu=20%/100ms`: 20 ms of run time per 100 ms, summed over
/// the vCPUs the container runs on). A token bucket of run-time ns that
/// holds one period's budget and may go into debt (docs/limits-per-container.md,
/// "Guest CPU").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuShare {
    /// Percent of one vCPU, 1 to [`MAX_CPU_PERCENT`].
    pub percent: u32,
    /// The period, [`MIN_CPU_PERIOD_MS`] to [`MAX_CPU_PERIOD_MS`] ms.
    pub period_ms: u64,
}

/// Largest CPU share: every vCPU a VM may have (254), whole.
pub const MAX_CPU_PERCENT: u32 = 25_400;
/// Shortest CPU period: a few sampler ticks (4 ms by default).
pub const MIN_CPU_PERIOD_MS: u64 = 10;
/// Longest CPU period.
pub const MAX_CPU_PERIOD_MS: u64 = 10_000;
/// What `cpu=` expects, for error messages.
const CPU_FORM: &str =
    "cpu=PERCENT%/PERIOD, e.g. cpu=20%/100ms (a whole percent of one vCPU from 1 to 25400, \
     a period from 10ms to 10s)";

impl CpuShare {
    /// Run-time budget per period, ns.
    pub fn budget_ns(self) -> u64 {
        self.period_ms * 1_000_000 * u64::from(self.percent) / 100
    }

    /// Checks the bounds (a config may come from JSON, not only the parser).
    pub fn check(self) -> Result<(), String> {
        if !(1..=MAX_CPU_PERCENT).contains(&self.percent) {
            return Err(format!("{}% is out of range: expected {CPU_FORM}", self.percent));
        }
        if !(MIN_CPU_PERIOD_MS..=MAX_CPU_PERIOD_MS).contains(&self.period_ms) {
            return Err(format!(
                "a period of {} ms is out of range: expected {CPU_FORM}",
                self.period_ms
            ));
        }
        Ok(())
    }
}

impl std::str::FromStr for CpuShare {
    type Err = String;

    /// `PERCENT%/PERIOD`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (pct, period) = s
            .split_once("%/")
            .ok_or_else(|| format!("`{s}` is not a CPU share: expected {CPU_FORM}"))?;
        let percent = pct
            .parse::<u32>()
            .map_err(|_| format!("`{pct}` is not a whole percent: expected {CPU_FORM}"))?;
        let period = devices::virtio::limiter::parse_period(period)
            .map_err(|e| format!("{e}: expected {CPU_FORM}"))?;
        let c = Self {
            percent,
            period_ms: u64::try_from(period.as_millis()).unwrap_or(u64::MAX),
        };
        c.check()?;
        Ok(c)
    }
}

impl std::fmt::Display for CpuShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}%/{}ms", self.percent, self.period_ms)
    }
}

/// A limit on one container's block I/O and network TX (`--limit
/// PATH:blk-ops=RATE,net-tx-frames=RATE,...`): it applies to the live
/// container of that path whenever there is one, on each disk and each
/// network device (docs/limits-per-container.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerLimit {
    /// The container's path (names from the top level down, joined with
    /// `/`), or `unattributed`.
    pub path: String,
    /// Block requests of any kind.
    #[serde(default)]
    pub blk_ops: Option<BucketConfig>,
    /// Data bytes of block reads and writes.
    #[serde(default)]
    pub blk_bytes: Option<BucketConfig>,
    /// Block reads (besides `blk_ops`, which they also draw from).
    #[serde(default)]
    pub blk_read_ops: Option<BucketConfig>,
    /// Data bytes of block reads.
    #[serde(default)]
    pub blk_read_bytes: Option<BucketConfig>,
    /// Block writes.
    #[serde(default)]
    pub blk_write_ops: Option<BucketConfig>,
    /// Data bytes of block writes.
    #[serde(default)]
    pub blk_write_bytes: Option<BucketConfig>,
    /// Frames the guest sends (virtio-net TX).
    #[serde(default)]
    pub net_tx_frames: Option<BucketConfig>,
    /// Bytes of those frames (Ethernet frames, without the virtio-net header).
    #[serde(default)]
    pub net_tx_bytes: Option<BucketConfig>,
    /// Frames the guest receives (virtio-net RX), charged to this container.
    #[serde(default)]
    pub net_rx_frames: Option<BucketConfig>,
    /// Bytes of those frames.
    #[serde(default)]
    pub net_rx_bytes: Option<BucketConfig>,
    /// Vsock payload bytes the container's connections move, both ways.
    #[serde(default)]
    pub vsock_bytes: Option<BucketConfig>,
    /// Its priority for held block work, `0..=7`, higher first (`None`:
    /// the lowest, 0; docs/limits-per-container.md, "Priorities and shares").
    #[serde(default)]
    pub priority: Option<u8>,
    /// Its share (weight, `1..=1000`) of contended block work among equal
    /// priorities (`None`: 1).
    #[serde(default)]
    pub share: Option<u32>,
    /// `net-rx-drop=on`: received frames over the `net-rx-*` buckets are
    /// dropped by the VMM before they reach the guest, instead of held.
    #[serde(default)]
    pub net_rx_drop: bool,
    /// Guest run time (a share of one vCPU per period).
    #[serde(default)]
    pub cpu: Option<CpuShare>,
}

/// The rate keys of a limit (`true`: a bytes rate); each also has its
/// `-burst` key.
pub(crate) const LIMIT_KEYS: [(&str, bool); 11] = [
    ("blk-ops", false),
    ("blk-bytes", true),
    ("blk-read-ops", false),
    ("blk-read-bytes", true),
    ("blk-write-ops", false),
    ("blk-write-bytes", true),
    ("net-tx-frames", false),
    ("net-tx-bytes", true),
    ("net-rx-frames", false),
    ("net-rx-bytes", true),
    ("vsock-bytes", true),
];

/// What `--limit` expects, for error messages.
const LIMIT_FORM: &str = "--limit PATH:KEY=VALUE[,...] with keys blk-ops=RATE, blk-bytes=RATE, \
     blk-read-ops=RATE, blk-read-bytes=RATE, blk-write-ops=RATE, blk-write-bytes=RATE, \
     net-tx-frames=RATE, net-tx-bytes=RATE, net-rx-frames=RATE, net-rx-bytes=RATE, vsock-bytes=RATE and their -burst=N \
     (blk-ops-burst, net-tx-bytes-burst, ...), RATE like 100/s, 10/100ms or 1MiB/s, \
     priority=0..7, share=1..1000, net-rx-drop=on|off \
     and cpu=PERCENT%/PERIOD like cpu=20%/100ms";

impl ContainerLimit {
    /// The device's form.
    pub fn block(&self) -> devices::virtio::block::BlockLimitConfig {
        use devices::virtio::limiter::PairConfig;
        devices::virtio::block::BlockLimitConfig {
            path: self.path.clone(),
            ops: self.blk_ops.map(BucketConfig::bucket),
            bytes: self.blk_bytes.map(BucketConfig::bucket),
            read: PairConfig {
                ops: self.blk_read_ops.map(BucketConfig::bucket),
                bytes: self.blk_read_bytes.map(BucketConfig::bucket),
            },
            write: PairConfig {
                ops: self.blk_write_ops.map(BucketConfig::bucket),
                bytes: self.blk_write_bytes.map(BucketConfig::bucket),
            },
            class: self.class(),
            drop: false,
        }
    }

    /// Its scheduling class on the disks, if it sets a priority or a share.
    pub fn class(&self) -> Option<devices::virtio::sched::SchedClass> {
        use devices::virtio::sched::{SchedClass, DEFAULT_PRIORITY, DEFAULT_SHARE};
        (self.priority.is_some() || self.share.is_some()).then(|| SchedClass {
            priority: self.priority.unwrap_or(DEFAULT_PRIORITY),
            share: self.share.unwrap_or(DEFAULT_SHARE),
        })
    }

    /// Whether it limits block I/O or orders it (else the disks ignore it).
    pub fn limits_block(&self) -> bool {
        [
            self.blk_ops,
            self.blk_bytes,
            self.blk_read_ops,
            self.blk_read_bytes,
            self.blk_write_ops,
            self.blk_write_bytes,
        ]
        .iter()
        .any(Option::is_some)
            || self.class().is_some()
    }

    /// The net device's form: a frame is an operation.
    pub fn net_tx(&self) -> devices::virtio::limiter::BlockLimitConfig {
        devices::virtio::limiter::BlockLimitConfig {
            path: self.path.clone(),
            ops: self.net_tx_frames.map(BucketConfig::bucket),
            bytes: self.net_tx_bytes.map(BucketConfig::bucket),
            ..Default::default()
        }
    }

    /// Whether it limits network TX (else the net devices ignore it).
    pub fn limits_net_tx(&self) -> bool {
        self.net_tx_frames.is_some() || self.net_tx_bytes.is_some()
    }

    /// The net device's RX form: a received frame is an operation; its
    /// priority sheds lower ones under overload (docs/limits-per-container.md,
    /// "Priorities on RX").
    pub fn net_rx(&self) -> devices::virtio::limiter::BlockLimitConfig {
        devices::virtio::limiter::BlockLimitConfig {
            path: self.path.clone(),
            ops: self.net_rx_frames.map(BucketConfig::bucket),
            bytes: self.net_rx_bytes.map(BucketConfig::bucket),
            drop: self.net_rx_drop,
            class: self.class(),
            ..Default::default()
        }
    }

    /// Whether it has an RX rate (`net-rx-frames` or `net-rx-bytes`).
    pub fn has_net_rx_rate(&self) -> bool {
        self.net_rx_frames.is_some() || self.net_rx_bytes.is_some()
    }

    /// Whether it limits or orders network RX (a rate, or a priority or
    /// share: the device sheds below the top priority under overload).
    pub fn limits_net_rx(&self) -> bool {
        self.has_net_rx_rate() || self.class().is_some()
    }

    /// The vsock device's form: one bytes bucket, both ways.
    pub fn vsock(&self) -> devices::virtio::limiter::BlockLimitConfig {
        devices::virtio::limiter::BlockLimitConfig {
            path: self.path.clone(),
            ops: None,
            bytes: self.vsock_bytes.map(BucketConfig::bucket),
            ..Default::default()
        }
    }

    /// Whether it limits vsock.
    pub fn limits_vsock(&self) -> bool {
        self.vsock_bytes.is_some()
    }

    /// Every bucket it sets.
    pub fn buckets(&self) -> impl Iterator<Item = BucketConfig> {
        [
            self.blk_ops,
            self.blk_bytes,
            self.blk_read_ops,
            self.blk_read_bytes,
            self.blk_write_ops,
            self.blk_write_bytes,
            self.net_tx_frames,
            self.net_tx_bytes,
            self.net_rx_frames,
            self.net_rx_bytes,
            self.vsock_bytes,
        ]
        .into_iter()
        .flatten()
    }
}

impl std::str::FromStr for ContainerLimit {
    type Err = String;

    /// `PATH:blk-ops=RATE,blk-bytes=RATE,blk-ops-burst=N,blk-bytes-burst=SIZE`,
    /// and the same four for net TX (`net-tx-frames`, `net-tx-bytes`).
    fn from_str(s: &str) -> Result<Self, String> {
        let Some((path, opts)) = s.rsplit_once(':') else {
            return Err(format!("`{s}` names no container: expected {LIMIT_FORM}"));
        };
        let mut pairs = Vec::new();
        for opt in opts.split(',') {
            let (k, v) = opt
                .split_once('=')
                .ok_or_else(|| format!("`{opt}` is not KEY=VALUE: expected {LIMIT_FORM}"))?;
            pairs.push((k, v));
        }
        Self::from_keys(path, &pairs, "--limit")
    }
}

impl ContainerLimit {
    /// A limit on `path` (a container path, `unattributed`, or a pattern
    /// ending in `*`) from its `(key, value)` pairs, as `--limit` and a
    /// `--limits` file give them; `source` (`--limit`, `--limits FILE`)
    /// starts every error.
    pub fn from_keys(path: &str, pairs: &[(&str, &str)], source: &str) -> Result<Self, String> {
        use devices::virtio::limiter::{parse_rate, parse_size};
        if path.is_empty() {
            return Err(format!(
                "{source}: a limit names no container: expected {LIMIT_FORM}"
            ));
        }
        if path.trim_end_matches('*').contains('*') || path.ends_with("**") {
            return Err(format!(
                "{source} {path}: `*` may only end a path (`web/*`: every container whose path starts with `web/`)"
            ));
        }
        // Per key family (blk-ops, blk-bytes, net-tx-frames, net-tx-bytes):
        // its rate and its burst.
        let mut rates: [Option<devices::virtio::limiter::BucketConfig>; 11] = [None; 11];
        let mut bursts: [Option<u64>; 11] = [None; 11];
        let (mut priority, mut share) = (None, None);
        let mut seen: Vec<&str> = Vec::with_capacity(pairs.len());
        let mut net_rx_drop = false;
        let mut cpu = None;
        for &(k, v) in pairs {
            let bad = |e: String| format!("{source} {path}: {k}: {e}");
            if seen.contains(&k) {
                return Err(bad("given twice: give each key once".into()));
            }
            seen.push(k);
            let family = |key: &str| LIMIT_KEYS.iter().position(|(name, _)| *name == key);
            if let Some(i) = family(k) {
                rates[i] = Some(parse_rate(v, LIMIT_KEYS[i].1).map_err(bad)?);
            } else if let Some(i) = k.strip_suffix("-burst").and_then(family) {
                bursts[i] = Some(if LIMIT_KEYS[i].1 {
                    parse_size(v).map_err(bad)?
                } else {
                    v.parse::<u64>()
                        .map_err(|_| bad(format!("`{v}` is not a whole number")))?
                });
            } else if k == "net-rx-drop" {
                net_rx_drop = match v {
                    "on" => true,
                    "off" => false,
                    _ => return Err(bad(format!("`{v}` is neither `on` nor `off`"))),
                };
            } else if k == "cpu" {
                cpu = Some(v.parse::<CpuShare>().map_err(bad)?);
            } else if k == "priority" {
                priority = Some(parse_class_key(v, 0, MAX_PRIORITY).map_err(bad)?);
            } else if k == "share" {
                share = Some(parse_class_key(v, 1, MAX_SHARE).map_err(bad)?);
            } else {
                return Err(format!(
                    "{source} {path}: unknown key `{k}`: expected {LIMIT_FORM}"
                ));
            }
        }
        let mut buckets = [None; 11];
        for (i, (key, _)) in LIMIT_KEYS.iter().enumerate() {
            buckets[i] = match (rates[i], bursts[i]) {
                (Some(r), b) => Some(BucketConfig {
                    one_time_burst: b.unwrap_or(0),
                    ..BucketConfig::from_rate(r)
                }),
                (None, Some(_)) => return Err(format!("{source} {path}: {key}-burst needs {key}=RATE too")),
                (None, None) => None,
            };
        }
        if net_rx_drop && rates[8].is_none() && rates[9].is_none() {
            return Err(format!(
                "{source} {path}: net-rx-drop=on needs net-rx-frames=RATE or net-rx-bytes=RATE: it drops the received frames over that limit"
            ));
        }
        if rates.iter().all(Option::is_none) && priority.is_none() && share.is_none() && cpu.is_none() {
            return Err(format!(
                "{source} {path} sets no rate, cpu, priority or share: expected {LIMIT_FORM}"
            ));
        }
        if path == devices::virtio::limiter::TENANT_PATH && (priority.is_some() || share.is_some()) {
            return Err(format!("{source} {path}: {TENANT_NO_CLASS}"));
        }
        let [blk_ops, blk_bytes, blk_read_ops, blk_read_bytes, blk_write_ops, blk_write_bytes, net_tx_frames, net_tx_bytes, net_rx_frames, net_rx_bytes, vsock_bytes] =
            buckets;
        Ok(Self {
            path: path.to_owned(),
            blk_ops,
            blk_bytes,
            blk_read_ops,
            blk_read_bytes,
            blk_write_ops,
            blk_write_bytes,
            net_tx_frames,
            net_tx_bytes,
            net_rx_frames,
            net_rx_bytes,
            vsock_bytes,
            priority,
            share,
            net_rx_drop,
            cpu,
        })
    }

    /// The CPU limiter's form: the run-time bucket as `ops` (ns).
    pub fn cpu_bucket(&self) -> devices::virtio::limiter::BlockLimitConfig {
        devices::virtio::limiter::BlockLimitConfig {
            path: self.path.clone(),
            ops: self.cpu.map(|c| devices::virtio::limiter::BucketConfig {
                size: c.budget_ns(),
                one_time_burst: 0,
                refill_time: std::time::Duration::from_millis(c.period_ms),
            }),
            bytes: None,
            ..Default::default()
        }
    }

    /// Whether it limits guest CPU.
    pub fn limits_cpu(&self) -> bool {
        self.cpu.is_some()
    }
}

/// Why the tenant limit takes no priority or share.
pub(crate) const TENANT_NO_CLASS: &str =
    "the tenant limit has no priority or share (it is what the containers \
     contend for): set them on the containers, or on `*` for every container without its own";

/// A `priority` or `share` value: a whole number from `min` to `max`.
fn parse_class_key<T>(v: &str, min: T, max: T) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    v.parse::<T>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| format!("`{v}` is not a whole number from {min} to {max}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Builtin, ConfigError, KernelSource, VmConfig, MAX_CONTAINER_LIMITS};

    /// `bad` is refused by the `--limit` parser with an error that names
    /// the flag and says `says`; the error.
    fn refused(bad: &str, says: &str) -> String {
        let e = bad.parse::<ContainerLimit>().unwrap_err();
        assert!(e.contains("--limit") && e.contains(says), "{bad}: {e}");
        e
    }

    #[test]
    fn limit_flags_parse_rates_and_bursts() {
        let l: ContainerLimit = "web/api:blk-ops=100/s,blk-bytes=1MiB/s,blk-ops-burst=50"
            .parse()
            .unwrap();
        assert_eq!(l.path, "web/api");
        assert_eq!(
            l.blk_ops,
            Some(BucketConfig {
                size: 100,
                one_time_burst: 50,
                refill_time_ms: 1000
            })
        );
        assert_eq!(
            l.blk_bytes.map(|b| (b.size, b.one_time_burst)),
            Some((1 << 20, 0))
        );
        let l: ContainerLimit = "a:blk-ops=10/100ms".parse().unwrap();
        assert_eq!(l.blk_ops.map(|b| b.refill_time_ms), Some(100));
    }

    #[test]
    fn read_and_write_keys_go_to_the_disks_beside_the_together_keys() {
        let l: ContainerLimit =
            "db:blk-ops=100/s,blk-read-ops=10/s,blk-read-bytes=1MiB/s,blk-write-ops=5/s,blk-write-bytes=64KiB/s,blk-write-ops-burst=3"
                .parse()
                .unwrap();
        assert!(l.limits_block() && !l.limits_net_tx() && !l.limits_vsock());
        let b = l.block();
        assert_eq!(b.ops.map(|c| c.size), Some(100));
        assert_eq!(b.bytes, None);
        assert_eq!(b.read.ops.map(|c| c.size), Some(10));
        assert_eq!(b.read.bytes.map(|c| c.size), Some(1 << 20));
        assert_eq!(b.write.ops.map(|c| (c.size, c.one_time_burst)), Some((5, 3)));
        assert_eq!(b.write.bytes.map(|c| c.size), Some(64 << 10));
        // A read key alone limits the disks.
        let only: ContainerLimit = "db:blk-write-bytes=1MiB/s".parse().unwrap();
        assert!(only.limits_block());
        assert_eq!((only.block().ops, only.block().read.ops), (None, None));
        for bad in [
            "db:blk-read-ops=1KiB/s",
            "db:blk-write-bytes=0/s",
            "db:blk-read-ops-burst=3",
            "db:blk-reads=1/s",
        ] {
            refused(bad, "");
        }
    }

    #[test]
    fn vsock_bytes_parse_and_only_the_vsock_device_takes_them() {
        let l: ContainerLimit = "svc:vsock-bytes=1MiB/s,vsock-bytes-burst=64KiB,blk-ops=5/s"
            .parse()
            .unwrap();
        assert!(l.limits_vsock() && l.limits_block() && !l.limits_net_tx() && !l.limits_net_rx());
        let v = l.vsock();
        assert_eq!(v.path, "svc");
        assert_eq!(v.ops, None);
        assert_eq!(
            v.bytes.map(|b| (b.size, b.one_time_burst)),
            Some((1 << 20, 64 << 10))
        );
        assert_eq!(l.block().bytes, None);
        let only: ContainerLimit = "svc:blk-ops=5/s".parse().unwrap();
        assert!(!only.limits_vsock());
        for bad in [
            "svc:vsock-bytes=0/s",
            "svc:vsock-bytes-burst=4KiB",
            "svc:vsock-bytes=1XB/s",
            "svc:vsock-packets=10/s",
        ] {
            refused(bad, "");
        }
    }

    #[test]
    fn net_tx_limit_keys_parse_alone_and_beside_blk_keys() {
        let l: ContainerLimit = "batch:net-tx-frames=100/s,net-tx-bytes=64KiB/100ms,net-tx-frames-burst=20"
            .parse()
            .unwrap();
        assert_eq!((l.blk_ops, l.blk_bytes), (None, None));
        assert_eq!(
            l.net_tx_frames,
            Some(BucketConfig {
                size: 100,
                one_time_burst: 20,
                refill_time_ms: 1000
            })
        );
        assert_eq!(
            l.net_tx_bytes
                .map(|b| (b.size, b.one_time_burst, b.refill_time_ms)),
            Some((64 << 10, 0, 100))
        );
        assert!(l.limits_net_tx() && !l.limits_block());
        let net = l.net_tx();
        assert_eq!(net.path, "batch");
        assert_eq!(net.ops.map(|b| (b.size, b.one_time_burst)), Some((100, 20)));
        assert_eq!(net.bytes.map(|b| b.size), Some(64 << 10));

        // One flag may carry both families; each device takes its own.
        let l: ContainerLimit = "web:blk-ops=10/s,net-tx-bytes=1MiB/s,net-tx-bytes-burst=4KiB"
            .parse()
            .unwrap();
        assert!(l.limits_block() && l.limits_net_tx());
        assert_eq!(l.blk_ops.map(|b| b.size), Some(10));
        assert_eq!(l.net_tx_frames, None);
        assert_eq!(
            l.net_tx_bytes.map(|b| (b.size, b.one_time_burst)),
            Some((1 << 20, 4 << 10))
        );
        assert_eq!(l.block().ops.map(|b| b.size), Some(10));
        assert_eq!(l.block().bytes, None);
        assert_eq!(l.net_tx().ops, None);
        let mut c = VmConfig::new(KernelSource::Builtin(Builtin::TestGuest));
        c.container_limits = vec![l];
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn bad_net_tx_limit_keys_are_refused_naming_the_flag() {
        for (bad, says) in [
            ("web:net-tx-frames=0/s", "size"),
            ("web:net-tx-frames=5", "rate"),
            ("web:net-tx-frames=1MiB/s", "whole number"),
            ("web:net-tx-bytes=1XB/s", "unit"),
            ("web:net-tx-frames=1/0ms", "1 ms"),
            ("web:net-tx-frames=1/2000000s", "one day"),
            ("web:net-tx-frames-burst=5", "needs net-tx-frames=RATE"),
            (
                "web:blk-ops=1/s,net-tx-bytes-burst=1KiB",
                "needs net-tx-bytes=RATE",
            ),
            ("web:net-rx-packets=5/s", "unknown key"),
            ("web:net-tx-burst=5", "unknown key"),
            ("web:net-tx-frames-burst=x,net-tx-frames=1/s", "whole number"),
        ] {
            refused(bad, says);
        }
        // A configuration from elsewhere than the parser is checked too.
        let mut c = VmConfig::new(KernelSource::Builtin(Builtin::TestGuest));
        let l: ContainerLimit = "a:net-tx-frames=1/s".parse().unwrap();
        c.container_limits = vec![ContainerLimit {
            net_tx_frames: Some(BucketConfig {
                size: 0,
                one_time_burst: 0,
                refill_time_ms: 1000,
            }),
            ..l.clone()
        }];
        assert!(c.validate().unwrap_err().to_string().contains("size"));
        c.container_limits = vec![ContainerLimit {
            net_tx_frames: None,
            ..l
        }];
        assert!(c.validate().unwrap_err().to_string().contains("net-tx-frames"));
    }

    #[test]
    fn priority_and_share_alone_or_beside_buckets() {
        use devices::virtio::sched::SchedClass;
        let l: ContainerLimit = "web:priority=7".parse().unwrap();
        // A disk orders its held work by it, RX sheds by it under
        // overload; TX takes no class.
        assert!(l.limits_block() && !l.limits_net_tx() && l.limits_net_rx());
        assert_eq!(l.net_rx().class, l.class());
        assert_eq!((l.block().ops, l.block().bytes), (None, None));
        assert_eq!(
            l.class(),
            Some(SchedClass {
                priority: 7,
                share: 1
            })
        );
        let l: ContainerLimit = "batch/*:share=3,blk-ops=10/s".parse().unwrap();
        assert_eq!(
            l.block().class,
            Some(SchedClass {
                priority: 0,
                share: 3
            })
        );
        assert_eq!(l.net_tx().class, None, "net devices take no class");
        let plain: ContainerLimit = "a:blk-ops=1/s".parse().unwrap();
        assert_eq!(plain.class(), None, "no class unless one is set");
        let mut c = VmConfig::new(KernelSource::Builtin(Builtin::TestGuest));
        c.container_limits = vec!["a:priority=0".parse().unwrap(), "*:share=1000".parse().unwrap()];
        c.validate().unwrap();
        for (bad, says) in [
            ("a:priority=8", "from 0 to 7"),
            ("a:priority=-1", "from 0 to 7"),
            ("a:priority=high", "from 0 to 7"),
            ("a:share=0", "from 1 to 1000"),
            ("a:share=1001", "from 1 to 1000"),
            ("a:share=1,share=2", "given twice"),
            ("tenant:priority=3,blk-ops=1/s", "tenant limit has no priority"),
            ("tenant:share=2", "tenant limit has no priority"),
        ] {
            refused(bad, says);
        }
        // A configuration from elsewhere than the parser is checked too.
        let l: ContainerLimit = "a:priority=1".parse().unwrap();
        for (bad, says) in [
            (
                ContainerLimit {
                    priority: Some(8),
                    ..l.clone()
                },
                "priority",
            ),
            (
                ContainerLimit {
                    share: Some(0),
                    ..l.clone()
                },
                "share",
            ),
            (
                ContainerLimit {
                    priority: None,
                    ..l.clone()
                },
                "sets no rate",
            ),
            (
                ContainerLimit {
                    path: "tenant".into(),
                    ..l.clone()
                },
                "tenant",
            ),
        ] {
            c.container_limits = vec![bad];
            assert!(c.validate().unwrap_err().to_string().contains(says), "{says}");
        }
    }

    #[test]
    fn net_rx_drop_is_on_or_off_and_needs_an_rx_rate() {
        let l: ContainerLimit = "flood:net-rx-frames=100/s,net-rx-drop=on".parse().unwrap();
        assert!(l.net_rx_drop && l.net_rx().drop);
        assert!(!l.net_tx().drop && !l.block().drop);
        let l: ContainerLimit = "flood:net-rx-bytes=1MiB/s,net-rx-drop=off".parse().unwrap();
        assert!(!l.net_rx_drop && !l.net_rx().drop);
        let held: ContainerLimit = "flood:net-rx-frames=100/s".parse().unwrap();
        assert!(!held.net_rx().drop, "held by default");
        for (bad, says) in [
            (
                "flood:net-rx-drop=on",
                "needs net-rx-frames=RATE or net-rx-bytes=RATE",
            ),
            ("flood:net-tx-frames=1/s,net-rx-drop=on", "needs net-rx-frames"),
            (
                "flood:net-rx-frames=1/s,net-rx-drop=yes",
                "neither `on` nor `off`",
            ),
            (
                "flood:net-rx-frames=1/s,net-rx-drop=on,net-rx-drop=on",
                "given twice",
            ),
        ] {
            refused(bad, says);
        }
        // A configuration from elsewhere than the parser is checked too.
        let mut c = VmConfig::new(KernelSource::Builtin(Builtin::TestGuest));
        c.container_limits = vec![ContainerLimit {
            net_rx_drop: true,
            ..held.clone()
        }];
        assert_eq!(c.validate(), Ok(()));
        c.container_limits = vec![ContainerLimit {
            net_rx_drop: true,
            net_rx_frames: None,
            net_tx_frames: held.net_rx_frames,
            ..held
        }];
        assert!(c.validate().unwrap_err().to_string().contains("net-rx-drop"));
    }

    #[test]
    fn bad_limit_flags_say_what_is_expected() {
        for bad in [
            "web",
            ":blk-ops=1/s",
            "web:",
            "web:blk-ops=0/s",
            "web:blk-ops=5",
            "web:blk-iops=5/s",
            "web:blk-ops-burst=5",
            "web:blk-bytes=1XB/s",
        ] {
            refused(bad, "");
        }
    }

    #[test]
    fn cpu_limits_parse_and_bad_forms_name_the_expected_form() {
        let l: ContainerLimit = "batch:cpu=20%/100ms".parse().unwrap();
        assert_eq!(
            l.cpu,
            Some(CpuShare {
                percent: 20,
                period_ms: 100
            })
        );
        assert_eq!(l.cpu.unwrap().budget_ns(), 20_000_000);
        assert!(l.limits_cpu() && !l.limits_block() && !l.limits_net_tx());
        let b = l.cpu_bucket().ops.unwrap();
        assert_eq!(
            (b.size, b.refill_time),
            (20_000_000, std::time::Duration::from_millis(100))
        );
        let l: ContainerLimit = "tenant:cpu=150%/1s,blk-ops=10/s".parse().unwrap();
        assert_eq!(l.cpu.unwrap().budget_ns(), 1_500_000_000);
        assert!(l.limits_block());
        for bad in [
            "a:cpu=20%",
            "a:cpu=20/100ms",
            "a:cpu=0%/100ms",
            "a:cpu=25401%/100ms",
            "a:cpu=20%/5ms",
            "a:cpu=20%/11s",
            "a:cpu=2.5%/100ms",
            "a:cpu=20%/100us",
            "a:cpu=20%/100ms,cpu=10%/100ms",
        ] {
            let e = refused(bad, "--limit a: cpu");
            assert!(
                e.contains("cpu=PERCENT%/PERIOD") || e.contains("given twice"),
                "{bad}: {e}"
            );
        }
        // A configuration from JSON is checked too.
        let mut c = VmConfig::new(KernelSource::Builtin(Builtin::TestGuest));
        c.container_limits = vec![ContainerLimit {
            cpu: Some(CpuShare {
                percent: 0,
                period_ms: 100,
            }),
            ..l
        }];
        assert!(c.validate().unwrap_err().to_string().contains("out of range"));
    }

    #[test]
    fn duplicate_or_empty_container_limits_are_refused() {
        let mut c = VmConfig::new(KernelSource::Builtin(Builtin::TestGuest));
        let l: ContainerLimit = "a:blk-ops=1/s".parse().unwrap();
        c.container_limits = vec![l.clone(), l.clone()];
        assert!(matches!(c.validate(), Err(ConfigError::ContainerLimit { .. })));
        c.container_limits = vec![ContainerLimit {
            blk_ops: None,
            ..l.clone()
        }];
        assert!(c.validate().is_err());
        c.container_limits = vec![ContainerLimit {
            blk_ops: Some(BucketConfig {
                size: 1,
                one_time_burst: 0,
                refill_time_ms: 0,
            }),
            ..l.clone()
        }];
        assert!(c.validate().unwrap_err().to_string().contains("refill time"));
        c.container_limits = vec![l; MAX_CONTAINER_LIMITS + 1];
        assert_eq!(
            c.validate(),
            Err(ConfigError::ContainerLimits(MAX_CONTAINER_LIMITS + 1))
        );
    }
}
