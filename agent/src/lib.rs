//! apiary: Docker Swarm mode as one static Rust agent.
//!
//! Dependencies point one way: `api` and `cli` at the edge; `node`, `manager`
//! and `worker` in the middle; `store`, `raft`, `transport` and `pki`
//! underneath. See `docs/architecture.md`.

pub mod agent;
pub mod api;
pub mod cli;
pub mod control;
pub mod executor;
pub mod manager;
pub mod network;
pub mod node;
pub mod pki;
pub mod raft;
pub mod rpc;
pub mod seal;
pub mod store;
pub mod systemd;
pub mod transport;
pub mod util;
pub mod worker;
