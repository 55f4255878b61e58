//! The node's session with the leader: a heartbeat every period, which also
//! carries the leader's instructions (role changes, the manager list), and
//! certificate renewal at a random point in 50–80% of the certificate's life.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::{debug, info, warn};

use super::persist::Certs;
use super::{new_raft_id, Running};
use crate::control::ControlError;
use crate::manager::rpc_to_control;
use crate::pki;
use crate::rpc::{self, Heartbeat, HeartbeatReply, Reply, Request, RpcError};
use crate::store::{ClusterSpec, Role};
use crate::transport::MANAGER_SERVER_NAME;

const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// After a failed heartbeat, try the next manager soon rather than a whole
/// period later: the leader may just have moved.
const RETRY: Duration = Duration::from_millis(500);
const RAFT_JOIN_ATTEMPTS: usize = 10;

/// Call the cluster from this node: through our own manager if we are one
/// (it forwards to the leader), else to each known manager in turn.
async fn call(running: &Running, req: Request) -> Result<Reply, ControlError> {
    call_with_timeout(running, req, CALL_TIMEOUT).await
}

/// `call` with a timeout per manager tried (long polls need more).
pub(super) async fn call_with_timeout(
    running: &Running,
    req: Request,
    timeout: Duration,
) -> Result<Reply, ControlError> {
    let file = running.file();
    let mut managers = file.managers.clone();
    if let Some(m) = running.manager() {
        let reply = m.handle(running.self_caller(), req.clone()).await;
        // Our own raft may be cut off (being demoted, partitioned): then ask
        // the other managers directly.
        if !matches!(
            reply,
            Reply::Error(RpcError::NoQuorum(_) | RpcError::Other(_))
        ) {
            return Ok(reply);
        }
        // The list from heartbeats can be older than our own state: a
        // manager demoted just after others joined knew none of them, and
        // could never learn it had been demoted.
        for a in m.known_manager_addrs() {
            if !managers.contains(&a) {
                managers.push(a);
            }
        }
    }
    managers.retain(|a| *a != file.advertise_addr);
    // Each node starts at a different manager (by its ID): the managers
    // share the nodes' sessions and long polls, rather than the first in
    // the list (the same on every node) taking them all. Found with 1,000
    // nodes: one manager held every session, a third of its memory, and
    // answered every poll while the others idled. The rest follow in
    // order, for failover.
    if !managers.is_empty() {
        let k = spread(&file.node_id.0) % managers.len() as u64;
        managers.rotate_left(k as usize);
    }
    let bytes = rpc::encode(&req);
    let mut last = ControlError::Unavailable("this node knows no manager to talk to".into());
    for addr in &managers {
        let Ok(sa) = addr.parse::<SocketAddr>() else {
            continue;
        };
        match running
            .transport
            .call(sa, MANAGER_SERVER_NAME, bytes.clone(), timeout)
            .await
        {
            Ok(b) => {
                let reply: Reply = rpc::decode(&b).map_err(ControlError::Internal)?;
                // A manager that lost its manager role (demoted meanwhile)
                // says so; try the next one.
                if matches!(reply, Reply::Error(RpcError::NotManager)) {
                    continue;
                }
                return Ok(reply);
            }
            Err(e) => {
                last = ControlError::Unavailable(format!("manager {addr} did not answer: {e}"))
            }
        }
    }
    Err(last)
}

/// A number from a node ID, the same on every run (IDs are random, so
/// any mix spreads them).
fn spread(node_id: &str) -> u64 {
    node_id
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)))
}

pub(super) async fn run(running: Arc<Running>) {
    let mut period = Duration::from_nanos(ClusterSpec::default().dispatcher_heartbeat_ns as u64);
    let mut renew_at = renewal_time(&running.certs());
    let mut removed_logged = false;
    let mut expired_logged = false;
    loop {
        if running.cert_expired() {
            match running.file().join_token.clone() {
                Some(token) => match running.rejoin(&token).await {
                    Ok(()) => renew_at = renewal_time(&running.certs()),
                    Err(e) => warn!("the node certificate expired and coming back with the stored join token failed: {e}"),
                },
                None => {
                    if !expired_logged {
                        warn!("the node certificate expired while the node was off: run `apiary swarm join --token <token> <manager>` to bring it back as itself");
                        expired_logged = true;
                    }
                }
            }
        }
        let f = running.file();
        let hb = Heartbeat {
            node_id: f.node_id.clone(),
            role: f.role,
            description: running.description.clone(),
        };
        let wait = match call(&running, Request::Heartbeat(hb)).await {
            Ok(Reply::Heartbeat(r)) => {
                period = Duration::from_millis(r.period_ms);
                removed_logged = false;
                if let Err(e) = follow(&running, &r).await {
                    warn!("could not follow the leader's instructions: {e}");
                }
                if r.renew {
                    info!("the swarm's certificate expiry policy changed: renewing now");
                    renew_at = SystemTime::now();
                }
                period
            }
            Ok(Reply::Error(RpcError::UnknownNode(_))) => {
                if !removed_logged {
                    warn!("this node was removed from the swarm; run `apiary swarm leave` and join again");
                    removed_logged = true;
                }
                period
            }
            Ok(Reply::Error(e)) => {
                debug!("heartbeat refused: {e}");
                RETRY
            }
            Ok(other) => {
                debug!("unexpected heartbeat answer: {other:?}");
                RETRY
            }
            Err(e) => {
                debug!("heartbeat failed: {e}");
                RETRY
            }
        };
        if SystemTime::now() >= renew_at {
            let role = running.file().role;
            match renew(&running).await {
                Ok(new_role) if new_role == role => info!("renewed the node certificate"),
                Ok(_) => {}
                Err(e) => warn!("certificate renewal failed, will retry: {e}"),
            }
            renew_at = renewal_time(&running.certs());
        }
        tokio::select! {
            _ = running.shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

fn renewal_time(certs: &Certs) -> SystemTime {
    let now = SystemTime::now();
    match pki::parse_node_cert_pem(&certs.cert_pem) {
        Ok(info) => {
            now + pki::renewal_delay(
                info.not_before,
                info.not_after,
                now,
                &mut rand::thread_rng(),
            )
        }
        // An unreadable certificate: renew right away.
        Err(_) => now,
    }
}

/// Act on a heartbeat answer: remember the managers, and move towards the
/// role the cluster wants.
async fn follow(running: &Arc<Running>, r: &HeartbeatReply) -> Result<(), ControlError> {
    let f = running.file();
    if !r.managers.is_empty() && r.managers != f.managers {
        running.update_file(|f| f.managers = r.managers.clone())?;
    }
    match (f.role, r.desired_role) {
        (Role::Worker, Role::Manager) => {
            // Promotion: a manager certificate first, then a raft seat.
            let role = renew(running).await?;
            if role == Role::Manager {
                become_raft_member(running).await?;
                info!("promoted to manager");
            }
        }
        (Role::Manager, Role::Manager) if !r.raft_member && running.manager().is_none() => {
            // A promotion interrupted after the certificate: finish it.
            become_raft_member(running).await?;
        }
        (Role::Manager, Role::Worker) if !r.raft_member && !still_voter(running) => {
            // Demotion: raft has let us go; drop the manager side and take a
            // worker certificate.
            if let Some(m) = running.manager() {
                running.set_manager(None);
                m.stop().await;
            }
            running
                .dir
                .remove_raft()
                .map_err(|e| ControlError::Internal(e.to_string()))?;
            running.update_file(|f| f.raft_id = None)?;
            renew(running).await?;
            info!("demoted to worker");
        }
        _ => {}
    }
    Ok(())
}

/// Whether our own raft still counts us as a voter: a leader removing itself
/// records the change before the membership change commits.
fn still_voter(running: &Running) -> bool {
    running.manager().is_some_and(|m| {
        let metrics = m.raft.metrics().borrow().clone();
        let me = m.me.raft_id;
        metrics.current_leader == Some(me)
            && metrics
                .membership_config
                .membership()
                .voter_ids()
                .any(|v| v == me)
    })
}

/// Get a fresh certificate for whatever role the cluster gives us now.
pub(super) async fn renew(running: &Arc<Running>) -> Result<Role, ControlError> {
    let kc = pki::new_key_and_csr().map_err(|e| ControlError::Internal(e.to_string()))?;
    let renewed = match call(
        running,
        Request::RenewCert {
            csr_pem: kc.csr_pem,
        },
    )
    .await?
    {
        Reply::Renewed(r) => r,
        Reply::Error(e) => return Err(rpc_to_control(e)),
        other => {
            return Err(ControlError::Internal(format!(
                "unexpected renewal answer: {other:?}"
            )))
        }
    };
    running.install_certs(Certs {
        ca_pem: renewed.ca_pem,
        cert_pem: renewed.cert_pem,
        key_pem: kc.key_pem,
    })?;
    running.update_file(|f| f.role = renewed.role)?;
    Ok(renewed.role)
}

/// Start an empty raft member and ask the leader to add it as a voter.
pub(super) async fn become_raft_member(running: &Arc<Running>) -> Result<(), ControlError> {
    let f = running.file();
    let raft_id = match (f.raft_id, running.manager()) {
        (Some(id), Some(_)) => id,
        _ => {
            // A fresh raft ID for a fresh, empty log: a removed member's ID
            // (and data) are never reused.
            let id = new_raft_id();
            running
                .dir
                .remove_raft()
                .map_err(|e| ControlError::Internal(e.to_string()))?;
            running.update_file(|f| f.raft_id = Some(id))?;
            running
                .start_manager(id, ClusterSpec::default().snapshot_interval)
                .await?;
            id
        }
    };
    let req = || Request::RaftJoin {
        node_id: f.node_id.clone(),
        raft_id,
        addr: f.advertise_addr.clone(),
    };
    let mut last = None;
    for _ in 0..RAFT_JOIN_ATTEMPTS {
        // Ask through another manager: our own raft knows no leader yet.
        let managers = running.file().managers.clone();
        for addr in managers.iter().filter(|a| **a != f.advertise_addr) {
            let Ok(sa) = addr.parse::<SocketAddr>() else {
                continue;
            };
            match running
                .transport
                .call(
                    sa,
                    MANAGER_SERVER_NAME,
                    rpc::encode(&req()),
                    Duration::from_secs(30),
                )
                .await
            {
                Ok(b) => match rpc::decode::<Reply>(&b).map_err(ControlError::Internal)? {
                    Reply::Ok => return Ok(()),
                    Reply::Error(e) => last = Some(rpc_to_control(e)),
                    other => {
                        last = Some(ControlError::Internal(format!(
                            "unexpected answer: {other:?}"
                        )))
                    }
                },
                Err(e) => {
                    last = Some(ControlError::Unavailable(format!(
                        "manager {addr} did not answer: {e}"
                    )))
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(last.unwrap_or_else(|| {
        ControlError::Unavailable("no other manager to join raft through".into())
    }))
}

/// A worker leaving tells the leader, so it shows Down at once.
pub(super) async fn notify_leave(running: &Running) {
    match tokio::time::timeout(CALL_TIMEOUT, call(running, Request::Leave)).await {
        Ok(Ok(Reply::Ok)) => {}
        Ok(Ok(other)) => debug!("leave not acknowledged: {other:?}"),
        Ok(Err(e)) => debug!("could not tell the managers we leave: {e}"),
        Err(_) => debug!("telling the managers we leave timed out"),
    }
}

#[cfg(test)]
mod tests {
    use super::spread;

    /// Nodes spread over the managers: none gets much more than its share.
    #[test]
    fn node_ids_spread_over_the_managers() {
        let mut counts = [0u32; 3];
        for _ in 0..3000 {
            let id = crate::pki::new_node_id();
            counts[(spread(&id.0) % 3) as usize] += 1;
        }
        assert!(
            counts.iter().all(|c| (850..=1150).contains(c)),
            "{counts:?}"
        );
        assert_eq!(spread("abc"), spread("abc"), "the same on every call");
    }
}
