//! The replicated state and its pure `apply`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::services::{TaskIndex, SERVICE_PREFIX, TASK_PREFIX};
use super::types::*;
use super::{Service, ServiceId, Task, TaskId};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreErrorKind {
    NotFound,
    /// Stale version or a name/ID conflict: Docker answers 409... or 500 for
    /// "update out of sequence"; the API layer decides.
    Conflict,
    /// The command breaks a cluster rule (e.g. removing the last manager).
    Invalid,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    pub kind: StoreErrorKind,
    pub message: String,
}

impl StoreError {
    pub fn not_found(message: impl Into<String>) -> Self {
        StoreError {
            kind: StoreErrorKind::NotFound,
            message: message.into(),
        }
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        StoreError {
            kind: StoreErrorKind::Conflict,
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        StoreError {
            kind: StoreErrorKind::Invalid,
            message: message.into(),
        }
    }
}

const CLUSTER_KEY: &str = "cluster/default";
const NODE_PREFIX: &str = "node/";
const REMOVED_PREFIX: &str = "removed/";
const SECRET_PREFIX: &str = "secret/";
const CONFIG_PREFIX: &str = "config/";
const NETWORK_PREFIX: &str = "network/";

/// All cluster objects, as every manager holds them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct State {
    pub cluster: Option<Cluster>,
    pub nodes: BTreeMap<NodeId, Node>,
    pub secrets: BTreeMap<SecretId, Secret>,
    pub configs: BTreeMap<ConfigId, Config>,
    pub networks: BTreeMap<super::NetworkId, super::Network>,
    /// Nodes removed from the swarm: their certificates stay valid for TLS
    /// until they expire, so managers refuse them by ID (revocation).
    pub removed: std::collections::BTreeSet<NodeId>,
    pub services: BTreeMap<ServiceId, Service>,
    pub tasks: BTreeMap<TaskId, Task>,
    /// Derived from `tasks`, never persisted.
    pub task_index: TaskIndex,
    /// Each node's TLS facts (issuer, trust bundle), kept beside the node
    /// record so that the node type stays as it was.
    pub node_tls: BTreeMap<NodeId, super::NodeTls>,
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing our own plain data types cannot fail (no maps with
    // non-string keys, no custom serializers).
    serde_json::to_vec(v).unwrap_or_default()
}

impl State {
    /// Every object as a persisted row (for snapshots).
    pub fn rows(&self) -> Vec<(String, Vec<u8>)> {
        let mut rows =
            Vec::with_capacity(self.nodes.len() + self.secrets.len() + self.configs.len() + 1);
        if let Some(c) = &self.cluster {
            rows.push((CLUSTER_KEY.to_string(), encode(c)));
        }
        for (id, n) in &self.nodes {
            rows.push((format!("{NODE_PREFIX}{id}"), encode(n)));
        }
        for (id, s) in &self.secrets {
            rows.push((format!("{SECRET_PREFIX}{id}"), encode(s)));
        }
        for (id, c) in &self.configs {
            rows.push((format!("{CONFIG_PREFIX}{id}"), encode(c)));
        }
        for id in &self.removed {
            rows.push((format!("{REMOVED_PREFIX}{id}"), encode(&true)));
        }
        for (id, n) in &self.networks {
            rows.push((format!("{NETWORK_PREFIX}{id}"), encode(n)));
        }
        for (id, s) in &self.services {
            rows.push((format!("{SERVICE_PREFIX}{id}"), encode(s)));
        }
        rows.extend(self.task_index.specs.rows());
        for (id, t) in &self.tasks {
            rows.push((
                format!("{TASK_PREFIX}{id}"),
                super::spec::encode_by_reference(t),
            ));
        }
        for (id, t) in &self.node_tls {
            rows.push((format!("{}{id}", super::ca::NODE_TLS_PREFIX), encode(t)));
        }
        rows
    }

    /// Rebuild from persisted rows. A row that does not decode is an error,
    /// never skipped: silently losing a node record would be worse than
    /// refusing to start.
    pub fn from_rows<I>(rows: I) -> Result<State, StoreError>
    where
        I: IntoIterator<Item = (String, Vec<u8>)>,
    {
        let mut state = State::default();
        // Tasks name their specs by key: read them once every spec is in.
        let mut specs = std::collections::HashMap::new();
        let mut tasks = Vec::new();
        for (key, value) in rows {
            let bad = |e: serde_json::Error| {
                StoreError::invalid(format!("stored object {key} does not decode: {e}"))
            };
            if key == CLUSTER_KEY {
                state.cluster = Some(serde_json::from_slice(&value).map_err(bad)?);
            } else if let Some(id) = key.strip_prefix(NODE_PREFIX) {
                let node: Node = serde_json::from_slice(&value).map_err(bad)?;
                state.nodes.insert(NodeId(id.to_string()), node);
            } else if let Some(id) = key.strip_prefix(SECRET_PREFIX) {
                let secret: Secret = serde_json::from_slice(&value).map_err(bad)?;
                state.secrets.insert(SecretId(id.to_string()), secret);
            } else if let Some(id) = key.strip_prefix(REMOVED_PREFIX) {
                state.removed.insert(NodeId(id.to_string()));
            } else if let Some(id) = key.strip_prefix(super::ca::NODE_TLS_PREFIX) {
                let tls: super::NodeTls = serde_json::from_slice(&value).map_err(bad)?;
                state.node_tls.insert(NodeId(id.to_string()), tls);
            } else if let Some(id) = key.strip_prefix(NETWORK_PREFIX) {
                let network: super::Network = serde_json::from_slice(&value).map_err(bad)?;
                state
                    .networks
                    .insert(super::NetworkId(id.to_string()), network);
            } else if let Some(id) = key.strip_prefix(CONFIG_PREFIX) {
                let config: Config = serde_json::from_slice(&value).map_err(bad)?;
                state.configs.insert(ConfigId(id.to_string()), config);
            } else if let Some(id) = key.strip_prefix(SERVICE_PREFIX) {
                let service: Service = serde_json::from_slice(&value).map_err(bad)?;
                state.services.insert(ServiceId(id.to_string()), service);
            } else if key.starts_with(TASK_PREFIX) {
                tasks.push((key, value));
            } else if let Some(k) = key.strip_prefix(super::spec::SPEC_PREFIX) {
                let spec = super::spec::spec_from_row(k, &value).map_err(bad)?;
                specs.insert(k.to_string(), spec);
            } else {
                return Err(StoreError::invalid(format!("unknown stored object {key}")));
            }
        }
        state.hold_static_addrs();
        let specs = std::sync::Arc::new(specs);
        for (key, value) in tasks {
            let task: Task = super::spec::decode_with_table(&value, &specs).map_err(|e| {
                StoreError::invalid(format!("stored object {key} does not decode: {e}"))
            })?;
            state.put_task(task);
        }
        Ok(state)
    }

    /// Names of the services whose task template references a secret
    /// (removal of a secret in use is refused with their names).
    pub fn services_using_secret(&self, id: &SecretId) -> Vec<String> {
        let name = self.secrets.get(id).map(|s| s.spec.name.as_str());
        self.services
            .values()
            .filter(|s| {
                s.secret_refs()
                    .any(|(rid, rname)| rid == id.0 || Some(rname) == name)
            })
            .map(|s| s.name().to_string())
            .collect()
    }

    /// Names of the services whose task template references a config.
    pub fn services_using_config(&self, id: &ConfigId) -> Vec<String> {
        let name = self.configs.get(id).map(|c| c.spec.name.as_str());
        self.services
            .values()
            .filter(|s| {
                s.config_refs()
                    .any(|(rid, rname)| rid == id.0 || Some(rname) == name)
            })
            .map(|s| s.name().to_string())
            .collect()
    }

    pub fn managers(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values().filter(|n| n.manager_status.is_some())
    }

    /// Apply one committed command at log `index`. Deterministic: the same
    /// state, index and command give the same result on every manager.
    ///
    /// Nothing is encoded here: the state is durable as its snapshot plus
    /// the committed log (`raft::storage`), so an apply only changes memory.
    /// (It used to also return each changed object as an encoded row, which
    /// nothing read any more: a JSON encoding of every touched task.)
    pub fn apply(&mut self, index: u64, cmd: &Command) -> Response {
        if let Command::Batch(cmds) = cmd {
            return Response {
                version: None,
                error: None,
                batch: cmds.iter().map(|c| self.apply(index, c)).collect(),
                index: None,
            };
        }
        let result = self.apply_inner(index, cmd);
        if result.is_ok() {
            self.hint(cmd);
        }
        match result {
            Ok(version) => Response {
                version,
                error: None,
                batch: Vec::new(),
                index: None,
            },
            Err(e) => Response {
                version: None,
                error: Some(e),
                batch: Vec::new(),
                index: None,
            },
        }
    }

    /// Service and task commands note precisely what they touched (see
    /// `store::hints`); everything else (nodes, the cluster, secrets,
    /// configs: rare writes) may concern any service and any node.
    fn hint(&self, cmd: &Command) {
        match cmd {
            Command::CreateService { .. }
            | Command::UpdateService { .. }
            | Command::SetUpdateStatus { .. }
            | Command::RollbackService { .. }
            | Command::RemoveService { .. }
            | Command::CreateTasks { .. }
            | Command::AssignTasks { .. }
            | Command::SetTaskStatus { .. }
            | Command::SetTasksDesired { .. }
            | Command::DeleteTasks { .. } => {}
            _ => {
                self.task_index.hints.everything();
                self.task_index.hints.all_nodes();
            }
        }
    }

    fn apply_inner(&mut self, index: u64, cmd: &Command) -> Result<Option<u64>, StoreError> {
        match cmd {
            // `apply` unpacks batches before they get here.
            Command::Batch(_) => Err(StoreError::invalid("a batch inside apply_inner")),
            Command::InitCluster { cluster, node } => {
                // Also used by --force-new-cluster: keeps everything else.
                let mut cluster = cluster.clone();
                cluster.version = index;
                self.cluster = Some(cluster);
                let mut node = node.clone();
                node.version = index;
                self.nodes.insert(node.id.clone(), node);
                Ok(Some(index))
            }
            Command::Restore {
                cluster,
                nodes,
                secrets,
                configs,
                removed,
                services,
                tasks,
                networks,
            } => {
                // Old versions belong to the old log; restamping every object
                // with this index keeps `?version=` checks meaningful.
                self.nodes.clear();
                let mut cluster = cluster.clone();
                cluster.version = index;
                self.cluster = Some(cluster);
                for n in nodes {
                    let mut n = n.clone();
                    n.version = index;
                    self.nodes.insert(n.id.clone(), n);
                }
                self.restore_secrets_and_configs(index, secrets, configs);
                self.networks.clear();
                for n in networks {
                    let mut n = n.clone();
                    n.version = index;
                    self.networks.insert(n.id.clone(), n);
                }
                for id in removed {
                    self.removed.insert(id.clone());
                }
                for s in services {
                    let mut s = s.clone();
                    s.version = index;
                    self.services.insert(s.id.clone(), s);
                }
                self.hold_static_addrs();
                for t in tasks {
                    let mut t = t.clone();
                    t.version = index;
                    self.put_task(t);
                }
                Ok(Some(index))
            }
            Command::CreateService { service } => self.create_service(index, service),
            Command::UpdateService {
                id,
                version,
                spec,
                registry_auth,
                now,
            } => self.update_service(index, id, *version, spec, registry_auth.as_ref(), now),
            Command::SetUpdateStatus {
                id,
                spec_version,
                status,
                now,
            } => self.set_update_status(index, id, *spec_version, status, now),
            Command::RollbackService {
                id,
                guard,
                message,
                now,
            } => self.rollback_service(index, id, guard, message, now),
            Command::RemoveService { id, now } => self.remove_service(index, id, now),
            Command::CreateTasks { tasks } => {
                self.create_tasks(index, tasks);
                Ok(None)
            }
            Command::AssignTasks { assignments, now } => {
                self.assign_tasks(index, assignments, now);
                Ok(None)
            }
            Command::SetTaskStatus { updates, reporter } => {
                self.set_task_status(index, updates, reporter.as_ref());
                Ok(None)
            }
            Command::SetTasksDesired { ids, desired, now } => {
                self.set_tasks_desired(index, ids, *desired, now);
                Ok(None)
            }
            Command::DeleteTasks { ids } => {
                self.delete_tasks(ids);
                Ok(None)
            }
            Command::AddNode { node } => {
                if self.nodes.contains_key(&node.id) {
                    return Err(StoreError::conflict(format!(
                        "node {} already exists",
                        node.id
                    )));
                }
                let mut node = node.clone();
                node.version = index;
                self.nodes.insert(node.id.clone(), node);
                self.allocate_node_addrs();
                Ok(Some(index))
            }
            Command::UpdateNodeSpec {
                id,
                version,
                spec,
                now,
            } => {
                let node = self
                    .nodes
                    .get(id)
                    .ok_or_else(|| StoreError::not_found(format!("node {id} not found")))?;
                if node.version != *version {
                    return Err(StoreError::conflict(format!(
                        "update out of sequence: node {id} is at version {}, the update was for version {version}; inspect the node again and retry",
                        node.version
                    )));
                }
                if node.spec.role == Role::Manager && spec.role == Role::Worker {
                    let managers = self
                        .nodes
                        .values()
                        .filter(|n| n.spec.role == Role::Manager)
                        .count();
                    if managers <= 1 {
                        return Err(StoreError::invalid(format!(
                            "node {id} is the last manager of the swarm; demoting it would leave the swarm without managers: promote another node first"
                        )));
                    }
                }
                let node = self
                    .nodes
                    .get_mut(id)
                    .ok_or_else(|| StoreError::not_found(format!("node {id} not found")))?;
                node.spec = spec.clone();
                node.version = index;
                node.updated_at = now.clone();
                Ok(Some(index))
            }
            Command::SetNodeStatus { updates, now } => {
                for u in updates {
                    // A node removed while its status was in flight: skip it.
                    let Some(node) = self.nodes.get_mut(&u.id) else {
                        continue;
                    };
                    if let Some(s) = u.state {
                        node.status.state = s;
                    }
                    if let Some(m) = &u.message {
                        node.status.message = m.clone();
                    }
                    if let Some(a) = &u.addr {
                        node.status.addr = a.clone();
                    }
                    if let (Some(r), Some(ms)) = (u.reachability, node.manager_status.as_mut()) {
                        ms.reachability = r;
                    }
                    if let Some(d) = &u.description {
                        node.description = d.clone();
                    }
                    node.version = index;
                    node.updated_at = now.clone();
                }
                Ok(Some(index))
            }
            Command::SetNodeRole {
                id,
                role,
                manager_status,
                cert_expiry,
                key_fingerprint,
                now,
            } => {
                let node = self
                    .nodes
                    .get_mut(id)
                    .ok_or_else(|| StoreError::not_found(format!("node {id} not found")))?;
                node.role = *role;
                node.manager_status = manager_status.clone();
                if let Some(e) = cert_expiry {
                    node.cert_expiry = e.clone();
                }
                if let Some(f) = key_fingerprint {
                    node.key_fingerprint = f.clone();
                }
                node.version = index;
                node.updated_at = now.clone();
                Ok(Some(index))
            }
            Command::RemoveNode { id } => {
                let node = self
                    .nodes
                    .get(id)
                    .ok_or_else(|| StoreError::not_found(format!("node {id} not found")))?;
                if node.manager_status.is_some() {
                    return Err(StoreError::invalid(format!(
                        "node {id} is a cluster manager and is a member of the raft cluster. It must be demoted to worker before removal"
                    )));
                }
                self.nodes.remove(id);
                self.release_node_addr(id);
                self.removed.insert(id.clone());
                self.node_tls.remove(id);
                Ok(None)
            }
            Command::UpdateCluster { version, spec, now } => {
                let cluster = self
                    .cluster
                    .as_mut()
                    .ok_or_else(|| StoreError::not_found("the swarm has no cluster object"))?;
                if cluster.version != *version {
                    return Err(StoreError::conflict(format!(
                        "update out of sequence: the swarm is at version {}, the update was for version {version}; inspect the swarm again and retry",
                        cluster.version
                    )));
                }
                cluster.spec = spec.clone();
                cluster.version = index;
                cluster.updated_at = now.clone();
                Ok(Some(index))
            }
            Command::RotateJoinSecrets {
                worker,
                manager,
                now,
            } => {
                let cluster = self
                    .cluster
                    .as_mut()
                    .ok_or_else(|| StoreError::not_found("the swarm has no cluster object"))?;
                if let Some(w) = worker {
                    cluster.join_secrets.worker = w.clone();
                }
                if let Some(m) = manager {
                    cluster.join_secrets.manager = m.clone();
                }
                cluster.version = index;
                cluster.updated_at = now.clone();
                Ok(Some(index))
            }
            Command::SetUnlockKey { key, now } => {
                let cluster = self
                    .cluster
                    .as_mut()
                    .ok_or_else(|| StoreError::not_found("the swarm has no cluster object"))?;
                cluster.unlock_key = key.clone();
                cluster.version = index;
                cluster.updated_at = now.clone();
                Ok(Some(index))
            }
            Command::SetRootCa { root_ca, now } => {
                let cluster = self
                    .cluster
                    .as_mut()
                    .ok_or_else(|| StoreError::not_found("the swarm has no cluster object"))?;
                cluster.root_ca = root_ca.clone();
                cluster.version = index;
                cluster.updated_at = now.clone();
                Ok(Some(index))
            }
            Command::CreateSecret { secret } => {
                if self.secrets.contains_key(&secret.id) {
                    return Err(StoreError::conflict(format!(
                        "secret {} already exists",
                        secret.id
                    )));
                }
                let name = &secret.spec.name;
                if self.secrets.values().any(|s| &s.spec.name == name) {
                    return Err(StoreError::conflict(format!(
                        "secret {name} already exists: choose another name, or remove the existing secret first"
                    )));
                }
                let mut secret = secret.clone();
                secret.version = index;
                self.secrets.insert(secret.id.clone(), secret);
                Ok(Some(index))
            }
            Command::UpdateSecret {
                id,
                version,
                labels,
                now,
            } => {
                let secret = self
                    .secrets
                    .get_mut(id)
                    .ok_or_else(|| StoreError::not_found(format!("secret {id} not found")))?;
                if secret.version != *version {
                    return Err(StoreError::conflict(format!(
                        "update out of sequence: secret {} is at version {}, the update was for version {version}; inspect the secret again and retry",
                        secret.spec.name, secret.version
                    )));
                }
                secret.spec.labels = labels.clone();
                secret.version = index;
                secret.updated_at = now.clone();
                Ok(Some(index))
            }
            Command::RemoveSecret { id } => {
                let secret = self
                    .secrets
                    .get(id)
                    .ok_or_else(|| StoreError::not_found(format!("secret {id} not found")))?;
                let users = self.services_using_secret(id);
                if !users.is_empty() {
                    return Err(StoreError::invalid(in_use_message(
                        "secret",
                        &secret.spec.name,
                        &users,
                    )));
                }
                self.secrets.remove(id);
                Ok(None)
            }
            Command::CreateConfig { config } => {
                if self.configs.contains_key(&config.id) {
                    return Err(StoreError::conflict(format!(
                        "config {} already exists",
                        config.id
                    )));
                }
                let name = &config.spec.name;
                if self.configs.values().any(|c| &c.spec.name == name) {
                    return Err(StoreError::conflict(format!(
                        "config {name} already exists: choose another name, or remove the existing config first"
                    )));
                }
                let mut config = config.clone();
                config.version = index;
                self.configs.insert(config.id.clone(), config);
                Ok(Some(index))
            }
            Command::UpdateConfig {
                id,
                version,
                labels,
                now,
            } => {
                let config = self
                    .configs
                    .get_mut(id)
                    .ok_or_else(|| StoreError::not_found(format!("config {id} not found")))?;
                if config.version != *version {
                    return Err(StoreError::conflict(format!(
                        "update out of sequence: config {} is at version {}, the update was for version {version}; inspect the config again and retry",
                        config.spec.name, config.version
                    )));
                }
                config.spec.labels = labels.clone();
                config.version = index;
                config.updated_at = now.clone();
                Ok(Some(index))
            }
            Command::CreateNetwork { network } => self.create_network(index, network),
            Command::RemoveNetwork { id } => self.remove_network(id),
            Command::RemoveConfig { id } => {
                let config = self
                    .configs
                    .get(id)
                    .ok_or_else(|| StoreError::not_found(format!("config {id} not found")))?;
                let users = self.services_using_config(id);
                if !users.is_empty() {
                    return Err(StoreError::invalid(in_use_message(
                        "config",
                        &config.spec.name,
                        &users,
                    )));
                }
                self.configs.remove(id);
                Ok(None)
            }
            Command::RotateRootCa {
                root_ca,
                from_root_cert,
                cross_signed,
                now,
            } => self.apply_rotate_root_ca(index, root_ca, from_root_cert, cross_signed, now),
            Command::CompleteCaRotation { root_cert, now } => {
                self.apply_complete_ca_rotation(index, root_cert, now)
            }
            Command::SetNodeTls { id, tls } => self.apply_set_node_tls(id, tls),
        }
    }

    /// The secrets and configs part of `Restore`: replace them all,
    /// restamped with `index` like the nodes.
    fn restore_secrets_and_configs(&mut self, index: u64, secrets: &[Secret], configs: &[Config]) {
        self.secrets.clear();
        self.configs.clear();
        for s in secrets {
            let mut s = s.clone();
            s.version = index;
            self.secrets.insert(s.id.clone(), s);
        }
        for c in configs {
            let mut c = c.clone();
            c.version = index;
            self.configs.insert(c.id.clone(), c);
        }
    }
}

/// Swarm's refusal to remove an object that services use, naming them.
fn in_use_message(kind: &str, name: &str, services: &[String]) -> String {
    let plural = if services.len() == 1 { "" } else { "s" };
    format!(
        "{kind} '{name}' is in use by the following service{plural}: {}; remove it from the service{plural} first",
        services.join(", ")
    )
}

#[cfg(test)]
mod tests;
