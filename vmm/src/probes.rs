//! Every device's counters, readable while the VM runs and when it ends:
//! the report's `devices`, `/v1/vm`'s `device_counters` and the
//! `resourceful_device_events_total` metric all read them here
//! (`docs/report.md`, "devices").

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use accounting::report::DeviceCounters;
use devices::counters::NamedCounters;
use devices::virtio::{MmioTransport, VirtioDevice};

/// Reads one device's counters.
type Read = Box<dyn Fn() -> Vec<(String, u64)> + Send + Sync>;

/// One device whose counters can be read.
struct Probe {
    name: String,
    kind: &'static str,
    read: Read,
}

/// The devices of a VM, in bus order.
#[derive(Default)]
pub struct DeviceProbes {
    probes: Vec<Probe>,
}

impl std::fmt::Debug for DeviceProbes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.probes.iter().map(|p| &p.name))
            .finish()
    }
}

/// A device's lock, even if a thread panicked while holding it: counters
/// are plain numbers and still worth reading.
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl DeviceProbes {
    /// Adds `name` of `kind`, read by `read`.
    pub fn add(&mut self, name: String, kind: &'static str, read: Read) {
        self.probes.push(Probe { name, kind, read });
    }

    /// Adds a virtio device: its own counters, then its transport's,
    /// prefixed `transport.`.
    pub fn add_virtio<D: VirtioDevice + 'static>(
        &mut self,
        name: String,
        kind: &'static str,
        dev: Arc<Mutex<D>>,
        transport: Arc<Mutex<MmioTransport<D>>>,
    ) {
        let read = move || {
            let mut out: Vec<(String, u64)> = (lock(&dev).counters().into_iter())
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            let t = lock(&transport).stats();
            out.extend(t.named().into_iter().map(|(k, v)| (format!("transport.{k}"), v)));
            out
        };
        self.add(name, kind, Box::new(read));
    }

    /// Every device's counters now.
    pub fn read(&self) -> Vec<DeviceCounters> {
        self.probes
            .iter()
            .map(|p| DeviceCounters {
                name: p.name.clone(),
                kind: p.kind.to_string(),
                counters: (p.read)().into_iter().collect(),
            })
            .collect()
    }
}
