//! The report written as it is built: containers and requests are turned
//! into their report form one at a time, straight into the JSON (or table)
//! writer, so writing the report of a VM with a million retained requests
//! or containers costs a small constant beyond the books, never a second
//! copy of them (`docs/report.md`, "Memory").
//!
//! [`Report::build`](super::Report::build) collects the same pieces into
//! memory, so the streamed JSON and the built report's JSON are the same
//! bytes (a test checks it).

use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::io::{self, Write};
use std::sync::MutexGuard;

use serde::ser::{SerializeStruct, Serializer};
use serde::Serialize;

use super::{
    conservation, path_of, request_report, table, ChargesReport, Conservation, ContainerReport,
    DeviceCounters, LimitsReport, RegistryStatsReport, Report, RequestReport, RequestSummary, VcpuReport,
    VmInfo, SCHEMA,
};
use crate::ledger::Accounting;
use crate::registry::Registry;
use crate::resource::Charges;

/// The books of a VM, summed and ready to be written as a report. It holds
/// the registry's lock until dropped: build it once the vCPUs stopped.
pub struct ReportWriter<'a> {
    tenant: &'a str,
    reg: MutexGuard<'a, Registry>,
    vm: VmInfo,
    totals: ChargesReport,
    vcpus: Vec<VcpuReport>,
    /// Request charges not yet settled into their containers, by container.
    unsettled: HashMap<usize, Charges>,
    /// A switch log placed run time: containers charged none by sample
    /// have run-time provenance `exact`.
    run_logged: bool,
    guest_errors: BTreeMap<String, u64>,
    conservation: Conservation,
    agent: BTreeMap<String, u64>,
    devices: Vec<DeviceCounters>,
}

impl<'a> ReportWriter<'a> {
    /// Sums the books of `acct`; `vm` is what the VMM knows about the VM.
    pub fn new(acct: &'a Accounting, vm: VmInfo) -> Self {
        let mut total = Charges::default();
        for w in &acct.writer_totals() {
            total.add(w);
        }
        let mut reg = acct.registry();
        reg.sweep();
        let mut sum = Charges::default();
        for c in reg.containers() {
            sum.add(&c.cells.sum());
        }
        ReportWriter {
            tenant: acct.tenant(),
            unsettled: reg.requests_unsettled(),
            run_logged: acct.run_logged(),
            reg,
            vm,
            totals: ChargesReport::from(&total),
            vcpus: acct
                .vcpu_totals()
                .iter()
                .enumerate()
                .map(|(id, c)| VcpuReport {
                    id,
                    charges: ChargesReport::from(c),
                })
                .collect(),
            guest_errors: acct.errors().nonzero(),
            conservation: conservation(&total, &sum),
            agent: BTreeMap::new(),
            devices: Vec::new(),
        }
    }

    /// Adds the agent channel's non-zero counters.
    #[must_use]
    pub fn with_agent(mut self, agent: BTreeMap<String, u64>) -> Self {
        self.agent = agent;
        self
    }

    /// Adds the devices' counters.
    #[must_use]
    pub fn with_devices(mut self, devices: Vec<DeviceCounters>) -> Self {
        self.devices = devices;
        self
    }

    /// The VM facts the report starts with.
    pub fn vm(&self) -> &VmInfo {
        &self.vm
    }

    /// Container `i` in report form.
    fn container(&self, i: usize) -> ContainerReport {
        let reg = &*self.reg;
        let c = &reg.containers()[i];
        let mut charged = c.settled;
        if let Some(u) = self.unsettled.get(&i) {
            charged.add(u);
        }
        ContainerReport {
            index: i,
            id: c.guest_id,
            name: c.name.clone(),
            path: path_of(reg, i),
            parent: c.parent,
            retired: c.retired,
            provenance: crate::query::provenance(i, self.run_logged && !c.cells.run_sampled()),
            charges: ChargesReport::from(&c.cells.sum()),
            requests: RequestSummary {
                begun: c.requests_begun,
                ended: c.requests_ended,
                live: c.requests_live,
                retained: c.requests_retained,
                evicted: c.requests_evicted,
                charged: ChargesReport::from(&charged),
            },
        }
    }

    /// Every container, `unattributed` first, built one at a time.
    pub fn containers(&self) -> impl Iterator<Item = ContainerReport> + '_ {
        (0..self.reg.containers().len()).map(|i| self.container(i))
    }

    /// Every live and retained request in begin order, built one at a time.
    pub fn requests(&self) -> impl Iterator<Item = RequestReport> + '_ {
        self.reg
            .requests_by_seq()
            .map(|row| request_report(&self.reg, &row))
    }

    /// The `n` most expensive requests (exit host time, then exit count;
    /// among equals the earlier one), most expensive first, and how many
    /// requests there are. Holds `n` of them at a time.
    pub fn top_requests(&self, n: usize) -> (Vec<RequestReport>, usize) {
        /// Orders so that the heap's greatest is the one to drop first:
        /// lower rank, then later begin.
        struct Ranked(std::cmp::Reverse<(u64, u64)>, u64, RequestReport);
        impl PartialEq for Ranked {
            fn eq(&self, o: &Self) -> bool {
                (self.0, self.1) == (o.0, o.1)
            }
        }
        impl Eq for Ranked {}
        impl PartialOrd for Ranked {
            fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(o))
            }
        }
        impl Ord for Ranked {
            fn cmp(&self, o: &Self) -> std::cmp::Ordering {
                (self.0, self.1).cmp(&(o.0, o.1))
            }
        }
        let mut heap = BinaryHeap::with_capacity(n.saturating_add(1).min(1 << 16));
        let mut count = 0;
        for r in self.requests() {
            count += 1;
            if n == 0 {
                continue;
            }
            heap.push(Ranked(std::cmp::Reverse(table::rank(&r.charges)), r.seq, r));
            if heap.len() > n {
                heap.pop();
            }
        }
        (heap.into_sorted_vec().into_iter().map(|r| r.2).collect(), count)
    }

    /// Writes the JSON report (pretty, `resourceful.report/v1`) into `w`.
    pub fn write_json(&self, w: impl Write) -> io::Result<()> {
        let mut w = io::BufWriter::with_capacity(64 << 10, w);
        serde_json::to_writer_pretty(&mut w, self).map_err(io::Error::from)?;
        w.flush()
    }

    /// Writes the table (as [`Report::to_table`]) into `w`.
    pub fn write_table(&self, w: &mut dyn Write, max_requests: usize) -> io::Result<()> {
        let (top, listed) = self.top_requests(max_requests);
        let top: Vec<&RequestReport> = top.iter().collect();
        let t = table::Table {
            tenant: self.tenant,
            vm: &self.vm,
            totals: &self.totals,
            requests_begun: self.reg.stats().requests_begun,
            containers: &|f| self.containers().for_each(|c| f(&c)),
            top: &top,
            requests_listed: listed,
            guest_errors: &self.guest_errors,
            agent: &self.agent,
            conservation: &self.conservation,
        };
        table::write(w, &t)
    }

    /// The whole report in memory.
    pub fn into_report(self) -> Report {
        Report {
            schema: SCHEMA.to_string(),
            tenant: self.tenant.to_string(),
            totals: self.totals.clone(),
            vcpus: self.vcpus.clone(),
            containers: self.containers().collect(),
            requests: self.requests().collect(),
            guest_errors: self.guest_errors.clone(),
            declarations: self.reg.stats().into(),
            limits: self.reg.limits().into(),
            conservation: self.conservation.clone(),
            agent: self.agent.clone(),
            devices: self.devices.clone(),
            vm: self.vm,
        }
    }
}

/// A sequence serialised from a fresh iterator, one element at a time.
struct Seq<F>(F);

impl<F, I> Serialize for Seq<F>
where
    F: Fn() -> I,
    I: Iterator,
    I::Item: Serialize,
{
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq((self.0)())
    }
}

/// The same fields, in the same order and with the same omissions, as the
/// derived serialisation of [`Report`].
impl Serialize for ReportWriter<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_struct("Report", 13)?;
        m.serialize_field("schema", SCHEMA)?;
        m.serialize_field("tenant", self.tenant)?;
        m.serialize_field("vm", &self.vm)?;
        m.serialize_field("totals", &self.totals)?;
        m.serialize_field("vcpus", &self.vcpus)?;
        m.serialize_field("containers", &Seq(|| self.containers()))?;
        m.serialize_field("requests", &Seq(|| self.requests()))?;
        m.serialize_field("guest_errors", &self.guest_errors)?;
        m.serialize_field("declarations", &RegistryStatsReport::from(self.reg.stats()))?;
        m.serialize_field("limits", &LimitsReport::from(self.reg.limits()))?;
        m.serialize_field("conservation", &self.conservation)?;
        if self.agent.is_empty() {
            m.skip_field("agent")?;
        } else {
            m.serialize_field("agent", &self.agent)?;
        }
        if self.devices.is_empty() {
            m.skip_field("devices")?;
        } else {
            m.serialize_field("devices", &self.devices)?;
        }
        m.end()
    }
}
