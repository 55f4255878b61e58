use super::*;
use crate::store::{Cluster, ClusterSpec, JoinSecrets, Node, NodeId, RootCa};

fn cluster(root: RootCa) -> Cluster {
    Cluster {
        id: "c".into(),
        version: 1,
        created_at: String::new(),
        updated_at: String::new(),
        spec: ClusterSpec::default(),
        root_ca: root,
        join_secrets: JoinSecrets {
            worker: "w".into(),
            manager: "m".into(),
        },
        unlock_key: None,
        rotation: None,
        addr_pool: Default::default(),
    }
}

fn node(id: &str, state: NodeState) -> Node {
    let mut n: Node = serde_json::from_value(serde_json::json!({
        "id": id, "version": 1, "created_at": "", "updated_at": "",
        "spec": {"role": "worker"},
        "description": {"hostname": id, "platform": {"os": "linux", "architecture": "x86_64"},
                        "nano_cpus": 0, "memory_bytes": 0, "engine_version": ""},
        "status": {"state": "ready"}, "role": "worker", "manager_status": null
    }))
    .expect("node");
    n.status.state = state;
    n
}

fn rotate(state: &mut State) -> RootCa {
    let old = state.cluster.as_ref().expect("cluster").root_ca.clone();
    let new = pki::new_root_ca().expect("root");
    let cross = pki::cross_sign(&new, &old).expect("cross");
    let r = state.apply(
        10,
        &Command::RotateRootCa {
            root_ca: new.clone(),
            from_root_cert: old.cert_pem.clone(),
            cross_signed: vec![cross],
            now: "t".into(),
        },
    );
    assert!(r.error.is_none(), "{r:?}");
    new
}

#[test]
fn rotation_waits_for_live_nodes_only_and_bundles_both_roots_meanwhile() {
    let old = pki::new_root_ca().expect("root");
    let mut state = State::default();
    state.cluster = Some(cluster(old.clone()));
    for (id, s) in [
        ("a", NodeState::Ready),
        ("b", NodeState::Ready),
        ("c", NodeState::Down),
    ] {
        state.nodes.insert(NodeId(id.into()), node(id, s));
        let tls = node_tls(state.cluster.as_ref().expect("cluster")).expect("tls");
        state.node_tls.insert(NodeId(id.into()), tls);
    }
    assert_eq!(rotation_done(&state), None, "no rotation, nothing to do");
    let c = state.cluster.clone().expect("cluster");
    assert!(!needs_new_cert(state.node_tls.get(&NodeId("a".into())), &c));

    let new = rotate(&mut state);
    let c = state.cluster.clone().expect("cluster");
    let bundle = trust_bundle(&c);
    assert!(
        bundle.starts_with(new.cert_pem.trim_end()),
        "current root first"
    );
    assert!(
        bundle.contains(old.cert_pem.trim_end()),
        "old root still trusted"
    );
    assert_eq!(pki::certs_from_pem(&bundle).expect("bundle").len(), 2);
    assert_eq!(
        pki::certs_from_pem(&issued_chain(&c, &new.cert_pem))
            .expect("chain")
            .len(),
        2,
        "issued certificates carry the cross-signed root"
    );
    assert!(needs_new_cert(state.node_tls.get(&NodeId("a".into())), &c));
    assert!(needs_new_cert(None, &c), "unknown nodes renew");

    // a moves; b has not: not done. b moves; c is Down: done.
    let tls = node_tls(&c).expect("tls");
    state.node_tls.insert(NodeId("a".into()), tls.clone());
    assert_eq!(rotation_done(&state), None);
    state.node_tls.insert(NodeId("b".into()), tls);
    assert_eq!(rotation_done(&state), Some(new.cert_pem.clone()));

    // Completing drops the old root; everyone renews once more for the bundle.
    let r = state.apply(
        11,
        &Command::CompleteCaRotation {
            root_cert: new.cert_pem.clone(),
            now: "t".into(),
        },
    );
    assert!(r.error.is_none(), "{r:?}");
    let c = state.cluster.clone().expect("cluster");
    assert!(c.rotation.is_none());
    assert_eq!(
        pki::certs_from_pem(&trust_bundle(&c))
            .expect("bundle")
            .len(),
        1
    );
    assert!(needs_new_cert(state.node_tls.get(&NodeId("a".into())), &c));
    assert_eq!(rotation_done(&state), None);
}

#[test]
fn a_stale_rotation_or_completion_is_refused() {
    let mut state = State::default();
    state.cluster = Some(cluster(pki::new_root_ca().expect("root")));
    let first = rotate(&mut state);
    // A second rotation prepared against the old root loses.
    let r = state.apply(
        12,
        &Command::RotateRootCa {
            root_ca: pki::new_root_ca().expect("root"),
            from_root_cert: "not the current root".into(),
            cross_signed: vec![],
            now: "t".into(),
        },
    );
    assert!(r.error.is_some());
    // A rotation during a rotation keeps every older root trusted.
    let second = rotate(&mut state);
    let c = state.cluster.clone().expect("cluster");
    assert_eq!(c.rotation.as_ref().expect("rotation").previous.len(), 2);
    assert_eq!(
        pki::certs_from_pem(&trust_bundle(&c))
            .expect("bundle")
            .len(),
        3
    );
    // Completing the first rotation's root is refused: a newer one runs.
    let r = state.apply(
        13,
        &Command::CompleteCaRotation {
            root_cert: first.cert_pem,
            now: "t".into(),
        },
    );
    assert!(r.error.is_some());
    assert_eq!(state.cluster.as_ref().expect("cluster").root_ca, second);
}
