//! Rebind pages given to local clients (`rebind_page`, `rebind_thread`):
//! who holds each page and for which container, and which thread reads
//! which word, so a page is only ever written by the client it was given
//! to, names only its container, and ends with its client's connection or
//! its container.

use std::collections::HashMap;
use std::os::fd::OwnedFd;

use accounting::abi;

use crate::state::ClientId;

use super::{Tagger, MAX_REBIND_PAGES, REBIND_SLOTS};

/// Most pages one connection holds at once.
pub const MAX_PAGES_PER_CLIENT: usize = 4;
/// Most threads registered in pages at once (the program's
/// `rebind_threads` map holds 65,536).
pub const MAX_PAGE_THREADS: usize = 65_536;

#[derive(Clone, Copy, Debug)]
struct Page {
    client: ClientId,
    container: u32,
}

#[derive(Clone, Copy, Debug)]
struct Thread {
    client: ClientId,
    page: u32,
    /// The client's process, whose thread it is.
    pid: u32,
}

/// The pages given out and the threads registered in them.
#[derive(Debug, Default)]
pub struct RebindPages {
    pages: HashMap<u32, Page>,
    threads: HashMap<u32, Thread>,
    /// `rebind_page` and `rebind_thread` requests refused, in all.
    pub refused: u64,
}

impl RebindPages {
    /// Pages given out now.
    pub fn pages(&self) -> usize {
        self.pages.len()
    }

    /// Threads registered now.
    pub fn threads(&self) -> usize {
        self.threads.len()
    }

    /// A new page for `client`, for requests of `container`: its number
    /// and its descriptor (for the client to map).
    pub fn give(&mut self, t: &Tagger, client: ClientId, container: u32) -> Result<(u32, OwnedFd), String> {
        if let Some(why) = t.rebind_unavailable() {
            return Err(format!(
                "no rebind pages: {why}; work_for rebinds over the socket instead"
            ));
        }
        let held = self.pages.values().filter(|p| p.client == client).count();
        if held >= MAX_PAGES_PER_CLIENT {
            return Err(format!(
                "this connection holds {MAX_PAGES_PER_CLIENT} rebind pages already (the most one connection may hold)"
            ));
        }
        let page = (0..MAX_REBIND_PAGES)
            .find(|p| !self.pages.contains_key(p))
            .ok_or_else(|| format!("all {MAX_REBIND_PAGES} rebind pages are given out"))?;
        let fd = t
            .add_rebind_page(page)
            .map_err(|e| format!("cannot make a rebind page: {e}"))?;
        self.pages.insert(page, Page { client, container });
        Ok((page, fd))
    }

    /// Thread `tid` (of `client`'s process `pid`: the caller checked)
    /// takes its request from word `index` of `client`'s page `page` from
    /// its next switch-in.
    pub fn bind(
        &mut self,
        t: &Tagger,
        client: ClientId,
        (pid, tid): (u32, u32),
        page: u32,
        index: u32,
    ) -> Result<(), String> {
        let p = match self.pages.get(&page) {
            Some(p) if p.client == client => *p,
            _ => return Err(format!("page {page} is not a rebind page of this connection")),
        };
        if index >= REBIND_SLOTS {
            return Err(format!(
                "index {index} is outside the page: a page has words 0 to {}",
                REBIND_SLOTS - 1
            ));
        }
        if !self.threads.contains_key(&tid) && self.threads.len() >= MAX_PAGE_THREADS {
            return Err(format!(
                "{MAX_PAGE_THREADS} threads are registered in rebind pages already"
            ));
        }
        t.rebind_thread(tid, Some((page, index, abi::tag(p.container, abi::NO_REQUEST))))
            .map_err(|e| format!("cannot write the tagger's rebind thread map: {e}"))?;
        self.threads.insert(tid, Thread { client, page, pid });
        Ok(())
    }

    /// Thread `tid` reads no page any more (`client`'s own, or not
    /// registered at all).
    pub fn unbind(&mut self, t: &Tagger, client: ClientId, tid: u32) -> Result<(), String> {
        match self.threads.get(&tid) {
            None => return Ok(()),
            Some(th) if th.client != client => {
                return Err(format!("thread {tid} was registered by another connection"))
            }
            Some(_) => {}
        }
        self.forget_thread(t, tid)
    }

    fn forget_thread(&mut self, t: &Tagger, tid: u32) -> Result<(), String> {
        t.rebind_thread(tid, None)
            .map_err(|e| format!("cannot write the tagger's rebind thread map: {e}"))?;
        self.threads.remove(&tid);
        Ok(())
    }

    /// Drops the registrations of threads that have exited (`alive(pid,
    /// tid)` false): their ids may be given to new threads. Returns how
    /// many map updates failed.
    pub fn prune_exited(&mut self, t: &Tagger, alive: impl Fn(u32, u32) -> bool) -> usize {
        let gone: Vec<u32> = self
            .threads
            .iter()
            .filter(|(&tid, th)| !alive(th.pid, tid))
            .map(|(&tid, _)| tid)
            .collect();
        gone.into_iter()
            .filter(|&tid| self.forget_thread(t, tid).is_err())
            .count()
    }

    /// Drops the pages (and their threads) of `closed` and of containers
    /// that are not `live`; returns how many map updates failed (what
    /// failed is kept, to be tried again).
    pub fn prune(&mut self, t: &Tagger, closed: Option<ClientId>, live: impl Fn(u32) -> bool) -> usize {
        let gone: Vec<u32> = self
            .pages
            .iter()
            .filter(|(_, p)| Some(p.client) == closed || !live(p.container))
            .map(|(&n, _)| n)
            .collect();
        let mut failed = 0;
        for page in gone {
            let tids: Vec<u32> = self
                .threads
                .iter()
                .filter(|(_, th)| th.page == page)
                .map(|(&tid, _)| tid)
                .collect();
            failed += tids
                .into_iter()
                .filter(|&tid| self.forget_thread(t, tid).is_err())
                .count();
            match t.remove_rebind_page(page) {
                Ok(()) => {
                    self.pages.remove(&page);
                }
                Err(_) => failed += 1,
            }
        }
        failed
    }
}
