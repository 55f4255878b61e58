//! Whose is what the bridge network makes on the host.
//!
//! Agents can share a host: several per machine (the tests,
//! `scripts/cluster`), each in the host's network namespace with its own
//! bridge, or each in a namespace of its own with the default bridge
//! name. Two things are host-wide whatever the namespace:
//! - `/run/netns`, where every task's namespace is named. A task's
//!   namespace is `<bridge>-<owner>-<task>`, `owner` a tag this agent's
//!   data dir keeps (`<data-dir>/network/owner`), so an agent sweeping
//!   after a crash removes its own namespaces only — before, two agents
//!   with the default bridge name removed each other's tasks' namespaces
//!   at start. The tag belongs to the data dir rather than the node ID: a
//!   node ID changes when the node leaves and joins again, and the new
//!   one must still sweep what the old left.
//! - Nothing else is, but two agents in one namespace with one bridge name
//!   would share the bridge, its address range and its rules, and each
//!   would sweep the other's veths and rules as leftovers. The first to
//!   start takes a lock on the pair (namespace, bridge) for its lifetime;
//!   the second refuses to start, saying what to change. The kernel drops
//!   the lock when its holder dies, so a crash never leaves it taken.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{io_err, NetError, NetResult};

/// Where the bridge locks are (host-wide, like /run/netns).
const LOCK_DIR: &str = "/run/apiary/bridges";

/// The owner tag's length: 8 hex digits (a 1 in 4·10⁹ chance that two
/// data dirs on one host draw the same).
const TAG_LEN: usize = 8;

fn is_tag(s: &str) -> bool {
    s.len() == TAG_LEN
        && s.chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}

/// This data dir's owner tag: read from `<state_dir>/owner`, or drawn and
/// kept there the first time.
pub fn tag(state_dir: &Path) -> NetResult<String> {
    let path = state_dir.join("owner");
    match std::fs::read_to_string(&path) {
        Ok(s) if is_tag(s.trim()) => return Ok(s.trim().to_string()),
        Ok(s) => {
            return Err(NetError::Io {
                op: "parse",
                path,
                error: format!(
                    "{:?} is not an owner tag of {TAG_LEN} hex digits (remove the file while no task runs on this node to draw a new one)",
                    s.trim()
                ),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("read", &path, e)),
    }
    let tag = format!("{:08x}", rand::random::<u32>());
    super::bridge::write_atomic(&path, format!("{tag}\n").as_bytes(), true)?;
    Ok(tag)
}

/// The lock on (this namespace, `bridge`), held while it lives.
#[derive(Debug)]
pub struct BridgeLock {
    _file: File,
    pub path: PathBuf,
}

/// The agent's network namespace, as the inode of its nsfs file: the same
/// for every process in it, and unlike any other namespace's.
fn netns_inode() -> NetResult<u64> {
    let p = Path::new("/proc/self/ns/net");
    std::fs::metadata(p)
        .map(|m| m.ino())
        .map_err(|e| io_err("stat", p, e))
}

/// Take the lock on (this namespace, `bridge`), or say who must change.
pub fn lock_bridge(bridge: &str) -> NetResult<BridgeLock> {
    lock_bridge_in(Path::new(LOCK_DIR), bridge)
}

pub fn lock_bridge_in(dir: &Path, bridge: &str) -> NetResult<BridgeLock> {
    std::fs::create_dir_all(dir).map_err(|e| io_err("create directory", dir, e))?;
    let path = dir.join(format!("{}-{bridge}.lock", netns_inode()?));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| io_err("open", &path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(BridgeLock { _file: file, path }),
        Err(std::fs::TryLockError::WouldBlock) => Err(NetError::Invalid(format!(
            "another apiary agent on this host already uses the task bridge {bridge} in this network namespace (it holds {}): give each agent sharing a network namespace its own --bridge-name and --bridge-subnet",
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(io_err("lock", &path, e)),
    }
}
