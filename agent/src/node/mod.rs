//! One apiary node: its membership in a swarm (none, worker, manager), the
//! transport it talks on, the manager it runs when it is one, and the session
//! that keeps it known to the leader. Implements [`Control`] for the API.

mod ca_rotation;
mod host;
mod keys;
pub mod persist;
mod registry;
pub(crate) mod secrets;
mod services;

pub use services::validate as services_validate;
mod logs;
pub(crate) mod networks;
mod session;
mod worker_link;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime};

use rand::Rng;
use rustls::pki_types::CertificateDer;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::control::*;
use crate::manager::{Manager, ManagerIdentity};
use crate::pki;
use crate::rpc::{self, Caller, JoinRequest as RpcJoin, Reply, Request, RpcError};
use crate::store::{
    Cluster, ClusterSpec, Command, JoinSecrets, ManagerStatus, Node, NodeDescription, NodeSpec,
    NodeState, NodeStatus, Reachability, Role,
};
use crate::transport::{self, Handler, Identity, Peer, Transport};
use persist::{Certs, DataDir, NodeFile};

pub use host::host_info;

/// The cluster port, as in Docker.
pub const DEFAULT_PORT: u16 = 2377;
const JOIN_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Clone)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
    /// Overrides the host name the node reports (several agents on one host).
    pub hostname: Option<String>,
    /// Runs this node's tasks; None: the node takes no tasks (it reports
    /// every task assigned to it as rejected, saying why).
    pub executor: Option<Arc<dyn crate::executor::Executor>>,
    /// Gives tasks their network; None: the host's (`HostNetwork`).
    pub network: Option<Arc<dyn crate::network::Network>>,
    /// How registries are reached for logins and `/distribution` (the
    /// executor has its own copy for pulls).
    pub registries: crate::executor::pull::RegistryConfig,
}

/// The API's handle on the node.
#[derive(Clone)]
pub struct NodeHandle {
    inner: Arc<Inner>,
}

struct Inner {
    dir: DataDir,
    host: HostInfo,
    description: NodeDescription,
    /// Serialises init/join/leave; holds the running membership.
    phase: tokio::sync::Mutex<Option<Arc<Running>>>,
    /// The same, for quick reads by API calls without waiting on `phase`.
    current: RwLock<Option<Arc<Running>>>,
    /// A manager of an autolocked swarm that restarted: its membership,
    /// waiting for `swarm unlock`.
    locked: RwLock<Option<(NodeFile, Certs)>>,
    executor: Arc<dyn crate::executor::Executor>,
    network: Arc<dyn crate::network::Network>,
    registries: crate::executor::pull::RegistryConfig,
    /// Set once something that the agent cannot carry on after has failed
    /// (raft's core stopped on a storage error): the agent exits non-zero
    /// so that its service manager restarts it.
    fatal: tokio::sync::watch::Sender<Option<String>>,
}

/// A node that is in a swarm.
pub struct Running {
    file: Mutex<Arc<NodeFile>>,
    certs: Mutex<Certs>,
    transport: Transport,
    manager: RwLock<Option<Arc<Manager>>>,
    dir: DataDir,
    description: NodeDescription,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    /// The raft data key, once loaded or created.
    dek: Mutex<Option<Arc<crate::seal::Sealer>>>,
    /// The unlock key the key files are sealed with (autolock on).
    sealed_with: Mutex<Option<pki::UnlockKey>>,
    /// Serialises writers of the key files (the key guard, `swarm update`).
    key_writer: Mutex<()>,
    executor: Arc<dyn crate::executor::Executor>,
    fatal: tokio::sync::watch::Sender<Option<String>>,
}

impl Running {
    pub fn manager(&self) -> Option<Arc<Manager>> {
        self.manager
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    fn set_manager(&self, m: Option<Arc<Manager>>) {
        *self.manager.write().unwrap_or_else(|p| p.into_inner()) = m;
    }
    /// The node file as it is now: shared, not copied (read on every
    /// cluster call and every request served).
    pub fn file(&self) -> Arc<NodeFile> {
        self.file.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    fn update_file(&self, f: impl FnOnce(&mut NodeFile)) -> Result<(), ControlError> {
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        // Copied only if a reader still holds the old one.
        f(Arc::make_mut(&mut guard));
        self.dir
            .save_state(&guard)
            .map_err(|e| ControlError::Internal(e.to_string()))
    }
    fn certs(&self) -> Certs {
        self.certs.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    fn self_caller(&self) -> Caller {
        let f = self.file();
        Caller {
            node_id: Some(f.node_id.clone()),
            role: Some(f.role),
            ip: ip_of(&f.advertise_addr),
        }
    }

    /// Replace this node's certificate (renewal or role change).
    fn install_certs(&self, certs: Certs) -> Result<(), ControlError> {
        let identity = identity_from(&certs)?;
        self.transport
            .set_identity(identity)
            .map_err(|e| ControlError::Internal(format!("cannot use the new certificate: {e}")))?;
        let sealed = self.autolocked();
        self.dir
            .save_certs_sealed(&certs, !sealed)
            .map_err(|e| ControlError::Internal(e.to_string()))?;
        *self.certs.lock().unwrap_or_else(|p| p.into_inner()) = certs;
        if sealed {
            // The new TLS key goes into the sealed key file.
            self.write_keys(self.sealed_with().as_ref())?;
        }
        Ok(())
    }

    /// Whether this node's certificate has expired (it was off too long).
    fn cert_expired(&self) -> bool {
        pki::parse_node_cert_pem(&self.certs().cert_pem)
            .map(|i| i.not_after <= SystemTime::now())
            .unwrap_or(true)
    }

    /// Come back with a join token after the certificate expired: same node,
    /// same key, a fresh certificate.
    async fn rejoin(&self, token: &str) -> Result<(), ControlError> {
        let token = pki::JoinToken::parse(token)
            .map_err(|e| ControlError::InvalidArgument(e.to_string()))?;
        let f = self.file();
        let key_pem = self.certs().key_pem;
        let (joined, key_pem, _) = join_through(
            &self.transport,
            &self.description,
            &token,
            &f.managers,
            f.advertise_addr.parse().ok(),
            crate::store::Availability::Active,
            Some((f.node_id.clone(), key_pem)),
        )
        .await?;
        if joined.node_id != f.node_id {
            return Err(ControlError::Internal(
                "the swarm answered for another node".into(),
            ));
        }
        self.install_certs(Certs {
            ca_pem: joined.ca_pem,
            cert_pem: joined.cert_pem,
            key_pem,
        })?;
        self.update_file(|f| {
            f.role = joined.role;
            if !joined.managers.is_empty() {
                f.managers = joined.managers;
            }
        })?;
        info!("came back into the swarm with a fresh certificate after it had expired");
        Ok(())
    }

    /// Start the manager side: open raft (existing data, or empty for a new
    /// member) and answer cluster RPCs.
    async fn start_manager(
        self: &Arc<Self>,
        raft_id: u64,
        snapshot_interval: u64,
    ) -> Result<Arc<Manager>, ControlError> {
        let f = self.file();
        let me = ManagerIdentity {
            node_id: f.node_id.clone(),
            raft_id,
            addr: f.advertise_addr.clone(),
        };
        let dek = self.data_key()?;
        let m = Manager::start(
            self.dir.root(),
            me,
            self.transport.clone(),
            snapshot_interval,
            dek,
        )
        .await?;
        self.set_manager(Some(m.clone()));
        let (watched, stop, fatal) = (m.clone(), self.shutdown.clone(), self.fatal.clone());
        self.tasks.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                // Ends with the manager, so that a demoted one is not kept.
                why = watched.raft_failed() => if let Some(why) = why {
                    error!("raft stopped on this manager: {why}; exiting so that the agent is restarted (free the disk first if it is full)");
                    fatal.send_replace(Some(format!("raft stopped on this manager: {why}")));
                }
            }
        });
        self.tasks.spawn(keys::guard(self.clone(), m.clone()));
        self.tasks
            .spawn(ca_rotation::follow(self.clone(), m.clone()));
        Ok(m)
    }

    async fn stop(&self) {
        self.stop_keeping_transport().await;
        self.transport.close().await;
    }

    /// Stop the session, the RPC server and the manager; keep the endpoint.
    async fn stop_keeping_transport(&self) {
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        if let Some(m) = self.manager() {
            m.stop().await;
        }
        self.set_manager(None);
    }
}

fn identity_from(certs: &Certs) -> Result<Identity, ControlError> {
    let bad = |e: pki::PkiError| ControlError::Internal(format!("unusable node certificate: {e}"));
    // The CA file is a bundle during a root rotation (the current root
    // first), and the certificate file carries the cross-signed new root.
    let mut roots = pki::certs_from_pem(&certs.ca_pem).map_err(bad)?.into_iter();
    let mut chain = pki::certs_from_pem(&certs.cert_pem)
        .map_err(bad)?
        .into_iter();
    let missing =
        |what: &str| ControlError::Internal(format!("unusable node certificate: no {what}"));
    Ok(Identity {
        ca_cert: roots.next().ok_or_else(|| missing("CA certificate"))?,
        cert: chain.next().ok_or_else(|| missing("node certificate"))?,
        key: Arc::new(pki::key_der_from_pem(&certs.key_pem).map_err(bad)?),
        intermediates: chain.collect(),
        extra_roots: roots.collect(),
    })
}

fn ip_of(addr: &str) -> String {
    addr.parse::<SocketAddr>()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| addr.to_string())
}

fn new_raft_id() -> u64 {
    // Zero is avoided only to keep logs readable; collisions of random u64s
    // in a cluster of a handful of managers are not a concern.
    rand::thread_rng().gen_range(1..u64::MAX)
}

/// Answers cluster RPCs arriving on the transport.
struct RpcHandler {
    running: Weak<Running>,
    /// Callers' certificates as parsed: every call carries its
    /// connection's certificate, and parsing it each time was 3% of a
    /// manager answering 1,000 nodes.
    certs: Mutex<HashMap<CertificateDer<'static>, pki::CertInfo>>,
}

/// Parsed certificates kept at most (the cache starts over when full:
/// certificates are renewed, nodes come and go).
const PARSED_CERTS: usize = 4096;

impl RpcHandler {
    fn cert_info(&self, der: CertificateDer<'static>) -> Result<pki::CertInfo, String> {
        let mut certs = self.certs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(info) = certs.get(&der) {
            return Ok(info.clone());
        }
        let info =
            pki::parse_node_cert_der(&der).map_err(|e| format!("bad node certificate: {e}"))?;
        if certs.len() >= PARSED_CERTS {
            certs.clear();
        }
        certs.insert(der, info.clone());
        Ok(info)
    }
}

impl Handler for RpcHandler {
    async fn handle(&self, peer: Peer, request: Vec<u8>) -> Result<Vec<u8>, String> {
        let mut req: Request = rpc::decode(&request)?;
        let running = self.running.upgrade().ok_or("the node is shutting down")?;
        let ip = peer.remote.ip().to_string();
        let caller = if peer.alpn == transport::ALPN_JOIN {
            if !matches!(req, Request::GetCa | Request::Join(_) | Request::Ping) {
                return Ok(rpc::encode(&Reply::Error(RpcError::PermissionDenied(
                    "this call needs a node certificate".into(),
                ))));
            }
            if let Request::Join(j) = &mut req {
                j.observed_ip.get_or_insert(ip.clone());
            }
            Caller {
                node_id: None,
                role: None,
                ip,
            }
        } else {
            let der = peer.cert.ok_or("a node certificate is required")?;
            let info = self.cert_info(der)?;
            if info.cluster_id != running.file().cluster_id {
                return Ok(rpc::encode(&Reply::Error(RpcError::PermissionDenied(
                    "the certificate belongs to another swarm".into(),
                ))));
            }
            Caller {
                node_id: Some(info.node_id),
                role: Some(info.role),
                ip,
            }
        };
        // Task logs are the node's own business (any node runs tasks), and
        // only managers may ask for them.
        if let Request::TaskLogs(lr) = req {
            let reply = if caller.role == Some(Role::Manager) {
                logs::serve(&running, &lr)
            } else {
                Reply::Error(RpcError::PermissionDenied(
                    "only managers may read a node's task logs".into(),
                ))
            };
            return Ok(rpc::encode(&reply));
        }
        let reply = match running.manager() {
            Some(m) => m.handle(caller, req).await,
            None => Reply::Error(RpcError::NotManager),
        };
        Ok(rpc::encode(&reply))
    }
}

impl NodeHandle {
    /// Open the data dir and, if the node was in a swarm, rejoin it as it was.
    pub async fn start(cfg: NodeConfig) -> Result<NodeHandle, String> {
        let dir = DataDir::new(&cfg.data_dir);
        dir.ensure().map_err(|e| e.to_string())?;
        let host = host_info(&cfg);
        let description = host::description(&host);
        let inner = Arc::new(Inner {
            dir: DataDir::new(&cfg.data_dir),
            host,
            description,
            phase: tokio::sync::Mutex::new(None),
            current: RwLock::new(None),
            locked: RwLock::new(None),
            executor: cfg.executor.clone().unwrap_or_else(|| {
                Arc::new(crate::executor::NoRuntime::new(
                    "this node has no container runtime: start its agent with --containerd <socket>",
                ))
            }),
            network: cfg
                .network
                .clone()
                .unwrap_or_else(|| Arc::new(crate::network::HostNetwork::unchecked())),
            registries: cfg.registries.clone(),
            fatal: tokio::sync::watch::channel(None).0,
        });
        let handle = NodeHandle { inner };
        if let Some((file, certs)) = dir.load().map_err(|e| e.to_string())? {
            if dir
                .key_file()
                .map_err(|e| e.to_string())?
                .is_some_and(|k| k.is_locked())
            {
                warn!(node.id = %file.node_id, "this manager is locked: unlock it with `apiary swarm unlock`");
                *handle
                    .inner
                    .locked
                    .write()
                    .unwrap_or_else(|p| p.into_inner()) = Some((file, certs));
                return Ok(handle);
            }
            info!(node.id = %file.node_id, role = file.role.as_str(), "resuming swarm membership");
            let running = handle
                .resume(file, certs)
                .await
                .map_err(|e| e.to_string())?;
            handle.set_running(Some(running)).await;
        }
        Ok(handle)
    }

    async fn set_running(&self, r: Option<Arc<Running>>) {
        *self.inner.phase.lock().await = r.clone();
        *self
            .inner
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner()) = r;
    }

    fn current(&self) -> Option<Arc<Running>> {
        self.inner
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The data dir's stateless-reset secret; without one (unwritable dir)
    /// the endpoint just uses a random one, as quinn does.
    fn reset_secret(&self) -> Option<[u8; 32]> {
        match self.inner.dir.reset_secret() {
            Ok(k) => Some(k),
            Err(e) => {
                warn!("no persistent QUIC reset secret: {e}");
                None
            }
        }
    }

    fn is_locked(&self) -> bool {
        self.inner
            .locked
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    fn manager_or_err(&self) -> ControlResult<Arc<Manager>> {
        if self.is_locked() {
            return Err(ControlError::Locked);
        }
        let r = self.current().ok_or(ControlError::NotInSwarm)?;
        r.manager().ok_or(ControlError::NotManager)
    }

    /// This node's manager, if it is one (benchmarks and tests).
    pub fn manager(&self) -> Option<Arc<Manager>> {
        self.current().and_then(|r| r.manager())
    }

    /// Resolves, with why, once the node cannot carry on (see `fatal`).
    pub async fn failed(&self) -> String {
        let mut rx = self.inner.fatal.subscribe();
        let why = match rx.wait_for(Option::is_some).await {
            Ok(why) => why.clone().unwrap_or_default(),
            Err(_) => return std::future::pending().await,
        };
        why
    }

    pub async fn shutdown(&self) {
        if let Some(r) = self.current() {
            r.stop().await;
        }
    }

    fn new_running(&self, file: NodeFile, certs: Certs, transport: Transport) -> Arc<Running> {
        Arc::new(Running {
            file: Mutex::new(Arc::new(file)),
            certs: Mutex::new(certs),
            transport,
            manager: RwLock::new(None),
            dir: DataDir::new(self.inner.dir.root()),
            description: self.inner.description.clone(),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            dek: Mutex::new(None),
            sealed_with: Mutex::new(None),
            key_writer: Mutex::new(()),
            executor: self.inner.executor.clone(),
            fatal: self.inner.fatal.clone(),
        })
    }

    /// Serve cluster RPCs, keep the session with the leader, run tasks.
    fn start_loops(&self, running: &Arc<Running>) {
        self.start_serving(running);
        self.start_session(running);
    }

    fn start_serving(&self, running: &Arc<Running>) {
        let handler = Arc::new(RpcHandler {
            running: Arc::downgrade(running),
            certs: Mutex::new(HashMap::new()),
        });
        // Revocation: a removed node's certificate stays valid for TLS, but a
        // manager admits cluster connections only from nodes still in the
        // swarm (checked on connect, and again after every change).
        let weak = Arc::downgrade(running);
        running
            .transport
            .set_admission(Arc::new(move |peer: &Peer| {
                if peer.alpn == transport::ALPN_JOIN {
                    return true;
                }
                let Some(m) = weak.upgrade().and_then(|r| r.manager()) else {
                    return true;
                };
                let Some(der) = peer.cert.as_ref() else {
                    return false;
                };
                // Refuse nodes known to be removed. Unknown ones are admitted
                // on their CA-signed certificate: a new manager's state is
                // empty until the leader has replicated to it.
                match pki::parse_node_cert_der(der) {
                    Ok(info) => !m.state.read().removed.contains(&info.node_id),
                    Err(_) => false,
                }
            }));
        let t = running.transport.clone();
        let token = running.shutdown.clone();
        running
            .tasks
            .spawn(async move { t.serve(handler, token).await });
    }

    /// The session with the leader, and the worker that runs this node's
    /// tasks (every node, managers too, like Swarm).
    fn start_session(&self, running: &Arc<Running>) {
        running.tasks.spawn(session::run(running.clone()));
        let executor = self.inner.executor.clone();
        let cluster: Arc<dyn crate::worker::Cluster> = Arc::new(worker_link::Link::new(running));
        running.tasks.spawn(crate::worker::run(
            cluster,
            executor,
            self.inner.network.clone(),
            running.shutdown.clone(),
        ));
    }

    /// A node that leaves keeps no task: containers, their network and
    /// the node's bridge go (the worker has stopped, or never ran).
    async fn clear_tasks(&self) {
        crate::worker::clear(self.inner.executor.clone(), self.inner.network.clone()).await;
    }

    async fn resume(&self, file: NodeFile, certs: Certs) -> ControlResult<Arc<Running>> {
        self.resume_with(file, certs, None).await
    }

    /// Resume a locked manager with the keys its unlock key opened.
    async fn resume_unlocked(
        &self,
        file: NodeFile,
        certs: Certs,
        dek: Arc<crate::seal::Sealer>,
        key: pki::UnlockKey,
    ) -> ControlResult<Arc<Running>> {
        self.resume_with(file, certs, Some((dek, key))).await
    }

    async fn resume_with(
        &self,
        file: NodeFile,
        certs: Certs,
        unlocked: Option<(Arc<crate::seal::Sealer>, pki::UnlockKey)>,
    ) -> ControlResult<Arc<Running>> {
        let identity = identity_from(&certs)?;
        let listen = parse_addr(&file.listen_addr)?;
        let transport =
            Transport::bind_with_reset_secret(listen, Some(identity), self.reset_secret())
                .map_err(|e| {
                    ControlError::InvalidArgument(format!("cannot listen on {listen}: {e}"))
                })?;
        let running = self.new_running(file.clone(), certs, transport);
        if let Some((dek, key)) = unlocked {
            *running.dek.lock().unwrap_or_else(|p| p.into_inner()) = Some(dek);
            *running
                .sealed_with
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(key);
        }
        if let (Role::Manager, Some(raft_id)) = (file.role, file.raft_id) {
            running
                .start_manager(raft_id, ClusterSpec::default().snapshot_interval)
                .await?;
        }
        self.start_loops(&running);
        Ok(running)
    }

    fn resolve_node(&self, m: &Manager, key: &str) -> ControlResult<Node> {
        let state = m.state.read();
        if let Some(n) = state.nodes.get(&crate::store::NodeId(key.to_string())) {
            return Ok(n.clone());
        }
        if key == "self" {
            if let Some(n) = state.nodes.get(&m.me.node_id) {
                return Ok(n.clone());
            }
        }
        let by_name: Vec<&Node> = state
            .nodes
            .values()
            .filter(|n| {
                n.spec.name == key || (n.spec.name.is_empty() && n.description.hostname == key)
            })
            .collect();
        if by_name.len() == 1 {
            return Ok(by_name[0].clone());
        }
        let by_prefix: Vec<&Node> = state
            .nodes
            .values()
            .filter(|n| n.id.0.starts_with(key))
            .collect();
        match (by_name.len(), by_prefix.len()) {
            (0, 1) => Ok(by_prefix[0].clone()),
            (0, 0) => Err(ControlError::NotFound(format!("node {key} not found"))),
            (n, p) => Err(ControlError::NotFound(format!(
                "node {key} is ambiguous ({} matches found); use the full node ID",
                n + p
            ))),
        }
    }

    fn view(&self, m: &Manager, node: Node) -> NodeView {
        let leader = m.leader_raft_id();
        let is_leader = node
            .manager_status
            .as_ref()
            .is_some_and(|ms| Some(ms.raft_id) == leader);
        let tls = m.state.read().node_tls.get(&node.id).cloned();
        NodeView {
            node,
            leader: is_leader,
            tls,
        }
    }

    async fn init_new(
        &self,
        req: InitRequest,
    ) -> ControlResult<(Arc<Running>, crate::store::NodeId)> {
        let advertise = advertise_for(req.listen_addr, req.advertise_addr, None)?;
        let dir = &self.inner.dir;
        dir.wipe()
            .map_err(|e| ControlError::Internal(e.to_string()))?;
        dir.ensure()
            .map_err(|e| ControlError::Internal(e.to_string()))?;
        let internal = |e: pki::PkiError| ControlError::Internal(e.to_string());
        let root_ca = pki::new_root_ca().map_err(internal)?;
        let cluster_id = pki::new_node_id().0;
        let node_id = pki::new_node_id();
        let kc = pki::new_key_and_csr().map_err(internal)?;
        let validity = Duration::from_nanos(req.spec.cert_expiry_ns.max(0) as u64);
        let cert_pem = pki::sign_csr(
            &root_ca,
            &kc.csr_pem,
            &node_id,
            Role::Manager,
            &cluster_id,
            validity,
        )
        .map_err(internal)?;
        let certs = Certs {
            ca_pem: root_ca.cert_pem.clone(),
            cert_pem,
            key_pem: kc.key_pem,
        };
        let transport = Transport::bind_with_reset_secret(
            req.listen_addr,
            Some(identity_from(&certs)?),
            self.reset_secret(),
        )
        .map_err(|e| {
            ControlError::InvalidArgument(format!("cannot listen on {}: {e}", req.listen_addr))
        })?;
        let raft_id = new_raft_id();
        let file = NodeFile {
            node_id: node_id.clone(),
            cluster_id: cluster_id.clone(),
            role: Role::Manager,
            raft_id: Some(raft_id),
            listen_addr: req.listen_addr.to_string(),
            advertise_addr: advertise.to_string(),
            managers: vec![advertise.to_string()],
            join_token: None,
        };
        dir.save_certs(&certs)
            .map_err(|e| ControlError::Internal(e.to_string()))?;
        dir.save_state(&file)
            .map_err(|e| ControlError::Internal(e.to_string()))?;
        let expiry = pki::parse_node_cert_pem(&certs.cert_pem)
            .map(|i| crate::util::rfc3339(i.not_after))
            .unwrap_or_default();
        let running = self.new_running(file, certs, transport);
        let m = running
            .start_manager(raft_id, req.spec.snapshot_interval)
            .await?;
        m.initialize().await?;
        let now = crate::util::now_rfc3339();
        let cluster = Cluster {
            id: cluster_id,
            version: 0,
            created_at: now.clone(),
            updated_at: now.clone(),
            spec: req.spec.clone(),
            root_ca,
            join_secrets: JoinSecrets {
                worker: pki::new_join_secret(),
                manager: pki::new_join_secret(),
            },
            unlock_key: req
                .spec
                .autolock
                .then(|| pki::UnlockKey::generate().to_string()),
            rotation: None,
            addr_pool: req.addr_pool.clone(),
        };
        let node = Node {
            id: node_id.clone(),
            version: 0,
            created_at: now.clone(),
            updated_at: now,
            spec: NodeSpec {
                name: String::new(),
                labels: Default::default(),
                role: Role::Manager,
                availability: req.availability,
            },
            description: self.inner.description.clone(),
            status: NodeStatus {
                state: NodeState::Ready,
                message: String::new(),
                addr: advertise.ip().to_string(),
                port: advertise.port(),
            },
            role: Role::Manager,
            manager_status: Some(ManagerStatus {
                raft_id,
                addr: advertise.to_string(),
                reachability: Reachability::Reachable,
            }),
            cert_expiry: expiry,
            key_fingerprint: pki::cert_key_fingerprint(&running.certs().cert_pem)
                .unwrap_or_default(),
        };
        m.propose(Command::InitCluster { cluster, node }).await?;
        // The routing mesh's network, as `docker swarm init` makes it.
        m.propose(Command::CreateNetwork {
            network: networks::ingress(&crate::util::now_rfc3339()),
        })
        .await?;
        m.record_tls(&node_id, &running.certs().ca_pem).await;
        // With --autolock the keys are sealed before init answers.
        running.sync_keys(&m)?;
        self.start_loops(&running);
        info!(node.id = %node_id, "swarm initialised");
        Ok((running, node_id))
    }

    /// `--force-new-cluster`: keep every object, drop the other managers,
    /// and start a fresh one-member raft log from the current state.
    async fn force_new_cluster(
        &self,
        running: Arc<Running>,
        req: InitRequest,
    ) -> ControlResult<(Arc<Running>, crate::store::NodeId)> {
        let m = running.manager().ok_or_else(|| {
            ControlError::FailedPrecondition(
                "--force-new-cluster needs a node that is a manager of the swarm".into(),
            )
        })?;
        let (cluster, mut nodes) = {
            let state = m.state.read();
            let cluster = state.cluster.clone().ok_or_else(|| {
                ControlError::Internal("no cluster object in the raft store".into())
            })?;
            (cluster, state.nodes.values().cloned().collect::<Vec<_>>())
        };
        // Secrets, configs, services and tasks go into the new log too
        // (tasks keep running where they are; the orchestrator of the new
        // cluster replaces those on nodes that never come back).
        let (secrets, configs, removed, services, tasks, networks) = {
            let state = m.state.read();
            (
                state.secrets.values().cloned().collect::<Vec<_>>(),
                state.configs.values().cloned().collect::<Vec<_>>(),
                state.removed.iter().cloned().collect::<Vec<_>>(),
                state.services.values().cloned().collect::<Vec<_>>(),
                state.tasks.values().cloned().collect::<Vec<_>>(),
                state.networks.values().cloned().collect::<Vec<_>>(),
            )
        };
        let file = running.file();
        drop(m);
        let old_listen = parse_addr(&file.listen_addr)?;
        let listen = if req.listen_addr.port() != 0 && !req.listen_addr.ip().is_unspecified() {
            req.listen_addr
        } else {
            old_listen
        };
        let advertise = match req.advertise_addr {
            Some(a) => a,
            None => parse_addr(&file.advertise_addr)?,
        };
        let certs = running.certs();
        // Keep the QUIC endpoint when the address stays: rebinding the same
        // UDP port right after closing it races with quinn's shutdown.
        running.stop_keeping_transport().await;
        let transport = if listen == old_listen {
            running.transport.clone()
        } else {
            running.transport.close().await;
            bind_retrying(listen, identity_from(&certs)?, self.reset_secret()).await?
        };
        drop(running);
        // Keep the old log beside the new one: it is the user's backup.
        let old = self.inner.dir.raft_db();
        let backup = old.with_extension(format!(
            "redb.before-force-new-cluster-{}",
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        ));
        std::fs::rename(&old, &backup).map_err(|e| {
            ControlError::Internal(format!("cannot move {} aside: {e}", old.display()))
        })?;
        let raft_id = new_raft_id();
        let file = NodeFile {
            raft_id: Some(raft_id),
            listen_addr: listen.to_string(),
            advertise_addr: advertise.to_string(),
            managers: vec![advertise.to_string()],
            ..NodeFile::clone(&file)
        };
        self.inner
            .dir
            .save_state(&file)
            .map_err(|e| ControlError::Internal(e.to_string()))?;
        let node_id = file.node_id.clone();
        let running = self.new_running(file, certs, transport);
        let m = running
            .start_manager(raft_id, cluster.spec.snapshot_interval)
            .await?;
        m.initialize().await?;
        for n in nodes.iter_mut() {
            if n.id == node_id {
                n.manager_status = Some(ManagerStatus {
                    raft_id,
                    addr: advertise.to_string(),
                    reachability: Reachability::Reachable,
                });
                n.status.state = NodeState::Ready;
            } else if n.manager_status.take().is_some() {
                // The other managers are no longer members; they must join again.
                n.spec.role = Role::Worker;
                n.status.state = NodeState::Down;
                n.status.message =
                    "removed from raft by --force-new-cluster; join this node again".into();
            }
        }
        m.propose(Command::Restore {
            cluster,
            nodes,
            secrets,
            configs,
            removed,
            services,
            tasks,
            networks,
        })
        .await?;
        self.start_loops(&running);
        warn!(node.id = %node_id, "forced a new cluster from this manager's state");
        Ok((running, node_id))
    }

    async fn join(&self, req: JoinRequest) -> ControlResult<Arc<Running>> {
        let token = pki::JoinToken::parse(&req.token)
            .map_err(|e| ControlError::InvalidArgument(e.to_string()))?;
        if req.remote_addrs.is_empty() {
            return Err(ControlError::InvalidArgument("no manager address given: say which manager to join, e.g. `apiary swarm join --token ... 10.0.0.1:2377`".into()));
        }
        let transport = Transport::bind_with_reset_secret(
            req.listen_addr,
            None,
            self.reset_secret(),
        )
        .map_err(|e| {
            ControlError::InvalidArgument(format!("cannot listen on {}: {e}", req.listen_addr))
        })?;
        let result = self.join_with(&transport, &token, &req).await;
        let (joined, key_pem, manager_addr) = match result {
            Ok(r) => r,
            Err(e) => {
                transport.close().await;
                return Err(e);
            }
        };
        let advertise = advertise_for(req.listen_addr, req.advertise_addr, Some(manager_addr))?;
        let dir = &self.inner.dir;
        dir.wipe()
            .map_err(|e| ControlError::Internal(e.to_string()))?;
        let certs = Certs {
            ca_pem: joined.ca_pem,
            cert_pem: joined.cert_pem,
            key_pem,
        };
        let mut managers = joined.managers;
        if managers.is_empty() {
            managers.push(manager_addr.to_string());
        }
        let file = NodeFile {
            node_id: joined.node_id.clone(),
            cluster_id: joined.cluster_id,
            role: joined.role,
            raft_id: None,
            listen_addr: req.listen_addr.to_string(),
            advertise_addr: advertise.to_string(),
            managers,
            join_token: (joined.role == Role::Worker).then(|| req.token.trim().to_string()),
        };
        dir.save_certs(&certs)
            .map_err(|e| ControlError::Internal(e.to_string()))?;
        dir.save_state(&file)
            .map_err(|e| ControlError::Internal(e.to_string()))?;
        transport
            .set_identity(identity_from(&certs)?)
            .map_err(|e| ControlError::Internal(format!("cannot use the node certificate: {e}")))?;
        let running = self.new_running(file, certs, transport);
        // The leader replicates to us while adding us: serve raft first.
        self.start_serving(&running);
        if joined.role == Role::Manager {
            if let Err(e) = session::become_raft_member(&running).await {
                running.stop().await;
                let _ = self.inner.dir.wipe();
                return Err(e);
            }
        }
        self.start_session(&running);
        info!(node.id = %joined.node_id, role = joined.role.as_str(), "joined the swarm");
        Ok(running)
    }

    async fn join_with(
        &self,
        transport: &Transport,
        token: &pki::JoinToken,
        req: &JoinRequest,
    ) -> ControlResult<(rpc::Joined, String, SocketAddr)> {
        join_through(
            transport,
            &self.inner.description,
            token,
            &req.remote_addrs,
            req.advertise_addr,
            req.availability,
            None,
        )
        .await
    }
}

/// The join protocol from the joiner's side: find a manager whose CA matches
/// the token, then send the token's secret with a CSR. Returns the answer,
/// our key and the manager's address. With `rejoin`, come back as that node
/// with its existing key (certificate expired while the node was off).
async fn join_through(
    transport: &Transport,
    description: &NodeDescription,
    token: &pki::JoinToken,
    remote_addrs: &[String],
    advertise_addr: Option<SocketAddr>,
    availability: crate::store::Availability,
    rejoin: Option<(crate::store::NodeId, String)>,
) -> ControlResult<(rpc::Joined, String, SocketAddr)> {
    {
        let kc = match &rejoin {
            Some((_, key_pem)) => pki::KeyAndCsr {
                key_pem: key_pem.clone(),
                csr_pem: pki::csr_for_key(key_pem)
                    .map_err(|e| ControlError::Internal(e.to_string()))?,
            },
            None => pki::new_key_and_csr().map_err(|e| ControlError::Internal(e.to_string()))?,
        };
        let mut last_err = None;
        for remote in remote_addrs {
            let addrs = match resolve(remote).await {
                Ok(a) => a,
                Err(e) => {
                    last_err = Some(e);
                    continue;
                }
            };
            for addr in addrs {
                let (bytes, _chain) = match transport
                    .join_call(addr, None, rpc::encode(&Request::GetCa), JOIN_TIMEOUT)
                    .await
                {
                    Ok(r) => r,
                    Err(e) => {
                        last_err = Some(ControlError::Unavailable(format!(
                            "cannot reach a manager at {addr}: {e}"
                        )));
                        continue;
                    }
                };
                let ca_pem = match rpc::decode::<Reply>(&bytes).map_err(ControlError::Internal)? {
                    Reply::Ca { cert_pem } => cert_pem,
                    Reply::Error(e) => return Err(crate::manager::rpc_to_control(e)),
                    other => {
                        return Err(ControlError::Internal(format!(
                            "unexpected answer from {addr}: {other:?}"
                        )))
                    }
                };
                // During a root rotation the answer is a bundle: pin the
                // root the token names, and trust only that one.
                let pinned = ca_rotation::pinned_root(&ca_pem, &token.ca_digest).map_err(|e| {
                    ControlError::Unavailable(format!(
                        "the manager at {addr} sent an unusable CA certificate: {e}"
                    ))
                })?;
                let Some(ca_der) = pinned else {
                    return Err(ControlError::InvalidArgument(format!(
                        "The manager at {addr} belongs to a different swarm: its CA certificate does not match the join token (or something is impersonating it, or the swarm's root CA was rotated since the token was issued). Check the address, and get the current token from a manager of the swarm you want to join with `apiary swarm join-token worker`."
                    )));
                };
                let join = Request::Join(RpcJoin {
                    secret: token.secret.clone(),
                    csr_pem: kc.csr_pem.clone(),
                    description: description.clone(),
                    advertise_addr: advertise_addr.map(|a| a.to_string()).unwrap_or_default(),
                    availability,
                    observed_ip: None,
                    rejoin: rejoin.as_ref().map(|(id, _)| id.clone()),
                });
                let (bytes, _) = transport
                    .join_call(addr, Some(ca_der), rpc::encode(&join), JOIN_TIMEOUT)
                    .await
                    .map_err(|e| {
                        ControlError::Unavailable(format!("joining through {addr} failed: {e}"))
                    })?;
                return match rpc::decode::<Reply>(&bytes).map_err(ControlError::Internal)? {
                    Reply::Joined(j) => Ok((j, kc.key_pem, addr)),
                    Reply::Error(e) => Err(crate::manager::rpc_to_control(e)),
                    other => Err(ControlError::Internal(format!(
                        "unexpected answer from {addr}: {other:?}"
                    ))),
                };
            }
        }
        Err(last_err
            .unwrap_or_else(|| ControlError::Unavailable("no manager could be reached".into())))
    }
}

/// Bind again right after closing the previous endpoint on the same port:
/// quinn releases the socket a moment after `close`.
async fn bind_retrying(
    listen: SocketAddr,
    identity: Identity,
    reset_secret: Option<[u8; 32]>,
) -> ControlResult<Transport> {
    let mut attempts = 0;
    loop {
        match Transport::bind_with_reset_secret(listen, Some(identity.clone()), reset_secret) {
            Ok(t) => return Ok(t),
            Err(e) if attempts < 30 => {
                attempts += 1;
                tracing::debug!("rebinding {listen}: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                return Err(ControlError::InvalidArgument(format!(
                    "cannot listen on {listen}: {e}"
                )))
            }
        }
    }
}

/// Parse `host:port`, `ip:port` or an IP (default port 2377).
pub fn parse_addr(s: &str) -> ControlResult<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, DEFAULT_PORT));
    }
    Err(ControlError::InvalidArgument(format!(
        "invalid address {s:?}: expected IP or IP:PORT"
    )))
}

async fn resolve(remote: &str) -> ControlResult<Vec<SocketAddr>> {
    if let Ok(a) = parse_addr(remote) {
        return Ok(vec![a]);
    }
    let with_port = if remote.contains(':') {
        remote.to_string()
    } else {
        format!("{remote}:{DEFAULT_PORT}")
    };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&with_port)
        .await
        .map_err(|e| {
            ControlError::InvalidArgument(format!("cannot resolve manager address {remote:?}: {e}"))
        })?
        .collect();
    if addrs.is_empty() {
        return Err(ControlError::InvalidArgument(format!(
            "manager address {remote:?} resolves to nothing"
        )));
    }
    Ok(addrs)
}

/// The address to advertise: the one given, else the listen address, else
/// (listening on all interfaces) the local address that routes to `towards`.
fn advertise_for(
    listen: SocketAddr,
    advertise: Option<SocketAddr>,
    towards: Option<SocketAddr>,
) -> ControlResult<SocketAddr> {
    if let Some(a) = advertise {
        if a.ip().is_unspecified() {
            return Err(ControlError::InvalidArgument(format!(
                "advertise address must be a non-zero IP address, not {a}"
            )));
        }
        let port = if a.port() == 0 {
            listen.port()
        } else {
            a.port()
        };
        return Ok(SocketAddr::new(a.ip(), port));
    }
    if !listen.ip().is_unspecified() {
        return Ok(listen);
    }
    // A UDP connect only consults the routing table; nothing is sent.
    let probe = towards.unwrap_or_else(|| SocketAddr::from(([192, 0, 2, 1], 9)));
    let ip = std::net::UdpSocket::bind(("0.0.0.0", 0))
        .and_then(|s| s.connect(probe).and_then(|_| s.local_addr()))
        .map(|a| a.ip())
        .map_err(|_| {
            ControlError::InvalidArgument(
                "could not choose an address to advertise to other nodes: use --advertise-addr"
                    .into(),
            )
        })?;
    Ok(SocketAddr::new(ip, listen.port()))
}

impl Control for NodeHandle {
    fn host_info(&self) -> HostInfo {
        self.inner.host.clone()
    }

    async fn swarm_info(&self) -> SwarmInfo {
        let locked = self
            .inner
            .locked
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some((f, _)) = locked {
            return SwarmInfo {
                state: LocalNodeState::Locked,
                node_id: Some(f.node_id.clone()),
                node_addr: ip_of(&f.advertise_addr),
                is_manager: false,
                error: String::new(),
                remote_managers: Vec::new(),
                cluster: None,
                nodes: None,
                managers: None,
                warnings: Vec::new(),
            };
        }
        let Some(r) = self.current() else {
            return SwarmInfo {
                state: LocalNodeState::Inactive,
                node_id: None,
                node_addr: String::new(),
                is_manager: false,
                error: String::new(),
                remote_managers: Vec::new(),
                cluster: None,
                nodes: None,
                managers: None,
                warnings: Vec::new(),
            };
        };
        let f = r.file();
        let mut info = SwarmInfo {
            state: LocalNodeState::Active,
            node_id: Some(f.node_id.clone()),
            node_addr: ip_of(&f.advertise_addr),
            is_manager: false,
            error: String::new(),
            remote_managers: Vec::new(),
            cluster: None,
            nodes: None,
            managers: None,
            warnings: Vec::new(),
        };
        match r.manager() {
            Some(m) => {
                let state = m.state.read();
                info.is_manager = true;
                info.cluster = state.cluster.clone();
                info.nodes = Some(state.nodes.len());
                let managers: Vec<&Node> = state.managers().collect();
                info.managers = Some(managers.len());
                info.remote_managers = managers
                    .iter()
                    .filter_map(|n| {
                        n.manager_status.as_ref().map(|ms| RemoteManager {
                            node_id: n.id.clone(),
                            addr: ms.addr.clone(),
                        })
                    })
                    .collect();
                if managers.len().is_multiple_of(2) {
                    info.warnings.push(format!(
                        "WARNING: the swarm has an even number of managers ({}): it tolerates no more failures than {} would. Use an odd number (3, 5 or 7).",
                        managers.len(),
                        managers.len() - 1
                    ));
                }
            }
            None => {
                info.remote_managers = f
                    .managers
                    .iter()
                    .map(|a| RemoteManager {
                        node_id: crate::store::NodeId(String::new()),
                        addr: a.clone(),
                    })
                    .collect();
            }
        }
        info
    }

    async fn swarm_inspect(&self) -> ControlResult<SwarmView> {
        let m = self.manager_or_err()?;
        let cluster = m
            .state
            .read()
            .cluster
            .clone()
            .ok_or_else(|| ControlError::Unavailable("the swarm is still starting".into()))?;
        let digest = pki::ca_digest(&cluster.root_ca.cert_pem)
            .map_err(|e| ControlError::Internal(e.to_string()))?;
        Ok(SwarmView {
            worker_token: pki::JoinToken::new(digest, cluster.join_secrets.worker.clone())
                .to_string(),
            manager_token: pki::JoinToken::new(digest, cluster.join_secrets.manager.clone())
                .to_string(),
            cluster,
        })
    }

    async fn swarm_init(&self, req: InitRequest) -> ControlResult<crate::store::NodeId> {
        let mut phase = self.inner.phase.lock().await;
        if self.is_locked() {
            return Err(ControlError::Locked);
        }
        let (running, id) = match (&*phase, req.force_new_cluster) {
            (Some(r), true) => self.force_new_cluster(r.clone(), req).await?,
            (Some(_), false) => return Err(ControlError::AlreadyInSwarm),
            (None, _) => self.init_new(req).await?,
        };
        *phase = Some(running.clone());
        *self
            .inner
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(running);
        Ok(id)
    }

    async fn swarm_join(&self, req: JoinRequest) -> ControlResult<()> {
        let mut phase = self.inner.phase.lock().await;
        if self.is_locked() {
            return Err(ControlError::Locked);
        }
        if let Some(running) = phase.clone() {
            // A node whose certificate expired while it was off comes back
            // as itself with a valid token, instead of leave + join.
            // So does one whose swarm rotated its root CA while it was
            // away: the token names a root it does not know.
            if running.cert_expired()
                || !ca_rotation::trusts_token_root(&running.certs().ca_pem, &req.token)
            {
                running.rejoin(&req.token).await?;
                if running.file().role == Role::Worker {
                    let token = req.token.trim().to_string();
                    running.update_file(|f| f.join_token = Some(token))?;
                }
                return Ok(());
            }
            return Err(ControlError::AlreadyInSwarm);
        }
        let running = self.join(req).await?;
        *phase = Some(running.clone());
        *self
            .inner
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(running);
        Ok(())
    }

    async fn swarm_leave(&self, force: bool) -> ControlResult<()> {
        let mut phase = self.inner.phase.lock().await;
        if self.is_locked() {
            if !force {
                return Err(ControlError::FailedPrecondition(
                    "This manager is locked. Unlock it with `apiary swarm unlock`, or leave with `--force`, which erases its copy of the swarm's state".into(),
                ));
            }
            self.clear_tasks().await;
            self.inner
                .dir
                .wipe()
                .map_err(|e| ControlError::Internal(e.to_string()))?;
            *self.inner.locked.write().unwrap_or_else(|p| p.into_inner()) = None;
            info!("left the swarm while locked");
            return Ok(());
        }
        let Some(running) = phase.clone() else {
            return Err(ControlError::FailedPrecondition(
                "This node is not part of a swarm".into(),
            ));
        };
        if let Some(m) = running.manager() {
            let (managers, reachable) = {
                let state = m.state.read();
                let managers: Vec<&Node> = state.managers().collect();
                let reachable = managers
                    .iter()
                    .filter(|n| {
                        n.manager_status
                            .as_ref()
                            .is_some_and(|s| s.reachability == Reachability::Reachable)
                    })
                    .count();
                (managers.len(), reachable)
            };
            if !force {
                let msg = if managers <= 1 {
                    "You are attempting to leave the swarm on a node that is participating as a manager. Removing the last manager erases all current state of the swarm. Use `--force` to ignore this message.".to_string()
                } else {
                    format!(
                        "You are attempting to leave the swarm on a node that is participating as a manager. Removing this node leaves {} managers out of {managers}. Without a Raft quorum your swarm will be inaccessible. The only way to restore a swarm that has lost consensus is to reinitialize it with `--force-new-cluster`. Use `--force` to suppress this message.",
                        reachable.saturating_sub(1)
                    )
                };
                return Err(ControlError::FailedPrecondition(msg));
            }
            if managers > 1 {
                let caller = running.self_caller();
                if let Reply::Error(e) = m.handle(caller, Request::Leave).await {
                    warn!("could not leave raft cleanly: {e}");
                }
            }
        } else {
            session::notify_leave(&running).await;
        }
        running.stop().await;
        self.clear_tasks().await;
        self.inner
            .dir
            .wipe()
            .map_err(|e| ControlError::Internal(e.to_string()))?;
        *phase = None;
        *self
            .inner
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner()) = None;
        info!("left the swarm");
        Ok(())
    }

    async fn swarm_update(&self, req: SwarmUpdate) -> ControlResult<()> {
        let m = self.manager_or_err()?;
        if req.rotate_unlock_key && !req.spec.autolock {
            return Err(ControlError::FailedPrecondition(
                "cannot rotate the unlock key: autolock is not turned on (`apiary swarm update --autolock=true`)".into(),
            ));
        }
        let autolock = req.spec.autolock;
        let had_key = m
            .state
            .read()
            .cluster
            .as_ref()
            .is_some_and(|c| c.unlock_key.is_some());
        if req.spec.dispatcher_heartbeat_ns < crate::store::NANOS_PER_SEC / 10 {
            return Err(ControlError::InvalidArgument(
                "dispatcher heartbeat period must be at least 100ms".into(),
            ));
        }
        if req.spec.cert_expiry_ns < 3600 * crate::store::NANOS_PER_SEC {
            return Err(ControlError::InvalidArgument(
                "certificate expiry must be at least 1h".into(),
            ));
        }
        let rotate_ca = m
            .state
            .read()
            .cluster
            .as_ref()
            .is_some_and(|c| c.spec.ca_force_rotate != req.spec.ca_force_rotate);
        let now = crate::util::now_rfc3339();
        m.propose(Command::UpdateCluster {
            version: req.version,
            spec: req.spec,
            now: now.clone(),
        })
        .await?;
        if req.rotate_worker_token || req.rotate_manager_token {
            let cmd = Command::RotateJoinSecrets {
                worker: req.rotate_worker_token.then(pki::new_join_secret),
                manager: req.rotate_manager_token.then(pki::new_join_secret),
                now,
            };
            m.propose(cmd).await?;
        }
        if autolock && (!had_key || req.rotate_unlock_key) {
            let key = pki::UnlockKey::generate().to_string();
            m.propose(Command::SetUnlockKey {
                key: Some(key),
                now: crate::util::now_rfc3339(),
            })
            .await?;
        } else if !autolock && had_key {
            m.propose(Command::SetUnlockKey {
                key: None,
                now: crate::util::now_rfc3339(),
            })
            .await?;
        }
        if rotate_ca {
            ca_rotation::rotate_root_ca(&m).await?;
        }
        // Reseal this manager's files before answering, so that a restart
        // right after `swarm update --autolock=true` already finds it locked.
        if let Some(r) = self.current() {
            r.sync_keys(&m)?;
        }
        Ok(())
    }

    async fn unlock_key(&self) -> ControlResult<Option<String>> {
        let m = self.manager_or_err()?;
        let cluster = m.state.read().cluster.clone();
        Ok(cluster
            .filter(|c| c.spec.autolock)
            .and_then(|c| c.unlock_key))
    }

    async fn swarm_unlock(&self, key: &str) -> ControlResult<()> {
        let mut phase = self.inner.phase.lock().await;
        let locked = self
            .inner
            .locked
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some((file, mut certs)) = locked else {
            return Err(ControlError::FailedPrecondition(
                "swarm is not locked!".into(),
            ));
        };
        let key =
            pki::UnlockKey::parse(key).map_err(|e| ControlError::InvalidArgument(e.to_string()))?;
        let path = self.inner.dir.key_file_path();
        let kf = self
            .inner
            .dir
            .key_file()
            .map_err(|e| ControlError::Internal(e.to_string()))?
            .ok_or_else(|| ControlError::Internal(format!("{} is missing", path.display())))?;
        let (dek, tls_key) = kf
            .unlock(&path, &key, keys::now_unix())
            .map_err(|e| match e {
                crate::seal::KeyFileError::WrongKey => ControlError::InvalidArgument(e.to_string()),
                other => ControlError::Internal(other.to_string()),
            })?;
        certs.key_pem = tls_key;
        let running = self
            .resume_unlocked(file, certs, Arc::new(dek), key)
            .await?;
        *self.inner.locked.write().unwrap_or_else(|p| p.into_inner()) = None;
        *phase = Some(running.clone());
        *self
            .inner
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(running);
        info!("unlocked");
        Ok(())
    }

    async fn nodes(&self) -> ControlResult<Vec<NodeView>> {
        let m = self.manager_or_err()?;
        let nodes: Vec<Node> = m.state.read().nodes.values().cloned().collect();
        Ok(nodes.into_iter().map(|n| self.view(&m, n)).collect())
    }

    async fn node(&self, id: &str) -> ControlResult<NodeView> {
        let m = self.manager_or_err()?;
        let n = self.resolve_node(&m, id)?;
        Ok(self.view(&m, n))
    }

    async fn node_update(&self, id: &str, version: u64, spec: NodeSpec) -> ControlResult<()> {
        let m = self.manager_or_err()?;
        let n = self.resolve_node(&m, id)?;
        m.propose(Command::UpdateNodeSpec {
            id: n.id,
            version,
            spec,
            now: crate::util::now_rfc3339(),
        })
        .await?;
        Ok(())
    }

    async fn node_remove(&self, id: &str, force: bool) -> ControlResult<()> {
        let m = self.manager_or_err()?;
        let n = self.resolve_node(&m, id)?;
        if n.manager_status.is_some() {
            return Err(ControlError::FailedPrecondition(format!(
                "node {} is a cluster manager and is a member of the raft cluster. It must be demoted to worker before removal",
                n.id
            )));
        }
        if !force && n.status.state == NodeState::Ready {
            return Err(ControlError::FailedPrecondition(format!(
                "node {} is not down and can't be removed: stop the node first (or make it leave with `apiary swarm leave`), or use --force",
                n.id
            )));
        }
        m.propose(Command::RemoveNode { id: n.id.clone() }).await?;
        m.dispatcher().forget(&n.id);
        Ok(())
    }

    async fn secret_create(
        &self,
        spec: crate::store::SecretSpec,
    ) -> ControlResult<crate::store::SecretId> {
        let m = self.manager_or_err()?;
        secrets::validate_secret_spec(&spec)?;
        let secret = secrets::new_secret(spec, &crate::util::now_rfc3339());
        let id = secret.id.clone();
        m.propose(Command::CreateSecret { secret }).await?;
        Ok(id)
    }

    async fn secrets(&self) -> ControlResult<Vec<crate::store::Secret>> {
        let m = self.manager_or_err()?;
        let state = m.state.read();
        Ok(state
            .secrets
            .values()
            .cloned()
            .map(secrets::without_data)
            .collect())
    }

    async fn secret(&self, id: &str) -> ControlResult<crate::store::Secret> {
        let m = self.manager_or_err()?;
        let s = secrets::resolve_secret(&m.state.read(), id)?;
        Ok(secrets::without_data(s))
    }

    async fn secret_update(
        &self,
        id: &str,
        version: u64,
        spec: crate::store::SecretSpec,
    ) -> ControlResult<()> {
        let m = self.manager_or_err()?;
        let current = secrets::resolve_secret(&m.state.read(), id)?;
        secrets::check_secret_update(&current, &spec)?;
        m.propose(Command::UpdateSecret {
            id: current.id,
            version,
            labels: spec.labels,
            now: crate::util::now_rfc3339(),
        })
        .await?;
        Ok(())
    }

    async fn secret_remove(&self, id: &str) -> ControlResult<()> {
        let m = self.manager_or_err()?;
        let current = secrets::resolve_secret(&m.state.read(), id)?;
        m.propose(Command::RemoveSecret { id: current.id }).await?;
        Ok(())
    }

    async fn config_create(
        &self,
        spec: crate::store::ConfigSpec,
    ) -> ControlResult<crate::store::ConfigId> {
        let m = self.manager_or_err()?;
        secrets::validate_config_spec(&spec)?;
        let config = secrets::new_config(spec, &crate::util::now_rfc3339());
        let id = config.id.clone();
        m.propose(Command::CreateConfig { config }).await?;
        Ok(id)
    }

    async fn configs(&self) -> ControlResult<Vec<crate::store::Config>> {
        let m = self.manager_or_err()?;
        let configs = m.state.read().configs.values().cloned().collect();
        Ok(configs)
    }

    async fn config(&self, id: &str) -> ControlResult<crate::store::Config> {
        let m = self.manager_or_err()?;
        let c = secrets::resolve_config(&m.state.read(), id)?;
        Ok(c)
    }

    async fn config_update(
        &self,
        id: &str,
        version: u64,
        spec: crate::store::ConfigSpec,
    ) -> ControlResult<()> {
        let m = self.manager_or_err()?;
        let current = secrets::resolve_config(&m.state.read(), id)?;
        secrets::check_config_update(&current, &spec)?;
        m.propose(Command::UpdateConfig {
            id: current.id,
            version,
            labels: spec.labels,
            now: crate::util::now_rfc3339(),
        })
        .await?;
        Ok(())
    }

    async fn config_remove(&self, id: &str) -> ControlResult<()> {
        let m = self.manager_or_err()?;
        let current = secrets::resolve_config(&m.state.read(), id)?;
        m.propose(Command::RemoveConfig { id: current.id }).await?;
        Ok(())
    }

    async fn network_create(
        &self,
        spec: crate::store::NetworkSpec,
    ) -> ControlResult<crate::store::NetworkId> {
        let m = self.manager_or_err()?;
        networks::check_create(&m.state.read(), &spec)?;
        let network = networks::new_network(spec, &crate::util::now_rfc3339());
        let id = network.id.clone();
        m.propose(Command::CreateNetwork { network }).await?;
        Ok(id)
    }

    async fn networks(&self) -> ControlResult<Vec<crate::store::Network>> {
        let m = self.manager_or_err()?;
        let list = m.state.read().networks.values().cloned().collect();
        Ok(list)
    }

    async fn events(&self) -> ControlResult<crate::control::EventFeed> {
        Ok(match self.manager_or_err() {
            Ok(m) => {
                let (kept, live) = m.state.events().subscribe();
                (kept, Some(live))
            }
            Err(_) => (Vec::new(), None),
        })
    }

    async fn network(&self, id: &str) -> ControlResult<crate::store::Network> {
        let m = self.manager_or_err()?;
        let n = networks::resolve_network(&m.state.read(), id)?;
        Ok(n)
    }

    async fn network_users(&self, id: &str) -> ControlResult<Vec<String>> {
        let m = self.manager_or_err()?;
        let state = m.state.read();
        let n = networks::resolve_network(&state, id)?;
        Ok(state.services_using_network(&n.id))
    }

    async fn network_remove(&self, id: &str) -> ControlResult<()> {
        let m = self.manager_or_err()?;
        let current = networks::resolve_network(&m.state.read(), id)?;
        m.propose(Command::RemoveNetwork { id: current.id }).await?;
        Ok(())
    }

    async fn service_create(
        &self,
        spec: crate::store::ServiceSpec,
        registry_auth: Option<crate::store::RegistryAuth>,
    ) -> ControlResult<crate::store::ServiceId> {
        let m = self.manager_or_err()?;
        let spec = services::validate(&m.state.read(), spec)?;
        let now = crate::util::now_rfc3339();
        let service = crate::store::Service {
            id: crate::store::ServiceId(pki::new_node_id().0),
            version: 0,
            created_at: now.clone(),
            updated_at: now,
            spec,
            previous_spec: None,
            spec_version: 0,
            previous_spec_version: 0,
            update_status: None,
            registry_auth,
            endpoint: Default::default(),
        };
        let id = service.id.clone();
        m.propose(Command::CreateService { service }).await?;
        Ok(id)
    }

    async fn services(&self) -> ControlResult<Vec<crate::control::ServiceView>> {
        let m = self.manager_or_err()?;
        let state = m.state.read();
        Ok(services::views(&state))
    }

    async fn service(&self, id: &str) -> ControlResult<crate::control::ServiceView> {
        let m = self.manager_or_err()?;
        let state = m.state.read();
        let s = services::resolve_service(&state, id)?;
        Ok(services::view(&state, s))
    }

    async fn service_update(
        &self,
        id: &str,
        version: u64,
        spec: crate::store::ServiceSpec,
        registry_auth: Option<crate::store::RegistryAuth>,
    ) -> ControlResult<()> {
        let m = self.manager_or_err()?;
        let (sid, spec) = {
            let state = m.state.read();
            let current = services::resolve_service(&state, id)?;
            let spec = services::validate(&state, spec)?;
            let (was, now) = (
                crate::store::mode_of(&current.spec),
                crate::store::mode_of(&spec),
            );
            if was != now {
                return Err(ControlError::InvalidArgument(format!(
                    "service mode change is not allowed ({was} to {now}): remove the service and create it again"
                )));
            }
            (current.id.clone(), spec)
        };
        m.propose(Command::UpdateService {
            id: sid,
            version,
            spec,
            registry_auth,
            now: crate::util::now_rfc3339(),
        })
        .await?;
        Ok(())
    }

    async fn service_rollback(&self, id: &str, version: u64) -> ControlResult<()> {
        let m = self.manager_or_err()?;
        let sid = services::resolve_service(&m.state.read(), id)?.id.clone();
        m.propose(Command::RollbackService {
            id: sid,
            guard: crate::store::RollbackGuard::Version(version),
            message: crate::store::updates::MANUAL_ROLLBACK.to_string(),
            now: crate::util::now_rfc3339(),
        })
        .await?;
        Ok(())
    }

    async fn service_remove(&self, id: &str) -> ControlResult<()> {
        let m = self.manager_or_err()?;
        let sid = services::resolve_service(&m.state.read(), id)?.id.clone();
        m.propose(Command::RemoveService {
            id: sid,
            now: crate::util::now_rfc3339(),
        })
        .await?;
        Ok(())
    }

    async fn tasks(
        &self,
        filter: crate::control::TaskFilter,
    ) -> ControlResult<Vec<crate::control::TaskView>> {
        let m = self.manager_or_err()?;
        let state = m.state.read();
        services::filter_tasks(&state, &filter)
    }

    async fn task(&self, id: &str) -> ControlResult<crate::control::TaskView> {
        let m = self.manager_or_err()?;
        let state = m.state.read();
        let t = services::resolve_task(&state, id)?;
        Ok(services::task_view(&state, t))
    }

    async fn logs(
        &self,
        target: crate::control::LogsTarget,
        opts: crate::control::LogsOptions,
    ) -> ControlResult<tokio::sync::mpsc::Receiver<crate::control::LogLine>> {
        let m = self.manager_or_err()?;
        let running = self.current().ok_or(ControlError::NotInSwarm)?;
        logs::stream(running, m, target, opts)
    }

    async fn image_load(&self, tar: Vec<u8>) -> ControlResult<Vec<String>> {
        self.inner
            .executor
            .load_image(tar)
            .await
            .map_err(|e| match e {
                crate::executor::ExecError::Image(m)
                | crate::executor::ExecError::InvalidSpec(m) => ControlError::InvalidArgument(m),
                other => ControlError::Unavailable(other.to_string()),
            })
    }

    async fn images(&self) -> ControlResult<Vec<crate::executor::image::ImageInfo>> {
        self.inner
            .executor
            .images()
            .await
            .map_err(|e| ControlError::Unavailable(e.to_string()))
    }

    async fn image_pull(
        &self,
        req: crate::control::ImagePull,
        progress: tokio::sync::mpsc::UnboundedSender<crate::executor::pull::Progress>,
    ) -> ControlResult<crate::executor::pull::Pulled> {
        let opts = crate::executor::pull::PullOptions {
            credentials: registry::credentials(req.auth.as_ref())?,
            platform: req.platform,
        };
        self.inner
            .executor
            .pull_image(&req.reference, &opts, &|p| {
                // The receiver goes when the client hangs up; the pull
                // goes on regardless.
                let _ = progress.send(p);
            })
            .await
            .map_err(registry::pull_error)
    }

    async fn distribution(
        &self,
        reference: &str,
        auth: Option<crate::executor::pull::AuthConfig>,
    ) -> ControlResult<crate::executor::pull::Distribution> {
        registry::distribution(&self.inner.registries, reference, auth.as_ref()).await
    }

    async fn registry_login(&self, auth: crate::executor::pull::AuthConfig) -> ControlResult<()> {
        registry::login(&self.inner.registries, &auth).await
    }
}

#[cfg(test)]
mod tests;
