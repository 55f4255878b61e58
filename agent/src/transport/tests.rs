use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_util::sync::CancellationToken;

use super::frame::{self, FrameError, REQUEST_LIMIT, RESPONSE_LIMIT};
use super::tls::{self, ServerTrust};
use super::*;

const PATIENCE: Duration = Duration::from_secs(10);

struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        TestCa {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA cert"),
        }
    }

    fn cert(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A node identity with DNS SANs `role` and `node_id`, trusting `trusted` as the CA.
    fn node(&self, role: &str, node_id: &str, trusted: &TestCa) -> Identity {
        let mut params =
            CertificateParams::new(vec![role.to_owned(), node_id.to_owned()]).expect("params");
        params.distinguished_name.push(DnType::CommonName, node_id);
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, role);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().expect("node key");
        let cert = params.signed_by(&key, &self.issuer).expect("node cert");
        Identity {
            ca_cert: trusted.cert(),
            cert: cert.der().clone(),
            key: Arc::new(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                key.serialize_der(),
            ))),
            intermediates: Vec::new(),
            extra_roots: Vec::new(),
        }
    }

    fn manager(&self, node_id: &str) -> Identity {
        self.node("swarm-manager", node_id, self)
    }

    fn worker(&self, node_id: &str) -> Identity {
        self.node("swarm-worker", node_id, self)
    }
}

/// Echoes `alpn|has-cert|request`; a request starting with `fail` is refused. Records the
/// peers it saw.
#[derive(Default)]
struct Echo {
    peers: Mutex<Vec<Peer>>,
}

impl Handler for Echo {
    async fn handle(&self, peer: Peer, request: Vec<u8>) -> Result<Vec<u8>, String> {
        self.peers.lock().expect("peers").push(peer.clone());
        if request.starts_with(b"fail") {
            return Err(format!("refused: {}", String::from_utf8_lossy(&request)));
        }
        let mut response = peer.alpn.clone();
        response.extend_from_slice(if peer.cert.is_some() {
            b"|cert|"
        } else {
            b"|none|"
        });
        response.extend_from_slice(&request);
        Ok(response)
    }
}

impl Echo {
    fn peers(&self) -> Vec<Peer> {
        self.peers.lock().expect("peers").clone()
    }
}

fn loopback() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

struct Server {
    transport: Transport,
    echo: Arc<Echo>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    fn start(identity: Identity) -> Server {
        Server::start_at(loopback(), identity)
    }

    fn start_at(addr: SocketAddr, identity: Identity) -> Server {
        let transport = Transport::bind(addr, Some(identity)).expect("bind server");
        let echo = Arc::new(Echo::default());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn({
            let transport = transport.clone();
            let echo = echo.clone();
            let shutdown = shutdown.clone();
            async move { transport.serve(echo, shutdown).await }
        });
        Server {
            transport,
            echo,
            shutdown,
            task,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.transport.local_addr()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("serve task");
        self.transport.close().await;
    }
}

#[tokio::test]
async fn call_round_trip_with_mtls() {
    let ca = TestCa::new("swarm-ca");
    let server = Server::start(ca.manager("manager-1"));
    let worker = ca.worker("worker-1");
    let client = Transport::bind(loopback(), Some(worker.clone())).expect("bind client");

    let response = client
        .call(server.addr(), "swarm-manager", b"hello".to_vec(), PATIENCE)
        .await
        .expect("call");
    assert_eq!(response, b"apiary/1|cert|hello");

    let peers = server.echo.peers();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].alpn, ALPN_CLUSTER);
    assert_eq!(peers[0].cert.as_ref(), Some(&worker.cert));
    assert_eq!(peers[0].remote, client.local_addr());

    // Empty payloads are fine both ways.
    let response = client
        .call(server.addr(), "swarm-manager", Vec::new(), PATIENCE)
        .await;
    assert_eq!(response.expect("empty call"), b"apiary/1|cert|");
    client.close().await;
    server.stop().await;
}

#[tokio::test]
async fn large_payload_round_trip() {
    let ca = TestCa::new("swarm-ca");
    let server = Server::start(ca.manager("manager-1"));
    let client = Transport::bind(loopback(), Some(ca.worker("worker-1"))).expect("bind");
    let request: Vec<u8> = (0..4 << 20).map(|i| (i % 251) as u8).collect();
    let response = client
        .call(server.addr(), "swarm-manager", request.clone(), PATIENCE)
        .await
        .expect("call");
    assert_eq!(&response[..b"apiary/1|cert|".len()], b"apiary/1|cert|");
    assert_eq!(&response[b"apiary/1|cert|".len()..], &request[..]);
    client.close().await;
    server.stop().await;
}

#[tokio::test]
async fn handler_error_comes_back_as_remote() {
    let ca = TestCa::new("swarm-ca");
    let server = Server::start(ca.manager("manager-1"));
    let client = Transport::bind(loopback(), Some(ca.worker("worker-1"))).expect("bind");
    let err = client
        .call(
            server.addr(),
            "swarm-manager",
            b"fail now".to_vec(),
            PATIENCE,
        )
        .await
        .expect_err("handler refuses");
    match &err {
        TransportError::Remote(message) => assert_eq!(message, "refused: fail now"),
        other => panic!("expected Remote, got {other:?}"),
    }
    assert!(!err.is_retriable());
    assert_eq!(err.to_string(), "refused: fail now");
    // The connection survives a handler error.
    let ok = client
        .call(server.addr(), "swarm-manager", b"again".to_vec(), PATIENCE)
        .await;
    assert_eq!(ok.expect("second call"), b"apiary/1|cert|again");
    client.close().await;
    server.stop().await;
}

#[tokio::test]
async fn client_without_certificate_is_refused_on_cluster_alpn() {
    let ca = TestCa::new("swarm-ca");
    let server = Server::start(ca.manager("manager-1"));
    let client = Transport::bind(loopback(), None).expect("bind");

    // The public API refuses before dialling.
    let err = client
        .call(server.addr(), "swarm-manager", b"x".to_vec(), PATIENCE)
        .await
        .expect_err("no identity");
    assert!(matches!(err, TransportError::NoIdentity { .. }), "{err:?}");

    // A hand-made client that offers apiary/1 without a certificate is closed by the server.
    let config =
        tls::client_config(ServerTrust::Ca(&ca.cert()), None, ALPN_CLUSTER).expect("config");
    let err = client
        .call_once(config, server.addr(), "swarm-manager", b"sneaky")
        .await
        .expect_err("server refuses");
    match &err {
        TransportError::Tls { reason, .. } => {
            assert!(
                reason.contains("requires a cluster certificate"),
                "{reason}"
            )
        }
        other => panic!("expected Tls, got {other:?}"),
    }
    assert!(!err.is_retriable());
    assert!(server.echo.peers().is_empty(), "the handler must not run");
    client.close().await;
    server.stop().await;
}

#[tokio::test]
async fn client_certificate_from_another_ca_is_refused() {
    let ca = TestCa::new("swarm-ca");
    let other = TestCa::new("other-ca");
    let server = Server::start(ca.manager("manager-1"));
    // Trusts the right CA, but presents a certificate from another one.
    let intruder = other.node("swarm-worker", "intruder", &ca);
    let client = Transport::bind(loopback(), Some(intruder)).expect("bind");
    let err = client
        .call(server.addr(), "swarm-manager", b"x".to_vec(), PATIENCE)
        .await
        .expect_err("refused");
    match &err {
        TransportError::Tls { reason, .. } => {
            assert!(reason.contains("refused our certificate"), "{reason}")
        }
        other => panic!("expected Tls, got {other:?}"),
    }
    assert!(!err.is_retriable());
    assert!(server.echo.peers().is_empty(), "the handler must not run");
    client.close().await;
    server.stop().await;
}

#[tokio::test]
async fn server_certificate_from_another_ca_is_refused() {
    let ca = TestCa::new("swarm-ca");
    let other = TestCa::new("other-ca");
    let server = Server::start(other.manager("impostor"));
    let client = Transport::bind(loopback(), Some(ca.worker("worker-1"))).expect("bind");
    let err = client
        .call(server.addr(), "swarm-manager", b"x".to_vec(), PATIENCE)
        .await
        .expect_err("refused");
    let message = err.to_string();
    assert!(
        message.contains("the manager's certificate is not signed by the cluster CA"),
        "{message}"
    );
    assert!(!err.is_retriable());
    client.close().await;
    server.stop().await;
}

#[tokio::test]
async fn server_name_must_match() {
    let ca = TestCa::new("swarm-ca");
    let server = Server::start(ca.worker("worker-2"));
    let client = Transport::bind(loopback(), Some(ca.worker("worker-1"))).expect("bind");
    let err = client
        .call(server.addr(), "swarm-manager", b"x".to_vec(), PATIENCE)
        .await
        .expect_err("not a manager");
    assert!(err.to_string().contains("not valid for the name"), "{err}");
    let ok = client
        .call(server.addr(), "worker-2", b"x".to_vec(), PATIENCE)
        .await;
    assert_eq!(ok.expect("by node ID"), b"apiary/1|cert|x");
    client.close().await;
    server.stop().await;
}

#[tokio::test]
async fn join_call_without_ca_returns_the_server_chain() {
    let ca = TestCa::new("swarm-ca");
    let manager = ca.manager("manager-1");
    let server = Server::start(manager.clone());
    let joiner = Transport::bind(loopback(), None).expect("bind");
    let (response, chain) = joiner
        .join_call(server.addr(), None, b"give me the CA".to_vec(), PATIENCE)
        .await
        .expect("join call");
    assert_eq!(response, b"apiary-join/1|none|give me the CA");
    assert_eq!(chain, vec![manager.cert.clone(), ca.cert()]);
    let peers = server.echo.peers();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].alpn, ALPN_JOIN);
    assert!(peers[0].cert.is_none());

    // Pinned to the right CA, the join call works too.
    let (response, _) = joiner
        .join_call(server.addr(), Some(ca.cert()), b"join".to_vec(), PATIENCE)
        .await
        .expect("pinned join call");
    assert_eq!(response, b"apiary-join/1|none|join");
    joiner.close().await;
    server.stop().await;
}

#[tokio::test]
async fn join_call_with_the_wrong_ca_fails() {
    let ca = TestCa::new("swarm-ca");
    let other = TestCa::new("other-ca");
    let server = Server::start(ca.manager("manager-1"));
    let joiner = Transport::bind(loopback(), None).expect("bind");
    let err = joiner
        .join_call(
            server.addr(),
            Some(other.cert()),
            b"join".to_vec(),
            PATIENCE,
        )
        .await
        .expect_err("wrong CA");
    assert!(
        err.to_string().contains("not signed by the cluster CA"),
        "{err}"
    );
    assert!(!err.is_retriable());
    assert!(server.echo.peers().is_empty());
    joiner.close().await;
    server.stop().await;
}

#[tokio::test]
async fn set_identity_switches_the_certificate_of_the_next_call() {
    let ca = TestCa::new("swarm-ca");
    let server = Server::start(ca.manager("manager-1"));
    let old = ca.worker("worker-1");
    let new = ca.manager("worker-1"); // promoted: new certificate, same node
    let client = Transport::bind(loopback(), Some(old.clone())).expect("bind");
    client
        .call(server.addr(), "swarm-manager", b"1".to_vec(), PATIENCE)
        .await
        .expect("call 1");
    client.set_identity(new.clone()).expect("set identity");
    client
        .call(server.addr(), "swarm-manager", b"2".to_vec(), PATIENCE)
        .await
        .expect("call 2");
    let certs: Vec<_> = server.echo.peers().into_iter().map(|p| p.cert).collect();
    assert_eq!(certs, vec![Some(old.cert), Some(new.cert)]);
    client.close().await;
    server.stop().await;
}

#[tokio::test]
async fn set_identity_enables_serving_on_a_joined_node() {
    let ca = TestCa::new("swarm-ca");
    // Bound without a certificate (joining), then given one: it now serves cluster calls.
    let node = Transport::bind(loopback(), None).expect("bind");
    let echo = Arc::new(Echo::default());
    let shutdown = CancellationToken::new();
    let serving = tokio::spawn({
        let (node, echo, shutdown) = (node.clone(), echo.clone(), shutdown.clone());
        async move { node.serve(echo, shutdown).await }
    });
    node.set_identity(ca.manager("manager-2"))
        .expect("identity");
    let client = Transport::bind(loopback(), Some(ca.worker("worker-1"))).expect("bind");
    let response = client
        .call(node.local_addr(), "swarm-manager", b"hi".to_vec(), PATIENCE)
        .await;
    assert_eq!(response.expect("call"), b"apiary/1|cert|hi");
    shutdown.cancel();
    serving.await.expect("serve");
    client.close().await;
    node.close().await;
}

#[tokio::test]
async fn set_identity_rejects_a_key_that_does_not_fit() {
    let ca = TestCa::new("swarm-ca");
    let client = Transport::bind(loopback(), None).expect("bind");
    let mut broken = ca.worker("worker-1");
    broken.key = ca.worker("worker-2").key;
    let err = client.set_identity(broken).expect_err("mismatched key");
    assert!(matches!(err, TransportError::Identity(_)), "{err:?}");
    client.close().await;
}

#[test]
fn frame_length_codec_enforces_the_limit() {
    assert_eq!(frame::encode_len(5, REQUEST_LIMIT).ok(), Some([0, 0, 0, 5]));
    assert!(frame::encode_len(MAX_FRAME, REQUEST_LIMIT).is_ok());
    assert!(matches!(
        frame::encode_len(MAX_FRAME + 1, REQUEST_LIMIT),
        Err(FrameError::TooLarge(len)) if len == MAX_FRAME as u64 + 1
    ));
    assert!(frame::encode_len(MAX_FRAME + 1, RESPONSE_LIMIT).is_ok());
    assert_eq!(
        frame::decode_len([0, 0, 1, 0], REQUEST_LIMIT).ok(),
        Some(256)
    );
    let too_big = u32::try_from(MAX_FRAME + 1).expect("fits").to_be_bytes();
    assert!(matches!(
        frame::decode_len(too_big, REQUEST_LIMIT),
        Err(FrameError::TooLarge(_))
    ));
    assert!(matches!(
        frame::decode_len([0xff; 4], RESPONSE_LIMIT),
        Err(FrameError::TooLarge(_))
    ));
}

#[tokio::test]
async fn oversized_request_is_refused_before_sending() {
    let ca = TestCa::new("swarm-ca");
    let client = Transport::bind(loopback(), Some(ca.worker("worker-1"))).expect("bind");
    // Nobody listens there: the size check comes first.
    let err = client
        .call(
            loopback(),
            "swarm-manager",
            vec![0; MAX_FRAME + 1],
            PATIENCE,
        )
        .await
        .expect_err("too large");
    assert!(
        matches!(err, TransportError::FrameTooLarge { .. }),
        "{err:?}"
    );
    assert!(!err.is_retriable());
    client.close().await;
}

#[tokio::test]
async fn server_refuses_an_oversized_request_frame() {
    let ca = TestCa::new("swarm-ca");
    let server = Server::start(ca.manager("manager-1"));
    let client = Transport::bind(loopback(), Some(ca.worker("worker-1"))).expect("bind");
    let (conn, _) = client
        .pooled_connection(server.addr(), "swarm-manager")
        .await
        .expect("connect");
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    let prefix = u32::try_from(MAX_FRAME + 1).expect("fits").to_be_bytes();
    send.write_all(&prefix).await.expect("write prefix");
    let body = frame::read_frame(&mut recv, RESPONSE_LIMIT)
        .await
        .expect("answer");
    let err = parse_response(body, server.addr()).expect_err("refused");
    assert!(err.to_string().contains("exceeds"), "{err}");
    assert!(server.echo.peers().is_empty());
    client.close().await;
    server.stop().await;
}

#[tokio::test]
async fn concurrent_calls_share_one_connection() {
    let ca = TestCa::new("swarm-ca");
    let server = Server::start(ca.manager("manager-1"));
    let client = Transport::bind(loopback(), Some(ca.worker("worker-1"))).expect("bind");
    let calls = (0..100).map(|i| {
        let client = client.clone();
        let addr = server.addr();
        async move {
            let request = format!("call {i}").into_bytes();
            let response = client.call(addr, "swarm-manager", request, PATIENCE).await;
            (i, response)
        }
    });
    for (i, response) in futures::future::join_all(calls).await {
        assert_eq!(
            response.expect("call"),
            format!("apiary/1|cert|call {i}").into_bytes()
        );
    }
    assert_eq!(client.inner.endpoint.open_connections(), 1);
    assert_eq!(server.transport.inner.endpoint.open_connections(), 1);
    let remotes: HashSet<_> = server.echo.peers().iter().map(|p| p.remote).collect();
    assert_eq!(remotes.len(), 1);
    client.close().await;
    server.stop().await;
}

#[tokio::test]
async fn call_reconnects_after_the_server_restarts() {
    let ca = TestCa::new("swarm-ca");
    let manager = ca.manager("manager-1");
    let server = Server::start(manager.clone());
    let addr = server.addr();
    let client = Transport::bind(loopback(), Some(ca.worker("worker-1"))).expect("bind");
    client
        .call(addr, "swarm-manager", b"before".to_vec(), PATIENCE)
        .await
        .expect("before");
    server.stop().await;

    // The port is free again once the old endpoint's driver task has let go of it.
    let mut released = false;
    for _ in 0..50 {
        if std::net::UdpSocket::bind(addr).is_ok() {
            released = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(released, "port {addr} not released");
    let server = Server::start_at(addr, manager);
    let response = client
        .call(addr, "swarm-manager", b"after".to_vec(), PATIENCE)
        .await;
    assert_eq!(response.expect("after restart"), b"apiary/1|cert|after");
    client.close().await;
    server.stop().await;
}

#[tokio::test]
async fn unanswered_call_times_out_and_is_retriable() {
    let ca = TestCa::new("swarm-ca");
    let silent = std::net::UdpSocket::bind(loopback()).expect("silent socket");
    let client = Transport::bind(loopback(), Some(ca.worker("worker-1"))).expect("bind");
    let timeout = Duration::from_millis(300);
    let err = client
        .call(
            silent.local_addr().expect("addr"),
            "swarm-manager",
            b"x".to_vec(),
            timeout,
        )
        .await
        .expect_err("no answer");
    assert!(matches!(err, TransportError::Timeout { .. }), "{err:?}");
    assert!(err.is_retriable());
    client.close().await;
}

#[tokio::test]
async fn bind_error_names_the_address() {
    let taken = std::net::UdpSocket::bind(loopback()).expect("socket");
    let addr = taken.local_addr().expect("addr");
    let err = Transport::bind(addr, None).err().expect("address in use");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}

#[tokio::test]
async fn serve_stops_on_shutdown_and_refuses_afterwards() {
    let ca = TestCa::new("swarm-ca");
    let server = Server::start(ca.manager("manager-1"));
    let addr = server.addr();
    let client = Transport::bind(loopback(), Some(ca.worker("worker-1"))).expect("bind");
    client
        .call(addr, "swarm-manager", b"x".to_vec(), PATIENCE)
        .await
        .expect("call");
    server.stop().await;
    let err = client
        .call(addr, "swarm-manager", b"x".to_vec(), Duration::from_secs(2))
        .await
        .expect_err("server gone");
    assert!(err.is_retriable(), "{err:?}");
    client.close().await;
}

/// Root CA rotation with the real pki: a certificate from the new root,
/// sent with the new root cross-signed by the old, is accepted by a peer
/// that trusts only the old root; once the old root is dropped, a
/// certificate from it is refused.
mod rotation {
    use super::*;
    use crate::pki;
    use crate::store::{NodeId, Role, RootCa};

    fn identity(
        signer: &RootCa,
        trusted: &[&RootCa],
        cross: &[String],
        id: &str,
        role: Role,
    ) -> Identity {
        let kc = pki::new_key_and_csr().expect("key");
        let cert = pki::sign_csr(
            signer,
            &kc.csr_pem,
            &NodeId(id.into()),
            role,
            "cluster",
            Duration::from_secs(3600),
        )
        .expect("sign");
        let root = |r: &RootCa| pki::cert_der_from_pem(&r.cert_pem).expect("root");
        Identity {
            ca_cert: root(trusted[0]),
            cert: pki::cert_der_from_pem(&cert).expect("cert"),
            key: Arc::new(pki::key_der_from_pem(&kc.key_pem).expect("key")),
            intermediates: cross
                .iter()
                .map(|c| pki::cert_der_from_pem(c).expect("cross"))
                .collect(),
            extra_roots: trusted[1..].iter().map(|r| root(r)).collect(),
        }
    }

    #[tokio::test]
    async fn cross_signed_new_certs_work_with_old_trust_and_old_certs_fail_after() {
        let old = pki::new_root_ca().expect("old root");
        let new = pki::new_root_ca().expect("new root");
        let cross = vec![pki::cross_sign(&new, &old).expect("cross-sign")];

        // A manager that has not moved yet: old certificate, old trust.
        let unmoved = Server::start(identity(&old, &[&old], &[], "m1", Role::Manager));
        // A node that moved: new certificate with the cross-signed root,
        // trusting both roots.
        let moved = identity(&new, &[&new, &old], &cross, "w1", Role::Worker);
        let client = Transport::bind(loopback(), Some(moved)).expect("bind");
        let r = client
            .call(unmoved.addr(), "swarm-manager", b"hi".to_vec(), PATIENCE)
            .await;
        assert_eq!(
            r.expect("old-trust server accepts a cross-signed new cert"),
            b"apiary/1|cert|hi"
        );

        // And a moved manager serves nodes that still trust only the old root.
        let moved_mgr = Server::start(identity(&new, &[&new, &old], &cross, "m2", Role::Manager));
        let unmoved_client = Transport::bind(
            loopback(),
            Some(identity(&old, &[&old], &[], "w2", Role::Worker)),
        )
        .expect("bind");
        let r = unmoved_client
            .call(moved_mgr.addr(), "swarm-manager", b"hi".to_vec(), PATIENCE)
            .await;
        assert!(
            r.is_ok(),
            "old-trust client must accept a moved manager: {r:?}"
        );

        // After completion: the manager trusts only the new root.
        let done = Server::start(identity(&new, &[&new], &[], "m3", Role::Manager));
        let r = unmoved_client
            .call(done.addr(), "swarm-manager", b"hi".to_vec(), PATIENCE)
            .await;
        assert!(
            r.is_err(),
            "a certificate from the dropped root must be refused: {r:?}"
        );
        assert!(
            done.echo.peers().is_empty(),
            "no call may reach the handler"
        );
        let r = client
            .call(done.addr(), "swarm-manager", b"hi".to_vec(), PATIENCE)
            .await;
        assert!(
            r.is_ok(),
            "a new certificate is accepted after completion: {r:?}"
        );

        for t in [client, unmoved_client] {
            t.close().await;
        }
        for s in [unmoved, moved_mgr, done] {
            s.stop().await;
        }
    }
}
