//! `resourceful`: boot a guest, charge its work to the principals it
//! declares, and report.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;

use accounting::registry::Limits;
use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use vmm::config::{
    Builtin, ConsoleTarget, ContainerLimit, DiskConfig, KernelSource, NetConfig, Seccomp, VmConfig,
    VsockConfig, DEFAULT_SAMPLE_US,
};
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
    /// Show the live books of a VM started with --api-sock PATH (read-only; the VM keeps running).
    Report(ReportArgs),
    /// A live per-container view of a VM started with --api-sock PATH, refreshed like top(1).
    Top(TopArgs),
    /// Join one distributed request across VMs: its parts begun with TRACE_ID in each --api-sock VM.
    Trace(vmm::api::trace::TraceArgs),
    /// Write a flame graph of one resource's charges in a VM started with --api-sock PATH.
    Flame(FlameArgs),
}

#[derive(Args)]
struct FlameArgs {
    /// The running VM's API socket (the path given to `run` or `demo` with --api-sock).
    #[arg(long = "api-sock", value_name = "PATH")]
    api_sock: PathBuf,
    /// What to draw: host_ns, exits, run_ns, blk_bytes, net_bytes or vsock_bytes.
    #[arg(long, default_value = "host_ns")]
    resource: String,
    /// Where to write it: an SVG file, or - for the folded stacks on stdout.
    #[arg(short = 'o', long = "output", value_name = "FILE", default_value = "-")]
    output: PathBuf,
    /// Write folded stacks (text, `frame;frame;... count` lines) instead of an SVG.
    #[arg(long)]
    folded: bool,
}

#[derive(Args)]
struct TopArgs {
    /// The running VM's API socket (the path given to `run` or `demo` with --api-sock), or a directory:
    /// every VM whose socket is in it, grouped by tenant (as `demo --api-sock DIR` leaves them).
    #[arg(long = "api-sock", value_name = "PATH")]
    api_sock: PathBuf,
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// Stop after this many refreshes (default: until the VM ends or Ctrl-C).
    #[arg(long, short = 'n')]
    iterations: Option<u64>,
}

#[derive(Args)]
struct ReportArgs {
    /// The running VM's API socket (the path given to `run` or `demo` with --api-sock).
    #[arg(long = "api-sock", value_name = "PATH")]
    api_sock: PathBuf,
    /// Print {"vm", "containers", "requests"} as JSON instead of a table.
    #[arg(long)]
    json: bool,
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
    /// A token-bucket limit on one container's block I/O, network TX/RX and vsock bytes, applied to the live
    /// container of that path (repeatable; PATH `tenant`: every request also draws from it): PATH:blk-ops=RATE[,blk-bytes=RATE]
    /// [,blk-read-ops=RATE][,blk-read-bytes=RATE][,blk-write-ops=RATE][,blk-write-bytes=RATE][,net-tx-frames=RATE]
    /// [,net-tx-bytes=RATE][,net-rx-frames=RATE][,net-rx-bytes=RATE][,vsock-bytes=RATE][,KEY-burst=N][,priority=0..7][,share=1..1000]
    /// [,net-rx-drop=on], RATE like 100/s, 10/100ms or 1MiB/s; priority (higher first) and share order a disk's held requests.
    /// Held requests, frames and bytes are delayed, never dropped; with net-rx-drop=on received frames over the limit are dropped.
    #[arg(long = "limit", value_name = "PATH:blk-ops=RATE,...")]
    limit: Vec<ContainerLimit>,
    /// Per-container limits from a JSON file: {"limits": [{"container": "PATH", "blk-ops": "100/s", ...}]}
    /// with --limit's keys; PATH may end in `*` (docs/limits-per-container.md). A path may not be in both.
    #[arg(long = "limits", value_name = "FILE")]
    limits_file: Option<PathBuf>,
    /// Most containers the guest may declare over the VM's life, 0-1000000.
    #[arg(long = "max-containers", value_name = "N", default_value_t = Limits::default().max_containers)]
    max_containers: u32,
    /// Most requests that may be live at once, 0-1000000.
    #[arg(long = "max-live-requests", value_name = "N", default_value_t = Limits::default().max_live_requests)]
    max_live_requests: u32,
    /// Finished requests retained with their charges, 0-10000000 (older ones are evicted and folded
    /// into their container; counted). `--retain-requests` is the old spelling.
    #[arg(
        long = "retained-requests",
        alias = "retain-requests",
        value_name = "N",
        default_value_t = Limits::default().retained_requests
    )]
    retain_requests: u32,
    /// Guest run-time sampling interval in microseconds.
    #[arg(long = "sample-us", default_value_t = DEFAULT_SAMPLE_US)]
    sample_us: u64,
    /// Do not charge exits (only to measure the accounting overhead).
    #[arg(long = "no-accounting")]
    no_accounting: bool,
    /// Serve the host API (JSON under /v1, Prometheus /metrics) on this Unix socket, mode 0600.
    #[arg(long = "api-sock", value_name = "PATH")]
    api_sock: Option<PathBuf>,
    /// Also serve the Prometheus exposition (GET /metrics, as on --api-sock) over TCP on IP:PORT, for
    /// Prometheus to scrape; e.g. 127.0.0.1:9101. Port 0 picks a free port (logged, and shown as
    /// metrics_addr in GET /v1/vm and the report). Unauthenticated: a non-loopback address is warned about.
    #[arg(long = "metrics-addr", value_name = "IP:PORT", value_parser = parse_metrics_addr)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Also serve guest agents on this Unix socket, mode 0600 (for `resourceful-agent --connect unix:PATH`
    /// run on the host); inside the guest the agent uses vsock port 1024.
    #[arg(long = "agent-sock", value_name = "PATH")]
    agent_sock: Option<PathBuf>,
    /// Export each finished request as a span and the per-container counters as metrics to an
    /// OpenTelemetry collector, OTLP over HTTP/protobuf: the collector's base URL
    /// http://HOST[:PORT][/PATH] (port 4318 if left out; /v1/traces and /v1/metrics are appended).
    /// Plain http only. Counters in GET /v1/vm and the report (vm.otlp); docs/opentelemetry.md.
    #[arg(long = "otlp-endpoint", value_name = "URL", value_parser = parse_otlp_endpoint)]
    otlp_endpoint: Option<String>,
    /// Seconds between metric exports to --otlp-endpoint, 0.1-3600 (spans go every 200 ms).
    #[arg(
        long = "otlp-interval",
        value_name = "SECS",
        default_value = "10",
        value_parser = parse_otlp_interval,
        requires = "otlp_endpoint"
    )]
    otlp_interval: u64,
    /// Run the VMM's threads without their seccomp filters. For debugging only: the report says so.
    #[arg(long = "no-seccomp")]
    no_seccomp: bool,
    /// Only log syscalls outside the seccomp lists (kernel audit log) instead of stopping the VMM:
    /// for regenerating the lists (docs/sandbox.md), never for production.
    #[arg(long = "seccomp-log", conflicts_with = "no_seccomp")]
    seccomp_log: bool,
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
    /// A virtio-vsock device: guest CID N (>= 3). The VMM serves the guest agent on port 1024; with
    /// uds=PATH, guest port P reaches the host socket PATH_P and host programs connect through PATH.
    #[arg(long = "vsock", value_name = "cid=N[,uds=PATH]")]
    vsock: Option<VsockConfig>,
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
    /// Keep the demo workload going for this many seconds (its vCPUs repeat their requests in rounds),
    /// so `resourceful top` has something live to show; then stop cleanly and report.
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// How many VMs, each its own VMM process (`acme` 2 and `globex` 1, then `acme`, `globex`, `initech` in turn); with more
    /// than 1, --api-sock names a directory for their sockets (docs/demo.md). 1: the single-VM demo.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=16))]
    vms: u8,
    #[command(flatten)]
    common: Common,
}

/// `--otlp-endpoint URL`, checked for its form (resolved when the VM starts).
fn parse_otlp_endpoint(s: &str) -> Result<String, String> {
    vmm::otlp::Endpoint::parse(s)
        .map(|_| s.to_string())
        .map_err(|e| e.to_string())
}

/// `--otlp-interval SECS` in milliseconds, or what to write instead.
fn parse_otlp_interval(s: &str) -> Result<u64, String> {
    let secs: f64 = s.parse().unwrap_or(f64::NAN);
    if secs.is_finite() && secs > 0.0 && secs <= 1e7 {
        // In range, so the cast is exact up to the rounding asked for.
        #[allow(clippy::cast_possible_truncation)]
        let ms = (secs * 1000.0).round() as u64;
        if vmm::otlp::INTERVAL_RANGE_MS.contains(&ms) {
            return Ok(ms);
        }
    }
    Err("expected seconds between the metric exports, from 0.1 to 3600".into())
}

/// `--metrics-addr IP:PORT`, or what to write instead.
fn parse_metrics_addr(s: &str) -> Result<std::net::SocketAddr, String> {
    s.parse().map_err(|_| {
        "expected IP:PORT, such as 127.0.0.1:9101, [::1]:9101 or 127.0.0.1:0 for a free port (host names are not resolved)"
            .to_string()
    })
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
        container_limits: c.limit.clone(),
        accounting: !c.no_accounting,
        sample_interval_us: c.sample_us,
        api_sock: c.api_sock.clone(),
        metrics_addr: c.metrics_addr,
        agent_sock: c.agent_sock.clone(),
        otlp: c.otlp_endpoint.clone().map(|endpoint| vmm::otlp::OtlpConfig {
            endpoint,
            interval_ms: c.otlp_interval,
        }),
        seccomp: match (c.no_seccomp, c.seccomp_log) {
            (true, _) => Seccomp::Off,
            (false, true) => Seccomp::Log,
            (false, false) => Seccomp::Trap,
        },
        // The CLI's own thread does nothing after the run but print the report.
        seccomp_main_thread: true,
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

fn run_vm(mut config: VmConfig, c: &Common) -> anyhow::Result<ExitCode> {
    if let Some(f) = &c.limits_file {
        let file = vmm::limits_file::load(f).map_err(anyhow::Error::msg)?;
        let flags = std::mem::take(&mut config.container_limits);
        config.container_limits =
            vmm::limits_file::merge(flags, file, &f.display().to_string()).map_err(anyhow::Error::msg)?;
    }
    install_stop_handlers();
    match config.seccomp {
        Seccomp::Trap => {}
        Seccomp::Off => eprintln!(
            "resourceful: WARNING: --no-seccomp: the VMM runs WITHOUT its seccomp sandbox; for debugging only (the report says seccomp: off)"
        ),
        Seccomp::Log => eprintln!(
            "resourceful: WARNING: --seccomp-log: syscalls outside the seccomp lists are only logged, not stopped; for regenerating the lists only (the report says seccomp: log)"
        ),
    }
    let outcome = vmm::run(&config)?;
    // Written as it is built: the report never sits whole in memory.
    let report = outcome.writer();
    if let Some(path) = &c.report_json {
        let file = std::fs::File::create(path).and_then(|f| report.write_json(f));
        file.with_context(|| {
            format!(
                "cannot write the report to {} (check --report-json)",
                path.display()
            )
        })?;
    }
    let mut out = std::io::stdout().lock();
    if c.json {
        report.write_json(&mut out)?;
        writeln!(out)?;
    } else {
        writeln!(out)?;
        report.write_table(&mut out, c.top_requests)?;
        // The JSON says it in vm.seccomp; the table's reader is told too.
        if config.seccomp != Seccomp::Trap {
            writeln!(out, "seccomp: {} (this run had no sandbox)", outcome.vm.seccomp)?;
        }
    }
    out.flush()?;
    drop(report);
    Ok(match outcome.end {
        VmEnd::GuestExit(status) => ExitCode::from(u8::try_from(status).unwrap_or(u8::MAX)),
        VmEnd::Reset | VmEnd::PowerOff | VmEnd::TimeLimit => ExitCode::SUCCESS,
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

/// GETs `target` from the API and parses its JSON, or says what went wrong.
fn api_json(sock: &std::path::Path, target: &str) -> anyhow::Result<serde_json::Value> {
    // Paged lists (`/v1/containers`) are followed to their end.
    let r = vmm::api::client::get_all(sock, target)?;
    let body: serde_json::Value = serde_json::from_str(&r.body)
        .with_context(|| format!("GET {target}: the answer is not JSON (HTTP {})", r.status))?;
    if r.status != 200 {
        let msg = body.get("error").and_then(|e| e.as_str()).unwrap_or_default();
        anyhow::bail!("GET {target}: HTTP {} {msg}", r.status);
    }
    Ok(body)
}

fn ms(v: &serde_json::Value) -> f64 {
    v.as_u64().unwrap_or(0) as f64 / 1e6
}

/// `resourceful report --api-sock PATH`: the live books as a table or JSON.
fn live_report(a: &ReportArgs) -> anyhow::Result<ExitCode> {
    let vm = api_json(&a.api_sock, "/v1/vm")?;
    let containers = api_json(&a.api_sock, "/v1/containers")?;
    let requests = api_json(&a.api_sock, "/v1/requests?order=cost&limit=10")?;
    if a.json {
        let all = serde_json::json!({ "vm": vm, "containers": containers, "requests": requests });
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "tenant {}  |  {} vCPU(s), {} MiB, {} boot of {}  |  up {:.1} ms  |  running",
        vm["tenant"].as_str().unwrap_or_default(),
        vm["vcpus"],
        vm["mem_mib"],
        vm["boot"].as_str().unwrap_or_default(),
        vm["kernel"].as_str().unwrap_or_default(),
        ms(&vm["uptime_ns"]),
    );
    println!(
        "\n{:<28} {:>10} {:>10} {:>10} {:>6} {:>6}",
        "CONTAINER", "EXITS", "HOST_MS", "RUN_MS", "REQS", "LIVE"
    );
    let row = |name: &str, c: &serde_json::Value, reqs: &serde_json::Value, live: &serde_json::Value| {
        println!(
            "{:<28} {:>10} {:>10.3} {:>10.3} {:>6} {:>6}",
            name,
            c["exits_total"]["count"].as_u64().unwrap_or(0),
            ms(&c["exits_total"]["host_ns"]),
            ms(&c["guest_run_ns"]),
            reqs.as_u64().unwrap_or(0),
            live.as_u64().unwrap_or(0),
        );
    };
    for c in containers.as_array().map(Vec::as_slice).unwrap_or_default() {
        let mut name = c["path"].as_str().unwrap_or_default().to_string();
        if c["retired"].as_bool() == Some(true) {
            name.push_str(" (retired)");
        }
        row(
            &name,
            &c["charges"],
            &c["requests"]["begun"],
            &c["requests"]["live"],
        );
    }
    row(
        "= tenant total",
        &vm["totals"],
        &serde_json::Value::Null,
        &serde_json::Value::Null,
    );
    let requests = requests.as_array().map(Vec::as_slice).unwrap_or_default();
    if !requests.is_empty() {
        println!(
            "\n{:<10} {:<24} {:>8} {:>8} {:>10} {:>10}",
            "REQUEST", "CONTAINER", "STATE", "EXITS", "HOST_MS", "RUN_MS"
        );
        for r in requests {
            println!(
                "{:<10} {:<24} {:>8} {:>8} {:>10.3} {:>10.3}",
                r["id"],
                r["container_path"].as_str().unwrap_or_default(),
                r["state"].as_str().unwrap_or_default(),
                r["charges"]["exits_total"]["count"].as_u64().unwrap_or(0),
                ms(&r["charges"]["exits_total"]["host_ns"]),
                ms(&r["charges"]["guest_run_ns"]),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `--duration SECS` in milliseconds, or what is wrong with it.
fn demo_duration_ms(secs: Option<f64>) -> anyhow::Result<Option<u64>> {
    match secs {
        None => Ok(None),
        // In range, so the cast is exact up to the rounding asked for.
        #[allow(clippy::cast_possible_truncation)]
        Some(s) if s.is_finite() && s > 0.0 && s <= 86_400.0 => Ok(Some((s * 1000.0).round() as u64)),
        Some(s) => anyhow::bail!("--duration {s}: expected seconds, more than 0 and at most 86400"),
    }
}

/// The flag given that only the single-VM demo takes, if any.
fn single_vm_flag(a: &DemoArgs) -> Option<&'static str> {
    let c = &a.common;
    let d = Limits::default();
    [
        (a.scenario != "demo", "--scenario"),
        (c.tenant != "default", "--tenant"),
        (c.json, "--json"),
        (c.report_json.is_some(), "--report-json"),
        (c.console.is_some(), "--console"),
        (!c.limit.is_empty(), "--limit"),
        (c.limits_file.is_some(), "--limits"),
        (c.max_containers != d.max_containers, "--max-containers"),
        (c.max_live_requests != d.max_live_requests, "--max-live-requests"),
        (c.retain_requests != d.retained_requests, "--retained-requests"),
        (c.sample_us != DEFAULT_SAMPLE_US, "--sample-us"),
        (c.no_accounting, "--no-accounting"),
        (c.metrics_addr.is_some(), "--metrics-addr"),
        (c.agent_sock.is_some(), "--agent-sock"),
        (c.otlp_endpoint.is_some(), "--otlp-endpoint"),
        (c.no_seccomp, "--no-seccomp"),
        (c.seccomp_log, "--seccomp-log"),
    ]
    .into_iter()
    .find_map(|(given, flag)| given.then_some(flag))
}

/// `resourceful demo` with `--vms N` > 1: the fleet of VMM processes.
fn fleet_demo(a: &DemoArgs) -> anyhow::Result<ExitCode> {
    if let Some(flag) = single_vm_flag(a) {
        anyhow::bail!(
            "{flag} is for one VM: add --vms 1 (the demo runs {} VMs otherwise)",
            a.vms
        );
    }
    let args = vmm::fleet::FleetArgs {
        vms: vmm::fleet::fleet_of(usize::from(a.vms)),
        vcpus: a.common.vcpus.unwrap_or(2),
        mem_mib: a.common.mem_mib,
        top_requests: a.common.top_requests,
        api_dir: a.common.api_sock.clone(),
        duration_ms: demo_duration_ms(a.duration)?,
    };
    install_stop_handlers();
    let outcome = vmm::fleet::run(&args)?;
    print!("{}", outcome.text);
    let holds = outcome
        .reports
        .iter()
        .all(|r| r["conservation"]["holds"].as_bool() == Some(true));
    Ok(if holds {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `resourceful top --api-sock PATH`: redraws the live view every interval
/// until the VM ends (its socket goes away), Ctrl-C, or `--iterations`.
fn top(a: &TopArgs) -> anyhow::Result<ExitCode> {
    use std::io::{IsTerminal, Write};
    use vmm::api::top;
    use vmm::api::top_host::run as run_host;
    if !(a.interval.is_finite() && (0.05..=3600.0).contains(&a.interval)) {
        anyhow::bail!(
            "--interval {}: expected seconds between 0.05 and 3600",
            a.interval
        );
    }
    install_stop_handlers();
    if a.api_sock.is_dir() {
        let every = std::time::Duration::from_secs_f64(a.interval);
        run_host(&a.api_sock, every, a.iterations).map_err(anyhow::Error::msg)?;
        return Ok(ExitCode::SUCCESS);
    }
    let tty = std::io::stdout().is_terminal();
    let mut prev: Option<top::Frame> = None;
    let mut shown = 0u64;
    while !vmm::vm::STOP_REQUESTED.load(Ordering::Acquire) {
        let frame = match top::fetch(&a.api_sock) {
            Ok(f) => f,
            // The VM ended (or was never there) after at least one frame.
            Err(top::TopError::Client(e)) if prev.is_some() => {
                println!("\nthe VM is gone ({e}); last frame above");
                return Ok(ExitCode::SUCCESS);
            }
            Err(e) => return Err(e).context("check --api-sock: is the VM running with --api-sock PATH?"),
        };
        let text = top::render(prev.as_ref(), &frame);
        let mut out = std::io::stdout().lock();
        // Clear and home on a terminal; separated frames otherwise.
        let _ = write!(out, "{}{text}", if tty { "\x1b[H\x1b[2J" } else { "\n" });
        let _ = out.flush();
        drop(out);
        prev = Some(frame);
        shown += 1;
        if a.iterations.is_some_and(|n| shown >= n) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_secs_f64(a.interval));
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    // Warnings, and where metrics are served (the port --metrics-addr
    // IP:0 picked).
    vmm::logging::init(&format!("warn,{}=info", vmm::api::server::LISTEN_LOG_TARGET));
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => {
            let cfg = config(a.kernel, a.cmdline, &a.common);
            let cfg = VmConfig {
                initrd: a.initrd,
                disks: a.disks,
                nets: a.nets,
                vsock: a.vsock,
                ..cfg
            };
            run_vm(cfg, &a.common)
        }
        Command::Demo(a) if a.vms > 1 => fleet_demo(&a),
        Command::Demo(a) => {
            let mut cmdline = format!("scenario={}", a.scenario);
            let mut common = a.common;
            // The demo shows several vCPUs sharing containers.
            common.vcpus.get_or_insert(2);
            match demo_duration_ms(a.duration) {
                Err(e) => Err(e),
                Ok(limit) => {
                    if limit.is_some() {
                        cmdline.push_str(" loop=1");
                    }
                    let cfg = VmConfig {
                        time_limit_ms: limit,
                        ..config(KernelSource::Builtin(Builtin::TestGuest), Some(cmdline), &common)
                    };
                    run_vm(cfg, &common)
                }
            }
        }
        Command::Report(a) => live_report(&a),
        Command::Top(a) => top(&a),
        Command::Trace(a) => match vmm::api::trace::run(&a) {
            Ok(all) => Ok(if all { ExitCode::SUCCESS } else { ExitCode::FAILURE }),
            Err(e) => Err(anyhow::anyhow!(e)),
        },
        Command::Flame(a) => vmm::api::flame_client::run(&a.api_sock, &a.resource, &a.output, a.folded)
            .map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("resourceful: {e:#}");
            ExitCode::FAILURE
        }
    }
}
