use super::*;

fn node(id: &str, role: Role) -> Node {
    Node {
        id: NodeId(id.into()),
        version: 0,
        created_at: "t0".into(),
        updated_at: "t0".into(),
        spec: NodeSpec {
            name: String::new(),
            labels: Default::default(),
            role,
            availability: Availability::Active,
        },
        description: NodeDescription {
            hostname: id.into(),
            ..Default::default()
        },
        status: NodeStatus {
            state: NodeState::Ready,
            message: String::new(),
            addr: "127.0.0.1".into(),
        },
        role,
        manager_status: (role == Role::Manager).then(|| ManagerStatus {
            raft_id: 7,
            addr: "127.0.0.1:2377".into(),
            reachability: Reachability::Reachable,
        }),
        cert_expiry: String::new(),
    }
}

fn cluster() -> Cluster {
    Cluster {
        id: "c1".into(),
        version: 0,
        created_at: "t0".into(),
        updated_at: "t0".into(),
        spec: ClusterSpec::default(),
        root_ca: RootCa {
            cert_pem: "ca".into(),
            key_pem: "key".into(),
        },
        join_secrets: JoinSecrets {
            worker: "w".into(),
            manager: "m".into(),
        },
        unlock_key: None,
    }
}

fn initialised() -> State {
    let mut s = State::default();
    let (r, _) = s.apply(
        1,
        &Command::InitCluster {
            cluster: cluster(),
            node: node("m1", Role::Manager),
        },
    );
    assert_eq!(r.error, None);
    s
}

#[test]
fn versions_are_log_indexes() {
    let mut s = initialised();
    assert_eq!(s.cluster.as_ref().map(|c| c.version), Some(1));
    let (r, changes) = s.apply(
        5,
        &Command::AddNode {
            node: node("w1", Role::Worker),
        },
    );
    assert_eq!(r.version, Some(5));
    assert_eq!(changes.len(), 1);
    assert_eq!(s.nodes[&NodeId("w1".into())].version, 5);
}

#[test]
fn stale_node_update_is_refused_and_changes_nothing() {
    let mut s = initialised();
    s.apply(
        2,
        &Command::AddNode {
            node: node("w1", Role::Worker),
        },
    );
    let mut spec = s.nodes[&NodeId("w1".into())].spec.clone();
    spec.labels.insert("a".into(), "b".into());
    let before = s.clone();
    let (r, changes) = s.apply(
        3,
        &Command::UpdateNodeSpec {
            id: NodeId("w1".into()),
            version: 1,
            spec: spec.clone(),
            now: "t".into(),
        },
    );
    assert_eq!(r.error.map(|e| e.kind), Some(StoreErrorKind::Conflict));
    assert!(changes.is_empty());
    assert_eq!(s, before);
    let (r, _) = s.apply(
        4,
        &Command::UpdateNodeSpec {
            id: NodeId("w1".into()),
            version: 2,
            spec,
            now: "t".into(),
        },
    );
    assert_eq!(r.error, None);
    assert_eq!(s.nodes[&NodeId("w1".into())].spec.labels["a"], "b");
}

#[test]
fn the_last_manager_cannot_be_demoted() {
    let mut s = initialised();
    let mut spec = s.nodes[&NodeId("m1".into())].spec.clone();
    spec.role = Role::Worker;
    let (r, _) = s.apply(
        2,
        &Command::UpdateNodeSpec {
            id: NodeId("m1".into()),
            version: 1,
            spec,
            now: "t".into(),
        },
    );
    let e = r.error.expect("refused");
    assert_eq!(e.kind, StoreErrorKind::Invalid);
    assert!(e.message.contains("last manager"), "{}", e.message);
}

#[test]
fn raft_members_cannot_be_removed() {
    let mut s = initialised();
    let (r, _) = s.apply(
        2,
        &Command::RemoveNode {
            id: NodeId("m1".into()),
        },
    );
    assert!(r
        .error
        .expect("refused")
        .message
        .contains("must be demoted"));
    s.apply(
        3,
        &Command::AddNode {
            node: node("w1", Role::Worker),
        },
    );
    let (r, changes) = s.apply(
        4,
        &Command::RemoveNode {
            id: NodeId("w1".into()),
        },
    );
    assert_eq!(r.error, None);
    assert_eq!(
        changes,
        vec![Change {
            key: "node/w1".into(),
            value: None
        }]
    );
    let (r, _) = s.apply(
        5,
        &Command::RemoveNode {
            id: NodeId("w1".into()),
        },
    );
    assert_eq!(r.error.map(|e| e.kind), Some(StoreErrorKind::NotFound));
}

#[test]
fn rows_round_trip_and_corrupt_rows_are_errors() {
    let mut s = initialised();
    s.apply(
        2,
        &Command::AddNode {
            node: node("w1", Role::Worker),
        },
    );
    let back = State::from_rows(s.rows()).expect("decodes");
    assert_eq!(back, s);
    let err =
        State::from_rows(vec![("node/x".to_string(), b"{not json".to_vec())]).expect_err("corrupt");
    assert!(err.message.contains("node/x"), "{}", err.message);
    assert!(State::from_rows(vec![("weird/x".to_string(), b"{}".to_vec())]).is_err());
}

#[test]
fn restore_restamps_versions_and_replaces_everything() {
    let mut s = initialised();
    s.apply(
        9,
        &Command::AddNode {
            node: node("gone", Role::Worker),
        },
    );
    let (r, changes) = s.apply(
        1,
        &Command::Restore {
            cluster: cluster(),
            nodes: vec![node("m1", Role::Manager)],
        },
    );
    assert_eq!(r.error, None);
    assert!(changes
        .iter()
        .any(|c| c.key == "node/gone" && c.value.is_none()));
    assert_eq!(s.nodes.len(), 1);
    assert!(s.nodes.values().all(|n| n.version == 1));
}

#[test]
fn status_updates_skip_removed_nodes() {
    let mut s = initialised();
    let upd = |id: &str| NodeStatusUpdate {
        id: NodeId(id.into()),
        state: Some(NodeState::Down),
        message: Some("heartbeat failure".into()),
        addr: None,
        reachability: Some(Reachability::Unreachable),
        description: None,
    };
    let (r, changes) = s.apply(
        2,
        &Command::SetNodeStatus {
            updates: vec![upd("m1"), upd("ghost")],
            now: "t".into(),
        },
    );
    assert_eq!(r.error, None);
    assert_eq!(changes.len(), 1);
    let m1 = &s.nodes[&NodeId("m1".into())];
    assert_eq!(m1.status.state, NodeState::Down);
    assert_eq!(
        m1.manager_status.as_ref().map(|m| m.reachability),
        Some(Reachability::Unreachable)
    );
}
