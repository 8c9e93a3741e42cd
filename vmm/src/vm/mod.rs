//! Builds a VM from a [`VmConfig`], runs it to the end, and reports.
//!
//! The order: guest memory and its KVM slots, the kernel, the VM-wide
//! state (TSS, irqchip for Linux), the books, the buses and devices, the
//! vCPUs; then one thread per vCPU plus the run-time sampler. The main
//! thread waits for the first vCPU to report how the VM ended (or for a
//! signal), stops and joins everything, flushes the console and builds the
//! report. Whatever way the VM ends, a report is produced.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use accounting::abi;
use accounting::ledger::Accounting;
use accounting::report::{DeviceCounters, Report, ReportWriter, VmInfo};
use devices::acct::{AgentSlots, TagRegion};
use devices::virtio::vsock::AgentConnect;
use devices::virtio::MMIO_LEN;
use devices::BusError;
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::agent::AgentHub;
use crate::arch;
use crate::boot::{self, BootPlan, KernelKind};
use crate::config::{ConfigError, ConsoleTarget, KernelSource, VmConfig, DEFAULT_LINUX_CMDLINE};
use crate::probes::{lock, DeviceProbes};
use crate::sampler::Sampler;
use crate::sandbox::{self, Seccomp, ThreadKind};
use crate::vcpu::exit::{IoStats, VmEnd};
use crate::vcpu::kvmstats::HaltStats;
use crate::vcpu::{self, Vcpu, VcpuShared};

mod board;

pub use board::vsock_connector;
use board::{build_devices, spawn_device_loop, DeviceEnv, VsockSetup};

/// Set from a SIGINT/SIGTERM handler to stop the running VM cleanly.
pub static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);

/// COM1's legacy interrupt line.
const COM1_IRQ: u32 = 4;
/// The keyboard's ISA interrupt line.
const I8042_IRQ: u32 = 1;
/// The first virtio-mmio device sits right after the accounting device;
/// the others follow, one [`MMIO_LEN`] window each.
pub const VIRTIO_MMIO_BASE: u64 = abi::ACCT_MMIO_BASE + abi::ACCT_MMIO_SIZE;
/// Interrupt line of the first virtio-mmio device; the others follow.
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// Ledger writer of the sampler (after the vCPUs).
const SAMPLER_WRITERS: usize = 1;
/// Ledger writer of the device event-loop thread (after the sampler).
const DEVICE_WRITERS: usize = 1;
/// Ledger writer of the agent hub's connection threads (after the device
/// thread; they share it under a lock).
const AGENT_WRITERS: usize = 1;

/// Guest-physical base and IRQ of virtio-mmio device `index`.
pub fn virtio_slot(index: usize) -> (u64, u32) {
    let i = u32::try_from(index).unwrap_or(u32::MAX);
    (
        VIRTIO_MMIO_BASE + MMIO_LEN * u64::from(i),
        VIRTIO_IRQ_BASE.saturating_add(i),
    )
}

/// The command-line tokens that announce `count` virtio-mmio devices, in
/// Linux's `virtio_mmio.device=SIZE@BASE:IRQ` form (the project's guests
/// parse the same).
pub fn virtio_cmdline(count: usize) -> String {
    (0..count)
        .map(|i| {
            let (base, irq) = virtio_slot(i);
            format!(" virtio_mmio.device={}K@{base:#x}:{irq}", MMIO_LEN / 1024)
        })
        .collect()
}

/// The devices the ACPI tables announce: the first `count` virtio slots.
fn acpi_devices(count: usize) -> arch::AcpiDevices {
    arch::AcpiDevices {
        virtio: (0..count)
            .map(|i| {
                let (base, irq) = virtio_slot(i);
                arch::VirtioMmioSlot {
                    base,
                    len: u32::try_from(MMIO_LEN).unwrap_or(u32::MAX),
                    irq,
                }
            })
            .collect(),
    }
}

/// Why a VM could not be built or run.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A user-set value is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The process may not open as many descriptors as the VM may need.
    #[error(transparent)]
    FdLimit(#[from] crate::limits::FdLimitError),
    /// `/dev/kvm` could not be opened.
    #[error("cannot open /dev/kvm: is KVM available on this host and may this user use it (root, or the kvm group)?")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// A KVM ioctl failed.
    #[error("KVM refused to {what}")]
    Kvm {
        /// What was asked.
        what: &'static str,
        /// The error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Guest memory could not be set up.
    #[error(transparent)]
    Memory(#[from] arch::MemoryError),
    /// The kernel could not be loaded.
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    /// VM-wide CPU set-up failed.
    #[error(transparent)]
    Arch(#[from] arch::ArchError),
    /// The ACPI tables could not be built.
    #[error(transparent)]
    Acpi(#[from] arch::AcpiError),
    /// vCPU set-up failed.
    #[error(transparent)]
    Regs(#[from] arch::RegsError),
    /// A device did not fit on its bus.
    #[error("device set-up failed")]
    Bus(#[from] BusError),
    /// The console file could not be created.
    #[error("cannot create the console file {path}: check the path given with --console")]
    Console {
        /// The path.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A disk image could not be opened.
    #[error("cannot use the disk image {path}: check the path given with --disk (add ,readonly for a read-only file)")]
    Disk {
        /// The path.
        path: String,
        /// The error.
        #[source]
        source: devices::virtio::block::BlockError,
    },
    /// A `--limit` the block device refused (validation should have).
    #[error("invalid --limit: {0}")]
    Limits(String),
    /// The timer that releases throttled block requests or TX frames could not be made.
    #[error("cannot create a limit timer (timerfd)")]
    LimitTimer(#[source] std::io::Error),
    /// A TAP device could not be opened.
    #[error("cannot use the TAP device {tap}: check --net tap=NAME (root or CAP_NET_ADMIN is needed to create one)")]
    Net {
        /// The interface name.
        tap: String,
        /// The error.
        #[source]
        source: devices::virtio::net::NetError,
    },
    /// The vsock device could not be set up.
    #[error(
        "cannot set up the vsock device: check --vsock cid=N[,uds=PATH] (the socket's directory must exist)"
    )]
    Vsock(#[source] devices::virtio::vsock::VsockError),
    /// The host API could not be served.
    #[error(transparent)]
    Api(#[from] crate::api::ApiError),
    /// The agent socket could not be served.
    #[error(transparent)]
    Agent(#[from] crate::agent::AgentError),
    /// The seccomp sandbox could not be set up.
    #[error(transparent)]
    Sandbox(#[from] sandbox::SandboxError),
    /// `--otlp-endpoint` or `--otlp-interval` is wrong, or the exporter
    /// could not start.
    #[error(transparent)]
    Otlp(#[from] crate::otlp::OtlpError),
    /// A host resource (eventfd, thread, signal handler) was refused.
    #[error("host resource: {what}")]
    Host {
        /// What was asked.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// The result of a run: how it ended and the books.
#[derive(Debug)]
pub struct RunOutcome {
    /// How the VM ended.
    pub end: VmEnd,
    /// The books, final: every vCPU and device thread has stopped.
    pub books: Arc<Accounting>,
    /// What the VMM knows about the VM (the report's `vm`).
    pub vm: VmInfo,
    /// The agent channel's non-zero counters.
    pub agent: BTreeMap<String, u64>,
    /// Every device's counters.
    pub devices: Vec<DeviceCounters>,
}

impl RunOutcome {
    /// The report, written as it is built (`ReportWriter::write_json`,
    /// `write_table`): what the CLI does, so that a VM with a million
    /// requests needs no second copy of its books.
    pub fn writer(&self) -> ReportWriter<'_> {
        ReportWriter::new(&self.books, self.vm.clone())
            .with_agent(self.agent.clone())
            .with_devices(self.devices.clone())
    }

    /// The whole report in memory.
    pub fn report(&self) -> Report {
        self.writer().into_report()
    }
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

fn host_err(what: &'static str) -> impl FnOnce(std::io::Error) -> VmError {
    move |source| VmError::Host { what, source }
}

fn console_writer(target: &ConsoleTarget) -> Result<Box<dyn Write + Send>, VmError> {
    Ok(match target {
        ConsoleTarget::Stdout => Box::new(std::io::stdout()),
        ConsoleTarget::Stderr => Box::new(std::io::stderr()),
        ConsoleTarget::Null => Box::new(std::io::sink()),
        ConsoleTarget::File(p) => Box::new(File::create(p).map_err(|source| VmError::Console {
            path: p.display().to_string(),
            source,
        })?),
    })
}

fn register_memory(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), VmError> {
    for (slot, region) in mem.iter().enumerate() {
        let region_info = kvm_userspace_memory_region {
            slot: u32::try_from(slot).unwrap_or(u32::MAX),
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping of `memory_size` bytes owned
        // by `mem`, which outlives the VM (both are dropped at the end of
        // `run`, the VM first).
        unsafe { vm.set_user_memory_region(region_info) }.map_err(kvm_err("map guest memory"))?;
    }
    Ok(())
}

/// Bytes of guest RAM resident in the host, by `mincore` over each region
/// in 1 GiB steps (so the vector stays small for large guests).
fn resident_bytes(mem: &GuestMemoryMmap) -> u64 {
    const STEP: usize = 1 << 30;
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let mut vec = Vec::new();
    let mut resident = 0u64;
    for region in mem.iter() {
        let len = usize::try_from(region.len()).unwrap_or(0);
        let mut off = 0;
        while off < len {
            let n = (len - off).min(STEP);
            vec.resize(n.div_ceil(page), 0u8);
            // SAFETY: `[as_ptr + off, +n)` is inside the region's live,
            // page-aligned mapping; `vec` has one byte per page of it.
            let rc = unsafe { libc::mincore(region.as_ptr().add(off).cast(), n, vec.as_mut_ptr()) };
            if rc == 0 {
                resident += vec.iter().filter(|b| **b & 1 != 0).count() as u64 * page as u64;
            }
            off += n;
        }
    }
    resident
}

/// Peak resident set of this process (`VmHWM` in `/proc/self/status`), 0
/// if it cannot be read.
fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

fn kernel_bytes(source: &KernelSource) -> Result<std::borrow::Cow<'static, [u8]>, VmError> {
    Ok(match source {
        KernelSource::Builtin(b) => std::borrow::Cow::Borrowed(b.image()),
        KernelSource::Path(p) => std::borrow::Cow::Owned(boot::read_image(p, "kernel")?),
    })
}

/// Stops every vCPU: sets the flag and kicks until each thread has left
/// `KVM_RUN` for good (a kick that lands just before `KVM_RUN` is lost, so
/// kick again).
fn stop_vcpus(stop: &AtomicBool, threads: &[(std::thread::JoinHandle<()>, Arc<VcpuShared>)]) {
    use std::os::unix::thread::JoinHandleExt;
    stop.store(true, Ordering::Release);
    // Most vCPUs leave KVM_RUN within microseconds of a kick: poll soon,
    // then back off.
    let mut wait = Duration::from_micros(20);
    loop {
        let mut running = 0;
        for (handle, shared) in threads {
            if !shared.finished.load(Ordering::Acquire) {
                running += 1;
                // SAFETY: the thread has not been joined (we hold its
                // handle), so its pthread id is valid; the signal has a
                // no-op handler installed.
                unsafe { libc::pthread_kill(handle.as_pthread_t(), vcpu::kick_signal()) };
                // A vCPU a guest CPU limit holds sleeps outside KVM_RUN.
                shared.hold.wake_up();
            }
        }
        if running == 0 {
            return;
        }
        std::thread::sleep(wait);
        wait = (wait * 2).min(Duration::from_millis(1));
    }
}

/// Starts the host API on `path` and/or `/metrics` on `metrics` over the
/// live books; its VM facts are those of a running VM (`end: "running"`,
/// `wall_ns` = time since now).
#[allow(clippy::too_many_arguments)]
fn start_api(
    path: Option<&std::path::Path>,
    metrics: Option<crate::api::MetricsListener>,
    config: &VmConfig,
    acct: &Arc<Accounting>,
    agent: &Arc<AgentHub>,
    io_stats: &Arc<IoStats>,
    probes: &Arc<DeviceProbes>,
    boot_kind: &'static str,
    live: Option<&Arc<crate::live_limits::LiveLimits>>,
    otlp: Option<Arc<crate::otlp::OtlpStats>>,
) -> Result<crate::api::ApiServer, VmError> {
    use crate::api::{ApiServer, ApiState, DevicesInfo, DiskInfo, NetInfo, VsockInfo};
    let devices = DevicesInfo {
        disks: config
            .disks
            .iter()
            .map(|d| DiskInfo {
                path: d.path.display().to_string(),
                read_only: d.read_only,
            })
            .collect(),
        nets: config
            .nets
            .iter()
            .map(|n| NetInfo {
                tap: n.tap.clone(),
                mac: n.mac.map(|b| format!("{b:02x}")).join(":"),
            })
            .collect(),
        vsock: config.vsock.as_ref().map(|v| VsockInfo {
            cid: v.cid,
            uds: v.uds.as_ref().map(|p| p.display().to_string()),
        }),
    };
    let booted = Instant::now();
    let io_stats = Arc::clone(io_stats);
    let base = VmInfo {
        vcpus: usize::from(config.vcpus),
        mem_mib: config.mem_mib,
        kernel: config.kernel.to_string(),
        boot: boot_kind.into(),
        end: "running".into(),
        accounting: config.accounting,
        seccomp: config.seccomp.name().into(),
        metrics_addr: metrics.as_ref().map(|m| m.local_addr().to_string()),
        ..VmInfo::default()
    };
    let hub = Arc::clone(agent);
    let info = move || VmInfo {
        wall_ns: u64::try_from(booted.elapsed().as_nanos()).unwrap_or(u64::MAX),
        unhandled_io: io_stats.unhandled.load(Ordering::Relaxed),
        unhandled_io_sites: io_stats.sites(),
        log_lines_suppressed: crate::logging::suppressed(),
        slots: hub.slots_info(),
        otlp: otlp.as_ref().map(|o| o.info()),
        ..base.clone()
    };
    let mut state = ApiState::new(Arc::clone(acct), devices, info)
        .with_agent(Arc::clone(agent))
        .with_device_probes(Arc::clone(probes));
    if let Some(live) = live {
        state = state.with_limits(Arc::clone(live));
    }
    Ok(ApiServer::start(path, metrics, state, config.seccomp)?)
}

/// A gate the vCPU threads wait at until the main thread opens it.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    fn open(&self) {
        *self.open.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.opened.notify_all();
    }

    fn wait(&self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        while !*open {
            open = self.opened.wait(open).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Stops the agent hub when dropped, on every way out of [`run`].
struct AgentGuard(Arc<AgentHub>);

impl Drop for AgentGuard {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// Builds and runs the VM described by `config` until it ends.
pub fn run(config: &VmConfig) -> Result<RunOutcome, VmError> {
    config.validate()?;
    if let Some(o) = &config.otlp {
        o.validate()?;
    }
    crate::limits::ensure_fd_limit(config)?;
    let nr_vcpus = usize::from(config.vcpus);
    let kernel = kernel_bytes(&config.kernel)?;
    let initrd = config
        .initrd
        .as_deref()
        .map(|p| boot::read_image(p, "initrd"))
        .transpose()?;

    let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
    let vm = kvm.create_vm().map_err(kvm_err("create a VM"))?;
    let mem = arch::create_guest_memory(config.mem_mib << 20)?;
    register_memory(&vm, &mem)?;

    let kind = boot::detect_kind(&kernel)?;
    let mut cmdline = match (&config.cmdline, kind) {
        (Some(c), _) => c.clone(),
        (None, KernelKind::Linux { .. }) => DEFAULT_LINUX_CMDLINE.to_string(),
        (None, KernelKind::BareMetal) => String::new(),
    };
    let virtio_count = config.disks.len() + config.nets.len() + usize::from(config.vsock.is_some());
    cmdline.push_str(&virtio_cmdline(virtio_count));
    let plan: BootPlan = boot::load_kernel(&mem, &kernel, initrd.as_deref(), &cmdline, config.vcpus)?;
    if let KernelKind::Linux { .. } = plan.kind {
        let rsdp = arch::create_acpi_tables(&mem, config.vcpus, &acpi_devices(virtio_count))?;
        boot::linux::set_acpi_rsdp_addr(&mem, rsdp)?;
    }
    let with_irqchip = plan.wants_irqchip();
    arch::setup_vm(&vm, with_irqchip)?;

    // Writers: one per vCPU, then the sampler, the device thread, the agent
    // hub.
    let acct = Accounting::new(
        &config.tenant,
        nr_vcpus,
        SAMPLER_WRITERS + DEVICE_WRITERS + AGENT_WRITERS,
        config.limits,
    );
    // The agent channel: vsock port 1024 and, if asked, a host socket. Its
    // connections apply declarations like the ring does; nothing waits on it.
    // The guest's agent may register its tag slots as pages (a Linux
    // guest): a second source of slots beside the accounting device's.
    let region = TagRegion::new(nr_vcpus);
    let slots = Arc::new(AgentSlots::new(
        Arc::clone(&region),
        mem.clone(),
        Arc::clone(&acct),
    ));
    let agent_writer = nr_vcpus + SAMPLER_WRITERS + DEVICE_WRITERS;
    let agent = AgentHub::sandboxed(
        Arc::clone(&acct),
        config.accounting.then(|| acct.writer(agent_writer)),
        config.seccomp,
        Some(slots),
    );
    // With the API, limits may change while the VM runs (`/v1/limits`).
    let live = config.api_sock.is_some().then(|| {
        Arc::new(crate::live_limits::LiveLimits::new(
            config.container_limits.clone(),
        ))
    });
    let env = DeviceEnv {
        vm: &vm,
        with_irqchip,
        mem: &mem,
        region: &region,
        acct: &acct,
        accounting: config.accounting,
        device_writer: nr_vcpus + SAMPLER_WRITERS,
        agent: &agent,
        container_limits: &config.container_limits,
        live: live.as_ref(),
    };
    // Port 1024 of the vsock device is served by the agent hub.
    let vsock = config.vsock.as_ref().map(|v| {
        let hub = Arc::clone(&agent);
        let serve: AgentConnect = Box::new(move || hub.connect_local());
        VsockSetup {
            config: v,
            agent: Some(serve),
        }
    });
    let devices = build_devices(
        &env,
        console_writer(&config.console)?,
        &config.disks,
        &config.nets,
        vsock,
    )?;
    let (pio, mmio) = (Arc::new(devices.pio), Arc::new(devices.mmio));
    let probes = devices.probes;
    let io_stats = Arc::new(IoStats::default());

    let cpuid = arch::HostCpuid::read(&kvm).map_err(kvm_err("list supported CPUID"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let (events_tx, events_rx) = mpsc::channel();
    let mut vcpus = Vec::with_capacity(nr_vcpus);
    let mut halt_stats = Vec::with_capacity(nr_vcpus);
    for id in 0..config.vcpus {
        let fd = vm.create_vcpu(u64::from(id)).map_err(kvm_err("create a vCPU"))?;
        arch::configure_vcpu(&fd, &mem, &cpuid, id, config.vcpus, &plan.mode, with_irqchip)?;
        if config.accounting {
            match HaltStats::open(&fd) {
                Ok(s) => halt_stats.push(Some(s)),
                Err(e) => {
                    if id == 0 {
                        log::warn!(
                            "KVM binary statistics unavailable ({e}): halted time counts as guest run time"
                        );
                    }
                    halt_stats.push(None);
                }
            }
        }
        let tsc_offset = config
            .accounting
            .then(|| vcpu::switches::tsc_offset(&fd, acct.clock()))
            .flatten();
        let id = usize::from(id);
        vcpus.push(Vcpu {
            id,
            fd,
            pio: Arc::clone(&pio),
            mmio: Arc::clone(&mmio),
            io_stats: Arc::clone(&io_stats),
            region: Arc::clone(&region),
            writer: config.accounting.then(|| acct.writer(id)),
            shared: Arc::new(VcpuShared {
                switches: vcpu::switches::SwitchBook::new(tsc_offset),
                ..VcpuShared::default()
            }),
            stop: Arc::clone(&stop),
            events: events_tx.clone(),
            resume_at: None,
            unstarted: false,
            recent: Default::default(),
        });
    }
    drop(events_tx);
    vcpu::install_kick_handler().map_err(host_err("install the vCPU kick signal handler"))?;
    if config.seccomp == Seccomp::Trap {
        sandbox::install_violation_handler()?;
    }
    let boot_kind = match plan.kind {
        KernelKind::BareMetal => "baremetal",
        KernelKind::Linux { .. } => "linux",
    };
    // Only with --otlp-endpoint; a later early return drops (stops) it.
    let otlp = config
        .otlp
        .as_ref()
        .map(|o| crate::otlp::Exporter::start(o, &acct, config.seccomp))
        .transpose()?;
    // Before any thread starts: failing here leaves nothing behind, and a
    // later early return drops (stops) the server.
    let metrics = config
        .metrics_addr
        .map(crate::api::MetricsListener::bind)
        .transpose()?;
    let metrics_addr = metrics.as_ref().map(|m| m.local_addr().to_string());
    let api = if config.api_sock.is_some() || metrics.is_some() {
        let path = config.api_sock.as_deref();
        Some(start_api(
            path,
            metrics,
            config,
            &acct,
            &agent,
            &io_stats,
            &probes,
            boot_kind,
            live.as_ref(),
            otlp.as_ref().map(crate::otlp::Exporter::stats),
        )?)
    } else {
        None
    };
    // The hub stops itself (and removes its socket) if a later step fails.
    let _agent_guard = AgentGuard(Arc::clone(&agent));
    if let Some(path) = &config.agent_sock {
        agent.listen(path)?;
    }

    let started = Instant::now();
    let sampler_stop = Arc::new(AtomicBool::new(false));
    // With accounting off nothing is sampled or drained either: that run is
    // the baseline the overhead benchmark compares against.
    let seccomp = config.seccomp;
    // The sampler and device threads read guest memory and queues: they say
    // when their filter is in, and the vCPUs wait for that (below).
    let (filtered_tx, filtered_rx) = mpsc::channel();
    let sampler_filtered = filtered_tx.clone();
    let sampler_thread = if config.accounting {
        let shared: Vec<Arc<VcpuShared>> = vcpus.iter().map(|v| Arc::clone(&v.shared)).collect();
        let mut sampler = Sampler::new(acct.writer(nr_vcpus), &region, shared.clone(), halt_stats);
        // Guest CPU limits: enforced on the sampler's charges, with the API
        // (they may be set later) or when one is set.
        let cpu = match &live {
            Some(live) => Some(live.lookup(&acct, "cpu", crate::live_limits::DeviceKind::Cpu)),
            None => {
                let limits = crate::live_limits::DeviceKind::Cpu.configs(&config.container_limits);
                let paths = limits.iter().map(|l| l.path.clone()).collect();
                (!limits.is_empty())
                    .then(|| (limits, crate::live_limits::RegistryLookup::fixed(&acct, paths)))
            }
        };
        if let Some((limits, lookup)) = cpu {
            sampler = sampler.with_cpu_limits(crate::cpu_limit::CpuLimiter::new(
                &acct, &region, &shared, limits, lookup,
            ));
        }
        let interval = Duration::from_micros(config.sample_interval_us);
        let stop = Arc::clone(&sampler_stop);
        // No vCPU thread runs yet, so failing here leaves nothing behind.
        Some(
            std::thread::Builder::new()
                .name("rsrc-sampler".into())
                .spawn(move || {
                    sandbox::enter_or_exit(ThreadKind::Sampler, seccomp);
                    let _ = sampler_filtered.send(());
                    sampler.run(interval, stop)
                })
                .map_err(host_err("spawn the sampler thread"))?,
        )
    } else {
        drop(sampler_filtered);
        None
    };
    let device_stop = Arc::new(AtomicBool::new(false));
    let device_thread = spawn_device_loop(devices.handlers, Arc::clone(&device_stop), seccomp, filtered_tx)?;
    // The vCPUs wait at this gate, filtered, until the sampler and device
    // threads have installed their filters and the main thread its own (when
    // it does): no guest code runs before those threads are sandboxed.
    let gate = Arc::new(Gate::default());
    let mut threads = Vec::with_capacity(nr_vcpus);
    let unstarted: Vec<Arc<VcpuShared>> = vcpus.iter().map(|v| Arc::clone(&v.shared)).collect();
    let mut spawn_error = None;
    for v in vcpus {
        let s = Arc::clone(&v.shared);
        let gate = Arc::clone(&gate);
        match std::thread::Builder::new()
            .name(format!("rsrc-vcpu{}", v.id))
            .spawn(move || {
                sandbox::enter_or_exit(ThreadKind::Vcpu, seccomp);
                gate.wait();
                v.run()
            }) {
            Ok(handle) => threads.push((handle, s)),
            Err(e) => {
                // The vCPUs already started must be stopped and joined, and
                // the report still produced.
                spawn_error = Some(e);
                break;
            }
        }
    }

    // Each started thread sends once. This thread holds no sender, so if
    // they all end without sending the wait ends too.
    let started_filtering = usize::from(sampler_thread.is_some()) + usize::from(device_thread.is_some());
    for _ in 0..started_filtering {
        if filtered_rx.recv().is_err() {
            break;
        }
    }
    if config.seccomp_main_thread {
        sandbox::enter_or_exit(ThreadKind::Main, seccomp);
    }
    gate.open();

    let end = match spawn_error {
        Some(e) => VmEnd::VcpuError(format!("cannot start a vCPU thread: {e}")),
        None => loop {
            let limit = config.time_limit_ms.map(Duration::from_millis);
            if limit.is_some_and(|l| started.elapsed() >= l) {
                break VmEnd::TimeLimit;
            }
            match events_rx.recv_timeout(Duration::from_millis(20)) {
                Ok(end) => break end,
                Err(RecvTimeoutError::Timeout) if STOP_REQUESTED.load(Ordering::Acquire) => {
                    break VmEnd::Signal
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    break VmEnd::VcpuError("every vCPU thread ended without a reason".into())
                }
            }
        },
    };
    stop_vcpus(&stop, &threads);
    for (handle, _) in threads {
        if handle.join().is_err() {
            log::error!("a vCPU thread panicked");
        }
    }
    // Stopped (its in-flight requests answered) before its counters are read.
    let api = api.map(|api| {
        let stats = api.stats();
        api.stop();
        stats.info()
    });
    agent.stop();
    let wall_ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
    device_stop.store(true, Ordering::Release);
    if let Some(t) = device_thread {
        if t.join().is_err() {
            log::error!("the device thread panicked");
        }
    }
    sampler_stop.store(true, Ordering::Release);
    if let Some(t) = &sampler_thread {
        t.thread().unpark();
    }
    let (mut guest_run_source, mut vcpu_halted_ns, mut run_log) = (String::new(), 0, None);
    match sampler_thread.map(std::thread::JoinHandle::join) {
        // One more tick now that the vCPUs are stopped charges the rest of
        // their run time, so the sums are exact.
        Some(Ok(mut sampler)) => {
            sampler.finish();
            guest_run_source = sampler.source().into();
            vcpu_halted_ns = sampler.halted_ns();
            let t = sampler.run_log();
            run_log = Some(accounting::report::RunLogInfo {
                vcpus_logging: t.vcpus_logging,
                switches: t.switches,
                lost: t.lost,
                exact_ns: t.exact_ns,
                sampled_ns: t.sampled_ns,
                tsc_hz: acct.clock().tsc_hz().unwrap_or(0),
            });
        }
        Some(Err(_)) => log::error!("the sampler thread panicked"),
        None => {}
    }
    let vcpu_unstarted_ns = unstarted
        .iter()
        .map(|u| u.unstarted_ns.load(Ordering::Relaxed))
        .sum();
    // Every writer has stopped: the exporter's last spans and counters are
    // the report's.
    let otlp = otlp.map(crate::otlp::Exporter::finish);
    if let Err(e) = lock(&devices.serial).finish() {
        log::warn!("console output could not be flushed: {e}");
    }

    let info = VmInfo {
        vcpus: nr_vcpus,
        mem_mib: config.mem_mib,
        kernel: config.kernel.to_string(),
        boot: boot_kind.into(),
        end: end.name().into(),
        end_detail: end.detail(),
        guest_status: match end {
            VmEnd::GuestExit(s) => Some(s),
            _ => None,
        },
        wall_ns,
        accounting: config.accounting,
        seccomp: config.seccomp.name().into(),
        guest_run_source,
        clock_source: acct.clock_source().into(),
        vcpu_halted_ns,
        vcpu_unstarted_ns,
        unhandled_io: io_stats.unhandled.load(Ordering::Relaxed),
        unhandled_io_sites: io_stats.sites(),
        log_lines_suppressed: crate::logging::suppressed(),
        guest_resident_bytes: resident_bytes(&mem),
        vmm_peak_rss_bytes: peak_rss_bytes(),
        slots: agent.slots_info(),
        run_log,
        metrics_addr,
        otlp,
        api,
    };
    Ok(RunOutcome {
        end,
        books: acct,
        vm: info,
        agent: agent.stats().nonzero(),
        devices: probes.read(),
    })
}
