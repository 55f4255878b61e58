//! Orchestration at scale with a SIMULATED worker fleet.
//!
//!   scripts/bench fleet                      # 1,000 nodes, 100 × 1,000 tasks
//!   target/release/deps/fleet-* [--nodes N] [--services S] [--replicas R]
//!
//! - 3 managers: real `apiary agent` processes (the release binary,
//!   `$APIARY_BIN` or `target/release/apiary`) on loopback, drained so that
//!   every task goes to the fleet; their peak RSS is VmHWM of each process.
//! - The simulated fleet: N real nodes (`NodeHandle`, each with its own data
//!   dir and QUIC endpoint) in THIS process, joined with the worker token
//!   through the real join protocol, holding their sessions, heartbeats and
//!   assignment long polls. Their executor is `SimulatedExecutor`: tasks
//!   start at once and run nothing.
//! - S services of R replicas are created through the leader's Engine API
//!   socket (`POST /services/create`, all at once), and the leader's
//!   `GET /services?status=true` is polled until every task is Running.
//!
//! Prints the fleet join time, the time from the first create to all
//! Running, tasks/s, and each manager's peak RSS.

mod common;
use common::arg;

use std::path::{Path, PathBuf};
use std::process::{Child, Command as Proc, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apiary::cli::Client;
use apiary::control::{Control, JoinRequest};
use apiary::executor::SimulatedExecutor;
use apiary::node::{NodeConfig, NodeHandle};
use apiary::store::Availability;
use bollard_stubs::models as m;
use futures::stream::{self, StreamExt};

/// Joins in flight at once: the leader signs a certificate per join.
const JOIN_CONCURRENCY: usize = 16;
const NET: &str = "127.90.0";

struct Manager {
    name: String,
    child: Child,
    sock: PathBuf,
}

impl Manager {
    fn client(&self) -> Client {
        Client::new(&format!("unix://{}", self.sock.display())).expect("client")
    }
    fn status_kb(&self, field: &str) -> u64 {
        proc_status_kb(&format!("/proc/{}/status", self.child.id()), field)
    }
}

fn proc_status_kb(path: &str, field: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn bin() -> PathBuf {
    std::env::var_os("APIARY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/apiary"))
}

fn start_manager(root: &Path, name: &str) -> anyhow::Result<Manager> {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir)?;
    let sock = dir.join("apiary.sock");
    let log = std::fs::File::create(dir.join("log"))?;
    let child = Proc::new(bin())
        .arg("agent")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--socket")
        .arg(&sock)
        .arg("--hostname")
        .arg(name)
        .arg("--log-level")
        .arg("warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    for _ in 0..200 {
        if sock.exists() {
            return Ok(Manager {
                name: name.to_string(),
                child,
                sock,
            });
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    anyhow::bail!("manager {name} did not start (see {}/log)", dir.display())
}

fn cli(m: &Manager, args: &[&str]) -> anyhow::Result<String> {
    let out = Proc::new(bin())
        .arg("-H")
        .arg(format!("unix://{}", m.sock.display()))
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "apiary {args:?} on {}: {}",
        m.name,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn fleet_addr(i: usize) -> std::net::SocketAddr {
    // 127.91.0.1 … : one loopback address per simulated node.
    format!("127.91.{}.{}:2377", i / 250, i % 250 + 1)
        .parse()
        .expect("addr")
}

async fn ready_workers(c: &mut Client) -> anyhow::Result<usize> {
    let nodes: Vec<m::Node> = c.get("/nodes").await.map_err(anyhow::Error::msg)?;
    Ok(nodes
        .iter()
        .filter(|n| n.manager_status.is_none())
        .filter(|n| n.status.as_ref().and_then(|s| s.state) == Some(m::NodeState::READY))
        .count())
}

async fn running(c: &mut Client) -> anyhow::Result<(i64, i64)> {
    let services: Vec<m::Service> = c
        .get("/services?status=true")
        .await
        .map_err(anyhow::Error::msg)?;
    let mut run = 0;
    let mut want = 0;
    for s in &services {
        if let Some(st) = &s.service_status {
            run += st.running_tasks.unwrap_or(0) as i64;
            want += st.desired_tasks.unwrap_or(0) as i64;
        }
    }
    Ok((run, want))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let n_nodes = arg("--nodes", 1000);
    let n_services = arg("--services", 100);
    let replicas = arg("--replicas", 1000);
    let total = n_services * replicas;
    anyhow::ensure!(
        bin().exists(),
        "no {}: cargo build --release first",
        bin().display()
    );
    println!(
        "simulated fleet: {n_nodes} in-process nodes (SimulatedExecutor), 3 manager processes ({}), {n_services} services × {replicas} replicas = {total} tasks",
        bin().display()
    );

    let root = tempfile::Builder::new().prefix("apiary-fleet-").tempdir()?;
    let mut managers = Vec::new();
    for i in 1..=3 {
        managers.push(start_manager(root.path(), &format!("m{i}"))?);
    }
    let result = run(&managers, root.path(), n_nodes, n_services, replicas).await;
    for m in &mut managers {
        let _ = m.child.kill();
        let _ = m.child.wait();
    }
    if std::env::var_os("APIARY_BENCH_KEEP").is_some() {
        println!("kept {}", root.keep().display());
    }
    result
}

async fn run(
    managers: &[Manager],
    root: &Path,
    n_nodes: usize,
    n_services: usize,
    replicas: usize,
) -> anyhow::Result<()> {
    let total = n_services * replicas;
    let a1 = format!("{NET}.1:2377");
    cli(
        &managers[0],
        &[
            "swarm",
            "init",
            "--advertise-addr",
            &a1,
            "--listen-addr",
            &a1,
            "--availability",
            "drain",
        ],
    )?;
    let mtok = cli(&managers[0], &["swarm", "join-token", "-q", "manager"])?;
    let wtok = cli(&managers[0], &["swarm", "join-token", "-q", "worker"])?;
    for (i, m) in managers.iter().enumerate().skip(1) {
        let a = format!("{NET}.{}:2377", i + 1);
        cli(
            m,
            &[
                "swarm",
                "join",
                "--token",
                &mtok,
                "--advertise-addr",
                &a,
                "--listen-addr",
                &a,
                "--availability",
                "drain",
                &a1,
            ],
        )?;
    }
    let leader = &managers[0];
    let mut lc = leader.client();

    // The simulated fleet joins.
    let t_join = Instant::now();
    let fleet_root = root.join("fleet");
    let fleet: Vec<NodeHandle> = stream::iter(0..n_nodes)
        .map(|i| {
            let dir = fleet_root.join(format!("n{i}"));
            let wtok = wtok.clone();
            let a1 = a1.clone();
            async move {
                let node = NodeHandle::start(NodeConfig {
                    data_dir: dir,
                    hostname: Some(format!("sim{i}")),
                    executor: Some(Arc::new(SimulatedExecutor::new())),
                    // The host's network: nothing is set up per task.
                    network: None,
                    registries: Default::default(),
                })
                .await
                .map_err(anyhow::Error::msg)?;
                node.swarm_join(JoinRequest {
                    listen_addr: fleet_addr(i),
                    advertise_addr: Some(fleet_addr(i)),
                    remote_addrs: vec![a1],
                    token: wtok,
                    availability: Availability::Active,
                })
                .await?;
                anyhow::Ok(node)
            }
        })
        .buffer_unordered(JOIN_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    loop {
        let ready = ready_workers(&mut lc).await?;
        if ready == n_nodes {
            break;
        }
        anyhow::ensure!(
            t_join.elapsed() < Duration::from_secs(300),
            "only {ready} of {n_nodes} simulated nodes Ready after 300 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "fleet joined: {n_nodes} simulated nodes Ready in {:.1} s; leader RSS {} MiB",
        t_join.elapsed().as_secs_f64(),
        leader.status_kb("VmRSS") / 1024
    );

    // Services, all created at once.
    let t0 = Instant::now();
    let creates = (0..n_services).map(|s| {
        let leader = leader.client();
        async move {
            let spec = m::ServiceSpec {
                name: Some(format!("svc{s}")),
                task_template: Some(m::TaskSpec {
                    container_spec: Some(m::TaskSpecContainerSpec {
                        image: Some("simulated".into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                mode: Some(m::ServiceSpecMode {
                    replicated: Some(m::ServiceSpecModeReplicated {
                        replicas: Some(replicas as i64),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let mut c = leader;
            c.post("/services/create", &spec)
                .await
                .map_err(anyhow::Error::msg)
        }
    });
    for r in futures::future::join_all(creates).await {
        r?;
    }
    let created = t0.elapsed();
    let mut last_print = Instant::now();
    let mut curve = Vec::new();
    loop {
        let (run, want) = running(&mut lc).await?;
        if run as usize >= total {
            break;
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            curve.push(format!("{:.0}s:{run}", t0.elapsed().as_secs_f64()));
            eprintln!(
                "  {:5.1} s: {run} of {want} running (leader RSS {} MiB)",
                t0.elapsed().as_secs_f64(),
                leader.status_kb("VmRSS") / 1024
            );
        }
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(600),
            "only {run} of {total} tasks running after 600 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "services created (API answered) in {:.2} s; all {total} tasks Running {secs:.2} s after the first create = {:.0} tasks/s",
        created.as_secs_f64(),
        total as f64 / secs
    );
    for m in managers {
        println!(
            "{}{}: peak RSS (VmHWM) {} MiB, RSS now {} MiB",
            m.name,
            if m.name == leader.name {
                " (leader)"
            } else {
                ""
            },
            m.status_kb("VmHWM") / 1024,
            m.status_kb("VmRSS") / 1024
        );
    }
    println!(
        "simulated fleet process ({n_nodes} nodes): peak RSS {} MiB",
        proc_status_kb("/proc/self/status", "VmHWM") / 1024
    );
    drop(fleet);
    Ok(())
}
