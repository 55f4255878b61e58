//! In-process nodes over real QUIC on loopback: authorisation and revocation
//! seen from the wire, which the cluster tests cannot reach (they only have
//! the CLIs).

use std::time::Duration;

use super::*;
use crate::store::Availability;

async fn node(dir: &std::path::Path, name: &str) -> NodeHandle {
    let _ = rustls::crypto::ring::default_provider().install_default();
    NodeHandle::start(NodeConfig {
        data_dir: dir.join(name),
        hostname: Some(name.into()),
        executor: None,
        network: None,
        registries: Default::default(),
    })
    .await
    .expect("node starts")
}

fn addr(net: u8, host: u8) -> SocketAddr {
    SocketAddr::from(([127, 90, net, host], 2377))
}

/// A one-manager swarm and one worker joined to it.
async fn swarm(dir: &std::path::Path, net: u8) -> (NodeHandle, NodeHandle) {
    let m = node(dir, "m").await;
    m.swarm_init(InitRequest {
        listen_addr: addr(net, 1),
        advertise_addr: Some(addr(net, 1)),
        force_new_cluster: false,
        availability: Availability::Active,
        spec: ClusterSpec::default(),
        addr_pool: Default::default(),
    })
    .await
    .expect("init");
    let token = m.swarm_inspect().await.expect("inspect").worker_token;
    let w = node(dir, "w").await;
    w.swarm_join(JoinRequest {
        listen_addr: addr(net, 2),
        advertise_addr: Some(addr(net, 2)),
        remote_addrs: vec![addr(net, 1).to_string()],
        token,
        availability: Availability::Active,
    })
    .await
    .expect("join");
    (m, w)
}

async fn call_as(from: &NodeHandle, to: SocketAddr, req: &Request) -> Result<Reply, String> {
    let r = from.current().expect("in a swarm");
    let bytes = r
        .transport
        .call(
            to,
            crate::transport::MANAGER_SERVER_NAME,
            rpc::encode(req),
            Duration::from_secs(5),
        )
        .await
        .map_err(|e| e.to_string())?;
    rpc::decode(&bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_certificate_cannot_make_manager_calls() {
    let dir = tempfile::tempdir().expect("tmp");
    let (m, w) = swarm(dir.path(), 1).await;
    let cmd = Command::RemoveNode {
        id: m.manager().expect("manager").me.node_id.clone(),
    };
    for req in [
        Request::Propose(cmd),
        Request::Elect,
        Request::RaftJoin {
            node_id: crate::store::NodeId("x".into()),
            raft_id: 5,
            addr: "127.0.0.1:1".into(),
        },
        Request::Vote(openraft::raft::VoteRequest::new(
            openraft::Vote::new(99, 5),
            None,
        )),
    ] {
        let what = format!("{req:?}");
        match call_as(&w, addr(1, 1), &req).await {
            Ok(Reply::Error(RpcError::PermissionDenied(_))) => {}
            other => panic!("{what}: a worker was not refused: {other:?}"),
        }
    }
    // It may still do what workers do.
    let hb = Request::Heartbeat(rpc::Heartbeat {
        node_id: w.current().expect("w").file().node_id.clone(),
        role: Role::Worker,
        description: NodeDescription::default(),
    });
    assert!(matches!(
        call_as(&w, addr(1, 1), &hb).await,
        Ok(Reply::Heartbeat(_))
    ));
    // The manager's state is untouched.
    assert_eq!(m.nodes().await.expect("nodes").len(), 2);
    w.shutdown().await;
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_node_is_cut_off_at_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let (m, w) = swarm(dir.path(), 2).await;
    let wid = w.current().expect("w").file().node_id.clone();
    let hb = Request::Heartbeat(rpc::Heartbeat {
        node_id: wid.clone(),
        role: Role::Worker,
        description: NodeDescription::default(),
    });
    // An open connection exists and works.
    assert!(matches!(
        call_as(&w, addr(2, 1), &hb).await,
        Ok(Reply::Heartbeat(_))
    ));
    m.node_remove(&wid.0, true).await.expect("rm --force");
    // The open connection is closed and a new one is refused.
    let mut refused = None;
    for _ in 0..20 {
        match call_as(&w, addr(2, 1), &hb).await {
            Err(e) => {
                refused = Some(e);
                break;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let e = refused.expect("the removed node's calls are refused");
    assert!(
        e.contains("revoked") || e.contains("closed") || e.contains("removed"),
        "{e}"
    );
    for _ in 0..3 {
        assert!(call_as(&w, addr(2, 1), &hb).await.is_err(), "stays refused");
    }
    w.shutdown().await;
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_certificate_expired_comes_back_as_itself() {
    let dir = tempfile::tempdir().expect("tmp");
    let (m, w) = swarm(dir.path(), 3).await;
    let r = w.current().expect("w");
    let wid = r.file().node_id.clone();
    let hb = Request::Heartbeat(rpc::Heartbeat {
        node_id: wid.clone(),
        role: Role::Worker,
        description: NodeDescription::default(),
    });
    // Give the worker a certificate for its own key that lives 2 seconds,
    // as if it had been in a drawer past its certificate's expiry.
    let cluster = m
        .manager()
        .expect("m")
        .state
        .read()
        .cluster
        .clone()
        .expect("cluster");
    let key_pem = r.certs().key_pem;
    let csr = pki::csr_for_key(&key_pem).expect("csr");
    let short = pki::sign_csr(
        &cluster.root_ca,
        &csr,
        &wid,
        Role::Worker,
        &cluster.id,
        Duration::from_secs(2),
    )
    .expect("sign");
    r.install_certs(Certs {
        ca_pem: cluster.root_ca.cert_pem.clone(),
        cert_pem: short.clone(),
        key_pem,
    })
    .expect("install");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // By now the short certificate has expired, unless the session already
    // noticed and came back (a busy CI machine can be that slow to get here).
    assert!(r.cert_expired() || r.certs().cert_pem != short);
    // (Open connections outlive the certificate: TLS checks it only when a
    // connection is made. The session's renewal timer still points at the
    // old certificate's 90 days, so only coming back can fix this one.)

    // The session comes back by itself with the stored worker token.
    let mut back = false;
    for _ in 0..100 {
        if !r.cert_expired()
            && r.certs().cert_pem != short
            && call_as(&w, addr(3, 1), &hb).await.is_ok()
        {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(back, "the node came back with a fresh certificate");
    assert_eq!(r.file().node_id.clone(), wid, "as the same node");
    let info = pki::parse_node_cert_pem(&r.certs().cert_pem).expect("cert");
    let left = info
        .not_after
        .duration_since(std::time::SystemTime::now())
        .expect("valid");
    assert!(
        left > Duration::from_secs(89 * 24 * 3600),
        "a full-length certificate: {left:?}"
    );
    assert_eq!(
        m.nodes().await.expect("nodes").len(),
        2,
        "no second node record"
    );
    w.shutdown().await;
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coming_back_needs_the_nodes_own_key() {
    let dir = tempfile::tempdir().expect("tmp");
    let (m, w) = swarm(dir.path(), 4).await;
    let token = m.swarm_inspect().await.expect("inspect").worker_token;
    let wid = w.current().expect("w").file().node_id.clone();
    // A stranger with a valid token but another key claims the worker's ID.
    let stranger = Transport::bind(addr(4, 9), None).expect("bind");
    let err = join_through(
        &stranger,
        &NodeDescription::default(),
        &pki::JoinToken::parse(&token).expect("token"),
        &[addr(4, 1).to_string()],
        None,
        crate::store::Availability::Active,
        Some((wid, pki::new_key_and_csr().expect("key").key_pem)),
    )
    .await
    .expect_err("must be refused");
    assert!(
        err.to_string().contains("can only come back as itself"),
        "{err}"
    );
    stranger.close().await;
    w.shutdown().await;
    m.shutdown().await;
}

/// A caller's certificate is parsed once and answered from the cache
/// after; a certificate that does not parse is refused every time.
#[test]
fn callers_certificates_are_parsed_once() {
    let ca = pki::new_root_ca().expect("ca");
    let kc = pki::new_key_and_csr().expect("csr");
    let id = pki::new_node_id();
    let pem = pki::sign_csr(
        &ca,
        &kc.csr_pem,
        &id,
        crate::store::Role::Worker,
        "clusterid",
        Duration::from_secs(3600),
    )
    .expect("signed");
    let der = pki::cert_der_from_pem(&pem).expect("der");
    let handler = RpcHandler {
        running: Weak::new(),
        certs: Mutex::new(HashMap::new()),
    };
    let first = handler.cert_info(der.clone()).expect("parses");
    assert_eq!(first.node_id, id);
    assert_eq!(handler.certs.lock().expect("lock").len(), 1);
    assert_eq!(handler.cert_info(der).expect("cached"), first);
    assert_eq!(handler.certs.lock().expect("lock").len(), 1);
    let bad = CertificateDer::from(vec![0x30, 0x03, 1, 2, 3]);
    assert!(handler.cert_info(bad.clone()).is_err());
    assert!(handler.cert_info(bad).is_err(), "not cached as good");
}
