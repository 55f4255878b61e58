//! Swarm networks (overlay, scope swarm) as raft keeps them, and the pure
//! allocation of their subnets and VXLAN IDs (swarmkit's allocator is the
//! model: the manager hands out address space, nodes only program it).
//!
//! Allocation happens inside `apply`: every manager holds the same state,
//! so the same free subnet comes out everywhere, and two concurrent
//! creates can never be given the same one (a proposer choosing before the
//! commit could race). The proposer checks the same rules first, so that a
//! user gets a clear error without a raft write.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::state::{State, StoreError};
use crate::network::ipam::Subnet;

/// The address pool when `swarm init` names none (Docker's).
pub const DEFAULT_ADDR_POOL: &str = "10.0.0.0/8";
/// Each network's share of the pool when `swarm init` names none.
pub const DEFAULT_SUBNET_SIZE: u8 = 24;
/// The VXLAN UDP port (IANA's, Docker's default).
pub const DEFAULT_DATA_PATH_PORT: u16 = 4789;
/// VXLAN network IDs start past the 802.1Q VLAN range, as Docker's do.
pub const FIRST_VNI: u32 = 4096;
const MAX_VNI: u32 = (1 << 24) - 1;

/// The name of the routing mesh's network, made by `swarm init`.
pub const INGRESS: &str = "ingress";

/// A network's ID: 25 lowercase base-36 characters, like a node's.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NetworkId(pub String);

impl fmt::Display for NetworkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One IPAM pool: as asked for (empty fields: choose), or as allocated.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamPool {
    #[serde(default)]
    pub subnet: String,
    #[serde(default)]
    pub gateway: String,
    #[serde(default)]
    pub ip_range: String,
}

/// What the user gives for a network (`network create`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// "overlay": the only driver of swarm scope.
    pub driver: String,
    /// Driver options as given (`--opt encrypted`, `--opt com.docker.network.driver.mtu=1400`).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// At most one IPv4 pool; empty: one is allocated from the swarm's pool.
    #[serde(default)]
    pub ipam: Vec<IpamPool>,
    #[serde(default)]
    pub attachable: bool,
    #[serde(default)]
    pub internal: bool,
    /// The routing mesh's network (one per swarm).
    #[serde(default)]
    pub ingress: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub id: NetworkId,
    pub version: u64,
    pub created_at: String,
    pub updated_at: String,
    pub spec: NetworkSpec,
    /// The pool in use: the spec's, or the one allocated. Empty until the
    /// create is applied.
    #[serde(default)]
    pub pool: IpamPool,
    /// The VXLAN network ID.
    #[serde(default)]
    pub vni: u32,
    /// The ingress network: each node's address on it, which the routing
    /// mesh sends from (Docker's ingress-sbox address). Allocated by
    /// `apply` as nodes join.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_addrs: BTreeMap<super::NodeId, Ipv4Addr>,
    /// `--opt encrypted`: the network's traffic key (base64, 32 bytes),
    /// drawn by the proposer; sent only to the nodes on the network, over
    /// their mutual-TLS sessions; never shown by the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<crate::network::view::TrafficKey>,
}

impl Network {
    pub fn encrypted(&self) -> bool {
        self.spec.options.contains_key("encrypted")
    }
}

/// The swarm's address pool settings (`swarm init --default-addr-pool …`),
/// fixed at init as in Docker.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddrPool {
    /// CIDRs; empty: `DEFAULT_ADDR_POOL`.
    #[serde(default)]
    pub pools: Vec<String>,
    /// 0: `DEFAULT_SUBNET_SIZE`.
    #[serde(default)]
    pub subnet_size: u8,
    /// 0: `DEFAULT_DATA_PATH_PORT`.
    #[serde(default)]
    pub data_path_port: u16,
}

impl AddrPool {
    pub fn effective_pools(&self) -> Vec<String> {
        if self.pools.is_empty() {
            vec![DEFAULT_ADDR_POOL.to_string()]
        } else {
            self.pools.clone()
        }
    }
    pub fn effective_subnet_size(&self) -> u8 {
        if self.subnet_size == 0 {
            DEFAULT_SUBNET_SIZE
        } else {
            self.subnet_size
        }
    }
    pub fn effective_data_path_port(&self) -> u16 {
        if self.data_path_port == 0 {
            DEFAULT_DATA_PATH_PORT
        } else {
            self.data_path_port
        }
    }

    /// Check what `swarm init` was given, with Docker's limits.
    pub fn validate(&self) -> Result<(), String> {
        if self.subnet_size != 0 && !(8..=29).contains(&self.subnet_size) {
            return Err(format!(
                "--default-addr-pool-mask-length {}: use a value from 8 to 29",
                self.subnet_size
            ));
        }
        for p in &self.effective_pools() {
            let s = parse_subnet(p).map_err(|e| format!("--default-addr-pool: {e}"))?;
            if self.effective_subnet_size() < s.prefix {
                return Err(format!(
                    "--default-addr-pool-mask-length {} is larger than the pool {p}: use a mask length of at least {}",
                    self.effective_subnet_size(),
                    s.prefix
                ));
            }
        }
        for (i, a) in self.pools.iter().enumerate() {
            for b in &self.pools[i + 1..] {
                if overlaps(&parse_subnet(a)?, &parse_subnet(b)?) {
                    return Err(format!("--default-addr-pool {a} overlaps {b}"));
                }
            }
        }
        let port = self.data_path_port;
        if port != 0 && !(1024..=49151).contains(&port) {
            return Err(format!(
                "--data-path-port {port}: use a port from 1024 to 49151"
            ));
        }
        Ok(())
    }
}

pub fn parse_subnet(s: &str) -> Result<Subnet, String> {
    Subnet::parse(s).map_err(|e| e.to_string())
}

fn last(s: &Subnet) -> u32 {
    u32::from(s.base) | !s.mask()
}

pub fn overlaps(a: &Subnet, b: &Subnet) -> bool {
    u32::from(a.base) <= last(b) && u32::from(b.base) <= last(a)
}

/// Docker's rule for names of swarm objects: letters and digits, with
/// single runs of `-` or `_` between them, at most 63.
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_'))
}

/// The subnets networks hold now.
fn taken(state: &State) -> Vec<(Subnet, String)> {
    state
        .networks
        .values()
        .filter_map(|n| Some((parse_subnet(&n.pool.subnet).ok()?, n.spec.name.clone())))
        .collect()
}

/// The first `size`-bit subnet of `pools` that no network holds.
pub fn free_subnet(pools: &[String], size: u8, taken: &[Subnet]) -> Result<Subnet, String> {
    for p in pools {
        let pool = parse_subnet(p)?;
        if size < pool.prefix {
            continue;
        }
        let step = 1u64 << (32 - u32::from(size));
        let mut at = u64::from(u32::from(pool.base));
        let end = u64::from(last(&pool));
        while at + step - 1 <= end {
            let cand = Subnet {
                base: Ipv4Addr::from(at as u32),
                prefix: size,
            };
            match taken.iter().filter(|t| overlaps(t, &cand)).map(last).max() {
                // Jump past the network in the way (it may be larger).
                Some(past) => {
                    let next = u64::from(past) + 1;
                    at = next.div_ceil(step) * step;
                }
                None => return Ok(cand),
            }
        }
    }
    Err(format!(
        "the swarm's address pool ({}) has no free /{size} left: remove unused networks (network prune), or give --subnet",
        pools.join(", ")
    ))
}

/// The pool a network gets: the one asked for, checked, or a free one.
pub fn allocate_pool(state: &State, spec: &NetworkSpec) -> Result<IpamPool, String> {
    let taken = taken(state);
    let asked = spec.ipam.first().cloned().unwrap_or_default();
    let subnet = if asked.subnet.is_empty() {
        if !asked.gateway.is_empty() || !asked.ip_range.is_empty() {
            return Err("--gateway and --ip-range need --subnet".into());
        }
        let addr = state
            .cluster
            .as_ref()
            .map(|c| c.addr_pool.clone())
            .unwrap_or_default();
        let list: Vec<Subnet> = taken.iter().map(|(s, _)| *s).collect();
        free_subnet(&addr.effective_pools(), addr.effective_subnet_size(), &list)?
    } else {
        let s = parse_subnet(&asked.subnet).map_err(|e| format!("--subnet: {e}"))?;
        if let Some((_, other)) = taken.iter().find(|(t, _)| overlaps(t, &s)) {
            return Err(format!(
                "subnet {s} overlaps network {other}'s: choose another --subnet"
            ));
        }
        s
    };
    let gateway = if asked.gateway.is_empty() {
        subnet.gateway()
    } else {
        let g: Ipv4Addr = asked
            .gateway
            .parse()
            .map_err(|_| format!("--gateway {:?} is not an IPv4 address", asked.gateway))?;
        let broadcast = Ipv4Addr::from(last(&subnet));
        if !subnet.contains(g) || g == subnet.base || g == broadcast {
            return Err(format!("--gateway {g} is not a host address of {subnet}"));
        }
        g
    };
    let ip_range = if asked.ip_range.is_empty() {
        String::new()
    } else {
        let r = parse_subnet(&asked.ip_range).map_err(|e| format!("--ip-range: {e}"))?;
        if r.prefix < subnet.prefix || !subnet.contains(r.base) {
            return Err(format!("--ip-range {r} is not inside {subnet}"));
        }
        r.to_string()
    };
    Ok(IpamPool {
        subnet: subnet.to_string(),
        gateway: gateway.to_string(),
        ip_range,
    })
}

/// The smallest VXLAN ID no network holds.
pub fn free_vni(state: &State) -> Result<u32, String> {
    let held: std::collections::BTreeSet<u32> = state.networks.values().map(|n| n.vni).collect();
    (FIRST_VNI..=MAX_VNI)
        .find(|v| !held.contains(v))
        .ok_or_else(|| "no VXLAN network ID left".to_string())
}

/// Everything `network create` refuses before anything is written.
pub fn check_create(state: &State, spec: &NetworkSpec) -> Result<IpamPool, StoreError> {
    if !valid_name(&spec.name) {
        return Err(StoreError::invalid(format!(
            "invalid network name {:?}: use letters and digits, with '-' or '_' between them, at most 63 characters",
            spec.name
        )));
    }
    if spec.driver != "overlay" {
        return Err(StoreError::invalid(format!(
            "network driver {:?} is not available in a swarm: use -d overlay",
            spec.driver
        )));
    }
    if state.networks.values().any(|n| n.spec.name == spec.name) {
        return Err(StoreError::conflict(format!(
            "network with name {} already exists",
            spec.name
        )));
    }
    if spec.ingress {
        if spec.attachable {
            return Err(StoreError::invalid("ingress network cannot be attachable"));
        }
        if let Some(n) = state.networks.values().find(|n| n.spec.ingress) {
            return Err(StoreError::conflict(format!(
                "a network with the ingress role already exists: {}",
                n.spec.name
            )));
        }
    }
    if spec.ipam.len() > 1 {
        return Err(StoreError::invalid(
            "give at most one --subnet: an overlay network has one IPv4 pool",
        ));
    }
    allocate_pool(state, spec).map_err(StoreError::invalid)
}

impl State {
    pub(super) fn create_network(
        &mut self,
        index: u64,
        network: &Network,
    ) -> Result<Option<u64>, StoreError> {
        if self.networks.contains_key(&network.id) {
            return Err(StoreError::conflict(format!(
                "network {} already exists",
                network.id
            )));
        }
        let pool = check_create(self, &network.spec)?;
        let vni = free_vni(self).map_err(StoreError::invalid)?;
        let mut n = network.clone();
        n.version = index;
        n.pool = pool;
        n.vni = vni;
        n.node_addrs.clear();
        let ingress = n.spec.ingress;
        self.networks.insert(n.id.clone(), n);
        if ingress {
            self.allocate_node_addrs();
        }
        Ok(Some(index))
    }

    pub(super) fn remove_network(&mut self, id: &NetworkId) -> Result<Option<u64>, StoreError> {
        let n = self
            .networks
            .get(id)
            .ok_or_else(|| StoreError::not_found(format!("network {id} not found")))?;
        if let Some(svc) = self.services_using_network(id).first() {
            let why = if n.spec.ingress {
                format!("ingress network cannot be removed because service {svc} depends on it")
            } else {
                format!("network {} is in use by service {svc}", n.spec.name)
            };
            return Err(StoreError::invalid(why));
        }
        self.networks.remove(id);
        Ok(None)
    }

    /// Names of the services attached to a network (by ID or name), and of
    /// those publishing ports in ingress mode for the ingress network.
    pub fn services_using_network(&self, id: &NetworkId) -> Vec<String> {
        let Some(n) = self.networks.get(id) else {
            return Vec::new();
        };
        self.services
            .values()
            .filter(|s| {
                s.network_refs().any(|t| t == id.0 || t == n.spec.name)
                    || (n.spec.ingress && s.publishes_ingress())
            })
            .map(|s| s.name().to_string())
            .collect()
    }
}

#[cfg(test)]
mod tests;
