//! The eBPF slot tagger: at every context switch of the guest, the tag of
//! the task switched in goes into its CPU's tag slot, which the VMM reads at
//! each exit of that vCPU (docs/tagging.md).
//!
//! The program (`bpf/slots.bpf.c`, compiled by `build.rs`) is loaded with
//! libbpf (libbpf-rs; vendored and static, so the agent stays one static
//! binary). Its `slots` array is `BPF_F_MMAPABLE`: the agent maps it, finds
//! the physical frames of its pages in `/proc/self/pagemap`, and registers
//! them with the VMM (`register_slots`). The tags come from maps the agent
//! keeps: `rebind_threads` and `rebind_pages` (a thread registered in a
//! client's rebind page, whose word names its request: [`RebindPages`]
//! and `crate::rebind`), `thread_tags` (a thread's request binding), `cgroup_tags`
//! (a cgroup's container) and `process_tags` (a process's container).
//!
//! The link and the maps are pinned under a bpffs directory (default
//! `/sys/fs/bpf/resourceful`), so tagging goes on with the last values
//! while the agent is restarted; a new agent finds the pins and reuses them
//! (same pages, so its registration changes nothing at the VMM).

mod bindings;
mod guest;
mod pages;
mod rebind;
mod stats;

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use accounting::abi::MAX_SLOTS;
use accounting::agent::{RegisterSlots, SlotCpu, SLOTS_PER_PAGE};
use libbpf_rs::{Link, MapCore, MapFlags, MapHandle, ObjectBuilder};

pub use bindings::{ThreadBindings, MAX_BINDINGS};
pub use guest::{apic_ids, cgroup_id, cpu_count, physical_pages};
pub use pages::{RebindPages, MAX_PAGES_PER_CLIENT, MAX_PAGE_THREADS};
pub use rebind::{MAX_REBIND_PAGES, REBIND_SLOTS};
pub use stats::enable_run_time_stats;

use rebind::RebindMaps;

/// The compiled program.
const OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/slots.bpf.o"));

/// Where the link and maps are pinned by default.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/resourceful";

const SLOT_BYTES: usize = 64;
const PAGE: usize = 4096;
const MAPS: [&str; 4] = ["slots", "thread_tags", "cgroup_tags", "process_tags"];
const SWITCH_PROG: &str = "on_switch";
const BLK_PROGS: [&str; 2] = ["on_queue_rq", "on_queue_rq_exit"];
const BLK_LINKS: [&str; 2] = ["link-blk-enter", "link-blk-exit"];

/// Why tagging could not start.
#[derive(Debug, thiserror::Error)]
pub enum TaggerError {
    /// Something about the guest could not be read.
    #[error("{what}: {source}")]
    Guest {
        /// What was being read.
        what: String,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// libbpf refused (no BTF, no permission, an old kernel).
    #[error("cannot {what} the eBPF slot tagger (it needs root, a kernel with BTF and tp_btf, 5.8 or later): {source}")]
    Bpf {
        /// The step.
        what: &'static str,
        /// libbpf's error.
        #[source]
        source: libbpf_rs::Error,
    },
}

fn guest_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> TaggerError {
    let what = what.into();
    move |source| TaggerError::Guest { what, source }
}

fn bpf_err(what: &'static str) -> impl FnOnce(libbpf_rs::Error) -> TaggerError {
    move |source| TaggerError::Bpf { what, source }
}

/// The loaded (or reused) tagger.
#[derive(Debug)]
pub struct Tagger {
    /// Keeps the slot array open (the mapping alone would too).
    _slots: MapHandle,
    thread_tags: MapHandle,
    cgroup_tags: MapHandle,
    process_tags: MapHandle,
    /// Held while the links are not pinned (the programs detach with them).
    links: Vec<Link>,
    /// Whether the virtio-blk dispatch hooks run.
    blk_hooks: bool,
    /// The rebind page maps, or why there are none.
    rebind: Result<RebindMaps, String>,
    /// The slots, mapped read-only.
    map: *mut libc::c_void,
    map_len: usize,
    nr_slots: u32,
    register: RegisterSlots,
    reused: bool,
}

// SAFETY: `map` is a shared read-only mapping owned by this struct, read
// only with atomic loads; the map handles are file descriptors.
unsafe impl Send for Tagger {}

impl Tagger {
    /// Loads and attaches the program (or reuses the one pinned in
    /// `pin_dir` by an earlier agent of this boot) and maps its slots.
    pub fn start(pin_dir: Option<&Path>) -> Result<Self, TaggerError> {
        Self::start_with(pin_dir, true)
    }

    /// [`Tagger::start`], with rebind pages only if `rebind` (and the
    /// kernel allows them): without, the program is loaded with its rebind
    /// lookups switched off, as on a kernel that refuses them.
    pub fn start_with(pin_dir: Option<&Path>, rebind: bool) -> Result<Self, TaggerError> {
        let possible = std::fs::read_to_string("/sys/devices/system/cpu/possible")
            .map_err(guest_err("/sys/devices/system/cpu/possible"))?;
        let cpus = cpu_count(&possible).ok_or_else(|| TaggerError::Guest {
            what: "/sys/devices/system/cpu/possible".into(),
            source: io::Error::new(
                io::ErrorKind::InvalidData,
                format!("not a CPU list: {possible:?}"),
            ),
        })?;
        let nr_slots = cpus.checked_next_multiple_of(SLOTS_PER_PAGE).unwrap_or(u32::MAX);
        if nr_slots > MAX_SLOTS {
            return Err(TaggerError::Guest {
                what: "possible CPUs".into(),
                source: io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("{cpus} CPUs: the tag ABI has at most {MAX_SLOTS} slots"),
                ),
            });
        }
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").map_err(guest_err("/proc/cpuinfo"))?;
        let cpus: Vec<SlotCpu> = apic_ids(&cpuinfo)
            .into_iter()
            .filter(|&(cpu, _)| cpu < nr_slots)
            .map(|(cpu, apic_id)| SlotCpu { apic_id, slot: cpu })
            .collect();
        let reused = pin_dir.and_then(|d| Self::reuse(d, nr_slots));
        let (maps, rebind_maps, links, blk_hooks, reused) = match reused {
            Some(maps) => {
                let blk = pin_dir.is_some_and(|d| d.join(BLK_LINKS[0]).exists());
                let r = pin_dir.map_or_else(|| Err(String::new()), RebindMaps::from_pins);
                (maps, r, Vec::new(), blk, true)
            }
            None => {
                let (maps, r, links, blk) = Self::load(nr_slots, pin_dir, rebind)?;
                (maps, r, links, blk, false)
            }
        };
        let [slots, thread_tags, cgroup_tags, process_tags] = maps;
        if reused {
            // The thread bindings were the dead agent's clients': their
            // connections ended with it, and so do their requests once the
            // new agent reconciles with the VMM. The process map is rebuilt
            // at the new agent's first interval (a stale pid could name a
            // new process). The cgroup map stays until the new agent's
            // state replaces it whole.
            sync_map(&thread_tags, HashMap::new()).map_err(bpf_err("clear the thread bindings of"))?;
            sync_map(&process_tags, HashMap::new()).map_err(bpf_err("clear the process map of"))?;
            // The rebind pages were the dead agent's clients' too.
            if let Ok(r) = &rebind_maps {
                r.clear().map_err(bpf_err("clear the rebind pages of"))?;
            }
        }
        let map_len = nr_slots as usize * SLOT_BYTES;
        // SAFETY: a fresh shared read-only mapping of the array's values
        // (BPF_F_MMAPABLE maps them from offset 0); the kernel checks the
        // length against the map.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                slots.as_fd().as_raw_fd(),
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(guest_err("mapping the slot array")(io::Error::last_os_error()));
        }
        let mut t = Self {
            _slots: slots,
            thread_tags,
            cgroup_tags,
            process_tags,
            links,
            blk_hooks,
            rebind: rebind_maps,
            map,
            map_len,
            nr_slots,
            register: RegisterSlots {
                pages: Vec::new(),
                cpus,
            },
            reused,
        };
        for cpu in (0..nr_slots).step_by(SLOTS_PER_PAGE as usize) {
            // Fault every page in before asking for its frame.
            let _ = t.slot(cpu);
        }
        t.register.pages =
            physical_pages(map as usize, map_len / PAGE).map_err(guest_err("the slot pages' frames"))?;
        Ok(t)
    }

    /// Loads the object and attaches its programs: the links (switch
    /// first) and whether the virtio-blk hooks are among them. The hooks
    /// are `fentry`/`fexit` programs, which some kernels refuse (no BPF
    /// trampolines, a function ftrace cannot patch): then the rest loads
    /// without them.
    /// The rebind pages are a map of maps looked up from the switch
    /// program, which a kernel may refuse too: then the program loads with
    /// them switched off, and the reason is kept for the `rebind_page` op.
    #[allow(clippy::type_complexity)] // the loaded parts, once
    fn load(
        nr_slots: u32,
        pin_dir: Option<&Path>,
        rebind: bool,
    ) -> Result<([MapHandle; 4], Result<RebindMaps, String>, Vec<Link>, bool), TaggerError> {
        let mut why_no_rebind = if rebind {
            None
        } else {
            Some("rebind pages are switched off in this agent".to_owned())
        };
        for rebind in [true, false] {
            if rebind && why_no_rebind.is_some() {
                continue;
            }
            // The virtio-blk hooks attach to the driver's function: only
            // where it is built in or its module is loaded.
            if kernel_has_function("virtio_queue_rq") {
                match Self::load_with(nr_slots, pin_dir, true, rebind) {
                    Ok((m, r, l, b)) => return Ok((m, r.ok_or_else(|| why_no_rebind.clone().unwrap_or_default()), l, b)),
                    Err(e) => log::warn!(
                        "the slot tagger's virtio-blk hooks cannot load ({e}): block requests that a kernel worker dispatches stay unattributed"
                    ),
                }
            }
            match Self::load_with(nr_slots, pin_dir, false, rebind) {
                Ok((m, r, l, b)) => {
                    return Ok((
                        m,
                        r.ok_or_else(|| why_no_rebind.clone().unwrap_or_default()),
                        l,
                        b,
                    ))
                }
                Err(e) if rebind => {
                    log::warn!("the slot tagger's rebind pages cannot load ({e}): the local socket's work_for stays the way to rebind");
                    why_no_rebind = Some(format!(
                        "this kernel refuses the tagger's rebind pages (a BPF_F_MMAPABLE array in a map of maps, looked up from tp_btf/sched_switch): {e}"
                    ));
                }
                Err(e) => return Err(e),
            }
        }
        Err(TaggerError::Bpf {
            what: "load",
            source: libbpf_rs::Error::from(io::Error::from(io::ErrorKind::Unsupported)),
        })
    }

    #[allow(clippy::type_complexity)] // the loaded parts, once
    fn load_with(
        nr_slots: u32,
        pin_dir: Option<&Path>,
        blk: bool,
        rebind: bool,
    ) -> Result<([MapHandle; 4], Option<RebindMaps>, Vec<Link>, bool), TaggerError> {
        // libbpf's own lines go to the agent's log, at debug level: what
        // failed reaches the log through the error the caller reports.
        libbpf_rs::set_print(Some((libbpf_rs::PrintLevel::Info, libbpf_line)));
        let mut open = ObjectBuilder::default()
            .open_memory(OBJECT)
            .map_err(bpf_err("open"))?;
        for mut m in open.maps_mut() {
            if m.name() == "slots" {
                m.set_max_entries(nr_slots).map_err(bpf_err("size"))?;
            }
            if !rebind {
                rebind::switch_off(&mut m).map_err(bpf_err("switch off the rebind pages of"))?;
            }
        }
        for mut p in open.progs_mut() {
            if BLK_PROGS.iter().any(|n| p.name() == *n) {
                p.set_autoload(blk);
            }
        }
        let obj = open.load().map_err(bpf_err("load"))?;
        let mut links = Vec::new();
        let mut names = vec![SWITCH_PROG];
        if blk {
            names.extend(BLK_PROGS);
        }
        for name in names {
            let link = obj
                .progs_mut()
                .find(|p| p.name() == name)
                .ok_or(TaggerError::Bpf {
                    what: "find",
                    source: libbpf_rs::Error::from(io::Error::from(io::ErrorKind::NotFound)),
                })?
                .attach()
                .map_err(bpf_err("attach"))?;
            links.push(link);
        }
        let mut maps = Vec::with_capacity(MAPS.len());
        for name in MAPS {
            let m = obj.maps().find(|m| m.name() == name).ok_or(TaggerError::Bpf {
                what: "find",
                source: libbpf_rs::Error::from(io::Error::from(io::ErrorKind::NotFound)),
            })?;
            maps.push(MapHandle::try_from(&m).map_err(bpf_err("keep"))?);
        }
        let mut maps: [MapHandle; 4] = maps.try_into().map_err(|_| TaggerError::Bpf {
            what: "keep",
            source: libbpf_rs::Error::from(io::Error::from(io::ErrorKind::InvalidData)),
        })?;
        let mut rebind_maps = if rebind {
            Some(RebindMaps::from_object(&obj).map_err(bpf_err("keep"))?)
        } else {
            None
        };
        let pinned =
            pin_dir.is_some_and(
                |d| match Self::pin(d, &mut maps, rebind_maps.as_mut(), &mut links) {
                    Ok(()) => true,
                    Err(e) => {
                        log::warn!(
                            "cannot pin the slot tagger under {} ({e}): tagging stops with this agent",
                            d.display()
                        );
                        let _ = std::fs::remove_dir_all(d);
                        false
                    }
                },
            );
        Ok((maps, rebind_maps, if pinned { Vec::new() } else { links }, blk))
    }

    fn pin(
        dir: &Path,
        maps: &mut [MapHandle; 4],
        rebind: Option<&mut RebindMaps>,
        links: &mut [Link],
    ) -> Result<(), Box<dyn std::error::Error>> {
        mount_bpffs_for(dir)?;
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)?;
        for (m, name) in maps.iter_mut().zip(MAPS) {
            m.pin(dir.join(name))?;
        }
        if let Some(r) = rebind {
            r.pin(dir)?;
        }
        let (switch, blk) = links.split_first_mut().ok_or("no link to pin")?;
        for (l, name) in blk.iter_mut().zip(BLK_LINKS) {
            l.pin(dir.join(name))?;
        }
        // Pinned last: its presence says the rest is there.
        switch.pin(dir.join("link"))?;
        Ok(())
    }

    /// The maps an earlier agent pinned, if they are complete and sized
    /// for this guest.
    fn reuse(dir: &Path, nr_slots: u32) -> Option<[MapHandle; 4]> {
        let link: PathBuf = dir.join("link");
        if !link.exists() {
            return None;
        }
        let maps: Vec<MapHandle> = MAPS
            .iter()
            .map(|n| MapHandle::from_pinned_path(dir.join(n)))
            .collect::<Result<_, _>>()
            .ok()?;
        let maps: [MapHandle; 4] = maps.try_into().ok()?;
        if maps[0].max_entries() != nr_slots || maps[0].value_size() as usize != SLOT_BYTES {
            log::warn!(
                "the slot tagger pinned in {} does not fit {nr_slots} slots: loading a new one",
                dir.display()
            );
            return None;
        }
        Some(maps)
    }

    /// The registration to send the VMM.
    pub fn registration(&self) -> &RegisterSlots {
        &self.register
    }

    /// A `clock_sync`: `CLOCK_MONOTONIC` (the stamps the program writes in
    /// the slots' switch logs) and the TSC read together, the closest pair
    /// of a few tries, so the VMM can place the logged switches.
    pub fn clock_sync() -> accounting::agent::AgentMessage {
        let mut best = (u64::MAX, 0, 0);
        for _ in 0..4 {
            let t0 = accounting::clock::rdtsc();
            let ns = monotonic_ns();
            let t1 = accounting::clock::rdtsc();
            let spread = t1.wrapping_sub(t0);
            if spread < best.0 {
                best = (spread, ns, t0 + spread / 2);
            }
        }
        accounting::agent::AgentMessage::ClockSync {
            monotonic_ns: best.1,
            tsc: best.2,
        }
    }

    /// Whether the tagger is pinned (it outlives this process).
    pub fn pinned(&self) -> bool {
        self.links.is_empty()
    }

    /// Whether the virtio-blk dispatch hooks run (the module was loaded
    /// when the tagger was).
    pub fn blk_hooks(&self) -> bool {
        self.blk_hooks
    }

    /// Whether an earlier agent's pinned tagger was reused.
    pub fn reused(&self) -> bool {
        self.reused
    }

    /// Slots in the array (possible CPUs rounded up to a page of slots).
    pub fn nr_slots(&self) -> u32 {
        self.nr_slots
    }

    /// The tag in CPU `cpu`'s slot now.
    pub fn slot(&self, cpu: u32) -> Option<u64> {
        if cpu >= self.nr_slots {
            return None;
        }
        // SAFETY: in bounds of the live mapping (checked above), 8-byte
        // aligned (slots are 64 bytes from a page), and the kernel writes
        // the word concurrently, so it is read atomically.
        let w = unsafe {
            &*self
                .map
                .cast::<u8>()
                .add(cpu as usize * SLOT_BYTES)
                .cast::<AtomicU64>()
        };
        Some(w.load(Ordering::Acquire))
    }

    /// CPU `cpu`'s whole slot now: the tag, the switch log's sequence, and
    /// its three `(stamp, tag)` entries, each word read atomically.
    pub fn slot_line(&self, cpu: u32) -> Option<[u64; 8]> {
        if cpu >= self.nr_slots {
            return None;
        }
        let mut out = [0u64; 8];
        for (k, w) in out.iter_mut().enumerate() {
            // SAFETY: as in `slot`: word `k` of the in-bounds 64-byte slot.
            let a = unsafe {
                &*self
                    .map
                    .cast::<u8>()
                    .add(cpu as usize * SLOT_BYTES + 8 * k)
                    .cast::<AtomicU64>()
            };
            *w = a.load(Ordering::Acquire);
        }
        Some(out)
    }

    /// Entries in the thread map now.
    pub fn thread_bindings(&self) -> usize {
        self.thread_tags.keys().count()
    }

    /// Makes the cgroup map hold exactly `want` (cgroup id → tag).
    pub fn sync_cgroups(&self, want: &HashMap<u64, u64>) -> Result<(), libbpf_rs::Error> {
        sync_map(
            &self.cgroup_tags,
            want.iter().map(|(k, v)| (k.to_ne_bytes().to_vec(), *v)).collect(),
        )
    }

    /// Makes the process map hold exactly `want` (thread-group id → tag).
    pub fn sync_processes(&self, want: &HashMap<u32, u64>) -> Result<(), libbpf_rs::Error> {
        sync_map(
            &self.process_tags,
            want.iter().map(|(k, v)| (k.to_ne_bytes().to_vec(), *v)).collect(),
        )
    }

    /// Moves the process map from `have` (what it holds) to `want`,
    /// writing only the differences.
    pub fn update_processes(
        &self,
        have: &HashMap<u32, u64>,
        want: &HashMap<u32, u64>,
    ) -> Result<(), libbpf_rs::Error> {
        for pid in have.keys().filter(|p| !want.contains_key(p)) {
            match self.process_tags.delete(&pid.to_ne_bytes()) {
                Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => {}
                r => r?,
            }
        }
        for (pid, tag) in want.iter().filter(|(p, t)| have.get(p) != Some(t)) {
            self.process_tags
                .update(&pid.to_ne_bytes(), &tag.to_ne_bytes(), MapFlags::ANY)?;
        }
        Ok(())
    }

    /// Thread `tid` works for `tag` from its next switch-in on (`None`:
    /// back to its cgroup's or process's container).
    pub fn bind_thread(&self, tid: u32, tag: Option<u64>) -> Result<(), libbpf_rs::Error> {
        let key = tid.to_ne_bytes();
        match tag {
            Some(t) => self.thread_tags.update(&key, &t.to_ne_bytes(), MapFlags::ANY),
            None => match self.thread_tags.delete(&key) {
                Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
                r => r,
            },
        }
    }
}

/// One line libbpf printed.
fn libbpf_line(level: libbpf_rs::PrintLevel, msg: String) {
    let msg = msg.trim_end();
    match level {
        libbpf_rs::PrintLevel::Warn => log::debug!(target: "libbpf", "{msg}"),
        _ => log::trace!(target: "libbpf", "{msg}"),
    }
}

/// Whether `/proc/kallsyms` lists a text symbol `name` (of the kernel or a
/// loaded module).
fn kernel_has_function(name: &str) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/kallsyms") else {
        return false;
    };
    text.lines().any(|l| {
        let mut f = l.split_whitespace();
        let (_, kind, sym) = (f.next(), f.next(), f.next());
        matches!(kind, Some("t" | "T")) && sym == Some(name)
    })
}

/// `BPF_FS_MAGIC`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Mounts a bpffs at `/sys/fs/bpf` when `dir` is under it and none is
/// there (a minimal guest's init rarely mounts one).
fn mount_bpffs_for(dir: &Path) -> io::Result<()> {
    let root = Path::new("/sys/fs/bpf");
    if !dir.starts_with(root) {
        return Ok(());
    }
    let c = std::ffi::CString::new("/sys/fs/bpf").map_err(io::Error::other)?;
    // SAFETY: an all-zero statfs is a valid out-parameter.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a writable statfs.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0 && st.f_type == BPF_FS_MAGIC {
        return Ok(());
    }
    std::fs::create_dir_all(root)?;
    let fstype = std::ffi::CString::new("bpf").map_err(io::Error::other)?;
    // SAFETY: NUL-terminated strings and no data argument.
    let r = unsafe { libc::mount(fstype.as_ptr(), c.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    log::info!("mounted a bpffs at /sys/fs/bpf for the slot tagger's pins");
    Ok(())
}

/// Deletes the keys of `map` not in `want` and writes the rest where they
/// differ.
fn sync_map(map: &MapHandle, want: HashMap<Vec<u8>, u64>) -> Result<(), libbpf_rs::Error> {
    let stale: Vec<Vec<u8>> = map.keys().filter(|k| !want.contains_key(k)).collect();
    for k in stale {
        match map.delete(&k) {
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => {}
            r => r?,
        }
    }
    for (k, v) in want {
        let have = map.lookup(&k, MapFlags::ANY)?;
        if have.as_deref() != Some(&v.to_ne_bytes()[..]) {
            map.update(&k, &v.to_ne_bytes(), MapFlags::ANY)?;
        }
    }
    Ok(())
}

impl Drop for Tagger {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `start`, unmapped once.
        unsafe { libc::munmap(self.map, self.map_len) };
    }
}

/// `CLOCK_MONOTONIC` in ns: the clock of `bpf_ktime_get_ns`, which stamps
/// the slots' switch logs.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}
