//! Services and tasks: the desired state the user writes (`Service`) and the
//! units the orchestrator makes of it (`Task`), with their pure apply logic.
//!
//! A service's spec is kept as the Engine API's `ServiceSpec`, exactly as the
//! client sent it: `service inspect` gives it back unchanged, including
//! fields apiary does not act on yet, as Docker does.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use super::state::{State, StoreError};
use super::types::NodeId;

pub type ServiceSpec = bollard_stubs::models::ServiceSpec;
pub type TaskSpec = bollard_stubs::models::TaskSpec;

/// A service's ID: 25 lowercase base-36 characters, like Docker's.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ServiceId(pub String);

impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A task's ID: 25 lowercase base-36 characters, like Docker's.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(pub String);

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Registry credentials a service's tasks pull with: the Engine API's
/// `X-Registry-Auth` value as the client sent it (base64url JSON), kept as
/// Swarm keeps it (`ContainerSpec.PullOptions.RegistryAuth`). It is not part
/// of the spec, so `service inspect` never shows it, and its `Debug` is
/// redacted, so no log line carries it. Workers decode it when they pull.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RegistryAuth(pub String);

impl fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RegistryAuth(<redacted>)")
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub id: ServiceId,
    pub version: u64,
    pub created_at: String,
    pub updated_at: String,
    pub spec: ServiceSpec,
    #[serde(default)]
    pub previous_spec: Option<ServiceSpec>,
    /// Bumped whenever the task template or the published ports change:
    /// tasks made from another one are replaced (rolling update).
    pub spec_version: u64,
    /// The `spec_version` of `previous_spec`: a rollback brings it back
    /// with the spec, so tasks still made from that spec are kept.
    #[serde(default)]
    pub previous_spec_version: u64,
    /// Where its rolling update stands (None: never updated, or changed
    /// since without a task change, as Swarm clears it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_status: Option<super::updates::UpdateStatus>,
    /// Given with `--with-registry-auth`; copied into each new task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_auth: Option<RegistryAuth>,
    /// Its ports as published and its virtual IPs (allocated by `apply`).
    #[serde(default)]
    pub endpoint: super::attachments::Endpoint,
}

/// A job runs its tasks to completion once per iteration (a spec
/// version: every update of a job is one, as in Swarm) instead of keeping
/// them running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Job {
    /// At most `max_concurrent` at once until `total` have completed.
    Replicated { max_concurrent: u64, total: u64 },
    /// One completion on every node that can take it.
    Global,
}

/// A spec's mode as Docker names it (the `mode` filter, `service ls`).
pub fn mode_of(spec: &ServiceSpec) -> &'static str {
    let mode = spec.mode.as_ref();
    match job_of(spec) {
        Some(Job::Replicated { .. }) => "replicated-job",
        Some(Job::Global) => "global-job",
        None if mode.is_some_and(|m| m.global.is_some()) => "global",
        None => "replicated",
    }
}

/// A spec's job mode, with Docker's defaults: MaxConcurrent 1, and
/// TotalCompletions as MaxConcurrent.
pub fn job_of(spec: &ServiceSpec) -> Option<Job> {
    let mode = spec.mode.as_ref()?;
    if mode.global_job.is_some() {
        return Some(Job::Global);
    }
    let r = mode.replicated_job.as_ref()?;
    let max_concurrent = r.max_concurrent.unwrap_or(1).max(0) as u64;
    let total = r
        .total_completions
        .map_or(max_concurrent, |t| t.max(0) as u64);
    Some(Job::Replicated {
        max_concurrent,
        total,
    })
}

impl Service {
    pub fn name(&self) -> &str {
        self.spec.name.as_deref().unwrap_or("")
    }
    /// Replicas wanted (for a replicated job, its total completions), or
    /// None for a global service or global job.
    pub fn replicas(&self) -> Option<u64> {
        match self.job() {
            Some(Job::Replicated { total, .. }) => return Some(total),
            Some(Job::Global) => return None,
            None => {}
        }
        let mode = self.spec.mode.as_ref();
        if mode.and_then(|m| m.global.as_ref()).is_some() {
            return None;
        }
        Some(
            mode.and_then(|m| m.replicated.as_ref())
                .and_then(|r| r.replicas)
                .unwrap_or(1)
                .max(0) as u64,
        )
    }
    pub fn is_global(&self) -> bool {
        self.replicas().is_none()
    }
    /// What kind of job it is, if it is one.
    pub fn job(&self) -> Option<Job> {
        job_of(&self.spec)
    }
    /// The networks the service is attached to, as given (ID or name):
    /// the task template's, and the older top-level field's.
    pub fn network_refs(&self) -> impl Iterator<Item = &str> {
        spec_network_refs(&self.spec)
    }
    /// Does it publish a port through the routing mesh (ingress mode, the
    /// default)?
    pub fn publishes_ingress(&self) -> bool {
        spec_publishes_ingress(&self.spec)
    }
    /// Names and IDs of the secrets the task template references.
    pub fn secret_refs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.container_spec()
            .and_then(|c| c.secrets.as_ref())
            .into_iter()
            .flatten()
            .map(|s| {
                (
                    s.secret_id.as_deref().unwrap_or(""),
                    s.secret_name.as_deref().unwrap_or(""),
                )
            })
    }
    /// Names and IDs of the configs the task template references.
    pub fn config_refs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.container_spec()
            .and_then(|c| c.configs.as_ref())
            .into_iter()
            .flatten()
            .map(|s| {
                (
                    s.config_id.as_deref().unwrap_or(""),
                    s.config_name.as_deref().unwrap_or(""),
                )
            })
    }
    pub fn container_spec(&self) -> Option<&bollard_stubs::models::TaskSpecContainerSpec> {
        self.spec
            .task_template
            .as_ref()
            .and_then(|t| t.container_spec.as_ref())
    }
}

/// `Service::network_refs` of a spec.
pub fn spec_network_refs(spec: &ServiceSpec) -> impl Iterator<Item = &str> {
    let template = spec
        .task_template
        .as_ref()
        .and_then(|t| t.networks.as_ref());
    #[allow(deprecated)]
    let top = spec.networks.as_ref();
    template
        .into_iter()
        .flatten()
        .chain(top.into_iter().flatten())
        .filter_map(|n| n.target.as_deref())
}

/// `Service::publishes_ingress` of a spec.
pub fn spec_publishes_ingress(spec: &ServiceSpec) -> bool {
    use bollard_stubs::models::EndpointPortConfigPublishModeEnum as Mode;
    spec.endpoint_spec
        .as_ref()
        .and_then(|e| e.ports.as_ref())
        .into_iter()
        .flatten()
        .any(|p| p.publish_mode.unwrap_or(Mode::INGRESS) == Mode::INGRESS)
}

/// Swarm's task states, in the order a task moves through them. A task
/// only ever moves forward (`Ord` is that order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    New,
    Pending,
    Assigned,
    Accepted,
    Preparing,
    Ready,
    Starting,
    Running,
    Complete,
    Shutdown,
    Failed,
    Rejected,
    Remove,
    Orphaned,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::New => "new",
            TaskState::Pending => "pending",
            TaskState::Assigned => "assigned",
            TaskState::Accepted => "accepted",
            TaskState::Preparing => "preparing",
            TaskState::Ready => "ready",
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Complete => "complete",
            TaskState::Shutdown => "shutdown",
            TaskState::Failed => "failed",
            TaskState::Rejected => "rejected",
            TaskState::Remove => "remove",
            TaskState::Orphaned => "orphaned",
        }
    }
    /// The task will never run (again): its container is gone or going.
    pub fn is_terminal(self) -> bool {
        self > TaskState::Running
    }
    pub fn parse(s: &str) -> Option<TaskState> {
        use TaskState::*;
        [
            New, Pending, Assigned, Accepted, Preparing, Ready, Starting, Running, Complete,
            Shutdown, Failed, Rejected, Remove, Orphaned,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatus {
    pub timestamp: String,
    pub state: TaskState,
    /// Short, like Docker's ("started", "pending task scheduling").
    #[serde(default)]
    pub message: String,
    /// Why the task failed or cannot be placed (the ERROR column).
    #[serde(default)]
    pub err: Option<String>,
    #[serde(default)]
    pub container_id: Option<String>,
    #[serde(default)]
    pub pid: Option<i64>,
    #[serde(default)]
    pub exit_code: Option<i64>,
    /// Host-mode ports the worker published for the task (set once it
    /// runs; Docker's `Status.PortStatus`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PublishedPort>,
}

/// A port a worker published on its node for a task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedPort {
    /// "tcp" or "udp".
    pub protocol: String,
    pub target: u16,
    pub published: u16,
}

impl TaskStatus {
    pub fn new(state: TaskState, message: &str, now: &str) -> TaskStatus {
        TaskStatus {
            timestamp: now.to_string(),
            state,
            message: message.to_string(),
            err: None,
            container_id: None,
            pid: None,
            exit_code: None,
            ports: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: TaskId,
    pub version: u64,
    pub created_at: String,
    pub updated_at: String,
    pub service_id: ServiceId,
    /// Replicated services: 1..=replicas. Global services: 0 (the node is
    /// the slot).
    pub slot: u64,
    /// The node the task runs on (preset for global tasks, chosen by the
    /// scheduler for replicated ones).
    pub node_id: Option<NodeId>,
    /// Shared with the other tasks made from the same spec (`store::spec`).
    pub spec: super::spec::SharedSpec,
    /// The service's `spec_version` this task was made from.
    pub spec_version: u64,
    /// Published ports of the service at the time (host mode only for now).
    #[serde(default)]
    pub ports: Vec<bollard_stubs::models::EndpointPortConfig>,
    pub desired_state: TaskState,
    pub status: TaskStatus,
    /// How many tasks of this slot failed in a row before this one, within
    /// the restart policy's window (for `--restart-max-attempts`).
    #[serde(default)]
    pub attempt: u64,
    /// The service's registry credentials when the task was made: the
    /// worker pulls the image with them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_auth: Option<RegistryAuth>,
    /// Its address on each network of its service (allocated by `apply`
    /// when the task is created).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<super::attachments::NetAddr>,
    /// When its worker first reported it running (the status moves on and
    /// forgets): an update's monitor and delay count from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_since: Option<String>,
}

impl Task {
    /// Docker's task name: `service.slot` (replicated) or `service.node`.
    pub fn name(&self, service_name: &str) -> String {
        match (&self.node_id, self.slot) {
            (Some(n), 0) => format!("{service_name}.{n}"),
            _ => format!("{service_name}.{}", self.slot),
        }
    }
    /// What the node's worker sees of the task: its assignment digest
    /// once it is given to the worker (assigned or later); None before.
    pub fn given_digest(&self) -> Option<u64> {
        (self.status.state >= TaskState::Assigned).then(|| self.assignment_digest())
    }

    /// What the task hashes to over what a worker acts on: its ID, spec,
    /// desired state and whether it ended, not its progress. Managers and
    /// workers compute it alike (`rpc::Request::Assignments::have`).
    pub fn assignment_digest(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        self.id.hash(&mut h);
        self.spec_version.hash(&mut h);
        // As a byte: a derived enum hash writes an isize, 4 bytes on a
        // 32-bit board and 8 elsewhere, and a worker's digests must equal
        // its managers'.
        (self.desired_state as u8).hash(&mut h);
        self.status.state.is_terminal().hash(&mut h);
        h.finish()
    }
    /// Meant to run, or running: counts against replicas.
    pub fn is_live(&self) -> bool {
        wanted(self) && !self.status.state.is_terminal()
    }
}

/// The status message of a task the scheduler placed (Swarm's words).
pub const ASSIGNED_MESSAGE: &str = "scheduler assigned task to node";

/// Swarm's default restart delay.
const DEFAULT_RESTART_DELAY: std::time::Duration = std::time::Duration::from_secs(5);

/// A task's restart policy with Swarm's defaults filled in. Used by the
/// orchestrator and, while no manager is reachable, by the worker itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestartPolicy {
    /// none | on-failure | any
    pub condition: String,
    pub delay: std::time::Duration,
    /// 0 = unlimited.
    pub max_attempts: u64,
    /// Zero = attempts are never forgotten.
    pub window: std::time::Duration,
}

impl RestartPolicy {
    /// Whether a task that ended like this is restarted at all.
    pub fn wants_restart(&self, state: TaskState, exit_code: Option<i64>) -> bool {
        match self.condition.as_str() {
            "none" => false,
            "on-failure" => state != TaskState::Complete || exit_code.unwrap_or(0) != 0,
            _ => true,
        }
    }
}

impl Task {
    pub fn restart_policy(&self) -> RestartPolicy {
        let p = self.spec.restart_policy.as_ref();
        let ns = |v: Option<i64>| std::time::Duration::from_nanos(v.unwrap_or(0).max(0) as u64);
        RestartPolicy {
            condition: p
                .and_then(|p| p.condition)
                .map(|c| c.to_string())
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| "any".into()),
            delay: p
                .and_then(|p| p.delay)
                .map(|d| ns(Some(d)))
                .unwrap_or(DEFAULT_RESTART_DELAY),
            max_attempts: p.and_then(|p| p.max_attempts).unwrap_or(0).max(0) as u64,
            window: ns(p.and_then(|p| p.window)),
        }
    }
}

/// A worker's (or the scheduler's) report about one task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatusUpdate {
    pub id: TaskId,
    pub status: TaskStatus,
}

pub(super) const SERVICE_PREFIX: &str = "service/";
pub(super) const TASK_PREFIX: &str = "task/";

/// Indexes over tasks, rebuilt on load and kept in step by every task write
/// (never persisted): the dispatcher and scheduler ask "tasks of node N" and
/// "tasks of service S" on every change, which a scan of 100k tasks would
/// make too slow.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TaskIndex {
    /// Each node's tasks, with the assignment digest of those given to
    /// its worker (assigned or later): a long poll's answer compares these
    /// with the worker's copies without touching the tasks themselves.
    pub by_node: BTreeMap<NodeId, BTreeMap<TaskId, Option<u64>>>,
    pub by_service: BTreeMap<ServiceId, BTreeSet<TaskId>>,
    /// Tasks waiting for the scheduler (pending and wanted).
    pub pending: BTreeSet<TaskId>,
    pub hints: super::hints::Hints,
    /// The tasks' distinct specs.
    pub specs: super::spec::SpecTable,
    /// What `service ls` shows of each service, kept as tasks change: a
    /// listing (polled by every progress display) costs O(services), not
    /// O(tasks).
    pub counts: BTreeMap<ServiceId, TaskCounts>,
    /// What each node's worker is given, summed as tasks change: a long
    /// poll's fingerprint (`manager::assignments`) is then O(1) instead of
    /// a walk over the node's tasks on every wake-up.
    pub views: BTreeMap<NodeId, NodeView>,
    /// Where each service has wanted tasks (desired running or less), by
    /// (slot, node), counted: `create_tasks` refuses a second one in a slot
    /// (a global service's: on a node) with a lookup here. It used to walk
    /// the service's tasks once per command, which was fine while a
    /// command held one service's tasks and became most of every
    /// manager's CPU once commands were grouped by node (100 services per
    /// command: `manager::orchestrator::by_node`).
    pub places: BTreeMap<ServiceId, BTreeMap<Place, u32>>,
    /// The addresses held on each swarm network (`store::attachments`).
    pub addrs: super::attachments::AddrIndex,
}

/// A wanted task's place in its service: a replicated task's slot (1..),
/// or a global task's node (slot 0), as the reaper keys them too.
pub type Place = (u64, Option<NodeId>);

/// The place of a task in `slot` on `node`.
pub fn place_of(slot: u64, node: &Option<NodeId>) -> Place {
    (slot, if slot == 0 { node.clone() } else { None })
}

/// Count a wanted task in (`add`) or out of its service's places.
fn place(
    places: &mut BTreeMap<ServiceId, BTreeMap<Place, u32>>,
    service: &ServiceId,
    slot: u64,
    node: &Option<NodeId>,
    add: bool,
) {
    let key = place_of(slot, node);
    shift_entry(places, service, |of| {
        shift_entry(of, &key, |n: &mut u32| {
            *n = if add { *n + 1 } else { n.saturating_sub(1) };
            *n == 0
        });
        of.is_empty()
    });
}

/// Wanted: counts against replicas and holds its place.
fn wanted(t: &Task) -> bool {
    t.desired_state <= TaskState::Running
}

/// A node's assignments in sum (`TaskIndex::views`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeView {
    /// Wrapping sum of the assignment digests of the node's tasks that are
    /// assigned or later (those its worker is given).
    pub digests: u64,
    /// How many of those are wanted and use secrets or configs: only then
    /// does the fingerprint need the node's tasks for their references.
    pub with_refs: u64,
    /// How many tasks the node holds (the entry goes at zero).
    pub tasks: u64,
}

impl NodeView {
    /// What one task adds to its node's view.
    pub fn of(t: &Task) -> NodeView {
        NodeView::with_digest(t, t.given_digest())
    }

    /// The same, with the task's `given_digest` already at hand.
    fn with_digest(t: &Task, given: Option<u64>) -> NodeView {
        let c = t.spec.container_spec.as_ref();
        let refs = c.is_some_and(|c| {
            c.secrets.as_ref().is_some_and(|v| !v.is_empty())
                || c.configs.as_ref().is_some_and(|v| !v.is_empty())
        });
        NodeView {
            digests: given.unwrap_or(0),
            with_refs: u64::from(given.is_some() && wanted(t) && refs),
            tasks: 1,
        }
    }

    fn shift(&mut self, before: NodeView, after: NodeView) {
        self.digests = self
            .digests
            .wrapping_sub(before.digests)
            .wrapping_add(after.digests);
        self.with_refs = (self.with_refs + after.with_refs).saturating_sub(before.with_refs);
        self.tasks = (self.tasks + after.tasks).saturating_sub(before.tasks);
    }
}

/// A task before a change: what it counted as, and what its worker saw
/// of it.
struct Before {
    counts: TaskCounts,
    given: Option<u64>,
    view: NodeView,
    /// It held its network addresses.
    holds: bool,
}

impl Before {
    fn of(t: &Task) -> Before {
        let given = t.given_digest();
        Before {
            counts: TaskCounts::of(t),
            given,
            view: NodeView::with_digest(t, given),
            holds: super::attachments::holds(t),
        }
    }
}

/// What the nodes' network views show of a task: whether it is a live
/// backend (running and wanted) and where. A change wakes every node's
/// long poll (their views list the backends of the services they reach).
fn backend_of(t: &Task) -> Option<(bool, Option<&NodeId>)> {
    (!t.networks.is_empty()).then(|| {
        (
            wanted(t) && t.status.state == TaskState::Running,
            t.node_id.as_ref(),
        )
    })
}

/// Put `id → digest` in `node`'s entry of the node index.
fn index_on_node(
    by_node: &mut BTreeMap<NodeId, BTreeMap<TaskId, Option<u64>>>,
    node: &NodeId,
    id: &TaskId,
    digest: Option<u64>,
) {
    let tasks = match by_node.get_mut(node) {
        Some(t) => t,
        None => by_node.entry(node.clone()).or_default(),
    };
    match tasks.get_mut(id) {
        Some(d) => *d = digest,
        None => {
            tasks.insert(id.clone(), digest);
        }
    }
}

/// Take `id` out of `node`'s entry of the node index.
fn unindex_on_node(
    by_node: &mut BTreeMap<NodeId, BTreeMap<TaskId, Option<u64>>>,
    node: &NodeId,
    id: &TaskId,
) {
    if let Some(tasks) = by_node.get_mut(node) {
        tasks.remove(id);
        if tasks.is_empty() {
            by_node.remove(node);
        }
    }
}

/// Change `map[key]` (from its default when absent) with `shift`, which
/// says whether the entry is now empty and goes.
fn shift_entry<K: Ord + Clone, V: Default>(
    map: &mut BTreeMap<K, V>,
    key: &K,
    shift: impl FnOnce(&mut V) -> bool,
) {
    match map.get_mut(key) {
        Some(v) => {
            if shift(v) {
                map.remove(key);
            }
        }
        None => {
            let mut v = V::default();
            if !shift(&mut v) {
                map.insert(key.clone(), v);
            }
        }
    }
}

/// What `put_task` needs of the task it replaces.
struct Old {
    before: Before,
    node: Option<NodeId>,
    same_service: bool,
}

/// Shift a node's view by one task's change.
fn view(views: &mut BTreeMap<NodeId, NodeView>, node: &NodeId, before: NodeView, after: NodeView) {
    if before != after {
        shift_entry(views, node, |v| {
            v.shift(before, after);
            v.tasks == 0
        });
    }
}

/// Shift a service's counts by one task's change.
fn count(
    counts: &mut BTreeMap<ServiceId, TaskCounts>,
    service: &ServiceId,
    before: TaskCounts,
    after: TaskCounts,
) {
    if before != after {
        shift_entry(counts, service, |c| {
            c.shift(before, after);
            *c == TaskCounts::default()
        });
    }
}

/// A service's tasks, counted as `service ls` shows them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskCounts {
    /// Wanted (desired running or less): the replicas of a global service.
    pub live: u64,
    /// Wanted and running, wherever (a Down node's are taken off when
    /// listing).
    pub running: u64,
    pub completed: u64,
}

impl TaskCounts {
    /// What one task adds.
    pub fn of(t: &Task) -> TaskCounts {
        let live = wanted(t);
        TaskCounts {
            live: u64::from(live),
            running: u64::from(live && t.status.state == TaskState::Running),
            // A job's completions of its current run (earlier runs' tasks
            // are shut down).
            completed: u64::from(live && t.status.state == TaskState::Complete),
        }
    }

    fn shift(&mut self, before: TaskCounts, after: TaskCounts) {
        self.live = (self.live + after.live).saturating_sub(before.live);
        self.running = (self.running + after.running).saturating_sub(before.running);
        self.completed = (self.completed + after.completed).saturating_sub(before.completed);
    }
}

impl Task {
    fn waits_for_placement(&self) -> bool {
        self.status.state == TaskState::Pending && wanted(self)
    }
}

impl State {
    /// Insert or replace a task, keeping the indexes in step. (Called for
    /// every task of every create and placement: each index is looked up
    /// once, and keys are cloned only when they are new.)
    pub(super) fn put_task(&mut self, mut task: Task) {
        let given = task.given_digest();
        {
            let old = self.tasks.get(&task.id);
            if old.map(backend_of) != Some(backend_of(&task)) && backend_of(&task).is_some() {
                self.task_index.hints.all_nodes();
            }
            let addrs = &mut self.task_index.addrs;
            if let Some(o) = old.filter(|o| super::attachments::holds(o)) {
                addrs.release_task(&o.networks);
            }
            if super::attachments::holds(&task) {
                addrs.hold_task(&task.networks);
            }
        }
        let old = match self.tasks.get(&task.id) {
            Some(o) => {
                let places = &mut self.task_index.places;
                // A placement moves a global task only (its node is its
                // place): a replicated one keeps its slot.
                let moved = o.service_id != task.service_id
                    || o.slot != task.slot
                    || (task.slot == 0 && o.node_id != task.node_id);
                if moved || wanted(o) != wanted(&task) {
                    if wanted(o) {
                        place(places, &o.service_id, o.slot, &o.node_id, false);
                    }
                    if wanted(&task) {
                        place(places, &task.service_id, task.slot, &task.node_id, true);
                    }
                }
                if o.spec == task.spec {
                    task.spec = o.spec.clone();
                } else {
                    self.task_index.specs.release(&o.spec);
                    self.task_index.specs.hold(&mut task.spec);
                }
                Some(Old {
                    before: Before::of(o),
                    node: o.node_id.clone(),
                    same_service: o.service_id == task.service_id,
                })
            }
            None => {
                self.task_index.specs.hold(&mut task.spec);
                if wanted(&task) {
                    let places = &mut self.task_index.places;
                    place(places, &task.service_id, task.slot, &task.node_id, true);
                }
                None
            }
        };
        let index = &mut self.task_index;
        count(
            &mut index.counts,
            &task.service_id,
            old.as_ref().map(|o| o.before.counts).unwrap_or_default(),
            TaskCounts::of(&task),
        );
        if let Some(o) = &old {
            if let Some(n) = &o.node {
                view(&mut index.views, n, o.before.view, NodeView::default());
            }
        }
        if let Some(n) = &task.node_id {
            view(
                &mut index.views,
                n,
                NodeView::default(),
                NodeView::with_digest(&task, given),
            );
        }
        index.hints.service(&task.service_id);
        // The node's long poll cares only when what its worker sees of the
        // task changes (not for each of its progress reports).
        let unseen_change = !old
            .as_ref()
            .is_some_and(|o| o.node == task.node_id && o.before.given == given);
        if let Some(n) = task.node_id.as_ref().filter(|_| unseen_change) {
            index.hints.node(n);
        }
        if task.waits_for_placement() {
            index.pending.insert(task.id.clone());
        } else {
            index.pending.remove(&task.id);
        }
        if let Some(n) = old.as_ref().and_then(|o| o.node.as_ref()) {
            if Some(n) != task.node_id.as_ref() {
                index.hints.node(n);
                unindex_on_node(&mut index.by_node, n, &task.id);
            }
        }
        if let Some(n) = &task.node_id {
            index_on_node(&mut index.by_node, n, &task.id, given);
        }
        if !old.as_ref().is_some_and(|o| o.same_service) {
            index
                .by_service
                .entry(task.service_id.clone())
                .or_default()
                .insert(task.id.clone());
        }
        match self.tasks.get_mut(&task.id) {
            Some(slot) => *slot = task,
            None => {
                self.tasks.insert(task.id.clone(), task);
            }
        }
    }

    pub(super) fn delete_task(&mut self, id: &TaskId) -> Option<Task> {
        let task = self.tasks.remove(id)?;
        let index = &mut self.task_index;
        if super::attachments::holds(&task) {
            index.addrs.release_task(&task.networks);
        }
        if backend_of(&task).is_some_and(|(live, _)| live) {
            index.hints.all_nodes();
        }
        index.specs.release(&task.spec);
        count(
            &mut index.counts,
            &task.service_id,
            TaskCounts::of(&task),
            TaskCounts::default(),
        );
        index.pending.remove(id);
        index.hints.service(&task.service_id);
        if wanted(&task) {
            place(
                &mut index.places,
                &task.service_id,
                task.slot,
                &task.node_id,
                false,
            );
        }
        if let Some(n) = &task.node_id {
            view(
                &mut index.views,
                n,
                NodeView::of(&task),
                NodeView::default(),
            );
            index.hints.node(n);
            unindex_on_node(&mut index.by_node, n, id);
        }
        if let Some(set) = index.by_service.get_mut(&task.service_id) {
            set.remove(id);
            if set.is_empty() {
                index.by_service.remove(&task.service_id);
            }
        }
        Some(task)
    }

    /// After a task was changed in place (`before`: what it counted as,
    /// and what its worker saw of it): keep the counts, the node's view and
    /// index and the pending set, tell its node's long poll, and mark its
    /// service for the orchestrator when `orchestrator_cares`.
    fn retouch(&mut self, id: &TaskId, orchestrator_cares: bool, before: Before) {
        let Some(t) = self.tasks.get(id) else { return };
        let index = &mut self.task_index;
        if before.holds && !super::attachments::holds(t) {
            index.addrs.release_task(&t.networks);
        }
        if !t.networks.is_empty()
            && (before.counts.running == 1) != (TaskCounts::of(t).running == 1)
        {
            index.hints.all_nodes();
        }
        count(
            &mut index.counts,
            &t.service_id,
            before.counts,
            TaskCounts::of(t),
        );
        // In place, only the status and desired state change: the place
        // is kept, but a task stops (or starts) holding it.
        if (before.counts.live == 1) != wanted(t) {
            place(
                &mut index.places,
                &t.service_id,
                t.slot,
                &t.node_id,
                wanted(t),
            );
        }
        let given = t.given_digest();
        if let Some(n) = &t.node_id {
            view(
                &mut index.views,
                n,
                before.view,
                NodeView::with_digest(t, given),
            );
            if before.given != given {
                index_on_node(&mut index.by_node, n, id, given);
                index.hints.node(n);
            }
        }
        if t.waits_for_placement() {
            index.pending.insert(id.clone());
        } else {
            index.pending.remove(id);
        }
        if orchestrator_cares {
            index.hints.service(&t.service_id);
        }
    }

    pub fn tasks_of_node<'a>(&'a self, node: &NodeId) -> impl Iterator<Item = &'a Task> + 'a {
        self.task_index
            .by_node
            .get(node)
            .into_iter()
            .flatten()
            .filter_map(|(id, _)| self.tasks.get(id))
    }

    /// The IDs of a service's tasks, owned (for loops that change them).
    pub(super) fn task_ids_of_service(&self, service: &ServiceId) -> Vec<TaskId> {
        self.task_index
            .by_service
            .get(service)
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }

    pub fn tasks_of_service<'a>(
        &'a self,
        service: &ServiceId,
    ) -> impl Iterator<Item = &'a Task> + 'a {
        self.task_index
            .by_service
            .get(service)
            .into_iter()
            .flatten()
            .filter_map(|id| self.tasks.get(id))
    }

    pub fn service_by_name(&self, name: &str) -> Option<&Service> {
        self.services.values().find(|s| s.name() == name)
    }

    pub(super) fn create_service(
        &mut self,
        index: u64,
        service: &Service,
    ) -> Result<Option<u64>, StoreError> {
        if self.services.contains_key(&service.id) {
            return Err(StoreError::conflict(format!(
                "service {} already exists",
                service.id
            )));
        }
        if self.service_by_name(service.name()).is_some() {
            return Err(StoreError::conflict(format!(
                "service {} already exists: choose another name, or remove it with \"apiary service rm {}\"",
                service.name(),
                service.name()
            )));
        }
        let mut s = service.clone();
        s.version = index;
        s.spec_version = index;
        s.endpoint = self.allocate_endpoint(&s.id, &s.spec, &Default::default())?;
        if !s.endpoint.vips.is_empty() {
            self.task_index.hints.all_nodes();
        }
        self.services.insert(s.id.clone(), s);
        self.task_index.hints.service(&service.id);
        Ok(Some(index))
    }

    pub(super) fn update_service(
        &mut self,
        index: u64,
        id: &ServiceId,
        version: u64,
        spec: &ServiceSpec,
        registry_auth: Option<&RegistryAuth>,
        now: &str,
    ) -> Result<Option<u64>, StoreError> {
        let current = self
            .services
            .get(id)
            .ok_or_else(|| StoreError::not_found(format!("service {id} not found")))?;
        if current.version != version {
            return Err(StoreError::conflict(format!(
                "update out of sequence: service {} is at version {}, the update was for version {version}; inspect the service again and retry",
                current.name(),
                current.version
            )));
        }
        let new_name = spec.name.as_deref().unwrap_or("");
        if new_name != current.name() {
            if let Some(other) = self.service_by_name(new_name) {
                return Err(StoreError::conflict(format!(
                    "service name {new_name} is already used by service {}",
                    other.id
                )));
            }
        }
        let old = current.endpoint.clone();
        let endpoint = self.allocate_endpoint(id, spec, &old)?;
        if endpoint != old {
            self.task_index.hints.all_nodes();
        }
        let Some(s) = self.services.get_mut(id) else {
            return Err(StoreError::not_found(format!("service {id} not found")));
        };
        s.endpoint = endpoint;
        // Any update of a job runs it again (Swarm's job iteration), and a
        // job has no rolling update to follow.
        let job = job_of(spec).is_some();
        let tasks_change = job
            || s.spec.task_template != spec.task_template
            || s.spec.endpoint_spec != spec.endpoint_spec;
        s.previous_spec = Some(std::mem::replace(&mut s.spec, spec.clone()));
        s.previous_spec_version = s.spec_version;
        // Every update clears the status (Swarm's rule): a paused update
        // resumes with any `service update`, and a scale is no update.
        // The orchestrator starts a new one where tasks are out of date.
        s.update_status = (tasks_change && !job).then(|| {
            super::updates::UpdateStatus::started(
                super::updates::UpdateState::Updating,
                super::updates::UPDATE_IN_PROGRESS,
                now,
            )
        });
        // An update without credentials keeps the ones the service has
        // (Docker's rule): `service scale` must not make a private image
        // unreachable. New credentials reach the tasks made from now on.
        if let Some(auth) = registry_auth {
            s.registry_auth = Some(auth.clone());
        }
        if tasks_change {
            s.spec_version = index;
        }
        s.version = index;
        s.updated_at = now.to_string();
        self.task_index.hints.service(id);
        Ok(Some(index))
    }

    /// Removing a service asks all its tasks to go; the orchestrator deletes
    /// them once their nodes have shut them down.
    pub(super) fn remove_service(
        &mut self,
        index: u64,
        id: &ServiceId,
        now: &str,
    ) -> Result<Option<u64>, StoreError> {
        let Some(gone) = self.services.remove(id) else {
            return Err(StoreError::not_found(format!("service {id} not found")));
        };
        for v in &gone.endpoint.vips {
            self.task_index.addrs.release(v);
        }
        if !gone.endpoint.vips.is_empty() {
            self.task_index.hints.all_nodes();
        }
        let ids = self.task_ids_of_service(id);
        self.task_index.hints.service(id);
        for tid in ids {
            if let Some(t) = self.tasks.get_mut(&tid) {
                if t.desired_state < TaskState::Remove {
                    let before = Before::of(t);
                    t.desired_state = TaskState::Remove;
                    t.version = index;
                    t.updated_at = now.to_string();
                    self.retouch(&tid, true, before);
                }
            }
        }
        Ok(Some(index))
    }

    /// New tasks from the orchestrator. A task whose slot (or, for global
    /// services, node) already has a live task is skipped: a second leader
    /// replaying the same decision must not double a replica.
    /// May `t`, of the service's current spec, join the wanted task in
    /// its place? Only if none there is of that spec yet (rare enough to
    /// look through the service's tasks: a start-first update, or passes
    /// that straddled an update).
    fn start_first_room(&self, service: &Service, t: &Task, slot: u64) -> bool {
        t.spec_version == service.spec_version
            && !self.tasks_of_service(&t.service_id).any(|o| {
                wanted(o)
                    && o.spec_version == t.spec_version
                    && place_of(if service.is_global() { 0 } else { o.slot }, &o.node_id)
                        == place_of(slot, &t.node_id)
            })
    }

    pub(super) fn create_tasks(&mut self, index: u64, tasks: &[Task]) {
        for t in tasks {
            let Some(service) = self.services.get(&t.service_id) else {
                continue;
            };
            if self.tasks.contains_key(&t.id) {
                continue;
            }
            // One wanted task per slot, or for a global service per node
            // (a pass decided on a state that a later write changed, or a
            // former leader's pass). Tasks created before in this command
            // count: `put_task` has placed them.
            let global = service.is_global();
            let slot = if global { 0 } else { t.slot };
            let taken = self
                .task_index
                .places
                .get(&t.service_id)
                .is_some_and(|p| p.contains_key(&place_of(slot, &t.node_id)));
            // A start-first update puts the new task beside the old one:
            // one wanted task per place and spec version.
            if taken && !self.start_first_room(service, t, slot) {
                continue;
            }
            let mut t = t.clone();
            t.version = index;
            let spec = service.spec.clone();
            match self.allocate_task_addrs(&spec) {
                Ok(addrs) => t.networks = addrs,
                Err(e) => {
                    // Loud in `service ps`; the orchestrator makes another
                    // after the restart delay, which gets one once an
                    // address is free.
                    t.networks = Vec::new();
                    t.status = TaskStatus::new(
                        TaskState::Rejected,
                        "allocating network addresses",
                        &t.created_at,
                    );
                    t.status.err = Some(e.message);
                    self.put_task(t);
                    continue;
                }
            }
            // Created already placed (`orchestrator::place_created`) on a
            // node that has left since: wait for the scheduler again, as a
            // placement of a pending task on it would (`assign_tasks`).
            let node_gone = t
                .node_id
                .as_ref()
                .is_some_and(|n| !self.nodes.contains_key(n));
            if t.status.state == TaskState::Assigned && node_gone {
                t.status =
                    TaskStatus::new(TaskState::Pending, "pending task scheduling", &t.created_at);
                if !global {
                    t.node_id = None;
                }
            }
            self.put_task(t);
        }
    }

    /// The scheduler's placements: only tasks still pending and wanted.
    pub(super) fn assign_tasks(&mut self, index: u64, assignments: &[(TaskId, NodeId)], now: &str) {
        for (id, node) in assignments {
            let Some(t) = self.tasks.get(id) else {
                continue;
            };
            if t.status.state > TaskState::Pending || t.desired_state > TaskState::Running {
                continue;
            }
            if !self.nodes.contains_key(node) {
                continue;
            }
            let mut t = t.clone();
            t.node_id = Some(node.clone());
            t.status = TaskStatus::new(TaskState::Assigned, ASSIGNED_MESSAGE, now);
            t.version = index;
            t.updated_at = now.to_string();
            self.put_task(t);
        }
    }

    /// Status reports. A task only moves forward (a late "running" after
    /// "failed" is dropped); a report from a node about a task that is not
    /// assigned to it is dropped (`reporter` is set for workers' reports).
    pub(super) fn set_task_status(
        &mut self,
        index: u64,
        updates: &[TaskStatusUpdate],
        reporter: Option<&NodeId>,
    ) {
        for u in updates {
            let Some(t) = self.tasks.get_mut(&u.id) else {
                continue;
            };
            if let Some(r) = reporter {
                if t.node_id.as_ref() != Some(r) {
                    continue;
                }
            }
            if u.status.state < t.status.state {
                continue;
            }
            if u.status == t.status {
                continue;
            }
            // The orchestrator acts on ends (restart, reap) and, while a
            // rolling update may be under way (the service was ever
            // updated), on tasks coming up; the many other reports need no
            // pass over the service.
            let coming_up =
                u.status.state == TaskState::Running && t.status.state < TaskState::Running;
            let cares = u.status.state.is_terminal()
                || (coming_up
                    && self
                        .services
                        .get(&t.service_id)
                        .is_none_or(|s| s.previous_spec.is_some()));
            let before = Before::of(t);
            if coming_up {
                t.running_since = Some(u.status.timestamp.clone());
            }
            t.status = u.status.clone();
            t.version = index;
            t.updated_at = u.status.timestamp.clone();
            self.retouch(&u.id, cares, before);
        }
    }

    /// Desired state only rises (running → shutdown → remove).
    pub(super) fn set_tasks_desired(
        &mut self,
        index: u64,
        ids: &[TaskId],
        desired: TaskState,
        now: &str,
    ) {
        for id in ids {
            let Some(t) = self.tasks.get_mut(id) else {
                continue;
            };
            if t.desired_state >= desired {
                continue;
            }
            let before = Before::of(t);
            t.desired_state = desired;
            t.version = index;
            t.updated_at = now.to_string();
            self.retouch(id, true, before);
        }
    }

    pub(super) fn delete_tasks(&mut self, ids: &[TaskId]) {
        for id in ids {
            self.delete_task(id);
        }
    }
}
