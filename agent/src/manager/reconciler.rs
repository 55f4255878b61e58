//! The leader's reconciliation loop: after every change to the state (and
//! when a restart delay runs out), run the orchestrator and the scheduler
//! over a snapshot and write what they decided, in one batch.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{orchestrator, scheduler, Manager};

/// Lets a burst of commits (a worker's reports, a create) settle into one
/// pass.
const DEBOUNCE: Duration = Duration::from_millis(1);
/// Commands of one pass in flight at once (each CreateTasks carries up to
/// 500 tasks).
const IN_FLIGHT: usize = 2;
/// Even with no change, look again now and then (a clock-based decision
/// that was missed, a write that failed).
const IDLE_PASS: Duration = Duration::from_secs(5);

pub(super) async fn run(m: Arc<Manager>, stop: CancellationToken) {
    let mut applied = m.state.watch();
    // Passes in a row that wrote something: a plan that keeps repeating
    // (a bug, or a write the state machine keeps skipping) must not spin.
    let mut busy = 0u32;
    loop {
        applied.borrow_and_update();
        let (commands, wake_in) = {
            let state = m.state.read();
            let now = time::OffsetDateTime::now_utc();
            let mut new_id = || crate::pki::new_node_id().0;
            let plan = orchestrator::reconcile(&state, now, &mut new_id);
            let mut commands = plan.commands;
            let created: Vec<&crate::store::Task> = commands
                .iter()
                .filter_map(|c| match c {
                    crate::store::Command::CreateTasks { tasks } => Some(tasks.iter()),
                    _ => None,
                })
                .flatten()
                .collect();
            let decisions = scheduler::schedule_including(&state, &created);
            drop(created);
            commands.extend(orchestrator::placement_commands(
                decisions,
                &crate::util::now_rfc3339(),
            ));
            (commands, plan.wake_in)
        };
        if !commands.is_empty() {
            debug!(commands = commands.len(), "reconciling tasks");
            // A few at a time: the batching writer puts whatever is queued
            // into one entry, and a first pass over 100 services × 1,000
            // replicas is 200 CreateTasks commands (tens of MB): as one
            // entry it missed the write timeout and was decided again and
            // again. Pipelined this way an entry stays near 1 MiB.
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
        let wait = wake_in.unwrap_or(IDLE_PASS).min(IDLE_PASS);
        tokio::select! {
            _ = stop.cancelled() => return,
            r = applied.changed() => {
                if r.is_err() { return }
                tokio::time::sleep(DEBOUNCE).await;
            }
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
