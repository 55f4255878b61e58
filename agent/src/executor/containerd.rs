//! The real executor: containers run by containerd (runtime
//! `io.containerd.runc.v2`, snapshotter `overlayfs`) in one containerd
//! namespace per agent.
//!
//! Tasks outlive the agent: they belong to their runc shim, and their
//! output goes through a log driver the shim starts (`binary://` stdio,
//! see `logdriver`), so an agent restart neither kills nor deafens them;
//! `list` finds them again.
//!
//! Host state per container, under `state_dir`:
//! - `logs/<id>.log*` — the task's output (JSON lines, `logs`);
//! - `secrets/<id>/` — a tmpfs holding its secret and config files,
//!   bind-mounted read-only into the container (never on disk);
//! - `volumes/<name>/` — named volumes.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::snapshots::{MountsRequest, PrepareSnapshotRequest};
use containerd_client::services::v1::{
    containers_client::ContainersClient, content_client::ContentClient, diff_client::DiffClient,
    images_client::ImagesClient, leases_client::LeasesClient,
    snapshots::snapshots_client::SnapshotsClient, tasks_client::TasksClient,
    version_client::VersionClient,
};
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateRequest as CreateLeaseRequest, CreateTaskRequest,
    DeleteContainerRequest, DeleteRequest as DeleteLeaseRequest, DeleteTaskRequest,
    GetContainerRequest, GetRequest, KillRequest, ListContainersRequest, StartRequest, WaitRequest,
};
use containerd_client::tonic::metadata::{Ascii, MetadataValue};
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{Code, Request, Status};
use containerd_client::types::v1::Status as ProcStatus;
use containerd_client::types::Mount as CdMount;
use futures::future::BoxFuture;
use futures::FutureExt;

use super::image::{self, SNAPSHOTTER};
use super::pull::{self, ProgressFn, PullError, PullOptions, Pulled, RegistryConfig};
use super::spec;
use super::{
    ContainerSpec, ContainerState, ContainerStatus, ExecError, ExecResult, Executor, Exit,
};

pub const RUNTIME: &str = "io.containerd.runc.v2";
const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
/// Size of each container's secrets tmpfs: Swarm secrets are < 500 KiB and
/// configs < 1000 KiB; a few of each fit.
const SECRETS_TMPFS_BYTES: u64 = 16 * 1024 * 1024;
/// How long `stop` and `remove` wait for a SIGKILLed task to be reaped.
const KILL_PATIENCE: Duration = Duration::from_secs(10);
/// An import lease expires by itself if the agent dies mid-import.
const LEASE_TTL: Duration = Duration::from_secs(3600);

fn status_err(op: &str, what: &str, s: Status) -> ExecError {
    ExecError::Runtime(format!("containerd {op} {what}: {}", s.message()))
}

fn io_err(op: &str, path: &Path, e: std::io::Error) -> ExecError {
    ExecError::Runtime(format!("{op} {}: {e}", path.display()))
}

/// A containerd connection bound to a namespace (and, during an import, a
/// lease): every request goes out with them.
#[derive(Clone)]
pub(crate) struct Api {
    channel: Channel,
    namespace: MetadataValue<Ascii>,
    lease: Option<MetadataValue<Ascii>>,
}

impl Api {
    pub(crate) fn new(channel: Channel, namespace: &str) -> ExecResult<Api> {
        // containerd's rule: a label-like name ([a-z0-9] with '-', '_', '.').
        let ok = !namespace.is_empty()
            && namespace.len() <= 76
            && namespace
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        let value = MetadataValue::try_from(namespace)
            .ok()
            .filter(|_| ok)
            .ok_or_else(|| {
                ExecError::InvalidSpec(format!(
                    "invalid containerd namespace {namespace:?}: use letters, digits, '-', '_', '.'"
                ))
            })?;
        Ok(Api {
            channel,
            namespace: value,
            lease: None,
        })
    }

    pub(crate) fn with_lease(&self, lease: &str) -> Api {
        let mut a = self.clone();
        a.lease = MetadataValue::try_from(lease).ok();
        a
    }

    pub(crate) fn req<T>(&self, m: T) -> Request<T> {
        let mut r = Request::new(m);
        r.metadata_mut()
            .insert("containerd-namespace", self.namespace.clone());
        if let Some(l) = &self.lease {
            r.metadata_mut().insert("containerd-lease", l.clone());
        }
        r
    }

    pub(crate) fn content(&self) -> ContentClient<Channel> {
        ContentClient::new(self.channel.clone())
    }
    pub(crate) fn images(&self) -> ImagesClient<Channel> {
        ImagesClient::new(self.channel.clone())
    }
    pub(crate) fn snapshots(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(self.channel.clone())
    }
    pub(crate) fn diff(&self) -> DiffClient<Channel> {
        DiffClient::new(self.channel.clone())
    }
    pub(crate) fn containers(&self) -> ContainersClient<Channel> {
        ContainersClient::new(self.channel.clone())
    }
    pub(crate) fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.channel.clone())
    }

    pub(crate) async fn create_lease(&self) -> ExecResult<String> {
        let id = format!("apiary-{:016x}", rand::random::<u64>());
        let expire = time::OffsetDateTime::now_utc() + LEASE_TTL;
        let expire = expire
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(|e| ExecError::Runtime(format!("formatting lease expiry: {e}")))?;
        let mut labels = HashMap::new();
        labels.insert("containerd.io/gc.expire".to_string(), expire);
        LeasesClient::new(self.channel.clone())
            .create(self.req(CreateLeaseRequest {
                id: id.clone(),
                labels,
            }))
            .await
            .map_err(|e| status_err("create lease", &id, e))?;
        Ok(id)
    }

    pub(crate) async fn delete_lease(&self, id: &str) {
        if let Err(e) = LeasesClient::new(self.channel.clone())
            .delete(self.req(DeleteLeaseRequest {
                id: id.to_string(),
                sync: false,
            }))
            .await
        {
            // It expires by itself; not worth failing the import.
            tracing::warn!("containerd delete lease {id}: {}", e.message());
        }
    }
}

/// The containerd executor.
pub struct Containerd {
    api: Api,
    channel: Channel,
    namespace: String,
    state_dir: PathBuf,
    log_binary: PathBuf,
    /// How registries are reached (insecure ones) for pulls.
    registries: RegistryConfig,
    /// One pull per image name at a time: tasks of one service prepared
    /// together wait for the first pull instead of each fetching it.
    pulls: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Images resolved before (index, manifest and config read from the
    /// content store), by name and target digest: what a digest names never
    /// changes, and reading it again cost three calls on every task start.
    resolved: std::sync::Mutex<HashMap<(String, String), image::Resolved>>,
}

/// Resolved images kept at most (a node runs few distinct images).
const RESOLVED_KEPT: usize = 64;

fn lock_map<K, V>(m: &std::sync::Mutex<HashMap<K, V>>) -> std::sync::MutexGuard<'_, HashMap<K, V>> {
    // Only inserts and lookups happen under these locks: a poisoned map is whole.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Containerd {
    /// Connect to containerd's socket and check it answers. `namespace` is
    /// this agent's containerd namespace; `state_dir` holds logs, secrets
    /// tmpfs mounts and volumes.
    pub async fn connect(
        socket: &Path,
        namespace: &str,
        state_dir: &Path,
    ) -> ExecResult<Containerd> {
        let channel = containerd_client::connect(socket).await.map_err(|e| {
            ExecError::Runtime(format!(
                "cannot connect to containerd at {}: {e} (is containerd running?)",
                socket.display()
            ))
        })?;
        VersionClient::new(channel.clone())
            .version(Request::new(()))
            .await
            .map_err(|e| status_err("version", &socket.display().to_string(), e))?;
        let api = Api::new(channel.clone(), namespace)?;
        for sub in ["logs", "secrets", "volumes"] {
            let d = state_dir.join(sub);
            std::fs::create_dir_all(&d).map_err(|e| io_err("create directory", &d, e))?;
        }
        // The log driver is this very program in its `__log-driver` mode.
        let log_binary = std::env::current_exe()
            .map_err(|e| ExecError::Runtime(format!("cannot find the agent's executable: {e}")))?;
        Ok(Containerd {
            api,
            channel,
            namespace: namespace.to_string(),
            state_dir: state_dir.to_path_buf(),
            log_binary,
            registries: RegistryConfig::default(),
            pulls: std::sync::Mutex::new(HashMap::new()),
            resolved: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// Use another program as the log driver (it must understand
    /// `<program> __log-driver <file>`): tests run from a test binary.
    pub fn with_log_binary(mut self, path: PathBuf) -> Self {
        self.log_binary = path;
        self
    }

    /// Registries to reach over plain HTTP (the agent's
    /// `--insecure-registry`); loopback ones always are.
    pub fn with_registries(mut self, registries: RegistryConfig) -> Self {
        self.registries = registries;
        self
    }

    /// Make sure `reference` is here, pulling it from its registry if it
    /// is not (see `pull::pull`, which reports per-layer progress);
    /// returns the image's name. Concurrent pulls of the same name wait
    /// for one another, and the second finds the image.
    pub async fn pull(
        &self,
        reference: &str,
        opts: &PullOptions,
        progress: ProgressFn<'_>,
    ) -> ExecResult<String> {
        self.one_pull_at_a_time(reference, async {
            match image::lookup(&self.api, reference).await? {
                Some((name, _)) => Ok(name),
                None => self
                    .pull_now(reference, opts, progress)
                    .await
                    .map(|p| p.name)
                    .map_err(|e| e.into_exec(reference)),
            }
        })
        .await
    }

    /// Pull `reference` from its registry even if an image of that name is
    /// here (`image pull`: the tag may have moved).
    pub async fn pull_image(
        &self,
        reference: &str,
        opts: &PullOptions,
        progress: ProgressFn<'_>,
    ) -> Result<Pulled, PullError> {
        self.one_pull_at_a_time(reference, self.pull_now(reference, opts, progress))
            .await
    }

    async fn pull_now(
        &self,
        reference: &str,
        opts: &PullOptions,
        progress: ProgressFn<'_>,
    ) -> Result<Pulled, PullError> {
        pull::pull(
            &self.channel,
            &self.namespace,
            reference,
            &self.registries,
            opts,
            progress,
        )
        .await
    }

    /// Run `work` while holding the gate of `reference`'s name.
    async fn one_pull_at_a_time<T>(
        &self,
        reference: &str,
        work: impl std::future::Future<Output = T>,
    ) -> T {
        let key = image::normalize(reference);
        let gate = {
            let mut pulls = lock_map(&self.pulls);
            pulls.entry(key.clone()).or_default().clone()
        };
        let result = {
            let _turn = gate.lock().await;
            work.await
        };
        // Forget the gate once nobody else holds it.
        let mut pulls = lock_map(&self.pulls);
        if Arc::strong_count(&gate) <= 2 {
            pulls.remove(&key);
        }
        result
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Import an image tarball (see `image::load`).
    pub async fn load_image(
        &self,
        reader: impl std::io::Read + Send + 'static,
    ) -> ExecResult<Vec<String>> {
        image::load(&self.channel, &self.namespace, reader).await
    }

    pub async fn images(&self) -> ExecResult<Vec<image::ImageInfo>> {
        image::list(&self.channel, &self.namespace).await
    }

    /// Import every `*.tar` in `dir` (see `image::preload_dir`).
    pub async fn preload(&self, dir: &Path) -> ExecResult<Vec<String>> {
        image::preload_dir(&self.channel, &self.namespace, dir).await
    }

    fn secrets_dir(&self, id: &str) -> PathBuf {
        self.state_dir.join("secrets").join(id)
    }

    fn log_file(&self, id: &str) -> PathBuf {
        self.state_dir.join("logs").join(format!("{id}.log"))
    }

    fn volumes_dir(&self) -> PathBuf {
        self.state_dir.join("volumes")
    }

    fn cgroups_path(&self, id: &str) -> String {
        format!("/apiary/{}/{id}", self.namespace)
    }

    async fn container_exists(&self, id: &str) -> ExecResult<bool> {
        match self
            .api
            .containers()
            .get(self.api.req(GetContainerRequest { id: id.into() }))
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(status_err("get container", id, s)),
        }
    }

    /// The task's status: None if it has no task.
    async fn task_status(&self, id: &str) -> ExecResult<Option<ContainerStatus>> {
        match self
            .api
            .tasks()
            .get(self.api.req(GetRequest {
                container_id: id.into(),
                exec_id: String::new(),
            }))
            .await
        {
            Ok(r) => Ok(r.into_inner().process.map(|p| {
                match ProcStatus::try_from(p.status).unwrap_or(ProcStatus::Unknown) {
                    ProcStatus::Running | ProcStatus::Paused | ProcStatus::Pausing => {
                        ContainerStatus::Running { pid: p.pid }
                    }
                    ProcStatus::Stopped => ContainerStatus::Exited {
                        code: p.exit_status as i64,
                    },
                    _ => ContainerStatus::Created,
                }
            })),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(status_err("get task", id, s)),
        }
    }

    async fn snapshot_mounts(&self, id: &str) -> ExecResult<Vec<CdMount>> {
        Ok(self
            .api
            .snapshots()
            .mounts(self.api.req(MountsRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: id.into(),
            }))
            .await
            .map_err(|e| status_err("snapshot mounts", id, e))?
            .into_inner()
            .mounts)
    }

    async fn do_prepare(&self, spec: &ContainerSpec) -> ExecResult<()> {
        // Three independent calls at once, one round trip instead of three
        // on every task start. A lease keeps new snapshots (and unpacked
        // layers) from GC until the container record holds them.
        let (exists, lease, found) = tokio::join!(
            self.container_exists(&spec.id),
            self.api.create_lease(),
            image::lookup(&self.api, &spec.image),
        );
        let lease = lease?;
        let r = match (exists, found) {
            (Err(e), _) => Err(e),
            // A container left from before is kept as it is.
            (Ok(true), _) => Ok(()),
            (Ok(false), Err(e)) => Err(e),
            (Ok(false), Ok(found)) => {
                self.prepare_with(&self.api.with_lease(&lease), spec, found)
                    .await
            }
        };
        self.release_lease(lease);
        r
    }

    /// Delete a lease without waiting for it: it only kept GC away while
    /// a container was made, and it expires by itself if this is lost.
    fn release_lease(&self, lease: String) {
        let api = self.api.clone();
        tokio::spawn(async move { api.delete_lease(&lease).await });
    }

    async fn prepare_with(
        &self,
        api: &Api,
        spec: &ContainerSpec,
        found: Option<(String, image::Desc)>,
    ) -> ExecResult<()> {
        let (name, target) = match found {
            Some(found) => found,
            None => {
                let opts = PullOptions {
                    credentials: spec.registry_auth.clone(),
                    platform: None,
                };
                self.pull(
                    &spec.image,
                    &opts,
                    &|p| tracing::debug!(task.id = %spec.id, "pull: {p:?}"),
                )
                .await?;
                image::lookup(api, &spec.image).await?.ok_or_else(|| {
                    ExecError::Image(format!(
                        "image {} was pulled but is not recorded in containerd",
                        spec.image
                    ))
                })?
            }
        };
        let key = (name.clone(), target.digest.clone());
        let cached = lock_map(&self.resolved).get(&key).cloned();
        let img = match cached {
            Some(img) => img,
            None => {
                let img = image::resolve(api, &name, &target, false).await?;
                let mut kept = lock_map(&self.resolved);
                if kept.len() >= RESOLVED_KEPT {
                    kept.clear();
                }
                kept.insert(key, img.clone());
                img
            }
        };
        // Images written by other tools may not be unpacked yet.
        image::unpack(api, &img, false).await?;
        let mounts = match self
            .api
            .snapshots()
            .prepare(api.req(PrepareSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: spec.id.clone(),
                parent: img.top_chain().unwrap_or("").to_string(),
                labels: HashMap::new(),
            }))
            .await
        {
            Ok(r) => r.into_inner().mounts,
            // Left over from an interrupted prepare: reuse it.
            Err(s) if s.code() == Code::AlreadyExists => self.snapshot_mounts(&spec.id).await?,
            Err(s) => return Err(status_err("prepare snapshot", &spec.id, s)),
        };
        let created = self.create_container(api, spec, &img, &mounts).await;
        if created.is_err() {
            // Leave nothing half-made behind; the worker may retry.
            let _ = image::remove_snapshot(api, &spec.id).await;
            let _ = unmount_tmpfs(&self.secrets_dir(&spec.id));
        }
        created
    }

    async fn create_container(
        &self,
        api: &Api,
        spec: &ContainerSpec,
        img: &image::Resolved,
        mounts: &[CdMount],
    ) -> ExecResult<()> {
        let (uid, gid) = match spec::effective_user(spec, &img.config) {
            None => (0, 0),
            Some(u) => {
                let dirs = rootfs_dirs(mounts);
                let passwd = read_from_layers(&dirs, "etc/passwd");
                let group = read_from_layers(&dirs, "etc/group");
                spec::resolve_user(&u, passwd.as_deref(), group.as_deref())?
            }
        };
        let files = self.write_files(spec)?;
        for m in &spec.mounts {
            if m.kind == super::MountKind::Volume {
                spec::check_volume_name(&m.source)?;
                let d = self.volumes_dir().join(&m.source);
                std::fs::create_dir_all(&d).map_err(|e| io_err("create volume", &d, e))?;
            }
        }
        let resolved = spec::Resolved {
            uid,
            gid,
            cgroups_path: self.cgroups_path(&spec.id),
            files,
            volumes_dir: self.volumes_dir(),
        };
        let oci = spec::build(spec, &img.config, &resolved)?;
        let mut labels = spec.labels.clone();
        let probe = super::health::probe(
            spec.healthcheck.as_ref(),
            super::health::of_image(&img.config).as_ref(),
        )
        .map_err(ExecError::InvalidSpec)?;
        if let Some(p) = probe {
            let json = serde_json::to_string(&p)
                .map_err(|e| ExecError::Runtime(format!("encoding the health check: {e}")))?;
            labels.insert(super::health::LABEL.into(), json);
        }
        let value = serde_json::to_vec(&oci)
            .map_err(|e| ExecError::Runtime(format!("encoding the runtime spec: {e}")))?;
        let container = Container {
            id: spec.id.clone(),
            labels,
            image: img.name.clone(),
            runtime: Some(Runtime {
                name: RUNTIME.into(),
                options: None,
            }),
            spec: Some(prost_types::Any {
                type_url: SPEC_TYPE_URL.into(),
                value,
            }),
            snapshotter: SNAPSHOTTER.into(),
            snapshot_key: spec.id.clone(),
            ..Default::default()
        };
        match self
            .api
            .containers()
            .create(api.req(CreateContainerRequest {
                container: Some(container),
            }))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => Ok(()),
            Err(s) => Err(status_err("create container", &spec.id, s)),
        }
    }

    /// Secret and config files: on a per-container tmpfs (never on disk),
    /// each later bind-mounted read-only at its target.
    fn write_files(&self, spec: &ContainerSpec) -> ExecResult<Vec<(PathBuf, String)>> {
        if spec.files.is_empty() {
            return Ok(vec![]);
        }
        let dir = self.secrets_dir(&spec.id);
        mount_tmpfs(&dir, SECRETS_TMPFS_BYTES)?;
        let mut out = Vec::new();
        for (i, f) in spec.files.iter().enumerate() {
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            let p = dir.join(format!("f{i}"));
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&p)
                .map_err(|e| io_err("create secret file", &p, e))?;
            file.write_all(&f.data)
                .map_err(|e| io_err("write secret file", &p, e))?;
            // Set after writing: the mode may forbid writing.
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(f.mode & 0o7777))
                .map_err(|e| io_err("chmod secret file", &p, e))?;
            out.push((p, f.target.clone()));
        }
        Ok(out)
    }

    async fn do_start(&self, id: &str) -> ExecResult<u32> {
        // Read-only calls at once (one round trip instead of three); the
        // rootfs is read even when a task exists already, which is rare.
        let (status, exists, rootfs) = tokio::join!(
            self.task_status(id),
            self.container_exists(id),
            self.snapshot_mounts(id),
        );
        match status? {
            Some(ContainerStatus::Running { pid }) => return Ok(pid),
            Some(ContainerStatus::Exited { .. }) => self.delete_task(id).await?,
            Some(ContainerStatus::Created) => return self.start_task(id).await,
            None => {}
        }
        if !exists? {
            return Err(ExecError::NotFound(id.to_string()));
        }
        let rootfs = rootfs?;
        let log = self.log_file(id);
        if let Some(d) = log.parent() {
            std::fs::create_dir_all(d).map_err(|e| io_err("create directory", d, e))?;
        }
        let uri = log_uri(&self.log_binary, &log);
        match self
            .api
            .tasks()
            .create(self.api.req(CreateTaskRequest {
                container_id: id.into(),
                rootfs,
                stdin: String::new(),
                stdout: uri.clone(),
                stderr: uri,
                terminal: false,
                ..Default::default()
            }))
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == Code::AlreadyExists => {}
            Err(s) => return Err(status_err("create task", id, s)),
        }
        tracing::debug!(task.id = id, "containerd task created");
        self.start_task(id).await
    }

    async fn start_task(&self, id: &str) -> ExecResult<u32> {
        let r = self
            .api
            .tasks()
            .start(self.api.req(StartRequest {
                container_id: id.into(),
                exec_id: String::new(),
            }))
            .await
            .map_err(|e| status_err("start task", id, e))?;
        Ok(r.into_inner().pid)
    }

    async fn delete_task(&self, id: &str) -> ExecResult<()> {
        match self
            .api
            .tasks()
            .delete(self.api.req(DeleteTaskRequest {
                container_id: id.into(),
            }))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(status_err("delete task", id, s)),
        }
    }

    /// Start a Wait call now (as its own task, so it is in flight before
    /// any kill), to be awaited later.
    fn spawn_wait(&self, id: &str) -> tokio::task::JoinHandle<Result<u32, Status>> {
        let api = self.api.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            api.tasks()
                .wait(api.req(WaitRequest {
                    container_id: id,
                    exec_id: String::new(),
                }))
                .await
                .map(|r| r.into_inner().exit_status)
        })
    }

    /// Kill; Ok(false) if there is no running process to signal.
    async fn kill(&self, id: &str, signal: u32, all: bool) -> ExecResult<bool> {
        match self
            .api
            .tasks()
            .kill(self.api.req(KillRequest {
                container_id: id.into(),
                exec_id: String::new(),
                signal,
                all,
            }))
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if matches!(s.code(), Code::NotFound | Code::FailedPrecondition) => Ok(false),
            Err(s) => Err(status_err("kill task", id, s)),
        }
    }

    async fn do_stop(&self, id: &str, signal: Option<&str>, grace: Duration) -> ExecResult<()> {
        let sig = spec::parse_signal(signal.unwrap_or("SIGTERM"))?;
        if !matches!(
            self.task_status(id).await?,
            Some(ContainerStatus::Running { .. })
        ) {
            return Ok(());
        }
        let mut waiter = self.spawn_wait(id);
        // Give the Wait call a moment to reach containerd before the kill
        // (a Wait that arrives after the exit still answers at once).
        tokio::task::yield_now().await;
        if !self.kill(id, sig, false).await? {
            waiter.abort();
            return Ok(());
        }
        if tokio::time::timeout(grace, &mut waiter).await.is_ok() {
            return Ok(());
        }
        tracing::debug!(
            container = id,
            "no exit {grace:?} after signal {sig}: SIGKILL"
        );
        self.kill(id, 9, true).await?;
        match tokio::time::timeout(KILL_PATIENCE, waiter).await {
            Ok(_) => Ok(()),
            Err(_) => Err(ExecError::Runtime(format!(
                "container {id} did not exit {KILL_PATIENCE:?} after SIGKILL"
            ))),
        }
    }

    async fn do_wait(&self, id: &str) -> ExecResult<Exit> {
        match self.spawn_wait(id).await {
            Ok(Ok(code)) => Ok(Exit { code: code as i64 }),
            Ok(Err(s)) if s.code() == Code::NotFound => Err(ExecError::NotFound(id.to_string())),
            Ok(Err(s)) => Err(status_err("wait task", id, s)),
            Err(e) => Err(ExecError::Runtime(format!("waiting for {id}: {e}"))),
        }
    }

    async fn do_remove(&self, id: &str) -> ExecResult<()> {
        if let Some(ContainerStatus::Running { .. }) = self.task_status(id).await? {
            let waiter = self.spawn_wait(id);
            tokio::task::yield_now().await;
            self.kill(id, 9, true).await?;
            let _ = tokio::time::timeout(KILL_PATIENCE, waiter).await;
        }
        self.delete_task(id).await?;
        match self
            .api
            .containers()
            .delete(self.api.req(DeleteContainerRequest { id: id.into() }))
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(status_err("delete container", id, s)),
        }
        image::remove_snapshot(&self.api, id).await?;
        unmount_tmpfs(&self.secrets_dir(id))?;
        for f in super::logs::files(&self.log_file(id)) {
            let _ = std::fs::remove_file(f);
        }
        Ok(())
    }

    async fn do_list(&self) -> ExecResult<Vec<ContainerState>> {
        let containers = self
            .api
            .containers()
            .list(self.api.req(ListContainersRequest { filters: vec![] }))
            .await
            .map_err(|e| status_err("list containers", &self.namespace, e))?
            .into_inner()
            .containers;
        let mut out = Vec::with_capacity(containers.len());
        for c in containers {
            let status = self
                .task_status(&c.id)
                .await?
                .unwrap_or(ContainerStatus::Created);
            out.push(ContainerState {
                id: c.id,
                labels: c.labels,
                status,
            });
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }
}

impl Executor for Containerd {
    fn prepare<'a>(&'a self, spec: &'a ContainerSpec) -> BoxFuture<'a, ExecResult<()>> {
        self.do_prepare(spec).boxed()
    }

    fn start<'a>(&'a self, id: &'a str) -> BoxFuture<'a, ExecResult<u32>> {
        self.do_start(id).boxed()
    }

    fn wait<'a>(&'a self, id: &'a str) -> BoxFuture<'a, ExecResult<Exit>> {
        self.do_wait(id).boxed()
    }

    fn stop<'a>(
        &'a self,
        id: &'a str,
        signal: Option<&'a str>,
        grace: Duration,
    ) -> BoxFuture<'a, ExecResult<()>> {
        self.do_stop(id, signal, grace).boxed()
    }

    fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, ExecResult<()>> {
        self.do_remove(id).boxed()
    }

    fn list(&self) -> BoxFuture<'_, ExecResult<Vec<ContainerState>>> {
        self.do_list().boxed()
    }

    fn probe<'a>(&'a self, id: &'a str) -> BoxFuture<'a, ExecResult<Option<super::health::Probe>>> {
        self.do_probe(id).boxed()
    }

    fn exec<'a>(
        &'a self,
        id: &'a str,
        argv: &'a [String],
        timeout: Duration,
    ) -> BoxFuture<'a, ExecResult<i64>> {
        self.do_exec(id, argv, timeout).boxed()
    }

    fn log_path(&self, id: &str) -> Option<PathBuf> {
        Some(self.log_file(id))
    }

    fn load_image(&self, tar: Vec<u8>) -> BoxFuture<'_, ExecResult<Vec<String>>> {
        Box::pin(self.load_image(std::io::Cursor::new(tar)))
    }

    fn images(&self) -> BoxFuture<'_, ExecResult<Vec<image::ImageInfo>>> {
        Box::pin(Containerd::images(self))
    }

    fn pull_image<'a>(
        &'a self,
        reference: &'a str,
        opts: &'a PullOptions,
        progress: ProgressFn<'a>,
    ) -> BoxFuture<'a, Result<Pulled, PullError>> {
        Box::pin(Containerd::pull_image(self, reference, opts, progress))
    }
}

/// `binary:///path/to/apiary?__log-driver=/path/to/<id>.log`: exactly one
/// query key, because the shim passes the query as `key value` arguments
/// in Go map order (random with more keys).
pub fn log_uri(binary: &Path, log: &Path) -> String {
    format!(
        "binary://{}?{}={}",
        escape(&binary.to_string_lossy()),
        super::logdriver::ARG,
        escape(&log.to_string_lossy())
    )
}

/// Percent-encode all but unreserved characters and '/', so Go's URL
/// parser gives the path back unchanged.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The directories making up a snapshot's root filesystem, top first:
/// overlay upperdir then lowerdirs, or a bind mount's source.
pub fn rootfs_dirs(mounts: &[CdMount]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for m in mounts {
        if m.r#type == "bind" {
            out.push(PathBuf::from(&m.source));
            continue;
        }
        let mut lower = Vec::new();
        for o in &m.options {
            if let Some(u) = o.strip_prefix("upperdir=") {
                out.push(PathBuf::from(u));
            } else if let Some(l) = o.strip_prefix("lowerdir=") {
                lower.extend(l.split(':').map(PathBuf::from));
            }
        }
        out.extend(lower);
    }
    out
}

/// A file of the image as the container will see it (the topmost layer
/// that has it), without mounting anything.
fn read_from_layers(dirs: &[PathBuf], rel: &str) -> Option<String> {
    dirs.iter()
        .find_map(|d| std::fs::read_to_string(d.join(rel)).ok())
}

/// Is `dir` a mount point? (/proc/self/mountinfo, field 5.)
fn is_mounted(dir: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = dir.to_string_lossy().replace(' ', "\\040");
    info.lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// Mount a private tmpfs at `dir` (mode 0700) unless one is there. Uses
/// mount(8): no unsafe code, and the agent runs as root anyway.
fn mount_tmpfs(dir: &Path, bytes: u64) -> ExecResult<()> {
    std::fs::create_dir_all(dir).map_err(|e| io_err("create directory", dir, e))?;
    if is_mounted(dir) {
        return Ok(());
    }
    let out = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o"])
        .arg(format!("size={bytes},mode=0700,nosuid,nodev,noexec"))
        .arg("tmpfs")
        .arg(dir)
        .output()
        .map_err(|e| io_err("run mount(8) for", dir, e))?;
    if !out.status.success() {
        return Err(ExecError::Runtime(format!(
            "mount tmpfs on {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Unmount the tmpfs at `dir` (if mounted) and remove the directory.
fn unmount_tmpfs(dir: &Path) -> ExecResult<()> {
    if is_mounted(dir) {
        let out = std::process::Command::new("umount")
            .arg(dir)
            .output()
            .map_err(|e| io_err("run umount(8) for", dir, e))?;
        if !out.status.success() {
            // Busy (a container still holds a bind of it): detach lazily;
            // the memory is freed when the last user goes.
            let lazy = std::process::Command::new("umount")
                .arg("-l")
                .arg(dir)
                .output()
                .map_err(|e| io_err("run umount(8) for", dir, e))?;
            if !lazy.status.success() {
                return Err(ExecError::Runtime(format!(
                    "unmount {}: {}",
                    dir.display(),
                    String::from_utf8_lossy(&lazy.stderr).trim()
                )));
            }
        }
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", dir, e)),
    }
}

mod exec;

#[cfg(test)]
mod tests;
