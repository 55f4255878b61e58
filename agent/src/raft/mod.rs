//! Raft for the managers: openraft 0.9 with the log, vote and state machine
//! in one redb file (`<data-dir>/raft.redb`), and a network over `transport`.

pub mod network;
pub mod runtime;
pub mod storage;

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use tokio::sync::{watch, Notify};

use crate::store::{Command, NodeId, Response, State};

openraft::declare_raft_types!(
    /// apiary's raft types: entries carry a [`Command`] (as a [`Payload`]),
    /// node IDs are random `u64`s, members carry their QUIC address in
    /// `BasicNode::addr`.
    pub TypeConfig:
        D = Payload,
        R = Response,
        NodeId = u64,
        Node = openraft::BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = runtime::RaftRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;

/// A raft entry's command, shared rather than copied: the log keeps its
/// latest entries in memory (`storage::LogStore`), and apply and every
/// replication take them from there without decoding them again (JSON
/// decoding of entries read back was the largest item of a leader's commit
/// at 100k tasks). Encoded exactly as the `Command` it holds, so logs and
/// messages are unchanged.
#[derive(Clone, Debug, PartialEq)]
pub struct Payload(Arc<Command>);

impl std::ops::Deref for Payload {
    type Target = Command;
    fn deref(&self) -> &Command {
        &self.0
    }
}

impl From<Command> for Payload {
    fn from(c: Command) -> Payload {
        Payload(Arc::new(c))
    }
}

impl serde::Serialize for Payload {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for Payload {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Payload, D::Error> {
        Command::deserialize(d).map(Payload::from)
    }
}

/// The read side of the replicated state, shared by the API and the manager
/// loops. The state machine is the only writer; readers take the lock only
/// for as long as they copy what they need, never across an `.await`.
#[derive(Clone)]
pub struct StateReader {
    state: Arc<RwLock<State>>,
    applied: watch::Receiver<u64>,
    nodes: Arc<NodeWaiters>,
    events: Arc<EventLog>,
}

/// The write side, owned by the state machine.
pub struct StateWriter {
    state: Arc<RwLock<State>>,
    applied: watch::Sender<u64>,
    nodes: Arc<NodeWaiters>,
    events: Arc<EventLog>,
}

/// The events this manager applied (`docker events`): the last
/// `EVENTS_KEPT` for `since`, and a channel for those to come. Local to
/// the manager, like Docker's; not kept across restarts (the log entries
/// replayed at start emit none).
pub struct EventLog {
    kept: std::sync::Mutex<std::collections::VecDeque<crate::store::events::Event>>,
    live: tokio::sync::broadcast::Sender<crate::store::events::Event>,
}

const EVENTS_KEPT: usize = 1000;

impl Default for EventLog {
    fn default() -> Self {
        EventLog {
            kept: Default::default(),
            live: tokio::sync::broadcast::channel(EVENTS_KEPT).0,
        }
    }
}

impl EventLog {
    fn emit(&self, events: Vec<crate::store::events::Event>) {
        if events.is_empty() {
            return;
        }
        let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        for mut e in events {
            e.time_nano = now;
            if kept.len() == EVENTS_KEPT {
                kept.pop_front();
            }
            kept.push_back(e.clone());
            // No receiver is no error: nobody is watching.
            let _ = self.live.send(e);
        }
    }

    /// The kept events, and a receiver of the next ones (subscribed under
    /// the same lock: none is missed or seen twice).
    pub fn subscribe(
        &self,
    ) -> (
        Vec<crate::store::events::Event>,
        tokio::sync::broadcast::Receiver<crate::store::events::Event>,
    ) {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        (kept.iter().cloned().collect(), self.live.subscribe())
    }
}

/// One wake-up per node for the assignment long polls: with 1,000 nodes
/// polling, waking every poll on every commit (the `applied` watch) costs
/// more than the commits; a batch wakes the nodes whose tasks it touched
/// (`store::hints`).
#[derive(Default)]
struct NodeWaiters(Mutex<HashMap<NodeId, Arc<Notify>>>);

impl NodeWaiters {
    fn get(&self, node: &NodeId) -> Arc<Notify> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(node.clone()).or_default().clone()
    }

    fn wake(&self, nodes: Option<std::collections::BTreeSet<NodeId>>) {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match nodes {
            None => map.values().for_each(|n| n.notify_waiters()),
            Some(nodes) => {
                for n in nodes.iter().filter_map(|id| map.get(id)) {
                    n.notify_waiters();
                }
            }
        }
    }
}

pub fn shared_state(initial: State, applied: u64) -> (StateWriter, StateReader) {
    let state = Arc::new(RwLock::new(initial));
    let (tx, rx) = watch::channel(applied);
    let nodes = Arc::new(NodeWaiters::default());
    let events = Arc::new(EventLog::default());
    (
        StateWriter {
            state: state.clone(),
            applied: tx,
            nodes: nodes.clone(),
            events: events.clone(),
        },
        StateReader {
            state,
            applied: rx,
            nodes,
            events,
        },
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
    /// Notified once applied entries touched `node`'s tasks, or anything
    /// every node's assignments may refer to. Create the `notified()`
    /// future (and `enable` it) before looking at the state, so that a
    /// batch applied in between is not missed.
    pub fn node_waiter(&self, node: &NodeId) -> Arc<Notify> {
        self.nodes.get(node)
    }
    /// The swarm events this manager applied.
    pub fn events(&self) -> &EventLog {
        &self.events
    }
}

impl StateWriter {
    pub fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut guard = self.state.write().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }
    /// After a batch (or a snapshot) was applied and the lock released.
    pub fn set_applied(&self, index: u64) {
        let touched = self
            .state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .task_index
            .hints
            .take_touched();
        self.nodes.wake(touched);
        self.applied.send_replace(index);
    }
    pub fn reader(&self) -> StateReader {
        StateReader {
            state: self.state.clone(),
            applied: self.applied.subscribe(),
            nodes: self.nodes.clone(),
            events: self.events.clone(),
        }
    }
    /// Record what an applied entry did (after the write lock is let go).
    pub fn emit(&self, events: Vec<crate::store::events::Event>) {
        self.events.emit(events);
    }
}
