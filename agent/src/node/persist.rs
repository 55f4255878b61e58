//! What a node keeps in its data dir to come back after a restart:
//!
//! ```text
//! <data-dir>/state.json                       membership: node/cluster ID, role, raft ID, addresses
//! <data-dir>/certificates/swarm-root-ca.crt   cluster CA
//! <data-dir>/certificates/swarm-node.crt      this node's certificate
//! <data-dir>/certificates/swarm-node.key      its private key (0600)
//! <data-dir>/raft.redb                        managers only
//! ```
//!
//! Files are replaced atomically (write, fsync, rename) so a power cut on an
//! SD card leaves the old or the new version, never half of one.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::store::{NodeId, RaftId, Role};

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is corrupt ({reason}); move it away and join the node to the swarm again")]
    Corrupt { path: PathBuf, reason: String },
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeFile {
    pub node_id: NodeId,
    pub cluster_id: String,
    /// The role of the certificate on disk.
    pub role: Role,
    /// Set while the node is (or is becoming) a raft member.
    pub raft_id: Option<RaftId>,
    pub listen_addr: String,
    pub advertise_addr: String,
    /// Managers' cluster addresses, refreshed by heartbeats.
    pub managers: Vec<String>,
    /// Workers keep the join token they joined with, so that a node powered
    /// off past its certificate's expiry comes back by itself. (Managers do
    /// not: with autolock that would leave a manager token in the clear.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_token: Option<String>,
}

#[derive(Clone)]
pub struct Certs {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

pub struct DataDir {
    root: PathBuf,
}

const STATE: &str = "state.json";
const CERT_DIR: &str = "certificates";
const CA: &str = "swarm-root-ca.crt";
const CERT: &str = "swarm-node.crt";
const KEY: &str = "swarm-node.key";
pub const RAFT_DB: &str = "raft.redb";

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> PersistError + 'a {
    move |source| PersistError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DataDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn raft_db(&self) -> PathBuf {
        self.root.join(RAFT_DB)
    }

    pub fn ensure(&self) -> Result<(), PersistError> {
        fs::create_dir_all(self.root.join(CERT_DIR)).map_err(io("create", &self.root))
    }

    /// The node file, or None for a node that is in no swarm.
    pub fn load(&self) -> Result<Option<(NodeFile, Certs)>, PersistError> {
        let path = self.root.join(STATE);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("read", &path)(e)),
        };
        let file: NodeFile = serde_json::from_slice(&bytes).map_err(|e| PersistError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let read = |name: &str| {
            let p = self.root.join(CERT_DIR).join(name);
            fs::read_to_string(&p).map_err(|e| PersistError::Io {
                op: "read",
                path: p,
                source: e,
            })
        };
        // With autolock the TLS key lives sealed in the key file instead.
        let key_path = self.root.join(CERT_DIR).join(KEY);
        let key_pem = match fs::read_to_string(&key_path) {
            Ok(k) => k,
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && self.key_file()?.is_some_and(|k| k.is_locked()) =>
            {
                String::new()
            }
            Err(e) => return Err(io("read", &key_path)(e)),
        };
        let certs = Certs {
            ca_pem: read(CA)?,
            cert_pem: read(CERT)?,
            key_pem,
        };
        Ok(Some((file, certs)))
    }

    /// The QUIC stateless-reset secret (see `Transport::bind_with_reset_secret`),
    /// created on first use and kept for the life of the data dir.
    pub fn reset_secret(&self) -> Result<[u8; 32], PersistError> {
        use ring::rand::SecureRandom;
        let path = self.root.join("transport-reset.key");
        match fs::read(&path) {
            Ok(b) if b.len() == 32 => {
                let mut k = [0u8; 32];
                k.copy_from_slice(&b);
                return Ok(k);
            }
            Ok(_) => {} // damaged: make a new one (only costs faster resets once)
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("read", &path)(e)),
        }
        let mut k = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut k)
            .map_err(|_| PersistError::Corrupt {
                path: path.clone(),
                reason: "no randomness".into(),
            })?;
        self.ensure()?;
        write_atomic(&path, &k, 0o600)?;
        Ok(k)
    }

    pub fn key_file_path(&self) -> PathBuf {
        self.root.join(crate::seal::KEY_FILE)
    }

    pub fn key_file(&self) -> Result<Option<crate::seal::KeyFile>, PersistError> {
        let path = self.key_file_path();
        crate::seal::KeyFile::load(&path).map_err(|e| PersistError::Corrupt {
            path,
            reason: e.to_string(),
        })
    }

    pub fn save_key_file(&self, kf: &crate::seal::KeyFile) -> Result<(), PersistError> {
        let bytes = serde_json::to_vec_pretty(kf).unwrap_or_default();
        write_atomic(&self.key_file_path(), &bytes, 0o600)
    }

    /// Write CA and certificate; the private key only when `key_in_clear`
    /// (without autolock), else remove it (it is sealed in the key file).
    pub fn save_certs_sealed(&self, certs: &Certs, key_in_clear: bool) -> Result<(), PersistError> {
        if key_in_clear {
            return self.save_certs(certs);
        }
        self.ensure()?;
        let dir = self.root.join(CERT_DIR);
        write_atomic(&dir.join(CA), certs.ca_pem.as_bytes(), 0o644)?;
        write_atomic(&dir.join(CERT), certs.cert_pem.as_bytes(), 0o644)?;
        let key = dir.join(KEY);
        match fs::remove_file(&key) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("remove", &key)(e)),
        }
    }

    pub fn save_state(&self, file: &NodeFile) -> Result<(), PersistError> {
        let bytes = serde_json::to_vec_pretty(file).unwrap_or_default();
        write_atomic(&self.root.join(STATE), &bytes, 0o644)
    }

    pub fn save_certs(&self, certs: &Certs) -> Result<(), PersistError> {
        self.ensure()?;
        let dir = self.root.join(CERT_DIR);
        write_atomic(&dir.join(CA), certs.ca_pem.as_bytes(), 0o644)?;
        write_atomic(&dir.join(KEY), certs.key_pem.as_bytes(), 0o600)?;
        write_atomic(&dir.join(CERT), certs.cert_pem.as_bytes(), 0o644)
    }

    pub fn remove_raft(&self) -> Result<(), PersistError> {
        let p = self.raft_db();
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("remove", &p)(e)),
        }
    }

    /// Forget the swarm: state, certificates and raft data.
    pub fn wipe(&self) -> Result<(), PersistError> {
        self.remove_raft()?;
        for p in [
            self.root.join(STATE),
            self.root.join(CERT_DIR),
            self.key_file_path(),
        ] {
            let r = if p.is_dir() {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
            match r {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("remove", &p)(e)),
            }
        }
        Ok(())
    }
}

pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PersistError> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    f.write_all(bytes).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("sync", &tmp))?;
    fs::rename(&tmp, path).map_err(io("rename", path))?;
    if let Some(dir) = path.parent() {
        // Make the rename itself durable.
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}
