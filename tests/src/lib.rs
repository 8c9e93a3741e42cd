//! Shared helpers for the integration tests in `tests/tests/`: boot the
//! project's bare-metal test guest in a real KVM VM with a scenario, and hand
//! back the report and what the guest printed.

pub mod blk_mix;
pub mod flood;
pub mod netns;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use accounting::report::{ChargesReport, ContainerReport, Report, RequestReport};
use accounting::resource::ExitReason;
use vmm::config::{Builtin, ConsoleTarget, KernelSource, VmConfig};
use vmm::vcpu::exit::VmEnd;

/// What a test run produced.
#[derive(Debug)]
pub struct Run {
    /// How the VM ended.
    pub end: VmEnd,
    /// The final report.
    pub report: Report,
    /// Everything the guest wrote to its console.
    pub console: String,
}

fn scratch_path(tag: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!(
        "resourceful-test-{}-{n}-{tag}.console",
        std::process::id()
    ))
}

/// A configuration for the built-in test guest running `scenario`.
pub fn config(scenario: &str, vcpus: u8) -> VmConfig {
    VmConfig {
        cmdline: Some(format!("scenario={scenario}")),
        vcpus,
        tenant: "acme".into(),
        ..VmConfig::new(KernelSource::Builtin(Builtin::TestGuest))
    }
}

/// Boots a VM with `config`, its console captured.
pub fn boot(mut config: VmConfig) -> Run {
    let console_path = scratch_path("vm");
    config.console = ConsoleTarget::File(console_path.clone());
    let outcome = vmm::run(&config).expect("the VM should build and run");
    let console = std::fs::read_to_string(&console_path).unwrap_or_default();
    let _ = std::fs::remove_file(&console_path);
    let report = outcome.report();
    Run {
        end: outcome.end,
        report,
        console,
    }
}

/// Boots the `blk` scenario on one fresh zeroed 1 MiB disk (`name` keeps
/// tests that run at once apart) under `limits`; the disk file is removed
/// once the VM has ended.
pub fn boot_blk(name: &str, limits: Vec<vmm::config::ContainerLimit>) -> Run {
    let path = scratch_path(&format!("{name}.img"));
    std::fs::write(&path, vec![0u8; 1 << 20]).expect("write the disk file");
    let mut cfg = config("blk", 1);
    cfg.disks = vec![vmm::config::DiskConfig {
        path: path.clone(),
        read_only: false,
    }];
    cfg.container_limits = limits;
    let run = boot(cfg);
    let _ = std::fs::remove_file(&path);
    run
}

/// Boots the test guest with `scenario` on `vcpus` vCPUs.
pub fn run_scenario(scenario: &str, vcpus: u8) -> Run {
    boot(config(scenario, vcpus))
}

/// Exit counts of a charge set as `[port_in, port_out, mmio_read, mmio_write, shutdown]`.
pub fn counts(c: &ChargesReport) -> [u64; 5] {
    [
        c.exits_of(ExitReason::PortIn).count,
        c.exits_of(ExitReason::PortOut).count,
        c.exits_of(ExitReason::MmioRead).count,
        c.exits_of(ExitReason::MmioWrite).count,
        c.exits_of(ExitReason::Shutdown).count,
    ]
}

impl Run {
    /// The container at `path`, which must exist.
    pub fn container(&self, path: &str) -> &ContainerReport {
        self.report
            .container(path)
            .unwrap_or_else(|| panic!("no container {path} in the report"))
    }

    /// Exit counts of the container at `path`.
    pub fn counts_of(&self, path: &str) -> [u64; 5] {
        counts(&self.container(path).charges)
    }

    /// The request with guest id `id`, which must be unique in the report.
    pub fn request(&self, id: u32) -> &RequestReport {
        let mut it = self.report.requests.iter().filter(|r| r.id == id);
        let r = it
            .next()
            .unwrap_or_else(|| panic!("no request {id} in the report"));
        assert!(it.next().is_none(), "request id {id} appears twice");
        r
    }

    /// Guest error count by name (0 if absent).
    pub fn error(&self, name: &str) -> u64 {
        self.report.guest_errors.get(name).copied().unwrap_or(0)
    }

    /// The conservation line of `resource` (`block.throttled_ns`): its
    /// tenant total and its sum over containers.
    pub fn conservation_line(&self, resource: &str) -> (u64, u64) {
        let l = self
            .report
            .conservation
            .lines
            .iter()
            .find(|l| l.resource == resource)
            .unwrap_or_else(|| panic!("no conservation line {resource}"));
        (l.tenant_total, l.containers_sum)
    }

    /// Asserts the run ended with the guest's status 0 and conservation held.
    pub fn assert_clean(&self) {
        assert_eq!(self.end, VmEnd::GuestExit(0), "console:\n{}", self.console);
        self.assert_conserved();
    }

    /// Asserts conservation: every resource's container sum equals the
    /// tenant total, and each container's requests stay within it.
    pub fn assert_conserved(&self) {
        let broken: Vec<_> = self
            .report
            .conservation
            .lines
            .iter()
            .filter(|l| l.tenant_total != l.containers_sum)
            .collect();
        assert!(
            self.report.conservation.holds && broken.is_empty(),
            "conservation broken: {broken:?}"
        );
        for c in &self.report.containers {
            for r in ExitReason::ALL {
                let inside = c.requests.charged.exits_of(r);
                let all = c.charges.exits_of(r);
                assert!(
                    inside.count <= all.count && inside.host_ns <= all.host_ns,
                    "{}: requests exceed container for {r:?}",
                    c.path
                );
            }
            assert!(c.requests.charged.guest_run_ns <= c.charges.guest_run_ns);
        }
        let mut vcpu_sum = ChargesReport::default().exits_total;
        for v in &self.report.vcpus {
            vcpu_sum.count += v.charges.exits_total.count;
            vcpu_sum.host_ns += v.charges.exits_total.host_ns;
        }
        assert_eq!(vcpu_sum, self.report.totals.exits_total);
    }
}

/// A fresh, empty directory for one test's sockets and files, named after
/// `name` and this process.
pub fn scratch_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("resourceful-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("a scratch directory");
    d
}

/// `GET target` over the host API socket `sock`: it must answer 200, and
/// its JSON body is returned.
pub fn api_json(sock: &Path, target: &str) -> serde_json::Value {
    let r = vmm::api::client::get(sock, target).expect("GET over the API socket");
    assert_eq!(r.status, 200, "{target}: {}", r.body);
    serde_json::from_str(&r.body).expect("a JSON body")
}

/// Polls `f` every 10 ms until it returns `Some`, failing after 30 s or if
/// the VM (run on the thread `vm`) ended.
pub fn wait_for<T>(what: &str, vm: &JoinHandle<Run>, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(!vm.is_finished(), "the VM ended while waiting for {what}");
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A VM of the test guest running `scenario` (`cmdline`: its whole command
/// line) with vsock (CID 3, the host side under `dir`) and the API socket
/// `dir/api.sock`, whose guest first opens a stream to host port
/// `gate_port` and waits there: returns the VM's thread, that gate stream
/// (blocking, reads time out after 60 s) and the API socket's path, once
/// the socket exists.
pub fn boot_gated(
    dir: &Path,
    scenario: &str,
    cmdline: String,
    gate_port: u32,
) -> (JoinHandle<Run>, std::os::unix::net::UnixStream, PathBuf) {
    let uds = dir.join("v.sock");
    let api_sock = dir.join("api.sock");
    let gate_listener = std::os::unix::net::UnixListener::bind(format!("{}_{gate_port}", uds.display()))
        .expect("bind the gate's socket");
    gate_listener
        .set_nonblocking(true)
        .expect("a non-blocking listener");
    let mut cfg = config(scenario, 1);
    cfg.cmdline = Some(cmdline);
    cfg.vsock = Some(vmm::config::VsockConfig {
        cid: 3,
        uds: Some(uds),
    });
    cfg.api_sock = Some(api_sock.clone());
    // A guard only: the gated scenarios end by themselves well under a
    // second once their gates open.
    cfg.time_limit_ms = Some(120_000);
    let vm = std::thread::spawn(move || boot(cfg));
    let gate = wait_for("the gate connection", &vm, || match gate_listener.accept() {
        Ok((s, _)) => Some(s),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
        Err(e) => panic!("accept: {e}"),
    });
    gate.set_nonblocking(false).expect("a blocking gate");
    gate.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("a read timeout");
    wait_for("the API socket", &vm, || api_sock.exists().then_some(()));
    (vm, gate, api_sock)
}
