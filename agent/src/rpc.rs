//! The cluster RPCs: what nodes say to managers over `transport`.
//!
//! Each call is one request and one response on its own QUIC stream, encoded
//! as JSON (small, debuggable, and raft's types already implement serde).

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::raft::TypeConfig;
use std::collections::BTreeMap;

use crate::store::{
    Availability, Command, Config, NodeDescription, NodeId, RaftId, Response as StoreResponse,
    Role, Secret, ServiceId, Task, TaskId, TaskStatusUpdate,
};

type AppendReq = openraft::raft::AppendEntriesRequest<TypeConfig>;
type VoteReq = openraft::raft::VoteRequest<u64>;
type SnapReq = openraft::raft::InstallSnapshotRequest<TypeConfig>;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    // ---- join protocol (ALPN_JOIN, no client certificate needed) ----
    /// The cluster's root CA, for the joiner to check against its token.
    GetCa,
    /// Join with a token secret; the answer carries a signed certificate.
    Join(JoinRequest),

    // ---- cluster protocol (mTLS) ----
    /// Raft traffic between managers.
    AppendEntries(AppendReq),
    Vote(VoteReq),
    InstallSnapshot(SnapReq),
    /// A write forwarded by a follower to the leader.
    Propose(Command),
    /// A manager that holds a manager certificate asks to become a raft voter.
    RaftJoin {
        node_id: NodeId,
        raft_id: RaftId,
        addr: String,
    },
    /// Ask a manager to start an election now (leadership hand-over).
    Elect,
    /// Liveness and instructions, every heartbeat period, from every node.
    Heartbeat(Heartbeat),
    /// A new certificate for the calling node (renewal or role change).
    RenewCert {
        csr_pem: String,
    },
    /// The calling node leaves the swarm (workers: marks it Down at once).
    Leave,
    /// Cheap reachability probe.
    Ping,
    /// A node asks for its tasks (long poll): answered at once when they
    /// differ from `known` (a fingerprint of the last answer), else when
    /// they change or after a while.
    Assignments {
        known: u64,
        /// The tasks the node holds from earlier answers, by their
        /// `Task::assignment_digest` (which covers the task's ID): those
        /// that still stand are not sent again.
        #[serde(default)]
        have: Vec<u64>,
    },
    /// A node reports the state of its tasks.
    ReportTasks {
        updates: Vec<TaskStatusUpdate>,
    },
    /// A manager asks the node running a task for its log lines.
    TaskLogs(LogsRequest),
    /// A follower passing a call on to the leader, vouching for who made it.
    /// Accepted only from managers.
    Forwarded {
        caller: Caller,
        inner: Box<Request>,
    },
}

/// Who made a call, as the manager that first received it established from
/// the caller's certificate and address.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Caller {
    /// From the verified certificate; None on the join protocol.
    pub node_id: Option<NodeId>,
    pub role: Option<Role>,
    pub ip: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    pub secret: String,
    pub csr_pem: String,
    pub description: NodeDescription,
    pub advertise_addr: String,
    pub availability: Availability,
    /// The joiner's address as seen by the first manager it reached (kept
    /// when a follower forwards the request to the leader).
    pub observed_ip: Option<String>,
    /// Set by a node whose certificate expired: come back as this node (the
    /// CSR must be made with that node's key).
    #[serde(default)]
    pub rejoin: Option<NodeId>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Joined {
    pub node_id: NodeId,
    pub cluster_id: String,
    pub role: Role,
    pub cert_pem: String,
    pub ca_pem: String,
    pub managers: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    pub node_id: NodeId,
    /// The role of the certificate the node holds now.
    pub role: Role,
    pub description: NodeDescription,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct HeartbeatReply {
    pub period_ms: u64,
    /// What the cluster wants this node to be; differs from the held role
    /// after promote/demote until the node has renewed its certificate.
    pub desired_role: Role,
    /// Whether the node is (still) a raft voter.
    pub raft_member: bool,
    /// Managers' cluster addresses, for failover of the session.
    pub managers: Vec<String>,
    /// Renew the certificate now (e.g. cert expiry policy changed).
    pub renew: bool,
}

/// Everything a node needs to run its tasks. Secrets and configs are only
/// those its tasks reference: a worker never receives another node's.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Assignments {
    pub fingerprint: u64,
    /// New tasks, and tasks that changed since the node's copy: with the
    /// copies in `have` that are not `dropped`, the node's whole set.
    #[serde(with = "crate::store::spec::tasks")]
    pub tasks: Vec<Task>,
    /// The digests of `have` that no longer stand (the task changed, was
    /// deleted or went to another node): drop those copies.
    #[serde(default)]
    pub dropped: Vec<u64>,
    /// The names of the services of `tasks`.
    pub service_names: BTreeMap<ServiceId, String>,
    pub secrets: Vec<Secret>,
    pub configs: Vec<Config>,
    /// The swarm networks its tasks use, and ingress while the routing
    /// mesh is in use (`manager::netview`).
    #[serde(default)]
    pub networks: Vec<crate::network::view::NetworkView>,
    /// The VXLAN UDP port (`swarm init --data-path-port`).
    #[serde(default)]
    pub data_path_port: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogsRequest {
    pub task: TaskId,
    /// Lines after this many bytes of the log (0: from the start); the
    /// answer says where to continue (follow mode polls with it).
    pub offset: u64,
    pub tail: Option<usize>,
    /// RFC 3339.
    pub since: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LogsReply {
    /// (timestamp RFC 3339, stream 1 stdout / 2 stderr, line with its newline)
    pub lines: Vec<(String, u8, String)>,
    pub next_offset: u64,
    /// The task's container is gone and so are its logs.
    pub gone: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Renewed {
    pub cert_pem: String,
    pub ca_pem: String,
    pub role: Role,
}

/// Every answer. Errors a caller should act on are typed; the rest are text.
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    Ca {
        cert_pem: String,
    },
    Joined(Joined),
    AppendEntries(
        Result<openraft::raft::AppendEntriesResponse<u64>, openraft::error::RaftError<u64>>,
    ),
    Vote(Result<openraft::raft::VoteResponse<u64>, openraft::error::RaftError<u64>>),
    InstallSnapshot(
        Result<
            openraft::raft::InstallSnapshotResponse<u64>,
            openraft::error::RaftError<u64, openraft::error::InstallSnapshotError>,
        >,
    ),
    Proposed(StoreResponse),
    Heartbeat(HeartbeatReply),
    Renewed(Renewed),
    Assignments(Assignments),
    Logs(LogsReply),
    Ok,
    Error(RpcError),
}

/// Failures that cross the wire, typed so callers can map them to the right
/// user-facing error.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub enum RpcError {
    #[error("{0}")]
    InvalidToken(String),
    #[error("this node is not a manager")]
    NotManager,
    #[error("{0}")]
    NoQuorum(String),
    #[error("not allowed: {0}")]
    PermissionDenied(String),
    #[error(
        "node {0} is not part of this swarm (it was removed); join it again with a join token"
    )]
    UnknownNode(String),
    #[error("{0}")]
    Store(crate::store::StoreError),
    #[error("{0}")]
    Other(String),
}

pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Our message types serialize infallibly (string keys, plain data).
    serde_json::to_vec(v).unwrap_or_default()
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("malformed cluster message: {e}"))
}
