//! From a task (cluster types) to a container spec (executor types). Pure.

use std::collections::HashMap;
use std::time::Duration;

use bollard_stubs::models::MountTypeEnum;

use crate::executor::health::Healthcheck;
use crate::executor::pull::AuthConfig;
use crate::executor::{ContainerSpec, FileMount, Mount, MountKind};
use crate::network::view::{NetworkView, TaskNetwork};
use crate::network::{Attachment, PortMapping, Protocol};
use crate::rpc::Assignments;
use crate::store::Task;

/// Labels that tie a container to its task: the worker finds its
/// containers again after a restart by these.
pub const LABEL_TASK: &str = "com.docker.swarm.task.id";
pub const LABEL_SERVICE: &str = "com.docker.swarm.service.id";
pub const LABEL_SERVICE_NAME: &str = "com.docker.swarm.service.name";
pub const LABEL_NODE: &str = "com.docker.swarm.node.id";
pub const LABEL_TASK_NAME: &str = "com.docker.swarm.task.name";

/// Swarm's default stop grace period.
const DEFAULT_GRACE: Duration = Duration::from_secs(10);

/// Build the container spec of `task`, resolving its secrets and configs
/// from the assignments. A referenced secret that did not arrive is an
/// error (the task is rejected rather than started without it).
pub fn container_spec(task: &Task, a: &Assignments) -> Result<ContainerSpec, String> {
    let c = task
        .spec
        .container_spec
        .as_ref()
        .ok_or_else(|| "the task has no container spec".to_string())?;
    let image = c
        .image
        .clone()
        .filter(|i| !i.is_empty())
        .ok_or_else(|| "the task has no image".to_string())?;
    let service_name = a
        .service_names
        .get(&task.service_id)
        .cloned()
        .unwrap_or_else(|| task.service_id.0.clone());
    let name = format!("{}.{}", task.name(&service_name), task.id);
    let mut labels: HashMap<String, String> = c.labels.clone().unwrap_or_default();
    labels.insert(LABEL_TASK.into(), task.id.0.clone());
    labels.insert(LABEL_SERVICE.into(), task.service_id.0.clone());
    labels.insert(LABEL_SERVICE_NAME.into(), service_name.clone());
    labels.insert(LABEL_TASK_NAME.into(), name.clone());
    if let Some(n) = &task.node_id {
        labels.insert(LABEL_NODE.into(), n.0.clone());
    }
    let mut mounts = Vec::new();
    for m in c.mounts.iter().flatten() {
        let target = m
            .target
            .clone()
            .ok_or_else(|| "a mount has no target".to_string())?;
        let kind = match m.typ {
            Some(MountTypeEnum::BIND) => MountKind::Bind,
            Some(MountTypeEnum::VOLUME) | None | Some(MountTypeEnum::EMPTY) => MountKind::Volume,
            Some(MountTypeEnum::TMPFS) => MountKind::Tmpfs,
            Some(other) => return Err(format!("mount type {other} is not supported")),
        };
        mounts.push(Mount {
            kind,
            source: m.source.clone().unwrap_or_default(),
            target,
            read_only: m.read_only.unwrap_or(false),
            tmpfs_size: m.tmpfs_options.as_ref().and_then(|t| t.size_bytes),
        });
    }
    let mut files = Vec::new();
    for r in c.secrets.iter().flatten() {
        let id = r.secret_id.clone().unwrap_or_default();
        let secret = a.secrets.iter().find(|s| s.id.0 == id).ok_or_else(|| {
            format!(
                "secret {} was not delivered to this node",
                r.secret_name.as_deref().unwrap_or(&id)
            )
        })?;
        let f = r.file.as_ref();
        let fname = f
            .and_then(|f| f.name.clone())
            .unwrap_or_else(|| secret.spec.name.clone());
        let target = if fname.starts_with('/') {
            fname
        } else {
            format!("/run/secrets/{fname}")
        };
        files.push(FileMount {
            target,
            data: secret.spec.data.clone(),
            mode: f.and_then(|f| f.mode).unwrap_or(0o444),
        });
    }
    for r in c.configs.iter().flatten() {
        let id = r.config_id.clone().unwrap_or_default();
        let config = a.configs.iter().find(|s| s.id.0 == id).ok_or_else(|| {
            format!(
                "config {} was not delivered to this node",
                r.config_name.as_deref().unwrap_or(&id)
            )
        })?;
        let f = r.file.as_ref();
        let fname = f
            .and_then(|f| f.name.clone())
            .unwrap_or_else(|| config.spec.name.clone());
        let target = if fname.starts_with('/') {
            fname
        } else {
            format!("/{fname}")
        };
        files.push(FileMount {
            target,
            data: config.spec.data.clone(),
            mode: f.and_then(|f| f.mode).unwrap_or(0o444),
        });
    }
    let limits = task.spec.resources.as_ref().and_then(|r| r.limits.as_ref());
    // Checked by the manager when the service was given them; a task that
    // still carries undecodable ones is refused rather than pulled
    // anonymously under a misleading "unauthorized".
    let registry_auth = match &task.registry_auth {
        None => None,
        Some(a) => AuthConfig::from_header(&a.0)
            .and_then(|c| c.map(|c| c.credentials()).transpose())
            .map(Option::flatten)
            .map_err(|e| {
                format!("{e}: update the service with --with-registry-auth after logging in again")
            })?,
    };
    Ok(ContainerSpec {
        id: task.id.0.clone(),
        name,
        image,
        command: c.command.clone().unwrap_or_default(),
        args: c.args.clone().unwrap_or_default(),
        env: c.env.clone().unwrap_or_default(),
        workdir: c.dir.clone().filter(|d| !d.is_empty()),
        user: c.user.clone().filter(|u| !u.is_empty()),
        hostname: c.hostname.clone().filter(|h| !h.is_empty()),
        mounts,
        files,
        memory_limit: limits.and_then(|l| l.memory_bytes).filter(|m| *m > 0),
        nano_cpus: limits.and_then(|l| l.nano_cpus).filter(|n| *n > 0),
        stop_signal: c.stop_signal.clone().filter(|s| !s.is_empty()),
        stop_grace: Some(
            c.stop_grace_period
                .filter(|g| *g >= 0)
                .map(|g| Duration::from_nanos(g as u64))
                .unwrap_or(DEFAULT_GRACE),
        ),
        netns: None,
        labels,
        registry_auth,
        healthcheck: c.health_check.as_ref().map(|h| Healthcheck {
            test: h.test.clone().unwrap_or_default(),
            interval: h.interval.unwrap_or(0),
            timeout: h.timeout.unwrap_or(0),
            start_period: h.start_period.unwrap_or(0),
            // The API's StartInterval is newer than the spec types we use.
            start_interval: 0,
            retries: h.retries.unwrap_or(0),
        }),
    })
}

/// The task's host-mode published ports. Ingress ports are the managers'
/// business (refused until the routing mesh exists) and skipped here.
pub fn host_ports(task: &Task) -> Result<Vec<PortMapping>, String> {
    use bollard_stubs::models::EndpointPortConfigPublishModeEnum as Mode;
    let mut out = Vec::new();
    for p in &task.ports {
        if p.publish_mode != Some(Mode::HOST) {
            continue;
        }
        let protocol = Protocol::parse(&p.protocol.map(|x| x.to_string()).unwrap_or_default())
            .map_err(|e| e.to_string())?;
        let port = |v: Option<i64>, what: &str| -> Result<u16, String> {
            v.and_then(|v| u16::try_from(v).ok())
                .filter(|v| *v > 0)
                .ok_or_else(|| format!("invalid {what} port {v:?}: use 1 to 65535"))
        };
        let target = port(p.target_port, "target")?;
        // Docker picks a free port when none is given; apiary asks for one.
        let published = port(p.published_port, "published").map_err(|_| {
            format!(
                "port {target}/{}: host mode needs a published port (published=N)",
                protocol.as_str()
            )
        })?;
        out.push(PortMapping {
            protocol,
            published,
            target,
        });
    }
    Ok(out)
}

/// The task's addresses on its networks, with what its node was told of
/// each network. A network the node was not told of is the task's error.
pub fn task_networks(task: &Task, views: &[NetworkView]) -> Result<Vec<TaskNetwork>, String> {
    task.networks
        .iter()
        .map(|a| {
            let v = views.iter().find(|v| v.id == a.network.0).ok_or_else(|| {
                format!(
                    "network {} of the task was not sent to this node: the managers run an older version?",
                    a.network
                )
            })?;
            Ok(TaskNetwork {
                network: v.clone(),
                addr: a.addr,
            })
        })
        .collect()
}

/// The hostname a container gets: the task's, else the first 12
/// characters of its ID (Docker's rule, also in `executor::spec`).
pub fn hostname(spec: &ContainerSpec) -> String {
    spec.hostname
        .clone()
        .unwrap_or_else(|| spec.id.chars().take(12).collect())
}

/// Join the attachment's namespace and bind-mount its /etc files (unless
/// the task mounts something there itself).
pub fn with_attachment(mut spec: ContainerSpec, a: &Attachment) -> ContainerSpec {
    spec.netns = a.netns.clone();
    for (src, target) in &a.files {
        if spec.mounts.iter().any(|m| &m.target == target)
            || spec.files.iter().any(|f| &f.target == target)
        {
            continue;
        }
        spec.mounts.push(Mount {
            kind: MountKind::Bind,
            source: src.to_string_lossy().into_owned(),
            target: target.clone(),
            read_only: false,
            tmpfs_size: None,
        });
    }
    spec
}
