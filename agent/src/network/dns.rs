//! The embedded DNS resolver: 127.0.0.11:53 inside each task's network
//! namespace, as Docker's. The agent binds one UDP socket there (a socket
//! stays in the namespace it was made in, so one thread enters the
//! namespace just to bind it) and answers from the task's table: the
//! services on the task's networks by name and alias (their virtual IP, or
//! their tasks' addresses in dnsrr mode) and `tasks.NAME` (the tasks'
//! addresses). Other names go to the node's own name servers, from the
//! agent's namespace. The wire format is hickory-proto's.
//!
//! `answer` is pure; `serve` is the socket loop.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{rdata::A, Name, RData, Record, RecordType};
use tokio::sync::watch;
use tracing::debug;

use super::view::NetworkView;
use super::{NetError, NetResult};

/// Where the resolver answers in every task (Docker's address).
pub const RESOLVER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);

/// Answers are not cached for long: membership changes with every task.
const TTL: u32 = 0;

/// How long a forwarded query waits for the node's name servers.
const UPSTREAM_WAIT: Duration = Duration::from_secs(3);

/// A task's names: lowercase, without the final dot.
pub type Table = BTreeMap<String, Vec<Ipv4Addr>>;

/// The names a task on `networks` resolves.
pub fn table(networks: &[&NetworkView]) -> Table {
    let mut t = Table::new();
    for n in networks {
        for s in &n.services {
            let service_addrs = match s.vip {
                Some(v) => vec![v],
                None => s.backends.clone(),
            };
            let names = std::iter::once(&s.name).chain(s.aliases.iter());
            for name in names {
                t.entry(name.to_ascii_lowercase())
                    .or_default()
                    .extend(service_addrs.iter().copied());
            }
            t.entry(format!("tasks.{}", s.name.to_ascii_lowercase()))
                .or_default()
                .extend(s.backends.iter().copied());
        }
    }
    for addrs in t.values_mut() {
        addrs.sort();
        addrs.dedup();
    }
    t
}

/// What the resolver does with one query.
#[derive(Debug, PartialEq)]
pub enum Answer {
    /// Send these bytes back.
    Reply(Vec<u8>),
    /// Not ours: ask the node's name servers.
    Forward,
    /// Not even a DNS query: drop it.
    Drop,
}

fn reply(query: &Message, code: ResponseCode, addrs: &[Ipv4Addr]) -> Answer {
    let mut m = Message::response(query.metadata.id, OpCode::Query);
    m.metadata.recursion_desired = query.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.metadata.authoritative = true;
    m.metadata.response_code = code;
    m.queries = query.queries.clone();
    if let Some(q) = query.queries.first() {
        for a in addrs {
            m.add_answer(Record::from_rdata(q.name().clone(), TTL, RData::A(A(*a))));
        }
    }
    match m.to_vec() {
        Ok(b) => Answer::Reply(b),
        Err(_) => Answer::Drop,
    }
}

fn key(name: &Name) -> String {
    let s = name.to_lowercase().to_ascii();
    s.trim_end_matches('.').to_string()
}

/// Answer `bytes` from `table`: A queries for its names get the addresses,
/// other types for its names an empty answer (the name exists, IPv6 does
/// not), and unknown names go upstream.
pub fn answer(table: &Table, bytes: &[u8]) -> Answer {
    let Ok(q) = Message::from_vec(bytes) else {
        return Answer::Drop;
    };
    if q.metadata.message_type != MessageType::Query {
        return Answer::Drop;
    }
    let Some(question) = q.queries.first() else {
        return reply(&q, ResponseCode::FormErr, &[]);
    };
    let Some(addrs) = table.get(&key(question.name())) else {
        return Answer::Forward;
    };
    match question.query_type() {
        RecordType::A => reply(&q, ResponseCode::NoError, addrs),
        _ => reply(&q, ResponseCode::NoError, &[]),
    }
}

/// SERVFAIL for a query the node's name servers did not answer.
fn servfail(bytes: &[u8]) -> Option<Vec<u8>> {
    let q = Message::from_vec(bytes).ok()?;
    match reply(&q, ResponseCode::ServFail, &[]) {
        Answer::Reply(b) => Some(b),
        _ => None,
    }
}

/// Bind 127.0.0.11:53 in the namespace at `netns`. A thread of its own
/// enters the namespace (setns moves only the calling thread) and ends
/// once the socket is bound; the runtime's threads never move.
pub async fn bind_in(netns: &Path) -> NetResult<tokio::net::UdpSocket> {
    let path = netns.to_path_buf();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let r = (|| -> std::io::Result<std::net::UdpSocket> {
            let f = std::fs::File::open(&path)?;
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&f),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )?;
            let s = std::net::UdpSocket::bind((RESOLVER, 53))?;
            s.set_nonblocking(true)?;
            Ok(s)
        })();
        let _ = tx.send(r);
    });
    let failed = |e: String| NetError::Io {
        op: "bind the DNS resolver (127.0.0.11:53) in",
        path: netns.to_path_buf(),
        error: e,
    };
    let sock = rx
        .await
        .map_err(|e| failed(e.to_string()))?
        .map_err(|e| failed(e.to_string()))?;
    tokio::net::UdpSocket::from_std(sock).map_err(|e| failed(e.to_string()))
}

/// The node's name servers a forwarded query goes to (IPv4, port 53).
pub fn upstreams(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver")).then(|| w.next())?
        })
        .filter_map(|ns| ns.parse::<Ipv4Addr>().ok())
        .map(|ip| SocketAddr::from((ip, 53)))
        .collect()
}

async fn forward(upstreams: &[SocketAddr], query: &[u8]) -> Option<Vec<u8>> {
    for up in upstreams {
        let Ok(s) = tokio::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await else {
            continue;
        };
        if s.send_to(query, up).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 4096];
        if let Ok(Ok((n, _))) = tokio::time::timeout(UPSTREAM_WAIT, s.recv_from(&mut buf)).await {
            buf.truncate(n);
            return Some(buf);
        }
    }
    None
}

/// Answer queries on `sock` from the latest table until the task goes
/// (the caller aborts it). Forwarded queries run on their own, so a slow
/// name server never holds up the task's own names.
pub async fn serve(
    sock: tokio::net::UdpSocket,
    table: watch::Receiver<Arc<Table>>,
    upstreams: Arc<Vec<SocketAddr>>,
) {
    let sock = Arc::new(sock);
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf).await else {
            return;
        };
        let query = buf[..n].to_vec();
        let t = table.borrow().clone();
        match answer(&t, &query) {
            Answer::Reply(b) => {
                let _ = sock.send_to(&b, from).await;
            }
            Answer::Drop => debug!("dropped a datagram that is no DNS query"),
            Answer::Forward => {
                let (sock, upstreams) = (sock.clone(), upstreams.clone());
                tokio::spawn(async move {
                    let out = match forward(&upstreams, &query).await {
                        Some(b) => Some(b),
                        None => servfail(&query),
                    };
                    if let Some(b) = out {
                        let _ = sock.send_to(&b, from).await;
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::view::ServiceEntry;
    use hickory_proto::op::Query;

    fn view() -> NetworkView {
        NetworkView {
            id: "n".into(),
            services: vec![
                ServiceEntry {
                    name: "Web".into(),
                    aliases: vec!["www".into()],
                    vip: Some(Ipv4Addr::new(10, 0, 1, 2)),
                    backends: vec![Ipv4Addr::new(10, 0, 1, 4), Ipv4Addr::new(10, 0, 1, 3)],
                    ..Default::default()
                },
                ServiceEntry {
                    name: "db".into(),
                    vip: None,
                    backends: vec![Ipv4Addr::new(10, 0, 1, 9)],
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    fn ask(t: &Table, name: &str, ty: RecordType) -> Answer {
        let mut q = Message::query();
        q.metadata.recursion_desired = true;
        q.add_query(Query::query(Name::from_ascii(name).unwrap(), ty));
        answer(t, &q.to_vec().unwrap())
    }

    fn addrs(a: Answer) -> (ResponseCode, Vec<Ipv4Addr>) {
        let Answer::Reply(b) = a else {
            panic!("no reply: {a:?}")
        };
        let m = Message::from_vec(&b).unwrap();
        let ips = m
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect();
        (m.metadata.response_code, ips)
    }

    #[test]
    fn services_resolve_to_their_vip_tasks_to_their_addresses_dnsrr_to_tasks() {
        let v = view();
        let t = table(&[&v]);
        let vip = vec![Ipv4Addr::new(10, 0, 1, 2)];
        assert_eq!(
            addrs(ask(&t, "web.", RecordType::A)),
            (ResponseCode::NoError, vip.clone())
        );
        assert_eq!(addrs(ask(&t, "WWW", RecordType::A)).1, vip);
        assert_eq!(
            addrs(ask(&t, "tasks.web", RecordType::A)).1,
            vec![Ipv4Addr::new(10, 0, 1, 3), Ipv4Addr::new(10, 0, 1, 4)]
        );
        assert_eq!(
            addrs(ask(&t, "db", RecordType::A)).1,
            vec![Ipv4Addr::new(10, 0, 1, 9)]
        );
        // A name of ours has no IPv6 address: an empty answer, not a
        // forward (which would leak the name and wait on the upstream).
        assert_eq!(
            addrs(ask(&t, "web", RecordType::AAAA)),
            (ResponseCode::NoError, vec![])
        );
        assert_eq!(ask(&t, "example.org.", RecordType::A), Answer::Forward);
        assert_eq!(answer(&t, b"not dns"), Answer::Drop);
    }

    #[test]
    fn upstreams_are_the_ipv4_name_servers() {
        let ups = upstreams("search lan\nnameserver 192.0.2.53\nnameserver ::1\noptions ndots:1\n");
        assert_eq!(ups, vec!["192.0.2.53:53".parse::<SocketAddr>().unwrap()]);
    }
}
