//! `resourceful top --api-sock DIR`: every VM whose API socket is in DIR
//! (as `demo --api-sock DIR` leaves them), grouped by tenant, each VM drawn
//! as single-socket `top` draws it ([`super::top::render`]), with rates
//! against the previous poll of the same socket.
//!
//! Sockets are listed again at every poll ([`super::trace::expand`]), so
//! VMs that start or end are picked up or dropped; one that does not answer
//! is named with its error, never fatal while another answers.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::top::{self, Frame};

/// One poll of every socket in the directory.
#[derive(Debug, Default)]
pub struct HostFrame {
    /// The VMs that answered, by socket.
    pub vms: Vec<(PathBuf, Frame)>,
    /// The sockets that did not, with why.
    pub unreachable: Vec<(String, String)>,
    /// Sockets past [`MAX_VMS`], not polled.
    pub not_polled: usize,
}

/// The most sockets polled in one refresh (the first by name); the rest
/// are counted in [`HostFrame::not_polled`].
pub const MAX_VMS: usize = 64;

/// Polls every socket in `dir` once (at most [`MAX_VMS`]).
pub fn fetch(dir: &Path) -> HostFrame {
    let (mut socks, bad) = super::trace::expand(&[dir.to_path_buf()]);
    let mut f = HostFrame {
        unreachable: bad.into_iter().map(|u| (u.api_sock, u.error)).collect(),
        not_polled: socks.len().saturating_sub(MAX_VMS),
        ..HostFrame::default()
    };
    socks.truncate(MAX_VMS);
    for s in socks {
        match top::fetch(&s) {
            Ok(frame) => f.vms.push((s, frame)),
            Err(e) => f.unreachable.push((s.display().to_string(), e.to_string())),
        }
    }
    f
}

/// The VM's name: its socket's file name without `.sock`.
fn vm_name(sock: &Path) -> String {
    let name = sock
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.strip_suffix(".sock").map(str::to_string).unwrap_or(name)
}

/// Renders `cur`, grouped by tenant (by name, then the VMs by socket), with
/// rates against `prev` (the last frame of each socket).
pub fn render(prev: &HashMap<PathBuf, Frame>, cur: &HostFrame) -> String {
    let mut by_tenant: BTreeMap<&str, Vec<&(PathBuf, Frame)>> = BTreeMap::new();
    for vm in &cur.vms {
        let tenant = vm.1.vm["tenant"].as_str().unwrap_or("?");
        by_tenant.entry(tenant).or_default().push(vm);
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "host: {} VM(s) of {} tenant(s) answering{}",
        cur.vms.len(),
        by_tenant.len(),
        if cur.unreachable.is_empty() {
            String::new()
        } else {
            format!(", {} not", cur.unreachable.len())
        }
    );
    for (tenant, vms) in &by_tenant {
        let exits: u64 = vms
            .iter()
            .map(|(_, f)| f.vm["totals"]["exits_total"]["count"].as_u64().unwrap_or(0))
            .sum();
        let _ = writeln!(
            out,
            "\n=== tenant {tenant}: {} VM(s), {exits} exits ===",
            vms.len()
        );
        for (sock, frame) in vms {
            let _ = writeln!(out, "--- VM {} ({}) ---", vm_name(sock), sock.display());
            out.push_str(&top::render(prev.get(sock), frame));
        }
    }
    for (sock, why) in &cur.unreachable {
        let _ = writeln!(out, "\nunreachable {sock}: {why}");
    }
    if cur.not_polled > 0 {
        let _ = writeln!(
            out,
            "\n{} more socket(s) not polled (at most {MAX_VMS})",
            cur.not_polled
        );
    }
    out
}

/// Redraws the host view every `interval` until every VM is gone (after at
/// least one answered), a stop signal, or `iterations` frames.
pub fn run(dir: &Path, interval: std::time::Duration, iterations: Option<u64>) -> Result<(), String> {
    use std::io::{IsTerminal, Write};
    use std::sync::atomic::Ordering;
    let tty = std::io::stdout().is_terminal();
    let mut prev: HashMap<PathBuf, Frame> = HashMap::new();
    let mut shown = 0u64;
    while !crate::vm::STOP_REQUESTED.load(Ordering::Acquire) {
        let cur = fetch(dir);
        if cur.vms.is_empty() {
            let why: Vec<String> = cur.unreachable.iter().map(|(s, e)| format!("{s}: {e}")).collect();
            if prev.is_empty() {
                return Err(format!(
                    "--api-sock {}: no VM answers there ({}); is the demo running with --api-sock DIR?",
                    dir.display(),
                    why.join("; ")
                ));
            }
            println!("\nevery VM is gone; last frame above");
            return Ok(());
        }
        let text = render(&prev, &cur);
        let mut out = std::io::stdout().lock();
        let _ = write!(out, "{}{text}", if tty { "\x1b[H\x1b[2J" } else { "\n" });
        let _ = out.flush();
        drop(out);
        prev = cur.vms.into_iter().collect();
        shown += 1;
        if iterations.is_some_and(|n| shown >= n) {
            break;
        }
        std::thread::sleep(interval);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Instant;

    fn frame(tenant: &str, exits: u64) -> Frame {
        Frame {
            at: Instant::now(),
            vm: json!({"tenant": tenant, "totals": {"exits_total": {"count": exits}}}),
            containers: json!([]),
            requests: json!([]),
        }
    }

    #[test]
    fn vms_are_grouped_by_tenant_by_name_and_the_unreachable_are_named() {
        let cur = HostFrame {
            vms: vec![
                (PathBuf::from("/d/zeta-1.sock"), frame("zeta", 5)),
                (PathBuf::from("/d/acme-1.sock"), frame("acme", 7)),
                (PathBuf::from("/d/acme-2.sock"), frame("acme", 3)),
            ],
            unreachable: vec![("/d/old.sock".into(), "refused".into())],
            not_polled: 2,
        };
        let text = render(&HashMap::new(), &cur);
        assert!(
            text.starts_with("host: 3 VM(s) of 2 tenant(s) answering, 1 not\n"),
            "{text}"
        );
        let at = |s: &str| text.find(s).unwrap_or_else(|| panic!("no {s} in {text}"));
        assert!(at("=== tenant acme: 2 VM(s), 10 exits ===") < at("--- VM acme-1 (/d/acme-1.sock) ---"));
        assert!(at("--- VM acme-2 (") < at("=== tenant zeta: 1 VM(s), 5 exits ==="));
        assert!(at("=== tenant zeta") < at("--- VM zeta-1 ("));
        assert!(text.contains("unreachable /d/old.sock: refused"));
        assert!(text.contains("2 more socket(s) not polled (at most 64)"));
    }
}
