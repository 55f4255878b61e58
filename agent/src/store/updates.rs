//! A service's rolling update as raft keeps it: where it stands
//! (`UpdateStatus`, which `service inspect` shows) and the two commands that
//! move it besides `UpdateService`: the orchestrator's progress, and a
//! rollback (automatic or asked for). Keeping this in raft, not in the
//! leader's memory, is what lets a new leader carry on an update where the
//! old one was (swarmkit keeps the status there too).

use serde::{Deserialize, Serialize};

use super::services::ServiceId;
use super::state::{State, StoreError};

/// Swarm's update states, as the Engine API spells them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateState {
    Updating,
    Paused,
    Completed,
    RollbackStarted,
    RollbackPaused,
    RollbackCompleted,
}

impl UpdateState {
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateState::Updating => "updating",
            UpdateState::Paused => "paused",
            UpdateState::Completed => "completed",
            UpdateState::RollbackStarted => "rollback_started",
            UpdateState::RollbackPaused => "rollback_paused",
            UpdateState::RollbackCompleted => "rollback_completed",
        }
    }
    /// A rollback, running or ended: the rollback config applies.
    pub fn is_rollback(self) -> bool {
        matches!(
            self,
            UpdateState::RollbackStarted
                | UpdateState::RollbackPaused
                | UpdateState::RollbackCompleted
        )
    }
    pub fn is_paused(self) -> bool {
        matches!(self, UpdateState::Paused | UpdateState::RollbackPaused)
    }
    pub fn is_running(self) -> bool {
        matches!(self, UpdateState::Updating | UpdateState::RollbackStarted)
    }
}

/// The Engine API's `UpdateStatus`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateStatus {
    pub state: UpdateState,
    pub started_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
    pub message: String,
}

/// Swarm's messages.
pub const UPDATE_IN_PROGRESS: &str = "update in progress";
pub const UPDATE_COMPLETED: &str = "update completed";
pub const ROLLBACK_COMPLETED: &str = "rollback completed";
pub const MANUAL_ROLLBACK: &str = "manually requested rollback";

impl UpdateStatus {
    pub fn started(state: UpdateState, message: &str, now: &str) -> UpdateStatus {
        UpdateStatus {
            state,
            started_at: now.to_string(),
            completed_at: None,
            message: message.to_string(),
        }
    }
}

impl State {
    /// The orchestrator's word on an update. It decided about the update
    /// whose tasks have `spec_version`: if the service has moved on to
    /// another since (the user updated it in between), the decision is
    /// stale and dropped.
    pub(super) fn set_update_status(
        &mut self,
        index: u64,
        id: &ServiceId,
        spec_version: u64,
        status: &Option<UpdateStatus>,
        now: &str,
    ) -> Result<Option<u64>, StoreError> {
        let Some(s) = self.services.get_mut(id) else {
            return Ok(None);
        };
        if s.spec_version != spec_version || s.update_status == *status {
            return Ok(None);
        }
        s.update_status = status.clone();
        s.version = index;
        s.updated_at = now.to_string();
        self.task_index.hints.service(id);
        Ok(Some(index))
    }

    /// The previous spec becomes the spec again (and the current one the
    /// previous, as in Swarm, so a rollback can itself be rolled back by
    /// hand). The tasks that still run the previous spec are kept: the
    /// spec version goes back with the spec, so only the slots the update
    /// reached are replaced. `version` guards a user's rollback (it must be
    /// the version they read); `spec_version` the orchestrator's (it must
    /// still be the update that failed).
    pub(super) fn rollback_service(
        &mut self,
        index: u64,
        id: &ServiceId,
        guard: &RollbackGuard,
        message: &str,
        now: &str,
    ) -> Result<Option<u64>, StoreError> {
        let current = self
            .services
            .get(id)
            .ok_or_else(|| StoreError::not_found(format!("service {id} not found")))?;
        match guard {
            RollbackGuard::Version(v) if current.version != *v => {
                return Err(StoreError::conflict(format!(
                    "update out of sequence: service {} is at version {}, the rollback was for version {v}; inspect the service again and retry",
                    current.name(),
                    current.version
                )));
            }
            RollbackGuard::SpecVersion(v) if current.spec_version != *v => return Ok(None),
            _ => {}
        }
        let Some(previous) = current.previous_spec.clone() else {
            return Err(StoreError::invalid(format!(
                "service {id} does not have a previous spec"
            )));
        };
        let old = current.endpoint.clone();
        let endpoint = self.allocate_endpoint(id, &previous, &old)?;
        if endpoint != old {
            self.task_index.hints.all_nodes();
        }
        let Some(s) = self.services.get_mut(id) else {
            return Err(StoreError::not_found(format!("service {id} not found")));
        };
        let tasks_change = s.spec.task_template != previous.task_template
            || s.spec.endpoint_spec != previous.endpoint_spec;
        s.endpoint = endpoint;
        s.previous_spec = Some(std::mem::replace(&mut s.spec, previous));
        if tasks_change {
            // A service written before `previous_spec_version` was kept has
            // 0 there: its tasks are all replaced, as before.
            let back = if s.previous_spec_version == 0 {
                index
            } else {
                s.previous_spec_version
            };
            s.previous_spec_version = std::mem::replace(&mut s.spec_version, back);
        } else {
            s.previous_spec_version = s.spec_version;
        }
        s.update_status = Some(UpdateStatus::started(
            UpdateState::RollbackStarted,
            message,
            now,
        ));
        s.version = index;
        s.updated_at = now.to_string();
        self.task_index.hints.service(id);
        Ok(Some(index))
    }
}

/// What a rollback must find to go ahead.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RollbackGuard {
    /// `service rollback`: the service version the user read.
    Version(u64),
    /// The orchestrator: the spec version of the update that failed.
    SpecVersion(u64),
}
