//! `apiary agent`: the daemon. Serves the Engine API on a unix socket, and
//! resumes the node's swarm membership from its data dir.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::node::{NodeConfig, NodeHandle};

#[derive(clap::Args, Debug, Clone)]
pub struct AgentArgs {
    /// Where the node keeps its state, certificates and raft data.
    #[arg(long, env = "APIARY_DATA_DIR", default_value = "/var/lib/apiary")]
    pub data_dir: PathBuf,
    /// The unix socket to serve the Engine API on.
    #[arg(long, env = "APIARY_SOCKET", default_value = "/run/apiary/apiary.sock")]
    pub socket: PathBuf,
    /// Report this host name instead of the machine's (several agents on one host).
    #[arg(long)]
    pub hostname: Option<String>,
    /// containerd's socket: tasks run as containers there. Without it the
    /// node takes part in the swarm but rejects the tasks given to it.
    #[arg(long, env = "APIARY_CONTAINERD")]
    pub containerd: Option<PathBuf>,
    /// The containerd namespace of this agent's containers (agents sharing a
    /// containerd need one each).
    #[arg(long, env = "APIARY_CONTAINERD_NAMESPACE", default_value = "apiary")]
    pub containerd_namespace: String,
    /// Image tarballs (OCI layout or `docker save`) imported at start, for
    /// nodes without a registry. Default: <data-dir>/images.
    #[arg(long, env = "APIARY_IMAGES_DIR")]
    pub images_dir: Option<PathBuf>,
    /// A registry reached over plain HTTP instead of HTTPS (`host` or
    /// `host:port`; repeatable), like dockerd's. Loopback registries always
    /// are.
    #[arg(
        long = "insecure-registry",
        env = "APIARY_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    pub insecure_registries: Vec<String>,
    /// Benchmarks only: run tasks in a simulated executor that starts them
    /// at once and runs nothing.
    #[arg(long, hide = true)]
    pub simulated_executor: bool,
    /// How tasks get their network: `bridge` (a namespace per task on the
    /// node's bridge, outbound NAT, host-mode ports by DNAT) or `host`
    /// (tasks share the node's network, as before).
    #[arg(
        long,
        env = "APIARY_TASK_NETWORK",
        value_enum,
        default_value = "bridge"
    )]
    pub task_network: TaskNetwork,
    /// The bridge tasks attach to (at most 15 characters; agents sharing a
    /// host need one each).
    #[arg(long, env = "APIARY_BRIDGE", default_value = "apiary0")]
    pub bridge_name: String,
    /// The bridge's subnet, per node (tasks' addresses are local to their
    /// node). The default is used by neither Docker (172.17/16, 172.18–31,
    /// 192.168) nor Podman (10.88/16); change it if your LAN uses it.
    #[arg(long, env = "APIARY_BRIDGE_SUBNET", default_value = "10.213.0.0/16")]
    pub bridge_subnet: String,
    /// Publish host-mode ports on this address only (default: on every
    /// address of the node, loopback included). For several agents sharing
    /// one host, each with an address of its own.
    #[arg(long, env = "APIARY_PUBLISH_ADDR")]
    pub publish_addr: Option<std::net::Ipv4Addr>,
    /// Log filter, e.g. "info" or "apiary=debug" (RUST_LOG works too).
    #[arg(long, env = "APIARY_LOG", default_value = "info")]
    pub log_level: String,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskNetwork {
    Bridge,
    Host,
}

/// The tasks' network. Nodes that run no real containers (no containerd,
/// or the simulated fleet) get the host's: there is nothing to attach.
async fn network(
    args: &AgentArgs,
    real_containers: bool,
) -> anyhow::Result<Arc<dyn crate::network::Network>> {
    if !real_containers {
        return Ok(Arc::new(crate::network::HostNetwork::unchecked()));
    }
    if args.task_network == TaskNetwork::Host {
        return Ok(Arc::new(crate::network::HostNetwork::new()));
    }
    let subnet = crate::network::ipam::Subnet::parse(&args.bridge_subnet)
        .map_err(|e| anyhow::anyhow!("--bridge-subnet: {e}"))?;
    // Absolute: the /etc files are bind-mounted from here.
    let state_dir = std::path::absolute(args.data_dir.join("network"))
        .context("cannot resolve the data dir")?;
    let bridge = crate::network::Bridge::new(crate::network::BridgeConfig {
        bridge: args.bridge_name.clone(),
        subnet,
        publish_addr: args.publish_addr,
        state_dir,
    })
    .await
    .map_err(|e| anyhow::anyhow!("task network (--task-network bridge): {e}"))?;
    info!(bridge = %args.bridge_name, subnet = %subnet, "task network ready");
    let bridge = Arc::new(bridge);
    bridge.keep(crate::network::bridge::RECHECK);
    Ok(bridge)
}

async fn executor(args: &AgentArgs) -> anyhow::Result<Option<Arc<dyn crate::executor::Executor>>> {
    if args.simulated_executor {
        tracing::warn!(
            "running tasks in the SIMULATED executor: nothing really runs (benchmarks only)"
        );
        return Ok(Some(Arc::new(crate::executor::SimulatedExecutor::new())));
    }
    let Some(socket) = &args.containerd else {
        tracing::warn!("no --containerd socket: this node will reject the tasks given to it");
        return Ok(None);
    };
    let state = args.data_dir.join("containers");
    let c = crate::executor::containerd::Containerd::connect(
        socket,
        &args.containerd_namespace,
        &state,
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?
    .with_registries(registries(args));
    let images = args
        .images_dir
        .clone()
        .unwrap_or_else(|| args.data_dir.join("images"));
    match c.preload(&images).await {
        Ok(names) if !names.is_empty() => {
            info!(dir = %images.display(), "preloaded images: {}", names.join(", "))
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("preloading images from {}: {e}", images.display()),
    }
    Ok(Some(Arc::new(c)))
}

/// How this agent reaches registries, for its pulls and its logins.
fn registries(args: &AgentArgs) -> crate::executor::pull::RegistryConfig {
    crate::executor::pull::RegistryConfig {
        insecure: args.insecure_registries.clone(),
    }
}

/// Bind the API socket, refusing to steal it from a running agent.
async fn bind_socket(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            bail!(
                "another agent is already serving {}: stop it first, or use --socket",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    // Like docker.sock: root and the socket's group only — the `apiary`
    // group where there is one (the package makes it), so its members use
    // the CLI without sudo.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("cannot set permissions on {}", path.display()))?;
    if let Some(gid) = group_id(SOCKET_GROUP) {
        std::os::unix::fs::chown(path, None, Some(gid))
            .with_context(|| format!("cannot give {} to group {SOCKET_GROUP}", path.display()))?;
    }
    Ok(listener)
}

/// The API socket's group, when the system has it.
const SOCKET_GROUP: &str = "apiary";

/// A group's ID from /etc/group (no NSS: a static binary has none; the
/// package's group is a local one).
fn group_id(name: &str) -> Option<u32> {
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    parse_group_id(&groups, name)
}

fn parse_group_id(groups: &str, name: &str) -> Option<u32> {
    groups.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then_some(())?;
        f.nth(1)?.trim().parse().ok()
    })
}

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let mut signals = Signals::watch()?;
    let listener = bind_socket(&args.socket).await?;
    let executor = executor(&args).await?;
    let real_containers = executor.is_some() && !args.simulated_executor;
    let node = NodeHandle::start(NodeConfig {
        data_dir: args.data_dir.clone(),
        hostname: args.hostname.clone(),
        executor,
        network: Some(network(&args, real_containers).await?),
        registries: registries(&args),
    })
    .await
    .map_err(anyhow::Error::msg)
    .with_context(|| format!("cannot start the node from {}", args.data_dir.display()))?;
    let shutdown = CancellationToken::new();
    let node = Arc::new(node);
    let api = tokio::spawn(crate::api::serve(listener, node.clone(), shutdown.clone()));
    info!(socket = %args.socket.display(), data_dir = %args.data_dir.display(), "apiary agent ready");
    crate::systemd::ready(&format!(
        "serving {}; {}",
        args.socket.display(),
        crate::systemd::describe(&*node).await
    ));
    crate::systemd::watchdog(node.clone());
    let failed = tokio::select! {
        _ = signals.shutdown() => None,
        why = node.failed() => Some(why),
    };
    info!("shutting down");
    crate::systemd::stopping();
    shutdown.cancel();
    node.shutdown().await;
    let _ = api.await;
    let _ = std::fs::remove_file(&args.socket);
    match failed {
        None => Ok(()),
        Some(why) => bail!("{why}"),
    }
}

/// The signals the agent answers. Watched from the very start of `run`:
/// SIGHUP's default action would end the agent (a closed terminal,
/// `systemctl reload`, `kill -HUP` out of habit), and the agent has
/// nothing to reload — its flags are read once, at start — so it is
/// caught and ignored.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn watch() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("cannot watch SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot watch SIGINT")?,
            hup: signal(SignalKind::hangup()).context("cannot watch SIGHUP")?,
        })
    }

    /// Until SIGTERM or SIGINT.
    async fn shutdown(&mut self) {
        loop {
            tokio::select! {
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
                _ = self.hup.recv() => info!("SIGHUP ignored: the agent has nothing to reload (restart it to change its flags)"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_socket_group_is_read_from_etc_group() {
        let groups = "root:x:0:\n# comment\napiary-x:x:998:\napiary:x:999:alice,bob\n";
        assert_eq!(super::parse_group_id(groups, "apiary"), Some(999));
        assert_eq!(super::parse_group_id(groups, "root"), Some(0));
        assert_eq!(super::parse_group_id(groups, "docker"), None);
        assert_eq!(
            super::parse_group_id("apiary:x:notanumber:\n", "apiary"),
            None
        );
    }
}
