//! The tagger's rebind pages, map side: `rebind_pages` (a map of one-page
//! `BPF_F_MMAPABLE` arrays, one per page a client was given) and
//! `rebind_threads` (thread id → page, word, container), which the switch
//! program reads before everything else (docs/tagging.md, "Rebind pages").

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType, Object, OpenMapMut};

/// Words in one rebind page (`REBIND_SLOTS` in `slots.bpf.c`): one u64 per
/// thread index, a 4 KiB page.
pub const REBIND_SLOTS: u32 = 512;
/// Pages in the tagger at once (`MAX_REBIND_PAGES` in `slots.bpf.c`).
pub const MAX_REBIND_PAGES: u32 = 256;

const PAGES: &str = "rebind_pages";
const THREADS: &str = "rebind_threads";
/// `BPF_F_MMAPABLE`.
const MMAPABLE: u32 = 1 << 10;

/// The two maps.
#[derive(Debug)]
pub(super) struct RebindMaps {
    pages: MapHandle,
    threads: MapHandle,
}

/// Leaves the rebind maps uncreated and clears `rebind_on` in the
/// program's read-only data, so the verifier drops the lookups as dead
/// code: the program loads on a kernel that refuses them.
pub(super) fn switch_off(m: &mut OpenMapMut<'_>) -> Result<(), libbpf_rs::Error> {
    let name = m.name().to_string_lossy().into_owned();
    if name == PAGES || name == THREADS {
        return m.set_autocreate(false);
    }
    if name.ends_with(".rodata") {
        // `rebind_on` is the object's only read-only variable: one u32.
        // Anything else there would need its offset from the BTF.
        match m.initial_value_mut() {
            Some(v) if v.len() == 4 => v.fill(0),
            _ => {
                return Err(libbpf_rs::Error::from(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "the program's read-only data is not the one u32 rebind_on",
                )))
            }
        }
    }
    Ok(())
}

fn not_found(what: &str) -> libbpf_rs::Error {
    libbpf_rs::Error::from(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("no {what} map in the tagger"),
    ))
}

fn ignore_absent(r: Result<(), libbpf_rs::Error>) -> Result<(), libbpf_rs::Error> {
    match r {
        Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

impl RebindMaps {
    /// The maps of a freshly loaded object.
    pub(super) fn from_object(obj: &Object) -> Result<Self, libbpf_rs::Error> {
        let find = |name: &str| {
            obj.maps()
                .find(|m| m.name() == name)
                .ok_or_else(|| not_found(name))
                .and_then(|m| MapHandle::try_from(&m))
        };
        Ok(Self {
            pages: find(PAGES)?,
            threads: find(THREADS)?,
        })
    }

    /// The maps an earlier agent pinned under `dir`, or why there are none.
    pub(super) fn from_pins(dir: &Path) -> Result<Self, String> {
        let open = |name: &str| MapHandle::from_pinned_path(dir.join(name));
        match (open(PAGES), open(THREADS)) {
            (Ok(pages), Ok(threads)) => Ok(Self { pages, threads }),
            _ => Err(format!(
                "the tagger pinned in {} (an earlier agent's) was loaded without rebind pages",
                dir.display()
            )),
        }
    }

    /// Pins both under `dir`.
    pub(super) fn pin(&mut self, dir: &Path) -> Result<(), libbpf_rs::Error> {
        self.pages.pin(dir.join(PAGES))?;
        self.threads.pin(dir.join(THREADS))
    }

    /// Empties both maps (a restarted agent: the pages were the dead
    /// agent's clients').
    pub(super) fn clear(&self) -> Result<(), libbpf_rs::Error> {
        let tids: Vec<Vec<u8>> = self.threads.keys().collect();
        for k in tids {
            ignore_absent(self.threads.delete(&k))?;
        }
        for page in 0..MAX_REBIND_PAGES {
            ignore_absent(self.pages.delete(&page.to_ne_bytes()))?;
        }
        Ok(())
    }

    /// A new page in place `page` (replacing what was there): a one-page
    /// mmapable array, whose descriptor goes to the client.
    pub(super) fn add_page(&self, page: u32) -> Result<OwnedFd, libbpf_rs::Error> {
        let opts = libbpf_rs::libbpf_sys::bpf_map_create_opts {
            sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_map_create_opts>() as _,
            map_flags: MMAPABLE,
            ..Default::default()
        };
        let words = MapHandle::create(MapType::Array, Some("rsrc_rebind"), 4, 8, REBIND_SLOTS, &opts)?;
        let fd = u32::try_from(words.as_fd().as_raw_fd())
            .map_err(|_| not_found("page descriptor"))?
            .to_ne_bytes();
        self.pages.update(&page.to_ne_bytes(), &fd, MapFlags::ANY)?;
        words.as_fd().try_clone_to_owned().map_err(libbpf_rs::Error::from)
    }

    /// Page `page` is read no more.
    pub(super) fn remove_page(&self, page: u32) -> Result<(), libbpf_rs::Error> {
        ignore_absent(self.pages.delete(&page.to_ne_bytes()))
    }

    /// Thread `tid` is tagged from word `index` of page `page` under
    /// `container` (a tag with no request) from its next switch-in; `None`:
    /// no more.
    pub(super) fn set_thread(&self, tid: u32, at: Option<(u32, u32, u64)>) -> Result<(), libbpf_rs::Error> {
        let key = tid.to_ne_bytes();
        match at {
            Some((page, index, container)) => {
                let mut v = [0u8; 16];
                v[..4].copy_from_slice(&page.to_ne_bytes());
                v[4..8].copy_from_slice(&index.to_ne_bytes());
                v[8..].copy_from_slice(&container.to_ne_bytes());
                self.threads.update(&key, &v, MapFlags::ANY)
            }
            None => ignore_absent(self.threads.delete(&key)),
        }
    }

    /// Threads in the map now.
    pub(super) fn threads(&self) -> usize {
        self.threads.keys().count()
    }

    /// Places of `rebind_pages` that hold a page now.
    pub(super) fn pages(&self) -> usize {
        (0..MAX_REBIND_PAGES)
            .filter(|p| matches!(self.pages.lookup(&p.to_ne_bytes(), MapFlags::ANY), Ok(Some(_))))
            .count()
    }
}

impl super::Tagger {
    /// Why this tagger has no rebind pages (`None`: it has).
    pub fn rebind_unavailable(&self) -> Option<&str> {
        self.rebind.as_ref().err().map(String::as_str)
    }

    fn rebind_maps(&self) -> Result<&RebindMaps, libbpf_rs::Error> {
        self.rebind.as_ref().map_err(|e| {
            libbpf_rs::Error::from(std::io::Error::new(std::io::ErrorKind::Unsupported, e.clone()))
        })
    }

    /// A new rebind page in place `page` (below [`MAX_REBIND_PAGES`]): its
    /// descriptor, for the client to map.
    pub fn add_rebind_page(&self, page: u32) -> Result<OwnedFd, libbpf_rs::Error> {
        self.rebind_maps()?.add_page(page)
    }

    /// Page `page` is read no more.
    pub fn remove_rebind_page(&self, page: u32) -> Result<(), libbpf_rs::Error> {
        self.rebind_maps()?.remove_page(page)
    }

    /// Thread `tid` takes its request from word `index` of page `page`,
    /// under the tag `container` (`None`: no more).
    pub fn rebind_thread(&self, tid: u32, at: Option<(u32, u32, u64)>) -> Result<(), libbpf_rs::Error> {
        self.rebind_maps()?.set_thread(tid, at)
    }

    /// Threads registered in rebind pages, in the map now.
    pub fn rebind_threads(&self) -> usize {
        self.rebind.as_ref().map_or(0, RebindMaps::threads)
    }

    /// Rebind pages in the map now.
    pub fn rebind_pages(&self) -> usize {
        self.rebind.as_ref().map_or(0, RebindMaps::pages)
    }
}
