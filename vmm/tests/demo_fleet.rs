//! `resourceful demo` with several VMs (the default: tenant `acme` with two,
//! `globex` with one, each its own VMM process) and `resourceful top
//! --api-sock DIR` over the live fleet. The `demo` scenario's counts are
//! exact (docs/guest-scenarios.md, `demo`, with `hold=1`: 3,241 exits per
//! VM), so the table's numbers are asserted as such.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn resourceful(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_resourceful"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("resourceful runs")
}

/// The fields of the table row that starts with `tenant vm container`.
fn row<'a>(text: &'a str, key: &[&str]) -> Vec<&'a str> {
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > key.len() && f[..key.len()] == *key)
        .unwrap_or_else(|| panic!("no row {key:?} in:\n{text}"))
}

/// The `total_samples` of an inferno SVG and the names of its frames.
fn svg_frames(svg: &str) -> (u64, Vec<String>) {
    let opt = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    let doc = roxmltree::Document::parse_with_options(svg, opt).expect("the SVG parses as XML");
    assert!(doc.root_element().has_tag_name("svg"));
    let frames = doc
        .descendants()
        .find(|n| n.has_tag_name("svg") && n.attribute("id") == Some("frames"))
        .expect("the frames container");
    let total = frames.attribute("total_samples").unwrap().parse().unwrap();
    let names = frames
        .descendants()
        .filter(|n| n.has_tag_name("title"))
        .filter_map(|t| t.text())
        .map(|t| t.rsplit_once(" (").map_or(t, |(n, _)| n).to_string())
        .collect();
    (total, names)
}

#[test]
fn three_vms_for_two_tenants_are_charged_exactly_conserved_and_drawn_in_one_graph() {
    let out = resourceful(&["demo"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // As root, the cross-VM pair too: acme-web calls globex-svc.
    let root = vmm::fleet_xvm::skip_reason().is_none();
    let n = if root { 5 } else { 3 };
    assert!(
        text.starts_with(&format!("{n} VMs for 2 tenants, each its own VMM process")),
        "{text}"
    );
    // Each VM's containers: the scenario's counts less the held exit write.
    for vm in [("acme", "acme-1"), ("acme", "acme-2"), ("globex", "globex-1")] {
        for (container, exits, reqs) in [
            ("unattributed", "27", "0"),
            ("frontend", "1151", "80"),
            ("frontend/api", "1031", "80"),
            ("db", "632", "40"),
            ("batch", "400", "0"),
        ] {
            let r = row(&text, &[vm.0, vm.1, container]);
            assert_eq!((r[3], r[6]), (exits, reqs), "{vm:?} {container}:\n{text}");
        }
    }
    let (acme, globex, all) = if root {
        // Each of the pair: 112 unattributed exits, its part's 3 TX
        // notifies (docs/guest-scenarios.md, `xvm-*`, `hold=1`).
        for (tenant, vm, part) in [("acme", "acme-web", "web"), ("globex", "globex-svc", "svc")] {
            let r = row(&text, &[tenant, vm, "unattributed"]);
            assert_eq!((r[3], r[6]), ("112", "0"), "{text}");
            let r = row(&text, &[tenant, vm, part]);
            assert_eq!((r[3], r[6]), ("3", "1"), "{text}");
        }
        (("3", "6597", "401"), ("2", "3356", "201"), 602)
    } else {
        assert!(text.contains("cross-VM request: skipped (not root"), "{text}");
        (("2", "6482", "400"), ("1", "3241", "200"), 600)
    };
    let r = row(&text, &["=", "acme"]);
    assert_eq!((r[2], r[4], r[7]), acme, "{text}");
    let r = row(&text, &["=", "globex"]);
    assert_eq!((r[2], r[4], r[7]), globex, "{text}");
    assert!(
        text.contains(&format!("costliest 10 of {all} requests")),
        "{text}"
    );
    let mut vms = vec!["acme-1", "acme-2", "globex-1"];
    if root {
        vms.extend(["globex-svc", "acme-web"]);
    }
    let resources = resource_lines().to_string();
    for vm in &vms {
        let r = row(&text, &["conservation", vm]);
        assert_eq!(
            r[2..],
            ["holds", "for", "all", &resources, "resources", "(end:", "signal)"],
            "{text}"
        );
    }
    if root {
        // The join: both parts, 3 calls and 3 answers each way, one TX
        // notify exit per frame sent.
        assert!(text.contains("2 part(s) in 2 VM(s)"), "{text}");
        let total = row(&text, &["=", "total"]);
        assert_eq!(total[2..4], ["2", "6"], "{text}");
        assert_eq!(total[6..], ["6", "1452", "6", "1452"], "{text}");
    }
    // The host graph: every VM under its tenant, all of their host time.
    let svg_path = text
        .lines()
        .find_map(|l| l.strip_prefix("flame graph of the whole host (host_ns, every VM under its tenant): "))
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no flame graph path in:\n{text}"));
    let svg = std::fs::read_to_string(&svg_path).expect("the SVG is where the demo says");
    let (total, names) = svg_frames(&svg);
    for name in vms
        .iter()
        .copied()
        .chain(["acme", "globex", "frontend/api", "batch"])
    {
        assert!(names.iter().any(|n| n == name), "no frame {name} in {names:?}");
    }
    assert!(total > 0);
    let dir = svg_path.parent().unwrap();
    let reports: Vec<serde_json::Value> = vms
        .iter()
        .map(|vm| {
            serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{vm}.json"))).unwrap()).unwrap()
        })
        .collect();
    // The graph's host time is the exits' and the devices' (ring, vsock, ...).
    let exits_ns: u64 = reports
        .iter()
        .map(|r| r["totals"]["exits_total"]["host_ns"].as_u64().unwrap())
        .sum();
    assert!(total >= exits_ns, "{total} < {exits_ns}");
    for r in &reports[..3] {
        assert_eq!(r["totals"]["exits_total"]["count"], 3241);
        assert_eq!(r["conservation"]["holds"], true);
    }
    // The disks are scratch and gone; the reports and graph are kept.
    assert!(!dir.join("acme-1.img").exists());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn flags_for_one_vm_are_refused_with_the_way_to_ask_for_one() {
    let out = resourceful(&["demo", "--json"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--json is for one VM: add --vms 1"), "{err}");
    let out = resourceful(&["demo", "--vms", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--vms"));
    // A VMM that cannot start fails the demo with the VMM's own words; the
    // logs are kept, the disks are not.
    let tmp = std::env::temp_dir().join(format!("resourceful-fleet-fail-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_resourceful"))
        .args(["demo", "--mem-mib", "1"])
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the VMM of acme-1 ended early"), "{err}");
    assert!(err.contains("--mem-mib 1 is out of range"), "{err}");
    let work = std::fs::read_dir(&tmp).unwrap().next().unwrap().unwrap().path();
    assert!(work.join("acme-1.log").exists());
    assert!(!work.join("acme-1.img").exists() && !work.join("globex-1.img").exists());
    let _ = std::fs::remove_dir_all(&tmp);
}

/// The demo kept live with `--duration`, stopped with SIGTERM when dropped.
struct LiveDemo(Child);

impl Drop for LiveDemo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn top(dir: &Path, n: &str) -> (bool, String) {
    let out = resourceful(&[
        "top",
        "--api-sock",
        dir.to_str().unwrap(),
        "-n",
        n,
        "--interval",
        "0.2",
    ]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn top_over_the_demo_socket_directory_shows_every_vm_grouped_by_tenant() {
    let dir = std::env::temp_dir().join(format!("resourceful-fleet-top-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // Nothing there yet: a clear error naming the flag.
    std::fs::create_dir_all(&dir).unwrap();
    let (ok, text) = top(&dir, "1");
    assert!(
        !ok && text.contains("--api-sock") && text.contains("no VM answers there"),
        "{text}"
    );
    // A socket no one serves (a VMM killed without cleaning up): named, not fatal.
    let stale = dir.join("zz-stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let (ok, text) = top(&dir, "1");
    assert!(!ok && text.contains("zz-stale.sock"), "{text}");
    let n = if vmm::fleet_xvm::skip_reason().is_none() {
        5
    } else {
        3
    };
    let mut demo = LiveDemo(
        Command::new(env!("CARGO_BIN_EXE_resourceful"))
            .args(["demo", "--duration", "60", "--api-sock", dir.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // The demo says when the fleet is live (set up, the cross-VM request made).
    let said = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let pipe = demo.0.stderr.take().unwrap();
    let sink = std::sync::Arc::clone(&said);
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
            sink.lock().unwrap().push_str(&(line + "\n"));
        }
    });
    // A guard against a hang, not a timed assertion.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !said.lock().unwrap().contains("the fleet is live for 60.0 s") {
        assert!(
            Instant::now() < deadline,
            "the fleet never went live: {}",
            said.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = loop {
        let (ok, text) = top(&dir, "2");
        if ok && text.contains(&format!("host: {n} VM(s) of 2 tenant(s) answering, 1 not\n")) {
            break text;
        }
        assert!(Instant::now() < deadline, "the fleet never answered:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let (acme_n, globex_n) = if n == 5 { (3, 2) } else { (2, 1) };
    assert!(
        text.contains(&format!("=== tenant acme: {acme_n} VM(s),")),
        "{text}"
    );
    assert!(
        text.contains(&format!("=== tenant globex: {globex_n} VM(s),")),
        "{text}"
    );
    let acme = text.find("=== tenant acme").unwrap();
    let globex = text.find("=== tenant globex").unwrap();
    for (vm, after) in [("acme-1", acme), ("acme-2", acme), ("globex-1", globex)] {
        let at = text
            .find(&format!("--- VM {vm} ("))
            .unwrap_or_else(|| panic!("no {vm} in:\n{text}"));
        assert!(at > after, "{vm} is not under its tenant:\n{text}");
    }
    assert!(acme < globex);
    assert!(
        text.contains(", 1 not\n") && text.contains(&format!("unreachable {}: ", stale.display())),
        "{text}"
    );
    // One socket alone is still the single-VM view.
    let one = resourceful(&[
        "top",
        "--api-sock",
        dir.join("globex-1.sock").to_str().unwrap(),
        "-n",
        "1",
    ]);
    let one_text = String::from_utf8_lossy(&one.stdout);
    assert!(
        one.status.success() && one_text.contains("tenant globex") && !one_text.contains("=== tenant"),
        "{one_text}"
    );
    // SIGTERM ends the live demo early, with its table.
    let pid = libc::pid_t::try_from(demo.0.id()).unwrap();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let out = std::mem::replace(&mut demo.0, Command::new("true").spawn().unwrap())
        .wait_with_output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{table}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let holds = format!(" holds for all {} resources", resource_lines());
    assert_eq!(table.matches(&holds).count(), n, "{table}");
    // The demo's own scratch directory (reports, consoles, the graph).
    if let Some(svg) = table.lines().find_map(|l| {
        l.rsplit_once(": ")
            .map(|(_, p)| p)
            .filter(|p| p.ends_with(".svg"))
    }) {
        let _ = std::fs::remove_dir_all(Path::new(svg).parent().unwrap());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A stop at any point (here: as soon as the first socket is there, while
/// the fleet is being set up) leaves no VMM (each removes its socket when
/// it ends) and, as root, no network namespace behind.
#[test]
fn a_stop_during_set_up_leaves_no_vmm_and_no_namespace() {
    let dir = std::env::temp_dir().join(format!("resourceful-fleet-stop-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let demo = Command::new(env!("CARGO_BIN_EXE_resourceful"))
        .args(["demo", "--duration", "60", "--api-sock", dir.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ns = format!("rsrc-demo{}", demo.id());
    let work = std::env::temp_dir().join(format!("resourceful-demo-{}", demo.id()));
    let mut demo = LiveDemo(demo);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !dir.join("acme-1.sock").exists() {
        assert!(Instant::now() < deadline, "no socket appeared");
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = libc::pid_t::try_from(demo.0.id()).unwrap();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let status = demo.0.wait().unwrap();
    assert!(status.code().is_some(), "the demo ended by itself: {status}");
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    let netns = Command::new("ip").args(["netns", "list"]).output();
    if let Ok(out) = netns {
        let list = String::from_utf8_lossy(&out.stdout);
        assert!(!list.contains(&ns), "{ns} left behind: {list}");
    }
    let _ = std::fs::remove_dir_all(&work);
    let _ = std::fs::remove_dir_all(&dir);
}

/// How many conservation lines a report has (one per resource the books
/// keep), from the books themselves.
fn resource_lines() -> usize {
    let acct = accounting::ledger::Accounting::new("t", 1, 1, Default::default());
    accounting::report::Report::build(&acct, Default::default())
        .conservation
        .lines
        .len()
}
