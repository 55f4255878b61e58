//! Task networking: the seam between the worker and the host's network.
//!
//! The worker asks a `Network` for an attachment before it prepares a
//! task's container (a network namespace to join, the task's address and
//! the /etc files to bind-mount), asks it to publish the task's host-mode
//! ports before starting it, and detaches once the container has ended.
//! Two implementations:
//! - `bridge::Bridge` — a namespace per task with a veth on a per-node
//!   bridge, outbound NAT and DNAT for host-mode ports (`ip` + `iptables`);
//! - `HostNetwork` — the host's own network (`--task-network host`, and
//!   nodes that run no real containers): nothing to set up.
//!
//! Every call is idempotent: the worker re-drives its tasks after an agent
//! restart or a lost answer, and re-adopts running containers by calling
//! `attach` and `publish` again. An agent killed while tasks ran cannot
//! detach the ones whose containers vanish meanwhile: the worker `sweep`s
//! at start with the tasks whose containers it found. Leaving the swarm
//! ends with `teardown`.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use futures::future::BoxFuture;

pub mod bridge;
pub mod dns;
pub mod files;
pub mod ipam;
pub mod links;
pub mod overlay;
pub mod owner;
pub mod rules;
pub mod secure;
pub mod sweep;
pub mod view;

pub use bridge::{Bridge, BridgeConfig};

/// What a task's container needs from the network.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Attachment {
    /// The namespace to join (`/run/netns/<name>`); None = the host's.
    pub netns: Option<PathBuf>,
    /// The task's address on the node's bridge.
    pub ip: Option<Ipv4Addr>,
    /// (host file, path in the container): /etc/hosts, /etc/resolv.conf,
    /// /etc/hostname.
    pub files: Vec<(PathBuf, String)>,
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn parse(s: &str) -> Result<Protocol, NetError> {
        match s.to_ascii_lowercase().as_str() {
            "" | "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            other => Err(NetError::Unsupported(format!(
                "publishing {other} ports is not supported: use tcp or udp"
            ))),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// A host-mode published port: `published` on the node → `target` in the
/// task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortMapping {
    pub protocol: Protocol,
    pub published: u16,
    pub target: u16,
}

impl std::fmt::Display for PortMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}/{}",
            self.published,
            self.target,
            self.protocol.as_str()
        )
    }
}

/// What a sweep did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Swept {
    /// Tasks whose leftovers were removed (namespace, veth, rules,
    /// address, files).
    pub released: Vec<String>,
    /// Veths on the bridge that no task owned.
    pub stray_veths: Vec<String>,
    /// Live tasks whose address was missing from (or wrong in) the
    /// address table and was read back from their namespace.
    pub recovered: Vec<String>,
}

impl Swept {
    pub fn is_empty(&self) -> bool {
        self.released.is_empty() && self.stray_veths.is_empty() && self.recovered.is_empty()
    }
}

/// Why a network call failed; the message lands in the task's ERROR
/// column, so it names the command or path and what to do.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NetError {
    /// A host port is taken (by another program or another task).
    #[error("host port {port}/{} is already in use on this node{by}", protocol.as_str())]
    PortInUse {
        port: u16,
        protocol: Protocol,
        /// ": ..." naming the holder when known, else empty.
        by: String,
    },
    /// A program the bridge network needs is not installed.
    #[error("{program} not found: task networking in bridge mode needs it (install {package}, or start the agent with --task-network host)")]
    MissingTool {
        program: String,
        package: &'static str,
    },
    /// The kernel did not answer a netlink request as asked.
    #[error("netlink: {what}: {error}")]
    Netlink { what: String, error: String },
    /// A command failed.
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    /// A file of the network's state.
    #[error("{op} {path}: {error}")]
    Io {
        op: &'static str,
        path: PathBuf,
        error: String,
    },
    /// Every address of the subnet is taken.
    #[error("no free address left in {0}: use a larger --bridge-subnet")]
    Exhausted(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unsupported(String),
}

pub type NetResult<T> = Result<T, NetError>;

pub(crate) fn io_err(op: &'static str, path: &std::path::Path, e: std::io::Error) -> NetError {
    NetError::Io {
        op,
        path: path.to_path_buf(),
        error: e.to_string(),
    }
}

/// The host's network, as seen by a task.
pub trait Network: Send + Sync + 'static {
    /// Give the task its network (idempotent: the same task gets the same
    /// namespace and address again).
    fn attach<'a>(
        &'a self,
        task: &'a str,
        hostname: &'a str,
        networks: &'a [view::TaskNetwork],
    ) -> BoxFuture<'a, NetResult<Attachment>>;
    /// Program the node's overlays from the managers' latest network views
    /// (`overlay`): networks, peers, the routing mesh, and the names and
    /// virtual IPs of the tasks on them.
    fn program(
        &self,
        views: Vec<view::NetworkView>,
        data_port: u16,
    ) -> BoxFuture<'_, NetResult<()>>;
    /// What `attach` will give this task, without its address: the paths
    /// depend on the task ID alone, so the worker creates the container
    /// while the namespace is still being made (the container's spec only
    /// names them; runc needs them when the task is created).
    fn planned(&self, task: &str) -> Attachment;
    /// Make `ports` answer on this node; returns them as published.
    /// Idempotent for the task's own ports; a port held by anything else
    /// is `PortInUse`.
    fn publish<'a>(
        &'a self,
        task: &'a str,
        ports: &'a [PortMapping],
    ) -> BoxFuture<'a, NetResult<Vec<PortMapping>>>;
    /// Undo `attach` and `publish`; Ok if there is nothing to undo.
    fn detach<'a>(&'a self, task: &'a str) -> BoxFuture<'a, NetResult<()>>;
    /// After a restart: undo what is held for any task not in `live` (the
    /// tasks whose containers still exist), and make the table of
    /// addresses agree with the live tasks' namespaces, so that detaching
    /// them later releases what they really hold. Call before attaching
    /// anything.
    fn sweep<'a>(&'a self, live: &'a HashSet<String>) -> BoxFuture<'a, NetResult<Swept>>;
    /// Leaving the swarm: undo every task's attachment and remove what the
    /// network itself made on the node. The tasks' containers must have
    /// ended.
    fn teardown(&self) -> BoxFuture<'_, NetResult<()>>;
}

/// Tasks share the host's network (Docker's `--network host`): the
/// container binds its ports itself, so `publish` only checks that they
/// are free (for a clear error before the task starts) — and only
/// when `check_ports` is set: a simulated fleet binds nothing.
pub struct HostNetwork {
    check_ports: bool,
}

impl HostNetwork {
    pub fn new() -> HostNetwork {
        HostNetwork { check_ports: true }
    }
    /// For executors that run nothing (the simulated fleet, nodes without
    /// a runtime): no checks at all.
    pub fn unchecked() -> HostNetwork {
        HostNetwork { check_ports: false }
    }
}

impl Default for HostNetwork {
    fn default() -> Self {
        HostNetwork::new()
    }
}

impl Network for HostNetwork {
    fn attach<'a>(
        &'a self,
        _task: &'a str,
        _hostname: &'a str,
        networks: &'a [view::TaskNetwork],
    ) -> BoxFuture<'a, NetResult<Attachment>> {
        let r = match networks.first() {
            None => Ok(Attachment::default()),
            Some(n) => Err(NetError::Unsupported(format!(
                "network {}: tasks on overlay networks need the bridge task network (start the agent without --task-network host)",
                n.network.name
            ))),
        };
        Box::pin(futures::future::ready(r))
    }
    fn program(
        &self,
        _views: Vec<view::NetworkView>,
        _data_port: u16,
    ) -> BoxFuture<'_, NetResult<()>> {
        // Nothing to program: a host-network node runs no overlay task
        // (their attach says so) and does not serve the routing mesh.
        Box::pin(futures::future::ready(Ok(())))
    }
    fn planned(&self, _task: &str) -> Attachment {
        Attachment::default()
    }
    fn publish<'a>(
        &'a self,
        _task: &'a str,
        ports: &'a [PortMapping],
    ) -> BoxFuture<'a, NetResult<Vec<PortMapping>>> {
        let r = (|| {
            for p in ports {
                if p.published != p.target {
                    return Err(NetError::Unsupported(format!(
                        "port {p}: with --task-network host a task's port is the host's, so published and target must be equal"
                    )));
                }
                if self.check_ports {
                    check_free(None, p)?;
                }
            }
            Ok(ports.to_vec())
        })();
        Box::pin(futures::future::ready(r))
    }
    fn detach<'a>(&'a self, _task: &'a str) -> BoxFuture<'a, NetResult<()>> {
        Box::pin(futures::future::ready(Ok(())))
    }
    fn sweep<'a>(&'a self, _live: &'a HashSet<String>) -> BoxFuture<'a, NetResult<Swept>> {
        Box::pin(futures::future::ready(Ok(Swept::default())))
    }
    fn teardown(&self) -> BoxFuture<'_, NetResult<()>> {
        Box::pin(futures::future::ready(Ok(())))
    }
}

/// Is the host port free? Binding it is the only sure test: whatever holds
/// it (any program, any address family quirk), the bind says so.
pub fn check_free(addr: Option<Ipv4Addr>, p: &PortMapping) -> NetResult<()> {
    let ip = IpAddr::V4(addr.unwrap_or(Ipv4Addr::UNSPECIFIED));
    let r = match p.protocol {
        Protocol::Tcp => std::net::TcpListener::bind((ip, p.published)).map(drop),
        Protocol::Udp => std::net::UdpSocket::bind((ip, p.published)).map(drop),
    };
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(NetError::PortInUse {
            port: p.published,
            protocol: p.protocol,
            by: String::new(),
        }),
        Err(e) => Err(NetError::Invalid(format!(
            "cannot check host port {}/{} on {ip}: {e}",
            p.published,
            p.protocol.as_str()
        ))),
    }
}

#[cfg(test)]
mod tests;
