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
            port: 0,
        },
        role,
        manager_status: (role == Role::Manager).then(|| ManagerStatus {
            raft_id: 7,
            addr: "127.0.0.1:2377".into(),
            reachability: Reachability::Reachable,
        }),
        cert_expiry: String::new(),
        key_fingerprint: String::new(),
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
        rotation: None,
        addr_pool: Default::default(),
    }
}

fn initialised() -> State {
    let mut s = State::default();
    let r = s.apply(
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
    let r = s.apply(
        5,
        &Command::AddNode {
            node: node("w1", Role::Worker),
        },
    );
    assert_eq!(r.version, Some(5));
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
    let r = s.apply(
        3,
        &Command::UpdateNodeSpec {
            id: NodeId("w1".into()),
            version: 1,
            spec: spec.clone(),
            now: "t".into(),
        },
    );
    assert_eq!(r.error.map(|e| e.kind), Some(StoreErrorKind::Conflict));
    assert_eq!(s, before);
    let r = s.apply(
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
    let r = s.apply(
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
    let r = s.apply(
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
    let r = s.apply(
        4,
        &Command::RemoveNode {
            id: NodeId("w1".into()),
        },
    );
    assert_eq!(r.error, None);
    assert!(!s.nodes.contains_key(&NodeId("w1".into())));
    assert!(
        s.removed.contains(&NodeId("w1".into())),
        "a removed node stays revoked"
    );
    assert_eq!(State::from_rows(s.rows()).expect("rows").removed, s.removed);
    let r = s.apply(
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
    let r = s.apply(
        1,
        &Command::Restore {
            cluster: cluster(),
            nodes: vec![node("m1", Role::Manager)],
            secrets: vec![],
            configs: vec![],
            removed: vec![],
            services: vec![],
            tasks: vec![],
            networks: vec![],
        },
    );
    assert_eq!(r.error, None);
    assert!(!s.nodes.contains_key(&NodeId("gone".into())));
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
    let r = s.apply(
        2,
        &Command::SetNodeStatus {
            updates: vec![upd("m1"), upd("ghost")],
            now: "t".into(),
        },
    );
    assert_eq!(r.error, None);
    assert!(
        !s.nodes.contains_key(&NodeId("ghost".into())),
        "an update for an unknown node makes none"
    );
    let m1 = &s.nodes[&NodeId("m1".into())];
    assert_eq!(m1.status.state, NodeState::Down);
    assert_eq!(
        m1.manager_status.as_ref().map(|m| m.reachability),
        Some(Reachability::Unreachable)
    );
}

fn secret(id: &str, name: &str) -> Secret {
    Secret {
        id: SecretId(id.into()),
        version: 0,
        created_at: "t0".into(),
        updated_at: "t0".into(),
        spec: SecretSpec {
            name: name.into(),
            labels: Default::default(),
            data: b"hunter2".to_vec(),
        },
    }
}

fn config(id: &str, name: &str) -> Config {
    Config {
        id: ConfigId(id.into()),
        version: 0,
        created_at: "t0".into(),
        updated_at: "t0".into(),
        spec: ConfigSpec {
            name: name.into(),
            labels: Default::default(),
            data: b"port=80".to_vec(),
        },
    }
}

#[test]
fn secret_names_are_unique() {
    let mut s = initialised();
    let r = s.apply(
        2,
        &Command::CreateSecret {
            secret: secret("s1", "web-key"),
        },
    );
    assert_eq!(r.error, None);
    assert_eq!(r.version, Some(2));
    assert_eq!(s.secrets.len(), 1);
    assert_eq!(s.secrets[&SecretId("s1".into())].version, 2);

    let before = s.clone();
    let r = s.apply(
        3,
        &Command::CreateSecret {
            secret: secret("s2", "web-key"),
        },
    );
    let e = r.error.expect("name taken");
    assert_eq!(e.kind, StoreErrorKind::Conflict);
    assert!(
        e.message.starts_with("secret web-key already exists"),
        "{}",
        e.message
    );
    assert_eq!(s, before);

    let r = s.apply(
        4,
        &Command::CreateSecret {
            secret: secret("s1", "other"),
        },
    );
    assert_eq!(r.error.map(|e| e.kind), Some(StoreErrorKind::Conflict));

    // A config may share a secret's name: they are separate namespaces.
    let r = s.apply(
        5,
        &Command::CreateConfig {
            config: config("c1", "web-key"),
        },
    );
    assert_eq!(r.error, None);
    let r = s.apply(
        6,
        &Command::CreateConfig {
            config: config("c2", "web-key"),
        },
    );
    let e = r.error.expect("config name taken");
    assert_eq!(e.kind, StoreErrorKind::Conflict);
    assert!(
        e.message.starts_with("config web-key already exists"),
        "{}",
        e.message
    );
}

#[test]
fn secret_updates_change_labels_with_the_right_version() {
    let mut s = initialised();
    s.apply(
        2,
        &Command::CreateSecret {
            secret: secret("s1", "k"),
        },
    );
    let labels: std::collections::BTreeMap<String, String> =
        [("a".to_string(), "b".to_string())].into();
    let upd = |version| Command::UpdateSecret {
        id: SecretId("s1".into()),
        version,
        labels: labels.clone(),
        now: "t1".into(),
    };
    let r = s.apply(3, &upd(1));
    let e = r.error.expect("stale");
    assert_eq!(e.kind, StoreErrorKind::Conflict);
    assert!(e.message.contains("out of sequence"), "{}", e.message);
    let r = s.apply(4, &upd(2));
    assert_eq!(r.error, None);
    let stored = &s.secrets[&SecretId("s1".into())];
    assert_eq!(stored.spec.labels, labels);
    assert_eq!(stored.spec.data, b"hunter2", "data is untouched");
    assert_eq!((stored.version, stored.updated_at.as_str()), (4, "t1"));
    assert_eq!(stored.created_at, "t0");

    let r = s.apply(
        5,
        &Command::UpdateSecret {
            id: SecretId("ghost".into()),
            version: 4,
            labels: Default::default(),
            now: "t".into(),
        },
    );
    assert_eq!(r.error.map(|e| e.kind), Some(StoreErrorKind::NotFound));

    s.apply(
        6,
        &Command::CreateConfig {
            config: config("c1", "app"),
        },
    );
    let r = s.apply(
        7,
        &Command::UpdateConfig {
            id: ConfigId("c1".into()),
            version: 6,
            labels: labels.clone(),
            now: "t2".into(),
        },
    );
    assert_eq!(r.error, None);
    assert_eq!(s.configs[&ConfigId("c1".into())].spec.labels, labels);
    assert_eq!(s.configs[&ConfigId("c1".into())].version, 7);
}

#[test]
fn removing_secrets_and_configs() {
    let mut s = initialised();
    s.apply(
        2,
        &Command::CreateSecret {
            secret: secret("s1", "k"),
        },
    );
    s.apply(
        3,
        &Command::CreateConfig {
            config: config("c1", "k"),
        },
    );
    // No services exist yet, so nothing uses them and removal goes through.
    assert!(s.services_using_secret(&SecretId("s1".into())).is_empty());
    let r = s.apply(
        4,
        &Command::RemoveSecret {
            id: SecretId("s1".into()),
        },
    );
    assert_eq!(r.error, None);
    assert!(!s.secrets.contains_key(&SecretId("s1".into())));
    assert!(s.configs.contains_key(&ConfigId("c1".into())));
    let r = s.apply(
        5,
        &Command::RemoveSecret {
            id: SecretId("s1".into()),
        },
    );
    assert_eq!(r.error.map(|e| e.kind), Some(StoreErrorKind::NotFound));
    let r = s.apply(
        6,
        &Command::RemoveConfig {
            id: ConfigId("c1".into()),
        },
    );
    assert_eq!(r.error, None);
    assert!(s.secrets.is_empty() && s.configs.is_empty());
}

#[test]
fn in_use_refusal_names_the_services() {
    assert_eq!(
        in_use_message("secret", "web-key", &["web".to_string()]),
        "secret 'web-key' is in use by the following service: web; remove it from the service first"
    );
    assert!(in_use_message("config", "c", &["a".into(), "b".into()])
        .contains("following services: a, b"));
}

#[test]
fn secrets_and_configs_persist_as_rows_and_survive_restore() {
    let mut s = initialised();
    s.apply(
        2,
        &Command::CreateSecret {
            secret: secret("s1", "k"),
        },
    );
    s.apply(
        3,
        &Command::CreateConfig {
            config: config("c1", "app"),
        },
    );
    let rows = s.rows();
    assert!(rows.iter().any(|(k, _)| k == "secret/s1"));
    assert!(rows.iter().any(|(k, _)| k == "config/c1"));
    // Payloads are stored as base64, not as arrays of numbers.
    let (_, row) = rows.iter().find(|(k, _)| k == "secret/s1").expect("row");
    assert!(String::from_utf8_lossy(row).contains("\"data\":\"aHVudGVyMg==\""));
    assert_eq!(State::from_rows(rows).expect("decodes"), s);
    let err = State::from_rows(vec![("secret/x".to_string(), b"{".to_vec())]).expect_err("corrupt");
    assert!(err.message.contains("secret/x"), "{}", err.message);

    // force-new-cluster carries them into the new log, restamped.
    let secrets: Vec<Secret> = s.secrets.values().cloned().collect();
    let configs: Vec<Config> = s.configs.values().cloned().collect();
    let mut fresh = State::default();
    let r = fresh.apply(
        1,
        &Command::Restore {
            cluster: cluster(),
            nodes: vec![node("m1", Role::Manager)],
            secrets,
            configs,
            removed: vec![],
            services: vec![],
            tasks: vec![],
            networks: vec![],
        },
    );
    assert_eq!(r.error, None);
    assert_eq!(fresh.secrets[&SecretId("s1".into())].version, 1);
    assert_eq!(fresh.secrets[&SecretId("s1".into())].spec.data, b"hunter2");
    assert_eq!(fresh.configs[&ConfigId("c1".into())].version, 1);

    // A Restore written before secrets existed still decodes.
    let json = serde_json::to_string(&Command::Restore {
        cluster: cluster(),
        nodes: vec![],
        secrets: vec![],
        configs: vec![],
        removed: vec![],
        services: vec![],
        tasks: vec![],
        networks: vec![],
    })
    .expect("encode");
    let trimmed = json.replace(",\"secrets\":[],\"configs\":[]", "");
    assert!(!trimmed.contains("\"secrets\""), "{trimmed}");
    let back: Command = serde_json::from_str(&trimmed).expect("old Restore decodes");
    assert!(matches!(back, Command::Restore { secrets, .. } if secrets.is_empty()));
}

#[test]
fn secret_payloads_stay_out_of_debug_output() {
    let cmd = Command::CreateSecret {
        secret: secret("s1", "k"),
    };
    let text = format!("{cmd:?}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("7 bytes redacted"), "{text}");
}

#[test]
fn a_batch_answers_each_command_and_one_failure_stops_none() {
    let mut s = initialised();
    let batch = Command::Batch(vec![
        Command::AddNode {
            node: node("w1", Role::Worker),
        },
        Command::AddNode {
            node: node("w1", Role::Worker),
        },
        Command::AddNode {
            node: node("w2", Role::Worker),
        },
    ]);
    let r = s.apply(7, &batch);
    assert_eq!(r.batch.len(), 3);
    assert_eq!(r.batch[0].error, None);
    assert_eq!(
        r.batch[1].error.as_ref().map(|e| e.kind),
        Some(StoreErrorKind::Conflict)
    );
    assert_eq!(r.batch[2].version, Some(7));
    assert_eq!(s.nodes[&NodeId("w1".into())].version, 7);
    assert!(s.nodes.contains_key(&NodeId("w2".into())));
}

fn service(id: &str, replicas: i64) -> Service {
    Service {
        id: ServiceId(id.into()),
        version: 0,
        created_at: String::new(),
        updated_at: String::new(),
        spec: crate::store::ServiceSpec {
            name: Some(id.into()),
            mode: Some(bollard_stubs::models::ServiceSpecMode {
                replicated: Some(bollard_stubs::models::ServiceSpecModeReplicated {
                    replicas: Some(replicas),
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
        previous_spec: None,
        previous_spec_version: 0,
        update_status: None,
        spec_version: 0,
        registry_auth: None,
        endpoint: Default::default(),
    }
}

fn task(id: &str, service: &str, slot: u64) -> Task {
    Task {
        id: TaskId(id.into()),
        version: 0,
        created_at: String::new(),
        updated_at: String::new(),
        service_id: ServiceId(service.into()),
        slot,
        node_id: None,
        spec: Default::default(),
        spec_version: 0,
        ports: vec![],
        desired_state: crate::store::TaskState::Running,
        status: crate::store::TaskStatus::new(crate::store::TaskState::Pending, "pending", "t0"),
        attempt: 0,
        networks: Vec::new(),
        running_since: None,
        registry_auth: None,
    }
}

/// Any mix of commands applied in place leaves the indexes as a rebuild
/// from the rows makes them.
#[test]
fn in_place_changes_keep_the_indexes_as_a_rebuild_makes_them() {
    use crate::store::{TaskState, TaskStatus, TaskStatusUpdate};
    let mut state = initialised();
    for n in ["n1", "n2"] {
        state.apply(
            2,
            &Command::AddNode {
                node: node(n, Role::Worker),
            },
        );
    }
    state.apply(
        3,
        &Command::CreateService {
            service: service("s1", 3),
        },
    );
    state.apply(
        4,
        &Command::CreateService {
            service: service("s2", 1),
        },
    );
    state.apply(
        5,
        &Command::CreateTasks {
            tasks: vec![
                task("t1", "s1", 1),
                task("t2", "s1", 2),
                task("t3", "s2", 1),
            ],
        },
    );
    state.apply(
        6,
        &Command::AssignTasks {
            assignments: vec![(TaskId("t1".into()), NodeId("n1".into()))],
            now: "t6".into(),
        },
    );
    let before = state.clone();

    let cmds = vec![
        Command::AssignTasks {
            assignments: vec![
                (TaskId("t2".into()), NodeId("n2".into())),
                (TaskId("t3".into()), NodeId("n2".into())),
            ],
            now: "t7".into(),
        },
        Command::SetTaskStatus {
            updates: vec![TaskStatusUpdate {
                id: TaskId("t1".into()),
                status: TaskStatus::new(TaskState::Running, "started", "t7"),
            }],
            reporter: Some(NodeId("n1".into())),
        },
        Command::CreateTasks {
            tasks: vec![task("t4", "s1", 3)],
        },
        Command::Batch(vec![
            Command::SetTasksDesired {
                ids: vec![TaskId("t2".into())],
                desired: TaskState::Shutdown,
                now: "t8".into(),
            },
            Command::DeleteTasks {
                ids: vec![TaskId("t3".into())],
            },
        ]),
        Command::RemoveService {
            id: ServiceId("s1".into()),
            now: "t9".into(),
        },
        Command::RemoveNode {
            id: NodeId("n2".into()),
        },
        Command::CreateService {
            service: service("s3", 2),
        },
    ];
    for (i, c) in cmds.iter().enumerate() {
        state.apply(10 + i as u64, c);
    }
    assert_ne!(state, before, "the commands changed something");
    assert_eq!(state.tasks.len(), 3, "t4 created, t3 deleted");
    let rebuilt = State::from_rows(state.rows()).expect("rows decode");
    assert_eq!(state.task_index, rebuilt.task_index);
}

/// A slot holds one wanted task: a create decided on an older state (or by
/// a former leader) is dropped when its slot is taken, in the state or
/// earlier in the same command; a slot whose task is shutting down is free.
#[test]
fn a_slot_holds_one_wanted_task() {
    use crate::store::TaskState;
    let mut state = initialised();
    state.apply(
        2,
        &Command::CreateService {
            service: service("s1", 3),
        },
    );
    state.apply(
        3,
        &Command::CreateTasks {
            tasks: vec![task("t1", "s1", 1), task("t2", "s1", 2)],
        },
    );
    for n in ["n1", "n2"] {
        state.apply(
            3,
            &Command::AddNode {
                node: node(n, Role::Worker),
            },
        );
    }
    // Placed: a replicated task's node does not change its slot.
    state.apply(
        4,
        &Command::AssignTasks {
            assignments: vec![(TaskId("t1".into()), NodeId("n1".into()))],
            now: "t4".into(),
        },
    );
    state.apply(
        4,
        &Command::SetTasksDesired {
            ids: vec![TaskId("t2".into())],
            desired: TaskState::Shutdown,
            now: "t4".into(),
        },
    );
    let mut elsewhere = task("t1-elsewhere", "s1", 1);
    elsewhere.node_id = Some(NodeId("n2".into()));
    state.apply(
        5,
        &Command::CreateTasks {
            tasks: vec![
                task("t1-again", "s1", 1),
                elsewhere,
                task("t2-new", "s1", 2),
                task("t3", "s1", 3),
                task("t3-twice", "s1", 3),
            ],
        },
    );
    // A global service: one wanted task per node.
    let mut global = service("g", 1);
    global.spec.mode = Some(bollard_stubs::models::ServiceSpecMode {
        global: Some(Default::default()),
        ..Default::default()
    });
    state.apply(6, &Command::CreateService { service: global });
    let on = |id: &str, node: &str| {
        let mut t = task(id, "g", 0);
        t.node_id = Some(NodeId(node.into()));
        t
    };
    state.apply(
        7,
        &Command::CreateTasks {
            tasks: vec![on("g1", "n1")],
        },
    );
    state.apply(
        8,
        &Command::CreateTasks {
            tasks: vec![on("g1-again", "n1"), on("g2", "n2")],
        },
    );
    state.apply(
        9,
        &Command::SetTasksDesired {
            ids: vec![TaskId("g1".into())],
            desired: TaskState::Shutdown,
            now: "t9".into(),
        },
    );
    state.apply(
        10,
        &Command::CreateTasks {
            tasks: vec![on("g1-new", "n1")],
        },
    );
    let mut ids: Vec<&str> = state.tasks.keys().map(|t| t.0.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["g1", "g1-new", "g2", "t1", "t2", "t2-new", "t3"]);
    let rebuilt = State::from_rows(state.rows()).expect("rows decode");
    assert_eq!(state.task_index, rebuilt.task_index);
}

/// Workers and managers compare assignment digests computed on their own
/// machines: the value must not depend on the word size (a 32-bit board)
/// or anything else of the build. Pinned; a change here breaks workers and
/// managers of different builds.
#[test]
fn the_assignment_digest_is_the_same_on_every_machine() {
    let t = task("t1", "s1", 1);
    assert_eq!(t.assignment_digest(), PINNED_DIGEST);
}

const PINNED_DIGEST: u64 = 15_973_968_526_543_171_751;
