//! Networks at the control seam: new records, the checks made before a
//! raft write (the same rules `apply` enforces, for a clear error without
//! a write), and lookup by ID, name or ID prefix.

use crate::control::{ControlError, ControlResult};
use crate::pki;
use crate::store::networks::{self, INGRESS};
use crate::store::{Network, NetworkId, NetworkSpec, State, StoreErrorKind};

/// A new network record: its ID, and the traffic key of an encrypted one.
pub fn new_network(spec: NetworkSpec, now: &str) -> Network {
    let encrypted = spec.options.contains_key("encrypted");
    Network {
        id: NetworkId(pki::new_node_id().0),
        version: 0,
        created_at: now.to_string(),
        updated_at: now.to_string(),
        spec,
        pool: Default::default(),
        vni: 0,
        node_addrs: Default::default(),
        key: encrypted.then(crate::network::view::TrafficKey::generate),
    }
}

/// The routing mesh's network, as `swarm init` makes it: its subnet is
/// the pool's first (10.0.0.0/24 by default).
pub fn ingress(now: &str) -> Network {
    new_network(
        NetworkSpec {
            name: INGRESS.into(),
            driver: "overlay".into(),
            ingress: true,
            ..Default::default()
        },
        now,
    )
}

/// Refuse what `apply` would refuse, with the store's wording and the
/// same mapping as a refusal from `apply` (`Manager::propose`).
pub fn check_create(state: &State, spec: &NetworkSpec) -> ControlResult<()> {
    networks::check_create(state, spec)
        .map(drop)
        .map_err(|e| match e.kind {
            StoreErrorKind::Conflict => ControlError::Conflict(e.message),
            StoreErrorKind::NotFound => ControlError::NotFound(e.message),
            StoreErrorKind::Invalid => ControlError::FailedPrecondition(e.message),
        })
}

pub fn resolve_network(state: &State, key: &str) -> ControlResult<Network> {
    let items = state
        .networks
        .values()
        .map(|n| (n.id.0.as_str(), n.spec.name.as_str(), n));
    super::secrets::resolve("network", key, items).cloned()
}
