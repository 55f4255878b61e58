//! Root CA rotation on the node side: starting one (`swarm ca --rotate`),
//! pinning a join token's root in a trust bundle, and a manager moving to
//! the new root as soon as its raft state shows the rotation.

use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use tracing::{info, warn};

use super::Running;
use crate::control::{ControlError, ControlResult};
use crate::manager::{ca, Manager};
use crate::pki;
use crate::store::Command;

fn internal(e: impl std::fmt::Display) -> ControlError {
    ControlError::Internal(e.to_string())
}

/// Start a rotation: a new root, cross-signed by the current one (and by
/// any a rotation in progress still replaces, so nodes that have not moved
/// yet accept certificates from the newest).
pub(super) async fn rotate_root_ca(m: &Manager) -> ControlResult<()> {
    let cluster = m
        .state
        .read()
        .cluster
        .clone()
        .ok_or_else(|| ControlError::Unavailable("the swarm is still starting".into()))?;
    let new_root = pki::new_root_ca().map_err(internal)?;
    let mut cross_signed = Vec::new();
    let previous = cluster.rotation.iter().flat_map(|r| r.previous.iter());
    for old in previous.chain(std::iter::once(&cluster.root_ca)) {
        cross_signed.push(pki::cross_sign(&new_root, old).map_err(internal)?);
    }
    m.propose(Command::RotateRootCa {
        root_ca: new_root,
        from_root_cert: cluster.root_ca.cert_pem.clone(),
        cross_signed,
        now: crate::util::now_rfc3339(),
    })
    .await?;
    info!("root CA rotation started: every node will move to the new root");
    Ok(())
}

/// The root of a trust bundle (a `GetCa` answer) whose SHA-256 is the join
/// token's digest. Only that root is trusted for the join call: the rest of
/// the bundle is not vouched for by the token.
pub(super) fn pinned_root(
    bundle_pem: &str,
    digest: &[u8; 32],
) -> Result<Option<CertificateDer<'static>>, pki::PkiError> {
    Ok(pki::certs_from_pem(bundle_pem)?.into_iter().find(|c| {
        ring::digest::digest(&ring::digest::SHA256, c.as_ref()).as_ref() == digest.as_slice()
    }))
}

/// Whether this node's trust bundle holds the root a join token names: if
/// not, the swarm rotated its CA while the node was away, and the token is
/// how it comes back (see `swarm_join`).
pub(super) fn trusts_token_root(ca_bundle_pem: &str, token: &str) -> bool {
    let Ok(token) = pki::JoinToken::parse(token) else {
        // A bad token is reported by the join itself.
        return true;
    };
    matches!(pinned_root(ca_bundle_pem, &token.ca_digest), Ok(Some(_)))
}

/// A manager moves to the new root as soon as its copy of the state shows a
/// rotation starting or ending, rather than at its next heartbeat: nodes
/// joining with the new token can only verify managers that have moved.
pub(super) async fn follow(running: Arc<Running>, m: Arc<Manager>) {
    let mut changes = m.state.watch();
    let mut seen_bundle: Option<String> = None;
    loop {
        let due = {
            let state = m.state.read();
            state.cluster.as_ref().and_then(|c| {
                let bundle = ca::trust_bundle(c);
                if seen_bundle.as_ref() == Some(&bundle) {
                    return None;
                }
                let stale = ca::needs_new_cert(state.node_tls.get(&m.me.node_id), c);
                Some((bundle, stale))
            })
        };
        if let Some((bundle, stale)) = due {
            // The first pass only learns the bundle: a restart is not a rotation.
            let first = seen_bundle.is_none();
            seen_bundle = Some(bundle);
            if stale && !first {
                match super::session::renew(&running).await {
                    Ok(_) => info!("moved to the swarm's new root CA"),
                    Err(e) => warn!(
                        "could not renew for the new root CA yet (the heartbeat will retry): {e}"
                    ),
                }
            }
        }
        tokio::select! {
            _ = running.shutdown.cancelled() => return,
            r = changes.changed() => if r.is_err() { return },
        }
    }
}
