//! The worker's link to the managers (`worker::Cluster`): assignments as a
//! long poll and task reports, through this node's own manager when it is
//! one, else through the managers it knows.

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;

use crate::rpc::{Assignments, Reply, Request};
use crate::store::TaskStatusUpdate;

use super::{session, Running};

/// Longer than the managers' long poll (20 s), so an idle poll ends with an
/// answer rather than a timeout.
const POLL_TIMEOUT: Duration = Duration::from_secs(30);
const REPORT_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) struct Link {
    running: Weak<Running>,
}

impl Link {
    pub(super) fn new(running: &Arc<Running>) -> Link {
        Link {
            running: Arc::downgrade(running),
        }
    }
}

impl crate::worker::Cluster for Link {
    fn assignments(
        &self,
        known: u64,
        have: Vec<u64>,
    ) -> BoxFuture<'_, Result<Assignments, String>> {
        async move {
            let running = self.running.upgrade().ok_or("the node is leaving")?;
            let poll = Request::Assignments { known, have };
            match session::call_with_timeout(&running, poll, POLL_TIMEOUT).await {
                Ok(Reply::Assignments(a)) => Ok(a),
                Ok(Reply::Error(e)) => Err(e.to_string()),
                Ok(other) => Err(format!("unexpected answer: {other:?}")),
                Err(e) => Err(e.to_string()),
            }
        }
        .boxed()
    }

    fn report(&self, updates: Vec<TaskStatusUpdate>) -> BoxFuture<'_, Result<(), String>> {
        async move {
            let running = self.running.upgrade().ok_or("the node is leaving")?;
            match session::call_with_timeout(
                &running,
                Request::ReportTasks { updates },
                REPORT_TIMEOUT,
            )
            .await
            {
                Ok(Reply::Ok) => Ok(()),
                Ok(Reply::Error(e)) => Err(e.to_string()),
                Ok(other) => Err(format!("unexpected answer: {other:?}")),
                Err(e) => Err(e.to_string()),
            }
        }
        .boxed()
    }
}
