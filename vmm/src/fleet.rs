//! `resourceful demo` with several VMs: a small fleet of VMM *processes*
//! (the current executable's `run`, one per VM, as in production), each
//! with its own API socket, disk and vsock device, running the built-in
//! `demo` scenario for its tenant; then one per-tenant → VM → container →
//! request table built from their reports, conservation per VM, and one
//! flame graph of the whole host (every VM's folded stacks under its
//! tenant and VM name).
//!
//! The guests run `scenario=demo hold=1`: once done, each parks with its
//! books still (docs/guest-scenarios.md, `hold=1`), so the host graph is
//! read from final numbers; then each VMM is stopped with SIGTERM and
//! writes its report (`--report-json`). With a duration the guests loop
//! (`loop=1`) instead, for `resourceful top --api-sock DIR` to watch.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

use crate::api::client;
use crate::api::flame::{self, Folded, Resource};
use crate::fleet_xvm;
use crate::xvm_net::NetNs;

/// One VM of the fleet: its tenant and its name (its socket is `NAME.sock`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetVm {
    /// The tenant charged for the VM's work.
    pub tenant: String,
    /// The VM's name, unique in the fleet.
    pub name: String,
}

/// The default fleet: tenant `acme` with two VMs, `globex` with one.
pub fn default_fleet() -> Vec<FleetVm> {
    [("acme", "acme-1"), ("acme", "acme-2"), ("globex", "globex-1")]
        .iter()
        .map(|&(t, n)| FleetVm {
            tenant: t.into(),
            name: n.into(),
        })
        .collect()
}

/// The first `n` VMs of the fleet pattern: tenants `acme`, `globex`,
/// `initech` in turn after the default three.
pub fn fleet_of(n: usize) -> Vec<FleetVm> {
    let mut v = default_fleet();
    v.truncate(n);
    let tenants = ["acme", "globex", "initech"];
    for i in v.len()..n {
        let tenant = tenants[i % tenants.len()];
        v.push(FleetVm {
            tenant: tenant.into(),
            name: format!("{tenant}-{}", i + 1),
        });
    }
    v
}

/// What the fleet demo is asked to do.
#[derive(Clone, Debug)]
pub struct FleetArgs {
    /// The VMs, in order.
    pub vms: Vec<FleetVm>,
    /// vCPUs per VM.
    pub vcpus: u8,
    /// Guest RAM per VM, MiB.
    pub mem_mib: u64,
    /// Requests listed in the table (the costliest over the whole host).
    pub top_requests: usize,
    /// Where the API sockets go (`--api-sock DIR`); a scratch directory
    /// otherwise.
    pub api_dir: Option<PathBuf>,
    /// Keep the VMs live (looping) this long, then stop them.
    pub duration_ms: Option<u64>,
}

/// The exits a `demo` guest has taken once it parks under `hold=1`: the
/// scenario's 3,242 less the exit-port write (docs/guest-scenarios.md).
pub const DEMO_HELD_EXITS: u64 = 3241;

/// How long a VM may take to start and finish its scenario.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The scratch disk each VM gets (raw, zeroes).
const DISK_BYTES: u64 = 1 << 20;

/// The fleet's child VMMs: stopped (SIGTERM, then waited for) when dropped,
/// so an error or Ctrl-C in the demo leaves no VMM behind.
struct Children(Vec<Option<Child>>);

impl Children {
    fn stop(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        let mut c = self.0.get_mut(i)?.take()?;
        if let Ok(pid) = libc::pid_t::try_from(c.id()) {
            // SAFETY: kill(2) on our own child, which has not been waited for.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        c.wait().ok()
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for i in 0..self.0.len() {
            self.stop(i);
        }
    }
}

/// Files removed when dropped.
struct Scratch(Vec<PathBuf>);

impl Drop for Scratch {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// One VM's files.
struct Files {
    sock: PathBuf,
    disk: PathBuf,
    report: PathBuf,
    log: PathBuf,
}

fn tail(path: &Path) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

fn get_json(sock: &Path, target: &str) -> anyhow::Result<Value> {
    let r = client::get(sock, target)?;
    if r.status != 200 {
        bail!("GET {target}: HTTP {} {}", r.status, r.body.trim());
    }
    serde_json::from_str(&r.body).with_context(|| format!("GET {target}: not JSON"))
}

fn count(v: &Value) -> u64 {
    v["exits_total"]["count"].as_u64().unwrap_or(0)
}

fn ms(v: &Value) -> f64 {
    v.as_u64().unwrap_or(0) as f64 / 1e6
}

/// Adds one VM's folded stacks (`tenant;frame;… count` lines) to `into`,
/// with the VM's name as the frame after the tenant. Lines that are not of
/// that form are skipped and counted.
pub fn merge_folded(into: &mut Folded, vm: &str, text: &str) -> usize {
    let mut bad = 0;
    for line in text.lines().filter(|l| !l.is_empty()) {
        let parsed = line
            .rsplit_once(' ')
            .and_then(|(stack, n)| Some((stack, n.parse::<u64>().ok()?)));
        let Some((stack, n)) = parsed else {
            bad += 1;
            continue;
        };
        let (tenant, rest) = stack.split_once(';').unwrap_or((stack, ""));
        let mut s = format!("{tenant};{}", flame::frame_name(vm));
        if !rest.is_empty() {
            s.push(';');
            s.push_str(rest);
        }
        if n > 0 {
            let e = into.stacks.entry(s).or_insert(0);
            *e = e.saturating_add(n);
            into.total = into.total.saturating_add(n);
        }
    }
    bad
}

/// What the demo produced, for its caller (and tests) beyond the text.
#[derive(Debug)]
pub struct FleetOutcome {
    /// The table and lines, as printed.
    pub text: String,
    /// Each VM's final report (`--report-json`), in order.
    pub reports: Vec<Value>,
    /// The host flame graph written.
    pub svg: PathBuf,
    /// Where the reports, consoles and logs are kept.
    pub work_dir: PathBuf,
    /// The cross-VM request joined, when it was made.
    pub joined: Option<crate::api::trace::Joined>,
}

/// Starts one VMM (`run`) for `vm` with its files, in `netns` if given.
#[allow(clippy::too_many_arguments)]
fn spawn(
    exe: &Path,
    netns: Option<&str>,
    vm: &FleetVm,
    f: &Files,
    console: &Path,
    cmdline: &str,
    vcpus: u8,
    mem_mib: u64,
    extra: &[String],
) -> anyhow::Result<Child> {
    let log = std::fs::File::create(&f.log).with_context(|| format!("cannot create {}", f.log.display()))?;
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    cmd.arg("run")
        .args(["--kernel", "builtin:test-guest", "--cmdline", cmdline])
        .args(["--vcpus", &vcpus.to_string(), "--mem-mib", &mem_mib.to_string()])
        .args(["--tenant", &vm.tenant])
        .arg("--api-sock")
        .arg(&f.sock)
        .arg("--report-json")
        .arg(&f.report)
        .arg("--console")
        .arg(console)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start the VMM of {}", vm.name))
}

/// Fails if a stop was asked for or a VMM ended.
fn check_alive(children: &mut Children, vms: &[FleetVm], files: &[Files]) -> anyhow::Result<()> {
    if crate::vm::STOP_REQUESTED.load(Ordering::Acquire) {
        bail!("stopped by a signal; the VMMs are stopped");
    }
    for (i, c) in children.0.iter_mut().enumerate() {
        if let Some(Ok(Some(st))) = c.as_mut().map(Child::try_wait) {
            bail!(
                "the VMM of {} ended early ({st}):\n{}",
                vms[i].name,
                tail(&files[i].log)
            );
        }
    }
    Ok(())
}

/// Runs the fleet: starts every VMM, waits for the workload (and, as root,
/// makes the cross-VM request), draws the host flame graph, stops the VMMs
/// and builds the table from their reports.
pub fn run(a: &FleetArgs) -> anyhow::Result<FleetOutcome> {
    if a.vms.is_empty() {
        bail!("--vms: expected at least 1 VM");
    }
    let exe = std::env::current_exe().context("cannot find the resourceful executable to start the VMMs")?;
    let work = std::env::temp_dir().join(format!("resourceful-demo-{}", std::process::id()));
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    let sock_dir = a.api_dir.clone().unwrap_or_else(|| work.join("sock"));
    std::fs::create_dir_all(&sock_dir)
        .with_context(|| format!("--api-sock {}: cannot create the directory", sock_dir.display()))?;
    let skip = fleet_xvm::skip_reason();
    let pair = fleet_xvm::pair(&work);
    let mut vms = a.vms.clone();
    if skip.is_none() {
        vms.extend(pair.iter().map(|p| FleetVm {
            tenant: p.tenant.into(),
            name: p.name.into(),
        }));
    }
    let files: Vec<Files> = vms
        .iter()
        .map(|vm| Files {
            sock: sock_dir.join(format!("{}.sock", vm.name)),
            disk: work.join(format!("{}.img", vm.name)),
            report: work.join(format!("{}.json", vm.name)),
            log: work.join(format!("{}.log", vm.name)),
        })
        .collect();
    let console = |vm: &FleetVm| work.join(format!("{}.console", vm.name));
    let cmdline = if a.duration_ms.is_some() {
        "scenario=demo loop=1"
    } else {
        "scenario=demo hold=1"
    };
    // Declared before the VMMs, so removed after they are stopped (the
    // disks also when the demo fails).
    let _disks = Scratch(files.iter().map(|f| f.disk.clone()).collect());
    let mut ns: Option<NetNs> = None;
    let mut children = Children(Vec::new());
    for (i, (vm, f)) in a.vms.iter().zip(&files).enumerate() {
        let disk = std::fs::File::create(&f.disk).and_then(|d| d.set_len(DISK_BYTES));
        disk.with_context(|| format!("cannot create the disk {}", f.disk.display()))?;
        let extra = [
            "--disk".to_string(),
            f.disk.display().to_string(),
            "--vsock".into(),
            format!("cid={}", 3 + i),
        ];
        let child = spawn(
            &exe,
            None,
            vm,
            f,
            &console(vm),
            cmdline,
            a.vcpus,
            a.mem_mib,
            &extra,
        )?;
        children.0.push(Some(child));
    }
    let mut joined = None;
    if skip.is_none() {
        let n = a.vms.len();
        let netns: &NetNs =
            ns.insert(NetNs::new(&format!("rsrc-demo{}", std::process::id())).map_err(anyhow::Error::msg)?);
        let mut agents = Vec::new();
        for (k, p) in pair.iter().enumerate() {
            let (vm, f) = (&vms[n + k], &files[n + k]);
            let child = spawn(
                &exe,
                Some(&netns.name),
                vm,
                f,
                &console(vm),
                &p.cmdline,
                1,
                64,
                &p.flags,
            )?;
            children.0.push(Some(child));
            let alive = &mut || check_alive(&mut children, &vms, &files);
            fleet_xvm::wait_for_path(&p.agent_sock, alive)?;
            fleet_xvm::wait_for_path(&f.sock, alive)?;
            let agent = if k == 0 {
                fleet_xvm::begin_server(&p.agent_sock)
            } else {
                fleet_xvm::begin_client(&p.agent_sock)
            };
            agents.push(agent.map_err(|e| anyhow::anyhow!("{}'s agent: {e}", vm.name))?);
        }
        let mut agents: [_; 2] = agents.try_into().map_err(|_| anyhow::anyhow!("two agents"))?;
        let socks = [files[n].sock.as_path(), files[n + 1].sock.as_path()];
        fleet_xvm::call(netns, socks, &mut agents, &mut || {
            check_alive(&mut children, &vms, &files)
        })?;
        joined = Some(fleet_xvm::joined(&[
            files[n + 1].sock.clone(),
            files[n].sock.clone(),
        ]));
    }
    // Every VMM serving, and (without a duration) every guest done.
    let start = Instant::now();
    for (vm, f) in a.vms.iter().zip(&files) {
        loop {
            check_alive(&mut children, &vms, &files)?;
            let done = get_json(&f.sock, "/v1/vm")
                .ok()
                .is_some_and(|v| a.duration_ms.is_some() || count(&v["totals"]) >= DEMO_HELD_EXITS);
            if done {
                break;
            }
            if start.elapsed() > READY_TIMEOUT {
                bail!(
                    "the VM {} did not finish its workload in {} s:\n{}",
                    vm.name,
                    READY_TIMEOUT.as_secs(),
                    tail(&f.log)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    if let Some(d) = a.duration_ms {
        eprintln!(
            "resourceful: the fleet is live for {:.1} s (Ctrl-C ends it early); watch it with: resourceful top --api-sock {}",
            d as f64 / 1000.0,
            sock_dir.display()
        );
        let until = Instant::now() + Duration::from_millis(d);
        while Instant::now() < until && !crate::vm::STOP_REQUESTED.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // The whole host's graph, read live.
    let mut host = Folded::default();
    let mut bad = 0;
    for (vm, f) in vms.iter().zip(&files) {
        let target = "/v1/flamegraph.svg?resource=host_ns&format=folded";
        let r = client::get(&f.sock, target).with_context(|| format!("GET {target} from {}", vm.name))?;
        if r.status != 200 {
            bail!("GET {target} from {}: HTTP {}", vm.name, r.status);
        }
        bad += merge_folded(&mut host, &vm.name, &r.body);
    }
    if bad > 0 {
        log::warn!("{bad} malformed folded-stack lines from the VMs were skipped");
    }
    let tenants: std::collections::BTreeSet<&str> = vms.iter().map(|v| v.tenant.as_str()).collect();
    let title = format!(
        "host_ns of the host: {} VMs, {} tenants",
        vms.len(),
        tenants.len()
    );
    let subtitle = "frames: tenant; VM; container; request; detail (docs/demo.md)";
    let svg_bytes = flame::svg_titled(&host, Resource::HostNs, &title, subtitle)
        .context("cannot draw the flame graph")?;
    let svg = work.join("host-flamegraph.svg");
    std::fs::write(&svg, svg_bytes).with_context(|| format!("cannot write {}", svg.display()))?;
    // Stop every VMM; each writes its report.
    let mut reports = Vec::new();
    for (i, (vm, f)) in vms.iter().zip(&files).enumerate() {
        children.stop(i);
        let text = std::fs::read_to_string(&f.report)
            .with_context(|| format!("the VMM of {} wrote no report:\n{}", vm.name, tail(&f.log)))?;
        reports.push(
            serde_json::from_str::<Value>(&text)
                .with_context(|| format!("{}: not JSON", f.report.display()))?,
        );
    }
    drop(ns);
    let mut text = table(a, &vms, &reports, &sock_dir, &svg);
    match (&joined, &skip) {
        (Some(j), _) => {
            let _ = writeln!(
                text,
                "\nthe distributed request {} (acme-web calls globex-svc over a bridge in a private network namespace), joined by its trace id:",
                fleet_xvm::TRACE
            );
            text.push_str(&crate::api::trace::render(j));
        }
        (None, Some(why)) => {
            let _ = writeln!(text, "\ncross-VM request: skipped ({why})");
        }
        (None, None) => {}
    }
    Ok(FleetOutcome {
        text,
        reports,
        svg,
        work_dir: work,
        joined,
    })
}

/// The per-tenant → VM → container table, the costliest requests, and
/// conservation per VM.
fn table(a: &FleetArgs, vms: &[FleetVm], reports: &[Value], sock_dir: &Path, svg: &Path) -> String {
    let mut out = String::new();
    let tenants: std::collections::BTreeSet<&str> = vms.iter().map(|v| v.tenant.as_str()).collect();
    let _ = writeln!(
        out,
        "{} VMs for {} tenants, each its own VMM process ({} vCPU(s), {} MiB, a {} KiB disk, vsock); API sockets in {}",
        vms.len(),
        tenants.len(),
        a.vcpus,
        a.mem_mib,
        DISK_BYTES >> 10,
        sock_dir.display()
    );
    let _ = writeln!(
        out,
        "\n{:<10} {:<10} {:<16} {:>8} {:>9} {:>9} {:>6}",
        "TENANT", "VM", "CONTAINER", "EXITS", "HOST_MS", "RUN_MS", "REQS"
    );
    let mut by_tenant: BTreeMap<&str, Vec<(&FleetVm, &Value)>> = BTreeMap::new();
    for (vm, r) in vms.iter().zip(reports) {
        by_tenant.entry(vm.tenant.as_str()).or_default().push((vm, r));
    }
    for (tenant, vms) in &by_tenant {
        let (mut exits, mut host, mut run, mut reqs) = (0u64, 0u64, 0u64, 0u64);
        for (vm, r) in vms {
            for c in r["containers"].as_array().map(Vec::as_slice).unwrap_or_default() {
                let ch = &c["charges"];
                let begun = c["requests"]["begun"].as_u64().unwrap_or(0);
                let _ = writeln!(
                    out,
                    "{:<10} {:<10} {:<16} {:>8} {:>9.3} {:>9.3} {:>6}",
                    tenant,
                    vm.name,
                    c["path"].as_str().unwrap_or_default(),
                    count(ch),
                    ms(&ch["exits_total"]["host_ns"]),
                    ms(&ch["guest_run_ns"]),
                    begun
                );
                reqs += begun;
            }
            let t = &r["totals"];
            exits += count(t);
            host += t["exits_total"]["host_ns"].as_u64().unwrap_or(0);
            run += t["guest_run_ns"].as_u64().unwrap_or(0);
        }
        let _ = writeln!(
            out,
            "{:<10} {:<10} {:<16} {:>8} {:>9.3} {:>9.3} {:>6}",
            format!("= {tenant}"),
            format!("{} VM(s)", vms.len()),
            "",
            exits,
            host as f64 / 1e6,
            run as f64 / 1e6,
            reqs
        );
    }
    // The costliest requests over the whole host, by host time.
    let mut all: Vec<(&FleetVm, &Value)> = Vec::new();
    for (vm, r) in vms.iter().zip(reports) {
        for q in r["requests"].as_array().map(Vec::as_slice).unwrap_or_default() {
            all.push((vm, q));
        }
    }
    let host_ns = |q: &Value| q["charges"]["exits_total"]["host_ns"].as_u64().unwrap_or(0);
    all.sort_by_key(|x| std::cmp::Reverse(host_ns(x.1)));
    let shown = all.len().min(a.top_requests);
    let _ = writeln!(out, "\ncostliest {shown} of {} requests (host time):", all.len());
    let _ = writeln!(
        out,
        "{:<10} {:<10} {:<16} {:>8} {:>8} {:>9}",
        "TENANT", "VM", "CONTAINER", "REQUEST", "EXITS", "HOST_MS"
    );
    for (vm, q) in all.iter().take(shown) {
        let _ = writeln!(
            out,
            "{:<10} {:<10} {:<16} {:>8} {:>8} {:>9.3}",
            vm.tenant,
            vm.name,
            q["container_path"].as_str().unwrap_or_default(),
            q["id"].as_u64().unwrap_or(0),
            count(&q["charges"]),
            host_ns(q) as f64 / 1e6
        );
    }
    let _ = writeln!(out);
    for (vm, r) in vms.iter().zip(reports) {
        let c = &r["conservation"];
        let lines = c["lines"].as_array().map_or(0, Vec::len);
        let holds = c["holds"].as_bool() == Some(true);
        let _ = writeln!(
            out,
            "conservation {:<10} {} for all {lines} resources (end: {})",
            vm.name,
            if holds { "holds" } else { "FAILS" },
            r["vm"]["end"].as_str().unwrap_or_default()
        );
    }
    let _ = writeln!(
        out,
        "\nflame graph of the whole host (host_ns, every VM under its tenant): {}",
        svg.display()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folded_stacks_get_the_vm_after_the_tenant_and_bad_lines_are_counted() {
        let mut f = Folded::default();
        let bad = merge_folded(
            &mut f,
            "vm;1",
            "acme;db;exits 5\nacme 2\nnonsense\nacme;x notanumber\n\nacme;db;exits 0\n",
        );
        assert_eq!(bad, 2);
        assert_eq!(f.total, 7);
        assert_eq!(f.stacks.get("acme;vm_1;db;exits"), Some(&5));
        assert_eq!(f.stacks.get("acme;vm_1"), Some(&2));
        assert_eq!(f.stacks.len(), 2);
    }

    #[test]
    fn the_fleet_pattern_starts_with_the_default_three() {
        assert_eq!(fleet_of(3), default_fleet());
        let five = fleet_of(5);
        assert_eq!(five[3].name, "acme-4");
        assert_eq!(five[4].tenant, "globex");
        assert_eq!(fleet_of(1).len(), 1);
    }
}
