//! Join tokens, unlock keys and the random IDs that share their alphabet.

use std::fmt;

use base64::Engine as _;
use rand::RngCore;

use super::base36::{self, Base36Error};
use crate::store::NodeId;

const TOKEN_PREFIX: &str = "SWMTKN";
const TOKEN_VERSION: &str = "1";
/// 36^50 > 2^256 > 36^49: fifty digits hold any SHA-256.
const DIGEST_DIGITS: usize = 50;
/// 36^25 > 2^128 > 36^24: twenty-five digits hold 16 random bytes.
const SECRET_DIGITS: usize = 25;
const SECRET_BYTES: usize = 16;
/// Length of a well-formed token, for the error that quotes it.
const TOKEN_LEN: usize =
    TOKEN_PREFIX.len() + 1 + TOKEN_VERSION.len() + 1 + DIGEST_DIGITS + 1 + SECRET_DIGITS;

const UNLOCK_PREFIX: &str = "SWMKEY";
const UNLOCK_VERSION: &str = "1";
const UNLOCK_KEY_BYTES: usize = 32;

const JOIN_HINT: &str =
    "get a fresh one by running `apiary swarm join-token worker` (or `manager`) on a manager";
const UNLOCK_HINT: &str = "use the key printed by `apiary swarm init --autolock` or by \
     `apiary swarm unlock-key` on an unlocked manager";

/// Why a join token or unlock key was refused. The text is shown to the
/// user as is, so it never quotes the secret part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("invalid join token: the token is empty; {JOIN_HINT}")]
    Empty,
    #[error(
        "invalid join token: it must start with \"SWMTKN-1-\"{}; {JOIN_HINT}",
        if *looks_like_unlock_key { " (this looks like an unlock key, which is used with `apiary swarm unlock`)" } else { "" }
    )]
    WrongPrefix { looks_like_unlock_key: bool },
    #[error(
        "invalid join token: version {version:?} is not supported (this apiary understands \
         version 1 tokens, \"SWMTKN-1-...\"); {JOIN_HINT}"
    )]
    UnsupportedVersion { version: String },
    #[error(
        "invalid join token: expected 4 parts separated by '-' \
         (SWMTKN-1-<CA digest>-<secret>, {TOKEN_LEN} characters), found {parts}; \
         it may have been cut when copied; {JOIN_HINT}"
    )]
    WrongShape { parts: usize },
    #[error(
        "invalid join token: the CA digest part has {len} characters, expected {DIGEST_DIGITS}; \
         it may have been cut when copied; {JOIN_HINT}"
    )]
    DigestLength { len: usize },
    #[error(
        "invalid join token: the secret part has {len} characters, expected {SECRET_DIGITS}; \
         it may have been cut when copied; {JOIN_HINT}"
    )]
    SecretLength { len: usize },
    #[error(
        "invalid join token: character {ch:?} at position {} of the {part} part is not \
         allowed (only 0-9 and a-z); {JOIN_HINT}",
        index + 1
    )]
    InvalidChar {
        part: &'static str,
        index: usize,
        ch: char,
    },
    #[error(
        "invalid join token: the CA digest part is larger than a SHA-256 digest can be; {JOIN_HINT}"
    )]
    DigestOverflow,
    #[error("invalid unlock key: the key is empty; {UNLOCK_HINT}")]
    UnlockKeyEmpty,
    #[error(
        "invalid unlock key: it must start with \"SWMKEY-1-\"{}; {UNLOCK_HINT}",
        if *looks_like_join_token { " (this looks like a join token, which is used with `apiary swarm join`)" } else { "" }
    )]
    UnlockKeyPrefix { looks_like_join_token: bool },
    #[error(
        "invalid unlock key: version {version:?} is not supported (this apiary understands \
         \"SWMKEY-1-...\"); {UNLOCK_HINT}"
    )]
    UnlockKeyVersion { version: String },
    #[error("invalid unlock key: the key part is not base64 ({reason}); {UNLOCK_HINT}")]
    UnlockKeyEncoding { reason: String },
    #[error(
        "invalid unlock key: the key part decodes to {len} bytes, expected {UNLOCK_KEY_BYTES}; \
         it may have been cut when copied; {UNLOCK_HINT}"
    )]
    UnlockKeyLength { len: usize },
}

/// Caps how much of a user's bad version string goes into a message.
fn excerpt(s: &str) -> String {
    const MAX: usize = 16;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(MAX).collect();
        out.push('…');
        out
    }
}

fn random_16() -> [u8; SECRET_BYTES] {
    let mut bytes = [0u8; SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes
}

/// 25 lowercase base-36 chars from 128 random bits (Docker's node ID shape).
pub fn new_node_id() -> NodeId {
    NodeId(base36::encode(&random_16(), SECRET_DIGITS))
}

/// Join-token secret: 16 random bytes in base 36, zero-padded to 25 chars.
pub fn new_join_secret() -> String {
    base36::encode(&random_16(), SECRET_DIGITS)
}

/// Compares two secrets in time independent of where they differ, so a
/// joining node cannot guess a secret one character at a time.
pub fn secrets_equal(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A join token: the CA digest lets a joining node authenticate the
/// managers before it hands over the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub ca_digest: [u8; 32],
    pub secret: String,
}

impl JoinToken {
    pub fn new(ca_digest: [u8; 32], secret: String) -> Self {
        JoinToken { ca_digest, secret }
    }

    /// Parses "SWMTKN-1-<sha256 in base36, zero-padded to 50>-<secret base36 25 chars>".
    pub fn parse(s: &str) -> Result<JoinToken, TokenError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(TokenError::Empty);
        }
        let parts: Vec<&str> = s.split('-').collect();
        if parts[0] != TOKEN_PREFIX {
            return Err(TokenError::WrongPrefix {
                looks_like_unlock_key: parts[0] == UNLOCK_PREFIX,
            });
        }
        match parts.get(1) {
            Some(&TOKEN_VERSION) => {}
            Some(version) => {
                return Err(TokenError::UnsupportedVersion {
                    version: excerpt(version),
                })
            }
            None => return Err(TokenError::WrongShape { parts: parts.len() }),
        }
        let [_, _, digest, secret] = parts[..] else {
            return Err(TokenError::WrongShape { parts: parts.len() });
        };
        let digest_len = digest.chars().count();
        if digest_len != DIGEST_DIGITS {
            return Err(TokenError::DigestLength { len: digest_len });
        }
        let secret_len = secret.chars().count();
        if secret_len != SECRET_DIGITS {
            return Err(TokenError::SecretLength { len: secret_len });
        }
        let ca_digest = base36::decode::<32>(digest).map_err(|e| match e {
            Base36Error::InvalidChar { index, ch } => TokenError::InvalidChar {
                part: "CA digest",
                index,
                ch,
            },
            Base36Error::Overflow => TokenError::DigestOverflow,
        })?;
        if let Some((index, ch)) = secret
            .chars()
            .enumerate()
            .find(|(_, c)| !matches!(c, '0'..='9' | 'a'..='z'))
        {
            return Err(TokenError::InvalidChar {
                part: "secret",
                index,
                ch,
            });
        }
        Ok(JoinToken {
            ca_digest,
            secret: secret.to_string(),
        })
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{TOKEN_PREFIX}-{TOKEN_VERSION}-{}-{}",
            base36::encode(&self.ca_digest, DIGEST_DIGITS),
            self.secret
        )
    }
}

impl fmt::Debug for JoinToken {
    // The secret admits nodes to the swarm: keep it out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("ca_digest", &base36::encode(&self.ca_digest, DIGEST_DIGITS))
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// The key that encrypts a manager's raft data key when autolock is on.
#[derive(Clone, PartialEq, Eq)]
pub struct UnlockKey(pub [u8; 32]);

impl UnlockKey {
    pub fn generate() -> Self {
        let mut key = [0u8; UNLOCK_KEY_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut key);
        UnlockKey(key)
    }

    /// Parses "SWMKEY-1-<32 bytes, unpadded standard base64>". Trailing '='
    /// padding is tolerated because some tools add it back when copying.
    pub fn parse(s: &str) -> Result<Self, TokenError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(TokenError::UnlockKeyEmpty);
        }
        // Base64 has no '-', so splitting twice leaves the key part whole.
        let mut parts = s.splitn(3, '-');
        let prefix = parts.next().unwrap_or_default();
        if prefix != UNLOCK_PREFIX {
            return Err(TokenError::UnlockKeyPrefix {
                looks_like_join_token: prefix == TOKEN_PREFIX,
            });
        }
        let version = parts.next().unwrap_or_default();
        let encoded = parts.next().unwrap_or_default();
        if version != UNLOCK_VERSION {
            return Err(TokenError::UnlockKeyVersion {
                version: excerpt(version),
            });
        }
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(encoded.trim_end_matches('='))
            .map_err(|e| TokenError::UnlockKeyEncoding {
                reason: e.to_string(),
            })?;
        let key: [u8; UNLOCK_KEY_BYTES] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| TokenError::UnlockKeyLength { len: bytes.len() })?;
        Ok(UnlockKey(key))
    }
}

impl fmt::Display for UnlockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{UNLOCK_PREFIX}-{UNLOCK_VERSION}-{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(self.0)
        )
    }
}

impl fmt::Debug for UnlockKey {
    // Whoever holds the key can decrypt the raft log: keep it out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UnlockKey(<redacted>)")
    }
}
