//! docs/limits.md promises one table of every bound; each row that names a
//! constant states its figure, and this test holds the two together: a
//! figure that drifts from the code, a constant documented under a name the
//! test does not know, or a known constant missing from the table fails.

use std::collections::BTreeMap;
use std::time::Duration;

fn secs(d: Duration) -> u64 {
    d.as_secs()
}

/// Every constant the table must show, by the path it is written under.
fn constants() -> BTreeMap<&'static str, u64> {
    let n = |v: usize| v as u64;
    [
        (
            "vmm::arch::mptable::MAX_SUPPORTED_CPUS",
            u64::from(vmm::arch::mptable::MAX_SUPPORTED_CPUS),
        ),
        ("vmm::config::MAX_MEM_MIB", vmm::config::MAX_MEM_MIB),
        ("vmm::config::MIN_MEM_MIB", vmm::config::MIN_MEM_MIB),
        ("vmm::config::MAX_DISKS", n(vmm::config::MAX_DISKS)),
        ("vmm::config::MAX_VIRTIO", n(vmm::config::MAX_VIRTIO)),
        (
            "vmm::config::MAX_CONTAINER_LIMITS",
            n(vmm::config::MAX_CONTAINER_LIMITS),
        ),
        (
            "devices::virtio::sched::MAX_PRIORITY",
            u64::from(devices::virtio::sched::MAX_PRIORITY),
        ),
        (
            "devices::virtio::sched::MAX_SHARE",
            u64::from(devices::virtio::sched::MAX_SHARE),
        ),
        (
            "devices::virtio::sched::STARVATION_SKIPS",
            u64::from(devices::virtio::sched::STARVATION_SKIPS),
        ),
        (
            "devices::virtio::block::QUEUE_SIZE",
            u64::from(devices::virtio::block::QUEUE_SIZE),
        ),
        (
            "devices::virtio::net::QUEUE_SIZE",
            u64::from(devices::virtio::net::QUEUE_SIZE),
        ),
        (
            "devices::virtio::net::HELD_BYTES_MAX",
            n(devices::virtio::net::HELD_BYTES_MAX),
        ),
        ("vmm::boot::MAX_IMAGE_BYTES", vmm::boot::MAX_IMAGE_BYTES),
        (
            "--max-containers",
            u64::from(accounting::registry::Limits::default().max_containers),
        ),
        (
            "vmm::config::MAX_CONTAINERS_LIMIT",
            u64::from(vmm::config::MAX_CONTAINERS_LIMIT),
        ),
        (
            "--max-live-requests",
            u64::from(accounting::registry::Limits::default().max_live_requests),
        ),
        (
            "vmm::config::MAX_LIVE_REQUESTS_LIMIT",
            u64::from(vmm::config::MAX_LIVE_REQUESTS_LIMIT),
        ),
        (
            "--retained-requests",
            u64::from(accounting::registry::Limits::default().retained_requests),
        ),
        (
            "vmm::config::MAX_RETAINED_REQUESTS_LIMIT",
            u64::from(vmm::config::MAX_RETAINED_REQUESTS_LIMIT),
        ),
        (
            "accounting::registry::MAX_META_ATTRIBUTES",
            n(accounting::registry::MAX_META_ATTRIBUTES),
        ),
        (
            "accounting::registry::MAX_META_KEY",
            n(accounting::registry::MAX_META_KEY),
        ),
        (
            "accounting::registry::MAX_META_VALUE",
            n(accounting::registry::MAX_META_VALUE),
        ),
        (
            "accounting::abi::MAX_REGION_LEN",
            u64::from(accounting::abi::MAX_REGION_LEN),
        ),
        ("devices::acct::SKIPS_PER_SEC", devices::acct::SKIPS_PER_SEC),
        ("devices::virtio::MAX_MARKS", n(devices::virtio::MAX_MARKS)),
        (
            "accounting::report::UNHANDLED_IO_SITES",
            n(accounting::report::UNHANDLED_IO_SITES),
        ),
        ("accounting::ratelimit::BURST", accounting::ratelimit::BURST),
        (
            "devices::legacy::SERIAL_LINE_MAX",
            n(devices::legacy::SERIAL_LINE_MAX),
        ),
        (
            "devices::legacy::I8042_QUEUE_LEN",
            n(devices::legacy::I8042_QUEUE_LEN),
        ),
        (
            "devices::virtio::net::MAX_FRAME_LEN",
            n(devices::virtio::net::MAX_FRAME_LEN),
        ),
        (
            "devices::virtio::net::flow::MAX_FLOWS",
            n(devices::virtio::net::flow::MAX_FLOWS),
        ),
        (
            "devices::virtio::vsock::MAX_CONNECTIONS",
            n(devices::virtio::vsock::MAX_CONNECTIONS),
        ),
        (
            "devices::virtio::vsock::MAX_PENDING_HOST",
            n(devices::virtio::vsock::MAX_PENDING_HOST),
        ),
        (
            "devices::virtio::vsock::MAX_CONNECT_LINE",
            n(devices::virtio::vsock::MAX_CONNECT_LINE),
        ),
        (
            "devices::virtio::vsock::CONN_BUF_ALLOC",
            u64::from(devices::virtio::vsock::CONN_BUF_ALLOC),
        ),
        (
            "devices::virtio::vsock::MAX_CTRL",
            n(devices::virtio::vsock::MAX_CTRL),
        ),
        ("vmm::api::MAX_CONNECTIONS", n(vmm::api::MAX_CONNECTIONS)),
        (
            "vmm::api::MAX_METRICS_CONNECTIONS",
            n(vmm::api::MAX_METRICS_CONNECTIONS),
        ),
        ("vmm::api::MAX_HEAD", n(vmm::api::MAX_HEAD)),
        ("vmm::api::HEAD_TIMEOUT", secs(vmm::api::HEAD_TIMEOUT)),
        ("vmm::api::MAX_REQUEST_LIMIT", n(vmm::api::MAX_REQUEST_LIMIT)),
        ("vmm::agent::MAX_CONNECTIONS", n(vmm::agent::MAX_CONNECTIONS)),
        ("vmm::agent::HELLO_TIMEOUT", secs(vmm::agent::HELLO_TIMEOUT)),
        ("vmm::agent::IDLE_TIMEOUT", secs(vmm::agent::IDLE_TIMEOUT)),
        ("vmm::agent::WRITE_TIMEOUT", secs(vmm::agent::WRITE_TIMEOUT)),
        ("accounting::agent::MAX_FRAME", n(accounting::agent::MAX_FRAME)),
        ("vmm::agent::MAX_FLOWS", n(vmm::agent::MAX_FLOWS)),
        (
            "accounting::agent::MAX_PROCESSES",
            n(accounting::agent::MAX_PROCESSES),
        ),
        (
            "accounting::agent::MAX_CGROUPS",
            n(accounting::agent::MAX_CGROUPS),
        ),
        (
            "accounting::agent::MAX_THREADS",
            n(accounting::agent::MAX_THREADS),
        ),
        (
            "vmm::vcpu::kvmstats::MAX_DESCS",
            n(vmm::vcpu::kvmstats::MAX_DESCS),
        ),
    ]
    .into_iter()
    .collect()
}

/// `"16 KiB"` → 16384, `"10 s"` → 10, `"10 per 5 s"` → 10, `"1048576"`.
fn figure(cell: &str) -> u64 {
    let mut words = cell.split_whitespace();
    let value: u64 = words
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("figure {cell:?}"));
    value
        * match words.next() {
            Some("KiB") => 1 << 10,
            Some("MiB") => 1 << 20,
            Some("GiB") => 1 << 30,
            _ => 1,
        }
}

#[test]
fn every_figure_in_the_limits_table_is_the_code_s() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/limits.md")).unwrap();
    let table = doc.split("## The table").nth(1).expect("a table section");
    let known = constants();
    let mut seen = BTreeMap::new();
    for line in table
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| what"))
    {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // "", what, bound, constant, at the bound, "".
        let (bound, constant) = (cells[2], cells[3]);
        // The constant is the first backquoted name in its cell.
        let name = constant
            .split('`')
            .nth(1)
            .unwrap_or_else(|| panic!("no constant in {line}"));
        let want = *known
            .get(name)
            .unwrap_or_else(|| panic!("{name} is documented but not checked here: add it to constants()"));
        assert_eq!(figure(bound), want, "{line}");
        seen.insert(name, ());
    }
    for name in known.keys() {
        assert!(seen.contains_key(name), "{name} is missing from docs/limits.md");
    }
}

#[test]
fn the_descriptor_figures_in_the_text_are_the_code_s() {
    use vmm::config::{Builtin, KernelSource, VmConfig, VsockConfig};
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/limits.md")).unwrap();
    let mut c = VmConfig::new(KernelSource::Builtin(Builtin::TestGuest));
    c.vcpus = 1;
    let plain = vmm::limits::fd_bound(&c);
    c.vsock = Some(VsockConfig { cid: 3, uds: None });
    c.api_sock = Some("/api.sock".into());
    let full = vmm::limits::fd_bound(&c);
    assert!(
        doc.contains(&format!(
            "without vsock or API needs {plain}; with a vsock device and the API, {full}."
        )),
        "docs/limits.md should say {plain} and {full}"
    );
    c.agent_sock = Some("/agent.sock".into());
    assert_eq!(vmm::limits::thread_bound(&c), usize::from(c.vcpus) + 13);
}
