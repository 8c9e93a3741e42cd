//! `resourceful-agent`: run inside a Linux guest (see `docs/agent-protocol.md`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use guest_agent::agent::{Agent, Options, TaggingMode, DEFAULT_BUFFER_BYTES};
use guest_agent::collect::Collector;
use guest_agent::config::Config;
use guest_agent::link::Endpoint;
use guest_agent::local::DEFAULT_SOCKET;

/// Reports this guest's processes and cgroups, and the containers, requests
/// and flows its applications declare, to the Resourceful VMM.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// The VMM: vsock:CID:PORT (CID 2 is the host) or unix:PATH.
    #[arg(long, default_value = "vsock:2:1024")]
    connect: Endpoint,
    /// Unix socket of the local interface for applications (mode 0660).
    #[arg(long, default_value = DEFAULT_SOCKET)]
    listen: PathBuf,
    /// Do not serve the local interface.
    #[arg(long)]
    no_listen: bool,
    /// Container rules (JSON; see docs/agent-protocol.md, "The agent").
    #[arg(long)]
    config: Option<PathBuf>,
    /// Report interval, ms.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(10..=3_600_000))]
    interval_ms: u32,
    /// Bytes of reports kept while the VMM is unreachable.
    #[arg(long, default_value_t = DEFAULT_BUFFER_BYTES)]
    buffer_bytes: usize,
    /// The proc filesystem.
    #[arg(long, default_value = "/proc")]
    proc_root: PathBuf,
    /// The cgroup v2 root (default: the cgroup2 mount in /proc/self/mountinfo).
    #[arg(long)]
    cgroup_root: Option<PathBuf>,
    /// Do not list threads (their switches are still summed per process).
    #[arg(long)]
    no_threads: bool,
    /// eBPF slot tagging (docs/tagging.md): `auto` runs it where
    /// the kernel allows and goes on without it otherwise, `on` refuses to
    /// start without it, `off` never loads it.
    #[arg(long, value_enum, default_value_t = TaggingMode::Auto)]
    tagging: TaggingMode,
    /// The bpffs directory the tagger is pinned in, so that it outlives an
    /// agent restart (mounted at /sys/fs/bpf if no bpffs is there).
    #[arg(long, default_value = guest_agent::tagger::DEFAULT_PIN_DIR)]
    bpf_pin_dir: PathBuf,
    /// Do not pin the tagger: it stops tagging when this agent exits.
    #[arg(long)]
    no_bpf_pin: bool,
    /// Print one context report as JSON on stdout and exit.
    #[arg(long)]
    once: bool,
    /// Be a client of a running agent's local interface (`--listen`): send
    /// each line of stdin, print each reply; the connection, and the
    /// requests and ad hoc containers it holds, lasts until stdin ends.
    /// Exit status 1 if any reply was not ok.
    #[arg(long, conflicts_with = "once")]
    client: bool,
}

/// `--client`: stdin lines to the local interface, replies to stdout.
fn client(socket: &std::path::Path) -> anyhow::Result<bool> {
    use std::io::{BufRead, BufReader, Write};
    let s = std::os::unix::net::UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot connect to the agent's local interface at {} (is resourceful-agent running? use --listen PATH)",
            socket.display()
        )
    })?;
    let mut replies = BufReader::new(s.try_clone()?);
    let mut w = &s;
    let mut all_ok = true;
    let mut out = std::io::stdout().lock();
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        writeln!(w, "{line}")?;
        let mut reply = String::new();
        if replies.read_line(&mut reply)? == 0 {
            anyhow::bail!("the agent closed the connection");
        }
        all_ok &= reply.starts_with("{\"ok\":true");
        out.write_all(reply.as_bytes())?;
        out.flush()?;
    }
    Ok(all_ok)
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    if cli.client {
        let ok = client(&cli.listen)?;
        std::process::exit(if ok { 0 } else { 1 });
    }
    let config = match &cli.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    let cgroup_root = cli
        .cgroup_root
        .clone()
        .or_else(guest_agent::cgroup::host_cgroup2_mount);
    if cgroup_root.is_none() {
        log::warn!("no cgroup2 mount found; reporting processes only (use --cgroup-root)");
    }
    if cli.once {
        let mut c = Collector::new(&cli.proc_root, cgroup_root, cli.interval_ms);
        c.set_list_threads(!cli.no_threads);
        let snap = c.snapshot();
        let report = c.report(snap, Default::default());
        serde_json::to_writer_pretty(std::io::stdout().lock(), &report)?;
        println!();
        return Ok(());
    }
    let opts = Options {
        connect: cli.connect,
        listen: (!cli.no_listen).then_some(cli.listen),
        config,
        interval: Duration::from_millis(u64::from(cli.interval_ms)),
        buffer_bytes: cli.buffer_bytes,
        proc_root: cli.proc_root,
        cgroup_root,
        list_threads: !cli.no_threads,
        tagging: cli.tagging,
        bpf_pin_dir: (!cli.no_bpf_pin).then_some(cli.bpf_pin_dir),
    };
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let handler: extern "C" fn(libc::c_int) = on_signal;
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe.
        unsafe { libc::signal(sig, handler as libc::sighandler_t) };
    }
    let agent = Agent::start(opts).context("starting the agent")?;
    log::info!("resourceful-agent {} started", env!("CARGO_PKG_VERSION"));
    while !STOP.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
    }
    log::info!("stopping");
    agent.stop();
    Ok(())
}
