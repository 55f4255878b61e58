//! Root CA rotation on the manager side: what a certificate issued now
//! carries (the new root cross-signed by the old ones, the trust bundle),
//! which nodes still need a new certificate, and — on the leader — the
//! loop that ends the rotation once every live node has moved.
//!
//! The rotation itself: `Command::RotateRootCa` makes the new root the
//! signing root at once; the old ones stay in the trust bundle. Nodes learn
//! they must renew from their heartbeat answer (`renew`); a node renewed
//! during the rotation presents its new certificate with the cross-signed
//! root, so peers that still trust only the old root accept it. When no
//! node that is not Down holds an old certificate, the leader commits
//! `CompleteCaRotation`: the old roots leave the bundle, every node renews
//! once more to drop them from its trust store, and a certificate from an
//! old root is refused from then on.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::Manager;
use crate::pki;
use crate::store::{Cluster, Command, NodeState, NodeTls, State};

/// How often the leader checks whether a rotation is done: the nodes move
/// at their heartbeats (seconds), so a tick this short adds little.
const TICK: Duration = Duration::from_millis(250);

/// The roots a node must trust now: the current one first (its digest is
/// the join tokens'), then those a rotation in progress replaces.
pub fn trust_bundle(cluster: &Cluster) -> String {
    let mut bundle = pem_block(&cluster.root_ca.cert_pem);
    if let Some(r) = &cluster.rotation {
        for old in r.previous.iter().rev() {
            bundle.push_str(&pem_block(&old.cert_pem));
        }
    }
    bundle
}

/// A node certificate as issued now: the leaf, then during a rotation the
/// new root cross-signed by each old one.
pub fn issued_chain(cluster: &Cluster, leaf_pem: &str) -> String {
    let mut chain = pem_block(leaf_pem);
    if let Some(r) = &cluster.rotation {
        for c in &r.cross_signed {
            chain.push_str(&pem_block(c));
        }
    }
    chain
}

fn pem_block(pem: &str) -> String {
    let mut s = pem.trim_end().to_string();
    s.push('\n');
    s
}

/// The TLS facts a certificate issued now gives a node.
pub fn node_tls(cluster: &Cluster) -> Result<NodeTls, pki::PkiError> {
    node_tls_from_bundle(&trust_bundle(cluster))
}

/// The TLS facts of a certificate issued with trust `bundle`: its first
/// root is the one that signed.
pub fn node_tls_from_bundle(bundle: &str) -> Result<NodeTls, pki::PkiError> {
    let (subject, key) = pki::ca_subject_and_key(bundle)?;
    let b64 = base64::engine::general_purpose::STANDARD;
    Ok(NodeTls {
        trust_root: bundle.to_string(),
        issuer_subject: b64.encode(subject),
        issuer_public_key: b64.encode(key),
    })
}

/// Whether a node must renew to match the cluster's CA: its certificate
/// is from an older root, or its trust bundle is not the current one (a
/// rotation started or ended). A node with no record (joined before this
/// was recorded) renews once.
pub fn needs_new_cert(node: Option<&NodeTls>, cluster: &Cluster) -> bool {
    match (node, node_tls(cluster)) {
        (Some(have), Ok(want)) => *have != want,
        (None, _) => true,
        // An unreadable root is a bug elsewhere; renewing would not help.
        (Some(_), Err(_)) => false,
    }
}

/// Pure decision: the rotation can end when every node that is not Down
/// holds a certificate from the current root. Down nodes are not waited
/// for: a rotation is often a reaction to a leaked key, and waiting for a
/// node that may never return keeps that key trusted. Such a node comes
/// back with `apiary swarm join --token <current token>`.
pub fn rotation_done(state: &State) -> Option<String> {
    let cluster = state.cluster.as_ref()?;
    cluster.rotation.as_ref()?;
    let want = node_tls(cluster).ok()?;
    let all_moved = state
        .nodes
        .values()
        .filter(|n| n.status.state != NodeState::Down)
        .all(|n| {
            state
                .node_tls
                .get(&n.id)
                .is_some_and(|t| t.issuer_public_key == want.issuer_public_key)
        });
    all_moved.then(|| cluster.root_ca.cert_pem.clone())
}

/// Leader loop: end the rotation once it is done.
pub(super) async fn run(m: Arc<Manager>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(root_cert) = rotation_done(&m.state.read()) else {
            continue;
        };
        let cmd = Command::CompleteCaRotation {
            root_cert,
            now: crate::util::now_rfc3339(),
        };
        match m.propose(cmd).await {
            Ok(_) => info!("root CA rotation complete: the previous root is no longer trusted"),
            Err(e) => debug!("could not complete the root CA rotation yet: {e}"),
        }
    }
}

#[cfg(test)]
mod tests;
