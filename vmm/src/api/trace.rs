//! `resourceful trace TRACE_ID --api-sock A --api-sock B …`: one
//! distributed request, joined across VMs.
//!
//! A request that starts in one VM and calls another is charged in parts:
//! each VMM books its part under its own request, begun with the W3C trace
//! id that travelled with the call (docs/distributed-requests.md). This
//! reads every VMM's parts (`GET /v1/requests?trace_id=…`) and its tenant
//! (`GET /v1/vm`), and adds them up: the total, per VM, per container and
//! per part. A socket that cannot be read is named on one line; the others
//! are still joined, and the command then exits non-zero.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use super::client;

/// Most parts read from one VMM (the API's largest `limit`).
pub const MAX_PARTS_PER_VM: usize = super::MAX_REQUEST_LIMIT;

/// The arguments of `resourceful trace`.
#[derive(clap::Args, Debug)]
pub struct TraceArgs {
    /// The W3C trace id the request's parts were begun with (32 hex digits).
    #[arg(value_name = "TRACE_ID")]
    pub trace_id: String,
    /// A VM's API socket (repeatable), or a directory: every socket in it.
    #[arg(long = "api-sock", value_name = "PATH|DIR", required = true)]
    pub api_socks: Vec<PathBuf>,
    /// Print the join as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// One part: a request of one VM begun with the trace id.
#[derive(Debug, Clone, Serialize)]
pub struct Part {
    /// The VM's API socket.
    pub api_sock: String,
    /// The VM's tenant.
    pub tenant: String,
    /// The request as `GET /v1/requests` lists it.
    pub request: Value,
}

/// What one container of one VM spent on the trace.
#[derive(Debug, Clone, Serialize)]
pub struct ContainerPart {
    /// The container's path.
    pub path: String,
    /// Its parts.
    pub parts: usize,
    /// Their charges, added up.
    pub total: Value,
}

/// What one VM spent on the trace.
#[derive(Debug, Clone, Serialize)]
pub struct VmPart {
    /// The VM's API socket.
    pub api_sock: String,
    /// The VM's tenant.
    pub tenant: String,
    /// Its parts.
    pub parts: usize,
    /// Whether it had more parts than were read ([`MAX_PARTS_PER_VM`]).
    pub truncated: bool,
    /// Their charges, added up.
    pub total: Value,
    /// Per container, by path.
    pub containers: Vec<ContainerPart>,
}

/// A socket that could not be read.
#[derive(Debug, Clone, Serialize)]
pub struct Unreachable {
    /// The socket (or directory).
    pub api_sock: String,
    /// Why.
    pub error: String,
}

/// The joined request.
#[derive(Debug, Clone, Serialize)]
pub struct Joined {
    /// The trace id, lowercase.
    pub trace_id: String,
    /// All parts.
    pub parts: usize,
    /// Every part's charges, added up.
    pub total: Value,
    /// Per VM, in the order the sockets were given.
    pub vms: Vec<VmPart>,
    /// Every part.
    pub requests: Vec<Part>,
    /// Sockets that could not be read.
    pub unreachable: Vec<Unreachable>,
}

/// Adds `v` into `acc`: numbers are added (saturating), objects key by
/// key; anything else in `acc` is kept. Charges of any shape add up, so a
/// resource the API grows later is summed too.
pub fn add_charges(acc: &mut Value, v: &Value) {
    match (acc, v) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, bv) in b {
                match a.get_mut(k) {
                    Some(av) => add_charges(av, bv),
                    None => {
                        a.insert(k.clone(), bv.clone());
                    }
                }
            }
        }
        (a @ Value::Number(_), Value::Number(b)) => {
            if let (Some(x), Some(y)) = (a.as_u64(), b.as_u64()) {
                *a = Value::from(x.saturating_add(y));
            }
        }
        _ => {}
    }
}

/// The trace id as the API filters it (lowercase), or what is wrong.
pub fn parse_trace_id(s: &str) -> Result<String, String> {
    let lower = s.to_ascii_lowercase();
    match accounting::agent::trace_id_bytes(&lower) {
        Some(_) => Ok(lower),
        None => Err(format!(
            "TRACE_ID {s:?}: expected a W3C trace id, 32 hex digits, not all zero"
        )),
    }
}

/// The sockets named: a directory stands for every socket in it, by name.
/// A directory that cannot be read or holds none is unreachable.
pub fn expand(paths: &[PathBuf]) -> (Vec<PathBuf>, Vec<Unreachable>) {
    use std::os::unix::fs::FileTypeExt;
    let (mut socks, mut bad) = (Vec::new(), Vec::new());
    for p in paths {
        if !p.is_dir() {
            socks.push(p.clone());
            continue;
        }
        let found = std::fs::read_dir(p).map(|d| {
            let mut v: Vec<PathBuf> = d
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_socket()))
                .map(|e| e.path())
                .collect();
            v.sort();
            v
        });
        match found {
            Ok(v) if v.is_empty() => bad.push(Unreachable {
                api_sock: p.display().to_string(),
                error: "the directory holds no socket".into(),
            }),
            Ok(v) => socks.extend(v),
            Err(e) => bad.push(Unreachable {
                api_sock: p.display().to_string(),
                error: format!("cannot read the directory: {e}"),
            }),
        }
    }
    (socks, bad)
}

fn get_json(sock: &Path, target: &str) -> Result<Value, String> {
    let r = client::get(sock, target).map_err(|e| e.to_string())?;
    let body: Value = serde_json::from_str(&r.body)
        .map_err(|_| format!("GET {target}: the answer is not JSON (HTTP {})", r.status))?;
    if r.status != 200 {
        let msg = body.get("error").and_then(Value::as_str).unwrap_or_default();
        return Err(format!("GET {target}: HTTP {} {msg}", r.status));
    }
    Ok(body)
}

/// What one VM answered: its tenant and its parts, or why it could not be
/// read.
pub type Answer = Result<(String, Vec<Value>), String>;

/// One VM's tenant and parts.
pub fn read_vm(sock: &Path, trace_id: &str) -> Answer {
    let vm = get_json(sock, "/v1/vm")?;
    let tenant = vm
        .get("tenant")
        .and_then(Value::as_str)
        .ok_or("GET /v1/vm: no tenant in the answer")?
        .to_string();
    let target = format!("/v1/requests?trace_id={trace_id}&order=begin&limit={MAX_PARTS_PER_VM}");
    match get_json(sock, &target)? {
        Value::Array(parts) => Ok((tenant, parts)),
        _ => Err(format!("GET {target}: not a list")),
    }
}

/// Joins what each VM answered (`Err`: why it could not be read).
pub fn join(trace_id: &str, answers: Vec<(String, Answer)>) -> Joined {
    let mut j = Joined {
        trace_id: trace_id.to_string(),
        parts: 0,
        total: Value::Object(Default::default()),
        vms: Vec::new(),
        requests: Vec::new(),
        unreachable: Vec::new(),
    };
    for (api_sock, answer) in answers {
        let (tenant, parts) = match answer {
            Ok(a) => a,
            Err(error) => {
                j.unreachable.push(Unreachable { api_sock, error });
                continue;
            }
        };
        let mut total = Value::Object(Default::default());
        let mut containers: BTreeMap<String, (usize, Value)> = BTreeMap::new();
        for r in &parts {
            let charges = r.get("charges").cloned().unwrap_or(Value::Null);
            add_charges(&mut total, &charges);
            let path = r
                .get("container_path")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let c = containers
                .entry(path)
                .or_insert_with(|| (0, Value::Object(Default::default())));
            c.0 += 1;
            add_charges(&mut c.1, &charges);
        }
        add_charges(&mut j.total, &total);
        j.parts += parts.len();
        j.vms.push(VmPart {
            api_sock: api_sock.clone(),
            tenant: tenant.clone(),
            parts: parts.len(),
            truncated: parts.len() >= MAX_PARTS_PER_VM,
            total,
            containers: containers
                .into_iter()
                .map(|(path, (parts, total))| ContainerPart { path, parts, total })
                .collect(),
        });
        j.requests.extend(parts.into_iter().map(|request| Part {
            api_sock: api_sock.clone(),
            tenant: tenant.clone(),
            request,
        }));
    }
    j
}

fn num(v: &Value, ptr: &str) -> u64 {
    v.pointer(ptr).and_then(Value::as_u64).unwrap_or(0)
}

fn ms(v: &Value, ptr: &str) -> f64 {
    num(v, ptr) as f64 / 1e6
}

fn row(w: usize, name: &str, tenant: &str, parts: usize, c: &Value) -> String {
    format!(
        "{:<w$} {:<12} {:>5} {:>8} {:>10.3} {:>10.3} {:>7} {:>9} {:>7} {:>9}\n",
        name,
        tenant,
        parts,
        num(c, "/exits_total/count"),
        ms(c, "/exits_total/host_ns"),
        ms(c, "/guest_run_ns"),
        num(c, "/net/tx_frames"),
        num(c, "/net/tx_bytes"),
        num(c, "/net/rx_frames"),
        num(c, "/net/rx_bytes"),
    )
}

/// The join as a table: the total, each VM with its containers, then each
/// part, then the unreachable sockets.
pub fn render(j: &Joined) -> String {
    // The first column fits the longest socket path or container (up to a
    // point: a longer one pushes its row's numbers right).
    let w = j
        .vms
        .iter()
        .flat_map(|vm| {
            let paths = vm.containers.iter().map(|c| c.path.len() + 2);
            std::iter::once(vm.api_sock.len() + 14).chain(paths)
        })
        .max()
        .unwrap_or(0)
        .clamp(16, 100);
    let mut out = format!(
        "trace {}  |  {} part(s) in {} VM(s){}\n\n",
        j.trace_id,
        j.parts,
        j.vms.len(),
        if j.unreachable.is_empty() {
            String::new()
        } else {
            format!(", {} unreachable", j.unreachable.len())
        }
    );
    out.push_str(&format!(
        "{:<w$} {:<12} {:>5} {:>8} {:>10} {:>10} {:>7} {:>9} {:>7} {:>9}\n",
        "VM / CONTAINER",
        "TENANT",
        "PARTS",
        "EXITS",
        "HOST_MS",
        "RUN_MS",
        "TX_FRM",
        "TX_BYTES",
        "RX_FRM",
        "RX_BYTES"
    ));
    out.push_str(&row(w, "= total", "", j.parts, &j.total));
    for vm in &j.vms {
        let name = if vm.truncated {
            format!("{} (first {MAX_PARTS_PER_VM})", vm.api_sock)
        } else {
            vm.api_sock.clone()
        };
        out.push_str(&row(w, &name, &vm.tenant, vm.parts, &vm.total));
        for c in &vm.containers {
            out.push_str(&row(w, &format!("  {}", c.path), "", c.parts, &c.total));
        }
    }
    if !j.requests.is_empty() {
        out.push_str(&format!(
            "\n{:<w$} {:>10} {:<16} {:>8} {:>8} {:>10} {:>7} {:>7}\n",
            "VM", "REQUEST", "CONTAINER", "STATE", "EXITS", "HOST_MS", "TX_FRM", "RX_FRM"
        ));
        for p in &j.requests {
            let r = &p.request;
            out.push_str(&format!(
                "{:<w$} {:>10} {:<16} {:>8} {:>8} {:>10.3} {:>7} {:>7}\n",
                p.api_sock,
                num(r, "/id"),
                r.get("container_path")
                    .and_then(Value::as_str)
                    .unwrap_or_default(),
                r.get("state").and_then(Value::as_str).unwrap_or_default(),
                num(r, "/charges/exits_total/count"),
                ms(r, "/charges/exits_total/host_ns"),
                num(r, "/charges/net/tx_frames"),
                num(r, "/charges/net/rx_frames"),
            ));
        }
    }
    for u in &j.unreachable {
        out.push_str(&format!("unreachable: {}: {}\n", u.api_sock, u.error));
    }
    out
}

/// `resourceful trace`: prints the join; `Ok(false)` when a socket could
/// not be read (the others are still printed).
pub fn run(a: &TraceArgs) -> Result<bool, String> {
    let trace_id = parse_trace_id(&a.trace_id)?;
    let (socks, bad) = expand(&a.api_socks);
    let answers = socks
        .iter()
        .map(|s| (s.display().to_string(), read_vm(s, &trace_id)))
        .collect();
    let mut j = join(&trace_id, answers);
    j.unreachable.extend(bad);
    if a.json {
        let text = serde_json::to_string_pretty(&j).map_err(|e| e.to_string())?;
        println!("{text}");
        for u in &j.unreachable {
            eprintln!("resourceful trace: unreachable: {}: {}", u.api_sock, u.error);
        }
    } else {
        print!("{}", render(&j));
    }
    Ok(j.unreachable.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn part(id: u32, path: &str, exits: u64, tx: u64) -> Value {
        json!({"id": id, "container_path": path, "state": "finished",
               "charges": {"exits": {"mmio_write": {"count": exits, "host_ns": 10 * exits}},
                           "exits_total": {"count": exits, "host_ns": 10 * exits},
                           "guest_run_ns": 0, "run_samples": 0,
                           "net": {"tx_frames": tx, "tx_bytes": 100 * tx}}})
    }

    #[test]
    fn charges_of_any_shape_add_up() {
        let mut acc = json!({"a": 1, "o": {"x": 2}, "s": "keep"});
        add_charges(
            &mut acc,
            &json!({"a": 2, "o": {"x": 3, "y": 4}, "s": "other", "n": {"z": 5}}),
        );
        assert_eq!(
            acc,
            json!({"a": 3, "o": {"x": 5, "y": 4}, "s": "keep", "n": {"z": 5}})
        );
        let mut big = json!(u64::MAX);
        add_charges(&mut big, &json!(1));
        assert_eq!(big, json!(u64::MAX));
    }

    #[test]
    fn parts_are_joined_per_vm_and_container_and_bad_sockets_named() {
        let t = "4bf92f3577b34da6a3ce929d0e0e4736";
        let j = join(
            t,
            vec![
                (
                    "a.sock".into(),
                    Ok(("acme".into(), vec![part(1, "web", 3, 3), part(2, "web", 1, 0)])),
                ),
                ("gone.sock".into(), Err("cannot connect".into())),
                ("b.sock".into(), Ok(("globex".into(), vec![part(7, "svc", 3, 3)]))),
            ],
        );
        assert_eq!(j.parts, 3);
        assert_eq!(j.total["exits_total"]["count"], 7);
        assert_eq!(j.total["exits"]["mmio_write"]["host_ns"], 70);
        assert_eq!(j.total["net"]["tx_bytes"], 600);
        assert_eq!(j.vms.len(), 2);
        assert_eq!((j.vms[0].tenant.as_str(), j.vms[0].parts), ("acme", 2));
        assert_eq!(j.vms[0].containers.len(), 1);
        assert_eq!(j.vms[0].containers[0].total["exits_total"]["count"], 4);
        assert_eq!(j.vms[1].total["net"]["tx_frames"], 3);
        assert_eq!(j.unreachable.len(), 1);
        let text = render(&j);
        assert!(text.contains("unreachable: gone.sock: cannot connect"), "{text}");
        assert!(text.contains("3 part(s) in 2 VM(s), 1 unreachable"), "{text}");
        assert_eq!(text.lines().filter(|l| l.starts_with("unreachable")).count(), 1);
        assert!(!j.vms[0].truncated);
        // A VM that answered the API's largest page may hold more parts.
        let many = (0..10_000u32).map(|i| part(i, "web", 1, 0)).collect();
        let j = join(t, vec![("a.sock".into(), Ok(("acme".into(), many)))]);
        assert!(j.vms[0].truncated);
        assert_eq!(MAX_PARTS_PER_VM, 10_000);
        assert_eq!(j.total["exits_total"]["count"], 10_000);
        assert!(render(&j).contains("a.sock (first 10000)"));
    }

    #[test]
    fn trace_ids_and_directories_are_checked() {
        assert_eq!(
            parse_trace_id("4BF92F3577B34DA6A3CE929D0E0E4736").unwrap(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        for bad in [
            "",
            "4bf9",
            "00000000000000000000000000000000",
            "zbf92f3577b34da6a3ce929d0e0e4736",
        ] {
            let e = parse_trace_id(bad).unwrap_err();
            assert!(e.contains("TRACE_ID") && e.contains("32 hex digits"), "{e}");
        }
        let dir = std::env::temp_dir().join(format!("rsrc-trace-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (s, bad) = expand(std::slice::from_ref(&dir));
        assert!(s.is_empty());
        assert!(bad[0].error.contains("no socket"), "{bad:?}");
        std::fs::write(dir.join("not-a-socket"), b"").unwrap();
        let _b = std::os::unix::net::UnixListener::bind(dir.join("b.sock")).unwrap();
        let _a = std::os::unix::net::UnixListener::bind(dir.join("a.sock")).unwrap();
        let plain = PathBuf::from("/x/y.sock");
        let (s, bad) = expand(&[dir.clone(), plain.clone()]);
        assert!(bad.is_empty());
        assert_eq!(s, [dir.join("a.sock"), dir.join("b.sock"), plain]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
