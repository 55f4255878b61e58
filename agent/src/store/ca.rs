//! The root CA rotation's part of the replicated state: the roots still
//! trusted while nodes move to a new one, and what each node was last given
//! (its issuer and trust bundle), as Docker's `Description.TLSInfo`.

use serde::{Deserialize, Serialize};

use super::state::{State, StoreError};
use super::types::{NodeId, RootCa};

pub(super) const NODE_TLS_PREFIX: &str = "nodetls/";

/// A rotation in progress (`swarm ca --rotate`): the new root is already
/// `Cluster::root_ca` (it signs every certificate from now on); the roots it
/// replaces stay trusted until every live node holds a certificate from it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaRotation {
    /// The roots being replaced, newest last. Their keys are kept only to
    /// cross-sign a root that replaces the new one before this completes.
    pub previous: Vec<RootCa>,
    /// The new root cross-signed by each previous root (PEM), sent with
    /// every certificate issued meanwhile.
    pub cross_signed: Vec<String>,
    pub started_at: String,
}

impl std::fmt::Debug for CaRotation {
    // The previous roots carry their keys: never print them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaRotation")
            .field("previous", &self.previous.len())
            .field("started_at", &self.started_at)
            .finish()
    }
}

/// The TLS facts of a node as its last certificate made them: the trust
/// bundle it was given and the issuer of its certificate (raw X.509 subject
/// and SubjectPublicKeyInfo, standard base64, as Docker's API has them).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeTls {
    pub trust_root: String,
    pub issuer_subject: String,
    pub issuer_public_key: String,
}

impl State {
    /// `swarm ca --rotate`: the new root signs from now on; the current one
    /// (and any a rotation in progress was replacing) stays trusted.
    pub(super) fn apply_rotate_root_ca(
        &mut self,
        index: u64,
        root_ca: &RootCa,
        from_root_cert: &str,
        cross_signed: &[String],
        now: &str,
    ) -> Result<Option<u64>, StoreError> {
        let cluster = self
            .cluster
            .as_mut()
            .ok_or_else(|| StoreError::not_found("the swarm has no cluster object"))?;
        if cluster.root_ca.cert_pem != from_root_cert {
            return Err(StoreError::conflict(
                "the root CA changed while the rotation was being prepared (another rotation?); run `apiary swarm ca --rotate` again",
            ));
        }
        let mut rotation = cluster.rotation.take().unwrap_or_else(|| CaRotation {
            previous: Vec::new(),
            cross_signed: Vec::new(),
            started_at: now.to_string(),
        });
        rotation.previous.push(cluster.root_ca.clone());
        rotation.cross_signed = cross_signed.to_vec();
        cluster.root_ca = root_ca.clone();
        cluster.rotation = Some(rotation);
        cluster.version = index;
        cluster.updated_at = now.to_string();
        Ok(Some(index))
    }

    /// Every live node moved: drop the previous roots (no longer trusted).
    pub(super) fn apply_complete_ca_rotation(
        &mut self,
        index: u64,
        root_cert: &str,
        now: &str,
    ) -> Result<Option<u64>, StoreError> {
        let cluster = self
            .cluster
            .as_mut()
            .ok_or_else(|| StoreError::not_found("the swarm has no cluster object"))?;
        if cluster.root_ca.cert_pem != root_cert {
            return Err(StoreError::conflict(
                "a newer root CA rotation started; it completes on its own",
            ));
        }
        if cluster.rotation.take().is_none() {
            return Ok(None);
        }
        cluster.version = index;
        cluster.updated_at = now.to_string();
        Ok(Some(index))
    }

    pub(super) fn apply_set_node_tls(
        &mut self,
        id: &NodeId,
        tls: &NodeTls,
    ) -> Result<Option<u64>, StoreError> {
        // A node removed meanwhile: nothing to record (as SetNodeStatus).
        if !self.nodes.contains_key(id) {
            return Ok(None);
        }
        self.node_tls.insert(id.clone(), tls.clone());
        Ok(None)
    }
}
