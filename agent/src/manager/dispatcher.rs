//! Node liveness, decided by the leader: a node's state (Ready ↔ Down) from
//! its heartbeats (Swarm's rule: three missed periods), a manager's
//! reachability from raft itself — when it last answered the leader's
//! appends (`raft::network::Answers`), so that a dead or cut-off manager
//! shows Unreachable within about a second and a half, not after the
//! heartbeats' 15 s.
//!
//! Heartbeats and answers only touch memory; the leader writes a node's
//! status to raft only when it changes, in one batch per tick, so an idle
//! cluster writes nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::Manager;
use crate::raft::network::Answers;
use crate::store::{Command, NodeId, NodeState, NodeStatusUpdate, Reachability, State};

/// Swarm marks a node Down after three missed heartbeats.
const MISSED_HEARTBEATS: u32 = 3;
const TICK: Duration = Duration::from_millis(250);
/// A manager that has not answered the leader's raft for this long is
/// Unreachable: eight heartbeat intervals (150 ms), and longer than an
/// append takes on a busy two-core board (up to about 1 s with 100k tasks
/// in flight), so a merely slow follower does not flap. With the tick,
/// a dead manager shows Unreachable within 1.45 s.
const RAFT_SILENCE: Duration = Duration::from_millis(1200);
/// How long a new leader waits for a manager's first answer before it
/// calls it Unreachable: its first appends go out at once, and a live
/// follower answers within a heartbeat or two. Shorter than
/// `RAFT_SILENCE`, so that a dead leader, which spent an election
/// already, is shown Unreachable about as soon as a dead follower.
const FIRST_ANSWER: Duration = Duration::from_millis(600);

#[derive(Default)]
pub struct Dispatcher {
    inner: Mutex<Seen>,
    answers: Answers,
}

#[derive(Default)]
struct Seen {
    last: HashMap<NodeId, Instant>,
    /// When this manager's current term as leader began: nodes it has not
    /// heard from yet get a full grace period from then.
    term_start: Option<Instant>,
    /// The heartbeat period the last plan used, and until when nodes are
    /// given the old period's grace after it was shortened: nodes learn
    /// the new period only at their next heartbeat (old period), so without
    /// this a `swarm update --dispatcher-heartbeat 1s` marked every node
    /// Down for a moment.
    period: Option<Duration>,
    old_grace_until: Option<Instant>,
}

impl Dispatcher {
    pub fn new(answers: Answers) -> Dispatcher {
        Dispatcher {
            inner: Mutex::default(),
            answers,
        }
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
    pub fn seen(&self, id: &NodeId) {
        self.lock().last.insert(id.clone(), Instant::now());
    }
    pub fn forget(&self, id: &NodeId) {
        self.lock().last.remove(id);
    }
    pub(super) fn start_term(&self) {
        let mut s = self.lock();
        s.last.clear();
        s.term_start = Some(Instant::now());
    }

    /// Pure decision: the status changes to write now.
    fn plan(&self, state: &State, me: &NodeId, now: Instant) -> Vec<NodeStatusUpdate> {
        let Some(cluster) = &state.cluster else {
            return Vec::new();
        };
        let period = Duration::from_nanos(cluster.spec.dispatcher_heartbeat_ns.max(1) as u64);
        let grace = period * MISSED_HEARTBEATS;
        let mut seen = self.lock();
        if let Some(old) = seen.period {
            if period < old {
                seen.old_grace_until = Some(now + old * MISSED_HEARTBEATS);
            }
        }
        seen.period = Some(period);
        let grace_until = seen.old_grace_until;
        let term_start = seen.term_start;
        let mut updates = Vec::new();
        for node in state.nodes.values() {
            // A node that left stays Down until it is removed or rejoins.
            if node.status.state == NodeState::Down && node.status.message == "node left the swarm"
            {
                continue;
            }
            let last = seen.last.get(&node.id).copied().or(seen.term_start);
            let alive = &node.id == me
                || last.is_some_and(|t| now.duration_since(t) < grace)
                || grace_until.is_some_and(|g| now < g && last.is_some());
            let heard = &node.id == me || seen.last.contains_key(&node.id);
            let (want_state, message) = if alive {
                if heard {
                    (NodeState::Ready, "")
                } else {
                    (node.status.state, node.status.message.as_str())
                }
            } else {
                (NodeState::Down, "heartbeat failure")
            };
            let want_reach = node
                .manager_status
                .as_ref()
                .map(|ms| self.reachability(&node.id == me, ms.raft_id, term_start, now));
            let reach_changed = match (&node.manager_status, want_reach) {
                (Some(ms), Some(r)) => ms.reachability != r && !(r == Reachability::Unknown),
                _ => false,
            };
            if want_state != node.status.state || reach_changed {
                updates.push(NodeStatusUpdate {
                    id: node.id.clone(),
                    state: Some(want_state),
                    message: Some(message.to_string()),
                    addr: None,
                    reachability: want_reach.filter(|r| *r != Reachability::Unknown),
                    description: None,
                });
            }
        }
        updates
    }

    /// A manager's reachability as raft sees it from this leader. Answers
    /// from before this term count for nothing (a leader that was a
    /// follower meanwhile sent nothing); until a peer first answers, it
    /// is Unknown (nothing written) for the first `FIRST_ANSWER` of the
    /// term.
    fn reachability(
        &self,
        is_me: bool,
        raft_id: u64,
        term_start: Option<Instant>,
        now: Instant,
    ) -> Reachability {
        if is_me {
            return Reachability::Reachable;
        }
        let last = self
            .answers
            .last(raft_id)
            .filter(|t| term_start.is_none_or(|s| *t >= s));
        match last {
            Some(t) if now.duration_since(t) < RAFT_SILENCE => Reachability::Reachable,
            None if term_start.is_some_and(|s| now.duration_since(s) < FIRST_ANSWER) => {
                Reachability::Unknown
            }
            _ => Reachability::Unreachable,
        }
    }
}

pub(super) async fn run(m: Arc<Manager>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let updates = {
            let state = m.state.read();
            m.dispatcher.plan(&state, &m.me.node_id, Instant::now())
        };
        if updates.is_empty() {
            continue;
        }
        for u in &updates {
            info!(node.id = %u.id, state = ?u.state, reachability = ?u.reachability, "node status changed");
        }
        let cmd = Command::SetNodeStatus {
            updates,
            now: crate::util::now_rfc3339(),
        };
        if let Err(e) = m.propose(cmd).await {
            debug!("could not record node status: {e}");
        }
    }
}

#[cfg(test)]
mod tests;
