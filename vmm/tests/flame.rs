//! Flame graphs of charges (`GET /v1/flamegraph.svg`, `resourceful flame`)
//! of a real VM: the `demo` scenario with `hold=1` on 2 vCPUs, whose exits
//! per container and per request are known exactly
//! (docs/guest-scenarios.md) and whose books stop moving once it holds;
//! and the `blk` scenario (a virtio-blk disk) for block bytes per request
//! and the device thread's host time.
//!
//! The folded stacks are checked line by line against the scenario and add
//! up exactly to the VM's totals; the SVG parses as XML and each frame's
//! width is its share of the total (within the SVG's 4-decimal rounding)
//! and its count the sum of the stacks under it; the `resourceful flame`
//! subcommand writes the same; and headless Chromium renders the SVG to a
//! PNG under target/tmp (needs the `chromium` package).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Vmm;
use serde_json::Value;

/// The demo's exits less the exit-port write (`hold=1`): then it holds.
const HELD_EXITS: u64 = 3241;

fn get(sock: &Path, target: &str) -> vmm::api::client::Response {
    let r = vmm::api::client::get(sock, target).unwrap_or_else(|e| panic!("GET {target}: {e}"));
    assert_eq!(r.status, 200, "GET {target}: {}", r.body);
    r
}

fn totals(sock: &Path) -> Value {
    let vm: Value = serde_json::from_str(&get(sock, "/v1/vm").body).unwrap();
    vm["totals"].clone()
}

/// host_ns as the flame graph defines it, from `/v1/vm`'s totals.
fn host_ns(t: &Value) -> u64 {
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let exits: u64 = t["exits"]
        .as_object()
        .unwrap()
        .values()
        .map(|e| n(&e["host_ns"]))
        .sum();
    exits
        + n(&t["block"]["device_ns"])
        + n(&t["net"]["host_ns"])
        + n(&t["vsock"]["host_ns"])
        + n(&t["agent"]["host_ns"])
        + n(&t["ring"]["host_ns"])
}

/// Folded text as `stack → count`, each stack once.
fn parse_folded(text: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let (stack, count) = line.rsplit_once(' ').expect("`stack count`");
        let count: u64 = count.parse().unwrap_or_else(|_| panic!("count in {line:?}"));
        assert!(count > 0, "{line}");
        assert!(out.insert(stack.to_string(), count).is_none(), "{stack} twice");
    }
    out
}

/// The demo's exit counts by stack, with each request's `#seq` left out
/// (the two vCPUs interleave their begins).
fn demo_exits() -> BTreeMap<String, u64> {
    let mut want = BTreeMap::new();
    let mut add = |stack: String, v: u64| {
        if v > 0 {
            want.insert(stack, v);
        }
    };
    add("acme;unattributed;port_out".into(), 12 + 11);
    add("acme;unattributed;mmio_write".into(), 3);
    add("acme;unattributed;mmio_read".into(), 1);
    add("acme;frontend;(no request);port_out".into(), 40);
    add("acme;batch;(no request);mmio_write".into(), 400);
    for i in 1..=200u64 {
        let c = if i % 5 == 0 {
            "db"
        } else if i % 2 == 0 {
            "frontend/api"
        } else {
            "frontend"
        };
        add(format!("acme;{c};request {i};port_out"), (i % 7 + 1) * 3);
        add(format!("acme;{c};request {i};mmio_write"), i % 4);
        if c == "db" {
            add(format!("acme;{c};request {i};mmio_read"), 2);
        }
    }
    want
}

/// `request 7 #12` → `request 7`.
fn without_seq(stack: &str) -> String {
    stack
        .split(';')
        .map(|f| match f.split_once(" #") {
            Some((req, seq)) if f.starts_with("request ") && seq.bytes().all(|b| b.is_ascii_digit()) => req,
            _ => f,
        })
        .collect::<Vec<_>>()
        .join(";")
}

/// One drawn frame: its depth (0: inferno's `all`), name, count and width.
#[derive(Debug)]
struct Frame {
    depth: usize,
    name: String,
    count: u64,
    width_pct: f64,
}

/// The frames of an inferno SVG, and its `total_samples`.
fn svg_frames(svg: &str) -> (Vec<Frame>, u64) {
    let opt = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    let doc = roxmltree::Document::parse_with_options(svg, opt).expect("the SVG parses as XML");
    assert!(doc.root_element().has_tag_name("svg"));
    let frames_el = doc
        .descendants()
        .find(|n| n.has_tag_name("svg") && n.attribute("id") == Some("frames"))
        .expect("the frames container");
    let total: u64 = frames_el.attribute("total_samples").unwrap().parse().unwrap();
    let mut raw = Vec::new();
    for g in frames_el.children().filter(|n| n.has_tag_name("g")) {
        let title = g
            .children()
            .find(|n| n.has_tag_name("title"))
            .and_then(|t| t.text())
            .expect("a frame's title");
        let rect = g
            .children()
            .find(|n| n.has_tag_name("rect"))
            .expect("a frame's rect");
        let attr = |k: &str| rect.attribute(k).unwrap_or_else(|| panic!("rect {k}"));
        let ns = "http://github.com/jonhoo/inferno";
        let fg_w: u64 = rect
            .attribute((ns, "w"))
            .or_else(|| rect.attributes().find(|a| a.name() == "w").map(|a| a.value()))
            .expect("fg:w")
            .parse()
            .unwrap();
        let width_pct: f64 = attr("width").strip_suffix('%').unwrap().parse().unwrap();
        let y: u64 = attr("y").parse().unwrap();
        // "name (1,234 exits, 5.67%)": the count in the title is fg:w.
        let (name, rest) = title.rsplit_once(" (").expect("name (count …)");
        let shown: u64 = rest
            .split(' ')
            .next()
            .unwrap()
            .replace(',', "")
            .parse()
            .unwrap_or_else(|_| panic!("count in {title:?}"));
        assert_eq!(shown, fg_w, "{title}");
        raw.push((y, name.to_string(), fg_w, width_pct));
    }
    // Depth from y: the root is lowest on the page (largest y).
    let mut ys: Vec<u64> = raw.iter().map(|r| r.0).collect();
    ys.sort_unstable_by(|a, b| b.cmp(a));
    ys.dedup();
    let frames = raw
        .into_iter()
        .map(|(y, name, count, width_pct)| Frame {
            depth: ys.iter().position(|&v| v == y).unwrap(),
            name,
            count,
            width_pct,
        })
        .collect();
    (frames, total)
}

/// What the SVG must draw for `folded`: for each stack prefix, its depth,
/// its last frame's name and the sum of the counts under it (sorted).
fn expected_frames(folded: &BTreeMap<String, u64>) -> Vec<(usize, String, u64)> {
    let mut by_prefix: BTreeMap<String, (usize, String, u64)> = BTreeMap::new();
    let total: u64 = folded.values().sum();
    by_prefix.insert(String::new(), (0, "all".into(), total));
    for (stack, &v) in folded {
        let parts: Vec<&str> = stack.split(';').collect();
        for d in 1..=parts.len() {
            let e = by_prefix
                .entry(parts[..d].join(";"))
                .or_insert((d, parts[d - 1].to_string(), 0));
            e.2 += v;
        }
    }
    let mut v: Vec<_> = by_prefix.into_values().collect();
    v.sort();
    v
}

/// Checks an SVG against its folded stacks: every frame drawn, each with
/// the count under it and a width proportional to that count.
fn check_svg(svg: &str, folded: &BTreeMap<String, u64>) {
    let (frames, total) = svg_frames(svg);
    assert_eq!(total, folded.values().sum::<u64>(), "total_samples");
    for f in &frames {
        let want = 100.0 * f.count as f64 / total as f64;
        // `width="…%"` has 4 decimals.
        assert!(
            (f.width_pct - want).abs() <= 0.000_051,
            "{f:?}: width {} for {want}",
            f.width_pct
        );
    }
    let mut got: Vec<(usize, String, u64)> = frames
        .into_iter()
        .map(|f| (f.depth, if f.depth == 0 { "all".into() } else { f.name }, f.count))
        .collect();
    got.sort();
    assert_eq!(got, expected_frames(folded));
}

/// `resourceful flame` with `args`; its stdout.
fn flame_cli(sock: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_resourceful"))
        .arg("flame")
        .arg("--api-sock")
        .arg(sock)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("resourceful flame runs")
}

/// Headless Chromium's screenshot of `svg` into `png`.
fn screenshot(svg: &Path, png: &Path) {
    let bin = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("chromium is missing: apt-get install chromium");
    let _ = std::fs::remove_file(png);
    let profile = std::env::temp_dir().join(format!("resourceful-flame-chromium-{}", std::process::id()));
    let mut child = Command::new(bin)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg("--window-size=1200,400")
        .arg(format!("file://{}", svg.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium starts");
    // A guard, not a timed assertion: a hung browser must not hang the test.
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish its screenshot");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = std::fs::remove_dir_all(&profile);
    assert!(status.success(), "chromium: {status}");
    let png_bytes = std::fs::read(png).expect("chromium wrote the screenshot");
    assert!(png_bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    // IHDR: width and height, big-endian, after the signature and chunk head.
    let w = u32::from_be_bytes(png_bytes[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(png_bytes[20..24].try_into().unwrap());
    assert_eq!((w, h), (1200, 400));
}

#[test]
fn flame_graphs_of_a_live_vm_add_up_and_draw() {
    let mut vm = Vmm::start("acme", "scenario=demo hold=1", 2, &[]);
    let sock = vm.api_sock.clone();
    // Wait for the socket, then for the scenario to hold.
    let deadline = Instant::now() + Duration::from_secs(60);
    let held = loop {
        if sock.exists() {
            let t = totals(&sock);
            let n = t["exits_total"]["count"].as_u64().unwrap();
            assert!(n <= HELD_EXITS, "more exits than the scenario makes: {n}");
            if n == HELD_EXITS {
                break t;
            }
        }
        let err = vm.stderr();
        assert!(!err.contains("resourceful: "), "the VMM failed:\n{err}");
        assert!(Instant::now() < deadline, "the demo never held:\n{err}");
        std::thread::sleep(Duration::from_millis(20));
    };

    // Exits: exactly the scenario's, stack by stack.
    let exits = get(&sock, "/v1/flamegraph.svg?resource=exits&format=folded");
    assert_eq!(exits.content_type.as_deref(), Some("text/plain; charset=utf-8"));
    let exits = parse_folded(&exits.body);
    let by_request: BTreeMap<String, u64> = exits.iter().map(|(s, v)| (without_seq(s), *v)).collect();
    assert_eq!(by_request.len(), exits.len(), "one frame per request");
    assert_eq!(by_request, demo_exits());
    assert_eq!(exits.values().sum::<u64>(), HELD_EXITS);

    // host_ns: the folded counts add up to the VM's total exactly.
    let host = parse_folded(&get(&sock, "/v1/flamegraph.svg?resource=host_ns&format=folded").body);
    assert_eq!(host.values().sum::<u64>(), host_ns(&held));
    assert!(host
        .keys()
        .all(|s| s.split(';').count() == 4 || s.starts_with("acme;unattributed;")));
    // Every exit stack has its host time, under the same frames.
    for s in exits.keys() {
        let (head, reason) = s.rsplit_once(';').unwrap();
        assert!(host.contains_key(&format!("{head};exit {reason}")), "{s}");
    }

    // The SVGs: XML, each frame as wide as its share, as counted.
    let svg = get(&sock, "/v1/flamegraph.svg?resource=exits");
    assert_eq!(svg.content_type.as_deref(), Some("image/svg+xml"));
    check_svg(&svg.body, &exits);
    let host_svg = get(&sock, "/v1/flamegraph.svg?resource=host_ns");
    check_svg(&host_svg.body, &host);

    // The subcommand writes the same graph (the books hold still).
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let svg_path = out_dir.join("flame-exits.svg");
    let o = flame_cli(&sock, &["--resource", "exits", "-o", svg_path.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let written = std::fs::read_to_string(&svg_path).unwrap();
    check_svg(&written, &exits);
    let o = flame_cli(&sock, &["--resource", "exits", "--folded", "-o", "-"]);
    assert!(o.status.success());
    assert_eq!(parse_folded(&String::from_utf8(o.stdout).unwrap()), exits);
    let o = flame_cli(&sock, &["--resource", "host_ns"]);
    assert_eq!(parse_folded(&String::from_utf8(o.stdout).unwrap()), host);
    let o = flame_cli(&sock, &["--resource", "cpu", "-o", "x.svg"]);
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(
        !o.status.success() && err.contains("--resource cpu: expected one of host_ns"),
        "{err}"
    );
    assert!(!Path::new("x.svg").exists());
    let o = flame_cli(&sock, &["-o", "/nonexistent-dir/x.svg"]);
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(
        !o.status.success() && err.contains("-o /nonexistent-dir/x.svg: cannot write"),
        "{err}"
    );

    // The books did not move meanwhile: the graphs were of the final books.
    let after = totals(&sock);
    assert_eq!(after["exits_total"], held["exits_total"]);
    assert_eq!(host_ns(&after), host_ns(&held));

    // Rendered by a browser: a screenshot to look at.
    screenshot(&svg_path, &out_dir.join("flame-exits.png"));
    let host_path = out_dir.join("flame-host_ns.svg");
    std::fs::write(&host_path, &host_svg.body).unwrap();
    screenshot(&host_path, &out_dir.join("flame-host_ns.png"));

    // A held VM ends only when stopped: SIGTERM is an abnormal end (1).
    assert_eq!(vm.stop(), Some(1), "{}", vm.stderr());
    // With the VM gone, the subcommand says which flag to check.
    let o = flame_cli(&sock, &["--resource", "exits"]);
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(!o.status.success() && err.contains("check --api-sock"), "{err}");
}

#[test]
fn block_bytes_are_drawn_per_request_and_kind() {
    let disk = common::scratch("flame-disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let disk_arg = disk.to_str().unwrap().to_string();
    let mut vm = Vmm::start("blkco", "scenario=blk hold=1", 1, &["--disk", &disk_arg]);
    let sock = vm.api_sock.clone();
    // The blk scenario's exits less the exit-port write, and its 16 KiB
    // each way (docs/guest-scenarios.md): then it holds.
    let deadline = Instant::now() + Duration::from_secs(60);
    let held = loop {
        if sock.exists() {
            let t = totals(&sock);
            if t["exits_total"]["count"] == 22 + 34 + 14 - 1
                && t["block"]["bytes_read"] == 16_384
                && t["block"]["bytes_written"] == 16_384
            {
                break t;
            }
        }
        let err = vm.stderr();
        assert!(!err.contains("resourceful: "), "the VMM failed:\n{err}");
        assert!(Instant::now() < deadline, "the blk scenario never held:\n{err}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let folded = parse_folded(&get(&sock, "/v1/flamegraph.svg?resource=blk_bytes&format=folded").body);
    let got: BTreeMap<String, u64> = folded.iter().map(|(s, v)| (without_seq(s), *v)).collect();
    let mut want = BTreeMap::new();
    for r in 1..=4 {
        want.insert(format!("blkco;writer;request {r};blk write"), 4096);
    }
    for r in 11..=14 {
        want.insert(format!("blkco;reader;request {r};blk read"), 4096);
    }
    assert_eq!(got, want);
    check_svg(&get(&sock, "/v1/flamegraph.svg?resource=blk_bytes").body, &folded);
    // host_ns: the device thread's work on each request is its own detail.
    let host = parse_folded(&get(&sock, "/v1/flamegraph.svg?resource=host_ns&format=folded").body);
    assert_eq!(host.values().sum::<u64>(), host_ns(&held));
    let device: u64 = host
        .iter()
        .filter(|(s, _)| s.ends_with(";blk device"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(device, held["block"]["device_ns"].as_u64().unwrap());
    assert!(host
        .keys()
        .any(|s| s.starts_with("blkco;reader;request 11 #") && s.ends_with(";blk device")));
    assert_eq!(vm.stop(), Some(1), "{}", vm.stderr());
    let _ = std::fs::remove_file(&disk);
}
