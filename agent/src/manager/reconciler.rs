//! The leader's reconciliation loop: after every change to the state (and
//! when a restart delay runs out), run the orchestrator and the scheduler
//! over the services that changed and write what they decided.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{orchestrator, Manager};

/// Lets a burst of commits (a worker's reports, a create) settle into one
/// pass.
const DEBOUNCE: Duration = Duration::from_millis(1);
/// Commands of one pass in flight at once (each CreateTasks carries up to
/// 500 tasks).
const IN_FLIGHT: usize = 2;
/// Even with no change, look again now and then (a clock-based decision
/// that was missed, a write that failed).
const IDLE_PASS: Duration = Duration::from_secs(5);

/// What one pass decided.
struct Pass {
    commands: Vec<crate::store::Command>,
    wake_in: Option<Duration>,
}

/// Decide, over the services that changed (`full`: over all of them).
/// Runs on a blocking thread: with 100k tasks a full pass takes tens of
/// milliseconds, which on a 2-core board must not hold up raft's tasks.
fn decide(state: &crate::raft::StateReader, full: bool) -> Pass {
    let state = state.read();
    // Taken under the read lock: a write applied after this marks its
    // services for the next pass.
    let dirty = state.task_index.hints.take_dirty();
    let scope = (!full && !dirty.everything).then_some(&dirty.services);
    if scope.is_some_and(|s| s.is_empty()) && state.task_index.pending.is_empty() {
        return Pass {
            commands: Vec::new(),
            wake_in: None,
        };
    }
    let now = time::OffsetDateTime::now_utc();
    let mut new_id = || crate::pki::new_node_id().0;
    let plan = orchestrator::reconcile_scoped(&state, now, &mut new_id, scope);
    let commands =
        orchestrator::with_placements(&state, plan.commands, &crate::util::now_rfc3339());
    Pass {
        commands,
        wake_in: plan.wake_in,
    }
}

pub(super) async fn run(m: Arc<Manager>, stop: CancellationToken) {
    let mut applied = m.state.watch();
    // Passes in a row that wrote something: a plan that keeps repeating
    // (a bug, or a write the state machine keeps skipping) must not spin.
    let mut busy = 0u32;
    // The first pass of a new leader looks at everything, and so does one
    // after a lost write (its services are not marked again) or a timer.
    let mut full = true;
    // When a restart delay runs out: kept across the passes that look at
    // other services only.
    let mut wake_at: Option<tokio::time::Instant> = None;
    loop {
        applied.borrow_and_update();
        let reader = m.state.clone();
        let Ok(pass) = tokio::task::spawn_blocking(move || decide(&reader, full)).await else {
            warn!("a reconciliation pass panicked; looking at everything again");
            full = true;
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            continue;
        };
        let now = tokio::time::Instant::now();
        if full {
            wake_at = None;
        }
        full = false;
        if let Some(w) = pass.wake_in {
            let at = now + w;
            wake_at = Some(wake_at.map_or(at, |x| x.min(at)));
        }
        let commands = pass.commands;
        if !commands.is_empty() {
            debug!(commands = commands.len(), "reconciling tasks");
            // A few at a time: the batching writer puts whatever is queued
            // into one entry, and a first pass over 100 services × 1,000
            // replicas is 200 CreateTasks commands (tens of MB): as one
            // entry it missed the write timeout and was decided again and
            // again. Pipelined this way an entry stays near 1 MiB or less.
            let results: Vec<_> = stream::iter(commands.into_iter().map(|c| {
                let m = m.clone();
                async move { m.propose(c).await }
            }))
            .buffered(IN_FLIGHT)
            .collect()
            .await;
            for r in results {
                if let Err(e) = r {
                    warn!("could not write a reconciliation decision: {e}");
                    full = true;
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                    break;
                }
            }
            busy += 1;
            if busy > 50 {
                warn!("the orchestrator keeps deciding the same changes; slowing down");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            continue;
        }
        busy = 0;
        let idle = now + IDLE_PASS;
        let until = wake_at.map_or(idle, |w| w.min(idle));
        tokio::select! {
            _ = stop.cancelled() => return,
            r = applied.changed() => {
                if r.is_err() { return }
                tokio::time::sleep(DEBOUNCE).await;
            }
            _ = tokio::time::sleep_until(until) => full = true,
        }
    }
}
