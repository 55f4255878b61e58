//! Applying in place with an undo log.
//!
//! The raft state machine applies a batch of entries to the shared [`State`]
//! and must be able to put it back exactly as it was if persisting the batch
//! fails. Cloning the whole state per batch costs O(all tasks) on every
//! commit (100k tasks: tens of milliseconds, on every manager); the undo log
//! costs O(what the batch touches): before each command it keeps the prior
//! value of every task the command may change, and one copy of the small,
//! non-task part of the state the first time a command may change it.
//! `apply` itself stays pure and unchanged.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::services::{Service, ServiceId, Task, TaskId};
use super::state::{Change, State};
use super::types::*;
use super::{NodeTls, Response};

/// Everything in [`State`] except the tasks and their index.
#[derive(Clone)]
struct Rest {
    cluster: Option<Cluster>,
    nodes: BTreeMap<NodeId, Node>,
    secrets: BTreeMap<SecretId, Secret>,
    configs: BTreeMap<ConfigId, Config>,
    removed: BTreeSet<NodeId>,
    services: BTreeMap<ServiceId, Service>,
    node_tls: BTreeMap<NodeId, NodeTls>,
}

/// What it takes to undo the commands applied since it was made.
#[derive(Default)]
pub struct Undo {
    /// Each touched task's value before its first change (None: it did not
    /// exist).
    tasks: HashMap<TaskId, Option<Task>>,
    rest: Option<Rest>,
}

impl Undo {
    fn keep_task(&mut self, state: &State, id: &TaskId) {
        self.tasks
            .entry(id.clone())
            .or_insert_with(|| state.tasks.get(id).cloned());
    }

    fn keep_rest(&mut self, state: &State) {
        if self.rest.is_none() {
            self.rest = Some(Rest {
                cluster: state.cluster.clone(),
                nodes: state.nodes.clone(),
                secrets: state.secrets.clone(),
                configs: state.configs.clone(),
                removed: state.removed.clone(),
                services: state.services.clone(),
                node_tls: state.node_tls.clone(),
            });
        }
    }

    /// Keep what `cmd` may change, as it is now.
    fn record(&mut self, state: &State, cmd: &Command) {
        match cmd {
            Command::Batch(cmds) => {
                for c in cmds {
                    self.record(state, c);
                }
            }
            // The task commands change tasks only.
            Command::CreateTasks { tasks } => {
                for t in tasks {
                    self.keep_task(state, &t.id);
                }
            }
            Command::AssignTasks { assignments, .. } => {
                for (id, _) in assignments {
                    self.keep_task(state, id);
                }
            }
            Command::SetTaskStatus { updates, .. } => {
                for u in updates {
                    self.keep_task(state, &u.id);
                }
            }
            Command::SetTasksDesired { ids, .. } | Command::DeleteTasks { ids } => {
                for id in ids {
                    self.keep_task(state, id);
                }
            }
            Command::RemoveService { id, .. } => {
                self.keep_rest(state);
                for tid in &state.task_ids_of_service(id) {
                    self.keep_task(state, tid);
                }
            }
            Command::Restore { tasks, .. } => {
                self.keep_rest(state);
                for t in tasks {
                    self.keep_task(state, &t.id);
                }
            }
            // Everything else leaves the tasks alone.
            _ => self.keep_rest(state),
        }
    }
}

impl State {
    /// [`State::apply`], first keeping in `undo` what the command may change.
    pub fn apply_undoable(
        &mut self,
        index: u64,
        cmd: &Command,
        undo: &mut Undo,
    ) -> (Response, Vec<Change>) {
        undo.record(self, cmd);
        self.apply(index, cmd)
    }

    /// Put the state back as it was before the commands `undo` recorded.
    pub fn rollback(&mut self, undo: Undo) {
        if let Some(r) = undo.rest {
            self.cluster = r.cluster;
            self.nodes = r.nodes;
            self.secrets = r.secrets;
            self.configs = r.configs;
            self.removed = r.removed;
            self.services = r.services;
            self.node_tls = r.node_tls;
        }
        for (id, old) in undo.tasks {
            match old {
                Some(t) => self.put_task(t),
                None => {
                    self.delete_task(&id);
                }
            }
        }
    }
}
