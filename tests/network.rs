//! Task networking against the real thing: a containerd of the test's own,
//! a bridge of the test's own (name and subnet unlike any agent's), and a
//! namespace standing for "the outside world". Shows: a host-mode
//! published port answering on the node's loopback, outbound NAT, distinct
//! addresses, idempotent re-attach, the port-in-use error, and that nothing
//! (namespace, veth, rule, bridge) is left behind.
//!
//! Needs root, containerd, runc, busybox-static, iproute2 and iptables.

mod harness;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use apiary::executor::{ContainerSpec, Containerd, Executor};
use apiary::network::ipam::Subnet;
use apiary::network::{
    bridge, rules, Bridge, BridgeConfig, NetError, Network, PortMapping, Protocol,
};
use apiary::worker::spec::with_attachment;
use harness::containerd::Daemon;
use harness::eventually;

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
}

impl HostState {
    fn leftovers(&self) -> Vec<String> {
        let mut out = Vec::new();
        let prefix = format!("{}-", self.bridge);
        if let Ok(rd) = std::fs::read_dir("/run/netns") {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with(&prefix) {
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
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(scenario(&daemon, &mut host, n))
    }));
    if let Err(e) = result {
        eprintln!("----- containerd log -----\n{}", daemon.log());
        std::panic::resume_unwind(e);
    }
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
    let a = net.attach(&spec.id, &spec.id).await.expect("attach");
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
    let again = net.attach("web", "web").await.expect("attach again");
    assert_eq!(again.ip, Some(web_ip));
    net.publish("web", &[tcp(18080, 80)])
        .await
        .expect("publish again");
    let chain = rules::dnat_chain(&host.bridge);
    let (_, listed) = cmd("iptables", &["-w", "-t", "nat", "-S", &chain]);
    assert_eq!(rules::parse_dnat(&listed, &chain).len(), 1, "{listed}");

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
    net.attach("busy", "busy").await.expect("attach busy");
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
    let (_, all) = cmd("iptables-save", &[]);
    assert!(!all.contains(&host.bridge), "rules left: {all}");
}
