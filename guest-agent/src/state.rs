//! The agent's declared state: live containers, requests and flow bindings,
//! and the ids it hands out.
//!
//! Every change returns the protocol messages that tell the VMM about it,
//! in order; [`State::on_connect`] gives the messages that bring a VMM in
//! step on a fresh connection: closes of what it may still hold from an
//! earlier connection (the VMM keeps an agent's state when its connection
//! ends), then the replay of the whole state. The state is the truth:
//! messages lost with a connection are never re-sent as such.
//!
//! **Ids.** The agent allocates container and request ids from
//! [`ID_BASE`]`..=u32::MAX`, wrapping and skipping live ids, so they never
//! collide with ids that bare tag-ABI programs in the same guest choose
//! below [`ID_BASE`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use accounting::abi;
use accounting::agent::{AgentMessage, BeginRequest, BindFlow, DeclareContainer, Flow};

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

/// Ids and flows a VMM may hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Known {
    containers: BTreeSet<u32>,
    requests: BTreeSet<u32>,
    flows: HashSet<Flow>,
}

impl Known {
    fn is_empty(&self) -> bool {
        self.containers.is_empty() && self.requests.is_empty() && self.flows.is_empty()
    }
}

/// The declared state.
#[derive(Debug, Default)]
pub struct State {
    /// What a VMM may still hold from earlier connections (it keeps an
    /// agent's state when the connection ends): what was live, or closed
    /// without the close being written, when the last connection ended.
    known: Known,
    /// Closes emitted on the current connection and not yet written.
    closed_recent: Known,
    connected: bool,
    containers: BTreeMap<u32, Container>,
    by_name: HashMap<String, u32>,
    requests: BTreeMap<u32, Request>,
    flows: HashMap<Flow, Binding>,
    container_ids: IdAlloc,
    request_ids: IdAlloc,
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
        if self.connected {
            self.closed_recent.containers.insert(id);
            self.closed_recent.requests.extend(ended);
        }
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
            self.closed_flow(&flow);
            out.push(AgentMessage::UnbindFlow { flow });
        }
    }

    fn closed_flow(&mut self, flow: &Flow) {
        if self.connected {
            self.closed_recent.flows.insert(flow.clone());
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
        if self.connected {
            self.closed_recent.requests.insert(id);
        }
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
        self.closed_flow(flow);
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
            self.closed_flow(&flow);
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

    /// A connection is up: the messages that bring the VMM in step. First
    /// the closes of what an earlier connection may have left live in the
    /// VMM and is gone now (unbind, end, retire; a VMM that does not hold
    /// them refuses them harmlessly), then [`Self::replay`].
    pub fn on_connect(&mut self) -> Out {
        let known = std::mem::take(&mut self.known);
        let mut out = Out::new();
        let mut flows: Vec<&Flow> = known
            .flows
            .iter()
            .filter(|f| !self.flows.contains_key(f))
            .collect();
        flows.sort_by_key(|f| (f.local, f.remote));
        out.extend(
            flows
                .into_iter()
                .map(|f| AgentMessage::UnbindFlow { flow: f.clone() }),
        );
        let gone_requests = known.requests.iter().filter(|r| !self.requests.contains_key(r));
        out.extend(gone_requests.map(|&id| AgentMessage::EndRequest { id }));
        let gone_containers = known
            .containers
            .iter()
            .filter(|c| !self.containers.contains_key(c));
        out.extend(gone_containers.map(|&id| AgentMessage::RetireContainer { id }));
        // Until written, those closes are still owed.
        self.closed_recent = Known {
            containers: known
                .containers
                .into_iter()
                .filter(|c| !self.containers.contains_key(c))
                .collect(),
            requests: known
                .requests
                .into_iter()
                .filter(|r| !self.requests.contains_key(r))
                .collect(),
            flows: known
                .flows
                .into_iter()
                .filter(|f| !self.flows.contains_key(f))
                .collect(),
        };
        self.connected = true;
        out.extend(self.replay());
        out
    }

    /// The connection ended: everything live, and every close not yet
    /// written, may be held by the VMM.
    pub fn on_disconnect(&mut self) {
        self.connected = false;
        let recent = std::mem::take(&mut self.closed_recent);
        self.known
            .containers
            .extend(self.containers.keys().copied().chain(recent.containers));
        self.known
            .requests
            .extend(self.requests.keys().copied().chain(recent.requests));
        self.known
            .flows
            .extend(self.flows.keys().cloned().chain(recent.flows));
    }

    /// Everything queued so far has been written to the connection.
    pub fn delivered(&mut self) {
        if !self.closed_recent.is_empty() {
            self.closed_recent = Known::default();
        }
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
    use accounting::agent::FlowProto;

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

    #[test]
    fn closes_missed_while_disconnected_go_before_the_replay() {
        let mut s = State::new();
        let mut out = Out::new();
        assert!(s.on_connect().is_empty());
        s.declare_adhoc(1, "web", None, &mut out).unwrap();
        let r1 = s.begin(1, "web", 0, None, BTreeMap::new(), &mut out).unwrap();
        let r2 = s.begin(1, "web", 0, None, BTreeMap::new(), &mut out).unwrap();
        s.delivered();
        s.end(r2, &mut out).unwrap(); // queued, never written
        s.on_disconnect();
        s.end(r1, &mut out).unwrap(); // while disconnected
        let r3 = s.begin(1, "web", 0, None, BTreeMap::new(), &mut out).unwrap();
        let msgs = s.on_connect();
        assert_eq!(msgs[0], AgentMessage::EndRequest { id: r1 });
        assert_eq!(msgs[1], AgentMessage::EndRequest { id: r2 });
        assert!(matches!(msgs[2], AgentMessage::DeclareContainer(_)));
        assert!(matches!(&msgs[3], AgentMessage::BeginRequest(b) if b.id == r3));
        assert_eq!(msgs.len(), 4);
        // The closes are owed until written, then forgotten.
        s.on_disconnect();
        assert_eq!(s.on_connect().len(), 4);
        s.delivered();
        s.on_disconnect();
        assert_eq!(s.on_connect().len(), 2);
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
