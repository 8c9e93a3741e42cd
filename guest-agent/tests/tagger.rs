//! The eBPF slot tagger on the host's own kernel (root, BTF): it loads,
//! tags CPU 0's slot with the container of a cgroup whose task runs there,
//! with a thread's request binding over its cgroup, with 0 once the task is
//! gone, and a second tagger reuses the first one's pins (same pages, the
//! program still attached after the first is dropped).

#![allow(clippy::cast_possible_truncation)] // CPU and page counts

use std::collections::HashMap;
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use accounting::abi::tag;
use guest_agent::rebind_client::RebindPage;
use guest_agent::tagger::{cgroup_id, Tagger};

const CONTAINER: u32 = 0x1000_0001;
const REQUEST: u32 = 0x1000_0100;

fn mount(fstype: &str, at: &Path) {
    std::fs::create_dir_all(at).unwrap();
    let t = CString::new(fstype).unwrap();
    let p = CString::new(at.to_str().unwrap()).unwrap();
    // SAFETY: NUL-terminated strings, no data.
    let r = unsafe { libc::mount(t.as_ptr(), p.as_ptr(), t.as_ptr(), 0, std::ptr::null()) };
    assert_eq!(
        r,
        0,
        "mount -t {fstype} {}: {}",
        at.display(),
        std::io::Error::last_os_error()
    );
}

fn umount(at: &Path) {
    let p = CString::new(at.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path.
    unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
    let _ = std::fs::remove_dir(at);
}

/// A cgroup v2 hierarchy of the test's own, with one child cgroup.
struct Cgroup {
    root: PathBuf,
    /// Its path from the root: the hierarchy is the one cgroup v2 tree of
    /// the machine however often it is mounted, so each test has its own.
    path: String,
}

impl Cgroup {
    fn new(test: &str) -> Self {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(euid, 0, "the tagger test needs root (eBPF, cgroups, pagemap)");
        let root = std::env::temp_dir().join(format!("rsrc-tagger-cg2-{test}-{}", std::process::id()));
        mount("cgroup2", &root);
        let path = format!("/rsrc-tagger-{test}-{}", std::process::id());
        std::fs::create_dir_all(root.join(&path[1..])).unwrap();
        Self { root, path }
    }

    fn id(&self) -> u64 {
        cgroup_id(&self.root, &self.path).unwrap()
    }

    /// A shell spinning on CPU 0, in the cgroup.
    fn spinner(&self) -> Spinner {
        let child = Spinner(
            Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .spawn()
                .unwrap(),
        );
        let pid = child.0.id();
        // SAFETY: a zeroed cpu_set_t is valid; CPU_SET stays in bounds.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(0, &mut set);
            assert_eq!(
                libc::sched_setaffinity(pid as i32, std::mem::size_of_val(&set), &set),
                0
            );
        }
        let procs = self.root.join(&self.path[1..]).join("cgroup.procs");
        if let Err(e) = std::fs::write(&procs, pid.to_string()) {
            panic!("cannot move {pid} into {}: {e}", procs.display());
        }
        child
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(self.root.join(&self.path[1..]));
        umount(&self.root);
    }
}

/// A child killed when dropped, even by a failing assertion.
struct Spinner(Child);

impl Spinner {
    fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn stop(c: Spinner) {
    drop(c);
}

/// Polls CPU 0's slot until it holds `want`.
fn wait_slot(t: &Tagger, want: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = t.slot(0).unwrap();
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: CPU 0's slot holds {got:#x}, want {want:#x}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn the_tagger_tags_a_cgroups_task_its_threads_binding_and_idle() {
    let cg = Cgroup::new("tags");
    let t = Tagger::start(None).expect("the tagger loads on the host kernel");
    let kallsyms = std::fs::read_to_string("/proc/kallsyms").unwrap();
    let driver = kallsyms
        .lines()
        .any(|l| l.ends_with(" virtio_queue_rq") || l.contains(" virtio_queue_rq\t"));
    // Only where the driver is (and the kernel can trampoline it).
    assert!(
        driver || !t.blk_hooks(),
        "virtio-blk hooks without virtio_queue_rq"
    );
    eprintln!(
        "virtio_queue_rq in the kernel: {driver}; hooks loaded: {}",
        t.blk_hooks()
    );
    let reg = t.registration();
    assert_eq!(reg.pages.len() as u32 * 64, t.nr_slots());
    assert!(
        reg.pages.iter().all(|p| *p > 0 && p % 4096 == 0),
        "{:?}",
        reg.pages
    );
    let cpus = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap()
        .matches("processor")
        .count();
    assert_eq!(reg.cpus.len(), cpus, "one slot per CPU: {:?}", reg.cpus);
    assert!(reg.cpus.iter().enumerate().all(|(i, c)| c.slot == i as u32));

    let container = tag(CONTAINER, 0);
    t.sync_cgroups(&HashMap::from([(cg.id(), container)])).unwrap();
    let before = guest_agent::tagger::monotonic_ns();
    let spin = cg.spinner();
    wait_slot(&t, container, "a task of the cgroup runs on CPU 0");
    // The switch to it is logged (docs/tag-abi.md, "The switch log"): the
    // newest entry names the container, stamped with CLOCK_MONOTONIC
    // between the spinner's start and now (unless a later switch came, in
    // which case it is newer still).
    // The sequence counts two per switch (odd while one is being logged):
    // read it until it is even.
    let line = loop {
        let line = t.slot_line(0).unwrap();
        if line[1].is_multiple_of(2) {
            break line;
        }
    };
    let switches = line[1] / 2;
    assert!(switches > 0, "switches are logged: {line:x?}");
    let newest = (switches - 1) % 3;
    let (stamp, logged) = (line[2 + 2 * newest as usize], line[3 + 2 * newest as usize]);
    assert!(
        (before..=guest_agent::tagger::monotonic_ns()).contains(&stamp),
        "stamp {stamp} not in [{before}, now]: {line:x?}"
    );
    if line[0] == container {
        assert_eq!(logged, container, "the newest entry is the slot's tag: {line:x?}");
    }

    // A request binding of the thread goes over its cgroup's container.
    let request = tag(CONTAINER, REQUEST);
    t.bind_thread(spin.id(), Some(request)).unwrap();
    wait_slot(&t, request, "the thread is bound to a request");
    t.bind_thread(spin.id(), None).unwrap();
    wait_slot(&t, container, "the binding is gone");
    stop(spin);
    wait_slot(&t, 0, "the cgroup's task is gone (idle or other tasks run)");

    // The map is the whole truth: an empty one tags nothing.
    t.sync_cgroups(&HashMap::new()).unwrap();
    let spin = cg.spinner();
    std::thread::sleep(Duration::from_millis(50));
    assert_ne!(t.slot(0), Some(container));
    stop(spin);
}

#[test]
fn a_pinned_tagger_outlives_its_agent_and_is_reused() {
    let cg = Cgroup::new("pins");
    let bpffs = std::env::temp_dir().join(format!("rsrc-tagger-bpf-{}", std::process::id()));
    mount("bpf", &bpffs);
    let dir = bpffs.join("resourceful");
    let container = tag(CONTAINER + 1, 0);
    let first = Tagger::start(Some(&dir)).unwrap();
    assert!(!first.reused());
    assert!(dir.join("link").exists(), "the link is pinned");
    first
        .sync_cgroups(&HashMap::from([(cg.id(), container)]))
        .unwrap();
    // A binding of the first agent's (its client dies with it).
    first.bind_thread(1, Some(tag(CONTAINER + 1, REQUEST))).unwrap();
    // A rebind page of the first agent's client, and a thread in it.
    let _page = first.add_rebind_page(0).unwrap();
    first.rebind_thread(1, Some((0, 0, container))).unwrap();
    assert_eq!((first.rebind_threads(), first.rebind_pages()), (1, 1));
    let pages = first.registration().pages.clone();
    drop(first);

    // No agent now: the pinned program still tags.
    let spin = cg.spinner();
    let second = Tagger::start(Some(&dir)).unwrap();
    assert!(second.reused(), "the second tagger reuses the pins");
    assert_eq!(
        second.registration().pages,
        pages,
        "the same pages: nothing to re-register"
    );
    wait_slot(
        &second,
        container,
        "the first tagger's cgroup map, through the pins",
    );
    assert_eq!(
        second.thread_bindings(),
        0,
        "the dead agent's thread bindings are cleared"
    );
    assert_eq!(second.rebind_unavailable(), None, "the pins keep the rebind maps");
    assert_eq!(
        (second.rebind_threads(), second.rebind_pages()),
        (0, 0),
        "the dead agent's rebind pages and their threads are cleared"
    );
    stop(spin);
    drop(second);
    let _ = std::fs::remove_dir_all(&dir);
    umount(&bpffs);
}

/// A rebind page on the host kernel: a thread registered at a word of a
/// page is tagged `(the page's container, the word)` at its next
/// switch-in, over its cgroup's container; 0 in the word is the page's
/// container alone, and so is a word over 32 bits; unregistered, the
/// thread is its cgroup's again. The page is the client's mapping of the
/// map the agent made (`RebindPage::map`), written with plain stores.
#[test]
fn a_thread_rebinds_by_a_store_in_its_page() {
    let cg = Cgroup::new("rebind");
    let t = Tagger::start(None).expect("the tagger loads on the host kernel");
    assert_eq!(t.rebind_unavailable(), None, "the host kernel takes rebind pages");
    let cgroup = tag(CONTAINER, 0);
    t.sync_cgroups(&HashMap::from([(cg.id(), cgroup)])).unwrap();
    let spin = cg.spinner();
    wait_slot(&t, cgroup, "a task of the cgroup runs on CPU 0");

    let fd = t.add_rebind_page(3).unwrap();
    let page = RebindPage::map(3, &fd).unwrap();
    drop(fd); // the mapping keeps the map
    let container = tag(CONTAINER + 7, 0);
    t.rebind_thread(spin.id(), Some((3, 17, container))).unwrap();
    assert_eq!(t.rebind_threads(), 1);
    wait_slot(&t, container, "registered, its word 0: the page's container");
    page.set(17, REQUEST);
    wait_slot(&t, tag(CONTAINER + 7, REQUEST), "its word names a request");
    // The neighbouring words are other threads': stored first, they are
    // not what the thread's next switch-in reads.
    page.set(16, REQUEST + 1);
    page.set(18, REQUEST + 2);
    page.set(17, REQUEST + 3);
    wait_slot(&t, tag(CONTAINER + 7, REQUEST + 3), "its own word only");
    page.set(17, 0);
    wait_slot(&t, container, "0: back to the page's container");
    page.set(17, REQUEST);
    wait_slot(&t, tag(CONTAINER + 7, REQUEST), "its word names a request");
    page.word(17)
        .unwrap()
        .store(1 << 32 | u64::from(REQUEST), std::sync::atomic::Ordering::Release);
    wait_slot(&t, container, "a word over 32 bits names no request");
    assert!(page.word(512).is_none(), "a page has 512 words");

    // The page is removed: the thread is tagged with its container alone.
    page.set(17, REQUEST);
    wait_slot(&t, tag(CONTAINER + 7, REQUEST), "its word names a request");
    assert_eq!(t.rebind_pages(), 1);
    t.remove_rebind_page(3).unwrap();
    assert_eq!(t.rebind_pages(), 0);
    wait_slot(&t, container, "a removed page is read no more");
    t.rebind_thread(spin.id(), None).unwrap();
    wait_slot(&t, cgroup, "unregistered: its cgroup's container again");
    assert_eq!(t.rebind_threads(), 0);
    stop(spin);
}

/// Where rebind pages are off (as on a kernel that refuses them), the
/// program still loads, with the rebind lookups dropped, and tags; a page
/// is refused with the reason.
#[test]
fn without_rebind_pages_the_tagger_still_loads_and_says_why() {
    let cg = Cgroup::new("norebind");
    let t = Tagger::start_with(None, false).expect("the tagger loads without rebind pages");
    let why = t.rebind_unavailable().expect("no rebind pages");
    assert!(why.contains("switched off"), "{why}");
    let err = t.add_rebind_page(0).unwrap_err().to_string();
    assert!(err.contains("switched off"), "{err}");
    let container = tag(CONTAINER + 2, 0);
    t.sync_cgroups(&HashMap::from([(cg.id(), container)])).unwrap();
    let spin = cg.spinner();
    wait_slot(&t, container, "a task of the cgroup runs on CPU 0");
    stop(spin);
}
