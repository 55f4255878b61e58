use super::*;
use crate::store::*;

fn state_with(nodes: &[(&str, NodeState, bool)]) -> State {
    let mut s = State::default();
    s.cluster = Some(Cluster {
        id: "c".into(),
        version: 1,
        created_at: String::new(),
        updated_at: String::new(),
        spec: ClusterSpec::default(),
        root_ca: RootCa {
            cert_pem: String::new(),
            key_pem: String::new(),
        },
        join_secrets: JoinSecrets {
            worker: String::new(),
            manager: String::new(),
        },
        unlock_key: None,
        rotation: None,
    });
    for (id, st, manager) in nodes {
        s.nodes.insert(
            NodeId(id.to_string()),
            Node {
                id: NodeId(id.to_string()),
                version: 1,
                created_at: String::new(),
                updated_at: String::new(),
                spec: NodeSpec::default(),
                description: NodeDescription::default(),
                status: NodeStatus {
                    state: *st,
                    message: String::new(),
                    addr: String::new(),
                    port: 0,
                },
                role: if *manager {
                    Role::Manager
                } else {
                    Role::Worker
                },
                manager_status: manager.then(|| ManagerStatus {
                    raft_id: 1,
                    addr: String::new(),
                    reachability: Reachability::Reachable,
                }),
                cert_expiry: String::new(),
                key_fingerprint: String::new(),
            },
        );
    }
    s
}

fn id(s: &str) -> NodeId {
    NodeId(s.into())
}

#[tokio::test(start_paused = true)]
async fn silent_nodes_go_down_after_three_periods_and_come_back() {
    let d = Dispatcher::default();
    d.start_term();
    let s = state_with(&[
        ("me", NodeState::Ready, true),
        ("w", NodeState::Ready, false),
        ("m2", NodeState::Ready, true),
    ]);
    d.seen(&id("w"));
    d.seen(&id("m2"));
    // Within the grace period nothing changes.
    tokio::time::advance(Duration::from_secs(14)).await;
    assert!(d.plan(&s, &id("me"), Instant::now()).is_empty());
    // Past 3 × 5 s both silent nodes go Down; the manager also Unreachable.
    tokio::time::advance(Duration::from_secs(2)).await;
    let plan = d.plan(&s, &id("me"), Instant::now());
    assert_eq!(plan.len(), 2);
    let m2 = plan.iter().find(|u| u.id == id("m2")).expect("m2");
    assert_eq!(m2.state, Some(NodeState::Down));
    assert_eq!(m2.reachability, Some(Reachability::Unreachable));
    assert_eq!(m2.message.as_deref(), Some("heartbeat failure"));
    // The leader itself never goes down in its own eyes.
    assert!(plan.iter().all(|u| u.id != id("me")));
    // A heartbeat brings a Down node back.
    let s = state_with(&[
        ("me", NodeState::Ready, true),
        ("w", NodeState::Down, false),
    ]);
    d.seen(&id("w"));
    let plan = d.plan(&s, &id("me"), Instant::now());
    assert_eq!(plan.len(), 1);
    assert_eq!(plan[0].state, Some(NodeState::Ready));
}

#[tokio::test(start_paused = true)]
async fn a_new_leader_gives_every_node_a_grace_period() {
    let d = Dispatcher::default();
    d.start_term();
    let s = state_with(&[
        ("me", NodeState::Ready, true),
        ("w", NodeState::Ready, false),
    ]);
    tokio::time::advance(Duration::from_secs(10)).await;
    assert!(
        d.plan(&s, &id("me"), Instant::now()).is_empty(),
        "not heard yet, but within grace"
    );
    tokio::time::advance(Duration::from_secs(6)).await;
    assert_eq!(d.plan(&s, &id("me"), Instant::now()).len(), 1);
}
