//! The links of the agent's own network namespace, as the kernel tells
//! them over rtnetlink.
//!
//! Not `/sys/class/net`: sysfs shows the namespace of whoever mounted it,
//! so an agent started in a namespace of its own (`nsenter --net`,
//! `unshare -n`, a container sharing the host's /sys) read the host's
//! links there, decided its bridge did not exist, tried to make it again
//! and failed every task after the first with "File exists". A netlink
//! socket answers for the namespace its opener is in, which is the
//! agent's. It is also microseconds where a spawn of `ip` is
//! milliseconds, on every task's start.

use futures::TryStreamExt;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};

use super::{NetError, NetResult};

/// The kernel's "no such device" (`ENODEV`): a get by name of a link that
/// is not there.
const ENODEV: i32 = 19;

/// A netlink connection to the kernel's routing subsystem, in the
/// namespace the agent was started in.
pub struct Links {
    handle: rtnetlink::Handle,
}

fn failed(what: impl Into<String>, e: impl std::fmt::Display) -> NetError {
    NetError::Netlink {
        what: what.into(),
        error: e.to_string(),
    }
}

impl Links {
    /// Open the socket. Inside the tokio runtime: the connection runs as
    /// one of its tasks, and ends with it.
    pub fn open() -> NetResult<Links> {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| failed("opening a NETLINK_ROUTE socket", e))?;
        tokio::spawn(conn);
        Ok(Links { handle })
    }

    /// The link named `name`, if there is one.
    async fn get(&self, name: &str) -> NetResult<Option<LinkMessage>> {
        let mut answers = self.handle.link().get().match_name(name).execute();
        match answers.try_next().await {
            Ok(link) => Ok(link),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -ENODEV => Ok(None),
            Err(e) => Err(failed(format!("looking up link {name}"), e)),
        }
    }

    pub async fn exists(&self, name: &str) -> NetResult<bool> {
        Ok(self.get(name).await?.is_some())
    }

    /// The names of every link of the namespace.
    pub async fn names(&self) -> NetResult<Vec<String>> {
        let mut all = self.handle.link().get().execute();
        let mut names = Vec::new();
        while let Some(link) = all
            .try_next()
            .await
            .map_err(|e| failed("listing the links", e))?
        {
            if let Some(name) = link.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            }) {
                names.push(name);
            }
        }
        Ok(names)
    }

    /// The names of the links enslaved to `bridge`; none if it does not
    /// exist.
    pub async fn ports(&self, bridge: &str) -> NetResult<Vec<String>> {
        let Some(br) = self.get(bridge).await? else {
            return Ok(Vec::new());
        };
        let index = br.header.index;
        let mut all = self.handle.link().get().execute();
        let mut ports = Vec::new();
        while let Some(link) = all
            .try_next()
            .await
            .map_err(|e| failed(format!("listing the ports of {bridge}"), e))?
        {
            let on_bridge = link
                .attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::Controller(i) if *i == index));
            if !on_bridge {
                continue;
            }
            if let Some(name) = link.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            }) {
                ports.push(name);
            }
        }
        Ok(ports)
    }
}
