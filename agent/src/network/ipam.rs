//! Addresses of the node's bridge subnet: which task holds which. Pure;
//! `Bridge` persists the table in its state dir so that an agent restart
//! never hands out an address a running task still holds.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::{NetError, NetResult};

/// An IPv4 subnet, e.g. `10.213.0.0/16`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subnet {
    pub base: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    pub fn parse(s: &str) -> NetResult<Subnet> {
        let bad = || {
            NetError::Invalid(format!(
                "invalid subnet {s:?}: write it as an IPv4 network like 10.213.0.0/16 (prefix 8 to 29)"
            ))
        };
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let ip: Ipv4Addr = a.trim().parse().map_err(|_| bad())?;
        let prefix: u8 = p.trim().parse().map_err(|_| bad())?;
        // /30 leaves one task address after gateway and broadcast: useless.
        if !(8..=29).contains(&prefix) {
            return Err(bad());
        }
        let sub = Subnet { base: ip, prefix };
        if u32::from(ip) & !sub.mask() != 0 {
            return Err(NetError::Invalid(format!(
                "invalid subnet {s:?}: {ip} has host bits set; the network is {}/{prefix}",
                Ipv4Addr::from(u32::from(ip) & sub.mask())
            )));
        }
        Ok(sub)
    }

    pub fn mask(&self) -> u32 {
        u32::MAX << (32 - u32::from(self.prefix))
    }

    /// The bridge's own address: the first one.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) + 1)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.base)
    }

    /// Addresses tasks may get: after the gateway, before the broadcast.
    fn task_range(&self) -> std::ops::RangeInclusive<u32> {
        let base = u32::from(self.base);
        (base + 2)..=(base | !self.mask()) - 1
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

/// Which task holds which address (the persisted table).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Allocations {
    /// Task ID → address.
    pub tasks: BTreeMap<String, Ipv4Addr>,
}

impl Allocations {
    /// The task's address: the one it holds, else the lowest free one.
    /// Entries outside `subnet` (the flag changed) are forgotten.
    pub fn allocate(&mut self, subnet: &Subnet, task: &str) -> NetResult<Ipv4Addr> {
        self.tasks.retain(|_, ip| subnet.contains(*ip));
        if let Some(ip) = self.tasks.get(task) {
            return Ok(*ip);
        }
        let used: std::collections::BTreeSet<u32> =
            self.tasks.values().map(|ip| u32::from(*ip)).collect();
        let ip = subnet
            .task_range()
            .find(|n| !used.contains(n))
            .map(Ipv4Addr::from)
            .ok_or_else(|| NetError::Exhausted(subnet.to_string()))?;
        self.tasks.insert(task.to_string(), ip);
        Ok(ip)
    }

    pub fn get(&self, task: &str) -> Option<Ipv4Addr> {
        self.tasks.get(task).copied()
    }

    /// Give the task's address back; true if it held one.
    pub fn release(&mut self, task: &str) -> bool {
        self.tasks.remove(task).is_some()
    }
}
