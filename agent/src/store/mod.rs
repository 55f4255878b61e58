//! Cluster objects and the deterministic state machine that raft replicates.
//!
//! Every manager holds the same [`State`], built by applying the same
//! [`Command`]s in log order. `apply` is pure: anything that varies between
//! machines (timestamps, random IDs, certificates) is decided by the proposer
//! and carried inside the command, so replaying the log gives the same state.
//!
//! An object's `version` is the raft log index of the command that last
//! changed it, which gives Docker's optimistic concurrency (`?version=N`).

pub mod attachments;
mod ca;
pub mod events;
pub mod hints;
pub mod networks;
mod services;
pub mod spec;
mod state;
mod types;
pub mod updates;

pub use attachments::{Endpoint, NetAddr};
pub use ca::{CaRotation, NodeTls};
pub use networks::{AddrPool, IpamPool, Network, NetworkId, NetworkSpec};
pub use services::{
    job_of, mode_of, place_of, Job, NodeView, Place, PublishedPort, RegistryAuth, RestartPolicy,
    Service, ServiceId, ServiceSpec, Task, TaskCounts, TaskId, TaskIndex, TaskSpec, TaskState,
    TaskStatus, TaskStatusUpdate, ASSIGNED_MESSAGE,
};
pub use spec::SharedSpec;
pub use state::{State, StoreError, StoreErrorKind};
pub use types::*;
pub use updates::{RollbackGuard, UpdateState, UpdateStatus};
