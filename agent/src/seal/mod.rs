//! Encryption at rest for managers.
//!
//! Everything raft persists (log entries, state machine rows, snapshots) is
//! sealed with a data encryption key (DEK) before it reaches redb. The DEK
//! lives in `<data-dir>/raft-dek.json`: in the clear without autolock (the
//! same protection as the node's TLS key beside it), or sealed with the key
//! encryption key (KEK) derived from the unlock key (`SWMKEY-1-…`) with
//! autolock, together with the node's TLS key. A locked manager cannot read
//! its DEK or its TLS key, so it can neither serve nor take part in raft
//! until someone presents the unlock key.
//!
//! Sealed record: `0x01 | nonce (12) | ciphertext | tag (16)`, ChaCha20-Poly1305
//! (fast without AES instructions, which the Raspberry Pi 4's Cortex-A72
//! lacks). The associated data names where the record lives (e.g.
//! `log/42`), so a record copied to another place fails to open.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::pki::UnlockKey;

const VERSION: u8 = 1;
const TAG_LEN: usize = 16;
/// Overhead of a sealed record over its plaintext.
pub const OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("sealed record {what} is truncated ({len} bytes, at least {OVERHEAD} expected): the data on disk is damaged")]
    Truncated { what: String, len: usize },
    #[error(
        "sealed record {what} has unknown format version {version}: written by a newer apiary?"
    )]
    UnknownVersion { what: String, version: u8 },
    #[error("sealed record {what} does not authenticate: it was modified on disk, moved, or sealed with another key")]
    Corrupt { what: String },
    #[error("the system random number generator failed")]
    Random,
}

/// Benchmark-only: records are stored in the clear behind a marker byte, so
/// `benches/raft_writes.rs --no-seal` can measure what encryption at rest
/// costs. Not reachable from any command or setting; while it is off (always,
/// outside that benchmark) a marked record is refused like any unknown one.
static BENCH_PASSTHROUGH: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
const PASSTHROUGH_VERSION: u8 = 0xfe;

#[doc(hidden)]
pub fn bench_passthrough(on: bool) {
    BENCH_PASSTHROUGH.store(on, std::sync::atomic::Ordering::Relaxed);
}

fn passthrough() -> bool {
    BENCH_PASSTHROUGH.load(std::sync::atomic::Ordering::Relaxed)
}

/// A 256-bit symmetric key that seals and opens records.
pub struct Sealer {
    key: LessSafeKey,
    raw: [u8; 32],
    rng: SystemRandom,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sealer(<key redacted>)")
    }
}

impl Sealer {
    pub fn new(raw: [u8; 32]) -> Sealer {
        // CHACHA20_POLY1305 takes exactly 32 bytes, which `raw` is.
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, &raw).unwrap_or_else(|_| unreachable!());
        Sealer {
            key: LessSafeKey::new(unbound),
            raw,
            rng: SystemRandom::new(),
        }
    }

    pub fn generate() -> Result<Sealer, SealError> {
        let mut raw = [0u8; 32];
        SystemRandom::new()
            .fill(&mut raw)
            .map_err(|_| SealError::Random)?;
        Ok(Sealer::new(raw))
    }

    pub fn raw(&self) -> &[u8; 32] {
        &self.raw
    }

    /// Seal `plaintext`; `place` is bound into the record as associated data.
    pub fn seal(&self, place: &str, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        if passthrough() {
            let mut out = Vec::with_capacity(plaintext.len() + 1);
            out.push(PASSTHROUGH_VERSION);
            out.extend_from_slice(plaintext);
            return Ok(out);
        }
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| SealError::Random)?;
        let mut out = Vec::with_capacity(plaintext.len() + OVERHEAD);
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let mut body = out.split_off(1 + NONCE_LEN);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(place.as_bytes()),
                &mut body,
            )
            .map_err(|_| SealError::Corrupt {
                what: place.to_string(),
            })?;
        out.extend_from_slice(&body);
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Open a record sealed by [`Sealer::seal`] at the same `place`.
    pub fn open(&self, place: &str, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        if passthrough() && sealed.first() == Some(&PASSTHROUGH_VERSION) {
            return Ok(sealed[1..].to_vec());
        }
        if sealed.len() < OVERHEAD {
            return Err(SealError::Truncated {
                what: place.to_string(),
                len: sealed.len(),
            });
        }
        if sealed[0] != VERSION {
            return Err(SealError::UnknownVersion {
                what: place.to_string(),
                version: sealed[0],
            });
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&sealed[1..1 + NONCE_LEN]);
        let mut body = sealed[1 + NONCE_LEN..].to_vec();
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(place.as_bytes()),
                &mut body,
            )
            .map_err(|_| SealError::Corrupt {
                what: place.to_string(),
            })?;
        Ok(plain.to_vec())
    }
}

/// How long a rotated-away unlock key still opens the key file: long enough
/// for a manager that was down during the rotation to be restarted with the
/// key the operator has at hand, short enough that a leaked old key stops
/// working soon.
pub const PREVIOUS_KEY_GRACE_SECS: u64 = 24 * 3600;

/// `<data-dir>/raft-dek.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum KeyFile {
    /// No autolock: the DEK in the clear (base64).
    Plain { dek: String },
    /// Autolock: DEK and TLS key sealed with the current unlock key, and with
    /// the previous one until `previous_until` (unix seconds).
    Locked {
        dek: String,
        tls_key: String,
        previous: Option<PreviousSeal>,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PreviousSeal {
    pub dek: String,
    pub tls_key: String,
    pub until: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is corrupt ({reason}); restore the manager's data dir from a backup, or remove it and join the node again")]
    Corrupt { path: PathBuf, reason: String },
    #[error("invalid unlock key: it does not unlock this manager. Use the current key (`apiary swarm unlock-key` on an unlocked manager shows it)")]
    WrongKey,
    #[error(transparent)]
    Seal(#[from] SealError),
}

pub const KEY_FILE: &str = "raft-dek.json";

fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

fn unb64(path: &Path, s: &str) -> Result<Vec<u8>, KeyFileError> {
    STANDARD.decode(s).map_err(|e| KeyFileError::Corrupt {
        path: path.to_path_buf(),
        reason: format!("bad base64: {e}"),
    })
}

fn kek(key: &UnlockKey) -> Sealer {
    Sealer::new(key.0)
}

impl KeyFile {
    pub fn plain(dek: &Sealer) -> KeyFile {
        KeyFile::Plain {
            dek: b64(dek.raw()),
        }
    }

    /// Seal the DEK and the TLS key (PEM) with `key`, keeping a still-valid
    /// previous seal when the key changes.
    pub fn locked(
        dek: &Sealer,
        tls_key_pem: &str,
        key: &UnlockKey,
        previous: Option<(&UnlockKey, u64)>,
    ) -> Result<KeyFile, SealError> {
        let k = kek(key);
        let previous = match previous {
            Some((old, until)) => {
                let o = kek(old);
                Some(PreviousSeal {
                    dek: b64(&o.seal("dek", dek.raw())?),
                    tls_key: b64(&o.seal("tls-key", tls_key_pem.as_bytes())?),
                    until,
                })
            }
            None => None,
        };
        Ok(KeyFile::Locked {
            dek: b64(&k.seal("dek", dek.raw())?),
            tls_key: b64(&k.seal("tls-key", tls_key_pem.as_bytes())?),
            previous,
        })
    }

    pub fn is_locked(&self) -> bool {
        matches!(self, KeyFile::Locked { .. })
    }

    /// The DEK of an unlocked key file.
    pub fn plain_dek(&self, path: &Path) -> Result<Option<Sealer>, KeyFileError> {
        match self {
            KeyFile::Plain { dek } => Ok(Some(sealer_from(path, &unb64(path, dek)?)?)),
            KeyFile::Locked { .. } => Ok(None),
        }
    }

    /// Open a locked key file: the DEK and the TLS key PEM.
    pub fn unlock(
        &self,
        path: &Path,
        key: &UnlockKey,
        now_unix: u64,
    ) -> Result<(Sealer, String), KeyFileError> {
        let KeyFile::Locked {
            dek,
            tls_key,
            previous,
        } = self
        else {
            return Err(KeyFileError::Corrupt {
                path: path.to_path_buf(),
                reason: "not locked".into(),
            });
        };
        let k = kek(key);
        let try_open = |dek: &str, tls: &str| -> Result<(Sealer, String), KeyFileError> {
            let d = k
                .open("dek", &unb64(path, dek)?)
                .map_err(|_| KeyFileError::WrongKey)?;
            let t = k
                .open("tls-key", &unb64(path, tls)?)
                .map_err(|_| KeyFileError::WrongKey)?;
            let pem = String::from_utf8(t).map_err(|_| KeyFileError::Corrupt {
                path: path.to_path_buf(),
                reason: "TLS key is not text".into(),
            })?;
            Ok((sealer_from(path, &d)?, pem))
        };
        match try_open(dek, tls_key) {
            Ok(v) => Ok(v),
            Err(KeyFileError::WrongKey) => match previous {
                Some(p) if now_unix <= p.until => try_open(&p.dek, &p.tls_key),
                _ => Err(KeyFileError::WrongKey),
            },
            Err(e) => Err(e),
        }
    }

    pub fn load(path: &Path) -> Result<Option<KeyFile>, KeyFileError> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| KeyFileError::Corrupt {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(KeyFileError::Io {
                op: "read",
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    pub fn save(&self, path: &Path) -> Result<(), KeyFileError> {
        let bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        crate::node::persist::write_atomic(path, &bytes, 0o600).map_err(|e| KeyFileError::Io {
            op: "write",
            path: path.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })
    }
}

fn sealer_from(path: &Path, raw: &[u8]) -> Result<Sealer, KeyFileError> {
    let raw: [u8; 32] = raw.try_into().map_err(|_| KeyFileError::Corrupt {
        path: path.to_path_buf(),
        reason: "the data key is not 32 bytes".into(),
    })?;
    Ok(Sealer::new(raw))
}

#[cfg(test)]
mod tests;
