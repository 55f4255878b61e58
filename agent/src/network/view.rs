//! What a node is told of the swarm networks its tasks use (and of the
//! ingress network, which every node serves): made by the managers from
//! the store (`manager::netview`), sent with the node's assignments, and
//! programmed by the worker's network (`overlay`). Plain data.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::Protocol;

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NetworkView {
    pub id: String,
    pub name: String,
    /// The VXLAN network ID.
    pub vni: u32,
    /// The network's subnet, e.g. `10.0.1.0/24`.
    pub subnet: String,
    pub ingress: bool,
    /// `--opt encrypted` (refused by nodes that cannot encrypt yet).
    pub encrypted: bool,
    pub internal: bool,
    /// `--opt com.docker.network.driver.mtu`; None: the underlay's less
    /// the VXLAN overhead.
    pub mtu: Option<u32>,
    /// This node's own address on it (the ingress network: the routing
    /// mesh sends from it).
    pub node_addr: Option<Ipv4Addr>,
    /// The underlay addresses of the other nodes on this network (the
    /// VXLAN peers).
    pub peers: Vec<Ipv4Addr>,
    pub services: Vec<ServiceEntry>,
    /// An encrypted network's traffic key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<TrafficKey>,
}

/// A network's traffic key (base64 of 32 bytes). Its `Debug` is redacted:
/// no log line carries it.
#[derive(Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TrafficKey(pub String);

impl std::fmt::Debug for TrafficKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TrafficKey(<redacted>)")
    }
}

impl TrafficKey {
    /// A fresh random key.
    pub fn generate() -> TrafficKey {
        use base64::Engine;
        let bytes: [u8; 32] = rand::random();
        TrafficKey(base64::engine::general_purpose::STANDARD.encode(bytes))
    }
    pub fn bytes(&self) -> Option<[u8; 32]> {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(&self.0)
            .ok()?
            .try_into()
            .ok()
    }
}

/// A service on a network, as its tasks' DNS and load balancing see it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ServiceEntry {
    pub id: String,
    pub name: String,
    /// `--network name=N,alias=A`.
    pub aliases: Vec<String>,
    /// Its virtual IP on this network; None in dnsrr mode.
    pub vip: Option<Ipv4Addr>,
    /// The addresses of its running tasks on this network.
    pub backends: Vec<Ipv4Addr>,
    /// On the ingress network: the ports it publishes through the mesh.
    pub ports: Vec<MeshPort>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MeshPort {
    pub protocol: Protocol,
    pub published: u16,
    pub target: u16,
}

/// A task's address on one of its networks, as its attach needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskNetwork {
    pub network: NetworkView,
    pub addr: Ipv4Addr,
}

impl NetworkView {
    pub fn prefix(&self) -> u8 {
        self.subnet
            .split_once('/')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(24)
    }
}
