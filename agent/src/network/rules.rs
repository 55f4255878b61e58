//! The iptables rules of a bridge network, as argument lists. Pure, so the
//! exact rules are unit-tested; `Bridge` runs them.
//!
//! Everything lives in chains of our own named after the bridge (so agents
//! sharing a host never touch each other's rules, and removing a bridge's
//! rules is flushing its chains), reached by one jump each from the
//! built-in chains:
//! - nat `POSTROUTING` → `APY-POST-<br>`: MASQUERADE for the subnet going
//!   anywhere but the bridge (outbound NAT), and for host-local sources
//!   going to the bridge (the node reaching a published port on its own
//!   loopback, after the OUTPUT DNAT);
//! - nat `PREROUTING` and `OUTPUT` (destination local) → `APY-DNAT-<br>`:
//!   one DNAT rule per published port, commented `task=<id>`;
//! - filter `FORWARD` → `APY-FWD-<br>`: accept to and from the bridge (the
//!   FORWARD policy may be DROP, e.g. after Docker ran on the host).

use std::net::Ipv4Addr;

use super::ipam::Subnet;
use super::{PortMapping, Protocol};

/// Chain names: iptables allows 28 characters, bridge names have at most
/// 15, so the prefixes fit.
pub fn post_chain(bridge: &str) -> String {
    format!("APY-POST-{bridge}")
}
pub fn dnat_chain(bridge: &str) -> String {
    format!("APY-DNAT-{bridge}")
}
pub fn fwd_chain(bridge: &str) -> String {
    format!("APY-FWD-{bridge}")
}

fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// (table, chain) pairs that must exist.
pub fn chains(bridge: &str) -> Vec<(&'static str, String)> {
    vec![
        ("nat", post_chain(bridge)),
        ("nat", dnat_chain(bridge)),
        ("filter", fwd_chain(bridge)),
    ]
}

/// Rules that must exist, as (table, chain, rule spec): checked with `-C`,
/// added with `-A` (our chains) or `-I` (built-in chains, so that an
/// earlier DROP or REJECT of another tool does not shadow them).
pub fn base_rules(bridge: &str, subnet: &Subnet) -> Vec<(&'static str, String, Vec<String>)> {
    let sub = subnet.to_string();
    let post = post_chain(bridge);
    let dnat = dnat_chain(bridge);
    let fwd = fwd_chain(bridge);
    vec![
        ("nat", "POSTROUTING".into(), args(&["-j", &post])),
        (
            "nat",
            "PREROUTING".into(),
            args(&["-m", "addrtype", "--dst-type", "LOCAL", "-j", &dnat]),
        ),
        (
            "nat",
            "OUTPUT".into(),
            args(&["-m", "addrtype", "--dst-type", "LOCAL", "-j", &dnat]),
        ),
        ("filter", "FORWARD".into(), args(&["-j", &fwd])),
        (
            "nat",
            post.clone(),
            args(&["-s", &sub, "!", "-o", bridge, "-j", "MASQUERADE"]),
        ),
        (
            "nat",
            post,
            args(&[
                "-m",
                "addrtype",
                "--src-type",
                "LOCAL",
                "-o",
                bridge,
                "-j",
                "MASQUERADE",
            ]),
        ),
        ("filter", fwd.clone(), args(&["-i", bridge, "-j", "ACCEPT"])),
        ("filter", fwd, args(&["-o", bridge, "-j", "ACCEPT"])),
    ]
}

/// The built-in chains `base_rules` jumps from.
pub fn is_builtin(chain: &str) -> bool {
    matches!(chain, "POSTROUTING" | "PREROUTING" | "OUTPUT" | "FORWARD")
}

/// The comment that ties a DNAT rule to its task.
pub fn task_comment(task: &str) -> String {
    format!("task={task}")
}

/// The DNAT rule spec (without `-A chain`) of one published port.
pub fn dnat_rule(task: &str, host: Option<Ipv4Addr>, p: &PortMapping, ip: Ipv4Addr) -> Vec<String> {
    let mut v = Vec::new();
    if let Some(h) = host {
        v.extend(args(&["-d", &format!("{h}/32")]));
    }
    let proto = p.protocol.as_str();
    v.extend(args(&[
        "-p",
        proto,
        "-m",
        proto,
        "--dport",
        &p.published.to_string(),
        "-m",
        "comment",
        "--comment",
        &task_comment(task),
        "-j",
        "DNAT",
        "--to-destination",
        &format!("{ip}:{}", p.target),
    ]));
    v
}

/// One DNAT rule as `iptables -S` prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnatRule {
    pub task: Option<String>,
    pub protocol: Option<Protocol>,
    pub port: Option<u16>,
    pub dest: Option<String>,
    /// The rule spec after `-A <chain>`, to delete it with `-D <chain>`.
    pub spec: Vec<String>,
}

/// Parse `iptables -t nat -S <chain>`: the chain's `-A` lines. Comments are
/// `task=<id>` with no spaces, so splitting on whitespace is exact (quotes
/// are stripped in case a version adds them).
pub fn parse_dnat(text: &str, chain: &str) -> Vec<DnatRule> {
    let mut out = Vec::new();
    for line in text.lines() {
        let toks: Vec<String> = line
            .split_whitespace()
            .map(|t| t.trim_matches('"').to_string())
            .collect();
        if toks.len() < 2 || toks[0] != "-A" || toks[1] != chain {
            continue;
        }
        let spec = toks[2..].to_vec();
        let after = |flag: &str| {
            spec.iter()
                .position(|t| t == flag)
                .and_then(|i| spec.get(i + 1))
                .cloned()
        };
        out.push(DnatRule {
            task: after("--comment").and_then(|c| c.strip_prefix("task=").map(String::from)),
            protocol: after("-p").and_then(|p| Protocol::parse(&p).ok()),
            port: after("--dport").and_then(|p| p.parse().ok()),
            dest: after("-d"),
            spec,
        });
    }
    out
}

/// Does an existing rule take the same host port as `p` (on `host`)?
/// A rule without `-d` takes it on every address; so does a new rule
/// without a host address.
pub fn clashes(rule: &DnatRule, host: Option<Ipv4Addr>, p: &PortMapping) -> bool {
    if rule.protocol != Some(p.protocol) || rule.port != Some(p.published) {
        return false;
    }
    match (&rule.dest, host) {
        (Some(d), Some(h)) => d.trim_end_matches("/32") == h.to_string(),
        _ => true,
    }
}
