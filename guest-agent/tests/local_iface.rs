//! The local interface over a real Unix socket, with the VMM's real agent
//! hub (in process) confirming what the agent declares.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use accounting::abi::tag;
use accounting::abi::{EntryKind, RingEntry};
use accounting::ledger::Accounting;
use accounting::registry::Limits;
use common::{fixture, TempDir};
use guest_agent::agent::{Agent, Options};
use guest_agent::link::Endpoint;
use guest_agent::local::{Reply, MAX_CLIENTS, MAX_LINE};
use guest_agent::rebind_client::RebindPage;
use guest_agent::state::ID_BASE;
use guest_agent::tagger::MAX_PAGES_PER_CLIENT;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use vmm::agent::AgentHub;

/// An agent connected to a VMM's agent hub (fields drop in order: the
/// agent first).
struct WithVmm {
    agent: Agent,
    hub: Arc<AgentHub>,
    acct: Arc<Accounting>,
}

impl std::ops::Deref for WithVmm {
    type Target = Agent;
    fn deref(&self) -> &Agent {
        &self.agent
    }
}

impl Drop for WithVmm {
    fn drop(&mut self) {
        self.hub.stop();
    }
}

fn start(dir: &TempDir, vmm: &str) -> Agent {
    Agent::start(Options {
        connect: Endpoint::Unix(dir.join(vmm)),
        listen: Some(dir.join("agent.sock")),
        interval: Duration::from_secs(3600),
        proc_root: fixture("proc"),
        cgroup_root: None,
        ..Options::default()
    })
    .unwrap()
}

fn agent(dir: &TempDir) -> WithVmm {
    let acct = Accounting::new("t", 1, 1, Limits::default());
    let hub = AgentHub::new(Arc::clone(&acct), Some(acct.writer(1)));
    hub.listen(&dir.join("vmm.sock")).unwrap();
    WithVmm {
        agent: start(dir, "vmm.sock"),
        hub,
        acct,
    }
}

struct Client {
    w: UnixStream,
    r: BufReader<UnixStream>,
}

impl Client {
    fn connect(p: &Path) -> Self {
        let w = UnixStream::connect(p).unwrap();
        w.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Self {
            r: BufReader::new(w.try_clone().unwrap()),
            w,
        }
    }

    fn call(&mut self, line: &str) -> Reply {
        self.w.write_all(format!("{line}\n").as_bytes()).unwrap();
        let mut s = String::new();
        self.r.read_line(&mut s).unwrap();
        serde_json::from_str(&s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }
}

fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn the_socket_is_private_to_the_group() {
    let d = TempDir::new("mode");
    let _a = agent(&d);
    let md = std::fs::metadata(d.join("agent.sock")).unwrap();
    assert!(md.file_type().is_socket());
    assert_eq!(md.permissions().mode() & 0o777, 0o660);
}

#[test]
fn requests_flows_and_containers_round_trip() {
    let d = TempDir::new("ops");
    let _a = agent(&d);
    let mut c = Client::connect(&d.join("agent.sock"));
    let web = c.call(r#"{"op":"declare","container":"web"}"#);
    assert!(web.ok && web.container == Some(ID_BASE));
    assert_eq!(
        c.call(r#"{"op":"declare","container":"web"}"#).container,
        Some(ID_BASE)
    );
    let r1 = c.call(r#"{"op":"begin","container":"web","external_id":1,"attributes":{"route":"/a"}}"#);
    let r2 = c.call(r#"{"op":"begin","container":"web"}"#);
    let (r1, r2) = (r1.request.unwrap(), r2.request.unwrap());
    assert!(r1 >= ID_BASE && r2 != r1);
    let bind = format!(
        r#"{{"op":"bind_flow","proto":"udp","local":"[fd00::2]:53","remote":"[fd00::1]:5353","container":"web","request":{r1}}}"#
    );
    assert!(c.call(&bind).ok);
    assert!(c.call(&format!(r#"{{"op":"end","request":{r1}}}"#)).ok);
    let again = c.call(&format!(r#"{{"op":"end","request":{r1}}}"#));
    assert_eq!(again.error.as_deref(), Some("unknown request"));
    assert!(
        c.call(r#"{"op":"unbind_flow","proto":"udp","local":"[fd00::2]:53","remote":"[fd00::1]:5353"}"#)
            .ok
    );
    assert!(c.call(&format!(r#"{{"op":"end","request":{r2}}}"#)).ok);
    assert!(c.call(r#"{"op":"retire","container":"web"}"#).ok);
}

#[test]
fn bad_lines_get_errors_and_the_connection_stays_usable() {
    let d = TempDir::new("bad");
    let _a = agent(&d);
    let mut c = Client::connect(&d.join("agent.sock"));
    c.call(r#"{"op":"declare","container":"web"}"#);
    for bad in [
        "not json",
        "{}",
        r#"{"op":"launch"}"#,
        r#"{"op":"begin"}"#,
        r#"{"op":"begin","container":"web","colour":"red"}"#,
        r#"{"op":"begin","container":"nope"}"#,
        r#"{"op":"begin","container":"web","trace_id":"00000000000000000000000000000000"}"#,
        r#"{"op":"begin","container":"web","attributes":{"":"x"}}"#,
        r#"{"op":"end","request":0}"#,
        r#"{"op":"end","request":-1}"#,
        r#"{"op":"end","request":4294967296}"#,
        r#"{"op":"declare","container":"has space"}"#,
        r#"{"op":"declare","container":"x","cgroup":"/a/../b"}"#,
        r#"{"op":"bind_flow","proto":"sctp","local":"1.1.1.1:1","remote":"2.2.2.2:2","container":"web"}"#,
        r#"{"op":"bind_flow","proto":"tcp","local":"1.1.1.1","remote":"2.2.2.2:2","container":"web"}"#,
        r#"{"op":"bind_flow","proto":"tcp","local":"1.1.1.1:1","remote":"2.2.2.2:2","container":"web","request":77}"#,
        r#"{"op":"unbind_flow","proto":"tcp","local":"1.1.1.1:1","remote":"2.2.2.2:2"}"#,
        r#"{"op":"retire","container":"nope"}"#,
        "\u{7f}\u{0}",
    ] {
        let r = c.call(bad);
        assert!(!r.ok && r.error.is_some(), "{bad}: {r:?}");
    }
    let big = "x".repeat(40);
    let r = c.call(&format!(
        r#"{{"op":"begin","container":"web","attributes":{{"k":"{}"}}}}"#,
        big.repeat(10)
    ));
    assert!(!r.ok, "attribute values are at most 256 bytes");
    assert!(c.call(r#"{"op":"begin","container":"web"}"#).ok, "still usable");
}

#[test]
fn an_oversized_line_closes_that_client_only() {
    let d = TempDir::new("big");
    let _a = agent(&d);
    let mut good = Client::connect(&d.join("agent.sock"));
    let mut bad = Client::connect(&d.join("agent.sock"));
    let junk = vec![b'a'; MAX_LINE + 10];
    let _ = bad.w.write_all(&junk);
    let mut s = String::new();
    bad.r.read_line(&mut s).unwrap();
    assert!(s.contains("longer than"), "{s}");
    let mut rest = Vec::new();
    let n = bad.r.read_to_end(&mut rest).unwrap_or(0);
    assert_eq!(n, 0, "then the connection is closed");
    assert!(good.call(r#"{"op":"declare","container":"ok"}"#).ok);
}

#[test]
fn a_crashed_client_has_its_requests_ended() {
    let d = TempDir::new("crash");
    let a = agent(&d);
    let mut keeper = Client::connect(&d.join("agent.sock"));
    keeper.call(r#"{"op":"declare","container":"web"}"#);
    {
        let mut c = Client::connect(&d.join("agent.sock"));
        c.call(r#"{"op":"declare","container":"web"}"#);
        c.call(r#"{"op":"declare","container":"mine"}"#);
        for _ in 0..3 {
            assert!(c.call(r#"{"op":"begin","container":"web"}"#).ok);
        }
        assert!(c
            .call(r#"{"op":"bind_flow","proto":"tcp","local":"10.0.0.2:1","remote":"10.0.0.1:2","container":"web"}"#)
            .ok);
        assert_eq!(a.shared().lock().state.live_requests(), 3);
    }
    eventually("the client's requests end", || {
        a.shared().lock().state.live_requests() == 0
    });
    let g = a.shared().lock();
    assert_eq!(g.state.flow_count(), 0);
    assert!(
        g.state.container_by_name("mine").is_none(),
        "its ad hoc container is retired"
    );
    assert!(
        g.state.container_by_name("web").is_some(),
        "held by another client"
    );
}

#[test]
fn clients_are_bounded() {
    let d = TempDir::new("many");
    let _a = agent(&d);
    let mut clients: Vec<Client> = (0..MAX_CLIENTS)
        .map(|_| Client::connect(&d.join("agent.sock")))
        .collect();
    // Each is served (a reply proves its thread is running).
    for c in &mut clients {
        assert!(c.call(r#"{"op":"declare","container":"x"}"#).ok);
    }
    let mut extra = Client::connect(&d.join("agent.sock"));
    let mut s = String::new();
    extra.r.read_line(&mut s).unwrap();
    assert!(s.contains("at most"), "{s}");
    drop(clients.pop());
    eventually("a slot frees up", || {
        let mut c = Client::connect(&d.join("agent.sock"));
        let _ = c.w.write_all(b"{\"op\":\"declare\",\"container\":\"y\"}\n");
        let mut s = String::new();
        c.r.read_line(&mut s).is_ok() && s.contains("\"ok\":true")
    });
}

#[test]
fn a_stale_socket_is_replaced_and_other_files_refused() {
    let d = TempDir::new("stale");
    {
        let _l = std::os::unix::net::UnixListener::bind(d.join("agent.sock")).unwrap();
    } // closed, the file stays: stale
    let a = agent(&d);
    assert!(
        Client::connect(&d.join("agent.sock"))
            .call(r#"{"op":"declare","container":"a"}"#)
            .ok
    );
    // A second agent on the same path is refused while the first lives.
    let second = Agent::start(Options {
        listen: Some(d.join("agent.sock")),
        connect: Endpoint::Unix(d.join("no-vmm.sock")),
        cgroup_root: None,
        ..Options::default()
    });
    assert!(second.is_err());
    drop(a);
    std::fs::write(d.join("file"), b"x").unwrap();
    let third = Agent::start(Options {
        listen: Some(d.join("file")),
        connect: Endpoint::Unix(d.join("no-vmm.sock")),
        cgroup_root: None,
        ..Options::default()
    });
    let err = third.unwrap_err().to_string();
    assert!(err.contains("--listen"), "{err}");
    assert_eq!(std::fs::read(d.join("file")).unwrap(), b"x");
}

#[test]
fn without_a_vmm_nothing_is_confirmed_and_nothing_is_kept() {
    let d = TempDir::new("novmm");
    // Nobody listens there: the agent keeps retrying.
    let a = start(&d, "no-vmm.sock");
    let mut c = Client::connect(&d.join("agent.sock"));
    let r = c.call(r#"{"op":"declare","container":"web"}"#);
    assert!(!r.ok && r.container.is_none(), "{r:?}");
    assert_eq!(
        r.error.as_deref(),
        Some(
            "the VMM did not confirm declare_container within 3 s: it is not connected (the agent keeps reconnecting; retry later)"
        )
    );
    assert!(a.shared().lock().state.container_by_name("web").is_none());
}

#[test]
fn a_refusal_reaches_the_application() {
    let d = TempDir::new("refused");
    let a = agent(&d);
    // A bare tag-ABI program already holds the name.
    a.acct
        .apply(&RingEntry::new(EntryKind::DeclareContainer, 7, 0, 0, b"web"))
        .unwrap();
    let mut c = Client::connect(&d.join("agent.sock"));
    let r = c.call(r#"{"op":"declare","container":"web"}"#);
    assert!(!r.ok, "{r:?}");
    assert_eq!(
        r.error.as_deref(),
        Some("the VMM refused declare_container: ring_duplicate_name")
    );
    assert!(a.shared().lock().state.container_by_name("web").is_none());
    // Another name is fine, and its request is confirmed.
    assert!(c.call(r#"{"op":"declare","container":"api"}"#).ok);
    let b = c.call(r#"{"op":"begin","container":"api"}"#);
    assert!(b.ok, "{b:?}");
    let reg = a.acct.registry();
    assert!(reg.live_request_container(b.request.unwrap()).is_some());
}

/// The thread calling this (`gettid`), and the CPU it runs on after a
/// sleep (so it has just been switched in there).
fn me_after_a_switch() -> (u32, u32) {
    std::thread::sleep(Duration::from_millis(1));
    // SAFETY: gettid and sched_getcpu have no preconditions.
    let (tid, cpu) = unsafe { (libc::gettid(), libc::sched_getcpu()) };
    (tid as u32, cpu as u32)
}

/// Whether, within 5 s, this thread is seen switched in under `tag`.
fn slot_follows(a: &Agent, tag: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let (_, cpu) = me_after_a_switch();
        let g = a.shared().lock();
        if g.tagging.tagger.as_ref().and_then(|t| t.slot(cpu)) == Some(tag) {
            return true;
        }
    }
    false
}

/// `work_for` with the eBPF tagger on the host kernel (root): a thread of
/// the client's own process is bound to a live request, its CPU's slot
/// names the request while it runs, and the binding ends with the request
/// and with the client's connection. Threads of other processes, dead
/// requests and a tagger that is off are refused.
#[test]
fn work_for_binds_the_clients_own_thread_until_its_request_or_connection_ends() {
    let d = TempDir::new("workfor");
    let acct = Accounting::new("t", 1, 1, Limits::default());
    let hub = AgentHub::new(Arc::clone(&acct), Some(acct.writer(1)));
    hub.listen(&d.join("vmm.sock")).unwrap();
    let a = Agent::start(Options {
        connect: Endpoint::Unix(d.join("vmm.sock")),
        listen: Some(d.join("agent.sock")),
        interval: Duration::from_secs(3600),
        proc_root: fixture("proc"),
        cgroup_root: None,
        tagging: guest_agent::agent::TaggingMode::On,
        ..Options::default()
    })
    .expect("the agent starts with the tagger (root, BTF)");
    let _hub = WithHub(hub);
    let mut c = Client::connect(&d.join("agent.sock"));
    let web = c
        .call(r#"{"op":"declare","container":"web"}"#)
        .container
        .expect("web");
    let req = c
        .call(r#"{"op":"begin","container":"web"}"#)
        .request
        .expect("a request");
    let (tid, _) = me_after_a_switch();

    let r = c.call(&format!(r#"{{"op":"work_for","request":{req},"tid":{tid}}}"#));
    assert!(r.ok, "{r:?}");
    let tag = accounting::abi::tag(web, req);
    assert!(
        slot_follows(&a, tag),
        "this thread's CPU slot never named the request"
    );
    let r = c.call(r#"{"op":"work_for","request":4294967295}"#);
    assert!(!r.ok && r.error.as_deref().unwrap().contains("not live"), "{r:?}");
    let r = c.call(&format!(r#"{{"op":"work_for","request":{req},"tid":1}}"#));
    assert!(
        !r.ok && r.error.as_deref().unwrap().contains("not a thread"),
        "{r:?}"
    );

    // The request ends: the binding goes with it.
    assert!(c.call(&format!(r#"{{"op":"end","request":{req}}}"#)).ok);
    assert_eq!(a.shared().lock().tagging.bindings.len(), 0);
    assert!(slot_follows(&a, 0), "the slot still names an ended request");

    // The connection closes: its bindings go.
    let req = c
        .call(r#"{"op":"begin","container":"web"}"#)
        .request
        .expect("a request");
    assert!(
        c.call(&format!(r#"{{"op":"work_for","request":{req},"tid":{tid}}}"#))
            .ok
    );
    assert_eq!(a.shared().lock().tagging.bindings.len(), 1);
    drop(c);
    eventually("the closed client's binding ends", || {
        a.shared().lock().tagging.bindings.is_empty()
    });
    drop(a);

    // Without the tagger, work_for says so.
    let d = TempDir::new("workfor-off");
    let off = agent(&d);
    let mut c = Client::connect(&d.join("agent.sock"));
    let r = c.call(r#"{"op":"work_for"}"#);
    assert!(
        !r.ok && r.error.as_deref().unwrap().contains("tagging is off"),
        "{r:?}"
    );
    drop(off);
}

/// Stops a hub when dropped.
struct WithHub(Arc<AgentHub>);

impl Drop for WithHub {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// A `process` rule's processes are tagged by process id (the tagger's
/// process map, kept each interval): a spinner whose comm the rule matches
/// names its container in CPU 0's slot while it runs there, and its entry
/// goes when it exits. Root and BTF, like the other tagger tests.
#[test]
fn a_process_rules_processes_are_tagged_with_its_container() {
    let d = TempDir::new("ptags");
    // A comm of its own: sh run through a link of that name (15 bytes at most).
    let comm = format!("rsrc-spin-{:05}", std::process::id() % 100_000);
    let link = d.join(&comm);
    std::os::unix::fs::symlink("/bin/sh", &link).unwrap();
    let acct = Accounting::new("t", 1, 1, Limits::default());
    let hub = AgentHub::new(Arc::clone(&acct), Some(acct.writer(1)));
    hub.listen(&d.join("vmm.sock")).unwrap();
    let _hub = WithHub(hub);
    let a = Agent::start(Options {
        connect: Endpoint::Unix(d.join("vmm.sock")),
        listen: Some(d.join("agent.sock")),
        config: guest_agent::config::Config::parse(
            r#"{"containers":[{"process":"rsrc-spin-*","name":"spinners"}]}"#,
            "test",
        )
        .unwrap(),
        interval: Duration::from_millis(100),
        proc_root: "/proc".into(),
        cgroup_root: None,
        tagging: guest_agent::agent::TaggingMode::On,
        ..Options::default()
    })
    .expect("the agent starts with the tagger (root, BTF)");
    let mut spin = std::process::Command::new(&link)
        .args(["-c", "while :; do :; done"])
        .spawn()
        .unwrap();
    // SAFETY: a zeroed cpu_set_t is valid; CPU 0 is in bounds.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(spin.id() as i32, std::mem::size_of_val(&set), &set);
    }
    let id = || {
        a.shared()
            .lock()
            .state
            .container_by_name("spinners")
            .map(|c| c.decl.id)
    };
    eventually("the rule declares spinners", || id().is_some());
    let tag = accounting::abi::tag(id().unwrap(), 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = false;
    while !seen && Instant::now() < deadline {
        seen = a.shared().lock().tagging.tagger.as_ref().and_then(|t| t.slot(0)) == Some(tag);
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = spin.kill();
    let _ = spin.wait();
    assert!(
        seen,
        "CPU 0's slot never named spinners while its process spun there"
    );
    eventually("the exited process leaves the process map", || {
        a.shared().lock().tagging.processes.is_empty()
    });
}

/// Rebind pages over the local socket with the eBPF tagger on the host
/// kernel (root): a client's page comes with the reply (`SCM_RIGHTS`), a
/// thread of its process registered at a word is tagged `(container,
/// request)` after it stores the request id there and `(container, 0)`
/// after it stores 0; another client cannot register at that page and its
/// own page is other memory; hostile requests are refused with a reason
/// and counted; the pages go with their connection.
#[test]
fn a_rebind_page_is_its_clients_own_and_a_store_rebinds_its_thread() {
    let d = TempDir::new("rebind");
    let acct = Accounting::new("t", 1, 1, Limits::default());
    let hub = AgentHub::new(Arc::clone(&acct), Some(acct.writer(1)));
    hub.listen(&d.join("vmm.sock")).unwrap();
    let a = Agent::start(Options {
        connect: Endpoint::Unix(d.join("vmm.sock")),
        listen: Some(d.join("agent.sock")),
        interval: Duration::from_secs(3600),
        proc_root: fixture("proc"),
        cgroup_root: None,
        tagging: guest_agent::agent::TaggingMode::On,
        ..Options::default()
    })
    .expect("the agent starts with the tagger (root, BTF)");
    let _hub = WithHub(hub);
    let mut c = Client::connect(&d.join("agent.sock"));
    let web = c
        .call(r#"{"op":"declare","container":"web"}"#)
        .container
        .expect("web");
    let req = c
        .call(r#"{"op":"begin","container":"web"}"#)
        .request
        .expect("a request");
    let page = RebindPage::request(&c.w, "web").expect("a rebind page");
    let (tid, _) = me_after_a_switch();
    let p = page.page();
    let r = c.call(&format!(
        r#"{{"op":"rebind_thread","page":{p},"index":5,"tid":{tid}}}"#
    ));
    assert!(r.ok, "{r:?}");
    assert!(slot_follows(&a, tag(web, 0)), "registered: the page's container");
    page.set(5, req);
    assert!(slot_follows(&a, tag(web, req)), "a store names the request");
    page.set(5, 0);
    assert!(slot_follows(&a, tag(web, 0)), "0: back to the container");
    page.set(5, req);
    assert!(slot_follows(&a, tag(web, req)), "and to the request again");

    // Another client: not at this page; its own page is other memory.
    let mut other = Client::connect(&d.join("agent.sock"));
    // It holds `web` too, so `web` outlives the first client.
    assert_eq!(
        other.call(r#"{"op":"declare","container":"web"}"#).container,
        Some(web)
    );
    let r = other.call(&format!(
        r#"{{"op":"rebind_thread","page":{p},"index":5,"tid":{tid}}}"#
    ));
    assert!(
        !r.ok
            && r.error
                .as_deref()
                .unwrap()
                .contains("not a rebind page of this connection"),
        "{r:?}"
    );
    let theirs = RebindPage::request(&other.w, "web").expect("its own page");
    assert_ne!(theirs.page(), p);
    theirs.set(5, req + 1);
    assert_eq!(page.word(5).unwrap().load(Ordering::Acquire), u64::from(req));
    assert!(
        slot_follows(&a, tag(web, req)),
        "the other page is not read for this thread"
    );
    let r = other.call(&format!(r#"{{"op":"rebind_thread","tid":{tid}}}"#));
    assert!(
        !r.ok && r.error.as_deref().unwrap().contains("another connection"),
        "{r:?}"
    );
    // Registering it (a thread of the same process) moves it, and back.
    let q = theirs.page();
    let r = other.call(&format!(
        r#"{{"op":"rebind_thread","page":{q},"index":5,"tid":{tid}}}"#
    ));
    assert!(r.ok, "{r:?}");
    assert!(slot_follows(&a, tag(web, req + 1)), "moved to the other page");
    let r = c.call(&format!(
        r#"{{"op":"rebind_thread","page":{p},"index":5,"tid":{tid}}}"#
    ));
    assert!(r.ok, "{r:?}");
    assert!(slot_follows(&a, tag(web, req)), "and back");

    // Hostile or wrong requests: a reason each, and a count.
    let before = a.shared().lock().tagging.pages.refused;
    let refusals = [
        (
            format!(r#"{{"op":"rebind_thread","page":{p},"index":512,"tid":{tid}}}"#),
            "outside the page",
        ),
        (
            format!(r#"{{"op":"rebind_thread","page":{p},"index":0,"tid":1}}"#),
            "not a thread of the client's process",
        ),
        (
            format!(r#"{{"op":"rebind_thread","page":4000000000,"index":0,"tid":{tid}}}"#),
            "not a rebind page",
        ),
        (
            r#"{"op":"rebind_page","container":"nope"}"#.to_owned(),
            "not live",
        ),
    ];
    for (line, why) in &refusals {
        let r = c.call(line);
        assert!(
            !r.ok && r.error.as_deref().unwrap().contains(why),
            "{line}: {r:?}"
        );
    }
    let more: Vec<RebindPage> = (1..MAX_PAGES_PER_CLIENT)
        .map(|_| RebindPage::request(&c.w, "web").expect("up to the limit"))
        .collect();
    let e = RebindPage::request(&c.w, "web").unwrap_err().to_string();
    assert!(e.contains("holds 4 rebind pages already"), "{e}");
    assert_eq!(
        a.shared().lock().tagging.pages.refused - before,
        refusals.len() as u64 + 1
    );
    let r = c.call(r#"{"op":"rebind_page"}"#);
    assert!(
        !r.ok && r.error.as_deref().unwrap().contains("container"),
        "{r:?}"
    );
    assert_eq!(a.shared().lock().tagging.pages.pages(), MAX_PAGES_PER_CLIENT + 1);

    // Unregistered, then the connection closes: its pages go.
    let r = c.call(&format!(r#"{{"op":"rebind_thread","tid":{tid}}}"#));
    assert!(r.ok, "{r:?}");
    assert!(slot_follows(&a, 0), "unregistered: no container of its own");
    let r = c.call(&format!(
        r#"{{"op":"rebind_thread","page":{p},"index":5,"tid":{tid}}}"#
    ));
    assert!(r.ok, "{r:?}");
    assert!(slot_follows(&a, tag(web, req)));
    drop(c);
    eventually("the closed client's pages go", || {
        let g = a.shared().lock();
        g.tagging.pages.pages() == 1 && g.tagging.pages.threads() == 0
    });
    assert!(slot_follows(&a, 0), "its thread is read from no page");
    // A page ends with its container too (its connection still open).
    assert!(other.call(r#"{"op":"retire","container":"web"}"#).ok);
    eventually("the retired container's page goes", || {
        a.shared().lock().tagging.pages.pages() == 0
    });
    let g = a.shared().lock();
    let t = g.tagging.tagger.as_ref().unwrap();
    assert_eq!((t.rebind_pages(), t.rebind_threads()), (0, 0), "the maps too");
    drop(g);
    drop((page, more, theirs, other));
    drop(a);

    // Without the tagger, a page is refused with the reason.
    let d = TempDir::new("rebind-off");
    let off = agent(&d);
    let c = Client::connect(&d.join("agent.sock"));
    let e = RebindPage::request(&c.w, "web").unwrap_err().to_string();
    assert!(e.contains("tagging is off"), "{e}");
    drop(off);
}

/// A thread registered in a rebind page that exits loses its registration
/// at the agent's next interval (its id may be given to a new thread); the
/// page and the other threads' registrations stay. Root and BTF, like the
/// other tagger tests.
#[test]
fn an_exited_threads_rebind_registration_goes_at_the_next_interval() {
    let d = TempDir::new("rebind-exit");
    let acct = Accounting::new("t", 1, 1, Limits::default());
    let hub = AgentHub::new(Arc::clone(&acct), Some(acct.writer(1)));
    hub.listen(&d.join("vmm.sock")).unwrap();
    let _hub = WithHub(hub);
    let a = Agent::start(Options {
        connect: Endpoint::Unix(d.join("vmm.sock")),
        listen: Some(d.join("agent.sock")),
        interval: Duration::from_millis(100),
        proc_root: fixture("proc"),
        cgroup_root: None,
        tagging: guest_agent::agent::TaggingMode::On,
        ..Options::default()
    })
    .expect("the agent starts with the tagger (root, BTF)");
    let mut c = Client::connect(&d.join("agent.sock"));
    assert!(c.call(r#"{"op":"declare","container":"web"}"#).ok);
    let page = RebindPage::request(&c.w, "web").expect("a rebind page");
    let p = page.page();
    let (tid, _) = me_after_a_switch();
    // A worker that waits until it is registered, then exits.
    let (registered, go) = std::sync::mpsc::channel::<()>();
    let (tell, told) = std::sync::mpsc::channel::<u32>();
    let worker = std::thread::spawn(move || {
        tell.send(me_after_a_switch().0).unwrap();
        go.recv().unwrap();
    });
    let wtid = told.recv().unwrap();
    for (i, t) in [tid, wtid].into_iter().enumerate() {
        let r = c.call(&format!(
            r#"{{"op":"rebind_thread","page":{p},"index":{i},"tid":{t}}}"#
        ));
        assert!(r.ok, "{r:?}");
    }
    assert_eq!(a.shared().lock().tagging.pages.threads(), 2);
    registered.send(()).unwrap();
    worker.join().unwrap();
    eventually("the exited worker's registration goes", || {
        a.shared().lock().tagging.pages.threads() == 1
    });
    let g = a.shared().lock();
    assert_eq!(g.tagging.pages.pages(), 1);
    assert_eq!(g.tagging.tagger.as_ref().unwrap().rebind_threads(), 1);
    drop(g);
    drop(page);
}
