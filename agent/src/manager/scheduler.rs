//! The scheduler: places pending tasks on nodes. Pure: `schedule(&State)`
//! returns the placements and the reasons for what could not be placed; the
//! leader's loop writes them in one batch.
//!
//! Like Swarm's: a pipeline of filters (ready, availability, constraints,
//! resources, replicas per node, host ports), each able to explain itself,
//! then a ranking by placement preferences, fewest tasks of the service,
//! then fewest tasks overall. Unlike Swarm's "no suitable node", the reason
//! names the constraint or resource that failed and on how many nodes.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::store::{
    Availability, Node, NodeId, NodeState, Role, ServiceId, State, Task, TaskId, TaskState,
};

/// One placement constraint (`node.labels.zone==eu`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Constraint {
    pub key: String,
    pub equal: bool,
    pub value: String,
}

impl Constraint {
    /// Parse Swarm's constraint syntax; the error says what is accepted.
    pub fn parse(text: &str) -> Result<Constraint, String> {
        let (key, equal, value) = if let Some((k, v)) = text.split_once("==") {
            (k, true, v)
        } else if let Some((k, v)) = text.split_once("!=") {
            (k, false, v)
        } else {
            return Err(format!(
                "constraint {text:?} has no operator: use KEY==VALUE or KEY!=VALUE"
            ));
        };
        let key = key.trim();
        let value = value.trim();
        let known = matches!(
            key,
            "node.id" | "node.hostname" | "node.role" | "node.platform.os" | "node.platform.arch"
        ) || key
            .strip_prefix("node.labels.")
            .is_some_and(|l| !l.is_empty())
            || key
                .strip_prefix("engine.labels.")
                .is_some_and(|l| !l.is_empty());
        if !known {
            return Err(format!(
                "constraint {text:?}: unknown key {key:?}; use node.id, node.hostname, node.role, node.platform.os, node.platform.arch or node.labels.<name>"
            ));
        }
        if value.is_empty() {
            return Err(format!("constraint {text:?} has an empty value"));
        }
        Ok(Constraint {
            key: key.to_string(),
            equal,
            value: value.to_string(),
        })
    }

    pub fn matches(&self, node: &Node) -> bool {
        let actual: Option<String> = match self.key.as_str() {
            "node.id" => Some(node.id.0.clone()),
            "node.hostname" => Some(node.description.hostname.clone()),
            "node.role" => Some(node.spec.role.as_str().to_string()),
            "node.platform.os" => Some(node.description.platform.os.clone()),
            "node.platform.arch" => Some(node.description.platform.architecture.clone()),
            k => k
                .strip_prefix("node.labels.")
                .and_then(|l| node.spec.labels.get(l).cloned()),
        };
        // Swarm compares case-insensitively; a missing label is "not equal".
        let eq = actual.is_some_and(|a| a.eq_ignore_ascii_case(&self.value));
        eq == self.equal
    }
}

impl std::fmt::Display for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let op = if self.equal { "==" } else { "!=" };
        write!(f, "{}{op}{}", self.key, self.value)
    }
}

/// What a task asks of a node, read once per service.
#[derive(Clone, Debug, Default)]
pub struct Needs {
    pub constraints: Vec<Constraint>,
    pub nano_cpus: i64,
    pub memory: i64,
    pub max_per_node: u64,
    /// Host-mode published ports (protocol, port).
    pub host_ports: Vec<(String, i64)>,
    /// `spread=node.labels.X` preferences, in order.
    pub spread: Vec<String>,
}

impl Needs {
    pub fn of(task: &Task) -> Needs {
        let placement = task.spec.placement.as_ref();
        let constraints = placement
            .and_then(|p| p.constraints.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|c| Constraint::parse(c).ok())
            .collect();
        let spread = placement
            .and_then(|p| p.preferences.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|p| p.spread.as_ref()?.spread_descriptor.clone())
            .collect();
        let res = task
            .spec
            .resources
            .as_ref()
            .and_then(|r| r.reservations.as_ref());
        Needs {
            constraints,
            nano_cpus: res.and_then(|r| r.nano_cpus).unwrap_or(0),
            memory: res.and_then(|r| r.memory_bytes).unwrap_or(0),
            max_per_node: placement.and_then(|p| p.max_replicas).unwrap_or(0).max(0) as u64,
            host_ports: host_ports(task),
            spread,
        }
    }
}

fn host_ports(task: &Task) -> Vec<(String, i64)> {
    task.ports
        .iter()
        .filter(|p| {
            matches!(
                p.publish_mode,
                Some(bollard_stubs::models::EndpointPortConfigPublishModeEnum::HOST)
            )
        })
        .filter_map(|p| {
            let proto = p
                .protocol
                .map(|x| x.to_string())
                .unwrap_or_else(|| "tcp".into());
            Some((proto, p.published_port?))
        })
        .collect()
}

/// What is already on a node: counts and reservations of its live tasks.
#[derive(Clone, Debug, Default)]
struct Load<'a> {
    total: u64,
    per_service: HashMap<&'a ServiceId, u64>,
    nano_cpus: i64,
    memory: i64,
    ports: Vec<(String, i64)>,
}

impl<'a> Load<'a> {
    fn add(&mut self, task: &'a Task, needs: &Needs) {
        self.total += 1;
        *self.per_service.entry(&task.service_id).or_default() += 1;
        self.nano_cpus += needs.nano_cpus;
        self.memory += needs.memory;
        self.ports.extend(needs.host_ports.iter().cloned());
    }
}

/// Why nodes were turned down, counted per reason, for the pending message.
#[derive(Default)]
struct Explain(BTreeMap<String, usize>);

impl Explain {
    fn note(&mut self, reason: String) {
        *self.0.entry(reason).or_default() += 1;
    }
    fn message(&self) -> String {
        if self.0.is_empty() {
            return "no suitable node (the swarm has no nodes)".into();
        }
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(r, n)| format!("{r} on {n} node{}", if *n == 1 { "" } else { "s" }))
            .collect();
        format!("no suitable node ({})", parts.join("; "))
    }
}

/// The scheduler's decisions for one pass.
#[derive(Debug, Default, PartialEq)]
pub struct Decisions {
    pub assignments: Vec<(TaskId, NodeId)>,
    /// Tasks left pending, with the reason (only where it changed).
    pub unplaced: Vec<(TaskId, String)>,
}

fn can_take_new_tasks(node: &Node) -> Result<(), String> {
    if node.status.state != NodeState::Ready {
        return Err(format!("node is {}", node.status.state.as_str()));
    }
    match node.spec.availability {
        Availability::Active => Ok(()),
        a => Err(format!("node availability is {}", a.as_str())),
    }
}

fn check(
    node: &Node,
    needs: &Needs,
    load: Option<&Load>,
    service: &ServiceId,
) -> Result<(), String> {
    can_take_new_tasks(node)?;
    for c in &needs.constraints {
        if !c.matches(node) {
            return Err(format!("constraint {c} not satisfied"));
        }
    }
    let empty = Load::default();
    let load = load.unwrap_or(&empty);
    if needs.nano_cpus > 0 && load.nano_cpus + needs.nano_cpus > node.description.nano_cpus {
        return Err(format!(
            "insufficient CPU (wants {}, {} free)",
            cpus(needs.nano_cpus),
            cpus((node.description.nano_cpus - load.nano_cpus).max(0))
        ));
    }
    if needs.memory > 0 && load.memory + needs.memory > node.description.memory_bytes {
        return Err(format!(
            "insufficient memory (wants {}, {} free)",
            bytes(needs.memory),
            bytes((node.description.memory_bytes - load.memory).max(0))
        ));
    }
    if needs.max_per_node > 0
        && load.per_service.get(service).copied().unwrap_or(0) >= needs.max_per_node
    {
        return Err(format!(
            "max replicas per node ({}) reached",
            needs.max_per_node
        ));
    }
    for p in &needs.host_ports {
        if load.ports.contains(p) {
            return Err(format!("host port {}/{} already in use", p.1, p.0));
        }
    }
    Ok(())
}

fn cpus(nano: i64) -> String {
    format!("{:.2} CPUs", nano as f64 / 1e9)
}

fn bytes(b: i64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if b >= 1024 * 1024 * 1024 {
        format!("{:.1}GiB", b as f64 / (MIB * 1024.0))
    } else {
        format!("{:.0}MiB", b as f64 / MIB)
    }
}

/// Nodes that pass the load-independent filters for one group of tasks
/// (same service and spec), ordered by their rank key. Keys go stale when
/// another group places a task on a node; since loads only grow during a
/// pass, a stale key is never above the real one, so the first entry whose
/// key is current is the best node (a lazy heap).
struct Candidates {
    set: BTreeSet<(u64, u64, u64, usize)>,
}

fn simple_key(
    node: &Node,
    load: Option<&Load>,
    service: &ServiceId,
    i: usize,
) -> (u64, u64, u64, usize) {
    (
        load.and_then(|l| l.per_service.get(service).copied())
            .unwrap_or(0),
        load.map(|l| l.total).unwrap_or(0),
        u64::from(node.spec.role == Role::Manager),
        i,
    )
}

impl Candidates {
    fn new(
        nodes: &[&Node],
        needs: &Needs,
        loads: &HashMap<NodeId, Load>,
        service: &ServiceId,
    ) -> Self {
        let set = nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| {
                can_take_new_tasks(n).is_ok() && needs.constraints.iter().all(|c| c.matches(n))
            })
            .map(|(i, n)| simple_key(n, loads.get(&n.id), service, i))
            .collect();
        Candidates { set }
    }

    /// The best node that passes every filter now, as `check` + `rank` would
    /// choose it (ties go to the first node in ID order).
    fn best(
        &mut self,
        nodes: &[&Node],
        needs: &Needs,
        loads: &HashMap<NodeId, Load>,
        service: &ServiceId,
    ) -> Option<usize> {
        while let Some(first) = self.set.pop_first() {
            let i = first.3;
            let node = nodes[i];
            let load = loads.get(&node.id);
            let now = simple_key(node, load, service, i);
            if now != first {
                self.set.insert(now);
                continue;
            }
            if check(node, needs, load, service).is_err() {
                // Loads only grow during a pass: it stays unfit.
                continue;
            }
            // Put back; the caller's placement makes this key stale.
            self.set.insert(now);
            return Some(i);
        }
        None
    }
}

/// Place every pending task that can be placed.
pub fn schedule(state: &State) -> Decisions {
    schedule_with(state, &[], true)
}

/// `schedule`, also placing tasks the orchestrator created in this same
/// pass (not in the state yet): their placement then commits right behind
/// their creation instead of one reconcile pass (and one commit) later.
pub fn schedule_including(state: &State, created: &[&Task]) -> Decisions {
    schedule_with(state, created, true)
}

/// `ordered: false` ranks every node for every task (the reference the
/// ordered candidates are tested against).
fn schedule_with(state: &State, created: &[&Task], ordered: bool) -> Decisions {
    let mut decisions = Decisions::default();
    let pending: Vec<&Task> = state
        .task_index
        .pending
        .iter()
        .filter_map(|id| state.tasks.get(id))
        .chain(created.iter().copied())
        .filter(|t| t.status.state == TaskState::Pending && t.desired_state <= TaskState::Running)
        .collect();
    if pending.is_empty() {
        return decisions;
    }
    // Needs are per service spec version: read once.
    let mut needs_cache: HashMap<(ServiceId, u64), Needs> = HashMap::new();
    // Current load of every node from its live tasks.
    let mut loads: HashMap<NodeId, Load> = HashMap::new();
    for t in state.tasks.values() {
        if let Some(n) = &t.node_id {
            if t.status.state > TaskState::Pending && t.is_live() {
                let needs = needs_cache
                    .entry((t.service_id.clone(), t.spec_version))
                    .or_insert_with(|| Needs::of(t));
                loads.entry(n.clone()).or_default().add(t, needs);
            }
        }
    }
    let nodes: Vec<&Node> = state.nodes.values().collect();
    let mut candidates: HashMap<(ServiceId, u64), Candidates> = HashMap::new();
    for task in pending {
        let key = (task.service_id.clone(), task.spec_version);
        let needs = needs_cache
            .entry(key.clone())
            .or_insert_with(|| Needs::of(task))
            .clone();
        // Global tasks come with their node chosen; only check it.
        if let (Some(n), 0) = (&task.node_id, task.slot) {
            let Some(node) = state.nodes.get(n) else {
                continue;
            };
            match check(node, &needs, loads.get(n), &task.service_id) {
                Ok(()) => {
                    loads.entry(n.clone()).or_default().add(task, &needs);
                    decisions.assignments.push((task.id.clone(), n.clone()));
                }
                Err(reason) => {
                    let msg = format!("no suitable node ({reason})");
                    if task.status.err.as_deref() != Some(msg.as_str()) {
                        decisions.unplaced.push((task.id.clone(), msg));
                    }
                }
            }
            continue;
        }
        // Without spread preferences the rank is per node only: keep the
        // fit nodes of each group ordered instead of ranking every node for
        // every task (100k tasks × 1k nodes).
        if ordered && needs.spread.is_empty() {
            let c = candidates
                .entry(key)
                .or_insert_with(|| Candidates::new(&nodes, &needs, &loads, &task.service_id));
            if let Some(i) = c.best(&nodes, &needs, &loads, &task.service_id) {
                let node = nodes[i];
                loads.entry(node.id.clone()).or_default().add(task, &needs);
                decisions
                    .assignments
                    .push((task.id.clone(), node.id.clone()));
                continue;
            }
            // No node fits: the full pass below explains why.
        }
        let mut explain = Explain::default();
        let mut best: Option<(Vec<u64>, &Node)> = None;
        for node in &nodes {
            let load = loads.get(&node.id);
            if let Err(reason) = check(node, &needs, load, &task.service_id) {
                explain.note(reason);
                continue;
            }
            let key = rank(state, node, &needs, &loads, &task.service_id);
            if best.as_ref().is_none_or(|(k, _)| key < *k) {
                best = Some((key, node));
            }
        }
        match best {
            Some((_, node)) => {
                loads.entry(node.id.clone()).or_default().add(task, &needs);
                decisions
                    .assignments
                    .push((task.id.clone(), node.id.clone()));
            }
            None => {
                let msg = explain.message();
                if task.status.err.as_deref() != Some(msg.as_str()) {
                    decisions.unplaced.push((task.id.clone(), msg));
                }
            }
        }
    }
    decisions
}

/// Lower is better: per spread preference, the service's tasks in the
/// node's group; then the service's tasks on the node; then all its tasks.
fn rank(
    state: &State,
    node: &Node,
    needs: &Needs,
    loads: &HashMap<NodeId, Load>,
    service: &ServiceId,
) -> Vec<u64> {
    let mut key = Vec::with_capacity(needs.spread.len() + 2);
    for descriptor in &needs.spread {
        let label = descriptor
            .strip_prefix("node.labels.")
            .unwrap_or(descriptor);
        let group = node.spec.labels.get(label);
        let in_group: u64 = state
            .nodes
            .values()
            .filter(|n| n.spec.labels.get(label) == group)
            .filter_map(|n| loads.get(&n.id))
            .map(|l| l.per_service.get(service).copied().unwrap_or(0))
            .sum();
        key.push(in_group);
    }
    let load = loads.get(&node.id);
    key.push(
        load.and_then(|l| l.per_service.get(service).copied())
            .unwrap_or(0),
    );
    key.push(load.map(|l| l.total).unwrap_or(0));
    // Managers last among equals: keep their cores for raft (Swarm has no
    // such rule; on 2-core boards it matters).
    key.push(u64::from(node.spec.role == Role::Manager));
    key
}

#[cfg(test)]
mod tests;
