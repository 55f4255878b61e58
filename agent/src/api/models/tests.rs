#![allow(clippy::unwrap_used)] // tests fail loudly on purpose
use super::*;
use crate::control::NodeView;
use crate::store::{
    JoinSecrets, ManagerStatus, Node, NodeDescription, NodeId, NodeStatus, Platform, RootCa,
};

pub fn sample_node(id: &str, host: &str, role: Role, leader: bool) -> NodeView {
    let manager = role == Role::Manager;
    NodeView {
        node: Node {
            id: NodeId(id.into()),
            version: 7,
            created_at: "2024-05-01T10:00:00.123Z".into(),
            updated_at: "2024-05-01T11:00:00Z".into(),
            spec: NodeSpec {
                name: String::new(),
                labels: [("zone".to_string(), "a".to_string())].into(),
                role,
                availability: Availability::Active,
            },
            description: NodeDescription {
                hostname: host.into(),
                platform: Platform {
                    os: "linux".into(),
                    architecture: "x86_64".into(),
                },
                nano_cpus: 4_000_000_000,
                memory_bytes: 8_538_484_736,
                engine_version: "0.1.0".into(),
            },
            status: NodeStatus {
                state: NodeState::Ready,
                message: String::new(),
                addr: "10.0.0.1".into(),
                port: 0,
            },
            role,
            manager_status: manager.then(|| ManagerStatus {
                raft_id: 1,
                addr: "10.0.0.1:2377".into(),
                reachability: Reachability::Reachable,
            }),
            cert_expiry: String::new(),
            key_fingerprint: String::new(),
        },
        leader,
        tls: None,
    }
}

#[test]
fn node_json_uses_docker_field_names() {
    let v =
        serde_json::to_value(node_to_api(&sample_node("abc", "h1", Role::Manager, true))).unwrap();
    assert_eq!(v["ID"], "abc");
    assert_eq!(v["Version"]["Index"], 7);
    assert_eq!(v["CreatedAt"], "2024-05-01T10:00:00.123Z");
    assert_eq!(v["Spec"]["Role"], "manager");
    assert_eq!(v["Spec"]["Availability"], "active");
    assert_eq!(v["Spec"]["Labels"]["zone"], "a");
    assert!(
        v["Spec"].get("Name").is_none(),
        "empty name is omitted like Docker"
    );
    assert_eq!(v["Description"]["Hostname"], "h1");
    assert_eq!(v["Description"]["Platform"]["OS"], "linux");
    assert_eq!(v["Description"]["Platform"]["Architecture"], "x86_64");
    assert_eq!(v["Description"]["Resources"]["NanoCPUs"], 4_000_000_000i64);
    assert_eq!(
        v["Description"]["Resources"]["MemoryBytes"],
        8_538_484_736i64
    );
    assert_eq!(v["Description"]["Engine"]["EngineVersion"], "0.1.0");
    assert_eq!(v["Status"]["State"], "ready");
    assert_eq!(v["Status"]["Addr"], "10.0.0.1");
    assert_eq!(v["ManagerStatus"]["Leader"], true);
    assert_eq!(v["ManagerStatus"]["Reachability"], "reachable");
    assert_eq!(v["ManagerStatus"]["Addr"], "10.0.0.1:2377");
}

#[test]
fn workers_have_no_manager_status() {
    let v =
        serde_json::to_value(node_to_api(&sample_node("w", "h2", Role::Worker, false))).unwrap();
    assert!(v.get("ManagerStatus").is_none());
    assert_eq!(v["Spec"]["Role"], "worker");
}

fn cluster() -> Cluster {
    Cluster {
        id: "cid".into(),
        version: 3,
        created_at: "2024-05-01T10:00:00Z".into(),
        updated_at: "2024-05-01T10:00:00Z".into(),
        spec: ClusterSpec::default(),
        root_ca: RootCa {
            cert_pem: "CERT".into(),
            key_pem: "SECRET KEY".into(),
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

#[test]
fn swarm_json_has_spec_and_tokens_but_never_the_ca_key() {
    let v = SwarmView {
        cluster: cluster(),
        worker_token: "SWMTKN-w".into(),
        manager_token: "SWMTKN-m".into(),
    };
    let s = serde_json::to_string(&swarm_to_api(&v)).unwrap();
    assert!(!s.contains("SECRET KEY"));
    let j: serde_json::Value = serde_json::from_str(&s).unwrap();
    assert_eq!(j["ID"], "cid");
    assert_eq!(j["Version"]["Index"], 3);
    assert_eq!(j["JoinTokens"]["Worker"], "SWMTKN-w");
    assert_eq!(j["JoinTokens"]["Manager"], "SWMTKN-m");
    assert_eq!(j["Spec"]["Name"], "default");
    assert_eq!(j["Spec"]["Orchestration"]["TaskHistoryRetentionLimit"], 5);
    assert_eq!(j["Spec"]["Raft"]["SnapshotInterval"], 10_000);
    assert_eq!(j["Spec"]["Dispatcher"]["HeartbeatPeriod"], 5_000_000_000i64);
    assert_eq!(
        j["Spec"]["CAConfig"]["NodeCertExpiry"],
        7_776_000_000_000_000i64
    );
    assert_eq!(j["Spec"]["EncryptionConfig"]["AutoLockManagers"], false);
}

#[test]
fn spec_merge_keeps_absent_and_zero_fields() {
    let base = ClusterSpec::default();
    // What `docker swarm init --task-history-limit 3` sends.
    let api: m::SwarmSpec = serde_json::from_str(
        r#"{"Labels":{},"Orchestration":{"TaskHistoryRetentionLimit":3},"Raft":{"ElectionTick":0,"HeartbeatTick":0},
            "Dispatcher":{},"CAConfig":{},"TaskDefaults":{},"EncryptionConfig":{"AutoLockManagers":false}}"#,
    )
    .unwrap();
    let s = merge_spec(&base, &api).unwrap();
    assert_eq!(s.task_history_limit, 3);
    assert_eq!(s.dispatcher_heartbeat_ns, base.dispatcher_heartbeat_ns);
    assert_eq!(s.cert_expiry_ns, base.cert_expiry_ns);
    assert_eq!(s.snapshot_interval, base.snapshot_interval);
    assert_eq!(s.name, "default");

    let api: m::SwarmSpec =
        serde_json::from_str(r#"{"CAConfig":{"NodeCertExpiry":60000000000}}"#).unwrap();
    let err = merge_spec(&base, &api).unwrap_err();
    assert_eq!(err.status.as_u16(), 400);
}

#[test]
fn addresses() {
    assert_eq!(
        parse_addr("ListenAddr", "0.0.0.0:2377", 2377)
            .unwrap()
            .to_string(),
        "0.0.0.0:2377"
    );
    assert_eq!(
        parse_addr("AdvertiseAddr", "10.0.0.5", 4000)
            .unwrap()
            .to_string(),
        "10.0.0.5:4000"
    );
    assert_eq!(
        parse_addr("AdvertiseAddr", "10.0.0.5:", 2377)
            .unwrap()
            .to_string(),
        "10.0.0.5:2377"
    );
    assert_eq!(
        parse_addr("AdvertiseAddr", "::1", 2377)
            .unwrap()
            .to_string(),
        "[::1]:2377"
    );
    assert_eq!(
        parse_addr("AdvertiseAddr", "[::1]:9", 2377)
            .unwrap()
            .to_string(),
        "[::1]:9"
    );
    let e = parse_addr("AdvertiseAddr", "eth0", 2377).unwrap_err();
    assert_eq!(e.status.as_u16(), 400);
    assert!(
        e.message.contains("\"eth0\"") && e.message.contains("interface"),
        "{}",
        e.message
    );
    assert!(parse_addr("ListenAddr", "1.2.3.4:99999", 2377).is_err());

    assert_eq!(normalize_remote_addr("10.0.0.1").unwrap(), "10.0.0.1:2377");
    assert_eq!(normalize_remote_addr("manager1").unwrap(), "manager1:2377");
    assert_eq!(
        normalize_remote_addr("manager1:4000").unwrap(),
        "manager1:4000"
    );
    assert!(normalize_remote_addr("").is_err());
    assert!(normalize_remote_addr("m:notaport").is_err());
}

#[test]
fn node_filters() {
    let mgr = sample_node("abc123", "alpha", Role::Manager, true);
    let wrk = sample_node("def456", "beta", Role::Worker, false);
    let f = Filters::parse(Some(r#"{"role":{"manager":true}}"#)).unwrap();
    f.validate_node_filters().unwrap();
    assert!(f.matches_node(&mgr) && !f.matches_node(&wrk));
    let f = Filters::parse(Some(r#"{"name":["be"]}"#)).unwrap();
    assert!(!f.matches_node(&mgr) && f.matches_node(&wrk));
    let f = Filters::parse(Some(r#"{"id":{"abc":true}}"#)).unwrap();
    assert!(f.matches_node(&mgr) && !f.matches_node(&wrk));
    let f = Filters::parse(Some(r#"{"node.label":{"zone=a":true}}"#)).unwrap();
    assert!(f.matches_node(&mgr));
    let f = Filters::parse(Some(r#"{"node.label":{"zone=b":true}}"#)).unwrap();
    assert!(!f.matches_node(&mgr));
    let f = Filters::parse(Some(r#"{"colour":{"red":true}}"#)).unwrap();
    assert_eq!(
        f.validate_node_filters().unwrap_err().message,
        "invalid filter 'colour'"
    );
    let f = Filters::parse(Some(r#"{"role":{"boss":true}}"#)).unwrap();
    assert!(f.validate_node_filters().is_err());
    assert!(Filters::parse(Some("{nope")).is_err());
}

#[test]
fn node_spec_merge() {
    let base = sample_node("a", "h", Role::Worker, false).node.spec;
    let body: NodeSpecBody = serde_json::from_str(r#"{"Role":"manager"}"#).unwrap();
    let s = merge_node_spec(&base, &body).unwrap();
    assert_eq!(s.role, Role::Manager);
    assert_eq!(s.labels, base.labels);
    let body: NodeSpecBody = serde_json::from_str(r#"{"Availability":"sleepy"}"#).unwrap();
    assert_eq!(
        merge_node_spec(&base, &body).unwrap_err().message,
        "invalid Availability: \"sleepy\""
    );
}
