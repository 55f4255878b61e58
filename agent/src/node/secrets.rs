//! Secrets and configs on a manager: Docker's rules for names and sizes,
//! lookup by ID, name or ID prefix, and the records to propose. Pure
//! functions over the store; `NodeHandle` calls them around `propose`.

use crate::control::{ControlError, ControlResult};
use crate::pki;
use crate::store::{Config, ConfigId, ConfigSpec, Secret, SecretId, SecretSpec, State};

/// Swarm's `MaxSecretSize`: a secret must be smaller than 500 KiB. Secrets
/// are held in memory on every manager and sent to every node that runs a
/// task using them, so they are meant to be small (keys, passwords).
pub const MAX_SECRET_SIZE: usize = 500 * 1024;
/// Swarm's `MaxConfigSize`: configs may be twice as large as secrets.
pub const MAX_CONFIG_SIZE: usize = 1000 * 1024;
/// Swarm's limit on secret and config names.
pub const MAX_NAME_LEN: usize = 64;

/// Docker's `^[a-zA-Z0-9]+(?:[a-zA-Z0-9-_.]*[a-zA-Z0-9])?$`, at most 64 characters.
pub fn validate_name(kind: &str, name: &str) -> ControlResult<()> {
    if name.is_empty() {
        return Err(ControlError::InvalidArgument(format!(
            "a {kind} needs a name: none was given"
        )));
    }
    let bytes = name.as_bytes();
    let inner_ok = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    let ends_ok =
        bytes[0].is_ascii_alphanumeric() && bytes[bytes.len() - 1].is_ascii_alphanumeric();
    if name.len() > MAX_NAME_LEN || !ends_ok || !bytes.iter().all(inner_ok) {
        return Err(ControlError::InvalidArgument(format!(
            "invalid {kind} name {name:?}: only {MAX_NAME_LEN} [a-zA-Z0-9-_.] characters are allowed, and the first and last must be [a-zA-Z0-9]"
        )));
    }
    Ok(())
}

fn validate_size(kind: &str, name: &str, len: usize, max: usize) -> ControlResult<()> {
    if len == 0 || len >= max {
        return Err(ControlError::InvalidArgument(format!(
            "{kind} data must be larger than 0 and less than {}KB: {kind} {name} has {len} bytes",
            max / 1024
        )));
    }
    Ok(())
}

pub fn validate_secret_spec(spec: &SecretSpec) -> ControlResult<()> {
    validate_name("secret", &spec.name)?;
    validate_size("secret", &spec.name, spec.data.len(), MAX_SECRET_SIZE)
}

pub fn validate_config_spec(spec: &ConfigSpec) -> ControlResult<()> {
    validate_name("config", &spec.name)?;
    validate_size("config", &spec.name, spec.data.len(), MAX_CONFIG_SIZE)
}

/// A new secret record: fresh ID, both timestamps `now`. The version is
/// set by `apply` (the log index).
pub fn new_secret(spec: SecretSpec, now: &str) -> Secret {
    Secret {
        id: SecretId(pki::new_node_id().0),
        version: 0,
        created_at: now.to_string(),
        updated_at: now.to_string(),
        spec,
    }
}

pub fn new_config(spec: ConfigSpec, now: &str) -> Config {
    Config {
        id: ConfigId(pki::new_node_id().0),
        version: 0,
        created_at: now.to_string(),
        updated_at: now.to_string(),
        spec,
    }
}

/// The secret as the control seam hands it out: without its payload.
pub fn without_data(mut s: Secret) -> Secret {
    s.spec.data = Vec::new();
    s
}

/// Docker's lookup: full ID, then exact name, then unique ID prefix.
pub(super) fn resolve<'a, T>(
    kind: &str,
    key: &str,
    items: impl Iterator<Item = (&'a str, &'a str, &'a T)> + Clone,
) -> ControlResult<&'a T> {
    let not_found = || ControlError::NotFound(format!("{kind} {key} not found"));
    if key.is_empty() {
        return Err(not_found());
    }
    if let Some((_, _, t)) = items.clone().find(|(id, _, _)| *id == key) {
        return Ok(t);
    }
    if let Some((_, _, t)) = items.clone().find(|(_, name, _)| *name == key) {
        return Ok(t);
    }
    let by_prefix: Vec<&T> = items
        .filter(|(id, _, _)| id.starts_with(key))
        .map(|(_, _, t)| t)
        .collect();
    match by_prefix.len() {
        0 => Err(not_found()),
        1 => Ok(by_prefix[0]),
        n => Err(ControlError::NotFound(format!(
            "{kind} {key} is ambiguous ({n} matches found); use the full {kind} ID or its name"
        ))),
    }
}

pub fn resolve_secret(state: &State, key: &str) -> ControlResult<Secret> {
    let items = state
        .secrets
        .values()
        .map(|s| (s.id.0.as_str(), s.spec.name.as_str(), s));
    resolve("secret", key, items).cloned()
}

pub fn resolve_config(state: &State, key: &str) -> ControlResult<Config> {
    let items = state
        .configs
        .values()
        .map(|c| (c.id.0.as_str(), c.spec.name.as_str(), c));
    resolve("config", key, items).cloned()
}

fn labels_only(kind: &str) -> ControlError {
    ControlError::InvalidArgument(format!(
        "only updates to Labels are allowed: a {kind}'s name and data cannot change; create a new {kind} instead"
    ))
}

/// Docker lets an update change a secret's labels only.
pub fn check_secret_update(current: &Secret, spec: &SecretSpec) -> ControlResult<()> {
    let renamed = !spec.name.is_empty() && spec.name != current.spec.name;
    if renamed || !spec.data.is_empty() {
        return Err(labels_only("secret"));
    }
    Ok(())
}

/// The same for configs, whose inspect shows the data: sending it back
/// unchanged is fine.
pub fn check_config_update(current: &Config, spec: &ConfigSpec) -> ControlResult<()> {
    let renamed = !spec.name.is_empty() && spec.name != current.spec.name;
    let new_data = !spec.data.is_empty() && spec.data != current.spec.data;
    if renamed || new_data {
        return Err(labels_only("config"));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
