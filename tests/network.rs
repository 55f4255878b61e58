//! Task networking against the real thing: a containerd of the test's own,
//! a bridge of the test's own (name and subnet unlike any agent's), and a
//! namespace standing for "the outside world". Shows: a host-mode
//! published port answering on the node's loopback, outbound NAT, distinct
//! addresses, idempotent re-attach, the port-in-use error, and that nothing
//! (namespace, veth, rule, bridge) is left behind. Then, with real agents:
//! a UDP port published in host mode, what a `kill -9`ed agent leaves
//! swept at its restart (and only that: its adopted tasks and the other
//! agent's keep their network), and `swarm leave` clearing the node.
//!
//! Needs root, containerd, runc, busybox-static, iproute2, iptables, the
//! docker CLI, and libc6-dev (the UDP echo program is linked statically).

mod harness;

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use apiary::executor::{ContainerSpec, Containerd, Executor};
use apiary::network::ipam::Subnet;
use apiary::network::{
    bridge, rules, sweep, Bridge, BridgeConfig, NetError, Network, PortMapping, Protocol,
};
use apiary::worker::spec::with_attachment;
use harness::containerd::{run_showing_logs, Daemon};
use harness::{eventually, Agent, Cluster, PATIENCE};

fn sh(id: &str, script: &str) -> ContainerSpec {
    ContainerSpec {
        id: id.into(),
        name: format!("net.1.{id}"),
        image: "busybox".into(),
        command: vec!["sh".into(), "-c".into(), script.into()],
        labels: HashMap::from([("com.apiary.test".to_string(), id.to_string())]),
        ..Default::default()
    }
}

fn tcp(published: u16, target: u16) -> PortMapping {
    PortMapping {
        protocol: Protocol::Tcp,
        published,
        target,
    }
}

/// `GET /` over plain TCP; the whole answer, or None.
fn http_get(addr: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn cmd(program: &str, args: &[&str]) -> (bool, String) {
    match Command::new(program).args(args).output() {
        Ok(o) => (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        ),
        Err(e) => (false, e.to_string()),
    }
}

/// Everything the test made on the host, removed on drop even after a
/// panic: the bridge's namespaces, veths, rules and chains, the bridge,
/// and the "outside" namespace with its server.
struct HostState {
    bridge: String,
    subnet: Subnet,
    outside: String,
    outside_veth: String,
    server: Option<Child>,
    /// Namespaces a test made by hand.
    extra_netns: Vec<String>,
    /// What the bridge's task namespaces are named after (known once it
    /// is made).
    netns_prefix: String,
}

impl HostState {
    fn leftovers(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Ok(rd) = std::fs::read_dir("/run/netns") {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if sweep::task_of_netns(&self.netns_prefix, &n).is_some() {
                    out.push(format!("netns {n}"));
                }
            }
        }
        let (_, links) = cmd("ip", &["-o", "link", "show", "master", &self.bridge]);
        for l in links.lines().filter(|l| !l.trim().is_empty()) {
            out.push(format!("link on the bridge: {l}"));
        }
        let chain = rules::dnat_chain(&self.bridge);
        let (_, text) = cmd("iptables", &["-w", "-t", "nat", "-S", &chain]);
        for r in rules::parse_dnat(&text, &chain) {
            out.push(format!("DNAT rule: {}", r.spec.join(" ")));
        }
        out
    }
}

impl Drop for HostState {
    fn drop(&mut self) {
        if let Some(mut c) = self.server.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = cmd("ip", &["netns", "del", &self.outside]);
        for ns in &self.extra_netns {
            let _ = cmd("ip", &["netns", "del", ns]);
        }
        let _ = cmd("ip", &["link", "del", &self.outside_veth]);
        harness::remove_bridge(&self.bridge, &self.subnet.to_string());
    }
}

#[test]
fn task_networking_end_to_end() {
    let daemon = Daemon::start();
    let n = (std::process::id() % 200) as u8 + 20;
    let mut host = HostState {
        bridge: format!("aptest{n}"),
        subnet: Subnet::parse(&format!("10.215.{n}.0/24")).expect("subnet"),
        outside: format!("aptest-out-{n}"),
        outside_veth: format!("aptout{n}"),
        server: None,
        extra_netns: Vec::new(),
        netns_prefix: String::new(),
    };
    run_showing_logs(
        scenario(&daemon, &mut host, n),
        &[("containerd", &|| daemon.log())],
    );
}

/// A namespace with a web server at 198.18.<n>.2:9000, joined to the host
/// by a veth and with no route back to the bridge's subnet: a task reaches
/// it only through the outbound NAT.
fn outside_world(host: &mut HostState, n: u8, dir: &std::path::Path) -> String {
    let ns = host.outside.clone();
    let here = format!("198.18.{n}.1/30");
    let there = format!("198.18.{n}.2/30");
    for args in [
        vec!["netns", "add", &ns],
        vec![
            "link",
            "add",
            &host.outside_veth,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ns,
        ],
        vec!["addr", "add", &here, "dev", &host.outside_veth],
        vec!["link", "set", &host.outside_veth, "up"],
        vec!["-n", &ns, "addr", "add", &there, "dev", "eth0"],
        vec!["-n", &ns, "link", "set", "eth0", "up"],
        vec!["-n", &ns, "link", "set", "lo", "up"],
    ] {
        let (ok, out) = cmd("ip", &args);
        assert!(ok, "ip {}: {out}", args.join(" "));
    }
    std::fs::write(dir.join("index.html"), "outside-ok\n").expect("index");
    let child = Command::new("ip")
        .args(["netns", "exec", &ns, harness::image::BUSYBOX, "httpd", "-f"])
        .args(["-p", "9000", "-h"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("busybox httpd in the outside namespace");
    host.server = Some(child);
    format!("198.18.{n}.2:9000")
}

async fn start(
    exec: &Containerd,
    net: &Bridge,
    spec: ContainerSpec,
    ports: &[PortMapping],
) -> Ipv4Addr {
    let a = net.attach(&spec.id, &spec.id, &[]).await.expect("attach");
    net.publish(&spec.id, ports).await.expect("publish");
    let spec = with_attachment(spec, &a);
    exec.prepare(&spec).await.expect("prepare");
    exec.start(&spec.id).await.expect("start");
    a.ip.expect("an address")
}

async fn scenario(daemon: &Daemon, host: &mut HostState, n: u8) {
    let exec = daemon.executor().await;
    let tar = daemon.dir.path().join("busybox.tar");
    harness::image::busybox_oci_tar(&tar, "busybox:latest");
    exec.load_image(std::fs::File::open(&tar).expect("open image"))
        .await
        .expect("load busybox");
    let www = daemon.dir.path().join("outside-www");
    std::fs::create_dir_all(&www).expect("www dir");
    let outside = outside_world(host, n, &www);

    let net = Bridge::new(BridgeConfig {
        bridge: host.bridge.clone(),
        subnet: host.subnet,
        publish_addr: None,
        state_dir: daemon.dir.path().join("network"),
    })
    .await
    .expect("bridge");
    // Twice is harmless (an agent restart).
    let net = {
        drop(net);
        Bridge::new(BridgeConfig {
            bridge: host.bridge.clone(),
            subnet: host.subnet,
            publish_addr: None,
            state_dir: daemon.dir.path().join("network"),
        })
        .await
        .expect("bridge again")
    };
    host.netns_prefix = net.netns_prefix();
    // Checked in the background, often, for the firewall-reload case below.
    let net = std::sync::Arc::new(net);
    net.keep(Duration::from_millis(200));

    // ---- a web server published in host mode answers on the node's loopback
    let web = sh(
        "web",
        "mkdir -p /www && echo hello-from-$(hostname) > /www/index.html && exec busybox httpd -f -p 80 -h /www",
    );
    let web_ip = start(&exec, &net, web, &[tcp(18080, 80)]).await;
    assert!(host.subnet.contains(web_ip), "{web_ip}");
    let answer = eventually(
        "the web task on 127.0.0.1:18080",
        Duration::from_secs(20),
        || http_get("127.0.0.1:18080").filter(|a| a.contains("hello-from-web")),
    );
    assert!(answer.starts_with("HTTP/1."), "{answer}");

    // Attach and publish again (a restarted worker re-driving): same
    // address, no second rule.
    let again = net.attach("web", "web", &[]).await.expect("attach again");
    assert_eq!(again.ip, Some(web_ip));
    net.publish("web", &[tcp(18080, 80)])
        .await
        .expect("publish again");
    let chain = rules::dnat_chain(&host.bridge);
    let (_, listed) = cmd("iptables", &["-w", "-t", "nat", "-S", &chain]);
    assert_eq!(rules::parse_dnat(&listed, &chain).len(), 1, "{listed}");

    // ---- a firewall reload wipes a base rule (the jump to our DNAT chain
    // for the node's own connections): `keep` puts it back, and the
    // published port answers on loopback again
    let dnat_chain = rules::dnat_chain(&host.bridge);
    let jump = ["-m", "addrtype", "--dst-type", "LOCAL", "-j", &dnat_chain];
    let (ok, out) = cmd(
        "iptables",
        &[&["-w", "-t", "nat", "-D", "OUTPUT"][..], &jump].concat(),
    );
    assert!(ok, "delete the OUTPUT jump: {out}");
    eventually("the OUTPUT jump back", Duration::from_secs(10), || {
        cmd(
            "iptables",
            &[&["-w", "-t", "nat", "-C", "OUTPUT"][..], &jump].concat(),
        )
        .0
        .then_some(())
    });
    eventually(
        "the web task on 127.0.0.1:18080 after the rules were mended",
        Duration::from_secs(10),
        || http_get("127.0.0.1:18080").filter(|a| a.contains("hello-from-web")),
    );

    // ---- outbound NAT, its own address, the /etc files
    let client = sh(
        "client",
        &format!(
            "wget -q -O- http://{outside}/ && cat /etc/hostname && grep -c client /etc/hosts && grep -c nameserver /etc/resolv.conf && ! grep -q 'nameserver 127' /etc/resolv.conf"
        ),
    );
    let client_ip = start(&exec, &net, client, &[]).await;
    assert_ne!(client_ip, web_ip, "two tasks, two addresses");
    let code = tokio::time::timeout(Duration::from_secs(30), exec.wait("client"))
        .await
        .expect("the client exits within 30 s")
        .expect("wait");
    let log =
        std::fs::read_to_string(exec.log_path("client").expect("log path")).unwrap_or_default();
    assert_eq!(code.code, 0, "client output: {log}");
    assert!(log.contains("outside-ok"), "{log}");

    // ---- host port in use: by another program, and by another task
    let holder = std::net::TcpListener::bind("0.0.0.0:18082").expect("hold 18082");
    net.attach("busy", "busy", &[]).await.expect("attach busy");
    let e = net
        .publish("busy", &[tcp(18082, 80)])
        .await
        .expect_err("18082 is held");
    assert!(matches!(e, NetError::PortInUse { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "host port 18082/tcp is already in use on this node"
    );
    drop(holder);
    let e = net
        .publish("busy", &[tcp(18080, 80)])
        .await
        .expect_err("18080 is the web task's");
    assert!(
        e.to_string()
            .starts_with("host port 18080/tcp is already in use on this node"),
        "{e}"
    );

    // ---- the agent "crashed": the address table is unreadable, and only
    // the web task's container still exists. A namespace of another
    // agent's bridge (whose name extends ours) is not ours to sweep.
    let foreign = format!("{}-x-foreign", host.bridge);
    let (ok, out) = cmd("ip", &["netns", "add", &foreign]);
    assert!(ok, "ip netns add {foreign}: {out}");
    host.extra_netns.push(foreign.clone());
    let table = daemon.dir.path().join("network").join("ips.json");
    std::fs::write(&table, "{not json").expect("spoil ips.json");
    let swept = net
        .sweep(&["web".to_string()].into_iter().collect())
        .await
        .expect("sweep");
    assert_eq!(swept.released, vec!["busy", "client"], "{swept:?}");
    assert_eq!(swept.recovered, vec!["web"], "{swept:?}");
    assert!(
        table.with_extension("json.bad").exists(),
        "the spoilt table kept aside"
    );
    assert_eq!(net.attached().expect("allocations"), vec!["web"]);
    // A table that is readable but wrong: the live task's address is read
    // back from its namespace, a task without anything else is released.
    let wrong = host.subnet.base.octets();
    std::fs::write(
        &table,
        format!(
            r#"{{"tasks":{{"web":"{}.{}.{}.200","ghost":"{}"}}}}"#,
            wrong[0], wrong[1], wrong[2], web_ip
        ),
    )
    .expect("write a wrong ips.json");
    let swept = net
        .sweep(&["web".to_string()].into_iter().collect())
        .await
        .expect("sweep again");
    assert_eq!(swept.released, vec!["ghost"], "{swept:?}");
    assert_eq!(swept.recovered, vec!["web"], "{swept:?}");
    let again = net
        .attach("web", "web", &[])
        .await
        .expect("attach after the sweep");
    assert_eq!(
        again.ip,
        Some(web_ip),
        "the address read back from the namespace"
    );
    let left = host.leftovers();
    assert_eq!(
        left.len(),
        3,
        "web's namespace, veth and rule only: {left:#?}"
    );
    assert!(
        left.iter()
            .all(|l| l.contains("web") || l.contains(&bridge::veth_name(&host.bridge, "web"))),
        "{left:#?}"
    );
    assert!(std::path::Path::new("/run/netns").join(&foreign).exists());
    assert!(
        http_get("127.0.0.1:18080").is_some_and(|a| a.contains("hello-from-web")),
        "the live task keeps its network"
    );

    // ---- everything goes away
    for id in ["web", "client", "busy"] {
        exec.stop(id, None, Duration::from_secs(2))
            .await
            .expect("stop");
        exec.remove(id).await.expect("remove");
        net.detach(id).await.expect("detach");
        // Detaching twice is fine.
        net.detach(id).await.expect("detach again");
    }
    assert!(host.leftovers().is_empty(), "{:#?}", host.leftovers());
    assert!(net.attached().expect("allocations").is_empty());
    assert!(
        http_get("127.0.0.1:18080").is_none(),
        "nothing answers on 18080 any more"
    );
    for id in ["web", "client"] {
        assert!(!std::path::Path::new("/sys/class/net")
            .join(bridge::veth_name(&host.bridge, id))
            .exists());
    }
    net.remove().await.expect("remove the bridge");
    assert!(!std::path::Path::new("/sys/class/net")
        .join(&host.bridge)
        .exists());
    // The keeper does not make a removed bridge again (a node that left).
    tokio::time::sleep(Duration::from_millis(600)).await;
    net.recheck()
        .await
        .expect("a check of a removed bridge does nothing");
    assert!(!std::path::Path::new("/sys/class/net")
        .join(&host.bridge)
        .exists());
    let (_, all) = cmd("iptables-save", &[]);
    assert!(!all.contains(&host.bridge), "rules left: {all}");
}

/// One datagram to `addr` from a fresh socket (a fresh source port, so no
/// conntrack entry from an earlier try is reused); the answer, or None.
fn udp_ask(addr: &str, msg: &str) -> Option<String> {
    let s = UdpSocket::bind("0.0.0.0:0").ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    s.connect(addr).ok()?;
    s.send(msg.as_bytes()).ok()?;
    let mut buf = [0u8; 512];
    let n = s.recv(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// What one agent's bridge network has on the host, read from the host
/// itself (`/run/netns`, the bridge's ports, `iptables -S`) and from the
/// agent's address table.
#[derive(Debug, Default, PartialEq)]
struct OnHost {
    /// Tasks with a namespace `<bridge>-<owner>-<task>`.
    netns: BTreeSet<String>,
    /// Ports of the bridge.
    ports: BTreeSet<String>,
    /// Tasks with a DNAT rule.
    dnat: BTreeSet<String>,
    /// Tasks in `<data-dir>/network/ips.json`.
    addresses: BTreeSet<String>,
}

fn on_host(a: &Agent) -> OnHost {
    let (bridge, _) = a.bridge.clone().expect("an agent with a bridge");
    let mut out = OnHost::default();
    let prefix = format!("{bridge}-");
    if let Ok(rd) = std::fs::read_dir("/run/netns") {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if let Some((_owner, task)) = n.strip_prefix(&prefix).and_then(|r| r.split_once('-')) {
                out.netns.insert(task.to_string());
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir(format!("/sys/class/net/{bridge}/brif")) {
        for e in rd.flatten() {
            out.ports
                .insert(e.file_name().to_string_lossy().into_owned());
        }
    }
    let chain = rules::dnat_chain(&bridge);
    let (_, text) = cmd("iptables", &["-w", "-t", "nat", "-S", &chain]);
    out.dnat = rules::parse_dnat(&text, &chain)
        .into_iter()
        .filter_map(|r| r.task)
        .collect();
    let table = a.data_dir().join("network").join("ips.json");
    if let Ok(bytes) = std::fs::read(&table) {
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("ips.json is JSON");
        if let Some(tasks) = v["tasks"].as_object() {
            out.addresses = tasks.keys().cloned().collect();
        }
    }
    out
}

/// What `swarm leave` must leave of an agent's network: nothing.
fn nothing_left(a: &Agent) -> Result<(), String> {
    let (bridge, _) = a.bridge.clone().expect("an agent with a bridge");
    let mut left = Vec::new();
    let state = on_host(a);
    if state != OnHost::default() {
        left.push(format!("{state:?}"));
    }
    if std::path::Path::new("/sys/class/net")
        .join(&bridge)
        .exists()
    {
        left.push(format!("the bridge {bridge}"));
    }
    let (_, all) = cmd("iptables-save", &[]);
    let chain_suffix = format!("-{bridge}");
    left.extend(
        all.lines()
            .filter(|l| {
                l.split_whitespace()
                    .any(|w| w == bridge || w.ends_with(&chain_suffix))
            })
            .map(|l| format!("rule: {l}")),
    );
    if left.is_empty() {
        Ok(())
    } else {
        Err(left.join("\n"))
    }
}

/// The ID of the service's one task that should run, once it runs on `node`.
fn running_task(c: &Cluster, service: &str, node: &str) -> String {
    let m = &c.managers[0];
    let what = format!("{service}'s task running on {node}");
    let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        eventually(&what, PATIENCE, || {
            match wanted_tasks(m, service, "{{.ID}}|{{.Node}}|{{.CurrentState}}").as_slice() {
                [f] => (f.len() == 3 && f[1] == node && f[2].starts_with("Running"))
                    .then(|| f[0].clone()),
                _ => None,
            }
        })
    }));
    match found {
        Ok(id) => id,
        Err(e) => {
            eprintln!(
                "{}\n{}",
                m.docker(&["service", "ps", "--no-trunc", service]).stdout,
                c.logs()
            );
            std::panic::resume_unwind(e)
        }
    }
}

/// `docker service create -d --no-resolve-image --mode global` pinned to
/// one node, with one host-mode port.
fn pinned_service(m: &Agent, name: &str, node: &str, publish: &str, image_and_cmd: &[&str]) {
    let constraint = format!("node.hostname=={node}");
    let mut args = vec![
        "service",
        "create",
        "-d",
        "--no-resolve-image",
        "--name",
        name,
        "--mode",
        "global",
        "--constraint",
        &constraint,
        "-p",
        publish,
    ];
    args.extend(image_and_cmd);
    m.docker(&args).ok();
}

#[test]
fn udp_publishing_orphan_sweep_and_leave() {
    let daemon = Arc::new(Daemon::start());
    let mut c = Cluster::new("netsweep")
        .managers(1)
        .workers(1)
        .containerd(daemon.clone())
        .start();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        sweep_scenario(&daemon, &mut c)
    }));
    if let Err(e) = result {
        eprintln!("{}", c.logs());
        std::panic::resume_unwind(e);
    }
}

fn sweep_scenario(daemon: &Daemon, c: &mut Cluster) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // wrk1's containers, as containerd has them (behind the agent's back).
    let wrk1_ns = format!("apiary-test-{}-{}-wrk1", std::process::id(), c.name);
    let wrk1_exec = rt.block_on(async {
        Containerd::connect(
            &daemon.socket(),
            &wrk1_ns,
            &c.workers[0].data_dir().join("containers"),
        )
        .await
        .expect("connect to wrk1's containerd namespace")
    });
    let containers = |exec: &Containerd| -> Vec<String> {
        rt.block_on(exec.list())
            .expect("list containers")
            .into_iter()
            .map(|c| c.id)
            .collect()
    };
    // Down quickly after the kill -9 below.
    c.managers[0]
        .apiary(&["swarm", "update", "--dispatcher-heartbeat", "1s"])
        .ok();

    // An image with a UDP echo program (busybox has no UDP server) on wrk1.
    let tar = c.root.path().join("udpecho.tar");
    let echo = harness::image::udp_echo(c.root.path());
    harness::image::busybox_oci_tar_with(&tar, "udpecho:latest", &[("bin/udp-echo", &echo)]);
    c.workers[0]
        .apiary(&["image", "load", "-i", tar.to_str().expect("utf-8 path")])
        .ok();

    let m = &c.managers[0];
    let httpd = [
        "busybox",
        "sh",
        "-c",
        "mkdir -p /www && echo hello-from-$(hostname) > /www/index.html && exec busybox httpd -f -p 80 -h /www",
    ];
    let sleeper = ["busybox", "sleep", "3600"];
    pinned_service(
        m,
        "keep",
        "wrk1",
        "published=18191,target=80,mode=host",
        &httpd,
    );
    pinned_service(
        m,
        "echo",
        "wrk1",
        "published=18192,target=7007,protocol=udp,mode=host",
        &["udpecho:latest", "udp-echo", "7007"],
    );
    pinned_service(
        m,
        "lost",
        "wrk1",
        "published=18193,target=80,mode=host",
        &sleeper,
    );
    pinned_service(
        m,
        "other",
        "mgr1",
        "published=18194,target=80,mode=host",
        &sleeper,
    );
    let keep = running_task(c, "keep", "wrk1");
    let echo = running_task(c, "echo", "wrk1");
    let lost = running_task(c, "lost", "wrk1");
    let other = running_task(c, "other", "mgr1");
    let wrk1_ip = c.workers[0].ip.clone();
    let web = format!("{wrk1_ip}:18191");
    let udp = format!("{wrk1_ip}:18192");

    // ---- UDP published in host mode answers on the node's (loopback) address
    let answer = eventually("the UDP echo on wrk1's port 18192", PATIENCE, || {
        udp_ask(&udp, "ping")
    });
    assert_eq!(answer, "echo:ping");
    let ps = m
        .docker(&["service", "ps", "--format", "{{.Ports}}", "echo"])
        .ok()
        .to_string();
    assert!(ps.contains("18192->7007/udp"), "PORTS column: {ps}");
    eventually("keep's web page on wrk1's port 18191", PATIENCE, || {
        http_get(&web).filter(|a| a.contains("hello-from-"))
    });

    let all3: BTreeSet<String> = [&keep, &echo, &lost].into_iter().cloned().collect();
    let before = on_host(&c.workers[0]);
    assert_eq!(before.netns, all3, "{before:?}");
    assert_eq!(before.dnat, all3, "{before:?}");
    assert_eq!(before.addresses, all3, "{before:?}");
    assert_eq!(before.ports.len(), 3, "{before:?}");
    let lost_veth = bridge::veth_name(&c.workers[0].bridge.clone().expect("bridge").0, &lost);
    assert!(before.ports.contains(&lost_veth), "{before:?}");
    let mgr1_before = on_host(&c.managers[0]);
    assert_eq!(mgr1_before.netns, BTreeSet::from([other.clone()]));

    // ---- kill -9 wrk1; its "lost" container disappears behind its back,
    // and the swarm forgets the task while wrk1 is down.
    c.workers[0].kill();
    rt.block_on(async {
        wrk1_exec
            .stop(&lost, None, Duration::from_secs(1))
            .await
            .expect("stop lost's container");
        wrk1_exec
            .remove(&lost)
            .await
            .expect("remove lost's container");
    });
    eventually("wrk1 down", PATIENCE, || {
        let out = m.docker(&["node", "inspect", "wrk1", "--format", "{{.Status.State}}"]);
        (out.stdout.trim() == "down").then_some(())
    });
    m.docker(&["service", "rm", "lost"]).ok();
    eventually("lost's task deleted", PATIENCE, || {
        let out = m.docker(&["node", "ps", "wrk1", "--format", "{{.Name}}"]);
        (out.status == 0 && !out.stdout.contains("lost.")).then_some(())
    });
    // Nothing has touched wrk1's network meanwhile.
    assert_eq!(on_host(&c.workers[0]), before);

    // ---- restart: lost's leftovers go, the adopted tasks keep theirs
    c.workers[0].start();
    let kept: BTreeSet<String> = [&keep, &echo].into_iter().cloned().collect();
    let after = eventually("lost's network swept on wrk1", PATIENCE, || {
        let s = on_host(&c.workers[0]);
        (s.netns == kept && s.dnat == kept && s.addresses == kept && s.ports.len() == 2)
            .then_some(s)
    });
    assert!(!after.ports.contains(&lost_veth), "{after:?}");
    assert!(
        c.workers[0]
            .log()
            .contains("cleaned up the network of tasks gone while the agent was down"),
        "{}",
        c.workers[0].log()
    );
    assert_eq!(containers(&wrk1_exec).len(), 2, "keep and echo adopted");
    assert_eq!(udp_ask(&udp, "again").as_deref(), Some("echo:again"));
    assert!(http_get(&web).is_some_and(|a| a.contains("hello-from-")));
    // The other agent's network is not this agent's to sweep.
    assert_eq!(on_host(&c.managers[0]), mgr1_before);

    // ---- an adopted task detaches as any other
    m.docker(&["service", "rm", "echo"]).ok();
    let only_keep: BTreeSet<String> = BTreeSet::from([keep.clone()]);
    eventually("echo's network released on wrk1", PATIENCE, || {
        let s = on_host(&c.workers[0]);
        (s.netns == only_keep && s.dnat == only_keep && s.addresses == only_keep).then_some(())
    });
    assert!(udp_ask(&udp, "gone").is_none(), "nothing answers on 18192");

    // ---- swarm leave: no task, no bridge, no rule left
    c.workers[0].docker(&["swarm", "leave"]).ok();
    assert_eq!(containers(&wrk1_exec), Vec::<String>::new());
    if let Err(left) = nothing_left(&c.workers[0]) {
        panic!("wrk1 left the swarm but not its network:\n{left}");
    }
    assert!(http_get(&web).is_none(), "nothing answers on 18191");
    // The manager's own bridge is untouched by wrk1 leaving ...
    assert_eq!(on_host(&c.managers[0]), mgr1_before);
    // ... and goes when it leaves (--force: the last manager).
    c.managers[0].docker(&["swarm", "leave", "--force"]).ok();
    if let Err(left) = nothing_left(&c.managers[0]) {
        panic!("mgr1 left the swarm but not its network:\n{left}");
    }
}

/// The `|`-separated `format` fields of each of a service's tasks that
/// should run (`docker service ps --no-trunc`).
fn wanted_tasks(m: &Agent, service: &str, format: &str) -> Vec<Vec<String>> {
    let out = m.docker(&[
        "service",
        "ps",
        service,
        "--no-trunc",
        "--filter",
        "desired-state=running",
        "--format",
        format,
    ]);
    out.stdout
        .lines()
        .map(|l| l.split('|').map(str::to_string).collect())
        .collect()
}

/// `(task ID, state)` of a service's tasks that should run.
fn task_states(m: &Agent, service: &str) -> Vec<(String, String)> {
    wanted_tasks(m, service, "{{.ID}}|{{.CurrentState}}|{{.Error}}")
        .into_iter()
        .filter(|f| f.len() == 3)
        .map(|f| (f[0].clone(), format!("{} {}", f[1], f[2])))
        .collect()
}

/// The IDs of `n` running tasks of `service`, once all of them run.
fn all_running(c: &Cluster, m: &Agent, service: &str, n: usize) -> BTreeSet<String> {
    let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        eventually(&format!("{n} running tasks of {service}"), PATIENCE, || {
            let t = task_states(m, service);
            (t.len() == n && t.iter().all(|(_, s)| s.starts_with("Running")))
                .then(|| t.into_iter().map(|(id, _)| id).collect())
        })
    }));
    found.unwrap_or_else(|e| {
        eprintln!("{:?}\n{}", task_states(m, service), c.logs());
        std::panic::resume_unwind(e)
    })
}

/// The tasks with a namespace of `a`'s in /run/netns (host-wide), by the
/// owner tag its data dir keeps.
fn netns_of(a: &Agent) -> BTreeSet<String> {
    let owner = std::fs::read_to_string(a.data_dir().join("network").join("owner"))
        .expect("the agent's owner tag");
    let prefix = format!("apiary0-{}-", owner.trim());
    std::fs::read_dir("/run/netns")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.strip_prefix(&prefix).map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Agents each in a network namespace of its own, all with the default
/// bridge (`apiary0`, 10.213.0.0/16), as on machines of their own — but
/// sharing the host's /run/netns, and the host's /sys as `nsenter`, a
/// container or a unit with NetworkNamespacePath= leaves it. Before, an
/// agent looked for its bridge in /sys/class/net (the host's links) and
/// rejected every task after the first ("File exists"), and each agent's
/// start swept the other's task namespaces as its own leftovers.
#[test]
fn agents_in_network_namespaces_of_their_own() {
    let daemon = Arc::new(Daemon::start());
    let tag = std::process::id() % 10_000;
    let ns_a = harness::Netns::new(&format!("apytest-{tag}-a"));
    let ns_b = harness::Netns::new(&format!("apytest-{tag}-b"));
    let c = Cluster::new("ownns").containerd(daemon.clone());
    let mut a = c.agent_in_netns("a", &ns_a);
    let mut b = c.agent_in_netns("b", &ns_b);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        own_netns_scenario(&c, &mut a, &mut b, &ns_a)
    }));
    // Task namespaces are host-wide: remove the agents' by their tags.
    let owners: Vec<String> = [&a, &b]
        .iter()
        .map(|x| {
            std::fs::read_to_string(x.data_dir().join("network").join("owner"))
                .unwrap_or_default()
                .trim()
                .to_string()
        })
        .collect();
    let logs = format!("===== a =====\n{}\n===== b =====\n{}", a.log(), b.log());
    drop((a, b));
    for owner in owners.iter().filter(|o| !o.is_empty()) {
        let prefix = format!("apiary0-{owner}-");
        if let Ok(rd) = std::fs::read_dir("/run/netns") {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with(&prefix) {
                    let _ = cmd("ip", &["netns", "del", &n]);
                }
            }
        }
    }
    if let Err(e) = result {
        eprintln!("{logs}");
        std::panic::resume_unwind(e);
    }
}

fn own_netns_scenario(c: &Cluster, a: &mut Agent, b: &mut Agent, ns_a: &harness::Netns) {
    for x in [&*a, &*b] {
        x.apiary(&[
            "swarm",
            "init",
            "--advertise-addr",
            "127.0.0.1:2377",
            "--listen-addr",
            "127.0.0.1:2377",
        ])
        .ok();
    }
    let create = |x: &Agent, name: &str, replicas: &str| {
        x.docker(&[
            "service",
            "create",
            "-d",
            "--no-resolve-image",
            "--name",
            name,
            "--replicas",
            replicas,
            "busybox",
            "sleep",
            "3600",
        ])
        .ok();
    };
    // ---- three tasks on one node, each with its own address
    create(a, "three", "3");
    let a_tasks = all_running(c, a, "three", 3);
    assert_eq!(netns_of(a), a_tasks);
    for t in &a_tasks {
        let ns = format!(
            "apiary0-{}-{t}",
            std::fs::read_to_string(a.data_dir().join("network/owner"))
                .expect("owner")
                .trim()
        );
        let (ok, out) = cmd(
            "ip",
            &["-n", &ns, "-4", "-o", "addr", "show", "dev", "eth0"],
        );
        assert!(ok && out.contains("inet 10.213."), "{ns}: {out}");
    }
    // The bridge is in a's namespace, not the host's.
    let (ok, out) = cmd(
        "ip",
        &["-n", &ns_a.name, "-o", "link", "show", "master", "apiary0"],
    );
    assert!(ok && out.lines().count() == 3, "{out}");

    // ---- b's tasks, and restarts of both, leave the other's alone
    create(b, "two", "2");
    let b_tasks = all_running(c, b, "two", 2);
    assert_eq!(netns_of(b), b_tasks);
    assert_eq!(netns_of(a), a_tasks, "b's start swept a's namespaces");
    for x in [&mut *a, &mut *b] {
        x.kill();
        x.start();
    }
    // The worker sweeps before it adopts what it found.
    for (x, n) in [(&*a, 3), (&*b, 2)] {
        eventually(
            &format!("{} adopting its containers", x.name),
            PATIENCE,
            || (x.log().matches("adopted a running container").count() >= n).then_some(()),
        );
    }
    assert_eq!(netns_of(a), a_tasks, "a restart swept a's live tasks");
    assert_eq!(netns_of(b), b_tasks, "a's restart swept b's namespaces");
    assert_eq!(all_running(c, a, "three", 3), a_tasks, "no task replaced");
    assert_eq!(all_running(c, b, "two", 2), b_tasks, "no task replaced");

    // ---- a second agent on a's bridge in a's namespace refuses to start
    let dir = c.root.path().join("intruder");
    std::fs::create_dir_all(&dir).expect("dir");
    let out = Command::new("timeout")
        .args(["20", "nsenter", &format!("--net=/run/netns/{}", ns_a.name)])
        .arg(harness::APIARY)
        .arg("agent")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--socket")
        .arg(dir.join("apiary.sock"))
        .arg("--containerd")
        .arg(c.containerd.as_ref().expect("containerd").socket())
        .output()
        .expect("run a second agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("already uses the task bridge apiary0 in this network namespace")
            && stderr.contains("--bridge-name"),
        "{stderr}"
    );
}

/// A node without iptables: the agent starts and serves (it used to exit
/// at start, and would crash-loop under systemd); only the tasks given to
/// it fail, saying what to install.
#[test]
fn an_agent_without_iptables_serves_and_fails_only_its_tasks() {
    let daemon = Arc::new(Daemon::start());
    let c = Cluster::new("noipt").containerd(daemon.clone());
    let mut m = c.agent("mgr1", 1);
    // Restarted with a PATH that has `ip` but no iptables.
    let bin = c.root.path().join("bin-without-iptables");
    std::fs::create_dir_all(&bin).expect("bin dir");
    let ip_path = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("iproute2's ip");
    std::os::unix::fs::symlink(ip_path, bin.join("ip")).expect("link ip");
    m.kill();
    m.env.push(("PATH".into(), bin.display().to_string()));
    m.start();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        eventually("the missing iptables logged", PATIENCE, || {
            m.log().contains("iptables not found").then_some(())
        });
        m.init_swarm(&[]).ok();
        m.docker(&[
            "service",
            "create",
            "-d",
            "--no-resolve-image",
            "--name",
            "needs-nat",
            "busybox",
            "sleep",
            "3600",
        ])
        .ok();
        eventually("the task rejected for want of iptables", PATIENCE, || {
            let out = m
                .docker(&["service", "ps", "--no-trunc", "needs-nat"])
                .stdout;
            (out.contains("Rejected")
                && out.contains("iptables not found")
                && out.contains("install iptables"))
            .then_some(())
        });
        assert_eq!(m.exited(), None, "the agent is still up");
        m.apiary(&["node", "ls"]).ok();
    }));
    if let Err(e) = result {
        eprintln!("{}", m.log());
        std::panic::resume_unwind(e);
    }
}
