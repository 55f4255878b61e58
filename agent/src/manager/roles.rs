//! The role reconciler (leader only). Promotion needs the node's help (a
//! manager certificate, a running raft), so the node's session drives it;
//! this loop does the half only the leader can do: take demoted managers out
//! of raft, and drop raft voters that no node record accounts for (a manager
//! removed while unreachable, or one whose record was lost in a crash between
//! the membership change and its record).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::Manager;
use crate::store::{NodeId, RaftId, Role, State};

const TICK: Duration = Duration::from_millis(500);

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Removal {
    /// A node whose desired role is worker but which is still a voter.
    Demoted(NodeId, RaftId),
    /// A voter with no node record claiming it.
    Orphan(RaftId),
}

/// Pure decision over the state and the current voters. The leader itself
/// comes last, so that it hands over only when nothing else is pending.
pub(super) fn plan(state: &State, voters: &BTreeSet<RaftId>, me: RaftId) -> Vec<Removal> {
    let mut out: Vec<Removal> = state
        .managers()
        .filter(|n| n.spec.role == Role::Worker)
        .filter_map(|n| {
            n.manager_status
                .as_ref()
                .map(|ms| Removal::Demoted(n.id.clone(), ms.raft_id))
        })
        .collect();
    let claimed: BTreeSet<RaftId> = state
        .managers()
        .filter_map(|n| n.manager_status.as_ref().map(|m| m.raft_id))
        .collect();
    out.extend(
        voters
            .iter()
            .filter(|v| !claimed.contains(v) && **v != me)
            .map(|v| Removal::Orphan(*v)),
    );
    out.sort_by_key(|r| matches!(r, Removal::Demoted(_, id) if *id == me));
    out
}

pub(super) async fn run(m: Arc<Manager>, stop: CancellationToken) {
    let mut changes = m.state.watch();
    loop {
        if let Err(e) = m.reconcile_roles(&stop).await {
            warn!("role reconciliation: {e}");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = changes.changed() => {}
            _ = tokio::time::sleep(TICK) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::*;

    fn mgr(id: &str, raft: RaftId, want: Role) -> Node {
        Node {
            id: NodeId(id.into()),
            version: 1,
            created_at: String::new(),
            updated_at: String::new(),
            spec: NodeSpec {
                role: want,
                ..Default::default()
            },
            description: NodeDescription::default(),
            status: NodeStatus::default(),
            role: Role::Manager,
            manager_status: Some(ManagerStatus {
                raft_id: raft,
                addr: String::new(),
                reachability: Reachability::Reachable,
            }),
            cert_expiry: String::new(),
            key_fingerprint: String::new(),
        }
    }

    #[test]
    fn demoted_voters_go_and_the_leader_goes_last() {
        let mut s = State::default();
        for n in [
            mgr("a", 1, Role::Worker),
            mgr("b", 2, Role::Worker),
            mgr("c", 3, Role::Manager),
        ] {
            s.nodes.insert(n.id.clone(), n);
        }
        let voters = BTreeSet::from([1, 2, 3]);
        let p = plan(&s, &voters, 1);
        assert_eq!(
            p,
            vec![
                Removal::Demoted(NodeId("b".into()), 2),
                Removal::Demoted(NodeId("a".into()), 1)
            ]
        );
    }

    #[test]
    fn unclaimed_voters_are_orphans_but_never_the_leader() {
        let mut s = State::default();
        let n = mgr("a", 1, Role::Manager);
        s.nodes.insert(n.id.clone(), n);
        let voters = BTreeSet::from([1, 9, 10]);
        assert_eq!(plan(&s, &voters, 10), vec![Removal::Orphan(9)]);
        assert!(plan(&s, &BTreeSet::from([1]), 1).is_empty());
    }
}
