//! `resourceful`: boot a guest, charge its work to the principals it
//! declares, and report.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;

use accounting::registry::Limits;
use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use vmm::config::{Builtin, ConsoleTarget, DiskConfig, KernelSource, NetConfig, VmConfig, DEFAULT_SAMPLE_US};
use vmm::vcpu::exit::VmEnd;

#[derive(Parser)]
#[command(
    name = "resourceful",
    version,
    about = "A KVM VMM that charges every vCPU exit to the principal the guest declared"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a kernel (bzImage, ELF vmlinux, or a bare-metal guest program) and report its accounting.
    Run(RunArgs),
    /// Boot the built-in guest with a multi-container, multi-request workload and report.
    Demo(DemoArgs),
}

#[derive(Args)]
struct Common {
    /// Number of vCPUs, 1-254 [default: 1 for run, 2 for demo].
    #[arg(long)]
    vcpus: Option<u8>,
    /// Guest RAM in MiB.
    #[arg(long = "mem-mib", default_value_t = 128)]
    mem_mib: u64,
    /// The tenant charged for this VM's work (set by the host, never by the guest).
    #[arg(long, default_value = "default")]
    tenant: String,
    /// Print the report as JSON on stdout (the console then goes to stderr unless --console is given).
    #[arg(long)]
    json: bool,
    /// Also write the JSON report to this file.
    #[arg(long = "report-json", value_name = "PATH")]
    report_json: Option<PathBuf>,
    /// Send the serial console to this file instead of stdout.
    #[arg(long, value_name = "FILE")]
    console: Option<PathBuf>,
    /// Requests listed in the table report (the JSON has them all).
    #[arg(long = "top-requests", default_value_t = 10)]
    top_requests: usize,
    /// Most containers the guest may declare over the VM's life.
    #[arg(long = "max-containers", default_value_t = Limits::default().max_containers)]
    max_containers: u32,
    /// Most requests that may be live at once.
    #[arg(long = "max-live-requests", default_value_t = Limits::default().max_live_requests)]
    max_live_requests: u32,
    /// Finished requests retained with their charges (older ones are folded into their container).
    #[arg(long = "retain-requests", default_value_t = Limits::default().retained_requests)]
    retain_requests: u32,
    /// Guest run-time sampling interval in microseconds.
    #[arg(long = "sample-us", default_value_t = DEFAULT_SAMPLE_US)]
    sample_us: u64,
    /// Do not charge exits (only to measure the accounting overhead).
    #[arg(long = "no-accounting")]
    no_accounting: bool,
}

#[derive(Args)]
struct RunArgs {
    /// Kernel image: a path, or builtin:test-guest / builtin:exit-cpl0.
    #[arg(long, value_name = "PATH")]
    kernel: KernelSource,
    /// Initial ramdisk (Linux kernels only).
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// A virtio-blk disk backed by a raw file; repeat for more disks.
    #[arg(long = "disk", value_name = "PATH[,readonly]")]
    disks: Vec<DiskConfig>,
    /// A virtio-net interface on a TAP device (opened, or created if absent).
    #[arg(long = "net", value_name = "tap=NAME[,mac=MAC]")]
    nets: Vec<NetConfig>,
    /// Kernel command line (default for Linux: console=ttyS0 reboot=k panic=1 pci=off ...;
    /// for the built-in test guest, e.g. scenario=basic).
    #[arg(long)]
    cmdline: Option<String>,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
struct DemoArgs {
    /// The guest scenario to run (see docs/guest-scenarios.md).
    #[arg(long, default_value = "demo")]
    scenario: String,
    #[command(flatten)]
    common: Common,
}

fn config(kernel: KernelSource, cmdline: Option<String>, c: &Common) -> VmConfig {
    let console = match (&c.console, c.json) {
        (Some(p), _) => ConsoleTarget::File(p.clone()),
        (None, true) => ConsoleTarget::Stderr,
        (None, false) => ConsoleTarget::Stdout,
    };
    VmConfig {
        cmdline,
        vcpus: c.vcpus.unwrap_or(1),
        mem_mib: c.mem_mib,
        tenant: c.tenant.clone(),
        console,
        limits: Limits {
            max_containers: c.max_containers,
            max_live_requests: c.max_live_requests,
            retained_requests: c.retain_requests,
        },
        accounting: !c.no_accounting,
        sample_interval_us: c.sample_us,
        ..VmConfig::new(kernel)
    }
}

fn install_stop_handlers() {
    extern "C" fn on_signal(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
        vmm::vm::STOP_REQUESTED.store(true, Ordering::Release);
    }
    for sig in [libc::SIGINT, libc::SIGTERM] {
        if let Err(e) = vmm_sys_util::signal::register_signal_handler(sig, on_signal) {
            log::warn!("cannot install the handler for signal {sig}: {e}");
        }
    }
}

fn run_vm(config: VmConfig, c: &Common) -> anyhow::Result<ExitCode> {
    install_stop_handlers();
    let outcome = vmm::run(&config)?;
    let report = &outcome.report;
    if let Some(path) = &c.report_json {
        std::fs::write(path, report.to_json()).with_context(|| {
            format!(
                "cannot write the report to {} (check --report-json)",
                path.display()
            )
        })?;
    }
    if c.json {
        println!("{}", report.to_json());
    } else {
        println!("\n{}", report.to_table(c.top_requests));
    }
    Ok(match outcome.end {
        VmEnd::GuestExit(status) => ExitCode::from(u8::try_from(status).unwrap_or(u8::MAX)),
        VmEnd::Reset => ExitCode::SUCCESS,
        end => {
            eprintln!(
                "resourceful: the VM ended abnormally ({}): {}",
                end.name(),
                end.detail().unwrap_or_default()
            );
            ExitCode::FAILURE
        }
    })
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => {
            let cfg = config(a.kernel, a.cmdline, &a.common);
            let cfg = VmConfig {
                initrd: a.initrd,
                disks: a.disks,
                nets: a.nets,
                ..cfg
            };
            run_vm(cfg, &a.common)
        }
        Command::Demo(a) => {
            let cmdline = format!("scenario={}", a.scenario);
            let mut common = a.common;
            // The demo shows several vCPUs sharing containers.
            common.vcpus.get_or_insert(2);
            let cfg = config(KernelSource::Builtin(Builtin::TestGuest), Some(cmdline), &common);
            run_vm(cfg, &common)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("resourceful: {e:#}");
            ExitCode::FAILURE
        }
    }
}
