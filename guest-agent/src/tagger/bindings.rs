//! Threads bound to requests through the local interface (`work_for`):
//! the tagger's `thread_tags` map, kept with who asked, so a binding ends
//! with its request, its client's connection, or an explicit unbind.

use std::collections::HashMap;

use crate::state::ClientId;

use super::Tagger;

/// Most threads bound at once (the program's `thread_tags` map holds 65,536).
pub const MAX_BINDINGS: usize = 65_536;

/// One binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Binding {
    client: ClientId,
    request: u32,
}

/// The live bindings, by thread id.
#[derive(Debug, Default)]
pub struct ThreadBindings {
    by_tid: HashMap<u32, Binding>,
}

impl ThreadBindings {
    /// Threads bound now.
    pub fn len(&self) -> usize {
        self.by_tid.len()
    }

    /// None bound.
    pub fn is_empty(&self) -> bool {
        self.by_tid.is_empty()
    }

    /// Thread `tid` works for `request` (tag `tag`) from its next
    /// switch-in; replaces its earlier binding.
    pub fn bind(
        &mut self,
        t: &Tagger,
        client: ClientId,
        tid: u32,
        request: u32,
        tag: u64,
    ) -> Result<(), String> {
        if !self.by_tid.contains_key(&tid) && self.by_tid.len() >= MAX_BINDINGS {
            return Err(format!("{MAX_BINDINGS} threads are bound already"));
        }
        t.bind_thread(tid, Some(tag))
            .map_err(|e| format!("cannot write the tagger's thread map: {e}"))?;
        self.by_tid.insert(tid, Binding { client, request });
        Ok(())
    }

    /// Thread `tid` is back to its cgroup's or process's container.
    pub fn unbind(&mut self, t: &Tagger, tid: u32) -> Result<(), String> {
        t.bind_thread(tid, None)
            .map_err(|e| format!("cannot write the tagger's thread map: {e}"))?;
        self.by_tid.remove(&tid);
        Ok(())
    }

    /// Drops the bindings of `client` and those whose request is not
    /// `live`; returns how many could not be removed from the map (they
    /// are kept, to be tried again).
    pub fn prune(&mut self, t: &Tagger, closed: Option<ClientId>, live: impl Fn(u32) -> bool) -> usize {
        let gone: Vec<u32> = self
            .by_tid
            .iter()
            .filter(|(_, b)| Some(b.client) == closed || !live(b.request))
            .map(|(&tid, _)| tid)
            .collect();
        gone.into_iter()
            .filter(|&tid| self.unbind(t, tid).is_err())
            .count()
    }
}
