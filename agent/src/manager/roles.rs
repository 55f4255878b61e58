//! The role reconciler (leader only): a node whose desired role is worker but
//! which is still a raft voter is taken out of raft. Promotion needs the
//! node's help (a manager certificate, a running raft), so it is driven by the
//! node's session; this loop handles the half only the leader can do.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::Manager;
use crate::store::{NodeId, RaftId, Role, State};

const TICK: Duration = Duration::from_millis(500);

/// Pure decision: voters to remove (demoted nodes). The leader itself last,
/// so that it hands over only when nothing else is pending.
pub(super) fn plan(state: &State, me: RaftId) -> Vec<(NodeId, RaftId)> {
    let mut out: Vec<(NodeId, RaftId)> = state
        .managers()
        .filter(|n| n.spec.role == Role::Worker)
        .filter_map(|n| n.manager_status.as_ref().map(|ms| (n.id.clone(), ms.raft_id)))
        .collect();
    out.sort_by_key(|(_, r)| *r == me);
    out
}

pub(super) async fn run(m: Arc<Manager>, stop: CancellationToken) {
    let mut changes = m.state.watch();
    loop {
        let todo = {
            let state = m.state.read();
            plan(&state, m.me.raft_id)
        };
        for (node_id, raft_id) in todo {
            if stop.is_cancelled() {
                return;
            }
            if let Err(e) = m.remove_voter(&node_id, raft_id).await {
                warn!(node.id = %node_id, "could not take a demoted manager out of raft: {e}");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = changes.changed() => {}
            _ = tokio::time::sleep(TICK) => {}
        }
    }
}
