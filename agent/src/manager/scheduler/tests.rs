use super::*;
use crate::manager::orchestrator::tests::{converge, node, service, state_with};
use crate::store::{Availability, NodeState};
use bollard_stubs::models as m;

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::parse(
        "2026-01-01T00:01:00Z",
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap()
}

#[test]
fn constraints_parse_and_match() {
    let mut n = node("a", NodeState::Ready, Availability::Active);
    n.spec.labels.insert("zone".into(), "EU".into());
    assert!(Constraint::parse("node.labels.zone==eu")
        .unwrap()
        .matches(&n));
    assert!(!Constraint::parse("node.labels.zone!=eu")
        .unwrap()
        .matches(&n));
    assert!(Constraint::parse("node.labels.rack!=1")
        .unwrap()
        .matches(&n));
    assert!(Constraint::parse("node.role==worker").unwrap().matches(&n));
    assert!(Constraint::parse("node.hostname==a").unwrap().matches(&n));
    for bad in [
        "node.labels.zone",
        "node.colour==red",
        "node.role==",
        "node.labels.==x",
    ] {
        assert!(Constraint::parse(bad).is_err(), "{bad} should be refused");
    }
}

#[test]
fn unplaceable_task_stays_pending_with_a_specific_reason() {
    let nodes = [
        node("a", NodeState::Ready, Availability::Active),
        node("b", NodeState::Ready, Availability::Active),
        node("c", NodeState::Down, Availability::Active),
    ];
    let mut svc = service("web", Some(1));
    svc.spec.task_template.as_mut().unwrap().placement = Some(m::TaskSpecPlacement {
        constraints: Some(vec!["node.labels.zone==eu".into()]),
        ..Default::default()
    });
    let mut st = state_with(&nodes, &[svc]);
    converge(&mut st, now(), 10);
    let t = st.tasks.values().next().expect("a task");
    assert_eq!(t.status.state, crate::store::TaskState::Pending);
    let err = t.status.err.clone().unwrap_or_default();
    assert!(
        err.contains("constraint node.labels.zone==eu not satisfied on 2 nodes"),
        "{err}"
    );
    assert!(err.contains("node is down on 1 node"), "{err}");
}

#[test]
fn resources_and_max_per_node_limit_placement() {
    let nodes = [node("a", NodeState::Ready, Availability::Active)];
    let mut svc = service("big", Some(3));
    let tpl = svc.spec.task_template.as_mut().unwrap();
    tpl.resources = Some(m::TaskSpecResources {
        reservations: Some(m::ResourceObject {
            memory_bytes: Some(2 << 30),
            ..Default::default()
        }),
        limits: None,
    });
    let mut st = state_with(&nodes, &[svc]);
    converge(&mut st, now(), 10);
    let placed = st.tasks.values().filter(|t| t.node_id.is_some()).count();
    assert_eq!(placed, 2, "4 GiB node fits two 2 GiB reservations");
    let pending = st.tasks.values().find(|t| t.node_id.is_none()).unwrap();
    assert!(
        pending
            .status
            .err
            .as_deref()
            .unwrap_or("")
            .contains("insufficient memory"),
        "{:?}",
        pending.status.err
    );

    let mut svc = service("one", Some(3));
    svc.spec.task_template.as_mut().unwrap().placement = Some(m::TaskSpecPlacement {
        max_replicas: Some(1),
        ..Default::default()
    });
    let mut st = state_with(&nodes, &[svc]);
    converge(&mut st, now(), 10);
    assert_eq!(st.tasks.values().filter(|t| t.node_id.is_some()).count(), 1);
}

#[test]
fn spread_preference_balances_label_groups() {
    let mut nodes = Vec::new();
    for (id, zone) in [("a", "x"), ("b", "x"), ("c", "x"), ("d", "y")] {
        let mut n = node(id, NodeState::Ready, Availability::Active);
        n.spec.labels.insert("zone".into(), zone.into());
        nodes.push(n);
    }
    let mut svc = service("web", Some(4));
    svc.spec.task_template.as_mut().unwrap().placement = Some(m::TaskSpecPlacement {
        preferences: Some(vec![m::TaskSpecPlacementPreferences {
            spread: Some(m::TaskSpecPlacementSpread {
                spread_descriptor: Some("node.labels.zone".into()),
            }),
        }]),
        ..Default::default()
    });
    let mut st = state_with(&nodes, &[svc]);
    converge(&mut st, now(), 10);
    let on_d = st
        .tasks
        .values()
        .filter(|t| t.node_id.as_ref().map(|n| n.0.as_str()) == Some("d"))
        .count();
    assert_eq!(on_d, 2, "zone y (one node) gets half the tasks");
}

/// The ordered candidates choose exactly the nodes that ranking every node
/// for every task chooses, with loads already on the nodes, managers, down
/// and paused nodes, reservations and replicas-per-node limits in play.
#[test]
fn ordered_candidates_choose_as_ranking_every_node_does() {
    use crate::store::{Role, TaskState, TaskStatus};
    let mut nodes = Vec::new();
    for i in 0..12 {
        let state = if i == 3 {
            NodeState::Down
        } else {
            NodeState::Ready
        };
        let avail = if i == 5 {
            Availability::Pause
        } else {
            Availability::Active
        };
        let mut n = node(&format!("n{i:02}"), state, avail);
        if i % 4 == 0 {
            n.spec.role = Role::Manager;
        }
        n.description.nano_cpus = 4_000_000_000;
        n.description.memory_bytes = 1 << 30;
        nodes.push(n);
    }
    let mut services = Vec::new();
    for (name, replicas) in [("a", 17), ("b", 9), ("c", 30), ("d", 5)] {
        let mut svc = service(name, Some(replicas));
        let tt = svc.spec.task_template.as_mut().unwrap();
        match name {
            "b" => {
                tt.resources = Some(m::TaskSpecResources {
                    reservations: Some(m::ResourceObject {
                        nano_cpus: Some(1_500_000_000),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
            }
            "c" => {
                tt.placement = Some(m::TaskSpecPlacement {
                    max_replicas: Some(2),
                    ..Default::default()
                })
            }
            "d" => {
                tt.placement = Some(m::TaskSpecPlacement {
                    constraints: Some(vec!["node.role==worker".into()]),
                    ..Default::default()
                })
            }
            _ => {}
        }
        services.push(svc);
    }
    let mut st = state_with(&nodes, &services);
    // Create the tasks, place a first round and run some of them, so that
    // nodes start unevenly loaded, then add more replicas.
    let plan = crate::manager::orchestrator::reconcile(&st, now(), &mut {
        let mut i = 0;
        move || {
            i += 1;
            format!("t{i:04}")
        }
    });
    for (i, c) in plan.commands.iter().enumerate() {
        st.apply(100 + i as u64, c);
    }
    let first = schedule(&st);
    assert_eq!(first, schedule_with(&st, &[], false));
    let some: Vec<_> = first.assignments.iter().step_by(3).cloned().collect();
    st.apply(
        200,
        &crate::store::Command::AssignTasks {
            assignments: some.clone(),
            now: "2026-01-01T00:01:00Z".into(),
        },
    );
    st.apply(
        201,
        &crate::store::Command::SetTaskStatus {
            updates: some
                .iter()
                .map(|(id, _)| crate::store::TaskStatusUpdate {
                    id: id.clone(),
                    status: TaskStatus::new(TaskState::Running, "started", "2026-01-01T00:01:00Z"),
                })
                .collect(),
            reporter: None,
        },
    );
    let again = schedule(&st);
    assert!(!again.assignments.is_empty());
    assert!(
        !again.unplaced.is_empty(),
        "some of c or b cannot be placed"
    );
    assert_eq!(again, schedule_with(&st, &[], false));
}
