//! Commands run inside a running container (health probes): an extra
//! process in the container's task, made from the container's own process
//! spec (user, env, working directory, capabilities) with other arguments.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use containerd_client::services::v1::{
    DeleteProcessRequest, ExecProcessRequest, GetContainerRequest, KillRequest, StartRequest,
    WaitRequest,
};
use containerd_client::tonic::Code;

use super::super::health::{Probe, LABEL};
use super::{status_err, Containerd, KILL_PATIENCE};
use crate::executor::{ExecError, ExecResult};

const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";

/// Exec ids are unique within a container; a counter keeps two probes of
/// one container (a slow one and the next) apart.
static NEXT_EXEC: AtomicU64 = AtomicU64::new(1);

impl Containerd {
    async fn container(&self, id: &str) -> ExecResult<containerd_client::services::v1::Container> {
        match self
            .api
            .containers()
            .get(self.api.req(GetContainerRequest { id: id.into() }))
            .await
        {
            Ok(r) => r
                .into_inner()
                .container
                .ok_or_else(|| ExecError::NotFound(id.to_string())),
            Err(s) if s.code() == Code::NotFound => Err(ExecError::NotFound(id.to_string())),
            Err(s) => Err(status_err("get container", id, s)),
        }
    }

    pub(super) async fn do_probe(&self, id: &str) -> ExecResult<Option<Probe>> {
        let c = self.container(id).await?;
        match c.labels.get(LABEL) {
            None => Ok(None),
            Some(json) => serde_json::from_str(json).map(Some).map_err(|e| {
                ExecError::Runtime(format!(
                    "container {id}: unreadable health check label: {e}"
                ))
            }),
        }
    }

    pub(super) async fn do_exec(
        &self,
        id: &str,
        argv: &[String],
        timeout: Duration,
    ) -> ExecResult<i64> {
        let c = self.container(id).await?;
        let spec = c
            .spec
            .ok_or_else(|| ExecError::Runtime(format!("container {id} has no runtime spec")))?;
        let spec: serde_json::Value = serde_json::from_slice(&spec.value)
            .map_err(|e| ExecError::Runtime(format!("container {id}: runtime spec: {e}")))?;
        let mut process = spec
            .get("process")
            .cloned()
            .ok_or_else(|| ExecError::Runtime(format!("container {id}: no process in its spec")))?;
        process["args"] = serde_json::json!(argv);
        process["terminal"] = serde_json::Value::Bool(false);
        let value = serde_json::to_vec(&process)
            .map_err(|e| ExecError::Runtime(format!("encoding the exec process: {e}")))?;
        let exec_id = format!("probe-{}", NEXT_EXEC.fetch_add(1, Ordering::Relaxed));
        self.api
            .tasks()
            .exec(self.api.req(ExecProcessRequest {
                container_id: id.into(),
                stdin: String::new(),
                stdout: String::new(),
                stderr: String::new(),
                terminal: false,
                spec: Some(prost_types::Any {
                    type_url: PROCESS_TYPE_URL.into(),
                    value,
                }),
                exec_id: exec_id.clone(),
            }))
            .await
            .map_err(|e| status_err("exec in", id, e))?;
        let outcome = self.run_exec(id, &exec_id, timeout).await;
        if let Err(s) = self
            .api
            .tasks()
            .delete_process(self.api.req(DeleteProcessRequest {
                container_id: id.into(),
                exec_id: exec_id.clone(),
            }))
            .await
        {
            if s.code() != Code::NotFound {
                tracing::debug!(
                    container = id,
                    exec_id,
                    "delete exec process: {}",
                    s.message()
                );
            }
        }
        outcome
    }

    async fn run_exec(&self, id: &str, exec_id: &str, timeout: Duration) -> ExecResult<i64> {
        self.api
            .tasks()
            .start(self.api.req(StartRequest {
                container_id: id.into(),
                exec_id: exec_id.into(),
            }))
            .await
            .map_err(|e| status_err("start exec in", id, e))?;
        let api = self.api.clone();
        let (cid, eid) = (id.to_string(), exec_id.to_string());
        let mut waiter = tokio::spawn(async move {
            api.tasks()
                .wait(api.req(WaitRequest {
                    container_id: cid,
                    exec_id: eid,
                }))
                .await
                .map(|r| r.into_inner().exit_status)
        });
        match tokio::time::timeout(timeout, &mut waiter).await {
            Ok(Ok(Ok(code))) => Ok(code as i64),
            Ok(Ok(Err(s))) => Err(status_err("wait exec in", id, s)),
            Ok(Err(e)) => Err(ExecError::Runtime(format!("waiting for exec in {id}: {e}"))),
            Err(_) => {
                // Docker's wording: the probe took longer than its timeout.
                let _ = self
                    .api
                    .tasks()
                    .kill(self.api.req(KillRequest {
                        container_id: id.into(),
                        exec_id: exec_id.into(),
                        signal: 9,
                        all: false,
                    }))
                    .await;
                let _ = tokio::time::timeout(KILL_PATIENCE, waiter).await;
                Err(ExecError::Runtime(format!(
                    "Health check exceeded timeout ({timeout:?})"
                )))
            }
        }
    }
}
