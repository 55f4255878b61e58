//! What an agent that was killed (or crashed) left on its bridge, and what
//! to do about it. Pure: `Bridge::sweep` gathers what is on the host, asks
//! `plan` which tasks are orphans, and undoes them.
//!
//! Ownership is by name, scoped to the bridge and the agent (`owner`), so
//! agents sharing a host never touch each other's:
//! - a namespace `/run/netns/<bridge>-<owner>-<task>` (`/run/netns` is
//!   host-wide: agents in namespaces of their own share it whatever their
//!   bridges are called; task IDs and owner tags have no `-`, so
//!   `apiary0-<owner>-<task>` never parses as a task of a bridge
//!   `apiary0-x`, nor `apiary0-x-<owner>-<task>` as one of `apiary0`);
//! - a DNAT rule in `APY-DNAT-<bridge>` commented `task=<id>`;
//! - an entry of the bridge's address table, a directory of its /etc files;
//! - a veth named `v` + 14 hex digits enslaved to the bridge (the names are
//!   hashes, so a veth no live task would get is a leftover; other ports of
//!   the bridge are left alone).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::Ipv4Addr;

use super::bridge::veth_name;
use super::ipam::{Allocations, Subnet};
use super::rules::DnatRule;

/// Task IDs the bridge network accepts: Swarm's are lowercase base36.
/// No `-`: it separates the bridge from the task in namespace names.
pub const TASK_ID_MAX: usize = 64;

pub fn is_task_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= TASK_ID_MAX
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.'))
        // "." and ".." would name the tasks dir or its parent.
        && !s.chars().all(|c| c == '.')
}

/// The task whose namespace this is, if it is one named after `prefix`
/// (`bridge::netns_prefix`: the bridge and the owning agent).
pub fn task_of_netns<'a>(prefix: &str, netns: &'a str) -> Option<&'a str> {
    let task = netns.strip_prefix(prefix)?.strip_prefix('-')?;
    is_task_id(task).then_some(task)
}

/// A name `veth_name` could have made.
pub fn is_veth_name(name: &str) -> bool {
    name.len() == 15
        && name
            .strip_prefix('v')
            .is_some_and(|h| h.chars().all(|c| c.is_ascii_hexdigit()))
}

/// What the bridge network has on the host, as gathered by `Bridge`.
#[derive(Clone, Debug, Default)]
pub struct Found {
    /// Every name in /run/netns (any owner).
    pub netns: Vec<String>,
    /// The bridge's ports.
    pub ports: Vec<String>,
    /// The rules of the bridge's DNAT chain.
    pub dnat: Vec<DnatRule>,
    /// The address table as stored.
    pub allocations: Allocations,
    /// Directories under `<state>/tasks`.
    pub task_dirs: Vec<String>,
}

/// What to undo.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Tasks with something left on the node and no live container: detach
    /// each (namespace, veth, rules, address, files).
    pub orphans: BTreeSet<String>,
    /// Veths on the bridge that belong to no live task.
    pub stray_veths: Vec<String>,
    /// Live tasks with a namespace of theirs: their address is read back
    /// from it (the table may have lost it).
    pub live_netns: BTreeSet<String>,
}

/// `prefix`: what this agent's task namespaces are named after.
pub fn plan(bridge: &str, prefix: &str, found: &Found, live: &HashSet<String>) -> Plan {
    let mut p = Plan::default();
    let mut consider = |task: &str| {
        if !live.contains(task) {
            p.orphans.insert(task.to_string());
        }
    };
    for ns in &found.netns {
        if let Some(task) = task_of_netns(prefix, ns) {
            consider(task);
        }
    }
    for task in found.dnat.iter().filter_map(|r| r.task.as_deref()) {
        consider(task);
    }
    for task in found.allocations.tasks.keys() {
        consider(task);
    }
    for task in &found.task_dirs {
        consider(task);
    }
    p.live_netns = found
        .netns
        .iter()
        .filter_map(|ns| task_of_netns(prefix, ns))
        .filter(|t| live.contains(*t))
        .map(String::from)
        .collect();
    let wanted: HashSet<String> = live.iter().map(|t| veth_name(bridge, t)).collect();
    p.stray_veths = found
        .ports
        .iter()
        .filter(|l| is_veth_name(l) && !wanted.contains(*l))
        .cloned()
        .collect();
    p
}

/// The address table after a sweep: live tasks only, each at the address
/// its namespace really has (`seen`) when that is known and in the subnet,
/// else at the one the table had.
pub fn reconcile(
    old: &Allocations,
    subnet: &Subnet,
    live: &HashSet<String>,
    seen: &BTreeMap<String, Ipv4Addr>,
) -> Allocations {
    let mut tasks: BTreeMap<String, Ipv4Addr> = old
        .tasks
        .iter()
        .filter(|(t, ip)| live.contains(*t) && subnet.contains(**ip))
        .map(|(t, ip)| (t.clone(), *ip))
        .collect();
    for (t, ip) in seen {
        if live.contains(t) && subnet.contains(*ip) {
            tasks.insert(t.clone(), *ip);
        }
    }
    Allocations { tasks }
}

/// The IPv4 address in `ip -4 -o addr show dev eth0` output.
pub fn parse_inet(text: &str) -> Option<Ipv4Addr> {
    let mut words = text.split_whitespace();
    while let Some(w) = words.next() {
        if w == "inet" {
            let cidr = words.next()?;
            return cidr.split('/').next()?.parse().ok();
        }
    }
    None
}
