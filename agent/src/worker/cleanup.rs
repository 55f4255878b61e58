//! What the worker undoes outside a task's own life: at start, the
//! network of tasks whose containers vanished while no agent watched
//! (killed, crashed); when the node leaves the swarm, every task.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::{remove_quietly, spec, Host};
use crate::executor::{ContainerState, Executor};
use crate::network::Network;

/// How long tasks get to stop when their node leaves the swarm (Docker
/// kills them at once): enough to flush, short enough that `swarm leave`
/// answers promptly; they stop all at once.
const LEAVE_GRACE: Duration = Duration::from_secs(3);

/// Release the networks of tasks without a container; keep (and re-
/// register) those of the containers `found`. Before any task starts.
pub(super) async fn sweep(h: &Host, found: &HashMap<String, ContainerState>) {
    let live: HashSet<String> = found.keys().cloned().collect();
    match h.net.sweep(&live).await {
        Ok(s) if s.is_empty() => {}
        Ok(s) => info!(
            released = ?s.released,
            stray_veths = ?s.stray_veths,
            recovered = ?s.recovered,
            "cleaned up the network of tasks gone while the agent was down"
        ),
        Err(e) => warn!("cleaning up the network of tasks gone while the agent was down: {e}"),
    }
}

/// Leaving the swarm (the worker has stopped): stop and remove every task
/// container of this node, as Docker does, then remove the tasks' network
/// and what it made on the node. Problems are logged; the node leaves
/// regardless.
pub async fn clear(executor: Arc<dyn Executor>, network: Arc<dyn Network>) {
    let h = Host {
        ex: executor,
        net: network,
    };
    let ids: Vec<String> = match h.ex.list().await {
        Ok(list) => list
            .into_iter()
            .filter(|c| c.labels.contains_key(spec::LABEL_TASK))
            .map(|c| c.id)
            .collect(),
        Err(e) => {
            warn!("cannot list this node's containers to remove them: {e}");
            Vec::new()
        }
    };
    futures::future::join_all(ids.iter().map(|id| {
        let h = &h;
        async move {
            // Stopped here, `remove_quietly`'s own stop returns at once.
            if let Err(e) = h.ex.stop(id, None, LEAVE_GRACE).await {
                warn!(task.id = %id, "stopping the container failed: {e}");
            }
            remove_quietly(h, id).await;
        }
    }))
    .await;
    if let Err(e) = h.net.teardown().await {
        warn!("could not remove the tasks' network from this node: {e}");
    }
}
