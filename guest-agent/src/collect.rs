//! One interval's collection: a snapshot of processes and cgroups, turned
//! into a `context` report that fits one frame.
//!
//! A report over [`MAX_FRAME`] is trimmed, in this order, and every cut is
//! counted: thread lists (largest first, into `threads_omitted`), then
//! processes (least CPU first, into `processes_omitted`), then cgroups (the
//! deepest, last walked, first, into `cgroups_omitted`).

use std::path::PathBuf;

use accounting::agent::{
    encode, AgentDrops, AgentMessage, CgroupInfo, ContextReport, ProcessInfo, ProtocolError, MAX_CGROUPS,
    MAX_FRAME,
};

use crate::cgroup::{self, CgroupStats};
use crate::procfs::{self, ProcReader, ProcStats, Units};

/// One interval's raw facts.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// `CLOCK_MONOTONIC` at the start, ns.
    pub taken_ns: u64,
    /// Processes, ascending pid.
    pub processes: Vec<ProcessInfo>,
    /// What the process scan skipped.
    pub proc_stats: ProcStats,
    /// Cgroups, breadth-first.
    pub cgroups: Vec<CgroupInfo>,
    /// What the cgroup walk skipped.
    pub cgroup_stats: CgroupStats,
}

/// Collects snapshots and builds reports.
#[derive(Debug)]
pub struct Collector {
    procs: ProcReader,
    cgroup_root: Option<PathBuf>,
    units: Units,
    interval_ms: u32,
    seq: u64,
    /// Most cgroups read per snapshot (at most [`MAX_CGROUPS`]).
    pub max_cgroups: usize,
}

impl Collector {
    /// A collector of `proc_root` and `cgroup_root` (none: no cgroups).
    pub fn new(proc_root: impl Into<PathBuf>, cgroup_root: Option<PathBuf>, interval_ms: u32) -> Self {
        let units = Units::host();
        Self {
            procs: ProcReader::new(proc_root, units),
            cgroup_root,
            units,
            interval_ms,
            seq: 0,
            max_cgroups: MAX_CGROUPS,
        }
    }

    /// Whether threads are listed.
    pub fn set_list_threads(&mut self, on: bool) {
        self.procs.list_threads = on;
    }

    /// Reads everything once. Never fails: an unreadable proc or cgroup
    /// root gives empty lists (logged).
    pub fn snapshot(&mut self) -> Snapshot {
        let taken_ns = procfs::monotonic_ns();
        let (processes, proc_stats) = self.procs.scan().unwrap_or_else(|e| {
            log::warn!("cannot list processes: {e}");
            (Vec::new(), ProcStats::default())
        });
        let (cgroups, cgroup_stats) = match &self.cgroup_root {
            Some(root) => cgroup::walk(root, self.max_cgroups).unwrap_or_else(|e| {
                log::warn!("cannot read the cgroup tree at {}: {e}", root.display());
                (Vec::new(), CgroupStats::default())
            }),
            None => (Vec::new(), CgroupStats::default()),
        };
        Snapshot {
            taken_ns,
            processes,
            proc_stats,
            cgroups,
            cgroup_stats,
        }
    }

    /// The next report from `snap`, with the agent's own CPU and RSS now.
    pub fn report(&mut self, snap: Snapshot, drops: AgentDrops) -> ContextReport {
        self.seq += 1;
        ContextReport {
            seq: self.seq,
            taken_ns: snap.taken_ns,
            interval_ms: self.interval_ms,
            processes: snap.processes,
            processes_omitted: snap.proc_stats.omitted,
            cgroups: snap.cgroups,
            cgroups_omitted: snap.cgroup_stats.omitted,
            drops,
            agent_cpu_ns: procfs::self_cpu_ns(),
            agent_rss_bytes: procfs::self_rss_bytes(self.units),
        }
    }
}

fn json_len<T: serde::Serialize>(v: &T) -> usize {
    serde_json::to_vec(v).map_or(0, |b| b.len() + 1)
}

/// Cuts about `excess` bytes of JSON from `r` (see the module notes).
pub fn trim(r: &mut ContextReport, excess: usize) {
    // Omitted counters may gain digits: ask for a little more.
    let mut excess = excess + 64;
    let mut by_threads: Vec<(usize, usize)> = r
        .processes
        .iter()
        .enumerate()
        .filter(|(_, p)| !p.threads.is_empty())
        .map(|(i, p)| (p.threads.iter().map(json_len).sum(), i))
        .collect();
    by_threads.sort_unstable_by(|a, b| b.cmp(a));
    for (bytes, i) in by_threads {
        if excess == 0 {
            return;
        }
        let p = &mut r.processes[i];
        let n = u32::try_from(p.threads.len()).unwrap_or(u32::MAX);
        p.threads_omitted = p.threads_omitted.saturating_add(n);
        p.threads = Vec::new();
        excess = excess.saturating_sub(bytes);
    }
    if excess == 0 {
        return;
    }
    let mut by_cpu: Vec<(u64, std::cmp::Reverse<u32>, usize)> = r
        .processes
        .iter()
        .enumerate()
        .map(|(i, p)| {
            (
                p.usage.user_ns.saturating_add(p.usage.system_ns),
                std::cmp::Reverse(p.pid),
                i,
            )
        })
        .collect();
    by_cpu.sort_unstable();
    let mut cut = vec![false; r.processes.len()];
    for (_, _, i) in by_cpu {
        if excess == 0 {
            break;
        }
        cut[i] = true;
        excess = excess.saturating_sub(json_len(&r.processes[i]));
        r.processes_omitted = r.processes_omitted.saturating_add(1);
    }
    let mut it = cut.iter();
    r.processes.retain(|_| !it.next().copied().unwrap_or(false));
    while excess > 0 {
        let Some(g) = r.cgroups.pop() else { break };
        excess = excess.saturating_sub(json_len(&g));
        r.cgroups_omitted = r.cgroups_omitted.saturating_add(1);
    }
}

/// Encodes a report as one frame whose body is at most `max_body` bytes
/// (at most [`MAX_FRAME`]), trimming it as needed. The report is validated
/// first: the agent sends nothing the VMM would refuse.
pub fn encode_report(report: ContextReport, max_body: usize) -> Result<Vec<u8>, ProtocolError> {
    let max_body = max_body.min(MAX_FRAME);
    let mut msg = AgentMessage::Context(report);
    msg.validate()?;
    for _ in 0..16 {
        let over = match encode(&msg) {
            Ok(b) if b.len() - 4 <= max_body => return Ok(b),
            Ok(b) => b.len() - 4 - max_body,
            Err(ProtocolError::FrameLength(n)) => usize::try_from(n).unwrap_or(usize::MAX) - max_body,
            Err(e) => return Err(e),
        };
        if let AgentMessage::Context(r) = &mut msg {
            trim(r, over);
        }
    }
    Err(ProtocolError::Invalid(
        "report cannot be trimmed to fit a frame".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use accounting::agent::{decode_agent, TaskUsage, ThreadInfo};

    fn process(pid: u32, cpu: u64, threads: usize) -> ProcessInfo {
        ProcessInfo {
            pid,
            ppid: 1,
            comm: format!("p{pid}"),
            cgroup: "/system.slice/some.service".into(),
            usage: TaskUsage {
                user_ns: cpu,
                ..TaskUsage::default()
            },
            read_bytes: 0,
            write_bytes: 0,
            rss_bytes: 0,
            threads: (0..threads)
                .map(|t| ThreadInfo {
                    tid: pid * 1000 + u32::try_from(t).unwrap(),
                    comm: "worker".into(),
                    usage: TaskUsage::default(),
                })
                .collect(),
            threads_omitted: 0,
        }
    }

    fn body(frame: &[u8]) -> ContextReport {
        match decode_agent(&frame[4..]).unwrap() {
            AgentMessage::Context(c) => c,
            m => panic!("{m:?}"),
        }
    }

    #[test]
    fn a_small_report_is_untouched() {
        let r = ContextReport {
            processes: vec![process(1, 5, 2)],
            ..ContextReport::default()
        };
        let c = body(&encode_report(r.clone(), MAX_FRAME).unwrap());
        assert_eq!(c, r);
    }

    #[test]
    fn threads_go_before_processes() {
        let r = ContextReport {
            processes: (1..=20)
                .map(|pid| process(pid, u64::from(pid), if pid == 7 { 100 } else { 1 }))
                .collect(),
            ..ContextReport::default()
        };
        let full = encode_report(r.clone(), MAX_FRAME).unwrap().len() - 4;
        // Room for everything but pid 7's hundred threads.
        let f = encode_report(r.clone(), full - 4000).unwrap();
        assert!(f.len() - 4 <= full - 4000);
        let c = body(&f);
        assert_eq!(c.processes.len(), 20);
        assert_eq!(c.processes[6].threads_omitted, 100);
        assert_eq!(c.processes[0].threads.len(), 1);
        // Room for about half the processes: the ones with least CPU go.
        let mut bare = r.clone();
        bare.processes.iter_mut().for_each(|p| p.threads.clear());
        let no_threads = encode_report(bare, MAX_FRAME).unwrap().len() - 4;
        let f = encode_report(r, no_threads / 2).unwrap();
        let c = body(&f);
        assert!(c.processes.len() < 20 && !c.processes.is_empty());
        assert_eq!(c.processes_omitted as usize + c.processes.len(), 20);
        assert_eq!(c.processes.last().unwrap().pid, 20, "the busiest process stays");
        assert!(c.processes.iter().all(|p| p.threads.is_empty()));
    }

    #[test]
    fn cgroups_go_last() {
        let r = ContextReport {
            processes: vec![process(1, 1, 0)],
            cgroups: (0..50)
                .map(|i| CgroupInfo {
                    path: format!("/g{i}"),
                    ..CgroupInfo::default()
                })
                .collect(),
            ..ContextReport::default()
        };
        let c = body(&encode_report(r, 2000).unwrap());
        assert!(c.processes.is_empty());
        assert!(c.cgroups.len() < 50);
        assert_eq!(c.cgroups_omitted as usize + c.cgroups.len(), 50);
        assert_eq!(c.cgroups[0].path, "/g0");
    }
}
