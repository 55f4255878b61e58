//! A simulated executor for the scale benchmark: containers start at once
//! and run until stopped. Never used for a user-visible feature.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::Notify;

use super::{
    ContainerSpec, ContainerState, ContainerStatus, ExecError, ExecResult, Executor, Exit, Table,
};

#[derive(Default)]
pub struct SimulatedExecutor {
    table: Table,
    changed: Arc<Notify>,
}

impl SimulatedExecutor {
    pub fn new() -> Self {
        Self::default()
    }

    fn status(&self, id: &str) -> Option<ContainerStatus> {
        self.table.lock().get(id).map(|c| c.status)
    }
}

impl Executor for SimulatedExecutor {
    fn prepare<'a>(&'a self, spec: &'a ContainerSpec) -> BoxFuture<'a, ExecResult<()>> {
        self.table
            .lock()
            .entry(spec.id.clone())
            .or_insert_with(|| ContainerState {
                id: spec.id.clone(),
                labels: spec.labels.clone(),
                status: ContainerStatus::Created,
            });
        futures::future::ready(Ok(())).boxed()
    }

    fn start<'a>(&'a self, id: &'a str) -> BoxFuture<'a, ExecResult<u32>> {
        let r = match self.table.lock().get_mut(id) {
            Some(c) => {
                c.status = ContainerStatus::Running { pid: 1 };
                Ok(1)
            }
            None => Err(ExecError::NotFound(id.to_string())),
        };
        futures::future::ready(r).boxed()
    }

    fn wait<'a>(&'a self, id: &'a str) -> BoxFuture<'a, ExecResult<Exit>> {
        async move {
            loop {
                let notified = self.changed.notified();
                match self.status(id) {
                    None => return Err(ExecError::NotFound(id.to_string())),
                    Some(ContainerStatus::Exited { code }) => return Ok(Exit { code }),
                    Some(_) => notified.await,
                }
            }
        }
        .boxed()
    }

    fn stop<'a>(
        &'a self,
        id: &'a str,
        _signal: Option<&'a str>,
        _grace: Duration,
    ) -> BoxFuture<'a, ExecResult<()>> {
        if let Some(c) = self.table.lock().get_mut(id) {
            if !matches!(c.status, ContainerStatus::Exited { .. }) {
                // 143 = 128 + SIGTERM, what a real container stopped by
                // SIGTERM reports.
                c.status = ContainerStatus::Exited { code: 143 };
            }
        }
        self.changed.notify_waiters();
        futures::future::ready(Ok(())).boxed()
    }

    fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, ExecResult<()>> {
        self.table.lock().remove(id);
        self.changed.notify_waiters();
        futures::future::ready(Ok(())).boxed()
    }

    fn list(&self) -> BoxFuture<'_, ExecResult<Vec<ContainerState>>> {
        let all = self.table.lock().values().cloned().collect();
        futures::future::ready(Ok(all)).boxed()
    }

    fn log_path(&self, _id: &str) -> Option<PathBuf> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lifecycle() {
        let ex = SimulatedExecutor::new();
        let spec = ContainerSpec {
            id: "t1".into(),
            ..Default::default()
        };
        ex.prepare(&spec).await.unwrap();
        assert_eq!(ex.start("t1").await.unwrap(), 1);
        let waiter = tokio::spawn({
            let ex = Arc::new(ex);
            let ex2 = ex.clone();
            async move {
                let w = tokio::spawn(async move { ex2.wait("t1").await });
                tokio::task::yield_now().await;
                ex.stop("t1", None, Duration::from_secs(1)).await.unwrap();
                w.await.unwrap()
            }
        });
        assert_eq!(waiter.await.unwrap().unwrap(), Exit { code: 143 });
    }
}
