//! VM configuration: one serde struct, filled by the CLI today and usable as
//! an API body later (`deny_unknown_fields`, as Firecracker's configs are).

use std::path::PathBuf;

use accounting::registry::Limits;
use serde::{Deserialize, Serialize};

pub use crate::sandbox::Seccomp;

/// Where the guest's kernel comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum KernelSource {
    /// A file: bzImage, ELF vmlinux, or a bare-metal guest program.
    Path(PathBuf),
    /// One of the guest programs built into the binary.
    Builtin(Builtin),
}

/// Guest programs built into the binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Builtin {
    /// The project's bare-metal test guest (scenarios on its command line).
    TestGuest,
    /// A plain 64-bit ELF that prints `ok` and exits, booted through the
    /// Linux-protocol ELF path.
    ExitCpl0,
}

impl Builtin {
    /// The name used on the command line after `builtin:`.
    pub fn name(self) -> &'static str {
        match self {
            Self::TestGuest => "test-guest",
            Self::ExitCpl0 => "exit-cpl0",
        }
    }

    /// The image bytes.
    pub fn image(self) -> &'static [u8] {
        match self {
            Self::TestGuest => images::test_guest(),
            Self::ExitCpl0 => images::exit_cpl0(),
        }
    }
}

impl std::str::FromStr for KernelSource {
    type Err = String;

    /// `builtin:NAME` or a path.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.strip_prefix("builtin:") {
            Some("test-guest") => Ok(Self::Builtin(Builtin::TestGuest)),
            Some("exit-cpl0") => Ok(Self::Builtin(Builtin::ExitCpl0)),
            Some(other) => Err(format!(
                "unknown built-in guest `{other}`: use builtin:test-guest or builtin:exit-cpl0, or a file path"
            )),
            None => Ok(Self::Path(PathBuf::from(s))),
        }
    }
}

impl std::fmt::Display for KernelSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Path(p) => write!(f, "{}", p.display()),
            Self::Builtin(b) => write!(f, "builtin:{}", b.name()),
        }
    }
}

/// A virtio-blk disk backed by a raw file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// The backing file.
    pub path: PathBuf,
    /// Refuse guest writes.
    #[serde(default)]
    pub read_only: bool,
}

impl std::str::FromStr for DiskConfig {
    type Err = String;

    /// `PATH` or `PATH,readonly`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (path, opts) = match s.split_once(',') {
            Some((p, o)) => (p, Some(o)),
            None => (s, None),
        };
        if path.is_empty() {
            return Err("--disk needs a file path: --disk PATH or --disk PATH,readonly".into());
        }
        let read_only = match opts {
            None => false,
            Some("readonly" | "ro") => true,
            Some(o) => {
                return Err(format!(
                    "unknown --disk option `{o}`: the only option is `readonly` (--disk PATH,readonly)"
                ))
            }
        };
        Ok(Self {
            path: PathBuf::from(path),
            read_only,
        })
    }
}

mod limit;

use devices::virtio::sched::{MAX_PRIORITY, MAX_SHARE};
pub use limit::{
    BucketConfig, ContainerLimit, CpuShare, MAX_CPU_PERCENT, MAX_CPU_PERIOD_MS, MIN_CPU_PERIOD_MS,
};
pub(crate) use limit::{LIMIT_KEYS, TENANT_NO_CLASS};

/// A virtio-net interface backed by a TAP device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// The TAP interface: opened if it exists, created (and gone with the
    /// VMM) if not.
    pub tap: String,
    /// The guest's MAC address; frames with another source are dropped.
    #[serde(default = "default_mac")]
    pub mac: [u8; 6],
}

/// MAC given to a guest interface when none is set: locally administered.
pub const DEFAULT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

fn default_mac() -> [u8; 6] {
    DEFAULT_MAC
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in mac.iter_mut() {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

impl std::str::FromStr for NetConfig {
    type Err = String;

    /// `tap=NAME[,mac=XX:XX:XX:XX:XX:XX]`.
    fn from_str(s: &str) -> Result<Self, String> {
        let usage = "use --net tap=NAME[,mac=02:00:00:00:00:02]";
        let (mut tap, mut mac) = (None, DEFAULT_MAC);
        for part in s.split(',') {
            match part.split_once('=') {
                Some(("tap", name)) => tap = Some(name.to_string()),
                Some(("mac", m)) => mac = parse_mac(m).ok_or_else(|| format!("bad MAC `{m}`: {usage}"))?,
                _ => return Err(format!("unknown --net option `{part}`: {usage}")),
            }
        }
        let tap = tap.ok_or_else(|| format!("--net needs a TAP name: {usage}"))?;
        devices::virtio::net::validate_name(&tap).map_err(|e| format!("{e}: {usage}"))?;
        if mac[0] & 1 != 0 {
            return Err(format!("MAC {m} is a multicast address: {usage}", m = s));
        }
        Ok(Self { tap, mac })
    }
}

/// A virtio-vsock device: the guest's CID and, optionally, the host Unix
/// socket of the hybrid-vsock scheme (guest connects to port P go to
/// `PATH_P`; host programs connect to `PATH` and write `CONNECT <port>`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest's context ID (3 or more).
    pub cid: u64,
    /// The host socket path.
    #[serde(default)]
    pub uds: Option<PathBuf>,
}

impl std::str::FromStr for VsockConfig {
    type Err = String;

    /// `cid=N[,uds=PATH]`.
    fn from_str(s: &str) -> Result<Self, String> {
        let usage = "use --vsock cid=N[,uds=PATH] with N of 3 or more";
        let (mut cid, mut uds) = (None, None);
        for part in s.split(',') {
            match part.split_once('=') {
                Some(("cid", n)) => {
                    let n: u64 = n.parse().map_err(|_| format!("bad CID `{n}`: {usage}"))?;
                    if !(devices::virtio::vsock::MIN_GUEST_CID..=u64::from(u32::MAX)).contains(&n) {
                        return Err(format!("CID {n} is reserved or too large: {usage}"));
                    }
                    cid = Some(n);
                }
                Some(("uds", p)) if !p.is_empty() => uds = Some(PathBuf::from(p)),
                _ => return Err(format!("unknown --vsock option `{part}`: {usage}")),
            }
        }
        let cid = cid.ok_or_else(|| format!("--vsock needs a CID: {usage}"))?;
        Ok(Self { cid, uds })
    }
}

/// Where the serial console goes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ConsoleTarget {
    /// The VMM's standard output.
    #[default]
    Stdout,
    /// The VMM's standard error (used when stdout carries JSON).
    Stderr,
    /// A file, created or truncated.
    File(PathBuf),
    /// Discarded.
    Null,
}

/// Everything needed to run one VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// The kernel.
    pub kernel: KernelSource,
    /// An initrd (Linux only).
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// The kernel command line; `None` picks the default for the kind of
    /// kernel (see [`DEFAULT_LINUX_CMDLINE`]).
    #[serde(default)]
    pub cmdline: Option<String>,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// Guest RAM in MiB.
    pub mem_mib: u64,
    /// The tenant this VM's work is charged to.
    pub tenant: String,
    /// Where the console goes.
    #[serde(default)]
    pub console: ConsoleTarget,
    /// virtio-blk disks, in the order their devices are placed.
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// virtio-net interfaces, placed after the disks.
    #[serde(default)]
    pub nets: Vec<NetConfig>,
    /// A virtio-vsock device, placed after the network interfaces.
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    /// Bounds on guest-declared state.
    #[serde(default)]
    pub limits: Limits,
    /// Per-container limits on block I/O (`--limit`).
    #[serde(default)]
    pub container_limits: Vec<ContainerLimit>,
    /// Whether exits are charged (off only to measure the overhead).
    #[serde(default = "yes")]
    pub accounting: bool,
    /// Run-time sampling interval in microseconds.
    #[serde(default = "default_sample_us")]
    pub sample_interval_us: u64,
    /// Serve the host API (read-only JSON and Prometheus metrics, see
    /// `docs/api.yaml`) on this Unix socket while the VM runs.
    #[serde(default)]
    pub api_sock: Option<PathBuf>,
    /// Also serve the Prometheus exposition (`GET /metrics`, the same text
    /// as the API socket's) over TCP on this address (`--metrics-addr`;
    /// port 0 picks a free port, shown as `metrics_addr` in `GET /v1/vm`
    /// and the report). Unauthenticated: loopback unless the network is
    /// trusted.
    #[serde(default)]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Also serve guest agents on this host Unix socket (mode 0600), besides
    /// vsock port 1024: for agents run on the host, and for tests.
    #[serde(default)]
    pub agent_sock: Option<PathBuf>,
    /// Export finished requests as spans and per-container counters as
    /// metrics to an OpenTelemetry collector over OTLP/HTTP
    /// (`--otlp-endpoint`, `--otlp-interval`; docs/opentelemetry.md).
    #[serde(default)]
    pub otlp: Option<crate::otlp::OtlpConfig>,
    /// Stop the VM after this many milliseconds (a clean end,
    /// `time_limit`), if it has not ended before.
    #[serde(default)]
    pub time_limit_ms: Option<u64>,
    /// The seccomp filters of the VMM's threads (docs/sandbox.md): on
    /// (`trap`) unless `--no-seccomp` asks for none (debugging only).
    #[serde(default)]
    pub seccomp: Seccomp,
    /// Whether the thread that calls [`crate::run`] also installs the main
    /// filter, just before the vCPUs start. Only for a process that does
    /// nothing else afterwards but print the report (the CLI); never for a
    /// library caller such as a test harness, whose own thread it would be.
    #[serde(default)]
    pub seccomp_main_thread: bool,
}

fn yes() -> bool {
    true
}

fn default_sample_us() -> u64 {
    DEFAULT_SAMPLE_US
}

/// Default run-time sampling interval.
pub const DEFAULT_SAMPLE_US: u64 = 4_000;
/// Command line given to Linux kernels when none is passed. `quiet` keeps
/// warnings and errors on the console but not the kernel's whole boot log:
/// every console byte is two exits of the emulated UART (about 42,000 for a
/// Debian boot, 8 s of a nested boot).
pub const DEFAULT_LINUX_CMDLINE: &str = "console=ttyS0 quiet reboot=k panic=1 pci=off i8042.noaux";
/// Largest guest RAM accepted, in MiB.
pub const MAX_MEM_MIB: u64 = 1 << 20;
/// Most virtio-blk disks per VM (their IRQs are 5..5+MAX_DISKS).
pub const MAX_DISKS: usize = 8;
/// Most virtio devices per VM (disks, network interfaces and vsock together).
pub const MAX_VIRTIO: usize = 8;
/// Most `--limit` flags per VM (each is looked up once per block request
/// of a limited device).
pub const MAX_CONTAINER_LIMITS: usize = 64;
/// Smallest guest RAM accepted, in MiB.
pub const MIN_MEM_MIB: u64 = 16;
/// Most containers a VM may be allowed (`--max-containers`): each costs a
/// ledger of one 448-byte block per writer.
pub const MAX_CONTAINERS_LIMIT: u32 = 1_000_000;
/// Most live requests a VM may be allowed (`--max-live-requests`).
pub const MAX_LIVE_REQUESTS_LIMIT: u32 = 1_000_000;
/// Most finished requests that may be retained (`--retained-requests`):
/// about 150 bytes each (docs/benchmarks.md).
pub const MAX_RETAINED_REQUESTS_LIMIT: u32 = 10_000_000;

/// A configuration mistake, phrased for the user.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// Bad vCPU count.
    #[error("--vcpus {0} is out of range: pass a number from 1 to 254")]
    Vcpus(u8),
    /// Bad memory size.
    #[error("--mem-mib {0} is out of range: pass a size from {MIN_MEM_MIB} to {MAX_MEM_MIB} MiB")]
    Memory(u64),
    /// Bad tenant name.
    #[error("--tenant `{0}` is not a valid name: use 1 to 64 characters from A-Z a-z 0-9 . _ -")]
    Tenant(String),
    /// Too many disks.
    #[error("{0} disks is too many: pass at most {MAX_DISKS} --disk flags")]
    Disks(usize),
    /// Too many virtio devices.
    #[error("{0} virtio devices is too many: at most {MAX_VIRTIO} --disk, --net and --vsock flags together")]
    Virtio(usize),
    /// Too many `--limit` flags.
    #[error("{0} --limit flags is too many: pass at most {MAX_CONTAINER_LIMITS}")]
    ContainerLimits(usize),
    /// Two `--limit` flags for one path, or a bucket the device refuses.
    #[error("--limit {path}: {reason}")]
    ContainerLimit {
        /// The container path.
        path: String,
        /// What is wrong, and what to do.
        reason: String,
    },
    /// Bad sampling interval.
    #[error("sample interval {0} µs is out of range: use 100 to 1000000")]
    SampleInterval(u64),
    /// A limit on guest-declared state out of range.
    #[error("{flag} {value} is out of range: pass {flag} N with N from 0 to {max}")]
    Limit {
        /// The flag (`--max-containers`, `--max-live-requests`, `--retained-requests`).
        flag: &'static str,
        /// The value given.
        value: u32,
        /// The largest accepted.
        max: u32,
    },
}

impl VmConfig {
    /// A configuration with defaults for everything but the kernel.
    pub fn new(kernel: KernelSource) -> Self {
        Self {
            kernel,
            initrd: None,
            cmdline: None,
            vcpus: 1,
            mem_mib: 128,
            tenant: "default".into(),
            console: ConsoleTarget::Stdout,
            disks: Vec::new(),
            nets: Vec::new(),
            vsock: None,
            limits: Limits::default(),
            container_limits: Vec::new(),
            accounting: true,
            sample_interval_us: DEFAULT_SAMPLE_US,
            api_sock: None,
            metrics_addr: None,
            agent_sock: None,
            otlp: None,
            time_limit_ms: None,
            seccomp: Seccomp::default(),
            seccomp_main_thread: false,
        }
    }

    /// Checks the `--limit` flags: a bounded number, one per path, each
    /// bucket one the device accepts (a config may come from a file, not
    /// only the flag parser).
    fn validate_container_limits(&self) -> Result<(), ConfigError> {
        let l = &self.container_limits;
        if l.len() > MAX_CONTAINER_LIMITS {
            return Err(ConfigError::ContainerLimits(l.len()));
        }
        for (i, c) in l.iter().enumerate() {
            let err = |reason: String| ConfigError::ContainerLimit {
                path: c.path.clone(),
                reason,
            };
            if l[..i].iter().any(|p| p.path == c.path) {
                return Err(err("given twice: pass one --limit per container path".into()));
            }
            if c.buckets().next().is_none() && c.class().is_none() && c.cpu.is_none() {
                return Err(err(
                    "sets no rate, priority or share: pass a rate key (blk-ops, blk-bytes, blk-read-ops, blk-write-bytes, net-tx-frames, net-rx-bytes, vsock-bytes, ...=RATE), cpu=PERCENT%/PERIOD, or priority=0..7 or share=1..1000"
                        .into(),
                ));
            }
            if c.priority.is_some_and(|p| p > MAX_PRIORITY) {
                return Err(err(format!("priority must be from 0 to {MAX_PRIORITY}")));
            }
            if c.share.is_some_and(|s| !(1..=MAX_SHARE).contains(&s)) {
                return Err(err(format!("share must be from 1 to {MAX_SHARE}")));
            }
            if c.path == devices::virtio::limiter::TENANT_PATH && c.class().is_some() {
                return Err(err(TENANT_NO_CLASS.into()));
            }
            if c.net_rx_drop && !c.has_net_rx_rate() {
                return Err(err(
                    "net-rx-drop=on needs net-rx-frames=RATE or net-rx-bytes=RATE: it drops the received frames over that limit".into(),
                ));
            }
            if let Some(cpu) = c.cpu {
                cpu.check().map_err(err)?;
            }
            for b in c.buckets() {
                devices::virtio::block::TokenBucket::new(b.bucket(), 0).map_err(|e| err(e.to_string()))?;
            }
        }
        Ok(())
    }

    /// Checks every field a user sets.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=254).contains(&self.vcpus) {
            return Err(ConfigError::Vcpus(self.vcpus));
        }
        if !(MIN_MEM_MIB..=MAX_MEM_MIB).contains(&self.mem_mib) {
            return Err(ConfigError::Memory(self.mem_mib));
        }
        let t = &self.tenant;
        let ok = !t.is_empty()
            && t.len() <= 64
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !ok {
            return Err(ConfigError::Tenant(t.clone()));
        }
        if self.disks.len() > MAX_DISKS {
            return Err(ConfigError::Disks(self.disks.len()));
        }
        let virtio = self.disks.len() + self.nets.len() + usize::from(self.vsock.is_some());
        if virtio > MAX_VIRTIO {
            return Err(ConfigError::Virtio(virtio));
        }
        self.validate_container_limits()?;
        if !(100..=1_000_000).contains(&self.sample_interval_us) {
            return Err(ConfigError::SampleInterval(self.sample_interval_us));
        }
        let l = self.limits;
        for (flag, value, max) in [
            ("--max-containers", l.max_containers, MAX_CONTAINERS_LIMIT),
            (
                "--max-live-requests",
                l.max_live_requests,
                MAX_LIVE_REQUESTS_LIMIT,
            ),
            (
                "--retained-requests",
                l.retained_requests,
                MAX_RETAINED_REQUESTS_LIMIT,
            ),
        ] {
            if value > max {
                return Err(ConfigError::Limit { flag, value, max });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_source_parses_builtins_and_paths() {
        assert_eq!(
            "builtin:test-guest".parse(),
            Ok(KernelSource::Builtin(Builtin::TestGuest))
        );
        assert_eq!(
            "/boot/vmlinuz".parse(),
            Ok(KernelSource::Path("/boot/vmlinuz".into()))
        );
        let err = "builtin:nope".parse::<KernelSource>().unwrap_err();
        assert!(err.contains("builtin:test-guest"));
    }

    #[test]
    fn validation_names_the_flag() {
        let mut c = VmConfig::new(KernelSource::Builtin(Builtin::TestGuest));
        assert_eq!(c.validate(), Ok(()));
        c.vcpus = 0;
        assert!(c.validate().unwrap_err().to_string().contains("--vcpus"));
        c.vcpus = 1;
        c.mem_mib = 1;
        assert!(c.validate().unwrap_err().to_string().contains("--mem-mib"));
        c.mem_mib = 128;
        c.tenant = "a b".into();
        assert!(c.validate().unwrap_err().to_string().contains("--tenant"));
        // README: 1 to 64 characters from A-Z a-z 0-9 . _ -
        for bad in [String::new(), "a".repeat(65), "é".into(), "a/b".into()] {
            c.tenant = bad;
            assert!(c
                .validate()
                .unwrap_err()
                .to_string()
                .contains("1 to 64 characters"));
        }
        c.tenant = format!("Az09._-{}", "x".repeat(57));
        assert!(c.validate().is_ok(), "64 characters of the allowed set");
        c.tenant = "t".into();
        c.limits.retained_requests = MAX_RETAINED_REQUESTS_LIMIT + 1;
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("--retained-requests N with N from 0 to 10000000"),
            "{e}"
        );
        c.limits.retained_requests = MAX_RETAINED_REQUESTS_LIMIT;
        c.limits.max_containers = u32::MAX;
        assert!(c.validate().unwrap_err().to_string().contains("--max-containers"));
    }

    #[test]
    fn disk_flags_parse_path_and_readonly() {
        assert_eq!(
            "/d.img".parse(),
            Ok(DiskConfig {
                path: "/d.img".into(),
                read_only: false
            })
        );
        assert_eq!(
            "/d.img,readonly".parse(),
            Ok(DiskConfig {
                path: "/d.img".into(),
                read_only: true
            })
        );
        assert!("/d.img,rw"
            .parse::<DiskConfig>()
            .unwrap_err()
            .contains("readonly"));
        assert!(",readonly"
            .parse::<DiskConfig>()
            .unwrap_err()
            .contains("--disk PATH"));
    }

    #[test]
    fn net_flags_parse_tap_and_mac() {
        let n: NetConfig = "tap=tap0".parse().unwrap();
        assert_eq!((n.tap.as_str(), n.mac), ("tap0", DEFAULT_MAC));
        let n: NetConfig = "tap=tap1,mac=02:aa:bb:cc:dd:ee".parse().unwrap();
        assert_eq!(n.mac, [0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee]);
        for bad in [
            "",
            "mac=02:00:00:00:00:01",
            "tap=a/b",
            "tap=t,mac=zz:00:00:00:00:00",
            "tap=t,mac=01:00:00:00:00:00",
            "tap=t,x=1",
        ] {
            assert!(
                bad.parse::<NetConfig>().unwrap_err().contains("--net tap=NAME"),
                "{bad}"
            );
        }
    }

    #[test]
    fn vsock_flags_parse_cid_and_uds() {
        assert_eq!("cid=3".parse(), Ok(VsockConfig { cid: 3, uds: None }));
        assert_eq!(
            "cid=42,uds=/tmp/v.sock".parse(),
            Ok(VsockConfig {
                cid: 42,
                uds: Some("/tmp/v.sock".into())
            })
        );
        for bad in [
            "",
            "cid=2",
            "cid=x",
            "uds=/a",
            "cid=3,uds=",
            "cid=3,port=1",
            "cid=99999999999",
        ] {
            assert!(
                bad.parse::<VsockConfig>().unwrap_err().contains("--vsock cid=N"),
                "{bad}"
            );
        }
    }

    #[test]
    fn config_json_rejects_unknown_fields() {
        let err = serde_json::from_str::<VmConfig>(
            r#"{"kernel":{"builtin":"test-guest"},"vcpus":1,"mem_mib":128,"tenant":"t","bogus":1}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("bogus"));
        let ok: VmConfig =
            serde_json::from_str(r#"{"kernel":{"path":"/k"},"vcpus":2,"mem_mib":64,"tenant":"t"}"#).unwrap();
        assert!(ok.accounting);
    }
}
