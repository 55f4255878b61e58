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
        addr_pool: Default::default(),
    });
    for (i, (id, st, manager)) in nodes.iter().enumerate() {
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
                    raft_id: i as u64 + 1,
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
    // Within the grace period nothing changes (m2's raft, raft ID 3, keeps
    // answering meanwhile: reachable).
    for _ in 0..14 {
        d.answers.heard(3);
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    assert!(d.plan(&s, &id("me"), Instant::now()).is_empty());
    // Past 3 × 5 s both silent nodes go Down; the manager, silent in raft
    // too by now, also Unreachable.
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

#[tokio::test(start_paused = true)]
async fn a_manager_silent_in_raft_is_unreachable_within_a_second_and_a_half() {
    let d = Dispatcher::default();
    d.start_term();
    // me: raft ID 1, m2: 2, m3: 3.
    let s = state_with(&[
        ("me", NodeState::Ready, true),
        ("m2", NodeState::Ready, true),
        ("m3", NodeState::Ready, true),
    ]);
    let reach = |plan: &[NodeStatusUpdate], who: &str| {
        plan.iter()
            .find(|u| u.id == id(who))
            .and_then(|u| u.reachability)
    };
    // A new term: peers not heard from yet are Unknown (nothing written).
    d.seen(&id("m2"));
    d.seen(&id("m3"));
    tokio::time::advance(Duration::from_millis(500)).await;
    assert!(d.plan(&s, &id("me"), Instant::now()).is_empty());
    assert!(d.plan(&s, &id("me"), Instant::now()).is_empty());
    // Both answer; then m3 dies (heartbeats and raft alike).
    d.answers.heard(2);
    d.answers.heard(3);
    assert!(d.plan(&s, &id("me"), Instant::now()).is_empty());
    for _ in 0..7 {
        tokio::time::advance(Duration::from_millis(150)).await;
        d.answers.heard(2);
        d.seen(&id("m2"));
        assert!(d.plan(&s, &id("me"), Instant::now()).is_empty());
    }
    tokio::time::advance(Duration::from_millis(200)).await;
    d.answers.heard(2);
    let plan = d.plan(&s, &id("me"), Instant::now());
    assert_eq!(
        reach(&plan, "m3"),
        Some(Reachability::Unreachable),
        "{plan:?}"
    );
    // Still Ready: the node's state follows its heartbeats (15 s).
    assert!(
        plan.iter().all(|u| u.state == Some(NodeState::Ready)),
        "{plan:?}"
    );
    assert_eq!(reach(&plan, "m2"), None, "m2 answers: unchanged");
    // m3 comes back: Reachable at its first answer.
    let mut s = s;
    if let Some(ms) = s
        .nodes
        .get_mut(&id("m3"))
        .and_then(|n| n.manager_status.as_mut())
    {
        ms.reachability = Reachability::Unreachable;
    }
    d.answers.heard(3);
    let plan = d.plan(&s, &id("me"), Instant::now());
    assert_eq!(
        reach(&plan, "m3"),
        Some(Reachability::Reachable),
        "{plan:?}"
    );
    // Answers from before a term count for nothing in it.
    tokio::time::advance(Duration::from_millis(100)).await;
    d.start_term();
    tokio::time::advance(Duration::from_millis(500)).await;
    assert_eq!(reach(&d.plan(&s, &id("me"), Instant::now()), "m2"), None);
    tokio::time::advance(Duration::from_millis(200)).await;
    let plan = d.plan(&s, &id("me"), Instant::now());
    assert_eq!(
        reach(&plan, "m2"),
        Some(Reachability::Unreachable),
        "{plan:?}"
    );
}
