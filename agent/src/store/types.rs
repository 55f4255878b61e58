//! The cluster's object model: what raft stores and the API shows.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::services::*;

/// A node's ID: 25 lowercase base-36 characters, like Docker's.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub String);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Raft member IDs are random per join and never reused (a removed member
/// that came back with its old ID could vote twice in one term).
pub type RaftId = u64;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    Worker,
    Manager,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Worker => "worker",
            Role::Manager => "manager",
        }
    }
    /// The certificate OU that carries this role (Swarm's names).
    pub fn ou(self) -> &'static str {
        match self {
            Role::Worker => "swarm-worker",
            Role::Manager => "swarm-manager",
        }
    }
    pub fn from_ou(ou: &str) -> Option<Role> {
        match ou {
            "swarm-worker" => Some(Role::Worker),
            "swarm-manager" => Some(Role::Manager),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Availability {
    #[default]
    Active,
    Pause,
    Drain,
}

impl Availability {
    pub fn as_str(self) -> &'static str {
        match self {
            Availability::Active => "active",
            Availability::Pause => "pause",
            Availability::Drain => "drain",
        }
    }
    pub fn parse(s: &str) -> Option<Availability> {
        match s.to_ascii_lowercase().as_str() {
            "active" => Some(Availability::Active),
            "pause" => Some(Availability::Pause),
            "drain" => Some(Availability::Drain),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    #[default]
    Unknown,
    Down,
    Ready,
    Disconnected,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Unknown => "unknown",
            NodeState::Down => "down",
            NodeState::Ready => "ready",
            NodeState::Disconnected => "disconnected",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Reachability {
    #[default]
    Unknown,
    Unreachable,
    Reachable,
}

impl Reachability {
    pub fn as_str(self) -> &'static str {
        match self {
            Reachability::Unknown => "unknown",
            Reachability::Unreachable => "unreachable",
            Reachability::Reachable => "reachable",
        }
    }
}

/// What the user sets on a node (`node update`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NodeSpec {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Desired role: promote/demote change this, the role manager makes it so.
    pub role: Role,
    #[serde(default)]
    pub availability: Availability,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
}

/// What the node reports about itself when it joins.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NodeDescription {
    pub hostname: String,
    pub platform: Platform,
    pub nano_cpus: i64,
    pub memory_bytes: i64,
    pub engine_version: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NodeStatus {
    pub state: NodeState,
    #[serde(default)]
    pub message: String,
    /// The address the node's traffic comes from (IP only, like Docker).
    #[serde(default)]
    pub addr: String,
    /// The port the node serves cluster calls on (managers ask a worker
    /// for its tasks' logs there).
    #[serde(default)]
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagerStatus {
    pub raft_id: RaftId,
    /// host:port other managers reach this one on.
    pub addr: String,
    pub reachability: Reachability,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub id: NodeId,
    pub version: u64,
    pub created_at: String,
    pub updated_at: String,
    pub spec: NodeSpec,
    pub description: NodeDescription,
    pub status: NodeStatus,
    /// The role the node currently holds a certificate for (`spec.role` is the wish).
    pub role: Role,
    /// Set while the node is a raft member.
    pub manager_status: Option<ManagerStatus>,
    /// Expiry of the node's current certificate, RFC 3339.
    #[serde(default)]
    pub cert_expiry: String,
    /// SHA-256 of the public key of the node's current certificate: a node
    /// whose certificate expired proves who it is with this key.
    #[serde(default)]
    pub key_fingerprint: String,
}

/// Cluster-wide settings (`swarm update`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSpec {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub task_history_limit: i64,
    /// Nanoseconds, like the Engine API.
    pub dispatcher_heartbeat_ns: i64,
    pub cert_expiry_ns: i64,
    pub snapshot_interval: u64,
    pub autolock: bool,
    /// Docker's `CAConfig.ForceRotate`: a client that changes it asks for a
    /// new root CA (`swarm ca --rotate`).
    #[serde(default)]
    pub ca_force_rotate: u64,
}

pub const NANOS_PER_SEC: i64 = 1_000_000_000;

impl Default for ClusterSpec {
    fn default() -> Self {
        ClusterSpec {
            name: "default".into(),
            labels: BTreeMap::new(),
            task_history_limit: 5,
            dispatcher_heartbeat_ns: 5 * NANOS_PER_SEC,
            cert_expiry_ns: 90 * 24 * 3600 * NANOS_PER_SEC,
            snapshot_interval: 10_000,
            autolock: false,
            ca_force_rotate: 0,
        }
    }
}

/// The root CA as raft keeps it: every manager can sign node certificates.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootCa {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for RootCa {
    // Never print the CA key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RootCa")
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// The secret halves of the join tokens; the digest half comes from the CA.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinSecrets {
    pub worker: String,
    pub manager: String,
}

impl fmt::Debug for JoinSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JoinSecrets(<redacted>)")
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    pub id: String,
    pub version: u64,
    pub created_at: String,
    pub updated_at: String,
    pub spec: ClusterSpec,
    pub root_ca: RootCa,
    pub join_secrets: JoinSecrets,
    /// The unlock key (`SWMKEY-1-…`) while autolock is on. Kept in raft so
    /// every manager can reseal its data key when it changes; raft itself is
    /// sealed with the data key, so this is readable only on an unlocked
    /// manager.
    #[serde(default)]
    pub unlock_key: Option<String>,
    /// Set while a root CA rotation is in progress.
    #[serde(default)]
    pub rotation: Option<super::CaRotation>,
    /// Where networks' subnets come from (`swarm init
    /// --default-addr-pool`), fixed at init; not in the spec, so that
    /// `swarm update` cannot reset it.
    #[serde(default)]
    pub addr_pool: super::AddrPool,
}

/// Everything a write to the cluster can be. Proposed by the leader (or
/// forwarded to it), applied by every manager in log order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// The first entry of a new cluster (and of `--force-new-cluster`).
    InitCluster {
        cluster: Cluster,
        node: Node,
    },
    /// A node joined: its record as the leader built it.
    AddNode {
        node: Node,
    },
    /// `node update` / promote / demote. `version` must match the node's.
    UpdateNodeSpec {
        id: NodeId,
        version: u64,
        spec: NodeSpec,
        now: String,
    },
    /// Observed facts about nodes, batched by the dispatcher; no version check.
    SetNodeStatus {
        updates: Vec<NodeStatusUpdate>,
        now: String,
    },
    /// A node's role and raft membership as they now are.
    SetNodeRole {
        id: NodeId,
        role: Role,
        manager_status: Option<ManagerStatus>,
        cert_expiry: Option<String>,
        /// Fingerprint of the key in the node's new certificate.
        #[serde(default)]
        key_fingerprint: Option<String>,
        now: String,
    },
    RemoveNode {
        id: NodeId,
    },
    /// `swarm update`. `version` must match the cluster's.
    UpdateCluster {
        version: u64,
        spec: ClusterSpec,
        now: String,
    },
    /// Autolock's unlock key: set (on, or rotated) or cleared (off).
    SetUnlockKey {
        key: Option<String>,
        now: String,
    },
    /// `swarm join-token --rotate`.
    RotateJoinSecrets {
        worker: Option<String>,
        manager: Option<String>,
        now: String,
    },
    /// `swarm init --force-new-cluster`: the first entry of the new log
    /// carries every object of the old cluster.
    Restore {
        cluster: Cluster,
        nodes: Vec<Node>,
        #[serde(default)]
        secrets: Vec<Secret>,
        #[serde(default)]
        configs: Vec<Config>,
        /// Removed node IDs stay revoked in the new cluster.
        #[serde(default)]
        removed: Vec<NodeId>,
        #[serde(default)]
        services: Vec<Service>,
        #[serde(default, with = "super::spec::tasks")]
        tasks: Vec<Task>,
        #[serde(default)]
        networks: Vec<super::Network>,
    },
    /// Several commands in one log entry, applied in order, each answered on
    /// its own (one failing does not stop the others). The leader batches
    /// concurrent writes so that they share one log append and one apply.
    Batch(Vec<Command>),
    /// `swarm ca --rotate` and `--force-new-cluster` bookkeeping.
    SetRootCa {
        root_ca: RootCa,
        now: String,
    },
    /// `secret create`: the record as the proposer built it (ID, timestamps).
    CreateSecret {
        secret: Secret,
    },
    /// Only labels may change on a secret, as in Docker. `version` must match.
    UpdateSecret {
        id: SecretId,
        version: u64,
        labels: BTreeMap<String, String>,
        now: String,
    },
    RemoveSecret {
        id: SecretId,
    },
    /// `config create`.
    CreateConfig {
        config: Config,
    },
    /// Only labels may change on a config, as in Docker. `version` must match.
    UpdateConfig {
        id: ConfigId,
        version: u64,
        labels: BTreeMap<String, String>,
        now: String,
    },
    RemoveConfig {
        id: ConfigId,
    },
    /// `network create`: the record as the proposer built it; the subnet
    /// (unless the spec names one) and VXLAN ID are allocated by `apply`.
    CreateNetwork {
        network: super::Network,
    },
    /// Refused while a service uses the network.
    RemoveNetwork {
        id: super::NetworkId,
    },
    /// `service create`: the record as the proposer built it.
    CreateService {
        service: Service,
    },
    /// `service update` / `scale`. `version` must match the service's.
    UpdateService {
        id: ServiceId,
        version: u64,
        spec: ServiceSpec,
        /// New credentials for the service's pulls; None keeps the current.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        registry_auth: Option<RegistryAuth>,
        now: String,
    },
    /// The orchestrator's progress on a rolling update (dropped if the
    /// service's spec version is no longer `spec_version`).
    SetUpdateStatus {
        id: ServiceId,
        spec_version: u64,
        status: Option<super::updates::UpdateStatus>,
        now: String,
    },
    /// `service rollback`, or the orchestrator's automatic rollback of a
    /// failing update: the previous spec comes back.
    RollbackService {
        id: ServiceId,
        guard: super::updates::RollbackGuard,
        message: String,
        now: String,
    },
    /// `service rm`: its tasks are asked to go (desired state remove).
    RemoveService {
        id: ServiceId,
        now: String,
    },
    /// The orchestrator's new tasks (skipped where the slot is taken).
    CreateTasks {
        #[serde(with = "super::spec::tasks")]
        tasks: Vec<Task>,
    },
    /// The scheduler's placements.
    AssignTasks {
        assignments: Vec<(TaskId, NodeId)>,
        now: String,
    },
    /// Task status reports; `reporter` is the worker that sent them (its
    /// reports about tasks not assigned to it are dropped), None for the
    /// managers' own (scheduler reasons, orphaning).
    SetTaskStatus {
        updates: Vec<TaskStatusUpdate>,
        reporter: Option<NodeId>,
    },
    /// Raise tasks' desired state (shutdown for replaced tasks, remove for
    /// scaled-down slots and removed services).
    SetTasksDesired {
        ids: Vec<TaskId>,
        desired: TaskState,
        now: String,
    },
    /// The task reaper: history beyond the retention limit, and tasks of
    /// removed services or slots once they are down.
    DeleteTasks {
        ids: Vec<TaskId>,
    },
    /// `swarm ca --rotate`: `root_ca` replaces the root whose certificate is
    /// `from_root_cert` (refused if that is no longer the root).
    RotateRootCa {
        root_ca: RootCa,
        from_root_cert: String,
        /// `root_ca` cross-signed by each root it replaces.
        cross_signed: Vec<String>,
        now: String,
    },
    /// Every live node holds a certificate from `root_cert`: stop trusting
    /// the roots it replaced.
    CompleteCaRotation {
        root_cert: String,
        now: String,
    },
    /// What a node's new certificate made of its TLS facts.
    SetNodeTls {
        id: NodeId,
        tls: super::NodeTls,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatusUpdate {
    pub id: NodeId,
    pub state: Option<NodeState>,
    pub message: Option<String>,
    pub addr: Option<String>,
    pub reachability: Option<Reachability>,
    pub description: Option<NodeDescription>,
}

/// What applying a command answered. Errors here are deterministic (the same
/// on every manager): conflicts, missing objects, rule violations.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Response {
    /// The new version of the object the command changed, if any.
    pub version: Option<u64>,
    pub error: Option<super::StoreError>,
    /// One answer per command of a [`Command::Batch`], in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub batch: Vec<Response>,
    /// The raft log index of the entry, set by the leader when it answers
    /// a write (a follower that forwarded it waits to apply it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u64>,
}

/// A secret's ID: 25 lowercase base-36 characters, like a node's.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretId(pub String);

impl fmt::Display for SecretId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A config's ID: 25 lowercase base-36 characters, like a node's.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ConfigId(pub String);

impl fmt::Display for ConfigId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Payload bytes as base64 in the stored JSON: a JSON array of numbers
/// would take four times the room of the data.
mod base64_bytes {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(data: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(data))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

/// What the user gives for a secret. `data` is the secret itself.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SecretSpec {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(with = "base64_bytes")]
    pub data: Vec<u8>,
}

impl fmt::Debug for SecretSpec {
    // Never print a secret's payload (commands are logged on errors).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretSpec")
            .field("name", &self.name)
            .field("labels", &self.labels)
            .field(
                "data",
                &format_args!("<{} bytes redacted>", self.data.len()),
            )
            .finish()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secret {
    pub id: SecretId,
    pub version: u64,
    pub created_at: String,
    pub updated_at: String,
    pub spec: SecretSpec,
}

/// What the user gives for a config: like a secret, but its data is not
/// confidential (the API shows it).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ConfigSpec {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(with = "base64_bytes")]
    pub data: Vec<u8>,
}

impl fmt::Debug for ConfigSpec {
    // Up to 1000 KiB of payload would drown a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigSpec")
            .field("name", &self.name)
            .field("labels", &self.labels)
            .field("data", &format_args!("<{} bytes>", self.data.len()))
            .finish()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    pub id: ConfigId,
    pub version: u64,
    pub created_at: String,
    pub updated_at: String,
    pub spec: ConfigSpec,
}
