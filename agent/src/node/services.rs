//! Services on the manager's side of the API: validation of a spec before
//! it is proposed, lookups, task filters and counts. Pure functions over a
//! state snapshot.

use bollard_stubs::models::{EndpointPortConfigPublishModeEnum, ServiceSpec};

use crate::control::{ControlError, ControlResult, ServiceView, TaskFilter, TaskView};
use crate::manager::scheduler::Constraint;
use std::collections::HashMap;

use crate::store::{NodeState, Service, ServiceId, State, Task, TaskCounts, TaskState};

use super::secrets::resolve;

/// Docker's service name rule (it becomes a DNS name and a container name
/// prefix).
fn check_name(name: &str) -> ControlResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(ControlError::InvalidArgument(format!(
            "invalid service name {name:?}: use up to 63 letters, digits, '-', '_' or '.', starting with a letter or digit"
        )))
    }
}

fn invalid(msg: String) -> ControlError {
    ControlError::InvalidArgument(msg)
}

/// Check a spec from a client and fill in what the store needs (secret and
/// config IDs from names). Errors name the field and what to do.
/// Swarm's checks of the update and rollback configs (`validateUpdate`),
/// with its wording; parallelism is unsigned there.
fn check_update_configs(spec: &ServiceSpec) -> ControlResult<()> {
    let u = spec.update_config.clone().unwrap_or_default();
    let r = spec.rollback_config.clone().unwrap_or_default();
    for (what, parallelism, delay, monitor, ratio) in [
        (
            "update",
            u.parallelism,
            u.delay,
            u.monitor,
            u.max_failure_ratio,
        ),
        (
            "rollback",
            r.parallelism,
            r.delay,
            r.monitor,
            r.max_failure_ratio,
        ),
    ] {
        if parallelism.is_some_and(|p| p < 0) {
            return Err(invalid(format!(
                "TaskSpec: {what}-parallelism cannot be negative"
            )));
        }
        if delay.is_some_and(|d| d < 0) {
            return Err(invalid(format!(
                "TaskSpec: {what}-delay cannot be negative"
            )));
        }
        if monitor.is_some_and(|d| d < 0) {
            return Err(invalid(format!(
                "TaskSpec: {what}-monitor cannot be negative"
            )));
        }
        if ratio.is_some_and(|x| !(0.0..=1.0).contains(&x)) {
            return Err(invalid(format!(
                "TaskSpec: {what}-maxfailureratio cannot be less than 0 or bigger than 1"
            )));
        }
    }
    Ok(())
}

/// Swarm's checks of a health check (`validateHealthCheck`), with its
/// wording: durations are 0 (inherit) or at least 1 ms, retries not negative.
fn check_health(spec: &ServiceSpec) -> ControlResult<()> {
    let Some(h) = spec
        .task_template
        .as_ref()
        .and_then(|t| t.container_spec.as_ref())
        .and_then(|c| c.health_check.as_ref())
    else {
        return Ok(());
    };
    for (field, v) in [
        ("Interval", h.interval),
        ("Timeout", h.timeout),
        ("StartPeriod", h.start_period),
    ] {
        if v.is_some_and(|v| v != 0 && v < 1_000_000) {
            return Err(invalid(format!(
                "ContainerSpec: {field} in HealthConfig cannot be less than 1ms"
            )));
        }
    }
    if h.retries.is_some_and(|r| r < 0) {
        return Err(invalid(
            "ContainerSpec: Retries in HealthConfig cannot be negative".into(),
        ));
    }
    Ok(())
}

pub fn validate(state: &State, mut spec: ServiceSpec) -> ControlResult<ServiceSpec> {
    if spec.name.as_deref().unwrap_or("").is_empty() {
        // Docker names unnamed services randomly too.
        let id = crate::pki::new_node_id().0;
        spec.name = Some(format!("service-{}", &id[..8]));
    }
    check_name(spec.name.as_deref().unwrap_or(""))?;
    let mode = spec.mode.clone().unwrap_or_default();
    if let Some(j) = &mode.replicated_job {
        for (what, v) in [
            ("MaxConcurrent", j.max_concurrent),
            ("TotalCompletions", j.total_completions),
        ] {
            if let Some(v) = v.filter(|v| *v < 0) {
                return Err(invalid(format!(
                    "invalid {what} value {v} for a replicated job: it must be 0 or more"
                )));
            }
        }
    }
    if crate::store::job_of(&spec).is_some() && spec.update_config.is_some() {
        // swarmkit's wording: a job is run again by each update, not
        // rolled out.
        return Err(invalid(
            "jobs may not have an update config: drop the --update-* flags".into(),
        ));
    }
    if let Some(r) = mode.replicated.as_ref().and_then(|r| r.replicas) {
        if r < 0 {
            return Err(invalid(format!(
                "invalid replicas value {r}: the number of replicas must be 0 or more"
            )));
        }
    }
    check_update_configs(&spec)?;
    check_health(&spec)?;
    let dnsrr = crate::store::attachments::dnsrr(&spec);
    let template = spec
        .task_template
        .as_mut()
        .ok_or_else(|| invalid("the service has no task template: give an image".into()))?;
    let container = template
        .container_spec
        .as_mut()
        .ok_or_else(|| invalid("ContainerSpec: image reference must be provided".into()))?;
    if container.image.as_deref().unwrap_or("").trim().is_empty() {
        return Err(invalid(
            "ContainerSpec: image reference must be provided".into(),
        ));
    }
    for s in container.secrets.iter_mut().flatten() {
        let key = s
            .secret_id
            .clone()
            .filter(|k| !k.is_empty())
            .or_else(|| s.secret_name.clone())
            .unwrap_or_default();
        let found = super::secrets::resolve_secret(state, &key).map_err(|_| {
            ControlError::NotFound(format!(
                "secret not found: {key}; create it first with \"apiary secret create {key} <file>\""
            ))
        })?;
        s.secret_id = Some(found.id.0.clone());
        s.secret_name = Some(found.spec.name.clone());
    }
    for c in container.configs.iter_mut().flatten() {
        let key = c
            .config_id
            .clone()
            .filter(|k| !k.is_empty())
            .or_else(|| c.config_name.clone())
            .unwrap_or_default();
        let found = super::secrets::resolve_config(state, &key).map_err(|_| {
            ControlError::NotFound(format!(
                "config not found: {key}; create it first with \"apiary config create {key} <file>\""
            ))
        })?;
        c.config_id = Some(found.id.0.clone());
        c.config_name = Some(found.spec.name.clone());
    }
    if let Some(res) = &template.resources {
        for (what, r) in [
            (
                "limit",
                &res.limits.as_ref().map(|l| (l.nano_cpus, l.memory_bytes)),
            ),
            (
                "reservation",
                &res.reservations
                    .as_ref()
                    .map(|l| (l.nano_cpus, l.memory_bytes)),
            ),
        ] {
            if let Some((cpu, mem)) = r {
                if cpu.is_some_and(|c| c < 0) || mem.is_some_and(|m| m < 0) {
                    return Err(invalid(format!(
                        "invalid resource {what}: CPU and memory must be positive"
                    )));
                }
            }
        }
    }
    for c in template
        .placement
        .as_ref()
        .and_then(|p| p.constraints.as_ref())
        .into_iter()
        .flatten()
    {
        Constraint::parse(c).map_err(invalid)?;
    }
    // Networks by ID, as Docker keeps them (a name given is resolved
    // now: a network renamed or recreated later is not silently joined).
    let mut joined: Vec<String> = Vec::new();
    #[allow(deprecated)]
    let top = spec.networks.take().unwrap_or_default();
    let mut networks = template.networks.take().unwrap_or_default();
    networks.extend(top);
    for n in &mut networks {
        let target = n.target.clone().unwrap_or_default();
        let network = super::networks::resolve_network(state, &target)?;
        if network.spec.ingress {
            return Err(invalid(format!(
                "Service cannot be explicitly attached to the ingress network \"{}\"",
                network.spec.name
            )));
        }
        if joined.contains(&network.id.0) {
            return Err(invalid(format!(
                "network {} is given twice: attach a service to each network once",
                network.spec.name
            )));
        }
        for alias in n.aliases.iter().flatten() {
            check_name(alias).map_err(|_| {
                invalid(format!(
                    "invalid alias {alias:?} on network {}: use letters, digits, '-', '_' or '.'",
                    network.spec.name
                ))
            })?;
        }
        joined.push(network.id.0.clone());
        n.target = Some(network.id.0.clone());
    }
    if !networks.is_empty() {
        template.networks = Some(networks);
    }
    let mut seen = Vec::new();
    for p in spec
        .endpoint_spec
        .as_ref()
        .and_then(|e| e.ports.as_ref())
        .into_iter()
        .flatten()
    {
        let mode = p
            .publish_mode
            .unwrap_or(EndpointPortConfigPublishModeEnum::INGRESS);
        let target = p.target_port.unwrap_or(0);
        if !(1..=65535).contains(&target) {
            return Err(invalid(format!(
                "invalid published port: target port {target} must be between 1 and 65535"
            )));
        }
        let published = p.published_port.unwrap_or(0);
        match mode {
            EndpointPortConfigPublishModeEnum::HOST => {
                if !(1..=65535).contains(&published) {
                    return Err(invalid(format!(
                        "port {target}: host-mode publishing needs a published port between 1 and 65535"
                    )));
                }
            }
            _ => {
                if dnsrr {
                    return Err(invalid(format!(
                        "port {target}: a port published in ingress mode can't be used with dnsrr mode: publish it with mode=host, or use --endpoint-mode vip"
                    )));
                }
                if !(0..=65535).contains(&published) {
                    return Err(invalid(format!(
                        "port {target}: the published port {published} must be between 1 and 65535 (or left out to get one from 30000-32767)"
                    )));
                }
                if published == 0 {
                    continue;
                }
            }
        }
        let proto = p
            .protocol
            .map(|x| x.to_string())
            .unwrap_or_else(|| "tcp".into());
        if seen.contains(&(proto.clone(), published)) {
            return Err(invalid(format!(
                "port {published}/{proto} is published twice"
            )));
        }
        seen.push((proto, published));
    }
    Ok(spec)
}

pub fn resolve_service<'a>(state: &'a State, key: &str) -> ControlResult<&'a Service> {
    let items = state
        .services
        .values()
        .map(|s| (s.id.0.as_str(), s.name(), s));
    resolve("service", key, items)
}

pub fn resolve_task<'a>(state: &'a State, key: &str) -> ControlResult<&'a Task> {
    let items = state.tasks.values().map(|t| (t.id.0.as_str(), "", t));
    resolve("task", key, items)
}

/// Tasks counted running (`TaskCounts`) on nodes that are Down or gone,
/// by service: those are not running as far as `service ls` is concerned.
/// Walks the tasks of such nodes only (few, usually none).
fn stranded(state: &State) -> HashMap<&ServiceId, u64> {
    let mut out = HashMap::new();
    for (node, ids) in &state.task_index.by_node {
        let up = state
            .nodes
            .get(node)
            .is_some_and(|n| n.status.state != NodeState::Down);
        if up {
            continue;
        }
        for t in ids.keys().filter_map(|id| state.tasks.get(id)) {
            if TaskCounts::of(t).running > 0 {
                *out.entry(&t.service_id).or_insert(0) += 1;
            }
        }
    }
    out
}

fn view_with(state: &State, s: &Service, stranded: &HashMap<&ServiceId, u64>) -> ServiceView {
    let c = state
        .task_index
        .counts
        .get(&s.id)
        .copied()
        .unwrap_or_default();
    ServiceView {
        service: s.clone(),
        running: c
            .running
            .saturating_sub(stranded.get(&s.id).copied().unwrap_or(0)),
        desired: match s.job() {
            // Swarm's: a replicated job wants MaxConcurrent at a time, a
            // global job the nodes that have not completed yet.
            Some(crate::store::Job::Replicated { max_concurrent, .. }) => max_concurrent,
            Some(crate::store::Job::Global) => c.live.saturating_sub(c.completed),
            None => s.replicas().unwrap_or(c.live),
        },
        completed: c.completed,
        vips: s
            .endpoint
            .vips
            .iter()
            .map(|v| (v.network.0.clone(), cidr(state, v)))
            .collect(),
    }
}

pub fn view(state: &State, s: &Service) -> ServiceView {
    view_with(state, s, &stranded(state))
}

/// Every service's view: O(services) from the counts the state keeps, so
/// that `service ls` (and every progress display polling it) does not walk
/// 100k tasks.
pub fn views(state: &State) -> Vec<ServiceView> {
    let stranded = stranded(state);
    state
        .services
        .values()
        .map(|s| view_with(state, s, &stranded))
        .collect()
}

/// An address with its network's prefix length, as Docker shows them.
fn cidr(state: &State, a: &crate::store::NetAddr) -> String {
    let prefix = state
        .networks
        .get(&a.network)
        .and_then(|n| n.pool.subnet.split_once('/').map(|(_, p)| p.to_string()))
        .unwrap_or_else(|| "32".into());
    format!("{}/{prefix}", a.addr)
}

pub fn task_view(state: &State, t: &Task) -> TaskView {
    TaskView {
        networks: t
            .networks
            .iter()
            .filter_map(|a| Some((state.networks.get(&a.network)?.clone(), cidr(state, a))))
            .collect(),
        task: t.clone(),
        service_name: state
            .services
            .get(&t.service_id)
            .map(|s| s.name().to_string())
            .unwrap_or_default(),
        job: state
            .services
            .get(&t.service_id)
            .is_some_and(|s| s.job().is_some()),
    }
}

pub fn filter_tasks(state: &State, f: &TaskFilter) -> ControlResult<Vec<TaskView>> {
    let services: Option<Vec<ServiceId>> = if f.service.is_empty() {
        None
    } else {
        let mut ids = Vec::new();
        for key in &f.service {
            // Docker answers an unknown service filter with an empty list.
            if let Ok(s) = resolve_service(state, key) {
                ids.push(s.id.clone());
            }
        }
        Some(ids)
    };
    let nodes: Option<Vec<crate::store::NodeId>> = if f.node.is_empty() {
        None
    } else {
        Some(
            f.node
                .iter()
                .filter_map(|key| {
                    state
                        .nodes
                        .values()
                        .find(|n| {
                            n.id.0 == *key || n.description.hostname == *key || n.spec.name == *key
                        })
                        .or_else(|| {
                            let mut m = state
                                .nodes
                                .values()
                                .filter(|n| n.id.0.starts_with(key.as_str()));
                            let first = m.next();
                            if m.next().is_some() {
                                None
                            } else {
                                first
                            }
                        })
                        .map(|n| n.id.clone())
                })
                .collect(),
        )
    };
    let tasks: Box<dyn Iterator<Item = &Task>> = match &services {
        Some(ids) => Box::new(ids.iter().flat_map(|id| state.tasks_of_service(id))),
        None => Box::new(state.tasks.values()),
    };
    let mut out = Vec::new();
    for t in tasks {
        if let Some(ns) = &nodes {
            if !t.node_id.as_ref().is_some_and(|n| ns.contains(n)) {
                continue;
            }
        }
        if !f.desired_state.is_empty() {
            let want = f.desired_state.iter().any(|d| {
                let d = d.to_ascii_lowercase();
                // Docker's "running" filter means desired running or
                // accepted (not yet running).
                match d.as_str() {
                    "running" => t.desired_state <= TaskState::Running,
                    "shutdown" => t.desired_state == TaskState::Shutdown,
                    "accepted" => t.desired_state == TaskState::Accepted,
                    other => TaskState::parse(other) == Some(t.desired_state),
                }
            });
            if !want {
                continue;
            }
        }
        if !f.id.is_empty() && !f.id.iter().any(|i| t.id.0.starts_with(i.as_str())) {
            continue;
        }
        let v = task_view(state, t);
        if !f.name.is_empty() {
            let name = t.name(&v.service_name);
            if !f.name.iter().any(|n| name.starts_with(n.as_str())) {
                continue;
            }
        }
        if f.up_to_date {
            let current = state
                .services
                .get(&t.service_id)
                .is_some_and(|s| s.spec_version == t.spec_version);
            if !current {
                continue;
            }
        }
        out.push(v);
    }
    Ok(out)
}
