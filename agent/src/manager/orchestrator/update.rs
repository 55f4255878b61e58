//! The rolling updater's decisions, after swarmkit's `update/updater.go`:
//! how many out-of-date tasks one pass may replace, and when an update
//! pauses, rolls back or completes. Pure: it reads the service (its
//! `UpdateStatus` is in raft) and its tasks, and the clock is an argument,
//! so a new leader decides exactly what the old one would have, from
//! where the update stands (swarmkit's leader forgets its failure counts
//! and monitor clocks; here they are read back from the tasks).
//!
//! - A slot is busy from the moment its replacement is made until the
//!   replacement has run for `delay` (in flight, then cooling down): at
//!   most `parallelism` slots are busy at once (0: all of them).
//! - A failure is a task of this update that ended on its own (failed,
//!   rejected, or exited) before it ran, or within `monitor` of starting.
//!   More failures than `max_failure_ratio` of the slots trigger the
//!   failure action: pause, roll back (an update only: a rollback never
//!   rolls back), or continue.
//! - When no slot is out of date and the last replacement has run for
//!   `monitor`, the update is completed.

use std::time::Duration;

use bollard_stubs::models as m;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::store::{Service, Task, TaskState, UpdateState, UpdateStatus};

/// Docker's defaults (`api/defaults/service.go`).
const DEFAULT_MONITOR: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureAction {
    Pause,
    Continue,
    Rollback,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Policy {
    /// 0: every slot at once.
    pub parallelism: u64,
    pub delay: Duration,
    pub action: FailureAction,
    pub monitor: Duration,
    pub max_failure_ratio: f64,
    pub start_first: bool,
}

fn nanos(n: Option<i64>) -> Duration {
    Duration::from_nanos(n.unwrap_or(0).max(0) as u64)
}

impl Policy {
    /// The update config, or while rolling back the rollback config, with
    /// Docker's defaults for what is left out: 1, 0 s, pause, 5 s, 0,
    /// stop-first. A monitor of 0 means the default; a parallelism of 0
    /// means all.
    pub fn of(spec: &crate::store::ServiceSpec, rollback: bool) -> Policy {
        let (parallelism, delay, action, monitor, ratio, start_first) = if rollback {
            use m::ServiceSpecRollbackConfigFailureActionEnum as A;
            let r = spec.rollback_config.clone().unwrap_or_default();
            (
                r.parallelism,
                r.delay,
                match r.failure_action {
                    Some(A::CONTINUE) => FailureAction::Continue,
                    _ => FailureAction::Pause,
                },
                r.monitor,
                r.max_failure_ratio,
                r.order == Some(m::ServiceSpecRollbackConfigOrderEnum::START_FIRST),
            )
        } else {
            use m::ServiceSpecUpdateConfigFailureActionEnum as A;
            let u = spec.update_config.clone().unwrap_or_default();
            (
                u.parallelism,
                u.delay,
                match u.failure_action {
                    Some(A::CONTINUE) => FailureAction::Continue,
                    Some(A::ROLLBACK) => FailureAction::Rollback,
                    _ => FailureAction::Pause,
                },
                u.monitor,
                u.max_failure_ratio,
                u.order == Some(m::ServiceSpecUpdateConfigOrderEnum::START_FIRST),
            )
        };
        Policy {
            parallelism: parallelism.unwrap_or(1).max(0) as u64,
            delay: nanos(delay),
            action,
            monitor: match nanos(monitor) {
                d if d.is_zero() => DEFAULT_MONITOR,
                d => d,
            },
            max_failure_ratio: ratio.unwrap_or(0.0),
            start_first,
        }
    }
}

/// What the updater asks of the service.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    Status(UpdateStatus),
    Rollback { message: String },
}

/// One pass's decision about a service's update.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// Out-of-date tasks this pass may replace.
    pub budget: u64,
    pub start_first: bool,
    pub change: Option<Change>,
    pub wake_in: Option<Duration>,
}

fn parse(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

fn until(now: OffsetDateTime, at: OffsetDateTime) -> Duration {
    (at - now).try_into().unwrap_or(Duration::ZERO)
}

/// Did a task of the update end on its own, too early?
fn failed_early(t: &Task, monitor: Duration) -> bool {
    if !matches!(
        t.status.state,
        TaskState::Failed | TaskState::Rejected | TaskState::Complete
    ) {
        return false;
    }
    let Some(ran) = t.running_since.as_deref().and_then(parse) else {
        return true;
    };
    let ended = parse(&t.status.timestamp).unwrap_or(ran);
    ended - ran < monitor
}

/// The pass's decision. `tasks` are all the service's tasks, `slots` how
/// many it has (replicas, or a global service's nodes).
pub fn step(service: &Service, tasks: &[&Task], slots: u64, now: OffsetDateTime) -> Step {
    let wanted = |t: &&&Task| t.desired_state <= TaskState::Running;
    let current = |t: &&&Task| t.spec_version == service.spec_version;
    let dirty = tasks.iter().filter(wanted).filter(|t| !current(t)).count() as u64;
    let now_text = now.format(&Rfc3339).unwrap_or_default();
    let mut status = service.update_status.clone();
    let rollback = status.as_ref().is_some_and(|s| s.state.is_rollback());
    let policy = Policy::of(&service.spec, rollback);
    // Even with nothing to replace, a start-first slot keeps its old task
    // until the new one runs.
    let idle = Step {
        budget: 0,
        start_first: policy.start_first,
        change: None,
        wake_in: None,
    };
    let mut change = None;
    let mut starting = false;
    match status.as_ref().map(|s| s.state) {
        Some(s) if s.is_paused() => return idle,
        Some(s) if s.is_running() => {}
        // Out-of-date tasks and no update under way: a service updated
        // before updates were kept, or scaled during its update (which
        // clears the status, as in Swarm). Start one now.
        _ if dirty > 0 => {
            starting = true;
            let s = UpdateStatus::started(
                UpdateState::Updating,
                crate::store::updates::UPDATE_IN_PROGRESS,
                &now_text,
            );
            change = Some(Change::Status(s.clone()));
            status = Some(s);
        }
        _ => return idle,
    }
    let Some(status) = status else {
        return idle;
    };
    // A new update after a rollback follows the update config again.
    let rollback = rollback && !starting;
    let policy = Policy::of(&service.spec, rollback);
    let started = parse(&status.started_at).unwrap_or(now);
    // This update's tasks: of the current spec and made since it began (a
    // rollback brings back the spec version of tasks made long before).
    let ours: Vec<&Task> = tasks
        .iter()
        .filter(current)
        .filter(|t| parse(&t.created_at).is_none_or(|c| c >= started))
        .copied()
        .collect();
    let mut failed: Vec<&Task> = ours
        .iter()
        .filter(|t| failed_early(t, policy.monitor))
        .copied()
        .collect();
    failed.sort_by(|a, b| a.status.timestamp.cmp(&b.status.timestamp));
    if let Some(first) = failed.first() {
        let ratio = failed.len() as f64 / slots.max(1) as f64;
        if ratio > policy.max_failure_ratio {
            let why = format!("due to failure or early termination of task {}", first.id);
            let pause = |state, what: &str| {
                let mut s = status.clone();
                s.state = state;
                s.message = format!("{what} paused {why}");
                Change::Status(s)
            };
            match (policy.action, rollback) {
                (FailureAction::Continue, _) => {}
                (FailureAction::Rollback, false) => {
                    return idle.with(Change::Rollback {
                        message: format!("update rolled back {why}"),
                    })
                }
                (_, false) => return idle.with(pause(UpdateState::Paused, "update")),
                (_, true) => return idle.with(pause(UpdateState::RollbackPaused, "rollback")),
            }
        }
    }
    let live: Vec<&Task> = ours
        .iter()
        .filter(|t| t.desired_state <= TaskState::Running)
        .copied()
        .collect();
    let in_flight = live
        .iter()
        .filter(|t| t.status.state < TaskState::Running)
        .count() as u64;
    let ran_at: Vec<OffsetDateTime> = live
        .iter()
        .filter(|t| t.status.state == TaskState::Running)
        .filter_map(|t| t.running_since.as_deref().and_then(parse))
        .collect();
    let mut wake: Option<Duration> = None;
    let mut wake_at = |at: OffsetDateTime| {
        let d = until(now, at).max(Duration::from_millis(10));
        wake = Some(wake.map_or(d, |w| w.min(d)));
    };
    let mut cooling = 0;
    for &r in &ran_at {
        if r + policy.delay > now {
            cooling += 1;
            wake_at(r + policy.delay);
        }
    }
    let busy = in_flight + cooling;
    let budget = match policy.parallelism {
        0 => dirty,
        p => p.saturating_sub(busy).min(dirty),
    };
    if dirty == 0 && in_flight == 0 {
        // Settled: complete once the last replacement has been watched for
        // the monitor period (a task failing in it still counts).
        match ran_at.iter().max() {
            Some(&last) if last + policy.monitor > now => wake_at(last + policy.monitor),
            _ => {
                let (state, message) = if rollback {
                    (
                        UpdateState::RollbackCompleted,
                        crate::store::updates::ROLLBACK_COMPLETED,
                    )
                } else {
                    (
                        UpdateState::Completed,
                        crate::store::updates::UPDATE_COMPLETED,
                    )
                };
                let mut s = status.clone();
                s.state = state;
                s.message = message.to_string();
                s.completed_at = Some(now_text);
                change = Some(Change::Status(s));
            }
        }
    }
    Step {
        budget,
        start_first: policy.start_first,
        change,
        wake_in: wake,
    }
}

impl Step {
    fn with(self, change: Change) -> Step {
        Step {
            change: Some(change),
            ..self
        }
    }
}

#[cfg(test)]
mod tests;
