//! The manager: a raft member that answers cluster RPCs, proposes writes (or
//! forwards them to the leader), signs certificates, and — while it leads —
//! runs the dispatcher and the role reconciler.

pub(crate) mod assignments;
pub mod ca;
mod dispatcher;
pub mod netview;
pub mod orchestrator;
mod reconciler;
mod roles;
pub mod scheduler;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::control::ControlError;
use crate::pki;
use crate::raft::network::Network;
use crate::raft::{storage, Raft, StateReader};
use crate::rpc::{
    self, Caller, Heartbeat, HeartbeatReply, JoinRequest, Joined, Renewed, Reply, Request, RpcError,
};
use crate::store::{
    Command, ManagerStatus, Node, NodeId, NodeSpec, NodeState, NodeStatus, RaftId, Reachability,
    Response as StoreResponse, Role, State, StoreErrorKind,
};
use crate::transport::Transport;
use crate::transport::MANAGER_SERVER_NAME;

pub use dispatcher::Dispatcher;

/// Raft timing. openraft lets followers refuse votes for a lease (the
/// maximum election timeout) after the last heartbeat, and only then starts
/// the randomised election timeout, so a dead leader is replaced after
/// max + [min, max): 1.2–1.6 s here. Heartbeats every 150 ms mean a leader
/// must miss five in a row (an SD card's fsync stall, a Wi-Fi hiccup) before
/// anyone stands. Swarm's default (10 ticks of 1 s) takes about 11 s.
const RAFT_HEARTBEAT_MS: u64 = crate::raft::runtime::HEARTBEAT_MS;
const ELECTION_TIMEOUT_MIN_MS: u64 = crate::raft::runtime::ELECTION_TIMEOUT_MIN_MS;
const ELECTION_TIMEOUT_MAX_MS: u64 = 800;
/// Entries per AppendEntries (see `raft_config`).
const MAX_PAYLOAD_ENTRIES: u64 = 4;
/// A write that has not committed by then will not commit soon: say so.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a write waits for an election in progress to produce a leader.
const LEADER_WAIT: Duration = Duration::from_millis(2 * ELECTION_TIMEOUT_MAX_MS);
/// A leader that heard from no quorum for this long has lost it.
const QUORUM_ACK_STALE_MS: u64 = 3 * ELECTION_TIMEOUT_MAX_MS;
/// Timeout for forwarding a call to the leader, across leader changes.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// One forwarding attempt: a live leader answers well within this (fsync on
/// a slow SD card included); a dead one is given up on after it.
const FORWARD_ATTEMPT: Duration = Duration::from_millis(1500);
const LEADER_IS_HERE: &str = "this manager became the leader";
const PING_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long a follower waits to apply a write it forwarded before it
/// answers: a healthy follower is a heartbeat (150 ms) behind at most.
const READ_YOUR_WRITE: Duration = Duration::from_secs(2);

pub fn raft_config(snapshot_interval: u64) -> Result<openraft::Config, String> {
    openraft::Config {
        cluster_name: "apiary".into(),
        heartbeat_interval: RAFT_HEARTBEAT_MS,
        election_timeout_min: ELECTION_TIMEOUT_MIN_MS,
        election_timeout_max: ELECTION_TIMEOUT_MAX_MS,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(snapshot_interval.max(1)),
        max_in_snapshot_log_to_keep: 500,
        // openraft gives each AppendEntries one heartbeat interval (150 ms)
        // to complete; its default of 300 entries per payload (a follower
        // catching up on 1 MiB task entries) could never make it, and the
        // leader lost its followers for good (found by the fleet bench).
        max_payload_entries: MAX_PAYLOAD_ENTRIES,
        ..Default::default()
    }
    .validate()
    .map_err(|e| format!("invalid raft configuration: {e}"))
}

/// What a manager knows about itself.
#[derive(Clone, Debug)]
pub struct ManagerIdentity {
    pub node_id: NodeId,
    pub raft_id: RaftId,
    /// `host:port` other managers reach this one on.
    pub addr: String,
}

pub struct Manager {
    pub raft: Raft,
    /// Writes waiting for the batching writer (see `write_batched`).
    writes: tokio::sync::mpsc::UnboundedSender<(Command, WriteReply)>,
    pub state: StateReader,
    pub me: ManagerIdentity,
    transport: Transport,
    dispatcher: Dispatcher,
    /// Membership changes one at a time (openraft refuses overlapping ones).
    membership: tokio::sync::Mutex<()>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Manager {
    /// Open the raft database in `data_dir` and start raft (not initialised:
    /// the caller initialises a new cluster or asks the leader to add us).
    pub async fn start(
        data_dir: &Path,
        me: ManagerIdentity,
        transport: Transport,
        snapshot_interval: u64,
        dek: Arc<crate::seal::Sealer>,
    ) -> Result<Arc<Manager>, ControlError> {
        let path = data_dir.join("raft.redb");
        let damaged = format!(
            "the raft store {} is damaged or unreadable. This manager cannot start from it. \
             To recover: if other managers of the swarm are up, move the data dir aside and join this node again with a manager token; \
             if this was the last manager, start from a healthy copy of the data dir with `apiary swarm init --force-new-cluster`",
            path.display()
        );
        let what = damaged.clone();
        let (log, sm, state) = tokio::task::spawn_blocking(move || {
            crate::util::exit_on_panic(what, || storage::open(&path, dek))
        })
        .await
        .map_err(|e| ControlError::Internal(format!("opening the raft store failed: {e}")))?
        .map_err(|e| ControlError::Internal(format!("{damaged} ({e})")))?;
        let config = Arc::new(raft_config(snapshot_interval).map_err(ControlError::Internal)?);
        let answers = crate::raft::network::Answers::default();
        let network = Network::new(transport.clone(), answers.clone());
        let raft = Raft::new(me.raft_id, config, network, log, sm)
            .await
            .map_err(|e| ControlError::Internal(format!("cannot start raft: {e}")))?;
        let (writes, queue) = tokio::sync::mpsc::unbounded_channel();
        let manager = Arc::new(Manager {
            writes,
            raft,
            state,
            me,
            transport,
            dispatcher: Dispatcher::new(answers),
            membership: tokio::sync::Mutex::new(()),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        manager.tasks.spawn(leader_supervisor(manager.clone()));
        manager.tasks.spawn(batching_writer(
            manager.raft.clone(),
            queue,
            manager.shutdown.clone(),
        ));
        Ok(manager)
    }

    pub async fn stop(&self) {
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        if let Err(e) = self.raft.shutdown().await {
            warn!("raft did not shut down cleanly: {e}");
        }
    }

    /// Start a one-member raft cluster with us as its voter.
    pub async fn initialize(&self) -> Result<(), ControlError> {
        let mut members = BTreeMap::new();
        members.insert(
            self.me.raft_id,
            BasicNode {
                addr: self.me.addr.clone(),
            },
        );
        self.raft
            .initialize(members)
            .await
            .map_err(|e| ControlError::Internal(format!("cannot initialise raft: {e}")))?;
        self.wait_for_leader(LEADER_WAIT).await;
        Ok(())
    }

    pub fn is_leader(&self) -> bool {
        self.raft.server_metrics().borrow().current_leader == Some(self.me.raft_id)
    }

    pub fn leader_raft_id(&self) -> Option<RaftId> {
        self.raft.server_metrics().borrow().current_leader
    }

    /// The leader's cluster address, if one is known.
    ///
    /// Here and below: the server metrics change only with leadership and
    /// membership. The full metrics change with every entry applied, which
    /// woke every forwarded call waiting on a leader change (thousands with
    /// a busy fleet) on every commit.
    fn leader_addr(&self) -> Option<(RaftId, String)> {
        let m = self.raft.server_metrics();
        let m = m.borrow();
        let leader = m.current_leader?;
        let node = m.membership_config.membership().get_node(&leader)?;
        Some((leader, node.addr.clone()))
    }

    async fn wait_for_leader(&self, patience: Duration) -> Option<RaftId> {
        let mut rx = self.raft.server_metrics();
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            if let Some(l) = rx.borrow_and_update().current_leader {
                return Some(l);
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return None;
            }
        }
    }

    /// Commit `cmd` through raft: here if we lead, else on the leader.
    pub async fn propose(&self, cmd: Command) -> Result<StoreResponse, ControlError> {
        let resp = self.propose_raw(cmd).await?;
        match resp.error {
            None => Ok(resp),
            Some(e) => Err(match e.kind {
                StoreErrorKind::NotFound => ControlError::NotFound(e.message),
                StoreErrorKind::Conflict => ControlError::Conflict(e.message),
                StoreErrorKind::Invalid => ControlError::FailedPrecondition(e.message),
            }),
        }
    }

    /// Resolves when raft's core stops: with why if it stopped on its own
    /// (a storage error such as a full disk), None if it was stopped
    /// (shutdown, demotion). The process
    /// must not go on serving then: it would answer reads from a state
    /// that no longer follows the log, and refuse every write, until
    /// restarted (issue found with a full data dir).
    pub async fn raft_failed(&self) -> Option<String> {
        let mut rx = self.raft.metrics();
        loop {
            match &rx.borrow_and_update().running_state {
                Ok(()) => {}
                // Stopped on purpose (shutdown, demotion): nothing to report.
                Err(openraft::error::Fatal::Stopped) => return None,
                Err(e) => return Some(e.to_string()),
            }
            if rx.changed().await.is_err() {
                return None;
            }
        }
    }

    /// After a write the leader committed for us: wait until this
    /// manager has applied it too, so that a client that reads right after
    /// its write (the Python SDK's create-then-get) reads it here as well.
    /// Bounded: a follower far behind answers from its state as it is.
    async fn read_your_write(&self, index: Option<u64>) {
        let Some(index) = index else { return };
        if let Err(e) = self
            .raft
            .wait(Some(READ_YOUR_WRITE))
            .applied_index_at_least(Some(index), "a forwarded write applied here")
            .await
        {
            debug!(index, "a forwarded write is not applied here yet: {e}");
        }
    }

    async fn propose_raw(&self, cmd: Command) -> Result<StoreResponse, ControlError> {
        loop {
            let leader = match self.leader_raft_id() {
                Some(l) => Some(l),
                None => self.wait_for_leader(LEADER_WAIT).await,
            };
            let Some(leader) = leader else {
                return Err(ControlError::NoQuorum(self.quorum_message().await));
            };
            if leader != self.me.raft_id {
                return match self.forward(Request::Propose(cmd.clone()), None).await {
                    // Leadership came to us meanwhile: write here.
                    Err(ControlError::Unavailable(m)) if m == LEADER_IS_HERE => continue,
                    Err(e) => Err(e),
                    Ok(Reply::Proposed(r)) => {
                        self.read_your_write(r.index).await;
                        Ok(r)
                    }
                    Ok(Reply::Error(e)) => Err(rpc_to_control(e)),
                    Ok(other) => Err(ControlError::Internal(format!(
                        "unexpected answer from the leader: {other:?}"
                    ))),
                };
            }
            // A leader that has not heard from a quorum for a while has lost
            // it: say so now. (A brand-new leader has no acknowledgement yet;
            // its write is bounded by WRITE_TIMEOUT instead.)
            let stale = {
                let m = self.raft.metrics().borrow().clone();
                let voters = m.membership_config.membership().voter_ids().count();
                voters > 1
                    && m.millis_since_quorum_ack
                        .is_some_and(|ms| ms > QUORUM_ACK_STALE_MS)
            };
            if stale {
                return Err(ControlError::NoQuorum(self.quorum_message().await));
            }
            return match tokio::time::timeout(WRITE_TIMEOUT, self.write_batched(cmd.clone())).await
            {
                Err(_) => Err(ControlError::NoQuorum(self.quorum_message().await)),
                Ok(Ok(r)) => Ok(r),
                // Leadership moved while we were writing: go round again.
                Ok(Err(WriteError::NotLeader)) => continue,
                Ok(Err(WriteError::Failed(e))) => {
                    Err(ControlError::Internal(format!("raft write failed: {e}")))
                }
            };
        }
    }

    /// Queue `cmd` for the writer, which commits whatever has queued up as
    /// one raft entry. openraft 0.9 appends (and fsyncs) each client write on
    /// its own; batching concurrent writes shares one append and one apply.
    async fn write_batched(&self, cmd: Command) -> Result<StoreResponse, WriteError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.writes
            .send((cmd, tx))
            .map_err(|_| WriteError::Failed("the manager is stopping".into()))?;
        rx.await
            .map_err(|_| WriteError::Failed("the manager is stopping".into()))?
    }

    /// Send `req` to the current leader, waiting briefly for one. A leader
    /// that dies mid-call is noticed by the attempt timeout (rather than by
    /// QUIC's idle timeout) and the call goes to its successor: that is what
    /// keeps a follower's writes available through a failover. A call that
    /// reached the dead leader may thus run twice; versioned updates then
    /// answer "out of sequence", which tells the user to look again.
    pub async fn forward(
        &self,
        req: Request,
        caller: Option<Caller>,
    ) -> Result<Reply, ControlError> {
        let req = match caller {
            Some(caller) => Request::Forwarded {
                caller,
                inner: Box::new(req),
            },
            None => req,
        };
        let bytes = rpc::encode(&req);
        let deadline = tokio::time::Instant::now() + FORWARD_TIMEOUT;
        loop {
            let mut target = self.leader_addr();
            if target.is_none() {
                self.wait_for_leader(LEADER_WAIT).await;
                target = self.leader_addr();
            }
            let Some((leader, addr)) = target else {
                return Err(ControlError::NoQuorum(self.quorum_message().await));
            };
            if leader == self.me.raft_id {
                return Err(ControlError::Unavailable(LEADER_IS_HERE.into()));
            }
            let addr: SocketAddr = addr.parse().map_err(|e| {
                ControlError::Internal(format!("leader address {addr:?} is invalid: {e}"))
            })?;
            let attempt = FORWARD_ATTEMPT
                .min(deadline.saturating_duration_since(tokio::time::Instant::now()));
            let call = self
                .transport
                .call(addr, MANAGER_SERVER_NAME, bytes.clone(), attempt);
            let result = tokio::select! {
                r = call => r,
                // A new leader was elected while we waited on the old one:
                // it will not answer, ask the new one at once.
                _ = self.wait_for_leader_change(leader, deadline) => {
                    debug!(%addr, "the leader changed while a call was forwarded to it; retrying");
                    continue;
                }
            };
            match result {
                Ok(b) => return rpc::decode::<Reply>(&b).map_err(ControlError::Internal),
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(ControlError::Unavailable(format!(
                        "the leader at {addr} did not answer: {e}"
                    )))
                }
                Err(e) => {
                    debug!(%addr, "forwarding to the leader failed, waiting for a new one: {e}");
                    let soon = tokio::time::Instant::now() + Duration::from_millis(500);
                    self.wait_for_leader_change(leader, soon.min(deadline))
                        .await;
                }
            }
        }
    }

    /// Wait until raft names a leader other than `old` (or `deadline`).
    async fn wait_for_leader_change(&self, old: RaftId, deadline: tokio::time::Instant) {
        let mut rx = self.raft.server_metrics();
        loop {
            if rx.borrow_and_update().current_leader != Some(old) {
                return;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return,
            }
        }
    }

    /// Explain a lost quorum: which managers do not answer, and the way out.
    pub async fn quorum_message(&self) -> String {
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let voters: Vec<(RaftId, String)> = membership
            .membership()
            .nodes()
            .filter(|(id, _)| membership.membership().voter_ids().any(|v| v == **id))
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect();
        let probes = voters
            .iter()
            .filter(|(id, _)| *id != self.me.raft_id)
            .map(|(id, addr)| {
                let transport = self.transport.clone();
                let addr = addr.clone();
                let id = *id;
                async move {
                    let ok = match addr.parse::<SocketAddr>() {
                        Ok(a) => transport
                            .call(
                                a,
                                MANAGER_SERVER_NAME,
                                rpc::encode(&Request::Ping),
                                PING_TIMEOUT,
                            )
                            .await
                            .is_ok(),
                        Err(_) => false,
                    };
                    (id, addr, ok)
                }
            });
        let results = futures::future::join_all(probes).await;
        let state = self.state.read();
        let name_of = |raft_id: RaftId| {
            state
                .managers()
                .find(|n| n.manager_status.as_ref().map(|m| m.raft_id) == Some(raft_id))
                .map(|n| n.description.hostname.clone())
                .unwrap_or_else(|| format!("raft member {raft_id:x}"))
        };
        let down: Vec<String> = results
            .iter()
            .filter(|(_, _, ok)| !ok)
            .map(|(id, addr, _)| format!("{} at {addr}", name_of(*id)))
            .collect();
        let total = voters.len();
        let needed = total / 2 + 1;
        if down.is_empty() {
            return format!(
                "the swarm has no leader right now (an election is in progress or the managers cannot reach each other); {total} managers, {needed} needed for changes. Retry in a few seconds."
            );
        }
        format!(
            "The swarm has lost quorum: {} of {total} managers are unreachable ({}), and a swarm of {total} managers needs {needed} to make changes. Cluster changes are refused; running tasks keep running and reads still answer from this manager's copy. Bring the unreachable managers back, or if they are gone for good, run `apiary swarm init --force-new-cluster` on this manager to continue with it as the only manager (all state is kept).",
            down.len(),
            down.join(", ")
        )
    }

    /// Build a node's certificate: the role the cluster wants for it, except
    /// that a node stays a manager until raft has let go of it.
    fn issue_cert(
        &self,
        state: &State,
        node_id: &NodeId,
        csr_pem: &str,
        want: Role,
    ) -> Result<(String, String), RpcError> {
        let cluster = state
            .cluster
            .as_ref()
            .ok_or_else(|| RpcError::Other("the swarm is not initialised yet".into()))?;
        let validity = Duration::from_nanos(
            cluster
                .spec
                .cert_expiry_ns
                .max(3600 * crate::store::NANOS_PER_SEC) as u64,
        );
        let cert = pki::sign_csr(
            &cluster.root_ca,
            csr_pem,
            node_id,
            want,
            &cluster.id,
            validity,
        )
        .map_err(|e| RpcError::Other(format!("cannot sign the certificate request: {e}")))?;
        // During a root rotation the certificate travels with the new root
        // cross-signed by the old, and the node trusts both roots.
        Ok((ca::issued_chain(cluster, &cert), ca::trust_bundle(cluster)))
    }

    /// Serve one cluster RPC. `caller` is established by the transport layer
    /// (certificate) or vouched for by a forwarding manager.
    pub async fn handle(self: &Arc<Self>, caller: Caller, req: Request) -> Reply {
        match self.handle_inner(caller, req).await {
            Ok(r) => r,
            Err(e) => Reply::Error(e),
        }
    }

    async fn handle_inner(
        self: &Arc<Self>,
        caller: Caller,
        req: Request,
    ) -> Result<Reply, RpcError> {
        // Raft traffic needs a manager certificate of a node still in the
        // swarm; other manager calls also need the cluster to still want the
        // node as a manager (a demoted node keeps its manager certificate
        // until it renews, and must not use it meanwhile).
        let (in_swarm, wanted_manager) = match &caller.node_id {
            Some(id) => {
                let state = self.state.read();
                match state.nodes.get(id) {
                    Some(n) => (
                        true,
                        n.spec.role == Role::Manager || n.manager_status.is_some(),
                    ),
                    // Unknown here (this manager lags, or is new and not yet
                    // caught up): judged on its certificate, unless removed.
                    None => (!state.removed.contains(id), true),
                }
            }
            None => (false, false),
        };
        let cert_manager = caller.role == Some(Role::Manager);
        let require_raft_peer = || {
            if cert_manager && in_swarm {
                Ok(())
            } else {
                Err(RpcError::PermissionDenied(
                    "only managers of this swarm may send raft messages".into(),
                ))
            }
        };
        let require_manager = || {
            if cert_manager && in_swarm && wanted_manager {
                Ok(())
            } else {
                Err(RpcError::PermissionDenied(
                    "only managers may make this call".into(),
                ))
            }
        };
        match req {
            Request::Ping => Ok(Reply::Ok),
            Request::GetCa => {
                let state = self.state.read();
                let cluster = state
                    .cluster
                    .as_ref()
                    .ok_or_else(|| RpcError::Other("the swarm is not initialised yet".into()))?;
                // The trust bundle: the current root first (the join
                // token's digest), then any a rotation is replacing.
                Ok(Reply::Ca {
                    cert_pem: ca::trust_bundle(cluster),
                })
            }
            Request::AppendEntries(r) => {
                require_raft_peer()?;
                Ok(Reply::AppendEntries(self.raft.append_entries(r).await))
            }
            Request::Vote(r) => {
                require_raft_peer()?;
                Ok(Reply::Vote(self.raft.vote(r).await))
            }
            Request::InstallSnapshot(r) => {
                require_raft_peer()?;
                Ok(Reply::InstallSnapshot(self.raft.install_snapshot(r).await))
            }
            Request::Elect => {
                require_raft_peer()?;
                self.raft
                    .trigger()
                    .elect()
                    .await
                    .map_err(|e| RpcError::Other(e.to_string()))?;
                Ok(Reply::Ok)
            }
            Request::Forwarded {
                caller: inner_caller,
                inner,
            } => {
                require_manager()?;
                Box::pin(self.handle_inner(inner_caller, *inner)).await
            }
            Request::Propose(cmd) => {
                require_manager()?;
                match self.propose_raw(cmd).await {
                    Ok(r) => Ok(Reply::Proposed(r)),
                    Err(e) => Err(control_to_rpc(e)),
                }
            }
            // Any manager answers these from its own state: a long poll
            // forwarded to the leader was cut off by the forwarding timeout
            // and sent again, over and over (found with 1,000 nodes).
            Request::Assignments { known, have } => {
                let node = caller.node_id.clone().ok_or_else(|| {
                    RpcError::PermissionDenied("asking for tasks needs a node certificate".into())
                })?;
                Ok(Reply::Assignments(
                    assignments::wait_for(self, &node, known, &have).await?,
                ))
            }
            // `propose` sends the write on to the leader.
            Request::ReportTasks { updates } => {
                let node = caller.node_id.clone().ok_or_else(|| {
                    RpcError::PermissionDenied("reporting tasks needs a node certificate".into())
                })?;
                self.propose(Command::SetTaskStatus {
                    updates,
                    reporter: Some(node),
                })
                .await
                .map_err(control_to_rpc)?;
                Ok(Reply::Ok)
            }
            // The rest only the leader can answer: forward, vouching for the caller.
            req if !self.is_leader() => match self.forward(req.clone(), Some(caller.clone())).await
            {
                Err(ControlError::Unavailable(m)) if m == LEADER_IS_HERE => {
                    Box::pin(self.handle_inner(caller, req)).await
                }
                r => r.map_err(control_to_rpc),
            },
            Request::Join(j) => self.handle_join(caller, j).await.map(Reply::Joined),
            Request::RaftJoin {
                node_id,
                raft_id,
                addr,
            } => {
                require_manager()?;
                if caller.node_id.as_ref() != Some(&node_id) {
                    return Err(RpcError::PermissionDenied(
                        "a node may only add itself to raft".into(),
                    ));
                }
                self.add_voter(&node_id, raft_id, addr).await?;
                Ok(Reply::Ok)
            }
            Request::Heartbeat(hb) => self
                .handle_heartbeat(caller, hb)
                .await
                .map(Reply::Heartbeat),
            Request::RenewCert { csr_pem } => self
                .handle_renew(caller, &csr_pem)
                .await
                .map(Reply::Renewed),
            Request::Leave => self.handle_leave(caller).await.map(|_| Reply::Ok),
            Request::TaskLogs(_) => Err(RpcError::Other(
                "task logs are served by the node that runs the task".into(),
            )),
        }
    }

    async fn handle_join(&self, caller: Caller, j: JoinRequest) -> Result<Joined, RpcError> {
        if let Some(id) = j.rejoin.clone() {
            let role = self.token_role(&j.secret)?;
            return self.handle_rejoin(&id, role, &j.csr_pem).await;
        }
        let (role, node, cert_pem, ca_pem, cluster_id, managers) = {
            let state = self.state.read();
            let cluster = state
                .cluster
                .as_ref()
                .ok_or_else(|| RpcError::Other("the swarm is not initialised yet".into()))?;
            let role = if pki::secrets_equal(&j.secret, &cluster.join_secrets.manager) {
                Role::Manager
            } else if pki::secrets_equal(&j.secret, &cluster.join_secrets.worker) {
                Role::Worker
            } else {
                return Err(RpcError::InvalidToken(
                    "The join token is not valid for this swarm: it may have been rotated. Get the current one with `apiary swarm join-token worker` (or `manager`) on a manager.".into(),
                ));
            };
            let node_id = pki::new_node_id();
            let (cert_pem, ca_pem) = self.issue_cert(&state, &node_id, &j.csr_pem, role)?;
            let expiry = pki::parse_node_cert_pem(&cert_pem)
                .map(|i| crate::util::rfc3339(i.not_after))
                .unwrap_or_default();
            let ip = advertised_ip(&j.advertise_addr)
                .or(j.observed_ip.clone())
                .unwrap_or(caller.ip.clone());
            let now = crate::util::now_rfc3339();
            let node = Node {
                id: node_id,
                version: 0,
                created_at: now.clone(),
                updated_at: now,
                spec: NodeSpec {
                    name: String::new(),
                    labels: Default::default(),
                    role,
                    availability: j.availability,
                },
                description: j.description,
                status: NodeStatus {
                    state: NodeState::Ready,
                    message: String::new(),
                    addr: ip,
                    port: j
                        .advertise_addr
                        .parse::<SocketAddr>()
                        .map(|a| a.port())
                        .unwrap_or(0),
                },
                role,
                manager_status: None,
                cert_expiry: expiry,
                key_fingerprint: pki::cert_key_fingerprint(&cert_pem).unwrap_or_default(),
            };
            let managers = manager_addrs(&state);
            (role, node, cert_pem, ca_pem, cluster.id.clone(), managers)
        };
        let node_id = node.id.clone();
        self.propose(Command::AddNode { node })
            .await
            .map_err(control_to_rpc)?;
        self.record_tls(&node_id, &ca_pem).await;
        self.dispatcher.seen(&node_id);
        info!(node.id = %node_id, role = role.as_str(), "node joined");
        Ok(Joined {
            node_id,
            cluster_id,
            role,
            cert_pem,
            ca_pem,
            managers,
        })
    }

    async fn handle_heartbeat(
        &self,
        caller: Caller,
        hb: Heartbeat,
    ) -> Result<HeartbeatReply, RpcError> {
        if caller.node_id.as_ref() != Some(&hb.node_id) {
            return Err(RpcError::PermissionDenied(
                "a node may only heartbeat for itself".into(),
            ));
        }
        let (reply, description_changed) = {
            let state = self.state.read();
            let node = state
                .nodes
                .get(&hb.node_id)
                .ok_or_else(|| RpcError::UnknownNode(hb.node_id.0.clone()))?;
            let cluster = state
                .cluster
                .as_ref()
                .ok_or_else(|| RpcError::Other("the swarm is not initialised yet".into()))?;
            let period_ms = (cluster.spec.dispatcher_heartbeat_ns / 1_000_000).max(100) as u64;
            let reply = HeartbeatReply {
                period_ms,
                desired_role: node.spec.role,
                raft_member: node.manager_status.is_some(),
                managers: manager_addrs(&state),
                renew: outlives_policy(&node.cert_expiry, cluster.spec.cert_expiry_ns)
                    || ca::needs_new_cert(state.node_tls.get(&node.id), cluster),
            };
            (reply, node.description != hb.description)
        };
        self.dispatcher.seen(&hb.node_id);
        if description_changed {
            // Rare (a restart on new hardware, a new engine version): one write.
            let update = crate::store::NodeStatusUpdate {
                id: hb.node_id.clone(),
                state: None,
                message: None,
                addr: None,
                reachability: None,
                description: Some(hb.description),
            };
            let cmd = Command::SetNodeStatus {
                updates: vec![update],
                now: crate::util::now_rfc3339(),
            };
            if let Err(e) = self.propose(cmd).await {
                debug!("could not record a node description: {e}");
            }
        }
        Ok(reply)
    }

    async fn handle_renew(&self, caller: Caller, csr_pem: &str) -> Result<Renewed, RpcError> {
        let node_id = caller
            .node_id
            .clone()
            .ok_or_else(|| RpcError::PermissionDenied("renewal needs a node certificate".into()))?;
        let (cert_pem, ca_pem, role, manager_status) = {
            let state = self.state.read();
            let node = state
                .nodes
                .get(&node_id)
                .ok_or_else(|| RpcError::UnknownNode(node_id.0.clone()))?;
            // Keep the manager role until raft has let the node go, so it can
            // still answer raft while it is being removed.
            let role = if node.manager_status.is_some() {
                Role::Manager
            } else {
                node.spec.role
            };
            let (cert, ca) = self.issue_cert(&state, &node_id, csr_pem, role)?;
            (cert, ca, role, node.manager_status.clone())
        };
        let expiry = pki::parse_node_cert_pem(&cert_pem)
            .map(|i| crate::util::rfc3339(i.not_after))
            .ok();
        let cmd = Command::SetNodeRole {
            id: node_id.clone(),
            role,
            manager_status,
            cert_expiry: expiry,
            key_fingerprint: pki::cert_key_fingerprint(&cert_pem).ok(),
            now: crate::util::now_rfc3339(),
        };
        self.propose(cmd).await.map_err(control_to_rpc)?;
        self.record_tls(&node_id, &ca_pem).await;
        info!(node.id = %node_id, role = role.as_str(), "issued a node certificate");
        Ok(Renewed {
            cert_pem,
            ca_pem,
            role,
        })
    }

    /// Record what the certificate just issued to `node_id` under the trust
    /// `bundle` it came with made of the node's TLS facts (issuer, trust).
    /// A failure only costs one more renewal at the node's next heartbeat.
    pub async fn record_tls(&self, node_id: &NodeId, bundle: &str) {
        let tls = match ca::node_tls_from_bundle(bundle) {
            Ok(t) => t,
            Err(e) => {
                warn!("cannot read the root CA to record a node's TLS facts: {e}");
                return;
            }
        };
        let cmd = Command::SetNodeTls {
            id: node_id.clone(),
            tls,
        };
        if let Err(e) = self.propose(cmd).await {
            debug!(node.id = %node_id, "could not record the node's TLS facts: {e}");
        }
    }

    /// The role a join token's secret grants.
    fn token_role(&self, secret: &str) -> Result<Role, RpcError> {
        let state = self.state.read();
        let cluster = state
            .cluster
            .as_ref()
            .ok_or_else(|| RpcError::Other("the swarm is not initialised yet".into()))?;
        if pki::secrets_equal(secret, &cluster.join_secrets.manager) {
            Ok(Role::Manager)
        } else if pki::secrets_equal(secret, &cluster.join_secrets.worker) {
            Ok(Role::Worker)
        } else {
            Err(RpcError::InvalidToken(
                "The join token is not valid for this swarm: it may have been rotated. Get the current one with `apiary swarm join-token worker` (or `manager`) on a manager.".into(),
            ))
        }
    }

    /// A node whose certificate expired while it was off (a Pi in a drawer)
    /// comes back as itself: it presents a valid join token for its role and
    /// a CSR made with the key of its old certificate, which proves it is the
    /// node it claims to be. Docker makes such a node leave and join anew.
    async fn handle_rejoin(
        &self,
        node_id: &NodeId,
        token_role: Role,
        csr_pem: &str,
    ) -> Result<Joined, RpcError> {
        let (cert_pem, ca_pem, role, manager_status, cluster_id, managers) = {
            let state = self.state.read();
            if state.removed.contains(node_id) {
                return Err(RpcError::PermissionDenied(format!(
                    "node {node_id} was removed from the swarm; join it as a new node (`apiary swarm leave --force`, then `apiary swarm join`)"
                )));
            }
            let node = state
                .nodes
                .get(node_id)
                .ok_or_else(|| RpcError::UnknownNode(node_id.0.clone()))?;
            let role = if node.manager_status.is_some() {
                Role::Manager
            } else {
                node.spec.role
            };
            if role == Role::Manager && token_role != Role::Manager {
                return Err(RpcError::InvalidToken(
                    "this node is a manager: it can only come back with the manager join token (`apiary swarm join-token manager`)".into(),
                ));
            }
            let presented = pki::csr_key_fingerprint(csr_pem)
                .map_err(|e| RpcError::PermissionDenied(format!("bad certificate request: {e}")))?;
            if node.key_fingerprint.is_empty()
                || !pki::secrets_equal(&presented, &node.key_fingerprint)
            {
                return Err(RpcError::PermissionDenied(format!(
                    "the request is not signed with node {node_id}'s key; a node can only come back as itself"
                )));
            }
            let (cert, ca) = self.issue_cert(&state, node_id, csr_pem, role)?;
            let cluster_id = state
                .cluster
                .as_ref()
                .map(|c| c.id.clone())
                .unwrap_or_default();
            (
                cert,
                ca,
                role,
                node.manager_status.clone(),
                cluster_id,
                manager_addrs(&state),
            )
        };
        let cmd = Command::SetNodeRole {
            id: node_id.clone(),
            role,
            manager_status,
            cert_expiry: pki::parse_node_cert_pem(&cert_pem)
                .map(|i| crate::util::rfc3339(i.not_after))
                .ok(),
            key_fingerprint: None,
            now: crate::util::now_rfc3339(),
        };
        self.propose(cmd).await.map_err(control_to_rpc)?;
        self.record_tls(node_id, &ca_pem).await;
        self.dispatcher.seen(node_id);
        info!(node.id = %node_id, "a node whose certificate had expired came back with its join token");
        Ok(Joined {
            node_id: node_id.clone(),
            cluster_id,
            role,
            cert_pem,
            ca_pem,
            managers,
        })
    }

    async fn handle_leave(&self, caller: Caller) -> Result<(), RpcError> {
        let node_id = caller
            .node_id
            .clone()
            .ok_or_else(|| RpcError::PermissionDenied("leave needs a node certificate".into()))?;
        let raft_id = {
            let state = self.state.read();
            let node = state
                .nodes
                .get(&node_id)
                .ok_or_else(|| RpcError::UnknownNode(node_id.0.clone()))?;
            node.manager_status.as_ref().map(|m| m.raft_id)
        };
        if let Some(raft_id) = raft_id {
            self.remove_voter(&node_id, raft_id)
                .await
                .map_err(control_to_rpc)?;
        }
        let update = crate::store::NodeStatusUpdate {
            id: node_id.clone(),
            state: Some(NodeState::Down),
            message: Some("node left the swarm".into()),
            addr: None,
            reachability: None,
            description: None,
        };
        self.dispatcher.forget(&node_id);
        self.propose(Command::SetNodeStatus {
            updates: vec![update],
            now: crate::util::now_rfc3339(),
        })
        .await
        .map_err(control_to_rpc)?;
        Ok(())
    }

    /// Leader: make a manager-certified node a raft voter and record it.
    async fn add_voter(
        &self,
        node_id: &NodeId,
        raft_id: RaftId,
        addr: String,
    ) -> Result<(), RpcError> {
        let _guard = self.membership.lock().await;
        {
            let state = self.state.read();
            let node = state
                .nodes
                .get(node_id)
                .ok_or_else(|| RpcError::UnknownNode(node_id.0.clone()))?;
            if node.spec.role != Role::Manager {
                return Err(RpcError::PermissionDenied(format!(
                    "node {node_id} is not meant to be a manager"
                )));
            }
        }
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let used: BTreeSet<RaftId> = membership.membership().nodes().map(|(id, _)| *id).collect();
        if !used.contains(&raft_id) {
            self.raft
                .add_learner(raft_id, BasicNode { addr: addr.clone() }, true)
                .await
                .map_err(|e| RpcError::Other(format!("cannot add the manager to raft: {e}")))?;
        }
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([raft_id])), false)
            .await
            .map_err(|e| RpcError::Other(format!("cannot make the manager a raft voter: {e}")))?;
        let cmd = Command::SetNodeRole {
            id: node_id.clone(),
            role: Role::Manager,
            manager_status: Some(ManagerStatus {
                raft_id,
                addr,
                reachability: Reachability::Reachable,
            }),
            cert_expiry: None,
            key_fingerprint: None,
            now: crate::util::now_rfc3339(),
        };
        self.propose(cmd).await.map_err(control_to_rpc)?;
        self.dispatcher.seen(node_id);
        info!(node.id = %node_id, raft.id = raft_id, "manager joined raft");
        Ok(())
    }

    /// One pass of the role reconciler, under the membership lock so that it
    /// never sees a half-done `add_voter`.
    async fn reconcile_roles(&self, stop: &CancellationToken) -> Result<(), ControlError> {
        let _guard = self.membership.lock().await;
        let todo = {
            let voters: BTreeSet<RaftId> = self
                .raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .voter_ids()
                .collect();
            let state = self.state.read();
            roles::plan(&state, &voters, self.me.raft_id)
        };
        for r in todo {
            if stop.is_cancelled() {
                break;
            }
            match r {
                roles::Removal::Demoted(node_id, raft_id) => {
                    self.remove_voter_locked(&node_id, raft_id).await?
                }
                roles::Removal::Orphan(raft_id) => {
                    warn!(
                        raft.id = raft_id,
                        "removing a raft voter that no manager node accounts for"
                    );
                    self.raft
                        .change_membership(
                            ChangeMembers::RemoveVoters(BTreeSet::from([raft_id])),
                            false,
                        )
                        .await
                        .map_err(|e| {
                            ControlError::Unavailable(format!(
                                "cannot remove raft voter {raft_id:x}: {e}"
                            ))
                        })?;
                }
            }
        }
        Ok(())
    }

    /// Leader: take a manager out of raft (demote, leave, force-remove). A
    /// leader removing itself records the change first (it cannot propose
    /// afterwards) and then asks another voter to take over at once.
    pub async fn remove_voter(
        &self,
        node_id: &NodeId,
        raft_id: RaftId,
    ) -> Result<(), ControlError> {
        let _guard = self.membership.lock().await;
        self.remove_voter_locked(node_id, raft_id).await
    }

    async fn remove_voter_locked(
        &self,
        node_id: &NodeId,
        raft_id: RaftId,
    ) -> Result<(), ControlError> {
        let role = {
            let state = self.state.read();
            let node = state
                .nodes
                .get(node_id)
                .ok_or_else(|| ControlError::NotFound(format!("node {node_id} not found")))?;
            node.role
        };
        let record = Command::SetNodeRole {
            id: node_id.clone(),
            role,
            manager_status: None,
            cert_expiry: None,
            key_fingerprint: None,
            now: crate::util::now_rfc3339(),
        };
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let voters: BTreeSet<RaftId> = membership.membership().voter_ids().collect();
        if !voters.contains(&raft_id) {
            self.propose(record).await?;
            return Ok(());
        }
        if voters.len() <= 1 {
            return Err(ControlError::FailedPrecondition(
                "this is the last manager of the swarm and cannot be removed from raft".into(),
            ));
        }
        let removing_self = raft_id == self.me.raft_id;
        if removing_self {
            self.propose(record.clone()).await?;
        }
        self.raft
            .change_membership(
                ChangeMembers::RemoveVoters(BTreeSet::from([raft_id])),
                false,
            )
            .await
            .map_err(|e| {
                ControlError::Unavailable(format!("cannot remove the manager from raft: {e}"))
            })?;
        if removing_self {
            // Hand over: the most caught-up remaining voter starts an election
            // now rather than after an election timeout.
            let m = self.raft.metrics().borrow().clone();
            let next = m
                .replication
                .as_ref()
                .and_then(|r| {
                    r.iter()
                        .filter(|(id, _)| **id != raft_id && voters.contains(id))
                        .max_by_key(|(_, log)| log.map(|l| l.index))
                        .map(|(id, _)| *id)
                })
                .and_then(|id| {
                    m.membership_config
                        .membership()
                        .get_node(&id)
                        .map(|n| n.addr.clone())
                });
            if let Some(addr) = next.and_then(|a| a.parse::<SocketAddr>().ok()) {
                let _ = self
                    .transport
                    .call(
                        addr,
                        MANAGER_SERVER_NAME,
                        rpc::encode(&Request::Elect),
                        PING_TIMEOUT,
                    )
                    .await;
            }
        } else {
            self.propose(record).await?;
        }
        info!(node.id = %node_id, raft.id = raft_id, "manager left raft");
        Ok(())
    }

    pub fn dispatcher(&self) -> &Dispatcher {
        &self.dispatcher
    }
}

/// Why a batched write did not commit.
#[derive(Debug)]
enum WriteError {
    /// This manager is not (or no longer) the leader.
    NotLeader,
    Failed(String),
}

type WriteReply = tokio::sync::oneshot::Sender<Result<StoreResponse, WriteError>>;

/// Most commands one raft entry carries: bounds an entry's size (and a
/// snapshot-less follower's catch-up message) at a few hundred KiB.
const MAX_BATCH: usize = 512;

/// Commits queued writes one entry at a time: everything that queued up
/// while the previous entry was being committed goes into the next one.
async fn batching_writer(
    raft: Raft,
    mut queue: tokio::sync::mpsc::UnboundedReceiver<(Command, WriteReply)>,
    stop: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            _ = stop.cancelled() => return,
            w = queue.recv() => match w { Some(w) => w, None => return },
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let (cmds, replies): (Vec<Command>, Vec<WriteReply>) = batch.into_iter().unzip();
        let single = cmds.len() == 1;
        let entry = if single {
            cmds.into_iter()
                .next()
                .unwrap_or(Command::Batch(Vec::new()))
        } else {
            Command::Batch(cmds)
        };
        // A write without quorum never commits: give up on it when the
        // manager stops (force-new-cluster, demotion, shutdown).
        let result = tokio::select! {
            _ = stop.cancelled() => {
                for tx in replies {
                    let _ = tx.send(Err(WriteError::Failed("the manager is stopping".into())));
                }
                return;
            }
            r = raft.client_write(entry.into()) => r,
        };
        match result {
            Ok(r) if single => {
                if let Some(tx) = replies.into_iter().next() {
                    let mut data = r.data;
                    data.index = Some(r.log_id.index);
                    let _ = tx.send(Ok(data));
                }
            }
            Ok(r) => {
                let index = r.log_id.index;
                let mut answers = r.data.batch.into_iter();
                for tx in replies {
                    let answer = answers
                        .next()
                        .map(|mut a| {
                            a.index = Some(index);
                            a
                        })
                        .ok_or_else(|| WriteError::Failed("a batched write got no answer".into()));
                    let _ = tx.send(answer);
                }
            }
            Err(e) => {
                let not_leader =
                    matches!(e, RaftError::APIError(ClientWriteError::ForwardToLeader(_)));
                let msg = e.to_string();
                for tx in replies {
                    let _ = tx.send(Err(if not_leader {
                        WriteError::NotLeader
                    } else {
                        WriteError::Failed(msg.clone())
                    }));
                }
            }
        }
    }
}

/// Runs the leader-only loops while this manager leads, and stops them when
/// it does not.
async fn leader_supervisor(m: Arc<Manager>) {
    let mut metrics = m.raft.server_metrics();
    let mut running: Option<CancellationToken> = None;
    loop {
        let leading = {
            let mm = metrics.borrow_and_update();
            mm.state == ServerState::Leader
        };
        match (leading, running.is_some()) {
            (true, false) => {
                info!(raft.id = m.me.raft_id, "became the leader");
                let token = m.shutdown.child_token();
                m.dispatcher.start_term();
                m.tasks.spawn(dispatcher::run(m.clone(), token.clone()));
                m.tasks.spawn(roles::run(m.clone(), token.clone()));
                m.tasks.spawn(reconciler::run(m.clone(), token.clone()));
                m.tasks.spawn(ca::run(m.clone(), token.clone()));
                running = Some(token);
            }
            (false, true) => {
                info!(raft.id = m.me.raft_id, "no longer the leader");
                if let Some(t) = running.take() {
                    t.cancel();
                }
            }
            _ => {}
        }
        tokio::select! {
            _ = m.shutdown.cancelled() => break,
            r = metrics.changed() => if r.is_err() { break },
        }
    }
    if let Some(t) = running {
        t.cancel();
    }
}

/// A certificate that would outlive the current expiry policy (after
/// `swarm update --cert-expiry` shortened it) is renewed at once rather than
/// at its old renewal time. Docker waits; a shortened expiry is usually a
/// reaction to a leaked key, so waiting defeats its purpose.
fn outlives_policy(cert_expiry: &str, policy_ns: i64) -> bool {
    use time::format_description::well_known::Rfc3339;
    let Ok(expiry) = time::OffsetDateTime::parse(cert_expiry, &Rfc3339) else {
        return false;
    };
    // One minute of slack absorbs clock skew and the 1 h backdating.
    let limit = time::OffsetDateTime::now_utc()
        + time::Duration::nanoseconds(policy_ns)
        + time::Duration::minutes(1);
    expiry > limit
}

impl Manager {
    /// The managers' addresses in this manager's copy of the state.
    pub fn known_manager_addrs(&self) -> Vec<String> {
        manager_addrs(&self.state.read())
    }
}

fn manager_addrs(state: &State) -> Vec<String> {
    state
        .managers()
        .filter_map(|n| n.manager_status.as_ref().map(|m| m.addr.clone()))
        .collect()
}

/// The IP part of an advertise address, unless it is unspecified.
fn advertised_ip(addr: &str) -> Option<String> {
    let sa: SocketAddr = addr.parse().ok()?;
    (!sa.ip().is_unspecified()).then(|| sa.ip().to_string())
}

pub fn control_to_rpc(e: ControlError) -> RpcError {
    match e {
        ControlError::NoQuorum(m) => RpcError::NoQuorum(m),
        ControlError::NotFound(m) => RpcError::Store(crate::store::StoreError::not_found(m)),
        ControlError::Conflict(m) => RpcError::Store(crate::store::StoreError::conflict(m)),
        ControlError::FailedPrecondition(m) => {
            RpcError::Store(crate::store::StoreError::invalid(m))
        }
        other => RpcError::Other(other.to_string()),
    }
}

pub fn rpc_to_control(e: RpcError) -> ControlError {
    match e {
        RpcError::InvalidToken(m) => ControlError::InvalidArgument(m),
        RpcError::NotManager => ControlError::NotManager,
        RpcError::NoQuorum(m) => ControlError::NoQuorum(m),
        RpcError::PermissionDenied(m) => {
            ControlError::FailedPrecondition(format!("not allowed: {m}"))
        }
        RpcError::UnknownNode(id) => {
            ControlError::FailedPrecondition(RpcError::UnknownNode(id).to_string())
        }
        RpcError::Store(s) => match s.kind {
            StoreErrorKind::NotFound => ControlError::NotFound(s.message),
            StoreErrorKind::Conflict => ControlError::Conflict(s.message),
            StoreErrorKind::Invalid => ControlError::FailedPrecondition(s.message),
        },
        RpcError::Other(m) => ControlError::Unavailable(m),
    }
}
