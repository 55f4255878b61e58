//! The /etc files a task's container gets: its own hosts and hostname,
//! and the node's resolv.conf minus loopback name servers (those answer
//! in the node's namespace, not the task's). Pure.

use std::net::Ipv4Addr;

/// Used when the node has no name server a task can reach (Docker's
/// fallback too).
pub const FALLBACK_NAMESERVERS: &[&str] = &["8.8.8.8", "8.8.4.4"];

pub fn hosts(hostname: &str, ip: Option<Ipv4Addr>) -> String {
    let mut s = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    );
    if let Some(ip) = ip {
        s.push_str(&format!("{ip}\t{hostname}\n"));
    }
    s
}

fn is_loopback(ns: &str) -> bool {
    match ns.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => false,
    }
}

/// The host's resolv.conf without loopback `nameserver` lines; when none
/// is left, the fallback servers. Other lines (search, options) stay.
pub fn resolv_conf(host: &str) -> String {
    let mut out = String::new();
    let mut servers = 0;
    for line in host.lines() {
        let mut words = line.split_whitespace();
        if words.next() == Some("nameserver") {
            match words.next() {
                Some(ns) if !is_loopback(ns) => servers += 1,
                _ => continue,
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    if servers == 0 {
        for ns in FALLBACK_NAMESERVERS {
            out.push_str(&format!("nameserver {ns}\n"));
        }
    }
    out
}

/// Does `resolv` list a name server a task can reach (not loopback)?
pub fn has_reachable_nameserver(resolv: &str) -> bool {
    resolv.lines().any(|l| {
        let mut w = l.split_whitespace();
        w.next() == Some("nameserver") && w.next().is_some_and(|ns| !is_loopback(ns))
    })
}

/// A task on overlay networks: the embedded resolver (`dns::RESOLVER`),
/// with the node's search domains; `ndots:0` as Docker's, so that a
/// service name is asked as is first.
pub fn embedded_resolv_conf(host: &str) -> String {
    let mut out: String = host
        .lines()
        .filter(|l| l.split_whitespace().next() == Some("search"))
        .map(|l| format!("{l}\n"))
        .collect();
    out.push_str(&format!(
        "nameserver {}\noptions ndots:0\n",
        super::dns::RESOLVER
    ));
    out
}
