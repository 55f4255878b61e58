#![allow(clippy::unwrap_used)] // tests fail loudly on purpose
//! The API served on a real unix socket, backed by a fake [`Control`] and
//! driven by the CLI's own client.

use std::sync::{Arc, Mutex};

use hyper::Method;
use tokio_util::sync::CancellationToken;

use crate::cli::client::Answer;
use crate::cli::{CliError, Client};
use crate::control::*;
use crate::node::secrets;
use crate::store::{
    Availability, Cluster, ClusterSpec, JoinSecrets, ManagerStatus, Node, NodeDescription, NodeId,
    NodeSpec, NodeState, NodeStatus, Platform, Reachability, Role, RootCa,
};
use crate::store::{
    Command, Config, ConfigId, ConfigSpec, Secret, SecretId, SecretSpec, State, StoreErrorKind,
};

/// A swarm of two nodes held in memory. `self_id` is the node answering.
pub(crate) struct Fake {
    pub state: Mutex<FakeState>,
}

pub(crate) struct FakeState {
    pub in_swarm: bool,
    pub is_manager: bool,
    pub cluster: Cluster,
    pub nodes: Vec<NodeView>,
    pub worker_token: String,
    pub manager_token: String,
    pub last_init: Option<InitRequest>,
    pub last_join: Option<JoinRequest>,
    pub last_update: Option<SwarmUpdate>,
    pub last_pull: Option<ImagePull>,
    /// Secrets and configs live in a real store state, changed by `apply`
    /// with a counter as the log index.
    pub objects: State,
    pub index: u64,
}

pub(crate) const MANAGER_ID: &str = "m1abcdefghijklmnopqrstuvw";
pub(crate) const WORKER_ID: &str = "w2abcdefghijklmnopqrstuvw";

fn node(id: &str, host: &str, role: Role, leader: bool, state: NodeState) -> NodeView {
    NodeView {
        node: Node {
            id: NodeId(id.into()),
            version: 10,
            created_at: "2024-05-01T10:00:00Z".into(),
            updated_at: "2024-05-01T10:00:00Z".into(),
            spec: NodeSpec {
                name: String::new(),
                labels: Default::default(),
                role,
                availability: Availability::Active,
            },
            description: NodeDescription {
                hostname: host.into(),
                platform: Platform {
                    os: "linux".into(),
                    architecture: "x86_64".into(),
                },
                nano_cpus: 2_000_000_000,
                memory_bytes: 2 * 1024 * 1024 * 1024,
                engine_version: "0.1.0".into(),
            },
            status: NodeStatus {
                state,
                message: String::new(),
                addr: "10.0.0.1".into(),
                port: 0,
            },
            role,
            manager_status: (role == Role::Manager).then(|| ManagerStatus {
                raft_id: 1,
                addr: "10.0.0.1:2377".into(),
                reachability: Reachability::Reachable,
            }),
            cert_expiry: String::new(),
            key_fingerprint: String::new(),
        },
        leader,
        tls: None,
    }
}

impl Fake {
    pub(crate) fn new() -> Arc<Fake> {
        Arc::new(Fake {
            state: Mutex::new(FakeState {
                in_swarm: true,
                is_manager: true,
                cluster: Cluster {
                    id: "clusterid".into(),
                    version: 5,
                    created_at: "2024-05-01T10:00:00Z".into(),
                    updated_at: "2024-05-01T10:00:00Z".into(),
                    spec: ClusterSpec::default(),
                    root_ca: RootCa {
                        cert_pem: "CERT".into(),
                        key_pem: "KEY".into(),
                    },
                    join_secrets: JoinSecrets {
                        worker: "w".into(),
                        manager: "m".into(),
                    },
                    unlock_key: None,
                    rotation: None,
                    addr_pool: Default::default(),
                },
                nodes: vec![
                    node(WORKER_ID, "node2", Role::Worker, false, NodeState::Ready),
                    node(MANAGER_ID, "node1", Role::Manager, true, NodeState::Ready),
                ],
                worker_token: "SWMTKN-1-worker".into(),
                manager_token: "SWMTKN-1-manager".into(),
                last_init: None,
                last_join: None,
                last_update: None,
                last_pull: None,
                objects: State::default(),
                index: 100,
            }),
        })
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn manager_only(&self) -> ControlResult<()> {
        let s = self.lock();
        if !s.in_swarm {
            return Err(ControlError::NotInSwarm);
        }
        if !s.is_manager {
            return Err(ControlError::NotManager);
        }
        Ok(())
    }

    fn find(&self, id: &str) -> ControlResult<NodeView> {
        let s = self.lock();
        s.nodes
            .iter()
            .find(|n| {
                n.node.id.0 == id
                    || n.node.description.hostname == id
                    || n.node.id.0.starts_with(id)
            })
            .cloned()
            .ok_or_else(|| ControlError::NotFound(format!("node {id} not found")))
    }
}

impl Fake {
    /// Apply a command as the raft state machine would (errors mapped as
    /// `Manager::propose` maps them).
    fn apply(&self, cmd: Command) -> ControlResult<()> {
        let mut s = self.lock();
        s.index += 1;
        let index = s.index;
        let r = s.objects.apply(index, &cmd);
        match r.error {
            None => Ok(()),
            Some(e) => Err(match e.kind {
                StoreErrorKind::NotFound => ControlError::NotFound(e.message),
                StoreErrorKind::Conflict => ControlError::Conflict(e.message),
                StoreErrorKind::Invalid => ControlError::FailedPrecondition(e.message),
            }),
        }
    }
}

impl Control for Fake {
    fn host_info(&self) -> HostInfo {
        HostInfo {
            hostname: "node1".into(),
            os: "linux".into(),
            architecture: "x86_64".into(),
            kernel_version: "6.1.0".into(),
            ncpu: 2,
            mem_total: 2 * 1024 * 1024 * 1024,
            data_dir: "/var/lib/apiary".into(),
        }
    }

    async fn swarm_info(&self) -> SwarmInfo {
        let s = self.lock();
        if !s.in_swarm {
            return SwarmInfo {
                state: LocalNodeState::Inactive,
                node_id: None,
                node_addr: String::new(),
                is_manager: false,
                error: String::new(),
                remote_managers: vec![],
                cluster: None,
                nodes: None,
                managers: None,
                warnings: vec![],
            };
        }
        SwarmInfo {
            state: LocalNodeState::Active,
            node_id: Some(NodeId(MANAGER_ID.into())),
            node_addr: "10.0.0.1".into(),
            is_manager: s.is_manager,
            error: String::new(),
            remote_managers: vec![RemoteManager {
                node_id: NodeId(MANAGER_ID.into()),
                addr: "10.0.0.1:2377".into(),
            }],
            cluster: s.is_manager.then(|| s.cluster.clone()),
            nodes: s.is_manager.then_some(s.nodes.len()),
            managers: s.is_manager.then_some(1),
            warnings: vec![],
        }
    }

    async fn swarm_inspect(&self) -> ControlResult<SwarmView> {
        self.manager_only()?;
        let s = self.lock();
        Ok(SwarmView {
            cluster: s.cluster.clone(),
            worker_token: s.worker_token.clone(),
            manager_token: s.manager_token.clone(),
        })
    }

    async fn swarm_init(&self, req: InitRequest) -> ControlResult<NodeId> {
        let mut s = self.lock();
        if s.in_swarm {
            return Err(ControlError::AlreadyInSwarm);
        }
        s.in_swarm = true;
        s.is_manager = true;
        s.cluster.spec = req.spec.clone();
        s.last_init = Some(req);
        Ok(NodeId(MANAGER_ID.into()))
    }

    async fn swarm_join(&self, req: JoinRequest) -> ControlResult<()> {
        let mut s = self.lock();
        if s.in_swarm {
            return Err(ControlError::AlreadyInSwarm);
        }
        s.in_swarm = true;
        s.is_manager = req.token.contains("manager");
        s.last_join = Some(req);
        Ok(())
    }

    async fn swarm_leave(&self, force: bool) -> ControlResult<()> {
        let mut s = self.lock();
        if !s.in_swarm {
            return Err(ControlError::NotInSwarm);
        }
        if s.is_manager && !force {
            return Err(ControlError::FailedPrecondition(
                "You are attempting to leave the swarm on a node that is participating as a manager.".into(),
            ));
        }
        s.in_swarm = false;
        Ok(())
    }

    async fn swarm_update(&self, req: SwarmUpdate) -> ControlResult<()> {
        self.manager_only()?;
        let mut s = self.lock();
        if req.version != s.cluster.version {
            return Err(ControlError::Conflict("update out of sequence".into()));
        }
        s.cluster.spec = req.spec.clone();
        s.cluster.version += 1;
        if req.rotate_worker_token {
            s.worker_token = "SWMTKN-1-worker2".into();
        }
        if req.rotate_manager_token {
            s.manager_token = "SWMTKN-1-manager2".into();
        }
        s.last_update = Some(req);
        Ok(())
    }

    async fn nodes(&self) -> ControlResult<Vec<NodeView>> {
        self.manager_only()?;
        Ok(self.lock().nodes.clone())
    }

    async fn node(&self, id: &str) -> ControlResult<NodeView> {
        self.manager_only()?;
        self.find(id)
    }

    async fn node_update(&self, id: &str, version: u64, spec: NodeSpec) -> ControlResult<()> {
        self.manager_only()?;
        let mut s = self.lock();
        let n = s
            .nodes
            .iter_mut()
            .find(|n| n.node.id.0 == id)
            .ok_or_else(|| ControlError::NotFound(format!("node {id} not found")))?;
        if n.node.version != version {
            return Err(ControlError::Conflict("update out of sequence".into()));
        }
        n.node.spec = spec;
        n.node.version += 1;
        Ok(())
    }

    async fn node_remove(&self, id: &str, force: bool) -> ControlResult<()> {
        self.manager_only()?;
        let found = self.find(id)?;
        if found.node.status.state == NodeState::Ready && !force {
            return Err(ControlError::FailedPrecondition(format!(
                "node {} is not down and can't be removed",
                found.node.id
            )));
        }
        self.lock().nodes.retain(|n| n.node.id != found.node.id);
        Ok(())
    }

    async fn unlock_key(&self) -> ControlResult<Option<String>> {
        self.manager_only()?;
        Ok(None)
    }

    async fn swarm_unlock(&self, _key: &str) -> ControlResult<()> {
        Err(ControlError::FailedPrecondition(
            "the fake swarm is not locked".into(),
        ))
    }

    async fn secret_create(&self, spec: SecretSpec) -> ControlResult<SecretId> {
        self.manager_only()?;
        secrets::validate_secret_spec(&spec)?;
        let secret = secrets::new_secret(spec, "2024-05-01T10:00:00Z");
        let id = secret.id.clone();
        self.apply(Command::CreateSecret { secret })?;
        Ok(id)
    }

    async fn secrets(&self) -> ControlResult<Vec<Secret>> {
        self.manager_only()?;
        let s = self.lock();
        Ok(s.objects
            .secrets
            .values()
            .cloned()
            .map(secrets::without_data)
            .collect())
    }

    async fn secret(&self, id: &str) -> ControlResult<Secret> {
        self.manager_only()?;
        let s = secrets::resolve_secret(&self.lock().objects, id)?;
        Ok(secrets::without_data(s))
    }

    async fn secret_update(&self, id: &str, version: u64, spec: SecretSpec) -> ControlResult<()> {
        self.manager_only()?;
        let current = secrets::resolve_secret(&self.lock().objects, id)?;
        secrets::check_secret_update(&current, &spec)?;
        self.apply(Command::UpdateSecret {
            id: current.id,
            version,
            labels: spec.labels,
            now: "2024-05-02T10:00:00Z".into(),
        })
    }

    async fn secret_remove(&self, id: &str) -> ControlResult<()> {
        self.manager_only()?;
        let current = secrets::resolve_secret(&self.lock().objects, id)?;
        self.apply(Command::RemoveSecret { id: current.id })
    }

    async fn config_create(&self, spec: ConfigSpec) -> ControlResult<ConfigId> {
        self.manager_only()?;
        secrets::validate_config_spec(&spec)?;
        let config = secrets::new_config(spec, "2024-05-01T10:00:00Z");
        let id = config.id.clone();
        self.apply(Command::CreateConfig { config })?;
        Ok(id)
    }

    async fn configs(&self) -> ControlResult<Vec<Config>> {
        self.manager_only()?;
        Ok(self.lock().objects.configs.values().cloned().collect())
    }

    async fn config(&self, id: &str) -> ControlResult<Config> {
        self.manager_only()?;
        secrets::resolve_config(&self.lock().objects, id)
    }

    async fn config_update(&self, id: &str, version: u64, spec: ConfigSpec) -> ControlResult<()> {
        self.manager_only()?;
        let current = secrets::resolve_config(&self.lock().objects, id)?;
        secrets::check_config_update(&current, &spec)?;
        self.apply(Command::UpdateConfig {
            id: current.id,
            version,
            labels: spec.labels,
            now: "2024-05-02T10:00:00Z".into(),
        })
    }

    async fn config_remove(&self, id: &str) -> ControlResult<()> {
        self.manager_only()?;
        let current = secrets::resolve_config(&self.lock().objects, id)?;
        self.apply(Command::RemoveConfig { id: current.id })
    }

    async fn network_create(
        &self,
        spec: crate::store::NetworkSpec,
    ) -> ControlResult<crate::store::NetworkId> {
        self.manager_only()?;
        crate::node::networks::check_create(&self.lock().objects, &spec)?;
        let n = crate::node::networks::new_network(spec, "2024-05-01T10:00:00Z");
        let id = n.id.clone();
        self.apply(Command::CreateNetwork { network: n })?;
        Ok(id)
    }

    async fn networks(&self) -> ControlResult<Vec<crate::store::Network>> {
        self.manager_only()?;
        Ok(self.lock().objects.networks.values().cloned().collect())
    }

    async fn network(&self, id: &str) -> ControlResult<crate::store::Network> {
        self.manager_only()?;
        crate::node::networks::resolve_network(&self.lock().objects, id)
    }

    async fn network_remove(&self, id: &str) -> ControlResult<()> {
        self.manager_only()?;
        let n = crate::node::networks::resolve_network(&self.lock().objects, id)?;
        self.apply(Command::RemoveNetwork { id: n.id })
    }

    async fn network_users(&self, id: &str) -> ControlResult<Vec<String>> {
        self.manager_only()?;
        let state = &self.lock().objects;
        let n = crate::node::networks::resolve_network(state, id)?;
        Ok(state.services_using_network(&n.id))
    }

    // Services go through the same in-memory state as secrets: enough to
    // test the HTTP layer (the orchestration is tested on real agents).
    async fn service_create(
        &self,
        spec: crate::store::ServiceSpec,
        registry_auth: Option<crate::store::RegistryAuth>,
    ) -> ControlResult<crate::store::ServiceId> {
        self.manager_only()?;
        let spec = crate::node::services_validate(&self.lock().objects, spec)?;
        let id = crate::store::ServiceId(format!("svc{}", self.lock().objects.services.len()));
        self.apply(Command::CreateService {
            service: crate::store::Service {
                id: id.clone(),
                version: 0,
                created_at: "2026-01-01T00:00:00Z".into(),
                updated_at: "2026-01-01T00:00:00Z".into(),
                spec,
                previous_spec: None,
                previous_spec_version: 0,
                update_status: None,
                spec_version: 0,
                registry_auth,
                endpoint: Default::default(),
            },
        })?;
        Ok(id)
    }

    async fn services(&self) -> ControlResult<Vec<crate::control::ServiceView>> {
        self.manager_only()?;
        let g = self.lock();
        Ok(g.objects
            .services
            .values()
            .map(|s| crate::control::ServiceView {
                service: s.clone(),
                running: 0,
                desired: s.replicas().unwrap_or(0),
                completed: 0,
                vips: Vec::new(),
            })
            .collect())
    }

    async fn service(&self, id: &str) -> ControlResult<crate::control::ServiceView> {
        let all = self.services().await?;
        all.into_iter()
            .find(|v| v.service.id.0 == id || v.service.name() == id)
            .ok_or_else(|| ControlError::NotFound(format!("service {id} not found")))
    }

    async fn service_update(
        &self,
        id: &str,
        version: u64,
        spec: crate::store::ServiceSpec,
        registry_auth: Option<crate::store::RegistryAuth>,
    ) -> ControlResult<()> {
        let v = self.service(id).await?;
        self.apply(Command::UpdateService {
            id: v.service.id,
            version,
            spec,
            registry_auth,
            now: "2026-01-01T00:00:01Z".into(),
        })
    }

    async fn service_rollback(&self, id: &str, version: u64) -> ControlResult<()> {
        let v = self.service(id).await?;
        self.apply(Command::RollbackService {
            id: v.service.id,
            guard: crate::store::RollbackGuard::Version(version),
            message: crate::store::updates::MANUAL_ROLLBACK.into(),
            now: "2026-01-01T00:00:01Z".into(),
        })
    }

    async fn service_remove(&self, id: &str) -> ControlResult<()> {
        let v = self.service(id).await?;
        self.apply(Command::RemoveService {
            id: v.service.id,
            now: "2026-01-01T00:00:01Z".into(),
        })
    }

    async fn tasks(
        &self,
        _filter: crate::control::TaskFilter,
    ) -> ControlResult<Vec<crate::control::TaskView>> {
        self.manager_only()?;
        Ok(Vec::new())
    }

    async fn task(&self, id: &str) -> ControlResult<crate::control::TaskView> {
        self.manager_only()?;
        Err(ControlError::NotFound(format!("task {id} not found")))
    }

    async fn logs(
        &self,
        target: crate::control::LogsTarget,
        _opts: crate::control::LogsOptions,
    ) -> ControlResult<tokio::sync::mpsc::Receiver<crate::control::LogLine>> {
        Err(ControlError::NotFound(format!("no logs for {target:?}")))
    }

    async fn image_load(&self, _tar: Vec<u8>) -> ControlResult<Vec<String>> {
        Err(ControlError::Unavailable("no runtime in the fake".into()))
    }

    async fn images(&self) -> ControlResult<Vec<crate::executor::image::ImageInfo>> {
        Ok(Vec::new())
    }

    /// A scripted pull: `reg.test/fail:now` fails before any progress,
    /// `reg.test/fail:later` after it; anything else pulls one 3 MB layer
    /// (and one already here), needing the user `u` when the repository is
    /// `private`.
    async fn image_pull(
        &self,
        req: ImagePull,
        progress: tokio::sync::mpsc::UnboundedSender<crate::executor::pull::Progress>,
    ) -> ControlResult<crate::executor::pull::Pulled> {
        use crate::executor::pull::{Progress, Pulled};
        self.lock().last_pull = Some(req.clone());
        let r = crate::executor::pull::Reference::parse(&req.reference)
            .map_err(|e| ControlError::InvalidArgument(e.to_string()))?;
        if r.repository == "fail" && r.tag.as_deref() == Some("now") {
            return Err(ControlError::NotFound(
                "manifest unknown from registry reg.test".into(),
            ));
        }
        if r.repository == "private" {
            let user = req.auth.as_ref().map(|a| a.username.as_str());
            if user != Some("u") {
                return Err(ControlError::Unauthorized(
                    "authentication required from registry reg.test".into(),
                ));
            }
        }
        let layer = format!("sha256:{}", "a".repeat(64));
        let here = format!("sha256:{}", "b".repeat(64));
        let send = |p: Progress| {
            let _ = progress.send(p);
        };
        send(Progress::Resolved {
            reference: r.to_string(),
            digest: FAKE_DIGEST.into(),
            layers: vec![(here.clone(), 10), (layer.clone(), 3_000_000)],
        });
        if r.repository == "fail" {
            return Err(ControlError::Unavailable(
                "cannot reach registry reg.test: connection reset".into(),
            ));
        }
        send(Progress::LayerExists { digest: here });
        for done in [1_000_000, 3_000_000] {
            send(Progress::Layer {
                digest: layer.clone(),
                done,
                total: 3_000_000,
            });
        }
        send(Progress::LayerDone {
            digest: layer.clone(),
        });
        send(Progress::Done {
            name: r.to_string(),
        });
        Ok(Pulled {
            name: r.to_string(),
            digest: FAKE_DIGEST.into(),
            updated: true,
        })
    }

    async fn distribution(
        &self,
        reference: &str,
        auth: Option<crate::executor::pull::AuthConfig>,
    ) -> ControlResult<crate::executor::pull::Distribution> {
        use crate::executor::image::{Desc, Platform};
        if reference.contains("missing") {
            return Err(ControlError::NotFound(
                "manifest unknown from registry reg.test".into(),
            ));
        }
        if reference.contains("private") && auth.map(|a| a.username) != Some("u".into()) {
            return Err(ControlError::Unauthorized(
                "authentication required from registry reg.test".into(),
            ));
        }
        Ok(crate::executor::pull::Distribution {
            descriptor: Desc {
                media_type: "application/vnd.oci.image.index.v1+json".into(),
                digest: FAKE_DIGEST.into(),
                size: 321,
            },
            platforms: vec![
                Platform::parse("linux/amd64").map_err(ControlError::Internal)?,
                Platform::parse("linux/arm/v7").map_err(ControlError::Internal)?,
            ],
        })
    }

    async fn registry_login(&self, auth: crate::executor::pull::AuthConfig) -> ControlResult<()> {
        if auth.username == "u" && auth.password == "right" {
            return Ok(());
        }
        Err(ControlError::Unauthorized(format!(
            "login attempt to http://{}/v2/ failed with status: 401 Unauthorized: authentication required",
            auth.serveraddress
        )))
    }
}

/// The digest the fake registry resolves every reference to.
pub(crate) const FAKE_DIGEST: &str =
    "sha256:1111111111111111111111111111111111111111111111111111111111111111";

/// A served API on a socket in a temp dir; stops when dropped.
pub(crate) struct Served {
    pub fake: Arc<Fake>,
    pub socket: String,
    _dir: tempfile::TempDir,
    stop: CancellationToken,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Served {
    pub fn client(&self) -> Client {
        Client::new(&format!("unix://{}", self.socket)).expect("client")
    }
}

pub(crate) async fn start(fake: Arc<Fake>) -> Served {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("apiary.sock");
    let listener = tokio::net::UnixListener::bind(&path).expect("bind");
    let stop = CancellationToken::new();
    tokio::spawn(super::serve(listener, fake.clone(), stop.clone()));
    Served {
        fake,
        socket: path.to_string_lossy().into_owned(),
        _dir: dir,
        stop,
    }
}

async fn raw(s: &Served, method: Method, path: &str, body: Option<&str>) -> Answer {
    s.client()
        .raw(method, path, body.map(|b| b.as_bytes().to_vec()))
        .await
        .expect("request")
}

fn json(a: &Answer) -> serde_json::Value {
    serde_json::from_slice(&a.body).expect("json body")
}

#[tokio::test]
async fn ping_has_docker_headers() {
    let s = start(Fake::new()).await;
    for m in [Method::GET, Method::HEAD] {
        let a = raw(&s, m.clone(), "/_ping", None).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.headers["API-Version"], "1.49");
        assert_eq!(a.headers["OSType"], "linux");
        assert_eq!(a.headers["Docker-Experimental"], "false");
        assert_eq!(a.headers["Swarm"], "active/manager");
        assert!(a.headers["Cache-Control"]
            .to_str()
            .unwrap()
            .contains("no-cache"));
        let want: &[u8] = if m == Method::GET { b"OK" } else { b"" };
        assert_eq!(&a.body[..], want);
    }
    let a = raw(&s, Method::GET, "/v1.41/_ping", None).await;
    assert_eq!(&a.body[..], b"OK");
    s.fake.lock().is_manager = false;
    let a = raw(&s, Method::HEAD, "/_ping", None).await;
    assert_eq!(a.headers["Swarm"], "active/worker");
    s.fake.lock().in_swarm = false;
    let a = raw(&s, Method::HEAD, "/_ping", None).await;
    assert_eq!(a.headers["Swarm"], "inactive");
}

#[tokio::test]
async fn nodes_json_under_every_version_prefix() {
    let s = start(Fake::new()).await;
    for p in [
        "/nodes",
        "/v1.49/nodes",
        "/v1.24/nodes",
        "/v1.44/nodes?filters=%7B%7D",
    ] {
        let a = raw(&s, Method::GET, p, None).await;
        assert_eq!(a.status, 200, "{p}");
        let v = json(&a);
        let arr = v.as_array().expect("array");
        assert_eq!(arr.len(), 2, "{p}");
        let mgr = arr.iter().find(|n| n["ID"] == MANAGER_ID).expect("manager");
        assert_eq!(mgr["ManagerStatus"]["Leader"], true);
        assert_eq!(mgr["ManagerStatus"]["Reachability"], "reachable");
        assert_eq!(mgr["Spec"]["Role"], "manager");
        assert_eq!(mgr["Status"]["State"], "ready");
        assert_eq!(mgr["Description"]["Hostname"], "node1");
        assert_eq!(a.headers["API-Version"], "1.49");
    }
    let a = raw(
        &s,
        Method::GET,
        "/v1.49/nodes?filters=%7B%22role%22%3A%7B%22worker%22%3Atrue%7D%7D",
        None,
    )
    .await;
    let v = json(&a);
    assert_eq!(v.as_array().map(Vec::len), Some(1));
    assert_eq!(v[0]["ID"], WORKER_ID);

    let a = raw(&s, Method::GET, "/v1.12/nodes", None).await;
    assert_eq!(a.status, 400);
    assert!(json(&a)["message"].as_str().unwrap().contains("too old"));
    let a = raw(&s, Method::GET, "/v1.99/nodes", None).await;
    assert_eq!(a.status, 400);
    assert!(json(&a)["message"].as_str().unwrap().contains("too new"));
}

#[tokio::test]
async fn errors_are_docker_json() {
    let s = start(Fake::new()).await;
    let a = raw(&s, Method::GET, "/v1.49/nope", None).await;
    assert_eq!(a.status, 404);
    assert_eq!(json(&a), serde_json::json!({"message": "page not found"}));
    assert_eq!(a.headers["API-Version"], "1.49");

    let a = raw(&s, Method::GET, "/nodes/ghost", None).await;
    assert_eq!(a.status, 404);
    assert_eq!(json(&a)["message"], "node ghost not found");

    let a = raw(&s, Method::PUT, "/v1.49/nodes", None).await;
    assert_eq!(a.status, 405);

    let a = raw(
        &s,
        Method::POST,
        "/v1.49/swarm/update?version=5",
        Some(r#"{"Dispatcher":{"HeartbeatPeriod":"soon"}}"#),
    )
    .await;
    assert_eq!(a.status, 400);
    let msg = json(&a)["message"].as_str().unwrap().to_string();
    assert!(msg.contains("Dispatcher.HeartbeatPeriod"), "{msg}");

    let a = raw(
        &s,
        Method::POST,
        &format!("/nodes/{MANAGER_ID}/update?version=x"),
        Some("{}"),
    )
    .await;
    assert_eq!(a.status, 400);
    assert!(json(&a)["message"]
        .as_str()
        .unwrap()
        .starts_with("invalid node version 'x'"));

    let a = raw(
        &s,
        Method::POST,
        "/swarm/init",
        Some(r#"{"ListenAddr":"0.0.0.0:2377"}"#),
    )
    .await;
    assert_eq!(a.status, 503);
    assert!(json(&a)["message"]
        .as_str()
        .unwrap()
        .contains("already part of a swarm"));

    s.fake.lock().is_manager = false;
    let a = raw(&s, Method::GET, "/nodes", None).await;
    assert_eq!(a.status, 503);
    assert!(json(&a)["message"]
        .as_str()
        .unwrap()
        .starts_with("This node is not a swarm manager."));
}

#[tokio::test]
async fn info_version_and_swarm() {
    let s = start(Fake::new()).await;
    let v = json(&raw(&s, Method::GET, "/v1.49/info", None).await);
    assert_eq!(v["Swarm"]["LocalNodeState"], "active");
    assert_eq!(v["Swarm"]["NodeID"], MANAGER_ID);
    assert_eq!(v["Swarm"]["ControlAvailable"], true);
    assert_eq!(v["Swarm"]["Nodes"], 2);
    assert_eq!(v["Swarm"]["Managers"], 1);
    assert_eq!(v["Swarm"]["Cluster"]["ID"], "clusterid");
    assert_eq!(v["Swarm"]["Cluster"]["Version"]["Index"], 5);
    assert_eq!(v["Swarm"]["RemoteManagers"][0]["Addr"], "10.0.0.1:2377");
    assert_eq!(v["Name"], "node1");
    assert_eq!(v["NCPU"], 2);
    assert_eq!(v["DockerRootDir"], "/var/lib/apiary");

    let v = json(&raw(&s, Method::GET, "/version", None).await);
    assert_eq!(v["ApiVersion"], "1.49");
    assert_eq!(v["MinAPIVersion"], "1.24");
    assert_eq!(v["Arch"], "amd64");
    assert_eq!(v["Components"][0]["Name"], "Engine");

    let v = json(&raw(&s, Method::GET, "/v1.49/swarm", None).await);
    assert_eq!(v["JoinTokens"]["Worker"], "SWMTKN-1-worker");
    assert_eq!(v["Spec"]["Dispatcher"]["HeartbeatPeriod"], 5_000_000_000i64);

    let v = json(&raw(&s, Method::GET, "/v1.49/swarm/unlockkey", None).await);
    assert_eq!(v, serde_json::json!({"UnlockKey": ""}));
}

#[tokio::test]
async fn swarm_update_merges_onto_current_spec() {
    let s = start(Fake::new()).await;
    let a = raw(
        &s,
        Method::POST,
        "/v1.49/swarm/update?version=5&rotateWorkerToken=true",
        Some(r#"{"Orchestration":{"TaskHistoryRetentionLimit":2}}"#),
    )
    .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    let up = s.fake.lock().last_update.clone().expect("update");
    assert_eq!(up.version, 5);
    assert!(up.rotate_worker_token && !up.rotate_manager_token);
    assert_eq!(up.spec.task_history_limit, 2);
    assert_eq!(
        up.spec.cert_expiry_ns,
        ClusterSpec::default().cert_expiry_ns
    );
    let a = raw(&s, Method::POST, "/swarm/update?version=5", Some("{}")).await;
    assert_eq!(a.status, 409);
}

#[tokio::test]
async fn init_and_join_parse_addresses() {
    let s = start(Fake::new()).await;
    s.fake.lock().in_swarm = false;
    let a = raw(
        &s,
        Method::POST,
        "/swarm/init",
        Some(r#"{"ListenAddr":"0.0.0.0:2377","AdvertiseAddr":"eth0"}"#),
    )
    .await;
    assert_eq!(a.status, 400);
    assert!(json(&a)["message"].as_str().unwrap().contains("\"eth0\""));
    let a = raw(
        &s,
        Method::POST,
        "/v1.49/swarm/init",
        Some(r#"{"ListenAddr":"0.0.0.0:4000","AdvertiseAddr":"192.168.1.5","Availability":"drain","AutoLockManagers":false,"Spec":{"Dispatcher":{"HeartbeatPeriod":10000000000}}}"#),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(json(&a), serde_json::json!(MANAGER_ID));
    {
        let st = s.fake.lock();
        let init = st.last_init.as_ref().expect("init");
        assert_eq!(init.listen_addr.to_string(), "0.0.0.0:4000");
        assert_eq!(
            init.advertise_addr.map(|a| a.to_string()).as_deref(),
            Some("192.168.1.5:4000")
        );
        assert_eq!(init.availability, Availability::Drain);
        assert_eq!(init.spec.dispatcher_heartbeat_ns, 10_000_000_000);
        assert_eq!(init.spec.task_history_limit, 5);
    }
    s.fake.lock().in_swarm = false;
    let a = raw(
        &s,
        Method::POST,
        "/swarm/join",
        Some(r#"{"RemoteAddrs":["10.0.0.1"],"JoinToken":"SWMTKN-1-worker"}"#),
    )
    .await;
    assert_eq!(a.status, 200);
    let st = s.fake.lock();
    let join = st.last_join.as_ref().expect("join");
    assert_eq!(join.remote_addrs, vec!["10.0.0.1:2377".to_string()]);
    assert_eq!(join.listen_addr.to_string(), "0.0.0.0:2377");
}

#[tokio::test]
async fn client_reports_daemon_errors_and_missing_socket() {
    let s = start(Fake::new()).await;
    let mut c = s.client();
    let err = c
        .get::<serde_json::Value>("/nodes/ghost")
        .await
        .unwrap_err();
    assert_eq!(err, CliError::Daemon("node ghost not found".into()));
    assert_eq!(
        err.to_string(),
        "Error response from daemon: node ghost not found"
    );

    let mut c = Client::new("/nonexistent/apiary.sock").expect("client");
    let err = c.get::<serde_json::Value>("/info").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "Cannot connect to the apiary agent at unix:///nonexistent/apiary.sock: is `apiary agent` running?"
    );
}

#[tokio::test]
async fn serve_returns_when_cancelled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = tokio::net::UnixListener::bind(dir.path().join("s.sock")).expect("bind");
    let stop = CancellationToken::new();
    let task = tokio::spawn(super::serve(listener, Fake::new(), stop.clone()));
    stop.cancel();
    let res = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
    assert!(matches!(res, Ok(Ok(Ok(())))), "{res:?}");
}

#[tokio::test]
async fn secrets_never_show_their_data() {
    let s = start(Fake::new()).await;
    // "hunter2" in base64.
    let a = raw(
        &s,
        Method::POST,
        "/v1.49/secrets/create",
        Some(r#"{"Name":"web-key","Labels":{"env":"prod"},"Data":"aHVudGVyMg=="}"#),
    )
    .await;
    assert_eq!(a.status, 201, "{:?}", a.body);
    let id = json(&a)["ID"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 25);
    {
        let st = s.fake.lock();
        let stored = st.objects.secrets.values().next().unwrap();
        assert_eq!(stored.spec.data, b"hunter2");
    }

    for path in [format!("/v1.49/secrets/{id}"), "/secrets/web-key".into()] {
        let a = raw(&s, Method::GET, &path, None).await;
        assert_eq!(a.status, 200, "{path}");
        let v = json(&a);
        assert_eq!(v["ID"], id);
        assert_eq!(v["Spec"]["Name"], "web-key");
        assert_eq!(v["Spec"]["Labels"]["env"], "prod");
        assert_eq!(v["Version"]["Index"], 101);
        assert_eq!(v["CreatedAt"], "2024-05-01T10:00:00Z");
        assert!(v["Spec"].get("Data").is_none(), "{v}");
        assert!(!String::from_utf8_lossy(&a.body).contains("aHVudGVyMg"));
    }
    let a = raw(&s, Method::GET, "/v1.49/secrets", None).await;
    let v = json(&a);
    assert_eq!(v.as_array().map(Vec::len), Some(1));
    assert!(v[0]["Spec"].get("Data").is_none(), "{v}");

    // Filters: name prefix, exact names, label, id prefix; unknown keys refused.
    for (filter, n) in [
        (r#"{"name":{"web":true}}"#, 1),
        (r#"{"names":{"web":true}}"#, 0),
        (r#"{"label":{"env=prod":true}}"#, 1),
        (r#"{"label":{"env=dev":true}}"#, 0),
        (&format!(r#"{{"id":{{"{}":true}}}}"#, &id[..5]), 1),
    ] {
        let path = format!(
            "/secrets?filters={}",
            crate::cli::client::encode_query(filter)
        );
        let v = json(&raw(&s, Method::GET, &path, None).await);
        assert_eq!(v.as_array().map(Vec::len), Some(n), "{filter}");
    }
    let a = raw(
        &s,
        Method::GET,
        "/secrets?filters=%7B%22role%22%3A%5B%22x%22%5D%7D",
        None,
    )
    .await;
    assert_eq!(a.status, 400);
}

#[tokio::test]
async fn secret_errors_are_clear() {
    let s = start(Fake::new()).await;
    let create = |body: &'static str| {
        let s = &s;
        async move { raw(s, Method::POST, "/secrets/create", Some(body)).await }
    };
    assert_eq!(create(r#"{"Name":"k","Data":"YQ=="}"#).await.status, 201);
    let a = create(r#"{"Name":"k","Data":"Yg=="}"#).await;
    assert_eq!(a.status, 409);
    assert!(json(&a)["message"]
        .as_str()
        .unwrap()
        .starts_with("secret k already exists"));
    let a = create(r#"{"Name":"-bad","Data":"YQ=="}"#).await;
    assert_eq!(a.status, 400);
    assert!(json(&a)["message"]
        .as_str()
        .unwrap()
        .contains("invalid secret name \"-bad\""));
    let a = create(r#"{"Name":"empty"}"#).await;
    assert_eq!(a.status, 400);
    assert!(json(&a)["message"]
        .as_str()
        .unwrap()
        .starts_with("secret data must be larger than 0 and less than 500KB"));
    let a = create(r#"{"Name":"x","Data":"not base64!"}"#).await;
    assert_eq!(a.status, 400);
    let a = create(r#"{"Name":"x","Data":"YQ==","Driver":{"Name":"vault"}}"#).await;
    assert_eq!(a.status, 400);

    // 500 KiB exactly is refused, like Swarm; the body itself gets through.
    use base64::Engine;
    let big = base64::engine::general_purpose::STANDARD.encode(vec![7u8; 500 * 1024]);
    let body = format!(r#"{{"Name":"big","Data":"{big}"}}"#);
    let a = raw(&s, Method::POST, "/secrets/create", Some(&body)).await;
    assert_eq!(a.status, 400);
    assert!(json(&a)["message"].as_str().unwrap().contains("500KB"));

    // Update: labels only, with the version.
    let a = raw(
        &s,
        Method::POST,
        "/secrets/k/update?version=1",
        Some(r#"{"Name":"k"}"#),
    )
    .await;
    assert_eq!(a.status, 409);
    let a = raw(
        &s,
        Method::POST,
        "/secrets/k/update?version=101",
        Some(r#"{"Name":"k","Labels":{"a":"b"},"Data":"Yg=="}"#),
    )
    .await;
    assert_eq!(a.status, 400);
    assert!(json(&a)["message"]
        .as_str()
        .unwrap()
        .starts_with("only updates to Labels"));
    let a = raw(
        &s,
        Method::POST,
        "/secrets/k/update?version=101",
        Some(r#"{"Name":"k","Labels":{"a":"b"}}"#),
    )
    .await;
    assert_eq!(a.status, 200);
    let v = json(&raw(&s, Method::GET, "/secrets/k", None).await);
    assert_eq!(v["Spec"]["Labels"]["a"], "b");
    assert_eq!(v["UpdatedAt"], "2024-05-02T10:00:00Z");

    let a = raw(&s, Method::DELETE, "/v1.49/secrets/k", None).await;
    assert_eq!(a.status, 204);
    let a = raw(&s, Method::DELETE, "/v1.49/secrets/k", None).await;
    assert_eq!(a.status, 404);
    assert_eq!(json(&a)["message"], "secret k not found");

    s.fake.lock().is_manager = false;
    let a = raw(&s, Method::GET, "/secrets", None).await;
    assert_eq!(a.status, 503);
}

#[tokio::test]
async fn configs_show_their_data() {
    let s = start(Fake::new()).await;
    let a = raw(
        &s,
        Method::POST,
        "/v1.49/configs/create",
        Some(r#"{"Name":"app.conf","Data":"cG9ydD04MA=="}"#),
    )
    .await;
    assert_eq!(a.status, 201, "{:?}", a.body);
    let id = json(&a)["ID"].as_str().unwrap().to_string();
    let v = json(&raw(&s, Method::GET, "/configs/app.conf", None).await);
    assert_eq!(v["ID"], id);
    assert_eq!(v["Spec"]["Data"], "cG9ydD04MA==");
    let v = json(&raw(&s, Method::GET, "/configs", None).await);
    assert_eq!(v[0]["Spec"]["Data"], "cG9ydD04MA==");
    // Sending the data back unchanged with new labels is an update.
    let a = raw(
        &s,
        Method::POST,
        "/configs/app.conf/update?version=101",
        Some(r#"{"Name":"app.conf","Labels":{"x":""},"Data":"cG9ydD04MA=="}"#),
    )
    .await;
    assert_eq!(a.status, 200);
    let a = raw(
        &s,
        Method::POST,
        "/configs/create",
        Some(r#"{"Name":"app.conf","Data":"YQ=="}"#),
    )
    .await;
    assert_eq!(a.status, 409);
    assert!(json(&a)["message"]
        .as_str()
        .unwrap()
        .starts_with("config app.conf already exists"));
    let a = raw(&s, Method::DELETE, &format!("/configs/{}", &id[..6]), None).await;
    assert_eq!(a.status, 204);
    let v = json(&raw(&s, Method::GET, "/configs", None).await);
    assert_eq!(v, serde_json::json!([]));
}

// ------------------------------------------------------ images, registries

fn auth_header(user: &str, password: &str) -> (&'static str, String) {
    let a = crate::executor::pull::AuthConfig {
        username: user.into(),
        password: password.into(),
        serveraddress: "reg.test".into(),
        ..Default::default()
    };
    ("X-Registry-Auth", a.to_header())
}

/// The JSON lines of a streamed answer.
fn lines(a: &Answer) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&a.body)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn image_create_streams_dockers_progress_messages() {
    let s = start(Fake::new()).await;
    let a = s
        .client()
        .raw_with(
            Method::POST,
            "/v1.49/images/create?fromImage=reg.test%2Fteam%2Fapp&tag=1&platform=linux%2Farm%2Fv7",
            None,
            &[auth_header("u", "p")],
        )
        .await
        .unwrap();
    assert_eq!(a.status, 200);
    let want = serde_json::json!([
        {"status": "Pulling from team/app", "id": "1"},
        {"status": "Pulling fs layer", "progressDetail": {}, "id": "bbbbbbbbbbbb"},
        {"status": "Pulling fs layer", "progressDetail": {}, "id": "aaaaaaaaaaaa"},
        {"status": "Already exists", "progressDetail": {}, "id": "bbbbbbbbbbbb"},
        {"status": "Downloading", "progressDetail": {"current": 1_000_000, "total": 3_000_000}, "id": "aaaaaaaaaaaa"},
        {"status": "Downloading", "progressDetail": {"current": 3_000_000, "total": 3_000_000}, "id": "aaaaaaaaaaaa"},
        {"status": "Download complete", "progressDetail": {}, "id": "aaaaaaaaaaaa"},
        {"status": "Pull complete", "progressDetail": {}, "id": "aaaaaaaaaaaa"},
        {"status": format!("Digest: {FAKE_DIGEST}")},
        {"status": "Status: Downloaded newer image for reg.test/team/app:1"},
    ]);
    assert_eq!(serde_json::Value::Array(lines(&a)), want);
    let req = s.fake.lock().last_pull.clone().unwrap();
    assert_eq!(req.reference, "reg.test/team/app:1");
    let p = req.platform.unwrap();
    assert_eq!(
        (p.architecture.as_str(), p.variant.as_deref()),
        ("arm", Some("v7"))
    );
    assert_eq!(req.auth.unwrap().username, "u");

    // A digest arrives as the tag.
    let d = format!("sha256:{}", "c".repeat(64));
    raw(
        &s,
        Method::POST,
        &format!("/images/create?fromImage=busybox&tag={d}"),
        None,
    )
    .await;
    assert_eq!(
        s.fake.lock().last_pull.clone().unwrap().reference,
        format!("busybox@{d}")
    );
}

#[tokio::test]
async fn image_create_failures_before_and_during_the_pull() {
    let s = start(Fake::new()).await;
    // Before any progress: an HTTP error, as Docker answers.
    let a = raw(
        &s,
        Method::POST,
        "/images/create?fromImage=reg.test/fail&tag=now",
        None,
    )
    .await;
    assert_eq!(a.status, 404);
    assert_eq!(
        json(&a)["message"],
        "manifest unknown from registry reg.test"
    );
    let a = raw(
        &s,
        Method::POST,
        "/images/create?fromImage=reg.test/private&tag=1",
        None,
    )
    .await;
    assert_eq!(a.status, 401);
    // During it: the stream's last message.
    let a = raw(
        &s,
        Method::POST,
        "/images/create?fromImage=reg.test/fail&tag=later",
        None,
    )
    .await;
    assert_eq!(a.status, 200);
    let l = lines(&a);
    let last = l.last().unwrap();
    let m = "cannot reach registry reg.test: connection reset";
    assert_eq!(last["error"], m);
    assert_eq!(last["errorDetail"]["message"], m);
    // Refused before the pull starts.
    for (path, why) in [
        ("/images/create", "fromImage is missing"),
        (
            "/images/create?fromImage=Bad/Name",
            "invalid reference format",
        ),
        (
            "/images/create?fromImage=busybox&platform=linux",
            "invalid platform",
        ),
        ("/images/create?fromSrc=-", "not supported"),
    ] {
        let a = raw(&s, Method::POST, path, None).await;
        assert_eq!(a.status, 400, "{path}");
        let m = json(&a)["message"].as_str().unwrap().to_string();
        assert!(m.contains(why), "{path}: {m}");
    }
    let a = s
        .client()
        .raw_with(
            Method::POST,
            "/images/create?fromImage=busybox",
            None,
            &[("X-Registry-Auth", "%%%".into())],
        )
        .await
        .unwrap();
    assert_eq!(a.status, 400);
    assert!(json(&a)["message"]
        .as_str()
        .unwrap()
        .contains("X-Registry-Auth"));
}

#[tokio::test]
async fn distribution_answers_descriptor_and_platforms() {
    let s = start(Fake::new()).await;
    let a = raw(
        &s,
        Method::GET,
        "/v1.49/distribution/reg.test:5000/team/app:1/json",
        None,
    )
    .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(
        json(&a),
        serde_json::json!({
            "Descriptor": {
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "digest": FAKE_DIGEST,
                "size": 321,
            },
            "Platforms": [
                {"os": "linux", "architecture": "amd64"},
                {"os": "linux", "architecture": "arm", "variant": "v7"},
            ],
        })
    );
    let a = raw(
        &s,
        Method::GET,
        "/distribution/reg.test/missing:1/json",
        None,
    )
    .await;
    assert_eq!(a.status, 404);
    let a = raw(
        &s,
        Method::GET,
        "/distribution/reg.test/private:1/json",
        None,
    )
    .await;
    assert_eq!(a.status, 401);
    let a = s
        .client()
        .raw_with(
            Method::GET,
            "/distribution/reg.test/private:1/json",
            None,
            &[auth_header("u", "p")],
        )
        .await
        .unwrap();
    assert_eq!(a.status, 200);
    let a = raw(&s, Method::GET, "/distribution/reg.test/app", None).await;
    assert_eq!(a.status, 404);
}

#[tokio::test]
async fn auth_checks_logins() {
    let s = start(Fake::new()).await;
    let a = raw(
        &s,
        Method::POST,
        "/v1.49/auth",
        Some(r#"{"username":"u","password":"right","serveraddress":"reg.test"}"#),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(json(&a)["Status"], "Login Succeeded");
    let a = raw(
        &s,
        Method::POST,
        "/auth",
        Some(r#"{"username":"u","password":"wrong","serveraddress":"reg.test"}"#),
    )
    .await;
    assert_eq!(a.status, 401);
    assert_eq!(
        json(&a)["message"],
        "login attempt to http://reg.test/v2/ failed with status: 401 Unauthorized: authentication required"
    );
    let a = raw(&s, Method::POST, "/auth", Some("")).await;
    assert_eq!(a.status, 400);
}

#[tokio::test]
async fn services_keep_registry_auth_out_of_their_spec() {
    let s = start(Fake::new()).await;
    let spec = r#"{"Name":"priv","TaskTemplate":{"ContainerSpec":{"Image":"reg.test/private:1"}}}"#;
    let header = auth_header("u", "s3cret");
    let a = s
        .client()
        .raw_with(
            Method::POST,
            "/services/create",
            Some(spec.as_bytes().to_vec()),
            std::slice::from_ref(&header),
        )
        .await
        .unwrap();
    assert_eq!(a.status, 201, "{:?}", a.body);
    let stored = || {
        let st = s.fake.lock();
        let svc = st.objects.services.values().next().unwrap().clone();
        svc.registry_auth
    };
    let kept = stored().expect("credentials kept with the service");
    let decoded = crate::executor::pull::AuthConfig::from_header(&kept.0)
        .unwrap()
        .unwrap();
    assert_eq!(
        (decoded.username.as_str(), decoded.password.as_str()),
        ("u", "s3cret")
    );
    assert!(!format!("{kept:?}").contains(&kept.0));
    // Inspect shows neither the password nor the encoded header.
    let a = raw(&s, Method::GET, "/services/priv", None).await;
    let body = String::from_utf8_lossy(&a.body).to_string();
    assert!(
        !body.contains("s3cret") && !body.contains(&header.1),
        "{body}"
    );
    // An update without the header keeps them; with one, replaces them.
    let v = json(&a)["Version"]["Index"].as_u64().unwrap();
    let a = raw(
        &s,
        Method::POST,
        &format!("/services/priv/update?version={v}"),
        Some(spec),
    )
    .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(stored(), Some(kept.clone()));
    let a = raw(&s, Method::GET, "/services/priv", None).await;
    let v = json(&a)["Version"]["Index"].as_u64().unwrap();
    let a = s
        .client()
        .raw_with(
            Method::POST,
            &format!("/services/priv/update?version={v}"),
            Some(spec.as_bytes().to_vec()),
            &[auth_header("u", "n3w")],
        )
        .await
        .unwrap();
    assert_eq!(a.status, 200);
    assert_ne!(stored(), Some(kept));
    // A header without credentials (`{}`, as the docker CLI sends for a
    // registry it has no login for) stores nothing.
    let empty = (
        "X-Registry-Auth",
        crate::executor::pull::AuthConfig::default().to_header(),
    );
    let other = r#"{"Name":"open","TaskTemplate":{"ContainerSpec":{"Image":"busybox"}}}"#;
    let a = s
        .client()
        .raw_with(
            Method::POST,
            "/services/create",
            Some(other.as_bytes().to_vec()),
            &[empty],
        )
        .await
        .unwrap();
    assert_eq!(a.status, 201);
    let st = s.fake.lock();
    let open = st
        .objects
        .services
        .values()
        .find(|s| s.name() == "open")
        .unwrap();
    assert_eq!(open.registry_auth, None);
}

#[tokio::test]
async fn services_keep_the_docker_clis_healthcheck_key() {
    // The docker CLI writes `Healthcheck` (its Go field name), the API's
    // schema says `HealthCheck`: both must reach the stored spec.
    let s = start(Fake::new()).await;
    for (name, key) in [("a", "Healthcheck"), ("b", "HealthCheck")] {
        let spec = format!(
            r#"{{"Name":"{name}","TaskTemplate":{{"ContainerSpec":{{"Image":"busybox","{key}":{{"Test":["CMD-SHELL","true"],"Retries":2}}}}}}}}"#
        );
        let a = raw(&s, Method::POST, "/services/create", Some(&spec)).await;
        assert_eq!(a.status, 201, "{:?}", a.body);
        let a = raw(&s, Method::GET, &format!("/services/{name}"), None).await;
        let cs = &json(&a)["Spec"]["TaskTemplate"]["ContainerSpec"];
        let h = if cs["HealthCheck"].is_null() {
            &cs["Healthcheck"]
        } else {
            &cs["HealthCheck"]
        };
        assert_eq!(h["Test"][1], "true", "{name}: {cs}");
        assert_eq!(h["Retries"], 2, "{name}: {cs}");
    }
}
