//! What each node is told to run: its tasks, and the secrets and configs
//! those tasks reference (and no others). Answered by any manager from its
//! own state, as a long poll, so workers learn of new tasks within one
//! commit and an idle cluster costs nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::time::Duration;

use crate::rpc::{Assignments, RpcError};
use crate::store::{NodeId, State, Task, TaskState};

use super::Manager;

/// How long a poll waits for a change before answering anyway (keeps the
/// worker's view fresh after a missed wake-up, and bounds a stream's life).
const LONG_POLL: Duration = Duration::from_secs(20);

/// The IDs of the secrets and configs that the node's wanted tasks
/// reference, and the node's tasks (assigned or later).
fn walk<'a>(
    state: &'a State,
    node: &NodeId,
) -> (Vec<&'a Task>, BTreeSet<&'a str>, BTreeSet<&'a str>) {
    let mut tasks = Vec::new();
    let mut secret_ids = BTreeSet::new();
    let mut config_ids = BTreeSet::new();
    for t in state.tasks_of_node(node) {
        if t.status.state < TaskState::Assigned {
            continue;
        }
        if t.desired_state <= TaskState::Running {
            let c = t.spec.container_spec.as_ref();
            for r in c.and_then(|c| c.secrets.as_ref()).into_iter().flatten() {
                if let Some(id) = &r.secret_id {
                    secret_ids.insert(id.as_str());
                }
            }
            for r in c.and_then(|c| c.configs.as_ref()).into_iter().flatten() {
                if let Some(id) = &r.config_id {
                    config_ids.insert(id.as_str());
                }
            }
        }
        tasks.push(t);
    }
    (tasks, secret_ids, config_ids)
}

/// What the node's assignments hash to, without copying them: a long poll
/// checks this on every commit, for every node waiting (1,000 nodes × every
/// commit), and builds the answer only when it changed.
pub fn fingerprint(state: &State, node: &NodeId) -> u64 {
    let (tasks, secret_ids, config_ids) = walk(state, node);
    let mut h = std::hash::DefaultHasher::new();
    for t in &tasks {
        t.id.hash(&mut h);
        t.version.hash(&mut h);
    }
    for s in state
        .secrets
        .values()
        .filter(|s| secret_ids.contains(s.id.0.as_str()))
    {
        s.id.hash(&mut h);
        s.version.hash(&mut h);
    }
    for c in state
        .configs
        .values()
        .filter(|c| config_ids.contains(c.id.0.as_str()))
    {
        c.id.hash(&mut h);
        c.version.hash(&mut h);
    }
    h.finish()
}

/// The node's assignments as they stand.
pub fn build(state: &State, node: &NodeId) -> Assignments {
    let (tasks, secret_ids, config_ids) = walk(state, node);
    let mut service_names = BTreeMap::new();
    for t in &tasks {
        if let Some(s) = state.services.get(&t.service_id) {
            service_names.insert(s.id.clone(), s.name().to_string());
        }
    }
    let secrets: Vec<_> = state
        .secrets
        .values()
        .filter(|s| secret_ids.contains(s.id.0.as_str()))
        .cloned()
        .collect();
    let configs: Vec<_> = state
        .configs
        .values()
        .filter(|c| config_ids.contains(c.id.0.as_str()))
        .cloned()
        .collect();
    Assignments {
        fingerprint: fingerprint(state, node),
        tasks: tasks.into_iter().cloned().collect(),
        service_names,
        secrets,
        configs,
    }
}

/// Answer when the node's assignments differ from `known`, or after
/// `LONG_POLL`.
pub async fn wait_for(m: &Manager, node: &NodeId, known: u64) -> Result<Assignments, RpcError> {
    let mut applied = m.state.watch();
    let deadline = tokio::time::Instant::now() + LONG_POLL;
    loop {
        applied.borrow_and_update();
        let timed_out = tokio::time::Instant::now() >= deadline;
        {
            let state = m.state.read();
            if !state.nodes.contains_key(node) {
                return Err(RpcError::UnknownNode(node.0.clone()));
            }
            if timed_out || fingerprint(&state, node) != known {
                return Ok(build(&state, node));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {}
            r = applied.changed() => if r.is_err() {
                return Err(RpcError::Other("the manager is stopping".into()));
            },
        }
    }
}
