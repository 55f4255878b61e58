//! openraft's network over the QUIC transport.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;

use super::TypeConfig;
use crate::rpc::{self, Reply, Request};
use crate::transport::{Transport, MANAGER_SERVER_NAME};

/// When each raft peer last answered this manager's raft. A leader sends
/// every follower an append at least every heartbeat interval, so on the
/// leader this is raft's own view of which managers are reachable (the
/// dispatcher reports it in `node ls`), far sooner than the nodes'
/// heartbeats tell it. A table touched once per answer, under a lock never
/// held across an await.
#[derive(Clone, Default)]
pub struct Answers(Arc<Mutex<HashMap<u64, Instant>>>);

impl Answers {
    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Instant>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
    /// `peer` answered now.
    pub fn heard(&self, peer: u64) {
        self.table().insert(peer, Instant::now());
    }
    pub fn last(&self, peer: u64) -> Option<Instant> {
        self.table().get(&peer).copied()
    }
}

#[derive(Clone)]
pub struct Network {
    transport: Transport,
    answers: Answers,
}

impl Network {
    pub fn new(transport: Transport, answers: Answers) -> Self {
        Network { transport, answers }
    }
}

pub struct Client {
    transport: Transport,
    target: u64,
    addr: Result<SocketAddr, String>,
    answers: Answers,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Client;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Client {
        let addr = node.addr.parse::<SocketAddr>().map_err(|e| {
            format!(
                "raft member {target} has a bad address {:?}: {e}",
                node.addr
            )
        });
        Client {
            transport: self.transport.clone(),
            target,
            addr,
            answers: self.answers.clone(),
        }
    }
}

/// How much longer than openraft's own deadline the transport waits.
const TRANSPORT_SLACK: Duration = Duration::from_secs(1);

type RpcErr<E = openraft::error::Infallible> = RPCError<u64, BasicNode, RaftError<u64, E>>;

impl Client {
    async fn send<E: std::error::Error>(
        &self,
        req: Request,
        timeout: Duration,
    ) -> Result<Reply, RpcErr<E>> {
        let addr = self
            .addr
            .clone()
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&std::io::Error::other(e))))?;
        // openraft times each call out itself (an append after one
        // heartbeat interval) and retries at once; the transport gives it
        // longer, so that a peer that is merely slow (both cores busy) is
        // never taken for unreachable, which would stop replication to it
        // for 500 ms (openraft's backoff). Found with 100k tasks: a third
        // of the appends ran past 150 ms, and each such follower fell silent.
        // In a task of its own, so that an answer that comes after openraft
        // gave up on the call (it drops the future after one heartbeat
        // interval) still counts as the peer having answered: a busy but
        // live follower must not be shown Unreachable.
        let (transport, answers, target) =
            (self.transport.clone(), self.answers.clone(), self.target);
        let frame = rpc::encode(&req);
        let call = tokio::spawn(async move {
            let r = transport
                .call(addr, MANAGER_SERVER_NAME, frame, timeout + TRANSPORT_SLACK)
                .await;
            if r.is_ok() {
                answers.heard(target);
            }
            r
        });
        let bytes = call
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&std::io::Error::other(e))))?
            // openraft backs off from Unreachable peers, which is what a dead
            // or cut-off manager needs (no connection, or no answer at all).
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let reply: Reply = rpc::decode(&bytes)
            .map_err(|e| RPCError::Network(NetworkError::new(&std::io::Error::other(e))))?;
        if let Reply::Error(e) = reply {
            return Err(RPCError::Network(NetworkError::new(&e)));
        }
        Ok(reply)
    }

    fn unexpected<E: std::error::Error>(&self, what: &str) -> RpcErr<E> {
        RPCError::Network(NetworkError::new(&std::io::Error::other(format!(
            "raft member {} answered {what} with an unexpected message",
            self.target
        ))))
    }
}

impl RaftNetwork<TypeConfig> for Client {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RpcErr> {
        match self
            .send(Request::AppendEntries(rpc), option.hard_ttl())
            .await?
        {
            Reply::AppendEntries(Ok(r)) => Ok(r),
            Reply::AppendEntries(Err(e)) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(self.unexpected("append-entries")),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RpcErr<InstallSnapshotError>> {
        match self
            .send(Request::InstallSnapshot(rpc), option.hard_ttl())
            .await?
        {
            Reply::InstallSnapshot(Ok(r)) => Ok(r),
            Reply::InstallSnapshot(Err(e)) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(self.unexpected("install-snapshot")),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RpcErr> {
        match self.send(Request::Vote(rpc), option.hard_ttl()).await? {
            Reply::Vote(Ok(r)) => Ok(r),
            Reply::Vote(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            _ => Err(self.unexpected("vote")),
        }
    }
}
