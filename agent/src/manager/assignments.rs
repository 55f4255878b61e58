//! What each node is told to run: its tasks, and the secrets and configs
//! those tasks reference (and no others). Answered by any manager from its
//! own state, as a long poll, so workers learn of new tasks within one
//! commit and an idle cluster costs nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::time::Duration;

use crate::rpc::{Assignments, RpcError};
use crate::store::{NodeId, NodeView, State, TaskState};

use super::Manager;

/// How long a poll waits for a change before answering anyway (keeps the
/// worker's view fresh after a missed wake-up, and bounds a stream's life).
const LONG_POLL: Duration = Duration::from_secs(20);

/// The IDs of the secrets and configs that the node's wanted tasks
/// reference (tasks given to it, desired running or less).
fn references<'a>(state: &'a State, node: &NodeId) -> (BTreeSet<&'a str>, BTreeSet<&'a str>) {
    let mut secret_ids = BTreeSet::new();
    let mut config_ids = BTreeSet::new();
    for t in state.tasks_of_node(node) {
        if t.status.state < TaskState::Assigned || t.desired_state > TaskState::Running {
            continue;
        }
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
    (secret_ids, config_ids)
}

/// The node's references, walked only when some wanted task has any.
fn references_of<'a>(
    state: &'a State,
    node: &NodeId,
    view: NodeView,
) -> (BTreeSet<&'a str>, BTreeSet<&'a str>) {
    if view.with_refs == 0 {
        return (BTreeSet::new(), BTreeSet::new());
    }
    references(state, node)
}

/// What the node's assignments hash to, without copying them, over what
/// the worker acts on: each task's ID, spec, desired state and whether it
/// ended, not its progress. The worker's own reports (preparing, starting,
/// running: several per task) then do not send every task of the node back
/// to it. The same on every manager, so a poll moves between them.
///
/// The tasks' part is kept summed as they change (`TaskIndex::views`): a
/// poll wakes on every change to its node's tasks, and walking them each
/// time was the largest item of a manager answering 1,000 nodes. Only a
/// node whose wanted tasks use secrets or configs is walked, for those.
pub fn fingerprint(state: &State, node: &NodeId) -> u64 {
    let view = view(state, node);
    let (secret_ids, config_ids) = references_of(state, node, view);
    let networks = super::netview::views(state, node);
    fingerprint_of(state, view.digests, &secret_ids, &config_ids, &networks)
}

/// The node's tasks in sum, as the state keeps them.
fn view(state: &State, node: &NodeId) -> NodeView {
    state
        .task_index
        .views
        .get(node)
        .copied()
        .unwrap_or_default()
}

fn fingerprint_of(
    state: &State,
    digests: u64,
    secret_ids: &BTreeSet<&str>,
    config_ids: &BTreeSet<&str>,
    networks: &[crate::network::view::NetworkView],
) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    digests.hash(&mut h);
    // Nothing hashed without networks: fingerprints stay as they were.
    if !networks.is_empty() {
        networks.hash(&mut h);
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

/// The node's assignments as they differ from the copies it holds
/// (`have`, by assignment digest): the tasks it lacks in whole, and the
/// digests of its copies that no longer stand. A node gains one task per
/// service created, so an answer with all of its tasks cost O(tasks²) per
/// node over a deployment, and one that named the unchanged tasks still
/// looked each up and sent its ID: the digests the state keeps in its node
/// index (`TaskIndex::by_node`) are compared with the node's instead, and
/// only the tasks it lacks are read (100 services on 1,000 nodes).
pub fn build(state: &State, node: &NodeId, have: &[u64]) -> Assignments {
    let mut have = have.to_vec();
    have.sort_unstable();
    have.dedup();
    let mut standing = vec![false; have.len()];
    let mut tasks = Vec::new();
    let mut service_names = BTreeMap::new();
    let given = state.task_index.by_node.get(node).into_iter().flatten();
    for (id, digest) in given.filter_map(|(id, d)| Some((id, (*d)?))) {
        match have.binary_search(&digest) {
            Ok(i) => standing[i] = true,
            Err(_) => {
                let Some(t) = state.tasks.get(id) else {
                    continue;
                };
                if let Some(s) = state.services.get(&t.service_id) {
                    service_names.insert(s.id.clone(), s.name().to_string());
                }
                tasks.push(t.clone());
            }
        }
    }
    let dropped = have
        .iter()
        .zip(standing)
        .filter(|(_, stands)| !stands)
        .map(|(d, _)| *d)
        .collect();
    let view = view(state, node);
    let (secret_ids, config_ids) = references_of(state, node, view);
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
    let networks = super::netview::views(state, node);
    Assignments {
        fingerprint: fingerprint_of(state, view.digests, &secret_ids, &config_ids, &networks),
        tasks,
        dropped,
        service_names,
        secrets,
        configs,
        networks,
        data_path_port: state
            .cluster
            .as_ref()
            .map(|c| c.addr_pool.effective_data_path_port())
            .unwrap_or(crate::store::networks::DEFAULT_DATA_PATH_PORT),
    }
}

/// Answer when the node's assignments differ from `known`, or after
/// `LONG_POLL`.
pub async fn wait_for(
    m: &Manager,
    node: &NodeId,
    known: u64,
    have: &[u64],
) -> Result<Assignments, RpcError> {
    let waiter = m.state.node_waiter(node);
    let deadline = tokio::time::Instant::now() + LONG_POLL;
    // Recompute the fingerprint only when a task of this node (or something
    // every node refers to) changed: most commits concern other nodes.
    let mut seen = None;
    loop {
        let notified = waiter.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let timed_out = tokio::time::Instant::now() >= deadline;
        {
            let state = m.state.read();
            if !state.nodes.contains_key(node) {
                return Err(RpcError::UnknownNode(node.0.clone()));
            }
            let epoch = state.task_index.hints.node_epoch(node);
            if timed_out || (seen != Some(epoch) && fingerprint(&state, node) != known) {
                return Ok(build(&state, node, have));
            }
            seen = Some(epoch);
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {}
            _ = &mut notified => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::orchestrator::tests::{converge, node, run_all, service, state_with};
    use crate::store::{Availability, NodeState, Secret, SecretId, SecretSpec};
    use bollard_stubs::models as m;

    fn secret(id: &str) -> Secret {
        Secret {
            id: SecretId(id.into()),
            version: 1,
            created_at: String::new(),
            updated_at: String::new(),
            spec: SecretSpec {
                name: id.into(),
                labels: Default::default(),
                data: format!("payload of {id}").into_bytes(),
            },
        }
    }

    /// Place every task and report it running, as the leader and workers
    /// would.
    fn converge_and_run(st: &mut State) {
        let now = time::OffsetDateTime::parse(
            "2026-01-01T00:01:00Z",
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        converge(st, now, 10);
        run_all(st);
    }

    /// Issue 3's rule: a node receives the secrets of its own tasks, never
    /// another node's.
    #[test]
    fn a_node_receives_only_the_secrets_of_its_tasks() {
        let mut a = node("a", NodeState::Ready, Availability::Active);
        a.spec.labels.insert("k".into(), "a".into());
        let mut b = node("b", NodeState::Ready, Availability::Active);
        b.spec.labels.insert("k".into(), "b".into());
        let mut on_a = service("sa", Some(1));
        let mut on_b = service("sb", Some(1));
        for (svc, label, sec) in [(&mut on_a, "a", "s1"), (&mut on_b, "b", "s2")] {
            let t = svc.spec.task_template.as_mut().unwrap();
            t.placement = Some(m::TaskSpecPlacement {
                constraints: Some(vec![format!("node.labels.k=={label}")]),
                ..Default::default()
            });
            t.container_spec.as_mut().unwrap().secrets =
                Some(vec![m::TaskSpecContainerSpecSecrets {
                    secret_id: Some(sec.into()),
                    secret_name: Some(sec.into()),
                    ..Default::default()
                }]);
        }
        let mut st = state_with(&[a, b], &[on_a, on_b]);
        for s in [secret("s1"), secret("s2"), secret("s3")] {
            st.secrets.insert(s.id.clone(), s);
        }
        converge_and_run(&mut st);
        let for_a = build(&st, &NodeId("a".into()), &[]);
        let ids: Vec<&str> = for_a.secrets.iter().map(|s| s.id.0.as_str()).collect();
        assert_eq!(ids, vec!["s1"]);
        assert_eq!(for_a.tasks.len(), 1);
        let for_b = build(&st, &NodeId("b".into()), &[]);
        let ids: Vec<&str> = for_b.secrets.iter().map(|s| s.id.0.as_str()).collect();
        assert_eq!(ids, vec!["s2"]);
        // The long poll's fingerprint is the answer's; a referenced
        // secret's change moves it, another node's secret does not.
        let a = NodeId("a".into());
        assert_eq!(fingerprint(&st, &a), for_a.fingerprint);
        let mut touched = st.clone();
        if let Some(s) = touched.secrets.get_mut(&SecretId("s2".into())) {
            s.version += 1;
        }
        assert_eq!(fingerprint(&touched, &a), for_a.fingerprint);
        if let Some(s) = touched.secrets.get_mut(&SecretId("s1".into())) {
            s.version += 1;
        }
        assert_ne!(fingerprint(&touched, &a), for_a.fingerprint);
        // A change to the node's tasks changes the fingerprint (wakes its poll).
        let before = for_a.fingerprint;
        st.apply(
            90_000,
            &crate::store::Command::RemoveService {
                id: crate::store::ServiceId("sa".into()),
                now: String::new(),
            },
        );
        assert_ne!(build(&st, &NodeId("a".into()), &[]).fingerprint, before);
        assert!(
            build(&st, &NodeId("a".into()), &[]).secrets.is_empty(),
            "no secret once the task is not wanted"
        );
    }

    /// Incremental answers: what the node holds unchanged is not sent
    /// again, a task whose desired state changed comes whole and its old
    /// copy is named as dropped, as is a deleted task's; the fingerprint is
    /// the same either way.
    #[test]
    fn a_node_gets_only_the_tasks_that_changed_since_its_copy() {
        let a = node("a", NodeState::Ready, Availability::Active);
        let mut st = state_with(&[a], &[service("sa", Some(1)), service("sb", Some(1))]);
        converge_and_run(&mut st);
        let node_a = NodeId("a".into());
        let full = build(&st, &node_a, &[]);
        assert_eq!((full.tasks.len(), full.dropped.len()), (2, 0));
        assert_eq!(full.service_names.len(), 2);
        let have: Vec<u64> = full.tasks.iter().map(|t| t.assignment_digest()).collect();
        let same = build(&st, &node_a, &have);
        assert_eq!((same.tasks.len(), same.dropped.len()), (0, 0));
        assert!(same.service_names.is_empty(), "names come with their tasks");
        assert_eq!(same.fingerprint, full.fingerprint);
        // A copy the node holds that no task matches (here: made up) goes.
        let stale = build(&st, &node_a, &[have[0], have[1], 7]);
        assert_eq!((stale.tasks.len(), stale.dropped), (0, vec![7]));

        st.apply(
            90_000,
            &crate::store::Command::RemoveService {
                id: crate::store::ServiceId("sa".into()),
                now: String::new(),
            },
        );
        let after = build(&st, &node_a, &have);
        assert_eq!(after.tasks.len(), 1);
        assert_eq!(after.tasks[0].service_id.0, "sa");
        let old_sa = full
            .tasks
            .iter()
            .find(|t| t.service_id.0 == "sa")
            .map(|t| t.assignment_digest());
        assert_eq!(after.dropped, old_sa.into_iter().collect::<Vec<_>>());
        assert_ne!(after.fingerprint, full.fingerprint);

        // Deleted: dropped, and nothing sent in its place.
        let ids: Vec<_> = st
            .tasks_of_node(&node_a)
            .filter(|t| t.service_id.0 == "sa")
            .map(|t| t.id.clone())
            .collect();
        st.apply(90_001, &crate::store::Command::DeleteTasks { ids });
        let have_now: Vec<u64> = st
            .tasks_of_node(&node_a)
            .map(|t| t.assignment_digest())
            .chain(after.tasks.iter().map(|t| t.assignment_digest()))
            .collect();
        let gone = build(&st, &node_a, &have_now);
        assert_eq!(gone.tasks.len(), 0);
        assert_eq!(gone.dropped.len(), 1);
        assert_eq!(gone.fingerprint, fingerprint(&st, &node_a));
    }
}
