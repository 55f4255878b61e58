use super::*;
use crate::store::{
    ClusterSpec, Node, NodeDescription, NodeSpec, NodeStatus, Role, Service, ServiceId, ServiceSpec,
};
use bollard_stubs::models as m;

pub(crate) fn node(id: &str, state: NodeState, availability: Availability) -> Node {
    Node {
        id: NodeId(id.into()),
        version: 1,
        created_at: String::new(),
        updated_at: String::new(),
        spec: NodeSpec {
            name: String::new(),
            labels: Default::default(),
            role: Role::Worker,
            availability,
        },
        description: NodeDescription {
            hostname: id.into(),
            nano_cpus: 4_000_000_000,
            memory_bytes: 4 << 30,
            ..Default::default()
        },
        status: NodeStatus {
            state,
            ..Default::default()
        },
        role: Role::Worker,
        manager_status: None,
        cert_expiry: String::new(),
        key_fingerprint: String::new(),
    }
}

pub(crate) fn service(id: &str, replicas: Option<i64>) -> Service {
    Service {
        id: ServiceId(id.into()),
        version: 1,
        created_at: String::new(),
        updated_at: String::new(),
        spec: ServiceSpec {
            name: Some(id.into()),
            task_template: Some(m::TaskSpec {
                container_spec: Some(m::TaskSpecContainerSpec {
                    image: Some("busybox".into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            mode: Some(match replicas {
                Some(r) => m::ServiceSpecMode {
                    replicated: Some(m::ServiceSpecModeReplicated { replicas: Some(r) }),
                    ..Default::default()
                },
                None => m::ServiceSpecMode {
                    global: Some(Default::default()),
                    ..Default::default()
                },
            }),
            ..Default::default()
        },
        previous_spec: None,
        previous_spec_version: 0,
        update_status: None,
        spec_version: 1,
        registry_auth: None,
        endpoint: Default::default(),
    }
}

pub(crate) fn state_with(nodes: &[Node], services: &[Service]) -> State {
    let mut s = State::default();
    s.cluster = Some(crate::store::Cluster {
        id: "c".into(),
        version: 1,
        created_at: String::new(),
        updated_at: String::new(),
        spec: ClusterSpec::default(),
        root_ca: crate::store::RootCa {
            cert_pem: String::new(),
            key_pem: String::new(),
        },
        join_secrets: crate::store::JoinSecrets {
            worker: String::new(),
            manager: String::new(),
        },
        unlock_key: None,
        rotation: None,
        addr_pool: Default::default(),
    });
    for n in nodes {
        s.nodes.insert(n.id.clone(), n.clone());
    }
    for sv in services {
        s.services.insert(sv.id.clone(), sv.clone());
    }
    s
}

/// Apply a plan like raft would, then run the scheduler, `rounds` times:
/// the loop the leader runs.
pub(crate) fn converge(state: &mut State, now: OffsetDateTime, rounds: usize) {
    // IDs unique across calls, as random IDs would be.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut index = 100;
    for _ in 0..rounds {
        // The leader's pass looks only at the services the hints marked;
        // every round checks that it decides what a pass over everything
        // decides (same IDs for both).
        let base = NEXT.fetch_add(1_000_000, std::sync::atomic::Ordering::Relaxed);
        let ids_from = |base: u64| {
            let mut n = base;
            move || {
                n += 1;
                format!("t{n:012}")
            }
        };
        let dirty = state.task_index.hints.take_dirty();
        let scope = (!dirty.everything).then_some(&dirty.services);
        let scoped = reconcile_scoped(state, now, &mut ids_from(base), scope);
        let plan = reconcile(state, now, &mut ids_from(base));
        assert_eq!(
            normalized(scoped.commands),
            normalized(plan.commands.clone()),
            "a pass over the marked services ({scope:?}) decides what a full pass decides"
        );
        // As the leader's pass does: tasks created in this pass are placed
        // in their CreateTasks command, the others by AssignTasks.
        let cmds = with_placements(state, plan.commands, "2026-01-01T00:00:00Z");
        if cmds.is_empty() {
            return;
        }
        for c in cmds {
            index += 1;
            state.apply(index, &c);
        }
        assert_counts_kept(state);
    }
}

/// The per-service counts the state keeps as tasks change are what a
/// count over every task gives.
pub(crate) fn assert_counts_kept(state: &State) {
    let mut recount: std::collections::BTreeMap<ServiceId, crate::store::TaskCounts> =
        Default::default();
    for t in state.tasks.values() {
        let c = crate::store::TaskCounts::of(t);
        let e = recount.entry(t.service_id.clone()).or_default();
        e.live += c.live;
        e.running += c.running;
        e.completed += c.completed;
    }
    recount.retain(|_, c| *c != Default::default());
    assert_eq!(state.task_index.counts, recount);
    // And each node's view (`manager::assignments`' fingerprints).
    let mut views: std::collections::BTreeMap<crate::store::NodeId, crate::store::NodeView> =
        Default::default();
    for t in state.tasks.values() {
        let Some(n) = &t.node_id else { continue };
        let v = crate::store::NodeView::of(t);
        let e = views.entry(n.clone()).or_default();
        e.digests = e.digests.wrapping_add(v.digests);
        e.with_refs += v.with_refs;
        e.tasks += v.tasks;
    }
    assert_eq!(state.task_index.views, views);
    // And the node index with the digests its long-poll answers compare.
    let mut by_node: std::collections::BTreeMap<
        crate::store::NodeId,
        std::collections::BTreeMap<crate::store::TaskId, Option<u64>>,
    > = Default::default();
    for t in state.tasks.values() {
        let Some(n) = &t.node_id else { continue };
        by_node
            .entry(n.clone())
            .or_default()
            .insert(t.id.clone(), t.given_digest());
    }
    assert_eq!(state.task_index.by_node, by_node);
    // And the places of wanted tasks (`create_tasks`' slot check).
    let mut places: std::collections::BTreeMap<
        ServiceId,
        std::collections::BTreeMap<crate::store::Place, u32>,
    > = Default::default();
    for t in state.tasks.values() {
        if t.desired_state <= TaskState::Running {
            *places
                .entry(t.service_id.clone())
                .or_default()
                .entry(crate::store::place_of(t.slot, &t.node_id))
                .or_default() += 1;
        }
    }
    assert_eq!(state.task_index.places, places);
}

/// Plans compared regardless of the order the reaper found its tasks in.
fn normalized(mut cmds: Vec<Command>) -> Vec<Command> {
    for c in &mut cmds {
        if let Command::DeleteTasks { ids } = c {
            ids.sort();
        }
    }
    cmds
}

/// Every assigned task reports running (what workers would do).
pub(crate) fn run_all(state: &mut State) {
    let updates: Vec<TaskStatusUpdate> = state
        .tasks
        .values()
        .filter(|t| t.status.state == TaskState::Assigned)
        .map(|t| TaskStatusUpdate {
            id: t.id.clone(),
            status: TaskStatus::new(TaskState::Running, "started", "2026-01-01T00:00:00Z"),
        })
        .collect();
    state.apply(
        10_000,
        &Command::SetTaskStatus {
            updates,
            reporter: None,
        },
    );
    assert_counts_kept(state);
}

fn live(state: &State) -> Vec<&Task> {
    state.tasks.values().filter(|t| t.is_live()).collect()
}

fn now() -> OffsetDateTime {
    OffsetDateTime::parse("2026-01-01T00:01:00Z", &Rfc3339).unwrap()
}

#[test]
fn replicated_service_gets_one_task_per_slot_spread_over_nodes() {
    let nodes = [
        node("a", NodeState::Ready, Availability::Active),
        node("b", NodeState::Ready, Availability::Active),
        node("c", NodeState::Ready, Availability::Active),
    ];
    let mut st = state_with(&nodes, &[service("web", Some(6))]);
    converge(&mut st, now(), 10);
    let tasks = live(&st);
    assert_eq!(tasks.len(), 6);
    let mut slots: Vec<u64> = tasks.iter().map(|t| t.slot).collect();
    slots.sort();
    assert_eq!(slots, vec![1, 2, 3, 4, 5, 6]);
    for n in ["a", "b", "c"] {
        let on = tasks
            .iter()
            .filter(|t| t.node_id.as_ref().map(|x| x.0.as_str()) == Some(n))
            .count();
        assert_eq!(on, 2, "node {n} should hold 2 of 6 tasks");
    }
    // A second pass changes nothing (level-triggered, idempotent).
    let plan = reconcile(&st, now(), &mut || "x".into());
    assert!(plan.commands.is_empty(), "{:?}", plan.commands);
}

#[test]
fn scale_down_removes_the_highest_slots() {
    let nodes = [node("a", NodeState::Ready, Availability::Active)];
    let mut st = state_with(&nodes, &[service("web", Some(4))]);
    converge(&mut st, now(), 10);
    let mut svc = st.services[&ServiceId("web".into())].clone();
    svc.spec.mode = Some(m::ServiceSpecMode {
        replicated: Some(m::ServiceSpecModeReplicated { replicas: Some(2) }),
        ..Default::default()
    });
    st.services.insert(svc.id.clone(), svc);
    // Written past `apply`: the hints cannot know.
    st.task_index.hints.everything();
    converge(&mut st, now(), 10);
    let mut slots: Vec<u64> = live(&st).iter().map(|t| t.slot).collect();
    slots.sort();
    assert_eq!(slots, vec![1, 2]);
}

#[test]
fn tasks_on_a_down_node_are_replaced_elsewhere_without_duplicates() {
    let nodes = [
        node("a", NodeState::Ready, Availability::Active),
        node("b", NodeState::Ready, Availability::Active),
    ];
    let mut st = state_with(&nodes, &[service("web", Some(4))]);
    converge(&mut st, now(), 10);
    run_all(&mut st);
    st.nodes.get_mut(&NodeId("a".into())).unwrap().status.state = NodeState::Down;
    // Written past `apply`: the hints cannot know.
    st.task_index.hints.everything();
    converge(&mut st, now(), 10);
    let wanted: Vec<&Task> = st
        .tasks
        .values()
        .filter(|t| t.desired_state == TaskState::Running)
        .collect();
    assert_eq!(wanted.len(), 4, "still exactly one wanted task per slot");
    assert!(wanted.iter().all(|t| t.node_id.as_ref().unwrap().0 == "b"));
    // Old tasks on a are asked to shut down (they do when a returns).
    let old_on_a = st
        .tasks
        .values()
        .filter(|t| t.node_id.as_ref().unwrap().0 == "a")
        .count();
    assert_eq!(old_on_a, 2);
    assert!(st
        .tasks
        .values()
        .filter(|t| t.node_id.as_ref().unwrap().0 == "a")
        .all(|t| t.desired_state == TaskState::Shutdown));
}

#[test]
fn drain_moves_tasks_and_pause_takes_no_new_ones() {
    let nodes = [
        node("a", NodeState::Ready, Availability::Drain),
        node("b", NodeState::Ready, Availability::Pause),
        node("c", NodeState::Ready, Availability::Active),
    ];
    let mut st = state_with(&nodes, &[service("web", Some(3))]);
    converge(&mut st, now(), 10);
    assert!(live(&st)
        .iter()
        .all(|t| t.node_id.as_ref().unwrap().0 == "c"));
}

#[test]
fn global_service_runs_once_per_eligible_node_and_follows_joins() {
    let nodes = [
        node("a", NodeState::Ready, Availability::Active),
        node("b", NodeState::Ready, Availability::Drain),
    ];
    let mut st = state_with(&nodes, &[service("agent", None)]);
    converge(&mut st, now(), 10);
    let on: Vec<String> = live(&st)
        .iter()
        .map(|t| t.node_id.as_ref().unwrap().0.clone())
        .collect();
    assert_eq!(on, vec!["a".to_string()]);
    let c = node("c", NodeState::Ready, Availability::Active);
    st.nodes.insert(c.id.clone(), c);
    // Written past `apply`: the hints cannot know.
    st.task_index.hints.everything();
    converge(&mut st, now(), 10);
    let mut on: Vec<String> = live(&st)
        .iter()
        .map(|t| t.node_id.as_ref().unwrap().0.clone())
        .collect();
    on.sort();
    assert_eq!(on, vec!["a".to_string(), "c".to_string()]);
}

#[test]
fn failed_task_is_restarted_after_the_delay_up_to_max_attempts() {
    let nodes = [node("a", NodeState::Ready, Availability::Active)];
    let mut svc = service("job", Some(1));
    svc.spec.task_template.as_mut().unwrap().restart_policy = Some(m::TaskSpecRestartPolicy {
        condition: Some(m::TaskSpecRestartPolicyConditionEnum::ON_FAILURE),
        delay: Some(2_000_000_000),
        max_attempts: Some(2),
        window: None,
    });
    let mut st = state_with(&nodes, &[svc]);
    converge(&mut st, now(), 10);
    let mut t = now();
    for round in 0..4 {
        let id = live(&st)
            .first()
            .map(|t| t.id.clone())
            .expect("a live task");
        let mut failed = TaskStatus::new(TaskState::Failed, "failed", &t.format(&Rfc3339).unwrap());
        failed.exit_code = Some(1);
        st.apply(
            20_000 + round,
            &Command::SetTaskStatus {
                updates: vec![TaskStatusUpdate { id, status: failed }],
                reporter: None,
            },
        );
        // Before the delay: nothing new.
        let plan = reconcile(&st, t + time::Duration::seconds(1), &mut || "early".into());
        assert!(
            !plan
                .commands
                .iter()
                .any(|c| matches!(c, Command::CreateTasks { .. })),
            "restarted before the delay"
        );
        // It wants to be woken for the restart, unless it gave up.
        assert_eq!(plan.wake_in.is_some(), round < 2, "round {round}");
        t += time::Duration::seconds(3);
        converge(&mut st, t, 10);
        if live(&st).is_empty() {
            // Attempts 1 and 2 were restarts; the third failure is final.
            assert_eq!(round, 2, "gave up after max attempts");
            return;
        }
    }
    panic!("never gave up restarting");
}

#[test]
fn removed_service_tasks_are_deleted_once_down_and_history_is_bounded() {
    let nodes = [node("a", NodeState::Ready, Availability::Active)];
    let mut st = state_with(&nodes, &[service("web", Some(1))]);
    converge(&mut st, now(), 10);
    // Ten failures in a row: history stays at the limit (5).
    let mut t = now();
    for i in 0..10 {
        run_all(&mut st);
        let id = live(&st)[0].id.clone();
        st.apply(
            30_000 + i,
            &Command::SetTaskStatus {
                updates: vec![TaskStatusUpdate {
                    id,
                    status: TaskStatus::new(
                        TaskState::Failed,
                        "failed",
                        &t.format(&Rfc3339).unwrap(),
                    ),
                }],
                reporter: None,
            },
        );
        t += time::Duration::seconds(10);
        converge(&mut st, t, 10);
    }
    assert!(st.tasks.len() <= 5, "history kept {} tasks", st.tasks.len());
    st.apply(
        40_000,
        &Command::RemoveService {
            id: ServiceId("web".into()),
            now: String::new(),
        },
    );
    // The live one shuts down on its node, then everything goes.
    let ids: Vec<TaskId> = st.tasks.keys().cloned().collect();
    st.apply(
        40_001,
        &Command::SetTaskStatus {
            updates: ids
                .into_iter()
                .map(|id| TaskStatusUpdate {
                    id,
                    status: TaskStatus::new(
                        TaskState::Shutdown,
                        "shutdown",
                        "2026-01-01T01:00:00Z",
                    ),
                })
                .collect(),
            reporter: None,
        },
    );
    converge(&mut st, t, 10);
    assert!(st.tasks.is_empty());
    assert!(st.task_index.by_node.is_empty() && st.task_index.by_service.is_empty());
}

#[test]
fn rolling_update_replaces_one_task_at_a_time() {
    let nodes = [node("a", NodeState::Ready, Availability::Active)];
    let mut st = state_with(&nodes, &[service("web", Some(3))]);
    converge(&mut st, now(), 10);
    run_all(&mut st);
    let sid = ServiceId("web".into());
    let mut spec = st.services[&sid].spec.clone();
    spec.task_template
        .as_mut()
        .unwrap()
        .container_spec
        .as_mut()
        .unwrap()
        .image = Some("busybox:2".into());
    let version = st.services[&sid].version;
    st.apply(
        50_000,
        &Command::UpdateService {
            id: sid.clone(),
            version,
            spec,
            registry_auth: None,
            now: String::new(),
        },
    );
    converge(&mut st, now(), 10);
    let new: Vec<&Task> = live(&st)
        .into_iter()
        .filter(|t| t.spec_version == 50_000)
        .collect();
    assert_eq!(new.len(), 1, "parallelism 1: one task replaced first");
    for _ in 0..3 {
        run_all(&mut st);
        // A new task coming up is what lets the update go on: a pass right
        // after it must see the service (checked inside `converge`).
        converge(&mut st, now(), 10);
        // The replaced tasks' containers stop.
        let stopping: Vec<TaskStatusUpdate> = st
            .tasks
            .values()
            .filter(|t| t.desired_state == TaskState::Shutdown && !t.status.state.is_terminal())
            .map(|t| TaskStatusUpdate {
                id: t.id.clone(),
                status: TaskStatus::new(TaskState::Shutdown, "shutdown", "2026-01-01T00:00:00Z"),
            })
            .collect();
        st.apply(
            50_100,
            &Command::SetTaskStatus {
                updates: stopping,
                reporter: None,
            },
        );
        converge(&mut st, now(), 10);
    }
    run_all(&mut st);
    let all = live(&st);
    assert_eq!(all.len(), 3);
    assert!(all.iter().all(|t| t.spec_version == 50_000));
}

#[test]
fn a_service_update_with_a_stale_version_is_refused_and_changes_nothing() {
    let mut st = state_with(&[], &[service("web", Some(1))]);
    let sid = ServiceId("web".into());
    let before = st.services[&sid].clone();
    let mut spec = before.spec.clone();
    spec.labels = Some([("x".to_string(), "y".to_string())].into());
    let whole = st.clone();
    let resp = st.apply(
        60_000,
        &Command::UpdateService {
            id: sid.clone(),
            version: before.version + 7,
            spec,
            registry_auth: None,
            now: String::new(),
        },
    );
    let err = resp.error.expect("refused");
    assert_eq!(err.kind, crate::store::StoreErrorKind::Conflict);
    assert!(err.message.contains("out of sequence"), "{}", err.message);
    assert_eq!(st.services[&sid], before);
    assert_eq!(st, whole);
}

/// Spread puts each service's replicas on every node; the pass's commands
/// are still grouped by node, so that each node's long poll is answered
/// once with all of its new tasks rather than once per service.
#[test]
fn a_pass_gives_each_node_its_new_tasks_in_one_command() {
    let nodes: Vec<Node> = (0..100)
        .map(|i| node(&format!("n{i:03}"), NodeState::Ready, Availability::Active))
        .collect();
    let services: Vec<Service> = (0..3)
        .map(|i| service(&format!("s{i}"), Some(400)))
        .collect();
    let st = state_with(&nodes, &services);
    let mut n = 0;
    let plan = reconcile(&st, now(), &mut || {
        n += 1;
        format!("t{n:06}")
    });
    let cmds = with_placements(&st, plan.commands, "2026-01-01T00:00:00Z");
    let mut commands_of: HashMap<NodeId, std::collections::HashSet<usize>> = HashMap::new();
    let mut per_service: HashMap<ServiceId, usize> = HashMap::new();
    for (i, c) in cmds.iter().enumerate() {
        if let Command::CreateTasks { tasks } = c {
            assert!(tasks.len() <= TASKS_PER_COMMAND, "{}", tasks.len());
            for t in tasks {
                let node = t.node_id.clone().expect("created placed");
                commands_of.entry(node).or_default().insert(i);
                *per_service.entry(t.service_id.clone()).or_default() += 1;
            }
        }
    }
    assert_eq!(per_service.len(), 3, "{per_service:?}");
    assert!(per_service.values().all(|&n| n == 400), "{per_service:?}");
    assert_eq!(commands_of.len(), 100, "spread over every node");
    // A command boundary may fall inside one node's tasks.
    let split = commands_of.values().filter(|c| c.len() > 1).count();
    assert!(
        split <= 1,
        "{split} nodes get their new tasks in several commands"
    );
}

mod jobs;
mod updates;
