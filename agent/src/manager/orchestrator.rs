//! The orchestrator: turns services into tasks. Pure: `reconcile(&State,
//! now)` returns the commands that move the tasks toward the services'
//! desired state; the leader's loop writes them and runs it again after every
//! change (level-triggered: a lost write is simply decided again).
//!
//! - replicated services get one live task per slot 1..=replicas; extra
//!   slots are removed (highest first), missing ones created;
//! - global services get one live task per node that can take it;
//! - a task that ended is replaced per its restart policy (condition,
//!   delay, max attempts within a window), in the same slot;
//! - tasks on nodes that are down, drained or gone are replaced elsewhere
//!   (the old task is asked to shut down, which happens when its node
//!   comes back: no duplicate then);
//! - tasks made from an older spec are replaced `parallelism` at a time;
//! - the reaper deletes finished tasks beyond the history limit and tasks of
//!   removed services and slots once they are down.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::store::{
    place_of, Availability, Command, Job, Node, NodeId, NodeState, Place, RollbackGuard, Service,
    ServiceId, SharedSpec, State, Task, TaskId, TaskState, TaskStatus, TaskStatusUpdate,
    ASSIGNED_MESSAGE,
};

use super::scheduler::Constraint;

mod update;

/// Tasks per `CreateTasks` command: keeps one raft entry under about
/// 1 MiB (a task names its spec by key there: ~450 bytes of JSON; each
/// distinct spec once, and since `by_node` a command holds up to one per
/// service of the pass).
const TASKS_PER_COMMAND: usize = 1000;

/// What one pass decided, and when it wants to be run again even if
/// nothing changes (a restart delay running out).
#[derive(Debug, Default)]
pub struct Plan {
    pub commands: Vec<Command>,
    pub wake_in: Option<Duration>,
}

/// A service's rolling update as `tend` carries it out.
struct Rollout<'t> {
    /// Out-of-date tasks this pass may still replace.
    budget: u64,
    start_first: bool,
    /// The live task of the current spec in each place (slot, or node for
    /// a global service).
    current: HashMap<Place, &'t Task>,
}

/// Where a node stands for the tasks on it.
fn node_keeps_tasks(node: Option<&Node>) -> bool {
    node.is_some_and(|n| {
        n.status.state != NodeState::Down && n.spec.availability != Availability::Drain
    })
}

fn parse_time(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

pub struct Orchestrator<'a> {
    state: &'a State,
    now: OffsetDateTime,
    now_text: String,
    new_id: &'a mut dyn FnMut() -> String,
    plan: Plan,
    /// The spec of the service whose tasks were made last: the tasks of
    /// one service share one copy (`store::spec`).
    spec: Option<(ServiceId, SharedSpec)>,
    /// Rolling updates' progress (status changes, rollbacks): written
    /// first.
    updates: Vec<Command>,
    create: Vec<Task>,
    shutdown: Vec<TaskId>,
    remove: Vec<TaskId>,
    delete: Vec<TaskId>,
}

/// One reconciliation pass over every service.
pub fn reconcile(state: &State, now: OffsetDateTime, new_id: &mut dyn FnMut() -> String) -> Plan {
    reconcile_scoped(state, now, new_id, None)
}

/// A pass over the given services only (`None`: all): those whose tasks or
/// spec changed since the last pass (`store::hints`). Every decision about a
/// service depends only on it, its tasks and the nodes, and a node change
/// makes the next pass a full one, so the services left out would have
/// decided nothing.
pub fn reconcile_scoped(
    state: &State,
    now: OffsetDateTime,
    new_id: &mut dyn FnMut() -> String,
    scope: Option<&BTreeSet<ServiceId>>,
) -> Plan {
    let mut o = Orchestrator {
        state,
        now,
        now_text: now.format(&Rfc3339).unwrap_or_default(),
        new_id,
        plan: Plan::default(),
        spec: None,
        updates: Vec::new(),
        create: Vec::new(),
        shutdown: Vec::new(),
        remove: Vec::new(),
        delete: Vec::new(),
    };
    let services: Box<dyn Iterator<Item = &Service>> = match scope {
        Some(ids) => Box::new(ids.iter().filter_map(|id| state.services.get(id))),
        None => Box::new(state.services.values()),
    };
    for service in services {
        if let Some(job) = service.job() {
            o.job(service, job);
        } else if service.is_global() {
            o.global(service);
        } else {
            o.replicated(service);
        }
    }
    o.reap(scope);
    o.finish()
}

impl Orchestrator<'_> {
    fn finish(mut self) -> Plan {
        let now = self.now_text.clone();
        self.plan.commands.append(&mut self.updates);
        if !self.shutdown.is_empty() {
            self.plan.commands.push(Command::SetTasksDesired {
                ids: std::mem::take(&mut self.shutdown),
                desired: TaskState::Shutdown,
                now: now.clone(),
            });
        }
        if !self.remove.is_empty() {
            self.plan.commands.push(Command::SetTasksDesired {
                ids: std::mem::take(&mut self.remove),
                desired: TaskState::Remove,
                now: now.clone(),
            });
        }
        let create = std::mem::take(&mut self.create);
        for chunk in create.chunks(TASKS_PER_COMMAND) {
            self.plan.commands.push(Command::CreateTasks {
                tasks: chunk.to_vec(),
            });
        }
        if !self.delete.is_empty() {
            self.plan.commands.push(Command::DeleteTasks {
                ids: std::mem::take(&mut self.delete),
            });
        }
        self.plan
    }

    fn wake(&mut self, after: Duration) {
        self.plan.wake_in = Some(self.plan.wake_in.map_or(after, |w| w.min(after)));
    }

    fn new_task(&mut self, service: &Service, slot: u64, node: Option<NodeId>, attempt: u64) {
        let spec = match &self.spec {
            Some((id, spec)) if *id == service.id => spec.clone(),
            _ => {
                let spec = SharedSpec::new(service.spec.task_template.clone().unwrap_or_default());
                self.spec = Some((service.id.clone(), spec.clone()));
                spec
            }
        };
        let ports = service
            .spec
            .endpoint_spec
            .as_ref()
            .and_then(|e| e.ports.clone())
            .unwrap_or_default();
        self.create.push(Task {
            id: TaskId((self.new_id)()),
            version: 0,
            created_at: self.now_text.clone(),
            updated_at: self.now_text.clone(),
            service_id: service.id.clone(),
            slot,
            node_id: node,
            spec,
            spec_version: service.spec_version,
            ports,
            desired_state: TaskState::Running,
            status: TaskStatus::new(
                TaskState::Pending,
                "pending task scheduling",
                &self.now_text,
            ),
            attempt,
            registry_auth: service.registry_auth.clone(),
            networks: Vec::new(),
            running_since: None,
        });
    }

    /// Decide about one live task (desired running). Returns whether the
    /// slot stays occupied by it (false: it is being replaced or retired).
    fn tend(&mut self, service: &Service, task: &Task, rollout: &mut Rollout) -> bool {
        let node = task.node_id.as_ref().and_then(|n| self.state.nodes.get(n));
        // Lost node: replace. The old task shuts down when the node returns.
        if task.node_id.is_some() && !node_keeps_tasks(node) {
            self.shutdown.push(task.id.clone());
            if !service.is_global() {
                self.new_task(service, task.slot, None, 0);
            }
            return false;
        }
        if task.status.state.is_terminal() {
            let policy = task.restart_policy();
            if !policy.wants_restart(task.status.state, task.status.exit_code) {
                // Ended for good: the slot stays "filled" by the finished task.
                return true;
            }
            let ended = parse_time(&task.status.timestamp).unwrap_or(self.now);
            let attempt = if policy.window.is_zero()
                || parse_time(&task.created_at).is_some_and(|c| self.now - c < policy.window)
            {
                task.attempt + 1
            } else {
                1
            };
            if policy.max_attempts > 0 && attempt > policy.max_attempts {
                return true;
            }
            let due = ended + policy.delay;
            if self.now < due {
                self.wake(
                    (due - self.now)
                        .try_into()
                        .unwrap_or(Duration::from_secs(1)),
                );
                return true;
            }
            self.shutdown.push(task.id.clone());
            let node = if service.is_global() {
                task.node_id.clone()
            } else {
                None
            };
            self.new_task(service, task.slot, node, attempt);
            return false;
        }
        // Rolling update: replace tasks of another spec, as many as the
        // updater allows (`update::step`).
        if task.spec_version != service.spec_version {
            let place = place_of(task.slot, &task.node_id);
            if let Some(new) = rollout.current.get(&place) {
                // Replaced already: stop-first (or a duplicate of passes
                // that straddled an update) retires the old task now,
                // start-first once the new one runs.
                if !rollout.start_first || new.status.state == TaskState::Running {
                    self.shutdown.push(task.id.clone());
                }
                return true;
            }
            if rollout.budget == 0 {
                return true;
            }
            rollout.budget -= 1;
            if !rollout.start_first {
                self.shutdown.push(task.id.clone());
            }
            let node = if service.is_global() {
                task.node_id.clone()
            } else {
                None
            };
            self.new_task(service, task.slot, node, 0);
            return false;
        }
        true
    }

    /// The updater's decision about a service, and what tend needs of it.
    fn rollout<'t>(&mut self, service: &Service, tasks: &[&'t Task], slots: u64) -> Rollout<'t> {
        let step = update::step(service, tasks, slots, self.now);
        if let Some(w) = step.wake_in {
            self.wake(w);
        }
        let now = self.now_text.clone();
        match step.change {
            Some(update::Change::Status(status)) => self.updates.push(Command::SetUpdateStatus {
                id: service.id.clone(),
                spec_version: service.spec_version,
                status: Some(status),
                now,
            }),
            Some(update::Change::Rollback { message }) => {
                self.updates.push(Command::RollbackService {
                    id: service.id.clone(),
                    guard: RollbackGuard::SpecVersion(service.spec_version),
                    message,
                    now,
                })
            }
            None => {}
        }
        let current = tasks
            .iter()
            .filter(|t| t.desired_state <= TaskState::Running)
            .filter(|t| t.spec_version == service.spec_version)
            .map(|t| (place_of(t.slot, &t.node_id), *t))
            .collect();
        Rollout {
            budget: step.budget,
            start_first: step.start_first,
            current,
        }
    }

    fn replicated(&mut self, service: &Service) {
        let want = service.replicas().unwrap_or(0);
        let all: Vec<&Task> = self.state.tasks_of_service(&service.id).collect();
        let live: Vec<&Task> = all
            .iter()
            .filter(|t| t.desired_state <= TaskState::Running)
            .copied()
            .collect();
        let mut rollout = self.rollout(service, &all, want);
        // Slots above the wanted count go away, highest first.
        let mut occupied: BTreeMap<u64, ()> = BTreeMap::new();
        for t in &live {
            if t.slot > want {
                self.remove.push(t.id.clone());
                continue;
            }
            if self.tend(service, t, &mut rollout) {
                occupied.insert(t.slot, ());
            } else {
                // Replacement already created in this slot.
                occupied.insert(t.slot, ());
            }
        }
        for slot in 1..=want {
            if !occupied.contains_key(&slot) {
                self.new_task(service, slot, None, 0);
            }
        }
    }

    fn global(&mut self, service: &Service) {
        let all: Vec<&Task> = self.state.tasks_of_service(&service.id).collect();
        let live: Vec<&Task> = all
            .iter()
            .filter(|t| t.desired_state <= TaskState::Running)
            .copied()
            .collect();
        let constraints: Vec<Constraint> = service
            .spec
            .task_template
            .as_ref()
            .and_then(|t| t.placement.as_ref())
            .and_then(|p| p.constraints.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|c| Constraint::parse(c).ok())
            .collect();
        let eligible = |n: &Node| {
            n.status.state == NodeState::Ready
                && n.spec.availability == Availability::Active
                && constraints.iter().all(|c| c.matches(n))
        };
        let nodes: BTreeSet<&NodeId> = live.iter().filter_map(|t| t.node_id.as_ref()).collect();
        let mut rollout = self.rollout(service, &all, nodes.len() as u64);
        let mut covered: HashMap<&NodeId, ()> = HashMap::new();
        for t in &live {
            let Some(n) = &t.node_id else { continue };
            let node = self.state.nodes.get(n);
            let fits = node.is_some_and(|node| {
                constraints.iter().all(|c| c.matches(node))
                    && node.spec.availability != Availability::Drain
            });
            if !fits {
                self.shutdown.push(t.id.clone());
                continue;
            }
            // A down node keeps its global task (it is that node's task);
            // it is restarted there when the node returns.
            if node.is_some_and(|n| n.status.state == NodeState::Down) {
                covered.insert(n, ());
                continue;
            }
            self.tend(service, t, &mut rollout);
            covered.insert(n, ());
        }
        for node in self.state.nodes.values() {
            if !covered.contains_key(&node.id) && eligible(node) {
                self.new_task(service, 0, Some(node.id.clone()), 0);
            }
        }
    }

    /// A job: its current iteration's tasks run to completion, at most
    /// `max_concurrent` at once (a global job: once on each node that can
    /// take it, nodes that join later included); a failed task is
    /// restarted by its policy in its place; tasks of an earlier iteration
    /// are shut down. No rolling update: each update is a new run.
    fn job(&mut self, service: &Service, job: Job) {
        let all: Vec<&Task> = self.state.tasks_of_service(&service.id).collect();
        let mut rollout = Rollout {
            budget: 0,
            start_first: false,
            current: HashMap::new(),
        };
        let mut places: BTreeSet<Place> = BTreeSet::new();
        let (mut active, mut done) = (0u64, 0u64);
        for t in all.iter().filter(|t| t.desired_state <= TaskState::Running) {
            if t.spec_version != service.spec_version {
                self.shutdown.push(t.id.clone());
                continue;
            }
            if let Job::Global = job {
                let fits = t
                    .node_id
                    .as_ref()
                    .is_some_and(|n| self.global_fit(service, n));
                if !fits {
                    self.shutdown.push(t.id.clone());
                    continue;
                }
            }
            places.insert(place_of(t.slot, &t.node_id));
            // Done, even if its node has gone since: restart `any` acts
            // as `on-failure` for a job (Swarm).
            if t.status.state == TaskState::Complete {
                done += 1;
                continue;
            }
            if self.tend(service, t, &mut rollout) {
                if !t.status.state.is_terminal() {
                    active += 1;
                }
            } else {
                // Replaced in its place by `tend` (a restart, a lost node).
                active += 1;
            }
        }
        match job {
            Job::Replicated {
                max_concurrent,
                total,
            } => {
                let room = max_concurrent
                    .saturating_sub(active)
                    .min(total.saturating_sub(done + active));
                let free = (1..=total)
                    .filter(|slot| !places.contains(&place_of(*slot, &None)))
                    .take(room as usize)
                    .collect::<Vec<_>>();
                for slot in free {
                    self.new_task(service, slot, None, 0);
                }
            }
            Job::Global => {
                let covered: BTreeSet<&NodeId> = all
                    .iter()
                    .filter(|t| {
                        t.desired_state <= TaskState::Running
                            && t.spec_version == service.spec_version
                    })
                    .filter_map(|t| t.node_id.as_ref())
                    .collect();
                let nodes: Vec<NodeId> = self
                    .state
                    .nodes
                    .values()
                    .filter(|n| !covered.contains(&n.id) && n.status.state == NodeState::Ready)
                    .filter(|n| self.global_fit(service, &n.id))
                    .map(|n| n.id.clone())
                    .collect();
                for n in nodes {
                    self.new_task(service, 0, Some(n), 0);
                }
            }
        }
    }

    /// May node `n` run a global service's (or global job's) task: active
    /// and within the placement constraints?
    fn global_fit(&self, service: &Service, n: &NodeId) -> bool {
        let Some(node) = self.state.nodes.get(n) else {
            return false;
        };
        node.spec.availability == Availability::Active
            && service
                .spec
                .task_template
                .as_ref()
                .and_then(|t| t.placement.as_ref())
                .and_then(|p| p.constraints.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|c| Constraint::parse(c).ok())
                .all(|c| c.matches(node))
    }

    /// Delete what no longer needs keeping.
    fn reap(&mut self, scope: Option<&BTreeSet<ServiceId>>) {
        let limit = self
            .state
            .cluster
            .as_ref()
            .map(|c| c.spec.task_history_limit)
            .unwrap_or(5)
            .max(0) as usize;
        // History per slot (replicated) or per node (global).
        let mut history: HashMap<(&crate::store::ServiceId, u64, Option<&NodeId>), Vec<&Task>> =
            HashMap::new();
        let state = self.state;
        let tasks: Box<dyn Iterator<Item = &Task>> = match scope {
            Some(ids) => Box::new(ids.iter().flat_map(|id| state.tasks_of_service(id))),
            None => Box::new(state.tasks.values()),
        };
        for t in tasks {
            let node = t.node_id.as_ref().and_then(|n| self.state.nodes.get(n));
            let node_gone =
                t.node_id.is_none() || node.is_none_or(|n| n.status.state == NodeState::Down);
            let down = t.status.state.is_terminal() || node_gone;
            let service_gone = !self.state.services.contains_key(&t.service_id);
            if (t.desired_state >= TaskState::Remove || service_gone) && down {
                self.delete.push(t.id.clone());
                continue;
            }
            // A task that was never placed and is no longer wanted.
            if t.desired_state > TaskState::Running && t.status.state <= TaskState::Pending {
                self.delete.push(t.id.clone());
                continue;
            }
            let key_node = if t.slot == 0 {
                t.node_id.as_ref()
            } else {
                None
            };
            history
                .entry((&t.service_id, t.slot, key_node))
                .or_default()
                .push(t);
        }
        for tasks in history.values_mut() {
            if tasks.len() <= limit.max(1) {
                continue;
            }
            // Oldest first; only finished, unwanted tasks are history.
            tasks.sort_by(|a, b| a.created_at.cmp(&b.created_at));
            let mut excess = tasks.len() - limit.max(1);
            for t in tasks.iter() {
                if excess == 0 {
                    break;
                }
                if t.desired_state > TaskState::Running && t.status.state.is_terminal() {
                    self.delete.push(t.id.clone());
                    excess -= 1;
                }
            }
        }
    }
}

/// The scheduler's decisions as commands.
/// A pass's commands with the scheduler's decisions added: over the
/// pending tasks and those the commands create (placed in their own
/// `CreateTasks`, see `place_created`).
pub fn with_placements(state: &State, mut commands: Vec<Command>, now: &str) -> Vec<Command> {
    let decisions = {
        let created: Vec<&Task> = commands
            .iter()
            .filter_map(|c| match c {
                Command::CreateTasks { tasks } => Some(tasks.iter()),
                _ => None,
            })
            .flatten()
            .collect();
        super::scheduler::schedule_including(state, &created)
    };
    let mut rest = place_created(&mut commands, decisions, now);
    let mut commands = by_node(commands);
    // Placements of tasks that already existed likewise.
    rest.assignments.sort_by(|a, b| a.1.cmp(&b.1));
    commands.extend(placement_commands(rest, now));
    commands
}

/// The pass's `CreateTasks` again, their tasks ordered by node: each
/// command then gives a few nodes all of their new tasks, instead of every
/// node one task of one service (spread puts a service's replicas on all
/// the nodes). A node's long poll wakes once per commit that touches it:
/// with 100 services of 1,000 replicas on 1,000 nodes, that was about 32
/// answers (and 20 reports) per node, one per service's command. Only the
/// grouping changes: the same tasks, in commands of the same size, where
/// the first of them was. The sort is stable: a node's tasks keep the
/// orchestrator's order.
fn by_node(commands: Vec<Command>) -> Vec<Command> {
    let mut created = Vec::new();
    let mut at = None;
    let mut out = Vec::with_capacity(commands.len());
    // `Orchestrator::finish` writes the creates one after another: moving
    // them to the first one's place reorders them only among themselves.
    let mut after_creates = false;
    for c in commands {
        match c {
            Command::CreateTasks { tasks } => {
                debug_assert!(!after_creates, "the creates of a pass are contiguous");
                at.get_or_insert(out.len());
                created.extend(tasks);
            }
            other => {
                after_creates = at.is_some();
                out.push(other);
            }
        }
    }
    let Some(at) = at else { return out };
    created.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    let mut chunks = Vec::with_capacity(created.len().div_ceil(TASKS_PER_COMMAND));
    let mut tasks = created.into_iter().peekable();
    while tasks.peek().is_some() {
        chunks.push(Command::CreateTasks {
            tasks: tasks.by_ref().take(TASKS_PER_COMMAND).collect(),
        });
    }
    out.splice(at..at, chunks);
    out
}

/// The scheduler's decisions about tasks created in this same pass go into
/// their `CreateTasks` commands: such a task is created assigned (one raft
/// write instead of two, and no task waits for a second command to be
/// placed). Returns the decisions about the tasks that already existed.
fn place_created(
    commands: &mut [Command],
    d: super::scheduler::Decisions,
    now: &str,
) -> super::scheduler::Decisions {
    let mut created: HashMap<TaskId, &mut Task> = commands
        .iter_mut()
        .filter_map(|c| match c {
            Command::CreateTasks { tasks } => Some(tasks.iter_mut()),
            _ => None,
        })
        .flatten()
        .map(|t| (t.id.clone(), t))
        .collect();
    let mut rest = super::scheduler::Decisions::default();
    for (id, node) in d.assignments {
        match created.get_mut(&id) {
            Some(t) => {
                t.node_id = Some(node);
                t.status = TaskStatus::new(TaskState::Assigned, ASSIGNED_MESSAGE, now);
            }
            None => rest.assignments.push((id, node)),
        }
    }
    for (id, msg) in d.unplaced {
        match created.get_mut(&id) {
            Some(t) => t.status.err = Some(msg),
            None => rest.unplaced.push((id, msg)),
        }
    }
    rest
}

fn placement_commands(d: super::scheduler::Decisions, now: &str) -> Vec<Command> {
    let mut cmds = Vec::new();
    if !d.assignments.is_empty() {
        for chunk in d.assignments.chunks(TASKS_PER_COMMAND * 4) {
            cmds.push(Command::AssignTasks {
                assignments: chunk.to_vec(),
                now: now.to_string(),
            });
        }
    }
    if !d.unplaced.is_empty() {
        let updates = d
            .unplaced
            .into_iter()
            .map(|(id, msg)| TaskStatusUpdate {
                id,
                status: TaskStatus {
                    timestamp: now.to_string(),
                    state: TaskState::Pending,
                    message: "pending task scheduling".into(),
                    err: Some(msg),
                    container_id: None,
                    pid: None,
                    exit_code: None,
                    ports: Vec::new(),
                },
            })
            .collect();
        cmds.push(Command::SetTaskStatus {
            updates,
            reporter: None,
        });
    }
    cmds
}

#[cfg(test)]
pub(crate) mod tests;
