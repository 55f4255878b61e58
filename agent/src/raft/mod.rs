//! Raft for the managers: openraft 0.9 with the log, vote and state machine
//! in one redb file (`<data-dir>/raft.redb`), and a network over `transport`.

pub mod network;
pub mod storage;

use std::io::Cursor;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use tokio::sync::watch;

use crate::store::{Command, Response, State};

openraft::declare_raft_types!(
    /// apiary's raft types: commands are [`Command`], node IDs random `u64`s,
    /// members carry their QUIC address in `BasicNode::addr`.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = u64,
        Node = openraft::BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

pub type Raft = openraft::Raft<TypeConfig>;

/// The read side of the replicated state, shared by the API and the manager
/// loops. The state machine is the only writer; readers take the lock only
/// for as long as they copy what they need, never across an `.await`.
#[derive(Clone)]
pub struct StateReader {
    state: Arc<RwLock<State>>,
    applied: watch::Receiver<u64>,
}

/// The write side, owned by the state machine.
pub struct StateWriter {
    state: Arc<RwLock<State>>,
    applied: watch::Sender<u64>,
}

pub fn shared_state(initial: State, applied: u64) -> (StateWriter, StateReader) {
    let state = Arc::new(RwLock::new(initial));
    let (tx, rx) = watch::channel(applied);
    (
        StateWriter {
            state: state.clone(),
            applied: tx,
        },
        StateReader { state, applied: rx },
    )
}

impl StateReader {
    /// A read guard. A poisoned lock means the writer panicked mid-apply;
    /// the state is still the last fully applied one, so reading on is safe.
    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }
    /// Log index of the last applied entry.
    pub fn applied(&self) -> u64 {
        *self.applied.borrow()
    }
    /// A receiver that changes whenever entries are applied.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.applied.clone()
    }
}

impl StateWriter {
    pub fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut guard = self.state.write().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }
    pub fn set_applied(&self, index: u64) {
        self.applied.send_replace(index);
    }
    pub fn reader(&self) -> StateReader {
        StateReader {
            state: self.state.clone(),
            applied: self.applied.subscribe(),
        }
    }
}
