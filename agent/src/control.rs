//! The seam between the Engine API (`api`) and the node (`node`): everything
//! the local socket can ask of this agent. The API layer only translates HTTP
//! and Docker's JSON models to and from these calls; the node implements them
//! (forwarding to the raft leader where needed). Tests of the API layer use a
//! fake implementation.

use std::future::Future;
use std::net::SocketAddr;

use crate::executor::image::Platform;
use crate::executor::pull::{AuthConfig, Distribution, Progress, Pulled};
use crate::store::{Availability, Cluster, ClusterSpec, Node, NodeId, NodeSpec};
use crate::store::{Config, ConfigId, ConfigSpec, Secret, SecretId, SecretSpec};
use crate::store::{Network, NetworkId, NetworkSpec};
use crate::store::{RegistryAuth, Service, ServiceId, ServiceSpec, Task};

/// A service with its task counts (`service ls` REPLICAS).
#[derive(Clone, Debug)]
pub struct ServiceView {
    pub service: Service,
    pub running: u64,
    pub desired: u64,
    pub completed: u64,
    /// Its virtual IPs: (network ID, address/prefix).
    pub vips: Vec<(String, String)>,
}

/// See `Control::events`.
pub type EventFeed = (
    Vec<crate::store::events::Event>,
    Option<tokio::sync::broadcast::Receiver<crate::store::events::Event>>,
);

/// A task with the name of its service (for `service ps` names).
#[derive(Clone, Debug)]
pub struct TaskView {
    pub task: Task,
    pub service_name: String,
    /// Of a job: desired to complete (Swarm's DesiredState `complete`,
    /// kept as running in the store) in iteration `task.spec_version`.
    pub job: bool,
    /// Its networks, each with its address/prefix on it.
    pub networks: Vec<(crate::store::Network, String)>,
}

/// `GET /tasks?filters=`: each list is OR-ed, lists are AND-ed.
#[derive(Clone, Debug, Default)]
pub struct TaskFilter {
    /// Service IDs, names or ID prefixes.
    pub service: Vec<String>,
    /// Node IDs, hostnames or ID prefixes.
    pub node: Vec<String>,
    pub desired_state: Vec<String>,
    pub id: Vec<String>,
    pub name: Vec<String>,
    /// Docker's `_up-to-date`: only tasks of the service's current spec.
    pub up_to_date: bool,
}

/// Whose logs.
#[derive(Clone, Debug)]
pub enum LogsTarget {
    Service(String),
    Task(String),
}

#[derive(Clone, Debug, Default)]
pub struct LogsOptions {
    pub follow: bool,
    pub tail: Option<usize>,
    /// RFC 3339.
    pub since: Option<String>,
    pub stdout: bool,
    pub stderr: bool,
}

/// One log line of a task.
#[derive(Clone, Debug)]
pub struct LogLine {
    pub task: TaskView,
    pub node_id: String,
    /// RFC 3339.
    pub timestamp: String,
    /// 1 stdout, 2 stderr.
    pub stream: u8,
    pub line: String,
}

/// Why a control call failed. The API maps each kind to Docker's HTTP status
/// in one place (`api::error`); messages are shown to users as they are, so
/// they say what happened and what to do.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ControlError {
    /// This node is in no swarm. (503)
    #[error("This node is not a swarm manager. Use \"apiary swarm init\" or \"apiary swarm join\" to connect this node to swarm and try again.")]
    NotInSwarm,
    /// A worker asked a manager-only question. (503)
    #[error("This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state. Please run this command on a manager node or promote the current node to a manager.")]
    NotManager,
    /// init/join on a node already in a swarm. (503)
    #[error("This node is already part of a swarm. Use \"apiary swarm leave\" to leave this swarm and join another one.")]
    AlreadyInSwarm,
    /// The manager is locked (autolock). (503)
    #[error("Swarm is encrypted and needs to be unlocked before it can be used. Please use \"apiary swarm unlock\" to unlock it.")]
    Locked,
    /// Raft has no quorum: writes cannot commit. (503) The message names the
    /// unreachable managers and the way out.
    #[error("{0}")]
    NoQuorum(String),
    /// (404)
    #[error("{0}")]
    NotFound(String),
    /// Stale version or name conflict. (409)
    #[error("{0}")]
    Conflict(String),
    /// Bad input from the caller. (400)
    #[error("{0}")]
    InvalidArgument(String),
    /// A registry wants credentials, or refused the ones given. (401)
    #[error("{0}")]
    Unauthorized(String),
    /// A rule of the cluster forbids it (last manager, Ready node rm). (400 or 412 in Docker; we use 400)
    #[error("{0}")]
    FailedPrecondition(String),
    /// A peer could not be reached or answered wrongly. (503)
    #[error("{0}")]
    Unavailable(String),
    /// A bug or local I/O failure. (500)
    #[error("{0}")]
    Internal(String),
}

pub type ControlResult<T> = Result<T, ControlError>;

/// Whether and how this node is in a swarm (`/info` → Swarm.LocalNodeState).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalNodeState {
    Inactive,
    Pending,
    Active,
    Error,
    Locked,
}

impl LocalNodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            LocalNodeState::Inactive => "inactive",
            LocalNodeState::Pending => "pending",
            LocalNodeState::Active => "active",
            LocalNodeState::Error => "error",
            LocalNodeState::Locked => "locked",
        }
    }
}

/// A manager as `/info` lists it in Swarm.RemoteManagers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteManager {
    pub node_id: NodeId,
    pub addr: String,
}

/// What `/info` reports about this node and its swarm.
#[derive(Clone, Debug)]
pub struct SwarmInfo {
    pub state: LocalNodeState,
    pub node_id: Option<NodeId>,
    /// IP of this node as the swarm sees it.
    pub node_addr: String,
    pub is_manager: bool,
    pub error: String,
    pub remote_managers: Vec<RemoteManager>,
    /// Only on managers:
    pub cluster: Option<Cluster>,
    pub nodes: Option<usize>,
    pub managers: Option<usize>,
    /// Human-readable warnings (even manager count, lost quorum, ...).
    pub warnings: Vec<String>,
}

/// Host facts for `/info` and `/version`.
#[derive(Clone, Debug)]
pub struct HostInfo {
    pub hostname: String,
    pub os: String,
    pub architecture: String,
    pub kernel_version: String,
    pub ncpu: i64,
    pub mem_total: i64,
    pub data_dir: String,
}

/// The cluster object plus the full join tokens (`GET /swarm`).
#[derive(Clone, Debug)]
pub struct SwarmView {
    pub cluster: Cluster,
    pub worker_token: String,
    pub manager_token: String,
}

/// A node as the API shows it: the stored record plus what only the answering
/// manager knows right now.
#[derive(Clone, Debug)]
pub struct NodeView {
    pub node: Node,
    pub leader: bool,
    /// Its certificate's issuer and trust bundle, once recorded.
    pub tls: Option<crate::store::NodeTls>,
}

#[derive(Clone, Debug)]
pub struct InitRequest {
    pub listen_addr: SocketAddr,
    pub advertise_addr: Option<SocketAddr>,
    pub force_new_cluster: bool,
    pub availability: Availability,
    pub spec: ClusterSpec,
    /// `--default-addr-pool`, `--default-addr-pool-mask-length`,
    /// `--data-path-port`.
    pub addr_pool: crate::store::AddrPool,
}

#[derive(Clone, Debug)]
pub struct JoinRequest {
    pub listen_addr: SocketAddr,
    pub advertise_addr: Option<SocketAddr>,
    /// `host:port` of managers to try, in order.
    pub remote_addrs: Vec<String>,
    pub token: String,
    pub availability: Availability,
}

#[derive(Clone, Debug, Default)]
pub struct SwarmUpdate {
    pub version: u64,
    pub spec: ClusterSpec,
    pub rotate_worker_token: bool,
    pub rotate_manager_token: bool,
    pub rotate_unlock_key: bool,
}

/// `POST /images/create` (`image pull`): what to pull, for which platform,
/// with whose credentials.
#[derive(Clone, Debug)]
pub struct ImagePull {
    pub reference: String,
    /// None: this node's platform.
    pub platform: Option<Platform>,
    /// From the client's `X-Registry-Auth`; None pulls anonymously.
    pub auth: Option<AuthConfig>,
}

/// Everything the local API can ask of the node. Implemented by
/// `node::NodeHandle`; a fake backs the API layer's unit tests.
pub trait Control: Send + Sync + 'static {
    fn host_info(&self) -> HostInfo;
    fn swarm_info(&self) -> impl Future<Output = SwarmInfo> + Send;
    fn swarm_inspect(&self) -> impl Future<Output = ControlResult<SwarmView>> + Send;
    /// Returns the new node's ID.
    fn swarm_init(&self, req: InitRequest) -> impl Future<Output = ControlResult<NodeId>> + Send;
    fn swarm_join(&self, req: JoinRequest) -> impl Future<Output = ControlResult<()>> + Send;
    fn swarm_leave(&self, force: bool) -> impl Future<Output = ControlResult<()>> + Send;
    fn swarm_update(&self, req: SwarmUpdate) -> impl Future<Output = ControlResult<()>> + Send;
    fn nodes(&self) -> impl Future<Output = ControlResult<Vec<NodeView>>> + Send;
    /// `id` may be a full ID, a unique ID prefix, or a hostname/name (Docker's lookup order).
    fn node(&self, id: &str) -> impl Future<Output = ControlResult<NodeView>> + Send;
    fn node_update(
        &self,
        id: &str,
        version: u64,
        spec: NodeSpec,
    ) -> impl Future<Output = ControlResult<()>> + Send;
    fn node_remove(&self, id: &str, force: bool) -> impl Future<Output = ControlResult<()>> + Send;
    /// The current unlock key, None when autolock is off.
    fn unlock_key(&self) -> impl Future<Output = ControlResult<Option<String>>> + Send;
    /// Unlock a locked manager with its unlock key.
    fn swarm_unlock(&self, key: &str) -> impl Future<Output = ControlResult<()>> + Send;

    // Secrets and configs. `id` may be a full ID, a name, or a unique ID
    // prefix (Docker's lookup order). Secrets come back with empty `data`:
    // a secret's payload never leaves the store through this seam.

    /// Validates the name and size, then stores it; returns the new ID.
    fn secret_create(
        &self,
        spec: SecretSpec,
    ) -> impl Future<Output = ControlResult<SecretId>> + Send;
    fn secrets(&self) -> impl Future<Output = ControlResult<Vec<Secret>>> + Send;
    fn secret(&self, id: &str) -> impl Future<Output = ControlResult<Secret>> + Send;
    /// Only labels may change (Docker's rule): `spec.name` must be the
    /// secret's own name or empty, and `spec.data` must be empty.
    fn secret_update(
        &self,
        id: &str,
        version: u64,
        spec: SecretSpec,
    ) -> impl Future<Output = ControlResult<()>> + Send;
    /// Refused while a service uses the secret.
    fn secret_remove(&self, id: &str) -> impl Future<Output = ControlResult<()>> + Send;

    fn config_create(
        &self,
        spec: ConfigSpec,
    ) -> impl Future<Output = ControlResult<ConfigId>> + Send;
    fn configs(&self) -> impl Future<Output = ControlResult<Vec<Config>>> + Send;
    fn config(&self, id: &str) -> impl Future<Output = ControlResult<Config>> + Send;
    /// Only labels may change: `spec.name` must be the config's own name or
    /// empty, and `spec.data` empty or the config's current data.
    fn config_update(
        &self,
        id: &str,
        version: u64,
        spec: ConfigSpec,
    ) -> impl Future<Output = ControlResult<()>> + Send;
    /// Refused while a service uses the config.
    fn config_remove(&self, id: &str) -> impl Future<Output = ControlResult<()>> + Send;

    /// `network create`: the new network's ID. The swarm allocates its
    /// subnet (unless the spec names one) and VXLAN ID.
    fn network_create(
        &self,
        spec: NetworkSpec,
    ) -> impl Future<Output = ControlResult<NetworkId>> + Send;
    fn networks(&self) -> impl Future<Output = ControlResult<Vec<Network>>> + Send;
    /// By ID, name or ID prefix.
    fn network(&self, id: &str) -> impl Future<Output = ControlResult<Network>> + Send;
    /// Refused while a service uses the network.
    fn network_remove(&self, id: &str) -> impl Future<Output = ControlResult<()>> + Send;
    /// The names of the services attached to the network.
    fn network_users(&self, id: &str) -> impl Future<Output = ControlResult<Vec<String>>> + Send;

    /// Swarm events (`docker events`): those this manager kept, and the
    /// next ones as they are applied. A node that is no manager has none
    /// (None: nothing will come).
    fn events(&self) -> impl Future<Output = ControlResult<EventFeed>> + Send {
        async { Ok((Vec::new(), None)) }
    }

    // Services and tasks. `id` may be a full ID, a name, or a unique ID
    // prefix.

    /// Validates the spec (image, replicas, constraints, ports, secrets),
    /// then stores it; returns the new ID.
    /// `registry_auth` (from `--with-registry-auth`) is kept beside the
    /// spec, never in it, and handed to the service's tasks.
    fn service_create(
        &self,
        spec: ServiceSpec,
        registry_auth: Option<RegistryAuth>,
    ) -> impl Future<Output = ControlResult<ServiceId>> + Send;
    fn services(&self) -> impl Future<Output = ControlResult<Vec<ServiceView>>> + Send;
    fn service(&self, id: &str) -> impl Future<Output = ControlResult<ServiceView>> + Send;
    /// `registry_auth` None keeps the service's current credentials.
    fn service_update(
        &self,
        id: &str,
        version: u64,
        spec: ServiceSpec,
        registry_auth: Option<RegistryAuth>,
    ) -> impl Future<Output = ControlResult<()>> + Send;
    /// `service rollback`: the previous spec comes back (`version` must be
    /// the service's).
    fn service_rollback(
        &self,
        id: &str,
        version: u64,
    ) -> impl Future<Output = ControlResult<()>> + Send;
    fn service_remove(&self, id: &str) -> impl Future<Output = ControlResult<()>> + Send;
    fn tasks(
        &self,
        filter: TaskFilter,
    ) -> impl Future<Output = ControlResult<Vec<TaskView>>> + Send;
    fn task(&self, id: &str) -> impl Future<Output = ControlResult<TaskView>> + Send;
    /// Log lines of a service's or a task's tasks, fetched from the nodes
    /// that run them; with `follow`, the channel stays open for new lines.
    fn logs(
        &self,
        target: LogsTarget,
        opts: LogsOptions,
    ) -> impl Future<Output = ControlResult<tokio::sync::mpsc::Receiver<LogLine>>> + Send;
    /// Import an image tarball into this node's runtime (not the swarm's:
    /// like `docker load`, it is per node). Returns the names loaded.
    fn image_load(&self, tar: Vec<u8>) -> impl Future<Output = ControlResult<Vec<String>>> + Send;
    /// This node's images.
    fn images(
        &self,
    ) -> impl Future<Output = ControlResult<Vec<crate::executor::image::ImageInfo>>> + Send;
    /// Pull an image from its registry into this node's runtime (like
    /// `docker pull`, per node), sending per-layer progress on `progress`
    /// as it goes.
    fn image_pull(
        &self,
        req: ImagePull,
        progress: tokio::sync::mpsc::UnboundedSender<Progress>,
    ) -> impl Future<Output = ControlResult<Pulled>> + Send;
    /// What a registry holds under `reference` (digest and platforms),
    /// without pulling it.
    fn distribution(
        &self,
        reference: &str,
        auth: Option<AuthConfig>,
    ) -> impl Future<Output = ControlResult<Distribution>> + Send;
    /// Check credentials against their registry (`docker login`); the
    /// agent keeps nothing, the client stores them.
    fn registry_login(&self, auth: AuthConfig) -> impl Future<Output = ControlResult<()>> + Send;
}
