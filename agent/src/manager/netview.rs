//! What each node is told of the swarm networks (`network::view`): the
//! networks its wanted tasks join, and the ingress network while any
//! service publishes through the routing mesh (every node answers on the
//! published ports, with or without a task). Pure, over a state snapshot.
//!
//! A network's peers are the other nodes, not down, with a task on it
//! (all such nodes for ingress); a service's backends are its tasks that
//! run, are wanted, and whose node is not down — a node marked down stops
//! being sent to at once, as its tasks stop being backends in the same
//! commit.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use crate::network::view::{MeshPort, NetworkView, ServiceEntry};
use crate::network::Protocol;
use crate::store::{NetworkId, NodeId, NodeState, State, TaskState};

/// Docker's MTU option for a network.
const MTU_OPTION: &str = "com.docker.network.driver.mtu";

fn node_up(state: &State, id: &NodeId) -> bool {
    state
        .nodes
        .get(id)
        .is_some_and(|n| n.status.state != NodeState::Down)
}

fn underlay(state: &State, id: &NodeId) -> Option<Ipv4Addr> {
    state.nodes.get(id)?.status.addr.parse().ok()
}

/// Does any service publish through the mesh? Cheap: no spec is walked.
fn mesh_in_use(state: &State) -> bool {
    state.services.values().any(|s| {
        s.endpoint.ports.iter().any(|p| {
            p.publish_mode != Some(bollard_stubs::models::EndpointPortConfigPublishModeEnum::HOST)
        })
    })
}

/// The views for `node`, by network ID order. Empty (and cheap) when no
/// network is in use.
pub fn views(state: &State, node: &NodeId) -> Vec<NetworkView> {
    let mesh = mesh_in_use(state);
    if state.task_index.addrs.tasks() == 0 && !mesh {
        return Vec::new();
    }
    let mut wanted: BTreeSet<NetworkId> = BTreeSet::new();
    for t in state.tasks_of_node(node) {
        if t.desired_state <= TaskState::Running && !t.status.state.is_terminal() {
            wanted.extend(t.networks.iter().map(|a| a.network.clone()));
        }
    }
    let ingress = state.ingress_network();
    if let Some(i) = ingress.filter(|_| mesh) {
        wanted.insert(i.id.clone());
    }
    if wanted.is_empty() {
        return Vec::new();
    }
    // Per network: nodes with live tasks on it, and each service's backends.
    let mut on: BTreeMap<&NetworkId, BTreeSet<&NodeId>> = BTreeMap::new();
    let mut backends: BTreeMap<(&NetworkId, &str), Vec<Ipv4Addr>> = BTreeMap::new();
    for t in state.tasks.values().filter(|t| !t.networks.is_empty()) {
        let live = t.desired_state <= TaskState::Running && !t.status.state.is_terminal();
        let Some(n) = t.node_id.as_ref().filter(|n| live && node_up(state, n)) else {
            continue;
        };
        for a in t.networks.iter().filter(|a| wanted.contains(&a.network)) {
            on.entry(&a.network).or_default().insert(n);
            if t.status.state == TaskState::Running {
                backends
                    .entry((&a.network, t.service_id.0.as_str()))
                    .or_default()
                    .push(a.addr);
            }
        }
    }
    let mut out = Vec::new();
    for id in &wanted {
        let Some(n) = state.networks.get(id) else {
            continue;
        };
        let peers: BTreeSet<Ipv4Addr> = if n.spec.ingress {
            state
                .nodes
                .keys()
                .filter(|p| *p != node && node_up(state, p))
                .filter_map(|p| underlay(state, p))
                .collect()
        } else {
            on.get(id)
                .into_iter()
                .flatten()
                .filter(|p| **p != node)
                .filter_map(|p| underlay(state, p))
                .collect()
        };
        let mut services = Vec::new();
        for s in state.services.values() {
            let vip = s
                .endpoint
                .vips
                .iter()
                .find(|v| &v.network == id)
                .map(|v| v.addr);
            let member = vip.is_some() || state.service_networks(&s.spec).contains(id);
            if !member {
                continue;
            }
            let aliases = s
                .spec
                .task_template
                .as_ref()
                .and_then(|t| t.networks.as_ref())
                .into_iter()
                .flatten()
                .filter(|a| a.target.as_deref() == Some(id.0.as_str()))
                .flat_map(|a| a.aliases.clone().unwrap_or_default())
                .collect();
            let ports = if n.spec.ingress {
                s.endpoint
                    .ports
                    .iter()
                    .filter(|p| {
                        p.publish_mode
                            != Some(bollard_stubs::models::EndpointPortConfigPublishModeEnum::HOST)
                    })
                    .filter_map(|p| {
                        Some(MeshPort {
                            protocol: Protocol::parse(
                                &p.protocol.map(|x| x.to_string()).unwrap_or_default(),
                            )
                            .ok()?,
                            published: u16::try_from(p.published_port?).ok()?,
                            target: u16::try_from(p.target_port?).ok()?,
                        })
                    })
                    .collect()
            } else {
                Vec::new()
            };
            let mut b = backends
                .get(&(id, s.id.0.as_str()))
                .cloned()
                .unwrap_or_default();
            b.sort();
            services.push(ServiceEntry {
                id: s.id.0.clone(),
                name: s.name().to_string(),
                aliases,
                vip,
                backends: b,
                ports,
            });
        }
        out.push(NetworkView {
            id: id.0.clone(),
            name: n.spec.name.clone(),
            vni: n.vni,
            subnet: n.pool.subnet.clone(),
            ingress: n.spec.ingress,
            encrypted: n.encrypted(),
            internal: n.spec.internal,
            mtu: n.spec.options.get(MTU_OPTION).and_then(|m| m.parse().ok()),
            node_addr: n.node_addrs.get(node).copied(),
            peers: peers.into_iter().collect(),
            services,
            key: n.key.clone(),
        });
    }
    out
}

#[cfg(test)]
mod tests;
