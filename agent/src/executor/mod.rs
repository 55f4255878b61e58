//! The executor seam: how a worker runs a task's container.
//!
//! The worker (`crate::worker`) decides *what* should run; an `Executor` only
//! does it. Two implementations:
//! - `containerd::Containerd` — real containers through containerd's gRPC API
//!   (runtime `io.containerd.runc.v2`, one containerd namespace per agent);
//! - `SimulatedExecutor` — starts "containers" instantly and keeps them in
//!   memory. It exists only for the simulated-fleet scale benchmark and says
//!   so in its name; no test of a user-visible feature uses it.
//!
//! Every method is idempotent where a retry can happen (prepare, remove,
//! stop of a stopped container), because the worker re-drives its tasks after
//! a restart or a lost answer.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;

pub mod containerd;
pub mod health;
pub mod image;
pub mod logdriver;
pub mod logs;
pub mod pull;
pub mod simulated;
pub mod spec;

pub use containerd::Containerd;
pub use simulated::SimulatedExecutor;

/// The executor of a node without a container runtime: every task assigned
/// to it is rejected with the reason, so the user sees why in `service ps`
/// (and the orchestrator places it elsewhere).
pub struct NoRuntime {
    reason: String,
}

impl NoRuntime {
    pub fn new(reason: &str) -> NoRuntime {
        NoRuntime {
            reason: reason.to_string(),
        }
    }
}

impl Executor for NoRuntime {
    fn prepare<'a>(&'a self, _spec: &'a ContainerSpec) -> BoxFuture<'a, ExecResult<()>> {
        Box::pin(futures::future::ready(Err(ExecError::Runtime(
            self.reason.clone(),
        ))))
    }
    fn start<'a>(&'a self, id: &'a str) -> BoxFuture<'a, ExecResult<u32>> {
        Box::pin(futures::future::ready(Err(ExecError::NotFound(id.into()))))
    }
    fn wait<'a>(&'a self, id: &'a str) -> BoxFuture<'a, ExecResult<Exit>> {
        Box::pin(futures::future::ready(Err(ExecError::NotFound(id.into()))))
    }
    fn stop<'a>(
        &'a self,
        _id: &'a str,
        _signal: Option<&'a str>,
        _grace: Duration,
    ) -> BoxFuture<'a, ExecResult<()>> {
        Box::pin(futures::future::ready(Ok(())))
    }
    fn remove<'a>(&'a self, _id: &'a str) -> BoxFuture<'a, ExecResult<()>> {
        Box::pin(futures::future::ready(Ok(())))
    }
    fn list(&self) -> BoxFuture<'_, ExecResult<Vec<ContainerState>>> {
        Box::pin(futures::future::ready(Ok(Vec::new())))
    }
    fn log_path(&self, _id: &str) -> Option<PathBuf> {
        None
    }
}

/// What a container is made from: everything the executor needs, already
/// resolved by the worker (no cluster types leak below this seam).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContainerSpec {
    /// The task ID; also the container ID in containerd.
    pub id: String,
    /// Docker-style name `service.slot.taskid`, kept as a label.
    pub name: String,
    /// Image reference as the user gave it (`busybox:latest`, `reg:5000/x`).
    pub image: String,
    /// Overrides the image's entrypoint when non-empty.
    pub command: Vec<String>,
    /// Overrides the image's cmd when non-empty.
    pub args: Vec<String>,
    /// `KEY=value`, appended to (and overriding) the image's env.
    pub env: Vec<String>,
    pub workdir: Option<String>,
    /// `uid[:gid]` or a name from the image's /etc/passwd.
    pub user: Option<String>,
    /// Defaults to the first 12 characters of the ID, like Docker.
    pub hostname: Option<String>,
    pub mounts: Vec<Mount>,
    /// Files made from secrets and configs: written to a tmpfs owned by the
    /// executor, never to the worker's disk, and bind-mounted read-only.
    pub files: Vec<FileMount>,
    /// Bytes; None = unlimited.
    pub memory_limit: Option<i64>,
    /// 1e9 = one CPU; None = unlimited.
    pub nano_cpus: Option<i64>,
    /// E.g. "SIGTERM" (default) or "SIGQUIT".
    pub stop_signal: Option<String>,
    /// How long stop waits after the stop signal before SIGKILL (default 10 s).
    pub stop_grace: Option<Duration>,
    /// Join this network namespace (a bind-mounted path, e.g.
    /// /run/netns/<bridge>-<id>, see `network`); None = the host's network.
    pub netns: Option<PathBuf>,
    pub labels: HashMap<String, String>,
    /// Credentials for pulling the image (the service's
    /// `--with-registry-auth`); None pulls anonymously.
    pub registry_auth: Option<pull::Credentials>,
    /// The service's health check (`--health-*`), over the image's.
    pub healthcheck: Option<health::Healthcheck>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum MountKind {
    /// A host path.
    Bind,
    /// A named volume: a directory under the agent's data dir, created on use.
    Volume,
    /// A fresh tmpfs.
    Tmpfs,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Mount {
    pub kind: MountKind,
    /// Host path (bind) or volume name; empty for tmpfs.
    pub source: String,
    pub target: String,
    pub read_only: bool,
    /// tmpfs size in bytes.
    pub tmpfs_size: Option<i64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct FileMount {
    /// Absolute path inside the container (`/run/secrets/<name>`).
    pub target: String,
    pub data: Vec<u8>,
    pub mode: u32,
}

/// What the executor knows of one of its containers.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerState {
    pub id: String,
    pub labels: HashMap<String, String>,
    pub status: ContainerStatus,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerStatus {
    /// Created, never started (or its task is gone).
    Created,
    Running {
        pid: u32,
    },
    Exited {
        code: i64,
    },
}

/// How a container ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    pub code: i64,
}

/// Why an executor call failed; the message is shown in the task's ERROR
/// column, so it names the image, the path or the containerd call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ExecError {
    /// The image is not present and could not be obtained.
    #[error("{0}")]
    Image(String),
    /// Bad task spec (unknown user, bad signal, ...): not worth retrying.
    #[error("{0}")]
    InvalidSpec(String),
    /// No container with this ID.
    #[error("no such container: {0}")]
    NotFound(String),
    /// containerd unreachable or failing.
    #[error("{0}")]
    Runtime(String),
}

pub type ExecResult<T> = Result<T, ExecError>;

/// The lifecycle of one container: prepare → start → wait → stop → remove.
pub trait Executor: Send + Sync + 'static {
    /// Make sure the image is present (and unpacked) and create the container
    /// (not started). Idempotent: an existing container with this ID is kept.
    fn prepare<'a>(&'a self, spec: &'a ContainerSpec) -> BoxFuture<'a, ExecResult<()>>;
    /// Start a prepared container; returns its PID.
    fn start<'a>(&'a self, id: &'a str) -> BoxFuture<'a, ExecResult<u32>>;
    /// Wait until the container exits (returns at once if it has).
    fn wait<'a>(&'a self, id: &'a str) -> BoxFuture<'a, ExecResult<Exit>>;
    /// Send the stop signal, SIGKILL after `grace`; Ok if already stopped.
    fn stop<'a>(
        &'a self,
        id: &'a str,
        signal: Option<&'a str>,
        grace: Duration,
    ) -> BoxFuture<'a, ExecResult<()>>;
    /// Delete the container, its task, snapshot and secret files; Ok if gone.
    fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, ExecResult<()>>;
    /// Every container of this agent (for re-adoption after a restart).
    fn list(&self) -> BoxFuture<'_, ExecResult<Vec<ContainerState>>>;
    /// Where the container's log (JSON lines, see `logs`) is written.
    fn log_path(&self, id: &str) -> Option<PathBuf>;
    /// The health probe the container was made with (`health`), if any.
    fn probe<'a>(&'a self, _id: &'a str) -> BoxFuture<'a, ExecResult<Option<health::Probe>>> {
        Box::pin(futures::future::ready(Ok(None)))
    }
    /// Run `argv` in the running container, as its own user, env and
    /// directory, with no input or output; its exit code. Killed after
    /// `timeout` (an error).
    fn exec<'a>(
        &'a self,
        id: &'a str,
        _argv: &'a [String],
        _timeout: Duration,
    ) -> BoxFuture<'a, ExecResult<i64>> {
        Box::pin(futures::future::ready(Err(ExecError::Runtime(format!(
            "this executor cannot run commands in container {id}"
        )))))
    }
    /// Import an image tarball (OCI layout or `docker save`); returns the
    /// names loaded. Only a real runtime holds images.
    fn load_image(&self, _tar: Vec<u8>) -> BoxFuture<'_, ExecResult<Vec<String>>> {
        Box::pin(futures::future::ready(Err(ExecError::Runtime(
            "this node has no container runtime to load images into: start its agent with --containerd <socket>".into(),
        ))))
    }
    /// The images this node holds.
    fn images(&self) -> BoxFuture<'_, ExecResult<Vec<image::ImageInfo>>> {
        Box::pin(futures::future::ready(Ok(Vec::new())))
    }
    /// Pull an image from its registry now, even if one of that name is
    /// here (`image pull`), reporting per-layer progress.
    fn pull_image<'a>(
        &'a self,
        _reference: &'a str,
        _opts: &'a pull::PullOptions,
        _progress: pull::ProgressFn<'a>,
    ) -> BoxFuture<'a, Result<pull::Pulled, pull::PullError>> {
        Box::pin(futures::future::ready(Err(pull::PullError::Store(
            ExecError::Runtime(
                "this node has no container runtime to pull images into: start its agent with --containerd <socket>".into(),
            ),
        ))))
    }
}

/// Shared by the simulated executor: a container table behind a std mutex
/// that is never held across an await.
#[derive(Default)]
struct Table(Mutex<HashMap<String, ContainerState>>);

impl Table {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ContainerState>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}
