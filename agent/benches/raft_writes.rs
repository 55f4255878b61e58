//! Raft write latency and throughput on 3 in-process managers talking QUIC
//! over loopback, with redb fsyncing every commit.
//!
//!   cargo bench --bench raft_writes [-- --writes N --concurrency C] [--no-seal]
//!
//! `--no-seal` replaces encryption at rest by a pass-through (a bench-only
//! knob), to measure what sealing costs.
//!
//! Prints the single-writer p50/p99 latency and the throughput of C
//! concurrent writers (default 64). Each write is a real committed raft
//! entry (an empty node-status batch) proposed on the leader.

mod common;
use common::arg;

use std::sync::Arc;
use std::time::{Duration, Instant};

use apiary::control::{Control, InitRequest, JoinRequest};
use apiary::node::{NodeConfig, NodeHandle};
use apiary::store::{Availability, ClusterSpec, Command};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let writes = arg("--writes", 2000);
    let concurrency = arg("--concurrency", 64);
    let no_seal = std::env::args().any(|a| a == "--no-seal");
    apiary::seal::bench_passthrough(no_seal);
    println!(
        "sealing: {}",
        if no_seal {
            "pass-through (--no-seal)"
        } else {
            "ChaCha20-Poly1305"
        }
    );
    let root = tempfile::tempdir()?;
    let mut nodes = Vec::new();
    for i in 1..=3u8 {
        let node = NodeHandle::start(NodeConfig {
            data_dir: root.path().join(format!("m{i}")),
            hostname: Some(format!("m{i}")),
            executor: None,
            network: None,
            registries: Default::default(),
        })
        .await
        .map_err(anyhow::Error::msg)?;
        nodes.push(node);
    }
    let addr = |i: u8| format!("127.0.99.{i}:2377").parse().expect("addr");
    nodes[0]
        .swarm_init(InitRequest {
            listen_addr: addr(1),
            advertise_addr: Some(addr(1)),
            force_new_cluster: false,
            availability: Availability::Active,
            spec: ClusterSpec::default(),
            addr_pool: Default::default(),
        })
        .await?;
    let token = nodes[0].swarm_inspect().await?.manager_token;
    for i in 2..=3u8 {
        nodes[i as usize - 1]
            .swarm_join(JoinRequest {
                listen_addr: addr(i),
                advertise_addr: Some(addr(i)),
                remote_addrs: vec![addr(1).to_string()],
                token: token.clone(),
                availability: Availability::Active,
            })
            .await?;
    }
    let leader = nodes[0]
        .manager()
        .ok_or_else(|| anyhow::anyhow!("mgr1 is not a manager"))?;
    let voters = leader
        .raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .count();
    anyhow::ensure!(voters == 3, "expected 3 voters, have {voters}");
    let write = |m: Arc<apiary::manager::Manager>| async move {
        m.propose(Command::SetNodeStatus {
            updates: vec![],
            now: String::new(),
        })
        .await
    };
    // Warm up connections.
    for _ in 0..50 {
        write(leader.clone()).await?;
    }

    let mut lat = Vec::with_capacity(writes / 4);
    for _ in 0..writes / 4 {
        let t = Instant::now();
        write(leader.clone()).await?;
        lat.push(t.elapsed());
    }
    lat.sort();
    println!(
        "single writer: {} writes, p50 {:.2} ms, p99 {:.2} ms",
        lat.len(),
        percentile(&lat, 0.5).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3
    );

    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    let per = writes / concurrency.max(1);
    for _ in 0..concurrency {
        let m = leader.clone();
        set.spawn(async move {
            for _ in 0..per {
                write(m.clone()).await?;
            }
            Ok::<_, apiary::control::ControlError>(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    let total = per * concurrency;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{concurrency} writers: {total} writes in {secs:.2} s = {:.0} committed writes/s",
        total as f64 / secs
    );
    for n in &nodes {
        n.shutdown().await;
    }
    Ok(())
}
