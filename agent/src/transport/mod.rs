//! Cluster transport: one QUIC endpoint per node, mutual TLS with the cluster CA, one
//! bi-stream per call carrying one length-prefixed request and one response.
//!
//! The transport moves opaque bytes. Message types and authorisation (which role may call
//! what) live in the caller, which learns who called from [`Peer`].
//!
//! Two ALPNs share the one UDP port:
//! - [`ALPN_CLUSTER`]: both sides present certificates signed by the cluster CA;
//! - [`ALPN_JOIN`]: the client presents no certificate (a joining node, or one whose
//!   certificate expired); the token in the request authorises it.
//!
//! Calls from this node reuse one pooled connection per (address, server name). The same
//! endpoint serves incoming connections once an identity is set.

mod error;
/// Public only so that the fuzz targets in `fuzz/` reach the frame decoder; not an API.
#[doc(hidden)]
pub mod frame;
mod tls;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use quinn::{Connection, ConnectionError, Endpoint, EndpointConfig, VarInt, WriteError};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use error::TransportError;

use error::from_connection_error;
use frame::{FrameError, REQUEST_LIMIT, RESPONSE_LIMIT, STATUS_ERR, STATUS_OK};

/// ALPN for calls between cluster members; a certificate from the cluster CA is required.
pub const ALPN_CLUSTER: &[u8] = b"apiary/1";
/// ALPN for joining; the only one a client without a certificate may use.
pub const ALPN_JOIN: &[u8] = b"apiary-join/1";
/// Largest request or response payload. Raft snapshots travel in one call, so this is big.
pub const MAX_FRAME: usize = 64 << 20;

/// Server name that managers' certificates carry as a DNS SAN, used for join calls.
pub const MANAGER_SERVER_NAME: &str = "swarm-manager";

/// Keep-alive pings keep NAT bindings open and let the idle timer see a live peer.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// A silent peer is declared gone after this long. Failover detection (dispatcher, raft
/// forwarding) relies on it, so it is short; five keep-alives fit in it, so one or two lost
/// packets on flaky Wi-Fi do not kill a healthy connection.
const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Concurrent calls per connection (QUIC bi-streams). Above this, calls wait for a free
/// stream rather than fail; 256 covers a dispatcher's burst of status reports and raft
/// pipelining with room to spare.
const MAX_CONCURRENT_CALLS: u32 = 256;
/// How long the server waits for a complete request once a stream is open: enough for a
/// MAX_FRAME snapshot over a slow (~0.5 MiB/s) link, short enough that idle streams from a
/// misbehaving client do not pile up.
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(120);
/// Error messages from handlers are cut to this size; they are for humans.
const MAX_ERROR_MESSAGE: usize = 64 << 10;
/// [`Transport::close`] waits this long for peers to acknowledge the close.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// QUIC application close codes this transport uses.
pub(crate) mod close_code {
    use quinn::VarInt;

    /// Normal end of a one-off connection (join calls).
    pub const DONE: VarInt = VarInt::from_u32(0);
    /// A client without a certificate tried [`super::ALPN_CLUSTER`].
    pub const CERTIFICATE_REQUIRED: VarInt = VarInt::from_u32(1);
    /// The client offered no ALPN we speak.
    pub const BAD_ALPN: VarInt = VarInt::from_u32(2);
    /// The node is shutting down.
    pub const SHUTDOWN: VarInt = VarInt::from_u32(3);
    /// Our certificate changed; reconnect to use the new one.
    pub const IDENTITY_CHANGED: VarInt = VarInt::from_u32(4);
    /// The peer's certificate is no longer admitted (its node was removed).
    pub const REVOKED: VarInt = VarInt::from_u32(5);
    /// The peer opened a new connection; this older one is dropped.
    pub const SUPERSEDED: VarInt = VarInt::from_u32(6);
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Decides whether a peer may (still) talk to us: revocation of removed
/// nodes, which the TLS layer cannot know about. Checked when a connection
/// is accepted and again by [`Transport::revalidate`].
pub type Admission = Arc<dyn Fn(&Peer) -> bool + Send + Sync>;

/// Stream stop code when a request frame is refused as too large.
const STOP_TOO_LARGE: VarInt = VarInt::from_u32(1);

/// A node's TLS identity: the cluster root CA, its own certificate and key (DER).
///
/// The certificate should carry both the serverAuth and clientAuth extended key usages (or
/// none), because every node is both client and server.
#[derive(Clone)]
pub struct Identity {
    pub ca_cert: CertificateDer<'static>,
    pub cert: CertificateDer<'static>,
    pub key: Arc<PrivateKeyDer<'static>>,
    /// Certificates presented between our leaf and the CA: during a root CA
    /// rotation, the new root cross-signed by the old one, so that peers
    /// that still trust only the old root accept a certificate from the new.
    pub intermediates: Vec<CertificateDer<'static>>,
    /// Roots trusted besides `ca_cert`: the previous root while a rotation
    /// is in progress. Empty otherwise, so a dropped root is refused.
    pub extra_roots: Vec<CertificateDer<'static>>,
}

impl fmt::Debug for Identity {
    // Never print the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("ca_cert", &format_args!("{} bytes", self.ca_cert.len()))
            .field("cert", &format_args!("{} bytes", self.cert.len()))
            .field("intermediates", &self.intermediates.len())
            .field("extra_roots", &self.extra_roots.len())
            .finish_non_exhaustive()
    }
}

/// Who called: the remote address, the ALPN used, and the client's leaf certificate if it
/// presented one (already verified against our CA by rustls).
#[derive(Clone, Debug)]
pub struct Peer {
    pub remote: SocketAddr,
    pub alpn: Vec<u8>,
    pub cert: Option<CertificateDer<'static>>,
}

/// Server side: one call per bi-stream. `Ok(bytes)` is the response; `Err(message)` reaches
/// the client as [`TransportError::Remote`].
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        peer: Peer,
        request: Vec<u8>,
    ) -> impl std::future::Future<Output = Result<Vec<u8>, String>> + Send;
}

/// The QUIC endpoint of this node. Cheap to clone.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: Endpoint,
    local_addr: SocketAddr,
    state: Mutex<State>,
    admission: Mutex<Option<Admission>>,
    /// Accepted connections, so that revocation can close them.
    accepted: Mutex<Vec<(Connection, Peer)>>,
}

impl Inner {
    /// Close our pooled connections to `addr` (every server name).
    async fn drop_pooled_to(&self, addr: SocketAddr) {
        let slots: Vec<Arc<Slot>> = {
            let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state
                .pool
                .iter()
                .filter(|(k, _)| k.addr == addr)
                .map(|(_, s)| s.clone())
                .collect()
        };
        for slot in slots {
            if let Some(c) = slot.lock().await.take() {
                c.close(close_code::SUPERSEDED, b"peer restarted");
            }
        }
    }

    fn admitted(&self, peer: &Peer) -> bool {
        let admission = lock(&self.admission).clone();
        admission.is_none_or(|a| a(peer))
    }
}

struct State {
    /// mTLS client config for [`ALPN_CLUSTER`]; `None` until the node has an identity.
    cluster_client: Option<quinn::ClientConfig>,
    /// One connection per (address, server name). The async mutex serialises connecting, so
    /// concurrent first calls share one handshake instead of racing to open several.
    pool: HashMap<PoolKey, Arc<Slot>>,
}

type Slot = tokio::sync::Mutex<Option<Connection>>;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PoolKey {
    addr: SocketAddr,
    server_name: String,
}

/// Why a call on one connection failed, and whether trying once more on a fresh connection
/// is safe (the request cannot have reached a handler).
struct Failure {
    error: TransportError,
    retry: bool,
}

impl Transport {
    /// Bind one UDP socket for both directions. `identity: None` makes a client-only
    /// endpoint without a certificate (a joining node); serving is enabled by an identity.
    ///
    /// Must be called inside a tokio runtime.
    pub fn bind(
        listen: SocketAddr,
        identity: Option<Identity>,
    ) -> Result<Transport, TransportError> {
        Self::bind_with_reset_secret(listen, identity, None)
    }

    /// [`Transport::bind`] with a stateless-reset secret that survives
    /// restarts. A node that restarts with the same secret answers packets
    /// of its previous life's connections with a valid stateless reset, so
    /// its peers drop those connections at once instead of waiting out the
    /// idle timeout (which otherwise stalls raft elections after a restart).
    pub fn bind_with_reset_secret(
        listen: SocketAddr,
        identity: Option<Identity>,
        reset_secret: Option<[u8; 32]>,
    ) -> Result<Transport, TransportError> {
        let endpoint_config = match reset_secret {
            Some(secret) => EndpointConfig::new(Arc::new(ring::hmac::Key::new(
                ring::hmac::HMAC_SHA256,
                &secret,
            ))),
            None => EndpointConfig::default(),
        };
        let (server, cluster_client) = match &identity {
            Some(identity) => (
                Some(tls::server_config(identity)?),
                Some(tls::cluster_client_config(identity)?),
            ),
            None => (None, None),
        };
        let bind_error = |source| TransportError::Bind {
            addr: listen,
            source,
        };
        let runtime = quinn::default_runtime().ok_or_else(|| {
            bind_error(std::io::Error::other(
                "no tokio runtime to drive the endpoint",
            ))
        })?;
        let socket = std::net::UdpSocket::bind(listen).map_err(bind_error)?;
        let endpoint =
            Endpoint::new(endpoint_config, server, socket, runtime).map_err(bind_error)?;
        let local_addr = endpoint.local_addr().map_err(bind_error)?;
        debug!(%local_addr, with_identity = identity.is_some(), "transport bound");
        Ok(Transport {
            inner: Arc::new(Inner {
                endpoint,
                local_addr,
                state: Mutex::new(State {
                    cluster_client,
                    pool: HashMap::new(),
                }),
                admission: Mutex::new(None),
                accepted: Mutex::new(Vec::new()),
            }),
        })
    }

    /// The bound address (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// Replace the identity (certificate renewal, role change, new CA). New incoming
    /// handshakes and new outgoing connections use it; pooled outgoing connections are
    /// closed so the next call reconnects with the new certificate (calls in flight on them
    /// fail with a retriable [`TransportError::Closed`]). Incoming connections that are
    /// already established are kept.
    ///
    /// Deviation from the brief: returns an error (and changes nothing) when the identity is
    /// unusable, e.g. a key that does not match the certificate.
    pub fn set_identity(&self, identity: Identity) -> Result<(), TransportError> {
        let server = tls::server_config(&identity)?;
        let client = tls::cluster_client_config(&identity)?;
        self.inner.endpoint.set_server_config(Some(server));
        let old_pool = {
            let mut state = self.state();
            state.cluster_client = Some(client);
            std::mem::take(&mut state.pool)
        };
        for slot in old_pool.into_values() {
            // A slot that is locked is being connected right now; that connection stays
            // with its callers only and closes when they drop it.
            if let Ok(conn) = slot.try_lock() {
                if let Some(conn) = conn.as_ref() {
                    conn.close(close_code::IDENTITY_CHANGED, b"certificate changed");
                }
            }
        }
        info!(local_addr = %self.inner.local_addr, "transport identity replaced");
        Ok(())
    }

    /// Install the admission check for incoming connections (see [`Admission`]).
    pub fn set_admission(&self, admission: Admission) {
        *lock(&self.inner.admission) = Some(admission);
    }

    /// Close every accepted connection whose peer is no longer admitted (a
    /// node was just removed). Returns how many were closed.
    pub fn revalidate(&self) -> usize {
        let mut accepted = lock(&self.inner.accepted);
        accepted.retain(|(conn, _)| conn.close_reason().is_none());
        let mut closed = 0;
        accepted.retain(|(conn, peer)| {
            if self.inner.admitted(peer) {
                return true;
            }
            conn.close(
                close_code::REVOKED,
                b"certificate revoked: the node was removed from the swarm",
            );
            closed += 1;
            false
        });
        if closed > 0 {
            info!(closed, "closed connections of revoked peers");
        }
        closed
    }

    /// Accept connections and serve calls until `shutdown` is cancelled (or the endpoint
    /// is closed). Every connection and call task is owned here and aborted on return.
    pub async fn serve<H: Handler>(&self, handler: Arc<H>, shutdown: CancellationToken) {
        let mut connections = JoinSet::new();
        loop {
            let incoming = tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(done) = connections.join_next(), if !connections.is_empty() => {
                    log_panic(done, "connection");
                    continue;
                }
                incoming = self.inner.endpoint.accept() => incoming,
            };
            let Some(incoming) = incoming else {
                debug!("endpoint closed, no more connections");
                break;
            };
            connections.spawn(serve_connection(
                self.inner.clone(),
                incoming,
                handler.clone(),
                shutdown.clone(),
            ));
        }
        connections.shutdown().await;
    }

    /// An mTLS call on [`ALPN_CLUSTER`] to `addr`, checking the server's certificate against
    /// our CA with `server_name` (e.g. [`MANAGER_SERVER_NAME`]). Reuses the pooled connection
    /// to (`addr`, `server_name`), and reconnects once if it turns out dead before the request
    /// could have been handled. `timeout` bounds the whole call, connecting included.
    pub async fn call(
        &self,
        addr: SocketAddr,
        server_name: &str,
        request: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, TransportError> {
        check_request_len(&request)?;
        let started = Instant::now();
        let result = match tokio::time::timeout(
            timeout,
            self.call_pooled(addr, server_name, &request),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(TransportError::Timeout { addr, timeout }),
        };
        match &result {
            Ok(response) => debug!(
                %addr, server_name, request_bytes = request.len(), response_bytes = response.len(),
                elapsed = ?started.elapsed(), "call done"
            ),
            Err(error) => {
                debug!(%addr, server_name, %error, elapsed = ?started.elapsed(), "call failed")
            }
        }
        result
    }

    /// A call on [`ALPN_JOIN`] without a client certificate, on a fresh connection that is
    /// closed afterwards. With `ca`, the server must chain to it (server name
    /// [`MANAGER_SERVER_NAME`]); without, the server's certificate is not verified (only its
    /// possession of the key), which is meant only for fetching the CA. Returns the response
    /// and the chain the server presented (leaf first, then the CA), so the caller can check
    /// it once it has pinned the CA.
    pub async fn join_call(
        &self,
        addr: SocketAddr,
        ca: Option<CertificateDer<'static>>,
        request: Vec<u8>,
        timeout: Duration,
    ) -> Result<(Vec<u8>, Vec<CertificateDer<'static>>), TransportError> {
        check_request_len(&request)?;
        let trust = match &ca {
            Some(ca) => tls::ServerTrust::Ca(ca),
            None => tls::ServerTrust::Unverified,
        };
        let config = tls::client_config(trust, None, ALPN_JOIN)?;
        let result = match tokio::time::timeout(
            timeout,
            self.call_once(config, addr, MANAGER_SERVER_NAME, &request),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(TransportError::Timeout { addr, timeout }),
        };
        debug!(%addr, verified = ca.is_some(), ok = result.is_ok(), "join call done");
        result
    }

    /// Close every connection and the endpoint, waiting briefly for peers to hear about it.
    pub async fn close(&self) {
        self.state().pool.clear();
        self.inner
            .endpoint
            .close(close_code::SHUTDOWN, b"node shutting down");
        if tokio::time::timeout(CLOSE_WAIT, self.inner.endpoint.wait_idle())
            .await
            .is_err()
        {
            debug!("peers did not acknowledge the close in time");
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state is always left consistent (plain inserts and swaps), so a panic elsewhere
        // while holding the lock does not invalidate it.
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    async fn call_pooled(
        &self,
        addr: SocketAddr,
        server_name: &str,
        request: &[u8],
    ) -> Result<Vec<u8>, TransportError> {
        let (conn, reused) = self.pooled_connection(addr, server_name).await?;
        match exchange(&conn, request, addr, server_name).await {
            Ok(response) => Ok(response),
            Err(failure) if failure.retry && reused => {
                debug!(%addr, server_name, error = %failure.error, "pooled connection was dead, reconnecting");
                let (conn, _) = self.pooled_connection(addr, server_name).await?;
                exchange(&conn, request, addr, server_name)
                    .await
                    .map_err(|f| f.error)
            }
            Err(failure) => Err(failure.error),
        }
    }

    /// The live pooled connection to (`addr`, `server_name`), connecting if there is none.
    /// The flag says whether it was reused.
    async fn pooled_connection(
        &self,
        addr: SocketAddr,
        server_name: &str,
    ) -> Result<(Connection, bool), TransportError> {
        let (slot, config) = {
            let mut state = self.state();
            let config = state
                .cluster_client
                .clone()
                .ok_or(TransportError::NoIdentity { addr })?;
            let key = PoolKey {
                addr,
                server_name: server_name.to_owned(),
            };
            (state.pool.entry(key).or_default().clone(), config)
        };
        let mut pooled = slot.lock().await;
        if let Some(conn) = pooled.as_ref() {
            if conn.close_reason().is_none() {
                return Ok((conn.clone(), true));
            }
        }
        *pooled = None;
        let conn = self.connect(config, addr, server_name).await?;
        *pooled = Some(conn.clone());
        Ok((conn, false))
    }

    async fn connect(
        &self,
        config: quinn::ClientConfig,
        addr: SocketAddr,
        server_name: &str,
    ) -> Result<Connection, TransportError> {
        let connecting = self
            .inner
            .endpoint
            .connect_with(config, addr, server_name)
            .map_err(|e| TransportError::Connect {
                addr,
                reason: e.to_string(),
            })?;
        let conn = connecting
            .await
            .map_err(|e| from_connection_error(&e, addr, server_name))?;
        debug!(%addr, server_name, "connected");
        Ok(conn)
    }

    /// One call on a fresh connection with `config`, closed afterwards; also returns the
    /// server's certificate chain.
    async fn call_once(
        &self,
        config: quinn::ClientConfig,
        addr: SocketAddr,
        server_name: &str,
        request: &[u8],
    ) -> Result<(Vec<u8>, Vec<CertificateDer<'static>>), TransportError> {
        let conn = self.connect(config, addr, server_name).await?;
        let chain = peer_chain(&conn);
        let result = exchange(&conn, request, addr, server_name)
            .await
            .map_err(|f| f.error);
        conn.close(close_code::DONE, b"");
        result.map(|response| (response, chain))
    }
}

fn check_request_len(request: &[u8]) -> Result<(), TransportError> {
    if request.len() > REQUEST_LIMIT {
        return Err(TransportError::FrameTooLarge {
            len: request.len() as u64,
        });
    }
    Ok(())
}

/// The certificate chain the peer presented, leaf first (empty if none).
fn peer_chain(conn: &Connection) -> Vec<CertificateDer<'static>> {
    conn.peer_identity()
        .and_then(|identity| identity.downcast::<Vec<CertificateDer<'static>>>().ok())
        .map(|chain| *chain)
        .unwrap_or_default()
}

/// The ALPN negotiated on a connection.
fn negotiated_alpn(conn: &Connection) -> Option<Vec<u8>> {
    conn.handshake_data()
        .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|data| data.protocol)
}

/// Send one request on a new bi-stream of `conn` and read the response.
async fn exchange(
    conn: &Connection,
    request: &[u8],
    addr: SocketAddr,
    server_name: &str,
) -> Result<Vec<u8>, Failure> {
    // Until the request is completely written, the server cannot have run the handler, so a
    // connection-level failure is safe to retry. After that, only a reset is: the peer has no
    // state for the connection (it restarted), which is the common case for a stale pooled
    // connection. (If it crashed right after handling, the call runs twice; callers that need
    // exactly-once must deduplicate, as they must for their own retries anyway.)
    let lost = |e: &ConnectionError, sent: bool| Failure {
        error: from_connection_error(e, addr, server_name),
        retry: !sent || matches!(e, ConnectionError::Reset),
    };
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| lost(&e, false))?;
    match frame::write_frame(&mut send, &[request], REQUEST_LIMIT).await {
        Ok(()) => {
            // Only fails if the stream was already finished or reset, which it is not.
            let _ = send.finish();
        }
        // The server refused the request without reading it all; its answer says why.
        Err(FrameError::Write(WriteError::Stopped(_))) => {}
        Err(FrameError::Write(WriteError::ConnectionLost(e))) => return Err(lost(&e, false)),
        Err(e) => return Err(frame_failure(e, addr, server_name)),
    }
    let body = match frame::read_frame(&mut recv, RESPONSE_LIMIT).await {
        Ok(body) => body,
        Err(FrameError::Read(quinn::ReadError::ConnectionLost(e))) => return Err(lost(&e, true)),
        Err(e) => return Err(frame_failure(e, addr, server_name)),
    };
    parse_response(body, addr).map_err(|error| Failure {
        error,
        retry: false,
    })
}

fn frame_failure(e: FrameError, addr: SocketAddr, server_name: &str) -> Failure {
    let error = match e {
        FrameError::TooLarge(len) => TransportError::FrameTooLarge { len },
        FrameError::Truncated => TransportError::Protocol {
            addr,
            reason: "the answer ended before it was complete".to_owned(),
        },
        FrameError::Read(quinn::ReadError::ConnectionLost(e))
        | FrameError::Write(WriteError::ConnectionLost(e)) => {
            from_connection_error(&e, addr, server_name)
        }
        FrameError::Read(quinn::ReadError::Reset(code)) => TransportError::Closed {
            addr,
            reason: format!("the peer abandoned the call (stream reset, code {code})"),
        },
        FrameError::Write(WriteError::Stopped(code)) => TransportError::Closed {
            addr,
            reason: format!("the peer refused the request (stream stopped, code {code})"),
        },
        FrameError::Read(e) => TransportError::Closed {
            addr,
            reason: e.to_string(),
        },
        FrameError::Write(e) => TransportError::Closed {
            addr,
            reason: e.to_string(),
        },
    };
    Failure {
        error,
        retry: false,
    }
}

/// Split a response frame into the handler's result. Public only for the fuzz targets in
/// `fuzz/`; not an API.
#[doc(hidden)]
pub fn parse_response(mut body: Vec<u8>, addr: SocketAddr) -> Result<Vec<u8>, TransportError> {
    match body.first().copied() {
        Some(STATUS_OK) => {
            body.remove(0);
            Ok(body)
        }
        Some(STATUS_ERR) => Err(TransportError::Remote(
            String::from_utf8_lossy(&body[1..]).into_owned(),
        )),
        Some(status) => Err(TransportError::Protocol {
            addr,
            reason: format!("unknown response status {status}"),
        }),
        None => Err(TransportError::Protocol {
            addr,
            reason: "empty response".to_owned(),
        }),
    }
}

fn log_panic(done: Result<(), tokio::task::JoinError>, what: &str) {
    if let Err(e) = done {
        if e.is_panic() {
            warn!(error = %e, "{what} task panicked");
        }
    }
}

/// Handshake, check the ALPN/certificate rule, then serve the connection's streams.
async fn serve_connection<H: Handler>(
    inner: Arc<Inner>,
    incoming: quinn::Incoming,
    handler: Arc<H>,
    shutdown: CancellationToken,
) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(error) => {
            debug!(%remote, %error, "incoming handshake failed");
            return;
        }
    };
    let chain = peer_chain(&conn);
    let alpn = negotiated_alpn(&conn).unwrap_or_default();
    if alpn == ALPN_CLUSTER {
        if chain.is_empty() {
            debug!(%remote, "refused: no client certificate on the cluster ALPN");
            conn.close(
                close_code::CERTIFICATE_REQUIRED,
                b"a cluster certificate is required on apiary/1",
            );
            return;
        }
    } else if alpn != ALPN_JOIN {
        debug!(%remote, "refused: unknown ALPN");
        conn.close(close_code::BAD_ALPN, b"unknown ALPN");
        return;
    }
    let peer = Peer {
        remote,
        alpn,
        cert: chain.into_iter().next(),
    };
    if !inner.admitted(&peer) {
        debug!(%remote, "refused: certificate no longer admitted");
        conn.close(
            close_code::REVOKED,
            b"certificate revoked: the node was removed from the swarm",
        );
        return;
    }
    // A peer pools one connection to us per certificate. A second cluster
    // connection from the same address means its earlier one is gone: the
    // peer restarted (or changed certificate). Our own connections to its
    // previous life would otherwise sit dead until the idle timeout, which
    // stalls raft replication and elections for seconds: drop them now.
    let superseded: Vec<Connection> = {
        let mut accepted = lock(&inner.accepted);
        accepted.retain(|(c, _)| c.close_reason().is_none());
        let old = if peer.alpn == ALPN_CLUSTER {
            accepted
                .iter()
                .filter(|(_, p)| p.remote == remote && p.alpn == ALPN_CLUSTER)
                .map(|(c, _)| c.clone())
                .collect()
        } else {
            Vec::new()
        };
        accepted.push((conn.clone(), peer.clone()));
        old
    };
    if !superseded.is_empty() {
        for c in &superseded {
            c.close(
                close_code::SUPERSEDED,
                b"superseded by a new connection from the same peer",
            );
        }
        inner.drop_pooled_to(remote).await;
        debug!(%remote, "peer reconnected: dropped its old connections");
    }
    debug!(%remote, alpn = %String::from_utf8_lossy(&peer.alpn), with_cert = peer.cert.is_some(), "connection accepted");

    let mut calls = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                conn.close(close_code::SHUTDOWN, b"node shutting down");
                break;
            }
            Some(done) = calls.join_next(), if !calls.is_empty() => log_panic(done, "call"),
            stream = conn.accept_bi() => match stream {
                Ok((send, recv)) => {
                    calls.spawn(serve_call(peer.clone(), send, recv, handler.clone()));
                }
                Err(error) => {
                    debug!(%remote, %error, "connection ended");
                    break;
                }
            },
        }
    }
    // Dropping the set aborts calls still running: their answers could not be delivered.
}

/// Read one request, run the handler, write one response.
async fn serve_call<H: Handler>(
    peer: Peer,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    handler: Arc<H>,
) {
    let remote = peer.remote;
    let request = match tokio::time::timeout(
        REQUEST_READ_TIMEOUT,
        frame::read_frame(&mut recv, REQUEST_LIMIT),
    )
    .await
    {
        Ok(Ok(request)) => request,
        Ok(Err(FrameError::TooLarge(len))) => {
            debug!(%remote, len, "request refused: too large");
            let _ = recv.stop(STOP_TOO_LARGE);
            let message = TransportError::FrameTooLarge { len }.to_string();
            respond(&mut send, STATUS_ERR, message.as_bytes(), remote).await;
            return;
        }
        Ok(Err(error)) => {
            debug!(%remote, ?error, "request not received");
            return;
        }
        Err(_) => {
            debug!(%remote, "request not received in time");
            return;
        }
    };
    let started = Instant::now();
    let request_bytes = request.len();
    let result = handler.handle(peer, request).await;
    debug!(%remote, request_bytes, ok = result.is_ok(), elapsed = ?started.elapsed(), "call handled");
    match result {
        Ok(response) if response.len() <= MAX_FRAME => {
            respond(&mut send, STATUS_OK, &response, remote).await;
        }
        Ok(response) => {
            warn!(%remote, len = response.len(), "handler response too large to send");
            let message = format!(
                "the response of {} bytes exceeds the {MAX_FRAME}-byte limit",
                response.len()
            );
            respond(&mut send, STATUS_ERR, message.as_bytes(), remote).await;
        }
        Err(message) => {
            let message = truncate_utf8(&message, MAX_ERROR_MESSAGE);
            respond(&mut send, STATUS_ERR, message.as_bytes(), remote).await;
        }
    }
}

async fn respond(send: &mut quinn::SendStream, status: u8, payload: &[u8], remote: SocketAddr) {
    match frame::write_frame(send, &[&[status], payload], RESPONSE_LIMIT).await {
        Ok(()) => {
            let _ = send.finish();
        }
        Err(error) => debug!(%remote, ?error, "response not sent"),
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
