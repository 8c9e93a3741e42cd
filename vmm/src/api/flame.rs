//! `GET /v1/flamegraph.svg`: a flame graph of one resource's charges, with
//! frames `tenant;container;request;detail` (a request's exits by reason,
//! its device work by kind), drawn by `inferno`, or the same as folded
//! stacks (`?format=folded`) for other tools. See docs/flamegraphs.md.
//!
//! The stacks are read from the live books through `accounting::query`
//! (short lock holds, writers never stopped) and are bounded whatever the
//! VM holds: at most [`MAX_CONTAINER_FRAMES`] containers and
//! [`MAX_REQUEST_FRAMES`] requests get frames of their own, the largest by
//! the resource drawn; the rest are folded into one `(N other containers)`
//! frame under the tenant and one `(other requests)` frame per container.
//!
//! **Conservation by construction.** Each container's stacks are cut from
//! its own total of each detail, read once: its listed requests first, then
//! `(other requests)` (the rest of its requests' sum), then `(no request)`
//! (what is left), each at most what remains. So the folded counts add up
//! exactly to the sum of the containers' totals read, whatever the guest
//! did meanwhile; on books that are not moving that sum is the VM's total.
//! Nothing here is allocated before a request asks for a graph.

use std::collections::{BTreeMap, HashMap};

use accounting::ledger::Accounting;
use accounting::resource::{Charges, ExitReason};

use super::Reply;

/// Containers with frames of their own; the rest share one frame.
pub const MAX_CONTAINER_FRAMES: usize = 100;
/// Requests with frames of their own (over all containers); the rest of a
/// container's requests share one frame.
pub const MAX_REQUEST_FRAMES: usize = 200;

/// The `Content-Type` of the SVG.
const SVG: &str = "image/svg+xml";
/// The `Content-Type` of folded stacks.
const FOLDED: &str = "text/plain; charset=utf-8";

/// A resource a flame graph can show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    /// Host CPU ns: exits' handling by reason, and device, agent and ring
    /// work by kind.
    HostNs,
    /// Exit counts by reason.
    Exits,
    /// Sampled guest run time, ns.
    RunNs,
    /// virtio-blk bytes, read and written.
    BlkBytes,
    /// virtio-net bytes, sent and received.
    NetBytes,
    /// virtio-vsock payload bytes, sent and received.
    VsockBytes,
}

impl Resource {
    /// Every resource, in the order the docs list them.
    pub const ALL: [Resource; 6] = [
        Self::HostNs,
        Self::Exits,
        Self::RunNs,
        Self::BlkBytes,
        Self::NetBytes,
        Self::VsockBytes,
    ];

    /// Its name in `?resource=`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::HostNs => "host_ns",
            Self::Exits => "exits",
            Self::RunNs => "run_ns",
            Self::BlkBytes => "blk_bytes",
            Self::NetBytes => "net_bytes",
            Self::VsockBytes => "vsock_bytes",
        }
    }

    /// The resource named `s`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.name() == s)
    }

    /// The unit of its counts, as the graph labels them.
    pub const fn unit(self) -> &'static str {
        match self {
            Self::HostNs | Self::RunNs => "ns",
            Self::Exits => "exits",
            Self::BlkBytes | Self::NetBytes | Self::VsockBytes => "bytes",
        }
    }

    /// The details of `c` (the leaf frames) and their values, always the
    /// same details in the same order.
    pub fn details(self, c: &Charges) -> Vec<(&'static str, u64)> {
        let exits = |f: fn(&accounting::resource::ExitCharge) -> u64, prefix: bool| {
            ExitReason::ALL.into_iter().map(move |r| {
                let name = if prefix { exit_detail(r) } else { r.name() };
                (name, f(&c.exits[r.index()]))
            })
        };
        match self {
            Self::HostNs => exits(|e| e.host_ns, true)
                .chain([
                    ("blk device", c.block.device_ns),
                    ("net device", c.net.host_ns),
                    ("vsock device", c.vsock.host_ns),
                    ("agent", c.agent.host_ns),
                    ("ring", c.ring.host_ns),
                ])
                .collect(),
            Self::Exits => exits(|e| e.count, false).collect(),
            Self::RunNs => vec![("guest run", c.guest_run_ns)],
            Self::BlkBytes => vec![
                ("blk read", c.block.bytes_read),
                ("blk write", c.block.bytes_written),
            ],
            Self::NetBytes => vec![("net tx", c.net.tx_bytes), ("net rx", c.net.rx_bytes)],
            Self::VsockBytes => vec![("vsock tx", c.vsock.tx_bytes), ("vsock rx", c.vsock.rx_bytes)],
        }
    }

    /// The sum of its details in `c`, without listing them (it ranks every
    /// request of the VM).
    pub fn total(self, c: &Charges) -> u64 {
        let exits = |f: fn(&accounting::resource::ExitCharge) -> u64| {
            c.exits.iter().fold(0u64, |acc, e| acc.saturating_add(f(e)))
        };
        let sum = |v: &[u64]| v.iter().fold(0u64, |acc, x| acc.saturating_add(*x));
        match self {
            Self::HostNs => sum(&[
                exits(|e| e.host_ns),
                c.block.device_ns,
                c.net.host_ns,
                c.vsock.host_ns,
                c.agent.host_ns,
                c.ring.host_ns,
            ]),
            Self::Exits => exits(|e| e.count),
            Self::RunNs => c.guest_run_ns,
            Self::BlkBytes => sum(&[c.block.bytes_read, c.block.bytes_written]),
            Self::NetBytes => sum(&[c.net.tx_bytes, c.net.rx_bytes]),
            Self::VsockBytes => sum(&[c.vsock.tx_bytes, c.vsock.rx_bytes]),
        }
    }
}

/// `exit <reason>`: the detail of an exit's host time.
fn exit_detail(r: ExitReason) -> &'static str {
    match r {
        ExitReason::PortIn => "exit port_in",
        ExitReason::PortOut => "exit port_out",
        ExitReason::MmioRead => "exit mmio_read",
        ExitReason::MmioWrite => "exit mmio_write",
        ExitReason::Shutdown => "exit shutdown",
        ExitReason::InternalError => "exit internal_error",
        ExitReason::Other => "exit other",
    }
}

/// A name the guest chose, made safe as one frame of a folded stack: `;`
/// (the frame separator) becomes `_`, control characters (line breaks)
/// become `?`.
pub fn frame_name(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            ';' => '_',
            c if c.is_control() => '?',
            c => c,
        })
        .collect()
}

/// Folded stacks of one resource: each stack once, sorted, with its count.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Folded {
    /// `frame;frame;…` → count (never 0).
    pub stacks: BTreeMap<String, u64>,
    /// The sum of the counts: the containers' totals as read.
    pub total: u64,
}

impl Folded {
    fn add(&mut self, stack: String, v: u64) {
        if v > 0 {
            let e = self.stacks.entry(stack).or_insert(0);
            *e = e.saturating_add(v);
            self.total = self.total.saturating_add(v);
        }
    }

    /// The folded text: one `stack count` line per stack.
    pub fn text(&self) -> String {
        let mut out = String::with_capacity(self.stacks.len() * 64);
        for (stack, v) in &self.stacks {
            out.push_str(stack);
            out.push(' ');
            out.push_str(&v.to_string());
            out.push('\n');
        }
        out
    }
}

/// The folded stacks of resource `r` on `acct`'s live books.
pub fn fold(acct: &Accounting, r: Resource) -> Folded {
    // Requests first, containers after: a request's charge lands in its
    // container's ledger before its own block, so the containers read later
    // hold at least what the requests read earlier showed.
    let (top, _) = acct.top_requests_by(MAX_REQUEST_FRAMES, |c| r.total(c));
    let (views, _) = acct.containers_view();
    let tenant = frame_name(acct.tenant());
    let mut order: Vec<(u64, usize)> = views
        .iter()
        .map(|v| (r.total(&v.charges), v.row.index))
        .filter(|(t, _)| *t > 0)
        .collect();
    // Largest first; `unattributed` (index 0) always keeps its own frame.
    order.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut shown: Vec<usize> = order.iter().map(|(_, i)| *i).take(MAX_CONTAINER_FRAMES).collect();
    if !shown.contains(&0) && order.iter().any(|(_, i)| *i == 0) && !shown.is_empty() {
        let last = shown.len() - 1;
        shown[last] = 0;
    }
    let mut by_container: HashMap<usize, Vec<&accounting::registry::RequestRow>> = HashMap::new();
    for row in &top {
        by_container.entry(row.container).or_default().push(row);
    }
    let mut out = Folded::default();
    let mut others = 0usize;
    let mut other_details: Vec<(&'static str, u64)> = Vec::new();
    for v in &views {
        if r.total(&v.charges) == 0 {
            continue;
        }
        let details = r.details(&v.charges);
        if !shown.contains(&v.row.index) {
            others += 1;
            if other_details.is_empty() {
                other_details = details;
            } else {
                for (o, (_, d)) in other_details.iter_mut().zip(details) {
                    o.1 = o.1.saturating_add(d);
                }
            }
            continue;
        }
        if v.row.index == 0 {
            for (d, x) in details {
                out.add(format!("{tenant};unattributed;{d}"), x);
            }
            continue;
        }
        let path = frame_name(&v.row.path);
        let mut left: Vec<u64> = details.iter().map(|(_, x)| *x).collect();
        let mut listed = vec![0u64; left.len()];
        for req in by_container
            .get(&v.row.index)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let frame = format!("request {} #{}", req.guest_id, req.seq);
            for (k, (d, x)) in r.details(&req.charges).into_iter().enumerate() {
                let x = x.min(left[k]);
                left[k] -= x;
                listed[k] = listed[k].saturating_add(x);
                out.add(format!("{tenant};{path};{frame};{d}"), x);
            }
        }
        let in_requests = r.details(&v.row.charged);
        for (k, (d, all)) in in_requests.into_iter().enumerate() {
            let x = all.saturating_sub(listed[k]).min(left[k]);
            left[k] -= x;
            out.add(format!("{tenant};{path};(other requests);{d}"), x);
        }
        for (k, (d, _)) in details.iter().enumerate() {
            out.add(format!("{tenant};{path};(no request);{d}"), left[k]);
        }
    }
    for (d, x) in other_details {
        out.add(format!("{tenant};({others} other containers);{d}"), x);
    }
    out
}

/// `f` drawn as an SVG flame graph of `r` for `tenant`.
pub fn svg(f: &Folded, r: Resource, tenant: &str) -> std::io::Result<Vec<u8>> {
    svg_titled(
        f,
        r,
        &format!("{} of tenant {tenant}", r.name()),
        "frames: tenant; container; request; detail (docs/flamegraphs.md)",
    )
}

/// `f` drawn as an SVG flame graph of `r` under `title` and `subtitle`
/// (which names the frames).
pub fn svg_titled(f: &Folded, r: Resource, title: &str, subtitle: &str) -> std::io::Result<Vec<u8>> {
    let title = title.to_string();
    if f.stacks.is_empty() {
        // inferno refuses an empty graph; say so in a small SVG of our own.
        let text = format!("{title}: nothing charged yet");
        return Ok(format!(
            "<?xml version=\"1.0\" standalone=\"no\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"1200\" height=\"60\"><text x=\"10\" y=\"34\" font-family=\"Verdana\" font-size=\"17\">{}</text></svg>\n",
            xml_escape(&text)
        )
        .into_bytes());
    }
    let mut opt = inferno::flamegraph::Options::default();
    opt.title = title;
    opt.subtitle = Some(subtitle.into());
    opt.count_name = r.unit().into();
    opt.name_type = "Principal:".into();
    // Colours from the frame's name, the same on every read.
    opt.hash = true;
    opt.deterministic = true;
    // Every frame is drawn: their number is bounded here, not by width.
    opt.min_width = 0.0;
    let text = f.text();
    let mut out = Vec::with_capacity(f.stacks.len() * 512 + 32 * 1024);
    inferno::flamegraph::from_lines(&mut opt, text.lines(), &mut out)?;
    Ok(out)
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// Answers `GET /v1/flamegraph.svg` with `query`.
pub fn get_flamegraph(acct: &Accounting, query: &str) -> Reply {
    let params = super::parse_query(query);
    let r = match params.get("resource").map(String::as_str) {
        None => Resource::HostNs,
        Some(name) => match Resource::parse(name) {
            Some(r) => r,
            None => {
                let names: Vec<&str> = Resource::ALL.iter().map(|r| r.name()).collect();
                return Reply::error(
                    400,
                    format!(
                        "resource={name} is not a resource: use one of {}",
                        names.join(", ")
                    ),
                );
            }
        },
    };
    let folded_text = match params.get("format").map(String::as_str) {
        None | Some("svg") => false,
        Some("folded") => true,
        Some(other) => {
            return Reply::error(
                400,
                format!("format={other} is not supported: use format=svg or format=folded"),
            )
        }
    };
    let f = fold(acct, r);
    if folded_text {
        return Reply {
            status: 200,
            content_type: FOLDED,
            body: f.text().into_bytes(),
            link: None,
        };
    }
    match svg(&f, r, acct.tenant()) {
        Ok(body) => Reply {
            status: 200,
            content_type: SVG,
            body,
            link: None,
        },
        Err(e) => Reply::error(500, format!("cannot draw the flame graph: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Arc;

    use accounting::abi::{tag, EntryKind, RingEntry};
    use accounting::registry::Limits;
    use accounting::resource::NetCharge;

    fn declare(acct: &Accounting, id: u32, parent: u32, name: &str) {
        let e = RingEntry::new(EntryKind::DeclareContainer, id, parent, 0, name.as_bytes());
        acct.apply(&e).unwrap();
    }

    fn ring(acct: &Accounting, kind: EntryKind, id: u32, arg: u32) {
        acct.apply(&RingEntry {
            kind: kind as u16,
            id,
            arg,
            ..Default::default()
        })
        .unwrap();
    }

    /// `containers` top-level containers (ids 1..) and `requests` requests
    /// (ids 1..), request i in container `1 + i % containers` with `i`
    /// port writes of `10 * i` ns each, `i` ns of run time and `i` bytes
    /// sent; 3 exits and 7 ns of run time per container outside requests;
    /// 2 unattributed exits. At most `retained` finished requests are kept.
    fn books(containers: u32, requests: u32, retained: u32) -> Arc<Accounting> {
        let limits = Limits {
            max_containers: containers + 8,
            max_live_requests: 64,
            retained_requests: retained,
        };
        let acct = Accounting::new("acme", 1, 1, limits);
        for c in 1..=containers {
            declare(&acct, c, 0, &format!("c{c}"));
        }
        let (mut w, mut s) = (acct.writer(0), acct.writer(1));
        for i in 1..=requests {
            let c = 1 + i % containers;
            ring(&acct, EntryKind::BeginRequest, i, c);
            for _ in 0..i {
                w.charge_exit(Some(tag(c, i)), ExitReason::PortOut, 10 * u64::from(i));
            }
            s.charge_run(0, Some(tag(c, i)), u64::from(i));
            let net = NetCharge {
                tx_frames: 1,
                tx_bytes: u64::from(i),
                ..Default::default()
            };
            w.charge_net(Some(tag(c, i)), &net);
            ring(&acct, EntryKind::EndRequest, i, 0);
        }
        for c in 1..=containers {
            for _ in 0..3 {
                w.charge_exit(Some(tag(c, 0)), ExitReason::MmioWrite, 5);
            }
            s.charge_run(0, Some(tag(c, 0)), 7);
        }
        w.charge_exit(None, ExitReason::PortOut, 4);
        w.charge_exit(None, ExitReason::MmioRead, 6);
        acct
    }

    /// `text` as XML (inferno's SVG has an SVG 1.1 DOCTYPE).
    fn parse_xml(text: &str) -> roxmltree::Document<'_> {
        let opt = roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        };
        roxmltree::Document::parse_with_options(text, opt).expect("the SVG is XML")
    }

    /// Sum of the counts of the stacks that start with `prefix`.
    fn under(f: &Folded, prefix: &str) -> u64 {
        f.stacks
            .iter()
            .filter(|(s, _)| s.starts_with(prefix))
            .map(|(_, v)| v)
            .sum()
    }

    #[test]
    fn a_total_is_the_sum_of_its_details() {
        for seed in 0..64u64 {
            let words: Vec<u64> = (0..Charges::WORDS as u64)
                .map(|i| (i + 1).wrapping_mul(seed.wrapping_mul(2_654_435_761) + 97) % 1_000_003)
                .collect();
            let c = Charges::from_words(&words.try_into().unwrap());
            for r in Resource::ALL {
                let sum: u64 = r.details(&c).iter().map(|(_, v)| v).sum();
                assert_eq!(r.total(&c), sum, "{}", r.name());
            }
        }
    }

    #[test]
    fn stacks_are_tenant_container_request_detail_and_exact() {
        let acct = books(2, 4, 100);
        let f = fold(&acct, Resource::Exits);
        let want: BTreeMap<String, u64> = [
            ("acme;c1;(no request);mmio_write", 3),
            ("acme;c1;request 2 #1;port_out", 2),
            ("acme;c1;request 4 #3;port_out", 4),
            ("acme;c2;(no request);mmio_write", 3),
            ("acme;c2;request 1 #0;port_out", 1),
            ("acme;c2;request 3 #2;port_out", 3),
            ("acme;unattributed;mmio_read", 1),
            ("acme;unattributed;port_out", 1),
        ]
        .into_iter()
        .map(|(s, v)| (s.to_string(), v))
        .collect();
        assert_eq!(f.stacks, want);
        assert_eq!(f.total, 18);
        assert_eq!(f.text().lines().next(), Some("acme;c1;(no request);mmio_write 3"));
        let host = fold(&acct, Resource::HostNs);
        assert_eq!(host.stacks["acme;c1;request 4 #3;exit port_out"], 160);
        assert_eq!(host.stacks["acme;c2;(no request);exit mmio_write"], 15);
        let run = fold(&acct, Resource::RunNs);
        assert_eq!(run.stacks["acme;c2;request 3 #2;guest run"], 3);
        assert_eq!(run.stacks["acme;c1;(no request);guest run"], 7);
        let net = fold(&acct, Resource::NetBytes);
        assert_eq!(net.stacks["acme;c1;request 4 #3;net tx"], 4);
        assert_eq!(net.stacks.len(), 4, "{net:?}");
        assert!(fold(&acct, Resource::BlkBytes).stacks.is_empty());
    }

    #[test]
    fn every_resource_adds_up_to_the_vm_total() {
        // Evicted requests (retained 5 of 60) and folded containers.
        let acct = books(130, 60, 5);
        let totals = acct.totals();
        let (views, _) = acct.containers_view();
        for r in Resource::ALL {
            let f = fold(&acct, r);
            assert_eq!(f.total, r.total(&totals), "{}", r.name());
            assert_eq!(f.stacks.values().sum::<u64>(), f.total, "{}", r.name());
            // Each shown container's stacks add up to its own total.
            for v in views.iter().filter(|v| v.row.index > 0) {
                let got = under(&f, &format!("acme;{};", v.row.path));
                assert!(
                    got == 0 || got == r.total(&v.charges),
                    "{} {}",
                    r.name(),
                    v.row.path
                );
            }
        }
    }

    #[test]
    fn frames_are_bounded_and_the_rest_folded_per_level() {
        let acct = books(300, 1000, 1000);
        let f = fold(&acct, Resource::HostNs);
        assert_eq!(f.total, Resource::HostNs.total(&acct.totals()));
        let frames_at = |depth: usize| -> std::collections::BTreeSet<String> {
            f.stacks
                .keys()
                .filter_map(|s| s.split(';').nth(depth).map(str::to_string))
                .collect()
        };
        let containers = frames_at(1);
        assert_eq!(containers.len(), MAX_CONTAINER_FRAMES + 1, "{containers:?}");
        // 300 containers and unattributed, 100 frames of their own.
        assert!(containers.contains("(201 other containers)"));
        assert!(containers.contains("unattributed"));
        let requests: Vec<String> = frames_at(2)
            .into_iter()
            .filter(|s| s.starts_with("request "))
            .collect();
        assert!(
            requests.len() <= MAX_REQUEST_FRAMES && requests.len() > 50,
            "{}",
            requests.len()
        );
        // The requests drawn are the largest: 1000 down, those of the shown
        // containers.
        assert!(requests.contains(&"request 1000 #999".to_string()));
        assert!(!requests.iter().any(|r| r.starts_with("request 1 #")));
        assert!(frames_at(2).contains("(other requests)"));
        assert!(f.stacks.len() < 2000, "{}", f.stacks.len());
    }

    #[test]
    fn containers_that_share_a_path_share_a_frame() {
        let acct = Accounting::new("acme", 1, 0, Limits::default());
        let mut w = acct.writer(0);
        declare(&acct, 1, 0, "web");
        w.charge_exit(Some(tag(1, 0)), ExitReason::PortOut, 1);
        ring(&acct, EntryKind::RetireContainer, 1, 0);
        // A new `web` (id 2) after the first one retired.
        declare(&acct, 2, 0, "web");
        w.charge_exit(Some(tag(2, 0)), ExitReason::PortOut, 1);
        w.charge_exit(Some(tag(2, 0)), ExitReason::PortOut, 1);
        assert_eq!(acct.container_count(), 3);
        let f = fold(&acct, Resource::Exits);
        assert_eq!(f.text(), "acme;web;(no request);port_out 3\n");
    }

    #[test]
    fn names_cannot_break_a_stack_or_the_svg() {
        // Guest names are already limited to [A-Za-z0-9._:-] (accounting::abi);
        // the tenant is the host's. Neither can split a stack or a line.
        assert_eq!(frame_name("a;b\nc\u{7f}d e"), "a_b?c?d e");
        let acct = Accounting::new("t;x\n<&>\"'", 1, 0, Limits::default());
        declare(&acct, 1, 0, "web.v1:blue-2");
        let mut w = acct.writer(0);
        w.charge_exit(Some(tag(1, 0)), ExitReason::PortOut, 9);
        let f = fold(&acct, Resource::HostNs);
        assert_eq!(
            f.text(),
            "t_x?<&>\"';web.v1:blue-2;(no request);exit port_out 9\n"
        );
        let svg = svg(&f, Resource::HostNs, acct.tenant()).unwrap();
        let text = String::from_utf8(svg).unwrap();
        let doc = parse_xml(&text);
        let titles: Vec<&str> = doc
            .descendants()
            .filter(|n| n.has_tag_name("title"))
            .filter_map(|n| n.text())
            .collect();
        assert!(
            titles.iter().any(|t| t.starts_with("t_x?<&>\"' (9 ns")),
            "{titles:?}"
        );
    }

    #[test]
    fn an_empty_graph_is_still_an_svg_and_bad_queries_are_refused() {
        let acct = Accounting::new("a<b", 1, 0, Limits::default());
        let r = get_flamegraph(&acct, "resource=blk_bytes");
        assert_eq!((r.status, r.content_type), (200, SVG));
        let text = String::from_utf8(r.body).unwrap();
        let doc = parse_xml(&text);
        assert!(doc.root_element().has_tag_name("svg"));
        assert!(text.contains("blk_bytes of tenant a&lt;b: nothing charged yet"));
        let r = get_flamegraph(&acct, "resource=exits&format=folded");
        assert_eq!((r.status, r.content_type, r.body.len()), (200, FOLDED, 0));
        for (q, want) in [
            (
                "resource=cpu",
                "use one of host_ns, exits, run_ns, blk_bytes, net_bytes, vsock_bytes",
            ),
            ("format=png", "use format=svg or format=folded"),
        ] {
            let r = get_flamegraph(&acct, q);
            assert_eq!(r.status, 400, "{q}");
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            assert!(v["error"].as_str().unwrap().contains(want), "{q}: {v}");
        }
        // The default is host_ns, as an SVG.
        let acct = books(1, 1, 10);
        let r = get_flamegraph(&acct, "");
        assert_eq!((r.status, r.content_type), (200, SVG));
        assert!(String::from_utf8(r.body)
            .unwrap()
            .contains("host_ns of tenant acme"));
    }
}
