//! Per-container limits that change while the VM runs
//! (docs/limits-per-container.md): which limit a container path falls
//! under, and the table the API changes (`/v1/limits`) and the devices
//! take up.
//!
//! The device thread owns the buckets. A change replaces the table under
//! its lock and bumps a generation number; each device's lookup compares
//! the generation (one atomic load per request) and takes the new list
//! only when it moved, then the API wakes each device's event loop (an
//! eventfd) so that work a removed or loosened limit held goes at once. A
//! container under no limit costs the device that load and nothing else:
//! no lock, no registry lookup while no limit applies to the device.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use accounting::ledger::Accounting;
use devices::virtio::limiter::{BlockLimitConfig, LimitLookup, LimitState};
use devices::virtio::shared_tenant::SharedTenant;
use vmm_sys_util::eventfd::EventFd;

use crate::config::ContainerLimit;

/// The index in `paths` of the limit of the container at `path`: the entry
/// equal to it, else the entry `PREFIX*` with the longest `PREFIX` that
/// `path` starts with (`web/*` covers `web/api` and `web/api/v2`, not
/// `web`; `*` covers every path, `unattributed` included); `None` if none.
/// The tenant limit (`tenant`) is never a container's: every request takes
/// its tokens besides its container's (the device's throttle sees to it).
pub fn limit_index(paths: &[String], path: &str) -> Option<usize> {
    let tenant = devices::virtio::limiter::TENANT_PATH;
    if let Some(i) = paths.iter().position(|p| p == path && p != tenant) {
        return Some(i);
    }
    paths
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            let prefix = p.strip_suffix('*')?;
            path.starts_with(prefix).then_some((prefix.len(), i))
        })
        .max()
        .map(|(_, i)| i)
}

/// Longest a change waits for the devices to take it up.
pub const TAKE_UP_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// One device's published limit states.
type Published = Arc<Mutex<Vec<LimitState>>>;

/// The limits of a running VM, shared by the API and the devices.
pub struct LiveLimits {
    generation: AtomicU64,
    /// Changes the API refused.
    rejected: AtomicU64,
    table: Mutex<Table>,
}

struct Table {
    limits: Vec<ContainerLimit>,
    /// Each limited device: its name and its event loop's wake.
    wakers: Vec<(String, EventFd)>,
    /// Each limited device: its name and what it published.
    states: Vec<(String, Published)>,
    /// Each limited device's lookup: the generation whose limits it has
    /// taken up and published.
    acks: Vec<Arc<AtomicU64>>,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl LiveLimits {
    /// The limits the VM starts with.
    pub fn new(limits: Vec<ContainerLimit>) -> Self {
        Self {
            generation: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            table: Mutex::new(Table {
                limits,
                wakers: Vec::new(),
                states: Vec::new(),
                acks: Vec::new(),
            }),
        }
    }

    /// Counts a change the API refused.
    pub fn count_rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// Changes the API refused so far.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// The limits now.
    pub fn limits(&self) -> Vec<ContainerLimit> {
        locked(&self.table).limits.clone()
    }

    /// Runs `change` on a copy of the limits and, if it succeeds, makes the
    /// result the limits (under the table's lock: two changes never
    /// interleave, and a failed one changes nothing).
    pub fn update<E>(&self, change: impl FnOnce(&mut Vec<ContainerLimit>) -> Result<(), E>) -> Result<(), E> {
        let t = &mut *locked(&self.table);
        let mut next = t.limits.clone();
        change(&mut next)?;
        t.limits = next;
        self.generation.fetch_add(1, Ordering::SeqCst);
        for (name, w) in &t.wakers {
            if let Err(e) = w.write(1) {
                accounting::warn_rl!("{name}: cannot wake the device for a limit change: {e}");
            }
        }
        Ok(())
    }

    /// Whether some device has not yet taken up (and published) the last
    /// change. The API waits for that, at most [`TAKE_UP_WAIT`], before it
    /// answers a change.
    pub fn pending(&self) -> bool {
        let generation = self.generation.load(Ordering::SeqCst);
        let t = locked(&self.table);
        t.acks.iter().any(|a| a.load(Ordering::SeqCst) < generation)
    }

    /// Every device's published limit states, by device name.
    pub fn states(&self) -> Vec<(String, Vec<LimitState>)> {
        let t = locked(&self.table);
        t.states
            .iter()
            .map(|(name, p)| (name.clone(), locked(p).clone()))
            .collect()
    }

    /// Device `name`'s wake: written after each change.
    pub fn add_waker(&self, name: &str, waker: EventFd) {
        locked(&self.table).wakers.push((name.to_owned(), waker));
    }

    /// The lookup of device `name`, which takes the limits with keys for
    /// its `kind`, and the limits it starts with.
    pub fn lookup(
        self: &Arc<Self>,
        acct: &Arc<Accounting>,
        name: &str,
        kind: DeviceKind,
    ) -> (Vec<BlockLimitConfig>, RegistryLookup) {
        let published: Published = Arc::default();
        let t = &mut *locked(&self.table);
        let seen = self.generation.load(Ordering::SeqCst);
        let ack = Arc::new(AtomicU64::new(seen));
        t.acks.push(Arc::clone(&ack));
        t.states.push((name.to_owned(), Arc::clone(&published)));
        let configs = kind.configs(&t.limits);
        let lookup = RegistryLookup {
            acct: Arc::clone(acct),
            paths: configs.iter().map(|c| c.path.clone()).collect(),
            live: Some(Live {
                limits: Arc::clone(self),
                seen,
                kind,
                published,
                ack,
            }),
            shared: None,
        };
        (configs, lookup)
    }
}

/// Which device a lookup serves, and so which keys it takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    /// virtio-blk: `blk-*`.
    Block,
    /// virtio-net TX: `net-tx-*`.
    NetTx,
    /// virtio-net RX: `net-rx-*`.
    NetRx,
    /// virtio-vsock: `vsock-bytes`.
    Vsock,
    /// The guest CPU limiter: `cpu` (its bucket is the `ops` one, in ns
    /// of run time: `size` one period's budget, `refill_time` the period).
    Cpu,
}

impl DeviceKind {
    /// The limits of `all` that have keys for this kind, in its form.
    pub fn configs(self, all: &[ContainerLimit]) -> Vec<BlockLimitConfig> {
        let applies = |l: &&ContainerLimit| match self {
            Self::Block => l.limits_block(),
            Self::NetTx => l.limits_net_tx(),
            Self::NetRx => l.limits_net_rx(),
            Self::Vsock => l.limits_vsock(),
            Self::Cpu => l.limits_cpu(),
        };
        let config = |l: &ContainerLimit| match self {
            Self::Block => l.block(),
            Self::NetTx => l.net_tx(),
            Self::NetRx => l.net_rx(),
            Self::Vsock => l.vsock(),
            Self::Cpu => l.cpu_bucket(),
        };
        all.iter().filter(applies).map(config).collect()
    }
}

/// A device's live part of the lookup.
struct Live {
    limits: Arc<LiveLimits>,
    seen: u64,
    kind: DeviceKind,
    published: Published,
    /// `seen`, once the limits of that generation are published.
    ack: Arc<AtomicU64>,
}

/// Which limit a block request or TX frame falls under: that of the path
/// of the container its tag charges (the registry's answer, so a limit
/// follows whatever live container has that path; an unknown or absent
/// tag charges `unattributed`). Asked once per request, only on a device
/// that has limits or may get them (`live`).
pub struct RegistryLookup {
    acct: Arc<Accounting>,
    paths: Vec<String>,
    live: Option<Live>,
    /// The tenant buckets the devices of this kind share.
    shared: Option<SharedTenant>,
}

impl RegistryLookup {
    /// The same lookup, its device drawing from the tenant buckets `shared`
    /// with the other devices of its kind.
    pub fn sharing(self, shared: SharedTenant) -> Self {
        Self {
            shared: Some(shared),
            ..self
        }
    }

    /// A lookup over fixed `paths` (no API to change them).
    pub fn fixed(acct: &Arc<Accounting>, paths: Vec<String>) -> Self {
        Self {
            acct: Arc::clone(acct),
            paths,
            live: None,
            shared: None,
        }
    }
}

impl LimitLookup for RegistryLookup {
    fn limit_of(&mut self, tag: Option<u64>) -> Option<usize> {
        if self.paths.is_empty() {
            return None;
        }
        let reg = self.acct.registry();
        let idx = tag.map_or(0, |t| reg.resolve(t).container);
        let path = &reg.containers().get(idx)?.path;
        limit_index(&self.paths, path)
    }

    fn shared_tenant(&self) -> Option<SharedTenant> {
        self.shared.clone()
    }

    fn changed(&mut self) -> Option<Vec<BlockLimitConfig>> {
        let live = self.live.as_mut()?;
        if live.limits.generation.load(Ordering::SeqCst) == live.seen {
            return None;
        }
        let t = locked(&live.limits.table);
        live.seen = live.limits.generation.load(Ordering::SeqCst);
        let configs = live.kind.configs(&t.limits);
        self.paths = configs.iter().map(|c| c.path.clone()).collect();
        Some(configs)
    }

    fn publish(&mut self, states: &[LimitState]) {
        if let Some(live) = &self.live {
            let mut p = locked(&live.published);
            p.clear();
            p.extend_from_slice(states);
            live.ack.store(live.seen, Ordering::SeqCst);
        }
    }

    fn publish_one(&mut self, k: usize, state: &LimitState) {
        if let Some(live) = &self.live {
            if let Some(slot) = locked(&live.published).get_mut(k) {
                slot.clone_from(state);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_entries_win_then_the_longest_pattern() {
        let paths: Vec<String> = ["web/*", "web/api", "*", "web/api/*", "batch"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        for (path, want) in [
            ("web/api", Some(1)),
            ("web/api/v2", Some(3)),
            ("web/static", Some(0)),
            ("web", Some(2)),
            ("batch", Some(4)),
            ("batch/x", Some(2)),
            ("unattributed", Some(2)),
        ] {
            assert_eq!(limit_index(&paths, path), want, "{path}");
        }
        let with_tenant: Vec<String> = vec!["tenant".into(), "a".into()];
        assert_eq!(limit_index(&with_tenant, "tenant"), None, "never a container's");
        assert_eq!(limit_index(&with_tenant, "a"), Some(1));
        let no_star = &paths[..2];
        assert_eq!(limit_index(no_star, "web"), None);
        assert_eq!(limit_index(no_star, "web/api/v2"), Some(0));
        assert_eq!(limit_index(&[], "web"), None);
    }
}
