//! `resourceful-agent`: the guest side of Resourceful's agent protocol (v1,
//! [`accounting::agent`]).
//!
//! A Linux guest runs one agent. It tells the VMM who the principals are and
//! what the POSIX world looks like, so the VMM can join what it charges
//! (exits, device requests, network work) with processes and cgroups:
//!
//! - [`procfs`] and [`cgroup`] read `/proc` and cgroup v2 (pure parsers over
//!   a root path, so they run against fixtures and the real system);
//! - [`collect`] turns one snapshot into a bounded `context` report;
//! - [`config`] turns cgroups and processes into containers by rule;
//! - [`state`] keeps the declared containers, requests and flows, and the
//!   ids the agent owns;
//! - [`outbox`] bounds what waits for the VMM and decides what is dropped;
//! - [`link`] connects (vsock or Unix), handshakes, replays and streams;
//! - [`local`] is the Unix-socket interface applications use;
//! - [`agent`] runs it all.
//!
//! The wire format is not defined here: every frame is built and checked by
//! [`accounting::agent`]. See `docs/agent-protocol.md`.

pub mod agent;
pub mod cgroup;
pub mod collect;
pub mod config;
pub mod link;
pub mod local;
pub mod outbox;
pub mod procfs;
pub mod rebind;
pub mod rebind_client;
pub mod state;
pub mod tagger;
