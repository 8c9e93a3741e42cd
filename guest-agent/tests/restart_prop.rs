//! Property: whatever the sequence of agent restarts (each with another
//! set of rules, in another order), applications' requests and ad hoc
//! declarations, no request is ever booked to a container other than the
//! one its application named, no charge is lost, and no two live
//! containers share a path.
//!
//! The real agent (library, its own threads and local socket) talks to the
//! VMM's real agent hub over a Unix socket; charges go through the real
//! ledger's writer, tagged as a guest would tag them.

mod common;

use std::collections::HashMap;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use accounting::abi::{tag, EntryKind, RingEntry};
use accounting::ledger::Accounting;
use accounting::registry::Limits;
use accounting::resource::ExitReason;
use common::{App, TempDir};
use guest_agent::agent::{Agent, Options, TaggingMode};
use guest_agent::config::Config;
use guest_agent::link::Endpoint;
use proptest::prelude::*;
use serde_json::Value;
use vmm::agent::AgentHub;

const NAMES: [&str; 4] = ["web", "api", "batch", "db"];

#[derive(Clone, Debug)]
enum Step {
    /// Restart the agent with rules for these names, in this order.
    Restart(Vec<usize>),
    /// An application begins a request in this container and the guest
    /// charges one exit to it.
    Begin(usize),
    /// The application ends its oldest open request.
    End,
    /// The application declares an ad hoc container.
    Declare(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        1 => proptest::sample::subsequence(vec![0usize, 1, 2, 3], 0..=4)
            .prop_shuffle()
            .prop_map(Step::Restart),
        3 => (0..NAMES.len()).prop_map(Step::Begin),
        1 => Just(Step::End),
        1 => (0..NAMES.len()).prop_map(Step::Declare),
    ]
}

fn start(dir: &TempDir, rules: &[usize]) -> (Agent, App) {
    let rules: Vec<String> = rules
        .iter()
        .map(|&i| format!(r#"{{"cgroup":"/{}"}}"#, NAMES[i]))
        .collect();
    let config = Config::parse(&format!(r#"{{"containers":[{}]}}"#, rules.join(",")), "test").unwrap();
    let _ = std::fs::remove_file(dir.join("local.sock"));
    let agent = Agent::start(Options {
        connect: Endpoint::Unix(dir.join("vmm.sock")),
        listen: Some(dir.join("local.sock")),
        config,
        interval: Duration::from_millis(50),
        cgroup_root: Some(dir.join("cgroup")),
        list_threads: false,
        tagging: TaggingMode::Off,
        bpf_pin_dir: None,
        ..Options::default()
    })
    .unwrap();
    // Connected once the agent's state is confirmed by the VMM.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !agent.shared().lock().outbox.connected() {
        assert!(Instant::now() < deadline, "the agent did not connect");
        std::thread::sleep(Duration::from_millis(5));
    }
    let app = App::new(UnixStream::connect(dir.join("local.sock")).unwrap());
    (agent, app)
}

fn run(steps: &[Step]) -> Result<(), TestCaseError> {
    let dir = TempDir::new("prop");
    for n in NAMES {
        std::fs::create_dir_all(dir.join("cgroup").join(n)).unwrap();
    }
    let acct = Accounting::new("t", 1, 1, Limits::default());
    // A bare tag-ABI program holds the name `db`: the agent's is refused.
    acct.apply(&RingEntry::new(EntryKind::DeclareContainer, 9, 0, 0, b"db"))
        .unwrap();
    let hub = AgentHub::new(Arc::clone(&acct), Some(acct.writer(1)));
    hub.listen(&dir.join("vmm.sock")).unwrap();
    let mut writer = acct.writer(0);
    let (mut agent, mut app) = start(&dir, &[0]);
    // request id → the container name its application named.
    let mut booked: HashMap<u32, &str> = HashMap::new();
    let mut open: Vec<u32> = Vec::new();
    for s in steps {
        match s {
            Step::Restart(rules) => {
                drop(app);
                agent.stop();
                open.clear(); // its clients' connections ended with it
                (agent, app) = start(&dir, rules);
            }
            Step::Begin(i) => {
                let r = app.call(&format!(r#"{{"op":"begin","container":"{}"}}"#, NAMES[*i]));
                if r["ok"] == true {
                    let id = u32::try_from(r["request"].as_u64().unwrap()).unwrap();
                    prop_assert!(booked.insert(id, NAMES[*i]).is_none(), "request id {id} reused");
                    open.push(id);
                    // The guest tags its work with the request's container,
                    // as the VMM holds it.
                    let reg = acct.registry();
                    let idx = reg.live_request_container(id);
                    prop_assert!(idx.is_some(), "ok:true for request {id} the VMM does not hold");
                    let cid = reg.containers()[idx.unwrap()].guest_id;
                    drop(reg);
                    writer.charge_exit(Some(tag(cid, id)), ExitReason::PortOut, 1);
                } else {
                    let e = r["error"].as_str().unwrap_or_default().to_string();
                    prop_assert!(
                        e == "unknown container" || e.starts_with("the VMM refused"),
                        "{e}"
                    );
                }
            }
            Step::End => {
                if !open.is_empty() {
                    let id = open.remove(0);
                    let r = app.call(&format!(r#"{{"op":"end","request":{id}}}"#));
                    prop_assert_eq!(&r["ok"], &Value::Bool(true), "{}", r);
                }
            }
            Step::Declare(i) => {
                let r = app.call(&format!(r#"{{"op":"declare","container":"{}"}}"#, NAMES[*i]));
                let ok = r["ok"] == true;
                let reg = acct.registry();
                let live: Vec<&str> = reg
                    .containers()
                    .iter()
                    .filter(|c| !c.retired)
                    .map(|c| &*c.path)
                    .collect();
                prop_assert!(
                    !ok || live.contains(&NAMES[*i]),
                    "ok:true for {} not held",
                    NAMES[*i]
                );
                prop_assert!(ok || NAMES[*i] == "db", "{}", r);
            }
        }
        // No path is live twice.
        let reg = acct.registry();
        let mut paths: Vec<&str> = reg
            .containers()
            .iter()
            .filter(|c| !c.retired)
            .map(|c| &*c.path)
            .collect();
        let n = paths.len();
        paths.sort_unstable();
        paths.dedup();
        prop_assert_eq!(paths.len(), n, "a live path appears twice");
    }
    drop(app);
    agent.stop();
    hub.stop();
    // Every request is booked once, in the container its application
    // named, with the one exit charged to it.
    let reg = acct.registry();
    let rows = reg.request_rows();
    for (id, name) in &booked {
        let mine: Vec<_> = rows.iter().filter(|r| r.guest_id == *id).collect();
        prop_assert_eq!(mine.len(), 1, "request {} has {} rows", id, mine.len());
        prop_assert_eq!(&*reg.containers()[mine[0].container].path, *name);
        prop_assert_eq!(mine[0].charges.exits_total().count, 1, "request {}", id);
    }
    let total: u64 = rows.iter().map(|r| r.charges.exits_total().count).sum();
    prop_assert_eq!(total, booked.len() as u64, "charges lost or invented");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn restarts_never_misbook_a_request(steps in proptest::collection::vec(step(), 1..14)) {
        run(&steps)?;
    }
}
