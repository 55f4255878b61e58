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
