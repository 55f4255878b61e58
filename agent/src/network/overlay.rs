//! Overlay networks on a node: the kernel's data path, programmed from the
//! network views the managers send (`view`).
//!
//! Per swarm network the node uses: a bridge `apo<vni>` with a VXLAN link
//! `apx<vni>` on it, and one forwarding entry per peer node for broadcast
//! and unknown traffic (head-end replication; the bridge learns where each
//! task's MAC is from what it receives). A task gets a veth `ethN` on the
//! bridge with its address and the overlay MTU. On the ingress network the
//! bridge also carries the node's own ingress address: the routing mesh
//! (nftables, table `apiary_mesh`) DNATs each published port on every
//! local address to one of the service's tasks, chosen at random per
//! connection (`numgen`), and masquerades to that address so the reply
//! comes back through this node (Docker's mesh hides the client address
//! the same way; host-mode ports keep it).
//!
//! Inside each task on an overlay: the embedded DNS resolver (`dns`) and
//! its services' virtual IPs (nftables table `apiary_vip` in the task's
//! namespace: a connection to a VIP is DNATed to one of the service's
//! running tasks; with none it is refused at once).
//!
//! Everything here is rebuilt from the latest views on each `program`:
//! links of networks no longer in use go, rules are replaced whole, in one
//! nftables transaction each.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{watch, Mutex};
use tracing::{debug, warn};

use super::bridge::{ip, ip_batch, run, run_input, sv};
use super::dns;
use super::links::Links;
use super::view::{NetworkView, TaskNetwork};
use super::{NetError, NetResult};

/// The VXLAN header and its outer UDP/IP: what the overlay gives up of the
/// underlay's MTU.
pub const VXLAN_OVERHEAD: u32 = 50;
/// The underlay MTU assumed (Ethernet).
const UNDERLAY_MTU: u32 = 1500;

const MESH_TABLE: &str = "apiary_mesh";
const VIP_TABLE: &str = "apiary_vip";

pub fn bridge_name(vni: u32) -> String {
    format!("apo{vni:x}")
}

pub fn vxlan_name(vni: u32) -> String {
    format!("apx{vni:x}")
}

/// The VXLAN ID an overlay link is named for (`apo…`, `apx…`).
pub fn overlay_vni(link: &str) -> Option<u32> {
    let hex = link
        .strip_prefix("apo")
        .or_else(|| link.strip_prefix("apx"))?;
    (!hex.is_empty() && hex.len() <= 6)
        .then(|| u32::from_str_radix(hex, 16).ok())
        .flatten()
}

pub fn mtu(view: &NetworkView) -> u32 {
    if view.encrypted {
        return view
            .mtu
            .map_or(super::secure::MTU, |m| m.min(super::secure::MTU));
    }
    view.mtu
        .filter(|m| (576..=9000).contains(m))
        .unwrap_or(UNDERLAY_MTU - VXLAN_OVERHEAD)
}

/// A task on overlays, as `program` keeps it up to date.
struct Member {
    netns: String,
    networks: Vec<String>,
    dns: watch::Sender<Arc<dns::Table>>,
    server: tokio::task::JoinHandle<()>,
    /// The VIP rules last applied in its namespace.
    rules: String,
}

impl Drop for Member {
    fn drop(&mut self) {
        self.server.abort();
    }
}

#[derive(Default)]
struct Inner {
    views: Vec<NetworkView>,
    port: u16,
    /// Peers each VXLAN link floods to, as last programmed.
    fdb: BTreeMap<u32, BTreeSet<Ipv4Addr>>,
    /// The mesh's rules as last applied; None: not known (a new process
    /// replaces whatever an earlier one left).
    mesh: Option<String>,
    members: BTreeMap<String, Member>,
}

pub struct Overlay {
    links: Links,
    /// The encrypted networks' user-space data path.
    tunnel: super::secure::Tunnel,
    inner: Mutex<Inner>,
    upstreams: Arc<Vec<SocketAddr>>,
}

/// The nftables rule sending `addr` (and the given match) to one of
/// `backends` at random; with `port`, to that port.
fn dnat(matcher: &str, backends: &[Ipv4Addr], port: Option<u16>) -> String {
    let to = match backends {
        [one] => one.to_string(),
        many => {
            let map: Vec<String> = many
                .iter()
                .enumerate()
                .map(|(i, b)| format!("{i} : {b}"))
                .collect();
            format!(
                "numgen random mod {} map {{ {} }}",
                many.len(),
                map.join(", ")
            )
        }
    };
    match port {
        Some(p) => format!("{matcher} dnat to {to} : {p}"),
        None => format!("{matcher} dnat to {to}"),
    }
}

/// A whole table's replacement, as one nftables transaction.
fn replace_table(table: &str, chains: &[(String, String, Vec<String>)]) -> String {
    let mut s = format!("table ip {table} {{}}\ndelete table ip {table}\ntable ip {table} {{\n");
    for (name, hook, rules) in chains {
        s.push_str(&format!("  chain {name} {{\n    {hook}\n"));
        for r in rules {
            s.push_str(&format!("    {r}\n"));
        }
        s.push_str("  }\n");
    }
    s.push_str("}\n");
    s
}

/// The routing mesh's rules for the ingress view. Pure.
pub fn mesh_rules(ingress: Option<&NetworkView>) -> String {
    let Some(v) = ingress.filter(|v| v.node_addr.is_some()) else {
        return String::new();
    };
    let mut dnats = Vec::new();
    for s in &v.services {
        if s.backends.is_empty() {
            continue;
        }
        for p in &s.ports {
            let m = format!(
                "fib daddr type local {} dport {}",
                p.protocol.as_str(),
                p.published
            );
            dnats.push(dnat(&m, &s.backends, Some(p.target)));
        }
    }
    if dnats.is_empty() {
        return String::new();
    }
    let br = bridge_name(v.vni);
    replace_table(
        MESH_TABLE,
        &[
            (
                "pre".into(),
                "type nat hook prerouting priority dstnat; policy accept;".into(),
                dnats.clone(),
            ),
            (
                "out".into(),
                "type nat hook output priority -100; policy accept;".into(),
                dnats,
            ),
            (
                "post".into(),
                "type nat hook postrouting priority srcnat; policy accept;".into(),
                vec![format!("oifname \"{br}\" ct status dnat masquerade")],
            ),
        ],
    )
}

/// A task's VIP rules, for the services on its networks. Pure.
pub fn vip_rules(views: &[&NetworkView]) -> String {
    let mut dnats = Vec::new();
    let mut refused = Vec::new();
    for v in views.iter().filter(|v| !v.ingress) {
        for s in &v.services {
            let Some(vip) = s.vip else { continue };
            if s.backends.is_empty() {
                refused.push(vip.to_string());
            } else {
                dnats.push(dnat(&format!("ip daddr {vip}"), &s.backends, None));
            }
        }
    }
    let mut chains = vec![(
        "out".to_string(),
        "type nat hook output priority -100; policy accept;".to_string(),
        dnats,
    )];
    if !refused.is_empty() {
        chains.push((
            "refuse".into(),
            "type filter hook output priority 0; policy accept;".into(),
            vec![format!(
                "ip daddr {{ {} }} reject with icmp type host-unreachable",
                refused.join(", ")
            )],
        ));
    }
    replace_table(VIP_TABLE, &chains)
}

async fn nft(netns: Option<&str>, script: &str) -> NetResult<()> {
    match netns {
        Some(ns) => run_input("ip", &sv(&["netns", "exec", ns, "nft", "-f", "-"]), script).await,
        None => run_input("nft", &sv(&["-f", "-"]), script).await,
    }
}

async fn delete_table(netns: Option<&str>, table: &str) -> NetResult<()> {
    nft(
        netns,
        &format!("table ip {table} {{}}\ndelete table ip {table}\n"),
    )
    .await
}

/// Peers listed as flood entries in `bridge fdb show dev X`.
pub fn parse_fdb(text: &str) -> BTreeSet<Ipv4Addr> {
    text.lines()
        .filter(|l| l.starts_with("00:00:00:00:00:00"))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            while let Some(x) = w.next() {
                if x == "dst" {
                    return w.next()?.parse().ok();
                }
            }
            None
        })
        .collect()
}

impl Overlay {
    pub fn new(upstreams: Vec<SocketAddr>) -> NetResult<Overlay> {
        Ok(Overlay {
            links: Links::open()?,
            tunnel: super::secure::Tunnel::new(),
            inner: Mutex::new(Inner::default()),
            upstreams: Arc::new(upstreams),
        })
    }

    /// The network's bridge and VXLAN link, up, with the node's address
    /// on it for ingress.
    async fn ensure(&self, v: &NetworkView, port: u16) -> NetResult<()> {
        if v.encrypted {
            return self.ensure_encrypted(v, port).await;
        }
        let br = bridge_name(v.vni);
        let vx = vxlan_name(v.vni);
        let mtu = mtu(v).to_string();
        let mut lines = Vec::new();
        if !self.links.exists(&br).await? {
            lines.push(format!("link add {br} type bridge"));
        }
        if !self.links.exists(&vx).await? {
            lines.push(format!(
                "link add {vx} type vxlan id {} dstport {port}",
                v.vni
            ));
        }
        lines.push(format!("link set {vx} master {br} mtu {mtu} up"));
        lines.push(format!("link set {br} up"));
        if let (true, Some(a)) = (v.ingress, v.node_addr) {
            lines.push(format!("addr replace {a}/{} dev {br}", v.prefix()));
        }
        ip_batch(None, &lines).await?;
        if v.ingress {
            for (path, value) in [
                ("/proc/sys/net/ipv4/ip_forward".to_string(), "1"),
                (format!("/proc/sys/net/ipv4/conf/{br}/route_localnet"), "1"),
            ] {
                std::fs::write(&path, value)
                    .map_err(|e| super::io_err("write", std::path::Path::new(&path), e))?;
            }
        }
        Ok(())
    }

    /// An encrypted network: its bridge with the tunnel's TAP link on it.
    async fn ensure_encrypted(&self, v: &NetworkView, port: u16) -> NetResult<()> {
        let key = v.key.as_ref().and_then(|k| k.bytes()).ok_or_else(|| {
            NetError::Invalid(format!(
                "network {} is encrypted but this node was sent no key for it: the managers run an older version?",
                v.name
            ))
        })?;
        let br = bridge_name(v.vni);
        if !self.links.exists(&br).await? {
            ip_batch(None, &[format!("link add {br} type bridge")]).await?;
        }
        let tunnel_port = port.checked_add(1).ok_or_else(|| {
            NetError::Invalid(format!(
                "data path port {port} leaves no port above it for encrypted overlays"
            ))
        })?;
        self.tunnel
            .ensure(v.vni, &key, v.peers.clone(), tunnel_port)
            .await?;
        let tap = super::secure::tap_name(v.vni);
        ip_batch(
            None,
            &[
                format!("link set {tap} master {br} mtu {} up", mtu(v)),
                format!("link set {br} up"),
            ],
        )
        .await
    }

    async fn sync_peers(&self, inner: &mut Inner, v: &NetworkView) -> NetResult<()> {
        if v.encrypted {
            // The tunnel's peers are set by `ensure`.
            return Ok(());
        }
        let vx = vxlan_name(v.vni);
        let have = match inner.fdb.get(&v.vni) {
            Some(h) => h.clone(),
            None => parse_fdb(
                &run("bridge", &sv(&["fdb", "show", "dev", &vx]))
                    .await
                    .unwrap_or_default(),
            ),
        };
        let want: BTreeSet<Ipv4Addr> = v.peers.iter().copied().collect();
        for p in want.difference(&have) {
            let r = run(
                "bridge",
                &sv(&[
                    "fdb",
                    "append",
                    "00:00:00:00:00:00",
                    "dev",
                    &vx,
                    "dst",
                    &p.to_string(),
                ]),
            )
            .await;
            if let Err(e) = r {
                if !e.to_string().contains("File exists") {
                    return Err(e);
                }
            }
        }
        for p in have.difference(&want) {
            let _ = run(
                "bridge",
                &sv(&[
                    "fdb",
                    "del",
                    "00:00:00:00:00:00",
                    "dev",
                    &vx,
                    "dst",
                    &p.to_string(),
                ]),
            )
            .await;
        }
        inner.fdb.insert(v.vni, want);
        Ok(())
    }

    /// Program the node from the latest views: networks made or removed,
    /// peers, the mesh, and every member task's names and VIPs.
    pub async fn program(&self, views: Vec<NetworkView>, port: u16) -> NetResult<()> {
        let mut inner = self.inner.lock().await;
        let mut errors = Vec::new();
        for v in &views {
            if let Err(e) = self.ensure(v, port).await {
                errors.push(e.to_string());
                continue;
            }
            if let Err(e) = self.sync_peers(&mut inner, v).await {
                errors.push(e.to_string());
            }
        }
        // Links of networks no longer in use, including those an earlier
        // process left (this agent alone runs overlays here: the lock).
        let wanted: BTreeSet<u32> = views.iter().map(|v| v.vni).collect();
        errors.extend(self.remove_unwanted(&mut inner, &wanted).await);
        let mesh = mesh_rules(views.iter().find(|v| v.ingress));
        if inner.mesh.as_ref() != Some(&mesh) {
            let r = if mesh.is_empty() {
                delete_table(None, MESH_TABLE).await
            } else {
                nft(None, &mesh).await
            };
            match r {
                Ok(()) => inner.mesh = Some(mesh),
                Err(e) => errors.push(format!("routing mesh: {e}")),
            }
        }
        inner.views = views;
        inner.port = port;
        let Inner { views, members, .. } = &mut *inner;
        for (task, m) in members.iter_mut() {
            if let Err(e) = refresh(views, m).await {
                errors.push(format!("task {task}: {e}"));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(NetError::Command {
                command: "programming the overlay networks".into(),
                stderr: errors.join("; "),
            })
        }
    }

    /// The network of a task about to be attached, made if it is not yet.
    pub async fn prepare(&self, n: &TaskNetwork) -> NetResult<()> {
        let inner = self.inner.lock().await;
        let port = if inner.port == 0 {
            crate::store::networks::DEFAULT_DATA_PATH_PORT
        } else {
            inner.port
        };
        self.ensure(&n.network, port).await
    }

    /// A task joined its overlays: serve its names and program its VIPs.
    /// Again for the same task (an adopted one): replaced.
    pub async fn join(
        &self,
        task: &str,
        netns: &str,
        netns_path: PathBuf,
        networks: Vec<String>,
    ) -> NetResult<()> {
        let sock = dns::bind_in(&netns_path).await?;
        let mut inner = self.inner.lock().await;
        let (tx, rx) = watch::channel(Arc::new(dns::Table::new()));
        let server = tokio::spawn(dns::serve(sock, rx, self.upstreams.clone()));
        let mut m = Member {
            netns: netns.to_string(),
            networks,
            dns: tx,
            server,
            rules: String::new(),
        };
        refresh(&inner.views, &mut m).await?;
        debug!(task.id = task, "task joined its overlay networks");
        inner.members.insert(task.to_string(), m);
        Ok(())
    }

    /// The task left (its namespace goes with its rules).
    pub async fn leave(&self, task: &str) {
        self.inner.lock().await.members.remove(task);
    }

    /// Leaving the swarm: every link and rule of the overlays goes.
    /// Remove the links, flood entries and tunnels of every network not
    /// in `wanted`; the errors, as text.
    async fn remove_unwanted(&self, inner: &mut Inner, wanted: &BTreeSet<u32>) -> Vec<String> {
        let mut errors = Vec::new();
        match self.links.names().await {
            Ok(names) => {
                for name in names
                    .iter()
                    .filter(|n| overlay_vni(n).is_some_and(|v| !wanted.contains(&v)))
                {
                    if let Err(e) = ip(&["link", "del", name]).await {
                        errors.push(e.to_string());
                    }
                }
            }
            Err(e) => errors.push(e.to_string()),
        }
        inner.fdb.retain(|vni, _| wanted.contains(vni));
        for vni in self.tunnel.vnis() {
            if !wanted.contains(&vni) {
                self.tunnel.remove(vni);
            }
        }
        errors
    }

    pub async fn teardown(&self) -> NetResult<()> {
        let mut inner = self.inner.lock().await;
        inner.members.clear();
        inner.views.clear();
        let errors = self.remove_unwanted(&mut inner, &BTreeSet::new()).await;
        if inner.mesh.as_ref().is_none_or(|m| !m.is_empty()) {
            if let Err(e) = delete_table(None, MESH_TABLE).await {
                warn!("removing the routing mesh's rules: {e}");
            }
        }
        inner.mesh = Some(String::new());
        if errors.is_empty() {
            Ok(())
        } else {
            Err(NetError::Command {
                command: "removing the overlay networks".into(),
                stderr: errors.join("; "),
            })
        }
    }
}

/// A member's names and VIP rules from the views.
async fn refresh(views: &[NetworkView], m: &mut Member) -> NetResult<()> {
    let mine: Vec<&NetworkView> = views
        .iter()
        .filter(|v| m.networks.contains(&v.id))
        .collect();
    let table = dns::table(&mine);
    m.dns.send_if_modified(|t| {
        if **t == table {
            false
        } else {
            *t = Arc::new(table);
            true
        }
    });
    let rules = vip_rules(&mine);
    if rules != m.rules {
        nft(Some(&m.netns), &rules).await?;
        m.rules = rules;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::view::{MeshPort, ServiceEntry};
    use crate::network::Protocol;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn the_mesh_sends_each_published_port_to_the_running_tasks() {
        let v = NetworkView {
            vni: 4096,
            ingress: true,
            node_addr: Some(ip("10.0.0.2")),
            services: vec![
                ServiceEntry {
                    name: "web".into(),
                    backends: vec![ip("10.0.0.5"), ip("10.0.0.6")],
                    ports: vec![MeshPort {
                        protocol: Protocol::Tcp,
                        published: 8080,
                        target: 80,
                    }],
                    ..Default::default()
                },
                ServiceEntry {
                    name: "idle".into(),
                    backends: vec![],
                    ports: vec![MeshPort {
                        protocol: Protocol::Udp,
                        published: 53,
                        target: 53,
                    }],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let r = mesh_rules(Some(&v));
        assert!(r.contains("fib daddr type local tcp dport 8080 dnat to numgen random mod 2 map { 0 : 10.0.0.5, 1 : 10.0.0.6 } : 80"), "{r}");
        assert!(!r.contains("dport 53"), "no backend, no rule: {r}");
        assert!(
            r.contains("oifname \"apo1000\" ct status dnat masquerade"),
            "{r}"
        );
        assert!(r.starts_with("table ip apiary_mesh {}\ndelete table ip apiary_mesh\n"));
        // Nothing running: no table at all.
        let mut idle = v.clone();
        idle.services.truncate(0);
        assert_eq!(mesh_rules(Some(&idle)), "");
    }

    #[test]
    fn vips_go_to_the_running_tasks_or_are_refused() {
        let v = NetworkView {
            services: vec![
                ServiceEntry {
                    vip: Some(ip("10.0.1.2")),
                    backends: vec![ip("10.0.1.3")],
                    ..Default::default()
                },
                ServiceEntry {
                    vip: Some(ip("10.0.1.9")),
                    ..Default::default()
                },
                ServiceEntry {
                    vip: None,
                    backends: vec![ip("10.0.1.7")],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let r = vip_rules(&[&v]);
        assert!(r.contains("ip daddr 10.0.1.2 dnat to 10.0.1.3\n"), "{r}");
        assert!(r.contains("ip daddr { 10.0.1.9 } reject"), "{r}");
        assert!(!r.contains("10.0.1.7"), "dnsrr has no VIP: {r}");
    }

    #[test]
    fn overlay_links_are_known_by_name() {
        assert_eq!(overlay_vni(&bridge_name(4097)), Some(4097));
        assert_eq!(overlay_vni(&vxlan_name(0xfffff)), Some(0xfffff));
        assert_eq!(overlay_vni("apiary0"), None);
        assert_eq!(overlay_vni("apo"), None);
    }

    #[test]
    fn flood_entries_are_read_back() {
        let text = "00:00:00:00:00:00 dst 192.0.2.2 self permanent\n00:00:00:00:00:00 dst 192.0.2.3 self permanent\n2a:1b:00:11:22:33 dst 192.0.2.2 self\n";
        let peers: Vec<String> = parse_fdb(text).iter().map(|p| p.to_string()).collect();
        assert_eq!(peers, ["192.0.2.2", "192.0.2.3"]);
    }
}
