//! The manager's keys at rest: the raft data key (DEK) and, with autolock,
//! the sealing of the DEK and the TLS key under the unlock key (see `seal`).
//!
//! Every manager keeps its key file in step with the cluster object: when
//! autolock is switched on or off, or the unlock key rotates, it reseals its
//! own files. The previous unlock key keeps opening them for
//! [`seal::PREVIOUS_KEY_GRACE_SECS`].

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::{info, warn};

use super::Running;
use crate::control::ControlError;
use crate::manager::Manager;
use crate::pki::UnlockKey;
use crate::seal::{self, KeyFile, Sealer};
use crate::store::Cluster;

fn internal(e: impl std::fmt::Display) -> ControlError {
    ControlError::Internal(e.to_string())
}

pub(super) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The unlock key autolock wants, if it is on.
pub(super) fn wanted_key(cluster: &Cluster) -> Result<Option<UnlockKey>, ControlError> {
    match (&cluster.unlock_key, cluster.spec.autolock) {
        (Some(k), true) => UnlockKey::parse(k)
            .map(Some)
            .map_err(|e| ControlError::Internal(format!("the stored unlock key is unusable: {e}"))),
        _ => Ok(None),
    }
}

impl Running {
    /// The raft data key: in memory once known, else from the key file, else
    /// a new one (a node that becomes a manager for the first time).
    pub(super) fn data_key(&self) -> Result<Arc<Sealer>, ControlError> {
        let mut dek = self.dek.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = dek.as_ref() {
            return Ok(d.clone());
        }
        let path = self.dir.key_file_path();
        let sealer = match self.dir.key_file().map_err(internal)? {
            Some(kf) => match kf.plain_dek(&path).map_err(internal)? {
                Some(s) => s,
                None => return Err(ControlError::Locked),
            },
            None => {
                let s = Sealer::generate().map_err(internal)?;
                self.dir
                    .save_key_file(&KeyFile::plain(&s))
                    .map_err(internal)?;
                s
            }
        };
        let sealer = Arc::new(sealer);
        *dek = Some(sealer.clone());
        Ok(sealer)
    }

    pub(super) fn sealed_with(&self) -> Option<UnlockKey> {
        self.sealed_with
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether the TLS key must stay off the disk in the clear.
    pub(super) fn autolocked(&self) -> bool {
        self.sealed_with().is_some()
    }

    /// Write the key file (and the TLS key) for `want`: sealed under it, or
    /// in the clear when autolock is off. Idempotent.
    pub(super) fn write_keys(&self, want: Option<&UnlockKey>) -> Result<(), ControlError> {
        let _writer = self.key_writer.lock().unwrap_or_else(|p| p.into_inner());
        self.write_keys_locked(want)
    }

    fn write_keys_locked(&self, want: Option<&UnlockKey>) -> Result<(), ControlError> {
        let dek = self.data_key()?;
        let certs = self.certs();
        let current = self.sealed_with();
        match want {
            None => {
                self.dir.save_certs(&certs).map_err(internal)?;
                self.dir
                    .save_key_file(&KeyFile::plain(&dek))
                    .map_err(internal)?;
                if current.is_some() {
                    info!(
                        "autolock is off: the data key and TLS key are stored in the clear again"
                    );
                }
            }
            Some(k) => {
                // Keep the key being replaced usable for a while.
                let previous = current
                    .as_ref()
                    .filter(|c| *c != k)
                    .map(|c| (c, now_unix() + seal::PREVIOUS_KEY_GRACE_SECS));
                let kf = KeyFile::locked(&dek, &certs.key_pem, k, previous).map_err(internal)?;
                self.dir.save_key_file(&kf).map_err(internal)?;
                self.dir
                    .save_certs_sealed(&certs, false)
                    .map_err(internal)?;
                if current.as_ref() != Some(k) {
                    info!(
                        "autolock: the data key and TLS key are sealed with the current unlock key"
                    );
                }
            }
        }
        *self.sealed_with.lock().unwrap_or_else(|p| p.into_inner()) = want.cloned();
        Ok(())
    }

    /// Bring the key files in line with the cluster object, if they differ.
    pub(super) fn sync_keys(&self, m: &Manager) -> Result<(), ControlError> {
        let cluster = m.state.read().cluster.clone();
        let Some(cluster) = cluster else {
            return Ok(());
        };
        let want = wanted_key(&cluster)?;
        let _writer = self.key_writer.lock().unwrap_or_else(|p| p.into_inner());
        if want != self.sealed_with() || !self.keys_written() {
            self.write_keys_locked(want.as_ref())?;
        }
        Ok(())
    }

    fn keys_written(&self) -> bool {
        matches!(self.dir.key_file(), Ok(Some(kf)) if kf.is_locked() == self.autolocked())
    }
}

/// Follow the replicated state on this manager for as long as it runs:
/// keep the keys at rest in step with autolock, and close connections of
/// nodes that were removed.
pub(super) async fn guard(running: Arc<Running>, m: Arc<Manager>) {
    let mut changes = m.state.watch();
    // What the last pass acted on: the watch fires for every applied batch,
    // and neither resealing (file I/O) nor revalidating connections (a
    // certificate parse each) is worth doing unless its input changed.
    let mut synced: Option<(bool, Option<String>)> = None;
    let mut removed_seen: Option<usize> = None;
    loop {
        let (policy, removed) = {
            let state = m.state.read();
            let policy = state
                .cluster
                .as_ref()
                .map_or((false, None), |c| (c.spec.autolock, c.unlock_key.clone()));
            (policy, state.removed.len())
        };
        if synced.as_ref() != Some(&policy) {
            // Remembered only on success, so a failed reseal is retried.
            match running.sync_keys(&m) {
                Ok(()) => synced = Some(policy),
                Err(e) => warn!("could not update the keys at rest: {e}"),
            }
        }
        if removed_seen != Some(removed) {
            running.transport.revalidate();
            removed_seen = Some(removed);
        }
        tokio::select! {
            _ = running.shutdown.cancelled() => return,
            r = changes.changed() => if r.is_err() { return },
        }
    }
}
