//! Addresses on swarm networks, allocated inside `apply` as subnets are
//! (swarmkit's allocator is the model): a service's virtual IP on each of
//! its networks, a task's address on each, each node's address on the
//! ingress network (where the routing mesh sends from), and the ports a
//! service publishes through the mesh. Every manager holds the same state,
//! so the same address comes out everywhere and two writes can never be
//! given the same one.
//!
//! Which addresses are held is derived (`AddrIndex`, never persisted): the
//! objects carry their addresses, and the index is rebuilt from them when
//! a state is loaded. A task holds its addresses until it ends; its record
//! keeps them for `inspect`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use bollard_stubs::models::{
    EndpointPortConfig, EndpointPortConfigProtocolEnum, EndpointPortConfigPublishModeEnum,
    EndpointSpecModeEnum, ServiceSpec,
};
use serde::{Deserialize, Serialize};

use super::networks::{parse_subnet, Network, NetworkId};
use super::state::{State, StoreError};
use super::types::NodeId;
use super::{ServiceId, Task};

/// Docker's range for ingress ports a service does not choose.
pub const DYNAMIC_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;

/// An address on a network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetAddr {
    pub network: NetworkId,
    pub addr: Ipv4Addr,
}

/// A service's endpoint as allocated: its ports as published (ingress
/// ports with their published port chosen) and its virtual IPs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Endpoint {
    #[serde(default)]
    pub ports: Vec<EndpointPortConfig>,
    #[serde(default)]
    pub vips: Vec<NetAddr>,
}

/// The addresses held on each network (derived).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AddrIndex {
    held: BTreeMap<NetworkId, BTreeSet<u32>>,
    /// Tasks holding addresses: none, and the nodes' network views are
    /// empty without a walk over their tasks.
    tasks: u64,
}

impl AddrIndex {
    /// A task's addresses, held while it has not ended.
    pub fn hold_task(&mut self, addrs: &[NetAddr]) {
        if !addrs.is_empty() {
            self.tasks += 1;
            for a in addrs {
                self.hold(a);
            }
        }
    }

    pub fn release_task(&mut self, addrs: &[NetAddr]) {
        if !addrs.is_empty() {
            self.tasks = self.tasks.saturating_sub(1);
            for a in addrs {
                self.release(a);
            }
        }
    }

    /// How many tasks hold addresses.
    pub fn tasks(&self) -> u64 {
        self.tasks
    }

    pub fn hold(&mut self, a: &NetAddr) {
        match self.held.get_mut(&a.network) {
            Some(s) => {
                s.insert(u32::from(a.addr));
            }
            None => {
                self.held
                    .entry(a.network.clone())
                    .or_default()
                    .insert(u32::from(a.addr));
            }
        }
    }

    pub fn release(&mut self, a: &NetAddr) {
        if let Some(s) = self.held.get_mut(&a.network) {
            s.remove(&u32::from(a.addr));
            if s.is_empty() {
                self.held.remove(&a.network);
            }
        }
    }

    pub fn is_held(&self, a: &NetAddr) -> bool {
        self.held
            .get(&a.network)
            .is_some_and(|s| s.contains(&u32::from(a.addr)))
    }

    /// How many addresses of the network are held.
    pub fn count(&self, network: &NetworkId) -> usize {
        self.held.get(network).map_or(0, BTreeSet::len)
    }

    /// The lowest free address of the network's range (its `--ip-range`
    /// if it has one, else its subnet), past the gateway; held at once.
    pub fn allocate(&mut self, n: &Network) -> Result<NetAddr, StoreError> {
        let exhausted = || {
            StoreError::invalid(format!(
                "network {} has no free address left in {}: remove tasks or services from it, or use a network with a larger --subnet",
                n.spec.name, n.pool.subnet
            ))
        };
        let subnet = parse_subnet(&n.pool.subnet).map_err(|_| exhausted())?;
        let range = if n.pool.ip_range.is_empty() {
            subnet
        } else {
            parse_subnet(&n.pool.ip_range).map_err(|_| exhausted())?
        };
        let gateway = n.pool.gateway.parse::<Ipv4Addr>().ok().map(u32::from);
        let base = u32::from(range.base);
        let last = base | !range.mask();
        let subnet_last = u32::from(subnet.base) | !subnet.mask();
        let held = self.held.get(&n.id);
        let free = (base..=last).find(|a| {
            *a != u32::from(subnet.base)
                && *a != subnet_last
                && Some(*a) != gateway
                && !held.is_some_and(|h| h.contains(a))
        });
        let addr = NetAddr {
            network: n.id.clone(),
            addr: Ipv4Addr::from(free.ok_or_else(exhausted)?),
        };
        self.hold(&addr);
        Ok(addr)
    }
}

/// Does the task hold its addresses? Until it ends.
pub fn holds(t: &Task) -> bool {
    !t.status.state.is_terminal()
}

fn ingress_mode(p: &EndpointPortConfig) -> bool {
    p.publish_mode
        .unwrap_or(EndpointPortConfigPublishModeEnum::INGRESS)
        == EndpointPortConfigPublishModeEnum::INGRESS
}

fn protocol(p: &EndpointPortConfig) -> EndpointPortConfigProtocolEnum {
    match p.protocol {
        Some(EndpointPortConfigProtocolEnum::EMPTY) | None => EndpointPortConfigProtocolEnum::TCP,
        Some(x) => x,
    }
}

/// Is the service's endpoint DNS round robin (no virtual IP)?
pub fn dnsrr(spec: &ServiceSpec) -> bool {
    spec.endpoint_spec
        .as_ref()
        .and_then(|e| e.mode)
        .is_some_and(|m| m == EndpointSpecModeEnum::DNSRR)
}

impl State {
    /// The ingress network, if the swarm has one.
    pub fn ingress_network(&self) -> Option<&Network> {
        self.networks.values().find(|n| n.spec.ingress)
    }

    /// The networks a service's tasks join, by ID: the ones its spec names
    /// (by ID or name), then ingress when it publishes a port there.
    pub fn service_networks(&self, spec: &ServiceSpec) -> Vec<NetworkId> {
        let mut out: Vec<NetworkId> = Vec::new();
        for target in super::services::spec_network_refs(spec) {
            let found = self
                .networks
                .values()
                .find(|n| n.id.0 == target || n.spec.name == target);
            if let Some(n) = found {
                if !out.contains(&n.id) {
                    out.push(n.id.clone());
                }
            }
        }
        if super::services::spec_publishes_ingress(spec) {
            if let Some(n) = self.ingress_network() {
                if !out.contains(&n.id) {
                    out.push(n.id.clone());
                }
            }
        }
        out
    }

    /// The ingress ports other services publish: (protocol, port) →
    /// service name.
    fn ingress_ports_taken(
        &self,
        except: &ServiceId,
    ) -> BTreeMap<(EndpointPortConfigProtocolEnum, i64), String> {
        let mut out = BTreeMap::new();
        for s in self.services.values().filter(|s| &s.id != except) {
            for p in s.endpoint.ports.iter().filter(|p| ingress_mode(p)) {
                if let Some(port) = p.published_port {
                    out.insert((protocol(p), port), format!("{} ({})", s.name(), s.id));
                }
            }
        }
        out
    }

    /// Allocate a service's endpoint for `spec`, keeping what `old` has
    /// that still applies (its virtual IPs, its chosen ingress ports).
    /// Nothing is held unless it all succeeds.
    pub(super) fn allocate_endpoint(
        &mut self,
        id: &ServiceId,
        spec: &ServiceSpec,
        old: &Endpoint,
    ) -> Result<Endpoint, StoreError> {
        let taken = self.ingress_ports_taken(id);
        let mut ports = Vec::new();
        let mut mine: BTreeSet<(EndpointPortConfigProtocolEnum, i64)> = BTreeSet::new();
        let asked: Vec<EndpointPortConfig> = spec
            .endpoint_spec
            .as_ref()
            .and_then(|e| e.ports.clone())
            .unwrap_or_default();
        // Ports given first, so that a dynamic one never takes one the
        // same spec asks for.
        for p in asked.iter().filter(|p| ingress_mode(p)) {
            if let Some(port) = p.published_port.filter(|p| *p > 0) {
                if let Some(other) = taken.get(&(protocol(p), port)) {
                    return Err(StoreError::invalid(format!(
                        "port '{port}' is already in use by service {other} as an ingress port: choose another published port"
                    )));
                }
                mine.insert((protocol(p), port));
            }
        }
        for p in &asked {
            let mut p = p.clone();
            if ingress_mode(&p) {
                p.publish_mode = Some(EndpointPortConfigPublishModeEnum::INGRESS);
                p.protocol = Some(protocol(&p));
                if p.published_port.unwrap_or(0) <= 0 {
                    // The port the old endpoint chose for this target.
                    let kept = old.ports.iter().find(|o| {
                        ingress_mode(o)
                            && protocol(o) == protocol(&p)
                            && o.target_port == p.target_port
                            && o.published_port.is_some_and(|x| {
                                !mine.contains(&(protocol(&p), x))
                                    && !taken.contains_key(&(protocol(&p), x))
                            })
                    });
                    let port = match kept.and_then(|o| o.published_port) {
                        Some(x) => x,
                        None => DYNAMIC_PORTS
                            .map(i64::from)
                            .find(|x| {
                                !mine.contains(&(protocol(&p), *x))
                                    && !taken.contains_key(&(protocol(&p), *x))
                            })
                            .ok_or_else(|| {
                                StoreError::invalid(
                                    "no free ingress port left in 30000-32767: give a published port",
                                )
                            })?,
                    };
                    mine.insert((protocol(&p), port));
                    p.published_port = Some(port);
                }
            }
            ports.push(p);
        }
        let mut vips = Vec::new();
        if !dnsrr(spec) {
            for net in self.service_networks(spec) {
                if let Some(v) = old.vips.iter().find(|v| v.network == net) {
                    vips.push(v.clone());
                    continue;
                }
                let Some(n) = self.networks.get(&net) else {
                    continue;
                };
                match self.task_index.addrs.allocate(n) {
                    Ok(a) => vips.push(a),
                    Err(e) => {
                        for v in vips.iter().filter(|v| !old.vips.contains(v)) {
                            self.task_index.addrs.release(v);
                        }
                        return Err(e);
                    }
                }
            }
        }
        for v in old.vips.iter().filter(|v| !vips.contains(v)) {
            self.task_index.addrs.release(v);
        }
        Ok(Endpoint { ports, vips })
    }

    /// A new task's addresses, one on each of its service's networks; the
    /// error names the network with none left (nothing stays held).
    pub(super) fn allocate_task_addrs(
        &mut self,
        spec: &ServiceSpec,
    ) -> Result<Vec<NetAddr>, StoreError> {
        let mut out = Vec::new();
        for net in self.service_networks(spec) {
            let Some(n) = self.networks.get(&net) else {
                continue;
            };
            match self.task_index.addrs.allocate(n) {
                Ok(a) => out.push(a),
                Err(e) => {
                    for a in &out {
                        self.task_index.addrs.release(a);
                    }
                    return Err(e);
                }
            }
        }
        Ok(out)
    }

    /// Give every node without one an address on the ingress network.
    /// Nodes that do not fit are left without (the mesh does not answer
    /// on them; their log says why).
    pub(super) fn allocate_node_addrs(&mut self) {
        let Some(ingress) = self.ingress_network().cloned() else {
            return;
        };
        let nodes: Vec<NodeId> = self
            .nodes
            .keys()
            .filter(|id| !ingress.node_addrs.contains_key(*id))
            .cloned()
            .collect();
        let mut given = BTreeMap::new();
        for id in nodes {
            match self.task_index.addrs.allocate(&ingress) {
                Ok(a) => {
                    given.insert(id, a.addr);
                }
                Err(_) => break,
            }
        }
        if let Some(n) = self.networks.get_mut(&ingress.id) {
            n.node_addrs.extend(given);
        }
    }

    /// A removed node's ingress address goes back.
    pub(super) fn release_node_addr(&mut self, node: &NodeId) {
        let Some(id) = self.ingress_network().map(|n| n.id.clone()) else {
            return;
        };
        if let Some(n) = self.networks.get_mut(&id) {
            if let Some(addr) = n.node_addrs.remove(node) {
                self.task_index.addrs.release(&NetAddr {
                    network: id.clone(),
                    addr,
                });
            }
        }
    }

    /// Hold what services and networks carry (a state just loaded; tasks
    /// hold theirs as they are put).
    pub(super) fn hold_static_addrs(&mut self) {
        let mut all = Vec::new();
        for s in self.services.values() {
            all.extend(s.endpoint.vips.iter().cloned());
        }
        for n in self.networks.values() {
            for addr in n.node_addrs.values() {
                all.push(NetAddr {
                    network: n.id.clone(),
                    addr: *addr,
                });
            }
        }
        for a in &all {
            self.task_index.addrs.hold(a);
        }
    }
}

#[cfg(test)]
mod tests;
