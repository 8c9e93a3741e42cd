//! The agent's declared state: live containers, requests and flow bindings,
//! and the ids it hands out.
//!
//! Every change returns the protocol messages that tell the VMM about it,
//! in order; [`State::on_connect`] gives the messages that bring a VMM in
//! step on a fresh connection. The VMM lists what it holds for agents (the
//! `held` frames after `welcome`, whoever declared it: this process on an
//! earlier connection, or an earlier agent process of the same boot): what
//! matches this state is adopted under the VMM's ids, the rest is closed,
//! then the whole state is replayed. The state is the truth: messages lost
//! with a connection are never re-sent as such.
//!
//! **Refusals.** A declaration the VMM refuses (`refused`) is taken out of
//! the state without a message (the VMM does not hold it), and its reason
//! is kept for the local client that is waiting for it.
//!
//! **Ids.** The agent allocates container and request ids from
//! [`ID_BASE`]`..=u32::MAX`, from above the VMM's `next_id` once connected
//! (so never an id the VM has used, live or retained), wrapping and
//! skipping live ids; bare tag-ABI programs in the same guest should choose
//! ids below [`ID_BASE`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use accounting::abi;
use accounting::agent::{AgentMessage, BeginRequest, BindFlow, DeclareContainer, Flow, Held};

use crate::config::{Desired, RuleKey};

/// First id the agent allocates (containers and requests alike).
pub const ID_BASE: u32 = 0x1000_0000;
/// Most live containers (rule and ad hoc), the VMM's default limit.
pub const MAX_CONTAINERS: usize = 1024;
/// Most live requests, the VMM's default `max_live_requests`.
pub const MAX_REQUESTS: usize = 4096;
/// Most flow bindings.
pub const MAX_FLOWS: usize = 4096;

/// A local client connection.
pub type ClientId = u64;
/// Refusals remembered for waiting clients.
const REFUSALS_KEPT: usize = 64;

/// Hands out non-zero ids from [`ID_BASE`] up, wrapping, skipping live ones.
#[derive(Debug)]
pub struct IdAlloc {
    next: u32,
}

impl Default for IdAlloc {
    fn default() -> Self {
        Self { next: ID_BASE }
    }
}

impl IdAlloc {
    /// The next id for which `live` is false (`None` if the range is full).
    pub fn alloc(&mut self, live: impl Fn(u32) -> bool) -> Option<u32> {
        for _ in 0..=(u32::MAX - ID_BASE) {
            let id = self.next;
            self.next = if id == u32::MAX { ID_BASE } else { id + 1 };
            if !live(id) {
                return Some(id);
            }
        }
        None
    }

    /// Allocates from `from` on, if that is further on in the agent's
    /// range.
    pub fn start_at(&mut self, from: u32) {
        if from > self.next {
            self.next = from;
        }
    }
}

/// Where a container came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A config rule; retired when its match has been missing long enough.
    Rule {
        /// Which match.
        key: RuleKey,
        /// Consecutive intervals without the match.
        missing: u32,
    },
    /// Declared by local clients; retired when the last holder lets go.
    AdHoc {
        /// Clients holding it.
        holders: BTreeSet<ClientId>,
    },
}

/// A live container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    /// As declared.
    pub decl: DeclareContainer,
    /// Where it came from.
    pub origin: Origin,
}

#[derive(Clone, Debug)]
struct Request {
    begin: BeginRequest,
    owner: ClientId,
}

#[derive(Clone, Debug)]
struct Binding {
    bind: BindFlow,
    owner: ClientId,
}

/// A declaration the VMM refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The message's `type`.
    pub message: String,
    /// Its id (containers, requests).
    pub id: Option<u32>,
    /// Its flow (`bind_flow`).
    pub flow: Option<Flow>,
    /// The VMM's reason.
    pub reason: String,
}

/// The declared state.
#[derive(Debug, Default)]
pub struct State {
    containers: BTreeMap<u32, Container>,
    by_name: HashMap<String, u32>,
    requests: BTreeMap<u32, Request>,
    flows: HashMap<Flow, Binding>,
    container_ids: IdAlloc,
    request_ids: IdAlloc,
    /// The latest refusals, newest last.
    refusals: VecDeque<Refusal>,
    /// Declarations the VMM refused, in all.
    pub refused: u64,
    /// Rule containers not declared because of [`MAX_CONTAINERS`] or names.
    pub rule_overflow: u64,
}

/// Messages to send, in order.
pub type Out = Vec<AgentMessage>;

impl State {
    /// Empty.
    pub fn new() -> Self {
        Self::default()
    }

    /// Live containers.
    pub fn containers(&self) -> impl Iterator<Item = &Container> {
        self.containers.values()
    }

    /// The live container called `name`.
    pub fn container_by_name(&self, name: &str) -> Option<&Container> {
        self.by_name.get(name).and_then(|id| self.containers.get(id))
    }

    /// Live request count.
    pub fn live_requests(&self) -> usize {
        self.requests.len()
    }

    /// Flow binding count.
    pub fn flow_count(&self) -> usize {
        self.flows.len()
    }

    fn declare(
        &mut self,
        name: String,
        cgroup: Option<String>,
        origin: Origin,
        out: &mut Out,
    ) -> Option<u32> {
        if self.containers.len() >= MAX_CONTAINERS {
            return None;
        }
        let id = self.container_ids.alloc(|id| self.containers.contains_key(&id))?;
        let decl = DeclareContainer {
            id,
            name: name.clone(),
            parent: None,
            cgroup,
        };
        out.push(AgentMessage::DeclareContainer(decl.clone()));
        self.by_name.insert(name, id);
        self.containers.insert(id, Container { decl, origin });
        Some(id)
    }

    fn retire(&mut self, id: u32, out: &mut Out) {
        let Some(c) = self.containers.remove(&id) else {
            return;
        };
        self.by_name.remove(&c.decl.name);
        // The VMM ends the container's requests itself on retirement.
        let ended: BTreeSet<u32> = self
            .requests
            .iter()
            .filter(|(_, r)| r.begin.container == id)
            .map(|(&rid, _)| rid)
            .collect();
        self.requests.retain(|rid, _| !ended.contains(rid));
        self.unbind_where(|b| b.container == id, out);
        self.unrequest_flows(|r| ended.contains(&r), out);
        out.push(AgentMessage::RetireContainer { id });
    }

    fn unbind_where(&mut self, pred: impl Fn(&BindFlow) -> bool, out: &mut Out) {
        let gone: Vec<Flow> = self
            .flows
            .iter()
            .filter(|(_, b)| pred(&b.bind))
            .map(|(f, _)| f.clone())
            .collect();
        for flow in gone {
            self.flows.remove(&flow);
            out.push(AgentMessage::UnbindFlow { flow });
        }
    }

    /// Flows bound to an ended request stay bound to their container only.
    fn unrequest_flows(&mut self, ended: impl Fn(u32) -> bool, out: &mut Out) {
        for b in self.flows.values_mut() {
            if b.bind.request.is_some_and(&ended) {
                b.bind.request = None;
                out.push(AgentMessage::BindFlow(b.bind.clone()));
            }
        }
    }

    /// Brings rule containers in step with what the rules want now: new
    /// matches are declared, matches missing for `retire_after` intervals
    /// are retired, a match whose cgroup changed is retired and declared
    /// anew. Names taken by another container get a `-2`, `-3` … suffix.
    pub fn sync_rules(&mut self, desired: &[Desired], retire_after: u32, out: &mut Out) {
        let want: HashMap<&RuleKey, &Desired> = desired.iter().map(|d| (&d.key, d)).collect();
        let mut have: HashMap<RuleKey, u32> = HashMap::new();
        let mut to_retire = Vec::new();
        for (&id, c) in self.containers.iter_mut() {
            let Origin::Rule { key, missing } = &mut c.origin else {
                continue;
            };
            match want.get(key) {
                Some(d) if d.cgroup == c.decl.cgroup => {
                    *missing = 0;
                    have.insert(key.clone(), id);
                }
                Some(_) => to_retire.push(id),
                None => {
                    *missing += 1;
                    if *missing >= retire_after.max(1) {
                        to_retire.push(id);
                    } else {
                        have.insert(key.clone(), id);
                    }
                }
            }
        }
        for id in to_retire {
            self.retire(id, out);
        }
        for d in desired {
            if have.contains_key(&d.key) {
                continue;
            }
            let Some(name) = self.free_name(&d.name) else {
                self.rule_overflow += 1;
                continue;
            };
            let origin = Origin::Rule {
                key: d.key.clone(),
                missing: 0,
            };
            if self.declare(name, d.cgroup.clone(), origin, out).is_none() {
                self.rule_overflow += 1;
            } else {
                have.insert(d.key.clone(), 0);
            }
        }
    }

    fn free_name(&self, base: &str) -> Option<String> {
        if !self.by_name.contains_key(base) {
            return Some(base.to_owned());
        }
        (2..1000).find_map(|n| {
            let suffix = format!("-{n}");
            let keep = abi::MAX_NAME_LEN - suffix.len();
            let name = format!("{}{suffix}", &base[..base.len().min(keep)]);
            (!self.by_name.contains_key(&name)).then_some(name)
        })
    }

    /// A client declares (or takes hold of) the container `name`. A rule
    /// container of that name is returned as is.
    pub fn declare_adhoc(
        &mut self,
        client: ClientId,
        name: &str,
        cgroup: Option<String>,
        out: &mut Out,
    ) -> Result<u32, String> {
        if !abi::valid_name(name.as_bytes()) {
            return Err("container must be 1..=32 bytes of [A-Za-z0-9._:-]".into());
        }
        if let Some(&id) = self.by_name.get(name) {
            if let Some(Container {
                origin: Origin::AdHoc { holders },
                ..
            }) = self.containers.get_mut(&id)
            {
                holders.insert(client);
            }
            return Ok(id);
        }
        let decl = AgentMessage::DeclareContainer(DeclareContainer {
            id: 1,
            name: name.to_owned(),
            parent: None,
            cgroup: cgroup.clone(),
        });
        decl.validate().map_err(|e| e.to_string())?;
        let origin = Origin::AdHoc {
            holders: BTreeSet::from([client]),
        };
        self.declare(name.to_owned(), cgroup, origin, out)
            .ok_or_else(|| format!("at most {MAX_CONTAINERS} containers"))
    }

    /// A client lets go of an ad hoc container; the last one retires it.
    pub fn release_adhoc(&mut self, client: ClientId, name: &str, out: &mut Out) -> Result<(), String> {
        let id = *self.by_name.get(name).ok_or("unknown container")?;
        let Some(Container {
            origin: Origin::AdHoc { holders },
            ..
        }) = self.containers.get_mut(&id)
        else {
            return Err("container comes from the agent's config, not from a client".into());
        };
        if !holders.remove(&client) {
            return Err("this connection did not declare that container".into());
        }
        if holders.is_empty() {
            self.retire(id, out);
        }
        Ok(())
    }

    /// Begins a request in the live container `container`.
    pub fn begin(
        &mut self,
        client: ClientId,
        container: &str,
        external_id: u64,
        trace_id: Option<String>,
        attributes: BTreeMap<String, String>,
        out: &mut Out,
    ) -> Result<u32, String> {
        let cid = *self.by_name.get(container).ok_or("unknown container")?;
        if self.requests.len() >= MAX_REQUESTS {
            return Err(format!("at most {MAX_REQUESTS} live requests"));
        }
        let mut begin = BeginRequest {
            id: 1,
            container: cid,
            external_id,
            trace_id,
            attributes,
        };
        AgentMessage::BeginRequest(begin.clone())
            .validate()
            .map_err(|e| e.to_string())?;
        let id = self
            .request_ids
            .alloc(|id| self.requests.contains_key(&id))
            .ok_or("no free request id")?;
        begin.id = id;
        out.push(AgentMessage::BeginRequest(begin.clone()));
        self.requests.insert(id, Request { begin, owner: client });
        Ok(id)
    }

    /// Ends a live request (any client may end any request).
    pub fn end(&mut self, id: u32, out: &mut Out) -> Result<(), String> {
        if self.requests.remove(&id).is_none() {
            return Err("unknown request".into());
        }
        self.unrequest_flows(|r| r == id, out);
        out.push(AgentMessage::EndRequest { id });
        Ok(())
    }

    /// Binds (or rebinds) a flow to a container and optionally a request.
    pub fn bind_flow(
        &mut self,
        client: ClientId,
        flow: Flow,
        container: &str,
        request: Option<u32>,
        out: &mut Out,
    ) -> Result<(), String> {
        let cid = *self.by_name.get(container).ok_or("unknown container")?;
        if let Some(r) = request {
            if !self.requests.contains_key(&r) {
                return Err("unknown request".into());
            }
        }
        if self.flows.len() >= MAX_FLOWS && !self.flows.contains_key(&flow) {
            return Err(format!("at most {MAX_FLOWS} flow bindings"));
        }
        let bind = BindFlow {
            flow: flow.clone(),
            container: cid,
            request,
        };
        out.push(AgentMessage::BindFlow(bind.clone()));
        self.flows.insert(flow, Binding { bind, owner: client });
        Ok(())
    }

    /// Drops a flow binding.
    pub fn unbind_flow(&mut self, flow: &Flow, out: &mut Out) -> Result<(), String> {
        self.flows.remove(flow).ok_or("flow is not bound")?;
        out.push(AgentMessage::UnbindFlow { flow: flow.clone() });
        Ok(())
    }

    /// A client went away: its requests end, its flows are unbound, its
    /// holds on ad hoc containers are released.
    pub fn client_closed(&mut self, client: ClientId, out: &mut Out) {
        let mine: Vec<u32> = self
            .requests
            .iter()
            .filter(|(_, r)| r.owner == client)
            .map(|(&id, _)| id)
            .collect();
        let flows: Vec<Flow> = self
            .flows
            .iter()
            .filter(|(_, b)| b.owner == client)
            .map(|(f, _)| f.clone())
            .collect();
        for flow in flows {
            self.flows.remove(&flow);
            out.push(AgentMessage::UnbindFlow { flow });
        }
        for id in mine {
            let _ = self.end(id, out);
        }
        let held: Vec<String> = self
            .containers
            .values()
            .filter(|c| matches!(&c.origin, Origin::AdHoc { holders } if holders.contains(&client)))
            .map(|c| c.decl.name.clone())
            .collect();
        for name in held {
            let _ = self.release_adhoc(client, &name, out);
        }
    }

    /// A connection is up: the messages that bring the VMM in step with
    /// this state, given what it holds for agents (`held`) and where ids
    /// are free (`next_id`). A held container whose name, cgroup and (lack
    /// of) parent match a live one here is adopted: the live one takes the
    /// held id. Then, in order: the held flows, requests and containers
    /// this state does not have are closed (unbind, end, retire), and the
    /// whole state is replayed (adopted ids replay as no-ops). Containers
    /// that were not adopted are declared under fresh ids above `next_id`.
    pub fn on_connect(&mut self, held: &Held, next_id: u32) -> Out {
        self.container_ids.start_at(next_id);
        self.request_ids.start_at(next_id);
        // Containers: adopt by name and cgroup, fresh ids for the rest.
        let mut new_ids: HashMap<u32, u32> = HashMap::new();
        let mut taken: HashSet<u32> = held.containers.iter().map(|h| h.id).collect();
        for h in held.containers.iter().filter(|h| h.parent.is_none()) {
            let Some(&ours) = self.by_name.get(&h.name) else {
                continue;
            };
            let c = &self.containers[&ours];
            if c.decl.cgroup == h.cgroup && c.decl.parent.is_none() {
                new_ids.insert(ours, h.id);
            }
        }
        let adopted: HashSet<u32> = new_ids.values().copied().collect();
        let rest: Vec<u32> = self
            .containers
            .keys()
            .copied()
            .filter(|id| !new_ids.contains_key(id))
            .collect();
        // An id the VM has not used keeps (a client may hold it already).
        let unused = |id: u32| id >= next_id.max(ID_BASE) || (next_id == 0 && id >= ID_BASE);
        for old in rest {
            let id = if unused(old) && !taken.contains(&old) {
                old
            } else {
                self.container_ids.alloc(|id| taken.contains(&id)).unwrap_or(old)
            };
            taken.insert(id);
            new_ids.insert(old, id);
        }
        self.rekey_containers(&new_ids);
        // Requests keep their ids (clients hold them) unless the VMM holds
        // that id in another container.
        let held_requests: HashMap<u32, u32> = held.requests.iter().map(|r| (r.id, r.container)).collect();
        let clashing: Vec<u32> = self
            .requests
            .iter()
            .filter(|(id, r)| held_requests.get(id).is_some_and(|&c| c != r.begin.container))
            .map(|(&id, _)| id)
            .collect();
        for old in clashing {
            let fresh = self
                .request_ids
                .alloc(|id| held_requests.contains_key(&id) || self.requests.contains_key(&id));
            if let (Some(fresh), Some(mut r)) = (fresh, self.requests.remove(&old)) {
                r.begin.id = fresh;
                self.requests.insert(fresh, r);
                for b in self.flows.values_mut() {
                    if b.bind.request == Some(old) {
                        b.bind.request = Some(fresh);
                    }
                }
            }
        }
        let mut out = Out::new();
        let mut stale_flows: Vec<&accounting::agent::BindFlow> = held
            .flows
            .iter()
            .filter(|b| !self.flows.contains_key(&b.flow))
            .collect();
        stale_flows.sort_by_key(|b| (b.flow.local, b.flow.remote));
        out.extend(
            stale_flows
                .into_iter()
                .map(|b| AgentMessage::UnbindFlow { flow: b.flow.clone() }),
        );
        out.extend(
            held.requests
                .iter()
                .filter(|r| {
                    self.requests
                        .get(&r.id)
                        .is_none_or(|o| o.begin.container != r.container)
                })
                .map(|r| AgentMessage::EndRequest { id: r.id }),
        );
        out.extend(
            held.containers
                .iter()
                .filter(|h| !adopted.contains(&h.id))
                .map(|h| AgentMessage::RetireContainer { id: h.id }),
        );
        out.extend(self.replay());
        out
    }

    /// Gives containers new ids (`map`: old to new, for every container),
    /// and their requests and flows with them.
    fn rekey_containers(&mut self, map: &HashMap<u32, u32>) {
        let old = std::mem::take(&mut self.containers);
        for (id, mut c) in old {
            let new = map.get(&id).copied().unwrap_or(id);
            c.decl.id = new;
            self.by_name.insert(c.decl.name.clone(), new);
            self.containers.insert(new, c);
        }
        for r in self.requests.values_mut() {
            if let Some(&n) = map.get(&r.begin.container) {
                r.begin.container = n;
            }
        }
        for b in self.flows.values_mut() {
            if let Some(&n) = map.get(&b.bind.container) {
                b.bind.container = n;
            }
        }
    }

    /// The VMM refused a declaration: what it refused leaves the state
    /// without a message (the VMM does not hold it), and the reason is
    /// kept for [`Self::refusal`].
    pub fn on_refused(&mut self, r: Refusal) {
        self.refused += 1;
        match (r.message.as_str(), r.id, &r.flow) {
            ("declare_container", Some(id), _) => {
                if let Some(c) = self.containers.remove(&id) {
                    self.by_name.remove(&c.decl.name);
                    self.requests.retain(|_, q| q.begin.container != id);
                    self.flows.retain(|_, b| b.bind.container != id);
                }
            }
            ("begin_request", Some(id), _) if self.requests.remove(&id).is_some() => {
                for b in self.flows.values_mut() {
                    if b.bind.request == Some(id) {
                        b.bind.request = None;
                    }
                }
            }
            ("bind_flow", _, Some(flow)) => {
                self.flows.remove(flow);
            }
            // Closes of what the VMM did not hold change nothing here.
            _ => {}
        }
        if self.refusals.len() >= REFUSALS_KEPT {
            self.refusals.pop_front();
        }
        self.refusals.push_back(r);
    }

    /// The latest refusal of `message` for `id` (or `flow`), if any.
    pub fn refusal(&self, message: &str, id: Option<u32>, flow: Option<&Flow>) -> Option<&Refusal> {
        self.refusals
            .iter()
            .rev()
            .find(|r| r.message == message && r.id == id && r.flow.as_ref() == flow)
    }

    /// Whether the live container `name` has id `id`.
    pub fn holds_container(&self, name: &str, id: u32) -> bool {
        self.by_name.get(name) == Some(&id)
    }

    /// Whether request `id` is live.
    pub fn holds_request(&self, id: u32) -> bool {
        self.requests.contains_key(&id)
    }

    /// The container of live request `id`.
    pub fn request_container(&self, id: u32) -> Option<u32> {
        self.requests.get(&id).map(|r| r.begin.container)
    }

    /// Whether `flow` is bound.
    pub fn holds_flow(&self, flow: &Flow) -> bool {
        self.flows.contains_key(flow)
    }

    /// The messages that declare the whole state to a VMM that knows
    /// nothing of it: containers, then requests, then flows.
    pub fn replay(&self) -> Out {
        let mut out: Out = self
            .containers
            .values()
            .map(|c| AgentMessage::DeclareContainer(c.decl.clone()))
            .collect();
        out.extend(
            self.requests
                .values()
                .map(|r| AgentMessage::BeginRequest(r.begin.clone())),
        );
        let mut flows: Vec<&Binding> = self.flows.values().collect();
        flows.sort_by_key(|b| (b.bind.flow.local, b.bind.flow.remote));
        out.extend(flows.into_iter().map(|b| AgentMessage::BindFlow(b.bind.clone())));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use accounting::agent::{FlowProto, HeldContainer, HeldRequest};

    fn want(rule: usize, path: &str, name: &str) -> Desired {
        Desired {
            key: RuleKey::Cgroup {
                rule,
                path: path.into(),
            },
            name: name.into(),
            cgroup: Some(path.into()),
        }
    }

    fn flow() -> Flow {
        Flow {
            proto: FlowProto::Tcp,
            local: "10.0.0.2:40000".parse().unwrap(),
            remote: "1.2.3.4:443".parse().unwrap(),
        }
    }

    #[test]
    fn ids_start_at_the_base_wrap_and_skip_live_ones() {
        let mut a = IdAlloc { next: u32::MAX };
        assert_eq!(a.alloc(|_| false), Some(u32::MAX));
        assert_eq!(a.alloc(|id| id == ID_BASE), Some(ID_BASE + 1));
        assert_eq!(IdAlloc::default().alloc(|_| false), Some(ID_BASE));
    }

    #[test]
    fn rules_declare_new_keep_stable_and_retire_vanished() {
        let mut s = State::new();
        let mut out = Out::new();
        s.sync_rules(&[want(0, "/a", "a"), want(0, "/b", "b")], 1, &mut out);
        assert_eq!(out.len(), 2);
        let id_a = s.container_by_name("a").unwrap().decl.id;
        out.clear();
        s.sync_rules(&[want(0, "/a", "a")], 1, &mut out);
        assert_eq!(out.len(), 1);
        assert!(matches!(out[0], AgentMessage::RetireContainer { .. }));
        assert_eq!(s.container_by_name("a").unwrap().decl.id, id_a);
        out.clear();
        s.sync_rules(&[want(0, "/a", "a")], 1, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn retire_after_waits_and_names_are_deduplicated() {
        let mut s = State::new();
        let mut out = Out::new();
        s.sync_rules(&[want(0, "/x/web", "web"), want(0, "/y/web", "web")], 2, &mut out);
        let names: Vec<_> = s.containers().map(|c| c.decl.name.clone()).collect();
        assert_eq!(names, ["web", "web-2"]);
        out.clear();
        s.sync_rules(&[], 2, &mut out);
        assert!(out.is_empty(), "one missing interval is tolerated");
        s.sync_rules(&[], 2, &mut out);
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn requests_and_flows_follow_their_owner() {
        let mut s = State::new();
        let mut out = Out::new();
        let c = s.declare_adhoc(7, "web", None, &mut out).unwrap();
        assert_eq!(c, ID_BASE);
        let r = s.begin(7, "web", 42, None, BTreeMap::new(), &mut out).unwrap();
        s.bind_flow(7, flow(), "web", Some(r), &mut out).unwrap();
        assert_eq!(s.replay().len(), 3);
        out.clear();
        s.client_closed(7, &mut out);
        assert!(matches!(out[0], AgentMessage::UnbindFlow { .. }));
        assert_eq!(out[1], AgentMessage::EndRequest { id: r });
        assert_eq!(out[2], AgentMessage::RetireContainer { id: c });
        assert!(s.replay().is_empty());
    }

    #[test]
    fn ending_a_request_keeps_its_flows_on_the_container() {
        let mut s = State::new();
        let mut out = Out::new();
        s.declare_adhoc(1, "web", None, &mut out).unwrap();
        let r = s.begin(1, "web", 0, None, BTreeMap::new(), &mut out).unwrap();
        s.bind_flow(1, flow(), "web", Some(r), &mut out).unwrap();
        out.clear();
        s.end(r, &mut out).unwrap();
        assert!(matches!(&out[0], AgentMessage::BindFlow(b) if b.request.is_none()));
        assert_eq!(out[1], AgentMessage::EndRequest { id: r });
        assert!(s.end(r, &mut out).is_err());
    }

    fn held_container(id: u32, name: &str, cgroup: Option<&str>) -> HeldContainer {
        HeldContainer {
            id,
            name: name.into(),
            parent: None,
            cgroup: cgroup.map(Into::into),
        }
    }

    #[test]
    fn a_restarted_agent_adopts_what_matches_and_closes_the_rest() {
        // The previous agent process declared web (0x1000_0000, /web) and
        // batch (0x1000_0001, /batch), with a request live in web and one
        // in batch, and a flow. This one's rules now want api, web, batch
        // in that order, with batch at another cgroup.
        let held = Held {
            containers: vec![
                held_container(ID_BASE, "web", Some("/web")),
                held_container(ID_BASE + 1, "batch", Some("/batch")),
            ],
            requests: vec![
                HeldRequest {
                    id: ID_BASE + 2,
                    container: ID_BASE,
                },
                HeldRequest {
                    id: ID_BASE + 3,
                    container: ID_BASE + 1,
                },
            ],
            flows: vec![BindFlow {
                flow: flow(),
                container: ID_BASE,
                request: Some(ID_BASE + 2),
            }],
            last: true,
        };
        let mut s = State::new();
        let mut out = Out::new();
        s.sync_rules(
            &[
                want(0, "/api", "api"),
                want(1, "/web", "web"),
                want(2, "/new/batch", "batch"),
            ],
            1,
            &mut out,
        );
        // Before the connection the ids clash with the held ones.
        assert_eq!(s.container_by_name("api").unwrap().decl.id, ID_BASE);
        let msgs = s.on_connect(&held, ID_BASE + 4);
        assert_eq!(s.container_by_name("web").unwrap().decl.id, ID_BASE, "adopted");
        let api = s.container_by_name("api").unwrap().decl.id;
        let batch = s.container_by_name("batch").unwrap().decl.id;
        assert!(
            api >= ID_BASE + 4 && batch >= ID_BASE + 4 && api != batch,
            "fresh ids"
        );
        assert_eq!(msgs[0], AgentMessage::UnbindFlow { flow: flow() });
        assert_eq!(msgs[1], AgentMessage::EndRequest { id: ID_BASE + 2 });
        assert_eq!(msgs[2], AgentMessage::EndRequest { id: ID_BASE + 3 });
        assert_eq!(msgs[3], AgentMessage::RetireContainer { id: ID_BASE + 1 });
        let declared: Vec<(u32, &str)> = msgs[4..]
            .iter()
            .map(|m| match m {
                AgentMessage::DeclareContainer(d) => (d.id, d.name.as_str()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(declared.len(), 3);
        assert!(declared.contains(&(ID_BASE, "web")));
        assert!(declared.contains(&(api, "api")) && declared.contains(&(batch, "batch")));
        // New requests get ids above next_id too.
        let r = s.begin(1, "api", 0, None, BTreeMap::new(), &mut out).unwrap();
        assert!(r >= ID_BASE + 4);
    }

    #[test]
    fn a_reconnect_of_the_same_process_replays_as_no_ops_and_closes_what_ended() {
        let mut s = State::new();
        let mut out = Out::new();
        assert!(s.on_connect(&Held::default(), ID_BASE).is_empty());
        let c = s.declare_adhoc(1, "web", Some("/web".into()), &mut out).unwrap();
        let r1 = s.begin(1, "web", 0, None, BTreeMap::new(), &mut out).unwrap();
        let r2 = s.begin(1, "web", 0, None, BTreeMap::new(), &mut out).unwrap();
        // Disconnected: r1 ends, r3 begins.
        s.end(r1, &mut out).unwrap();
        let r3 = s.begin(1, "web", 0, None, BTreeMap::new(), &mut out).unwrap();
        let held = Held {
            containers: vec![held_container(c, "web", Some("/web"))],
            requests: vec![
                HeldRequest { id: r1, container: c },
                HeldRequest { id: r2, container: c },
            ],
            flows: vec![],
            last: true,
        };
        let msgs = s.on_connect(&held, r2 + 1);
        assert_eq!(msgs[0], AgentMessage::EndRequest { id: r1 });
        assert!(matches!(&msgs[1], AgentMessage::DeclareContainer(d) if d.id == c));
        assert!(matches!(&msgs[2], AgentMessage::BeginRequest(b) if b.id == r2));
        assert!(matches!(&msgs[3], AgentMessage::BeginRequest(b) if b.id == r3));
        assert_eq!(msgs.len(), 4);
    }

    #[test]
    fn a_refused_declaration_leaves_the_state_and_keeps_its_reason() {
        let mut s = State::new();
        let mut out = Out::new();
        let c = s.declare_adhoc(1, "web", None, &mut out).unwrap();
        let r = s.begin(1, "web", 0, None, BTreeMap::new(), &mut out).unwrap();
        s.on_refused(Refusal {
            message: "declare_container".into(),
            id: Some(c),
            flow: None,
            reason: "ring_duplicate_name".into(),
        });
        assert!(!s.holds_container("web", c));
        assert!(!s.holds_request(r), "its requests went with it");
        assert_eq!(
            s.refusal("declare_container", Some(c), None).unwrap().reason,
            "ring_duplicate_name"
        );
        assert!(s.replay().is_empty());
        assert_eq!(s.refused, 1);
    }

    #[test]
    fn bad_client_input_is_refused() {
        let mut s = State::new();
        let mut out = Out::new();
        assert!(s.declare_adhoc(1, "a b", None, &mut out).is_err());
        assert!(s.declare_adhoc(1, "x", Some("../etc".into()), &mut out).is_err());
        assert!(s.begin(1, "nope", 0, None, BTreeMap::new(), &mut out).is_err());
        s.declare_adhoc(1, "ok", None, &mut out).unwrap();
        assert!(s
            .begin(1, "ok", 0, Some("XYZ".into()), BTreeMap::new(), &mut out)
            .is_err());
        assert!(s.bind_flow(1, flow(), "ok", Some(5), &mut out).is_err());
        assert!(s.unbind_flow(&flow(), &mut out).is_err());
        assert!(s.release_adhoc(2, "ok", &mut out).is_err());
        assert_eq!(s.live_requests(), 0);
    }
}
