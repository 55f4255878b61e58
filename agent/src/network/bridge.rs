//! The bridge network: each task in a network namespace of its own
//! (`/run/netns/<bridge>-<task>`), a veth pair into a per-node bridge,
//! outbound NAT, and DNAT for host-mode published ports.
//!
//! It asks the kernel over rtnetlink which links exist (`links`), and
//! drives `ip` (iproute2) and `iptables` for the changes: iptables has no
//! netlink API to speak of (rtnetlink does links and addresses, not
//! netfilter rules), creating and bind-mounting a namespace from Rust
//! needs unsafe `unshare`/`setns` calls that `ip netns` does for us, and
//! both programs are on every distribution. A missing program is logged
//! at agent start and fails each task's attach with what to install
//! (`NetError::MissingTool`); the agent itself serves on.
//!
//! What it makes on the host is named for this agent (see `owner`).
//!
//! State under `state_dir`: `ips.json` (which task holds which address,
//! written atomically, so an agent restart does not hand out an address a
//! running task holds) and `tasks/<id>/{hosts,resolv.conf,hostname}`.
//! Every step checks before it acts, so `attach`, `publish` and `detach`
//! can be re-run at any point after a crash.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::Mutex;
use tracing::{debug, warn};

use super::ipam::{Allocations, Subnet};
use super::links::Links;
use super::owner::{self, BridgeLock};
use super::view::{NetworkView, TaskNetwork};
use super::{
    files, io_err, overlay, rules, sweep, Attachment, NetError, NetResult, Network, PortMapping,
    Swept,
};

/// Where `ip netns add` puts its namespaces.
const NETNS_DIR: &str = "/run/netns";

/// A task's files in its state dir, and where they go in the container
/// (in this order: `attach` writes hosts, resolv.conf, hostname).
const TASK_FILES: [(&str, &str); 3] = [
    ("hosts", "/etc/hosts"),
    ("resolv.conf", "/etc/resolv.conf"),
    ("hostname", "/etc/hostname"),
];

#[derive(Clone, Debug)]
pub struct BridgeConfig {
    /// The bridge's name (at most 15 characters), e.g. `apiary0`.
    pub bridge: String,
    pub subnet: Subnet,
    /// Publish host-mode ports on this address only; None = every address
    /// of the node (loopback included).
    pub publish_addr: Option<Ipv4Addr>,
    pub state_dir: PathBuf,
}

pub struct Bridge {
    cfg: BridgeConfig,
    /// This agent's tag in the names of its tasks' namespaces.
    owner: String,
    /// The bridge is this agent's alone in its namespace (held, not read).
    _lock: BridgeLock,
    /// The agent's own namespace's links.
    links: Links,
    /// One network change at a time: the address table and the rule checks
    /// (look, then add) must not interleave between tasks.
    lock: Mutex<()>,
    /// The last check of the bridge and its base rules passed
    /// (`ensure_bridge`: a dozen `ip`/`iptables` runs, 20 ms — as much as
    /// the rest of a task's network). An attach checks only when this is
    /// false (the first attach, after a failed check or attach, after
    /// `remove`) or the bridge is gone; `keep` checks again in the
    /// background, off the tasks' start path.
    checked: std::sync::atomic::AtomicBool,
    /// Tasks of this process use the bridge (an attach, or live tasks
    /// found by `sweep` after a restart) and `remove` has not run since:
    /// only then does `keep` check it (after `swarm leave` the node has no
    /// bridge, and a check must not make one again).
    in_use: std::sync::atomic::AtomicBool,
    /// The swarm networks' data path on this node.
    overlay: overlay::Overlay,
    /// Overlays are one agent's per network namespace (their VXLAN port
    /// and link names are the namespace's): taken at the first use.
    overlay_lock: std::sync::Mutex<Option<BridgeLock>>,
}

/// How often `keep` checks the bridge and its base rules (base rules wiped
/// by a firewall reload come back within this; the tasks' own DNAT rules
/// do not, see `keep`).
pub const RECHECK: std::time::Duration = std::time::Duration::from_secs(30);

/// Linux's interface name limit (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;

fn check_task(task: &str) -> NetResult<()> {
    if sweep::is_task_id(task) {
        Ok(())
    } else {
        Err(NetError::Invalid(format!(
            "invalid task ID {task:?}: use at most {} letters, digits, '_' or '.', not dots alone",
            sweep::TASK_ID_MAX
        )))
    }
}

fn check_name(what: &str, s: &str, max: usize) -> NetResult<()> {
    let ok = !s.is_empty()
        && s.len() <= max
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(NetError::Invalid(format!(
            "invalid {what} {s:?}: use at most {max} letters, digits, '-', '_' or '.'"
        )))
    }
}

/// FNV-1a: a stable hash (std's is seeded per process), so the veth name
/// of a task is the same after an agent restart.
fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The host end of a task's veth pair: `v` + 14 hex digits of a hash of
/// bridge and task (task IDs are longer than an interface name allows).
pub fn veth_name(bridge: &str, task: &str) -> String {
    format!("v{:014x}", fnv1a(&format!("{bridge}/{task}")) >> 8)
}

/// What every task namespace of the agent owning `owner` on `bridge` is
/// named after (`<prefix>-<task>`).
pub fn netns_prefix(bridge: &str, owner: &str) -> String {
    format!("{bridge}-{owner}")
}

/// A tool that could not be run: missing (with the package that has it),
/// or failing to start.
fn spawn_error(program: &str, command: impl FnOnce() -> String, e: std::io::Error) -> NetError {
    if e.kind() == std::io::ErrorKind::NotFound {
        NetError::MissingTool {
            program: program.to_string(),
            package: match program {
                "ip" | "bridge" => "iproute2",
                "nft" => "nftables",
                _ => "iptables",
            },
        }
    } else {
        NetError::Command {
            command: command(),
            stderr: e.to_string(),
        }
    }
}

pub(super) async fn run(program: &str, args: &[String]) -> NetResult<String> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .map_err(|e| spawn_error(program, || format!("{program} {}", args.join(" ")), e))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NetError::Command {
            command: format!("{program} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

pub(super) fn sv(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

pub(super) async fn ip(args: &[&str]) -> NetResult<String> {
    run("ip", &sv(args)).await
}

/// Several `ip` commands in one run (`ip -batch -`, in namespace `ns` if
/// given): each spawn of `ip` costs milliseconds. Stops at the first
/// command that fails, which the error names.
pub(super) async fn ip_batch(ns: Option<&str>, lines: &[String]) -> NetResult<()> {
    let mut args = Vec::new();
    if let Some(ns) = ns {
        args.extend(["-n".to_string(), ns.to_string()]);
    }
    args.extend(["-batch".to_string(), "-".to_string()]);
    let input = format!("{}\n", lines.join("\n"));
    let command = || format!("ip {} <<< {:?}", args.join(" "), lines.join("; "));
    stdin_run("ip", &args, &input, command).await
}

/// Run `program` with `input` on its stdin (`nft -f -`).
pub(super) async fn run_input(program: &str, args: &[String], input: &str) -> NetResult<()> {
    stdin_run(program, args, input, || {
        format!("{program} {}", args.join(" "))
    })
    .await
}

/// `program args` fed `input`; errors name the run as `command` says.
async fn stdin_run(
    program: &str,
    args: &[String],
    input: &str,
    command: impl Fn() -> String,
) -> NetResult<()> {
    use tokio::io::AsyncWriteExt;
    let failed = |e: std::io::Error| spawn_error(program, &command, e);
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(failed)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).await.map_err(failed)?;
    }
    let out = child.wait_with_output().await.map_err(failed)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetError::Command {
            command: command(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// `iptables -w` (wait for the xtables lock: other agents and tools).
async fn iptables(table: &str, rest: &[String]) -> NetResult<String> {
    let mut a = sv(&["-w", "-t", table]);
    a.extend(rest.iter().cloned());
    run("iptables", &a).await
}

/// The bridge's flags change only under its lock: no ordering with
/// anything else is needed.
fn set(flag: &std::sync::atomic::AtomicBool, value: bool) {
    flag.store(value, std::sync::atomic::Ordering::Relaxed);
}

fn get(flag: &std::sync::atomic::AtomicBool) -> bool {
    flag.load(std::sync::atomic::Ordering::Relaxed)
}

fn write_sysctl(path: &str, value: &str) -> NetResult<()> {
    std::fs::write(path, value).map_err(|e| io_err("write", Path::new(path), e))
}

/// Replace a file whole (readers never see half of it); with `durable`,
/// synced before it replaces the old one.
pub(super) fn write_atomic(path: &Path, data: &[u8], durable: bool) -> NetResult<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| io_err("create", &tmp, e))?;
    f.write_all(data).map_err(|e| io_err("write", &tmp, e))?;
    if durable {
        f.sync_all().map_err(|e| io_err("fsync", &tmp, e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| io_err("rename to", path, e))
}

impl Bridge {
    /// Check the configuration, take the bridge for this agent, and look
    /// for the tools; the bridge itself is made by the first `attach` (a
    /// node in no swarm has no network of ours). A missing tool is only
    /// logged: the agent serves on (a manager, the API), and each task's
    /// attach fails saying what to install until it is there.
    pub async fn new(cfg: BridgeConfig) -> NetResult<Bridge> {
        check_name("bridge name", &cfg.bridge, IFNAME_MAX)?;
        let tasks = cfg.state_dir.join("tasks");
        std::fs::create_dir_all(&tasks).map_err(|e| io_err("create directory", &tasks, e))?;
        let owner = owner::tag(&cfg.state_dir)?;
        let lock = owner::lock_bridge(&cfg.bridge)?;
        let links = Links::open()?;
        if let Err(e) = Self::check_tools().await {
            warn!(bridge = %cfg.bridge, "{e}: tasks on this node fail until then");
        }
        Ok(Bridge {
            cfg,
            owner,
            _lock: lock,
            links,
            lock: Mutex::new(()),
            checked: std::sync::atomic::AtomicBool::new(false),
            in_use: std::sync::atomic::AtomicBool::new(false),
            overlay: overlay::Overlay::new(super::dns::upstreams(
                &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
            ))?,
            overlay_lock: std::sync::Mutex::new(None),
        })
    }

    /// The programs `attach` runs, and root (reads only).
    async fn check_tools() -> NetResult<()> {
        for (tool, arg) in [("ip", "-V"), ("iptables", "-V")] {
            run(tool, &sv(&[arg])).await?;
        }
        // Fails as `attach` would without root or a nat table.
        iptables("nat", &sv(&["-n", "-L", "POSTROUTING"])).await?;
        Ok(())
    }

    /// Take this namespace's overlay lock, once.
    fn overlay_lock(&self) -> NetResult<()> {
        let mut held = self
            .overlay_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if held.is_none() {
            *held = Some(owner::lock_bridge("overlay").map_err(|_| {
                NetError::Invalid(
                    "another apiary agent in this network namespace already runs overlay networks: run each agent that joins overlay networks in a network namespace of its own".into(),
                )
            })?);
        }
        Ok(())
    }

    fn release_overlay_lock(&self) {
        *self
            .overlay_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    pub fn config(&self) -> &BridgeConfig {
        &self.cfg
    }

    /// What this agent's task namespaces are named after.
    pub fn netns_prefix(&self) -> String {
        netns_prefix(&self.cfg.bridge, &self.owner)
    }

    fn netns_name(&self, task: &str) -> String {
        format!("{}-{task}", self.netns_prefix())
    }

    async fn link_exists(&self, name: &str) -> NetResult<bool> {
        self.links.exists(name).await
    }

    /// Delete the link `name` if there is one.
    async fn delete_link(&self, name: &str) -> NetResult<()> {
        if self.link_exists(name).await? {
            ip(&["link", "del", name]).await?;
        }
        Ok(())
    }

    fn ips_file(&self) -> PathBuf {
        self.cfg.state_dir.join("ips.json")
    }

    fn task_dir(&self, task: &str) -> PathBuf {
        self.cfg.state_dir.join("tasks").join(task)
    }

    pub fn netns_path(&self, task: &str) -> PathBuf {
        Path::new(NETNS_DIR).join(self.netns_name(task))
    }

    fn load(&self) -> NetResult<Allocations> {
        let p = self.ips_file();
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| NetError::Io {
                op: "parse",
                path: p.clone(),
                error: format!("{e} (move it away to start with no allocations)"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Allocations::default()),
            Err(e) => Err(io_err("read", &p, e)),
        }
    }

    fn save(&self, a: &Allocations) -> NetResult<()> {
        let data = serde_json::to_vec_pretty(a).map_err(|e| NetError::Io {
            op: "encode",
            path: self.ips_file(),
            error: e.to_string(),
        })?;
        write_atomic(&self.ips_file(), &data, true)
    }

    /// The bridge, its address, forwarding, and the base rules.
    async fn ensure_bridge(&self) -> NetResult<()> {
        let br = &self.cfg.bridge;
        if !self.link_exists(br).await? {
            ip(&["link", "add", br, "type", "bridge"]).await?;
        }
        let gw = format!("{}/{}", self.cfg.subnet.gateway(), self.cfg.subnet.prefix);
        ip(&["addr", "replace", &gw, "dev", br]).await?;
        ip(&["link", "set", br, "up"]).await?;
        // Outbound NAT needs forwarding; DNAT from the node's own loopback
        // needs 127/8 sources routed out of the bridge (then masqueraded).
        write_sysctl("/proc/sys/net/ipv4/ip_forward", "1")?;
        write_sysctl(&format!("/proc/sys/net/ipv4/conf/{br}/route_localnet"), "1")?;
        for (table, chain) in rules::chains(br) {
            if iptables(table, &sv(&["-n", "-L", &chain])).await.is_err() {
                iptables(table, &sv(&["-N", &chain])).await?;
            }
        }
        for (table, chain, spec) in rules::base_rules(br, &self.cfg.subnet) {
            let mut check = vec!["-C".to_string(), chain.clone()];
            check.extend(spec.iter().cloned());
            if iptables(table, &check).await.is_ok() {
                continue;
            }
            let mut add = if rules::is_builtin(&chain) {
                vec!["-I".to_string(), chain.clone(), "1".into()]
            } else {
                vec!["-A".to_string(), chain.clone()]
            };
            add.extend(spec);
            iptables(table, &add).await?;
        }
        Ok(())
    }

    /// Remove the bridge, its rules and chains (tests, and nodes leaving
    /// bridge mode). Tasks must be detached first.
    pub async fn remove(&self) -> NetResult<()> {
        let _g = self.lock.lock().await;
        set(&self.checked, false);
        set(&self.in_use, false);
        let br = &self.cfg.bridge;
        let mut errors = Vec::new();
        for (table, chain, spec) in rules::base_rules(br, &self.cfg.subnet) {
            if rules::is_builtin(&chain) {
                let mut del = vec!["-D".to_string(), chain.clone()];
                del.extend(spec);
                // Loop: an earlier crash may have added it twice.
                while iptables(table, &del).await.is_ok() {}
            }
        }
        for (table, chain) in rules::chains(br) {
            if iptables(table, &sv(&["-n", "-L", &chain])).await.is_ok() {
                if let Err(e) = iptables(table, &sv(&["-F", &chain])).await {
                    errors.push(e.to_string());
                }
                if let Err(e) = iptables(table, &sv(&["-X", &chain])).await {
                    errors.push(e.to_string());
                }
            }
        }
        if let Err(e) = self.delete_link(br).await {
            errors.push(e.to_string());
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(NetError::Command {
                command: format!("removing bridge {br}"),
                stderr: errors.join("; "),
            })
        }
    }

    async fn dnat_rules(&self) -> NetResult<Vec<rules::DnatRule>> {
        let chain = rules::dnat_chain(&self.cfg.bridge);
        let text = iptables("nat", &sv(&["-S", &chain])).await?;
        Ok(rules::parse_dnat(&text, &chain))
    }

    async fn do_attach(
        &self,
        task: &str,
        hostname: &str,
        networks: &[TaskNetwork],
    ) -> NetResult<Attachment> {
        check_task(task)?;
        if !networks.is_empty() {
            self.overlay_lock()?;
        }
        let _g = self.lock.lock().await;
        let r = self.attach_locked(task, hostname, networks).await;
        if r.is_err() {
            set(&self.checked, false);
        }
        r
    }

    /// Check the bridge and its base rules every `every` while it is in
    /// use, and mend what is missing (a firewall reload wipes the base
    /// rules). In the background: this once ran before an attach every
    /// 30 s and was then 20 ms of that task's start. A failed check is
    /// tried again at the next tick (and by the next attach). Not mended:
    /// the tasks' own DNAT rules, when a reload flushed our chains — the
    /// published ports are not recorded apart from the rules themselves.
    /// Ends when the bridge is dropped.
    pub fn keep(self: &std::sync::Arc<Self>, every: std::time::Duration) {
        let bridge = std::sync::Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(b) = bridge.upgrade() else { return };
                if let Err(e) = b.recheck().await {
                    warn!(bridge = %b.cfg.bridge, "checking the task bridge and its rules: {e} (the next task start tries again)");
                }
            }
        });
    }

    /// One check of `keep`: the bridge and its base rules again, if tasks
    /// use them (`in_use`).
    pub async fn recheck(&self) -> NetResult<()> {
        let _g = self.lock.lock().await;
        if !get(&self.in_use) {
            return Ok(());
        }
        let r = self.ensure_bridge().await;
        set(&self.checked, r.is_ok());
        r
    }

    async fn attach_locked(
        &self,
        task: &str,
        hostname: &str,
        networks: &[TaskNetwork],
    ) -> NetResult<Attachment> {
        if !get(&self.checked) || !self.link_exists(&self.cfg.bridge).await? {
            self.ensure_bridge().await?;
            set(&self.checked, true);
        }
        set(&self.in_use, true);
        let mut a = self.load()?;
        let addr = a.allocate(&self.cfg.subnet, task)?;
        self.save(&a)?;

        let ns = self.netns_name(task);
        let ns_path = self.netns_path(task);
        let veth = veth_name(&self.cfg.bridge, task);
        let veth_exists = self.link_exists(&veth).await?;
        let mut host = Vec::new();
        if !ns_path.exists() {
            host.push(format!("netns add {ns}"));
        } else if !veth_exists {
            // A half-made pair from a crash: its namespace end may remain.
            let _ = ip(&["-n", &ns, "link", "del", "eth0"]).await;
        }
        if !veth_exists {
            host.push(format!(
                "link add {veth} type veth peer name eth0 netns {ns}"
            ));
        }
        host.push(format!("link set {veth} master {} up", self.cfg.bridge));
        ip_batch(None, &host).await?;
        let cidr = format!("{addr}/{}", self.cfg.subnet.prefix);
        let gw = self.cfg.subnet.gateway().to_string();
        ip_batch(
            Some(&ns),
            &[
                "link set lo up".to_string(),
                format!("addr replace {cidr} dev eth0"),
                "link set eth0 up".to_string(),
                format!("route replace default via {gw}"),
            ],
        )
        .await?;
        for (i, n) in networks.iter().enumerate() {
            self.overlay.prepare(n).await?;
            let br = overlay::bridge_name(n.network.vni);
            let veth = veth_name(&br, task);
            let ifname = format!("eth{}", i + 1);
            let mtu = overlay::mtu(&n.network);
            if !self.link_exists(&veth).await? {
                let _ = ip(&["-n", &ns, "link", "del", &ifname]).await;
                ip_batch(
                    None,
                    &[format!(
                        "link add {veth} mtu {mtu} type veth peer name {ifname} mtu {mtu} netns {ns}"
                    )],
                )
                .await?;
            }
            ip_batch(None, &[format!("link set {veth} master {br} up")]).await?;
            ip_batch(
                Some(&ns),
                &[
                    format!(
                        "addr replace {}/{} dev {ifname}",
                        n.addr,
                        n.network.prefix()
                    ),
                    format!("link set {ifname} up"),
                ],
            )
            .await?;
        }

        let dir = self.task_dir(task);
        std::fs::create_dir_all(&dir).map_err(|e| io_err("create directory", &dir, e))?;
        let host_resolv = host_resolv_conf();
        // Tasks on overlays ask the embedded resolver (which forwards what
        // is not a service name to the node's own name servers).
        let named: Vec<String> = networks
            .iter()
            .filter(|n| !n.network.ingress)
            .map(|n| n.network.id.clone())
            .collect();
        let resolv = if named.is_empty() {
            files::resolv_conf(&host_resolv)
        } else {
            files::embedded_resolv_conf(&host_resolv)
        };
        let data = [
            files::hosts(hostname, Some(addr)),
            resolv,
            format!("{hostname}\n"),
        ];
        let mut a = self.planned_paths(task);
        // Not synced (three fsyncs less on every task start): every attach
        // writes them again, and no container outlives a host crash.
        for ((p, _), data) in a.files.iter().zip(data) {
            write_atomic(p, data.as_bytes(), false)?;
        }
        a.ip = Some(addr);
        // Service names resolve on the networks a task joined itself
        // (not on ingress, as in Docker).
        if !named.is_empty() {
            self.overlay.join(task, &ns, ns_path.clone(), named).await?;
        }
        debug!(task.id = task, %addr, netns = %ns_path.display(), "task network attached");
        Ok(a)
    }

    /// The namespace and the /etc files of a task, by its ID alone.
    fn planned_paths(&self, task: &str) -> Attachment {
        let dir = self.task_dir(task);
        Attachment {
            netns: Some(self.netns_path(task)),
            ip: None,
            files: TASK_FILES
                .iter()
                .map(|(name, target)| (dir.join(name), target.to_string()))
                .collect(),
        }
    }

    async fn do_publish(&self, task: &str, ports: &[PortMapping]) -> NetResult<Vec<PortMapping>> {
        if ports.is_empty() {
            return Ok(vec![]);
        }
        check_task(task)?;
        let _g = self.lock.lock().await;
        let addr = self.load()?.get(task).ok_or_else(|| {
            NetError::Invalid(format!(
                "task {task} has no address on {}: attach it before publishing its ports",
                self.cfg.bridge
            ))
        })?;
        let existing = self.dnat_rules().await?;
        let host = self.cfg.publish_addr;
        let mut todo = Vec::new();
        for p in ports {
            let mut mine = false;
            for r in existing.iter().filter(|r| rules::clashes(r, host, p)) {
                match &r.task {
                    Some(t) if t == task => mine = true,
                    other => {
                        return Err(NetError::PortInUse {
                            port: p.published,
                            protocol: p.protocol,
                            by: match other {
                                Some(t) => format!(" (published by task {t})"),
                                None => String::new(),
                            },
                        })
                    }
                }
            }
            if !mine {
                // DNAT takes the port before any socket sees it: a program
                // already listening there would be silently shadowed.
                super::check_free(host, p)?;
                todo.push(p);
            }
        }
        let chain = rules::dnat_chain(&self.cfg.bridge);
        for p in todo {
            let mut add = vec!["-A".to_string(), chain.clone()];
            add.extend(rules::dnat_rule(task, host, p, addr));
            iptables("nat", &add).await?;
        }
        Ok(ports.to_vec())
    }

    async fn do_detach(&self, task: &str) -> NetResult<()> {
        check_task(task)?;
        self.overlay.leave(task).await;
        let _g = self.lock.lock().await;
        let rules = self.dnat_rules().await?;
        let mut a = self.load()?;
        self.undo(task, &rules, &mut a).await?;
        debug!(task.id = task, "task network detached");
        Ok(())
    }

    /// Undo a task's attachment: its DNAT rules (among `rules`), namespace,
    /// veth, address (in `a`, saved if it changed) and /etc files. Under
    /// the lock.
    async fn undo(
        &self,
        task: &str,
        rules: &[rules::DnatRule],
        a: &mut Allocations,
    ) -> NetResult<()> {
        let chain = rules::dnat_chain(&self.cfg.bridge);
        for r in rules {
            if r.task.as_deref() == Some(task) {
                let mut del = vec!["-D".to_string(), chain.clone()];
                del.extend(r.spec.iter().cloned());
                iptables("nat", &del).await?;
            }
        }
        // Deleting the namespace deletes its veth end, and with it ours;
        // a container still holding the namespace keeps it alive until it
        // exits, which is why the worker detaches only after that.
        if self.netns_path(task).exists() {
            ip(&["netns", "del", &self.netns_name(task)]).await?;
        }
        let veth = veth_name(&self.cfg.bridge, task);
        if self.link_exists(&veth).await? {
            let _ = ip(&["link", "del", &veth]).await;
        }
        if a.release(task) {
            self.save(a)?;
        }
        let dir = self.task_dir(task);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", &dir, e)),
        }
    }

    /// The bridge's DNAT rules; none if its chain does not exist (yet).
    async fn dnat_rules_if_any(&self) -> NetResult<Vec<rules::DnatRule>> {
        let chain = rules::dnat_chain(&self.cfg.bridge);
        if iptables("nat", &sv(&["-n", "-L", &chain])).await.is_err() {
            return Ok(Vec::new());
        }
        self.dnat_rules().await
    }

    /// What the network has on the host (see `sweep`).
    async fn found(&self) -> NetResult<(sweep::Found, bool)> {
        let names = |dir: &Path| -> NetResult<Vec<String>> {
            match std::fs::read_dir(dir) {
                Ok(rd) => Ok(rd
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
                Err(e) => Err(io_err("list", dir, e)),
            }
        };
        // An unreadable table is rebuilt from the namespaces of live tasks.
        let (allocations, table_ok) = match self.load() {
            Ok(a) => (a, true),
            Err(e) => {
                warn!("the address table is unreadable ({e}); rebuilding it from the running tasks' namespaces");
                (Allocations::default(), false)
            }
        };
        Ok((
            sweep::Found {
                netns: names(Path::new(NETNS_DIR))?,
                ports: self.links.ports(&self.cfg.bridge).await?,
                dnat: self.dnat_rules_if_any().await?,
                allocations,
                task_dirs: names(&self.cfg.state_dir.join("tasks"))?,
            },
            table_ok,
        ))
    }

    /// The address a live task's namespace gives its eth0, if any.
    async fn netns_addr(&self, task: &str) -> Option<Ipv4Addr> {
        let ns = self.netns_name(task);
        let out = ip(&["-n", &ns, "-4", "-o", "addr", "show", "dev", "eth0"])
            .await
            .ok()?;
        sweep::parse_inet(&out)
    }

    async fn do_sweep(&self, live: &HashSet<String>) -> NetResult<Swept> {
        let _g = self.lock.lock().await;
        let (found, table_ok) = self.found().await?;
        let plan = sweep::plan(&self.cfg.bridge, &self.netns_prefix(), &found, live);
        let mut a = found.allocations.clone();
        let mut errors = Vec::new();
        for task in &plan.orphans {
            if let Err(e) = self.undo(task, &found.dnat, &mut a).await {
                errors.push(format!("task {task}: {e}"));
            }
        }
        for veth in &plan.stray_veths {
            if let Err(e) = self.delete_link(veth).await {
                errors.push(e.to_string());
            }
        }
        // Tasks that outlived the agent keep using the bridge: `keep`
        // looks after it from now on, not only after the next attach.
        if !plan.live_netns.is_empty() && self.link_exists(&self.cfg.bridge).await.unwrap_or(false)
        {
            set(&self.in_use, true);
        }
        let mut seen = std::collections::BTreeMap::new();
        for task in &plan.live_netns {
            if let Some(addr) = self.netns_addr(task).await {
                seen.insert(task.clone(), addr);
            }
        }
        let fixed = sweep::reconcile(&a, &self.cfg.subnet, live, &seen);
        let recovered: Vec<String> = fixed
            .tasks
            .iter()
            .filter(|(t, ip)| found.allocations.get(t) != Some(**ip))
            .map(|(t, _)| t.clone())
            .collect();
        if !table_ok || fixed != a {
            if !table_ok {
                let bad = self.ips_file().with_extension("json.bad");
                if let Err(e) = std::fs::rename(self.ips_file(), &bad) {
                    warn!(
                        "could not keep the unreadable address table as {}: {e}",
                        bad.display()
                    );
                }
            }
            if let Err(e) = self.save(&fixed) {
                errors.push(e.to_string());
            }
        }
        if !errors.is_empty() {
            return Err(NetError::Command {
                command: format!("sweeping bridge {}", self.cfg.bridge),
                stderr: errors.join("; "),
            });
        }
        Ok(Swept {
            released: plan.orphans.into_iter().collect(),
            stray_veths: plan.stray_veths,
            recovered,
        })
    }

    /// Tasks holding an address (for tests and leftover checks).
    pub fn attached(&self) -> NetResult<Vec<String>> {
        Ok(self.load()?.tasks.into_keys().collect())
    }
}

/// The node's resolv.conf; behind systemd-resolved (only 127.0.0.53
/// listed) the real upstream list, which a task can reach.
fn host_resolv_conf() -> String {
    let main = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    if !files::has_reachable_nameserver(&main) {
        if let Ok(s) = std::fs::read_to_string("/run/systemd/resolve/resolv.conf") {
            return s;
        }
    }
    main
}

impl Network for Bridge {
    fn attach<'a>(
        &'a self,
        task: &'a str,
        hostname: &'a str,
        networks: &'a [TaskNetwork],
    ) -> BoxFuture<'a, NetResult<Attachment>> {
        self.do_attach(task, hostname, networks).boxed()
    }
    fn program(&self, views: Vec<NetworkView>, data_port: u16) -> BoxFuture<'_, NetResult<()>> {
        async move {
            if !views.is_empty() {
                self.overlay_lock()?;
                return self.overlay.program(views, data_port).await;
            }
            // No overlay in use here: clear what this agent (or an earlier
            // run of it) left, unless another agent in this namespace holds
            // the overlays — then they are its, not ours. The lock is let
            // go after, for whichever agent needs overlays next.
            if self.overlay_lock().is_err() {
                return Ok(());
            }
            let r = self.overlay.program(views, data_port).await;
            self.release_overlay_lock();
            r
        }
        .boxed()
    }
    fn planned(&self, task: &str) -> Attachment {
        self.planned_paths(task)
    }
    fn publish<'a>(
        &'a self,
        task: &'a str,
        ports: &'a [PortMapping],
    ) -> BoxFuture<'a, NetResult<Vec<PortMapping>>> {
        self.do_publish(task, ports).boxed()
    }
    fn detach<'a>(&'a self, task: &'a str) -> BoxFuture<'a, NetResult<()>> {
        self.do_detach(task).boxed()
    }
    fn sweep<'a>(&'a self, live: &'a HashSet<String>) -> BoxFuture<'a, NetResult<Swept>> {
        self.do_sweep(live).boxed()
    }
    fn teardown(&self) -> BoxFuture<'_, NetResult<()>> {
        async move {
            let swept = self.do_sweep(&HashSet::new()).await;
            let overlays = self.overlay.teardown().await;
            let removed = self.remove().await;
            swept.and(overlays).and(removed)
        }
        .boxed()
    }
}
