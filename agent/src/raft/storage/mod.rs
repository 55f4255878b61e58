//! redb-backed raft log and state machine: one database file per manager
//! (`<data-dir>/raft.redb`) holds the log, the vote, the state machine's
//! rows and the current snapshot.
//!
//! Tables:
//! - `raft_log`: log index -> JSON of the [`Entry`](openraft::Entry);
//! - `raft_meta`: `vote`, `committed`, `last_purged_log_id` (log side) and
//!   `last_applied`, `last_membership`, `snapshot_meta` (state machine side),
//!   each a JSON value;
//! - `objects`: the state machine's rows (`"<kind>/<id>"` -> object JSON),
//!   exactly what [`State::rows`] gives;
//! - `snapshot`: the current snapshot blob under one key.
//!
//! redb is blocking: every access runs inside [`tokio::task::spawn_blocking`],
//! never in an `async fn` body, and every write is one transaction committed
//! with redb's default (immediate, fsynced) durability before the call
//! returns or acknowledges.

// openraft's `StorageError` is what every trait method must return; boxing it
// in the helpers would only move the size around.
#![allow(clippy::result_large_err)]

mod log_store;
/// Public only so that the fuzz targets in `fuzz/` reach the snapshot decoder; not an API.
#[doc(hidden)]
pub mod snapshot;
mod state_machine;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::{AnyError, StorageError, StorageIOError};
use redb::{Database, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use log_store::LogStore;
#[cfg(test)]
use log_store::{Recent, RECENT_ENTRIES};
pub use state_machine::{SnapshotBuilder, StateMachineStore};

use super::{shared_state, StateReader};
use crate::seal::{SealError, Sealer};
use crate::store::{State, StoreError};

/// Raft log: index -> JSON entry.
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// Small raft values, JSON, under the `META_*` keys.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
/// The state machine's rows, as [`State::rows`] names and encodes them.
const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
/// The current snapshot blob, under [`SNAPSHOT_KEY`].
const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");

const META_VOTE: &str = "vote";
const META_COMMITTED: &str = "committed";
const META_LAST_PURGED: &str = "last_purged_log_id";
const META_LAST_APPLIED: &str = "last_applied";
const META_LAST_MEMBERSHIP: &str = "last_membership";
const META_SNAPSHOT: &str = "snapshot_meta";
const SNAPSHOT_KEY: &str = "current";

/// Where a sealed record lives, bound into it as associated data so that a
/// record moved elsewhere (another index, another key) fails to open.
fn log_place(index: u64) -> String {
    format!("log/{index}")
}
fn object_place(key: &str) -> String {
    format!("obj/{key}")
}
const SNAPSHOT_PLACE: &str = "snapshot/current";

type NodeId = u64;
type LogId = openraft::LogId<NodeId>;
type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;
type Error = StorageError<NodeId>;

/// Why the raft database could not be opened. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("the raft database {} holds a record that does not open with this manager's data key: {source}. Restore the data dir from a backup, or remove the manager and join it again", path.display())]
    Sealed { path: PathBuf, source: SealError },
    #[error("cannot open the raft database {}: {source}{}", path.display(), locked_hint(source))]
    Open {
        path: PathBuf,
        source: redb::DatabaseError,
    },
    #[error("cannot {what} in the raft database {}: {source}", path.display())]
    Db {
        path: PathBuf,
        what: &'static str,
        source: redb::Error,
    },
    #[error(
        "the raft database {} is damaged: its stored {what} does not decode ({source}); \
         restore the data directory from a backup or remove this manager and rejoin",
        path.display()
    )]
    Decode {
        path: PathBuf,
        what: &'static str,
        source: serde_json::Error,
    },
    #[error(
        "the raft database {} is damaged: {source}; \
         restore the data directory from a backup or remove this manager and rejoin",
        path.display()
    )]
    State { path: PathBuf, source: StoreError },
}

fn locked_hint(e: &redb::DatabaseError) -> &'static str {
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => {
            " (is another apiary agent running with this data directory?)"
        }
        _ => "",
    }
}

/// Open (creating if absent) `path` as the manager's raft database and load
/// the replicated [`State`] from its rows.
///
/// Blocking: call it before the runtime starts or from `spawn_blocking`.
/// Whether the node was a raft member before is [`LogStore::has_state`].
pub fn open(
    path: &Path,
    sealer: Arc<Sealer>,
) -> Result<(LogStore, StateMachineStore, StateReader), OpenError> {
    let db = Database::builder()
        .set_cache_size(DB_CACHE_BYTES)
        .create(path)
        .map_err(|source| OpenError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    init(db, path, sealer)
}

/// redb's page cache. Its default, 1 GiB, is most of a small board's
/// memory, and it filled: a 100k-task leader peaked at 474–502 MiB with it.
/// The state lives in memory and recent entries are kept decoded
/// (`LogStore`), so the file is mostly appended to and read back by
/// followers that fell behind (the OS's page cache serves those). 16 MiB:
/// 64 MiB filled too and left a leader answering 1,000 nodes' long polls
/// at 473 MiB.
const DB_CACHE_BYTES: usize = 16 * 1024 * 1024;

/// [`open`] over redb's in-memory backend, for tests.
pub fn open_in_memory(
    sealer: Arc<Sealer>,
) -> Result<(LogStore, StateMachineStore, StateReader), OpenError> {
    let path = Path::new("<in-memory>");
    let db = Database::builder()
        .create_with_backend(redb::backends::InMemoryBackend::new())
        .map_err(|source| OpenError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    init(db, path, sealer)
}

fn init(
    db: Database,
    path: &Path,
    sealer: Arc<Sealer>,
) -> Result<(LogStore, StateMachineStore, StateReader), OpenError> {
    let db_err = |what: &'static str| {
        move |e: redb::Error| OpenError::Db {
            path: path.to_path_buf(),
            what,
            source: e,
        }
    };
    let decode_err = |what: &'static str| {
        move |e: serde_json::Error| OpenError::Decode {
            path: path.to_path_buf(),
            what,
            source: e,
        }
    };

    // Create every table up front, so readers never meet a missing table.
    let txn = db
        .begin_write()
        .map_err(|e| db_err("start a transaction")(e.into()))?;
    for def in [META, OBJECTS, SNAPSHOTS] {
        txn.open_table(def)
            .map_err(|e| db_err("create tables")(e.into()))?;
    }
    txn.open_table(LOG)
        .map_err(|e| db_err("create tables")(e.into()))?;
    txn.commit()
        .map_err(|e| db_err("create tables")(e.into()))?;

    let txn = db
        .begin_read()
        .map_err(|e| db_err("start a transaction")(e.into()))?;
    let meta = txn
        .open_table(META)
        .map_err(|e| db_err("read the raft metadata")(e.into()))?;
    let get = |key: &str| -> Result<Option<Vec<u8>>, OpenError> {
        let v = meta
            .get(key)
            .map_err(|e| db_err("read the raft metadata")(e.into()))?;
        Ok(v.map(|g| g.value().to_vec()))
    };
    let legacy_applied: Option<LogId> = match get(META_LAST_APPLIED)? {
        Some(b) => Some(decode(&b).map_err(decode_err("last applied log id"))?),
        None => None,
    };
    let snapshot_meta: Option<SnapshotMeta> = match get(META_SNAPSHOT)? {
        Some(b) => Some(decode(&b).map_err(decode_err("snapshot metadata"))?),
        None => None,
    };
    let committed: Option<LogId> = match get(META_COMMITTED)? {
        Some(b) => Some(decode(&b).map_err(decode_err("committed log id"))?),
        None => None,
    };
    let sealed_err = |source| OpenError::Sealed {
        path: path.to_path_buf(),
        source,
    };
    let state_err = |source| OpenError::State {
        path: path.to_path_buf(),
        source,
    };

    // Where the state starts: a database written before the state lived in
    // its snapshot keeps it as rows (converted below); else the current
    // snapshot; else nothing.
    let (mut state, mut last_applied, mut last_membership) = if legacy_applied.is_some() {
        let last_membership: StoredMembership = match get(META_LAST_MEMBERSHIP)? {
            Some(b) => decode(&b).map_err(decode_err("last membership"))?,
            None => StoredMembership::default(),
        };
        let objects = txn
            .open_table(OBJECTS)
            .map_err(|e| db_err("read the objects")(e.into()))?;
        let mut rows = Vec::new();
        for row in objects
            .iter()
            .map_err(|e| db_err("read the objects")(e.into()))?
        {
            let (k, v) = row.map_err(|e| db_err("read the objects")(e.into()))?;
            let key = k.value().to_string();
            let value = sealer
                .open(&object_place(&key), v.value())
                .map_err(sealed_err)?;
            rows.push((key, value));
        }
        let state = State::from_rows(rows).map_err(state_err)?;
        convert_rows(&db, &sealer, &state, legacy_applied, &last_membership)
            .map_err(|e| db_err("turn the stored rows into a snapshot")(e))?;
        (state, legacy_applied, last_membership)
    } else if let Some(m) = &snapshot_meta {
        let blobs = txn
            .open_table(SNAPSHOTS)
            .map_err(|e| db_err("read the snapshot")(e.into()))?;
        let sealed = blobs
            .get(SNAPSHOT_KEY)
            .map_err(|e| db_err("read the snapshot")(e.into()))?
            .ok_or_else(|| {
                state_err(StoreError::invalid(
                    "the snapshot's metadata is stored but its data is missing",
                ))
            })?;
        let blob = sealer
            .open(SNAPSHOT_PLACE, sealed.value())
            .map_err(sealed_err)?;
        let decoded = snapshot::decode(&blob).map_err(|e| {
            state_err(StoreError::invalid(format!(
                "the snapshot does not decode: {e}"
            )))
        })?;
        let state = State::from_rows(decoded.rows).map_err(state_err)?;
        (state, m.last_log_id, m.last_membership.clone())
    } else {
        (State::default(), None, StoredMembership::default())
    };

    // Then the committed entries after it, as raft applied them before
    // the restart (openraft would replay them too, but the state is whole
    // as soon as the database is open, for whoever reads it first).
    let from = last_applied.map_or(0, |l| l.index + 1);
    if let Some(committed) = committed.filter(|c| c.index >= from) {
        let log = txn
            .open_table(LOG)
            .map_err(|e| db_err("read the log")(e.into()))?;
        let replay_err = |index: u64, e: &dyn std::fmt::Display| {
            state_err(StoreError::invalid(format!(
                "committed log entry {index} cannot be replayed: {e}"
            )))
        };
        // With nothing applied yet the log starts where it starts (openraft
        // writes its first entry at 0, tests at 1); after that, no gaps.
        let mut next = last_applied.map(|l| l.index + 1);
        for row in log
            .range(from..=committed.index)
            .map_err(|e| db_err("read the log")(e.into()))?
        {
            let (k, v) = row.map_err(|e| db_err("read the log")(e.into()))?;
            let index = k.value();
            if let Some(n) = next.filter(|n| *n != index) {
                return Err(replay_err(n, &"it is missing from the log"));
            }
            next = Some(index + 1);
            let entry = log_store::decode_entry(&sealer, index, v.value())
                .map_err(|e| replay_err(index, &e))?;
            // Nothing to roll back to here: a failure fails the open.
            let batch = state_machine::apply_entries(&mut state, &[entry])
                .map_err(|e| replay_err(index, &e))?;
            last_applied = Some(batch.last);
            if let Some(m) = batch.membership {
                last_membership = m;
            }
        }
        let next = next.unwrap_or(from);
        if next <= committed.index {
            return Err(replay_err(next, &"it is missing from the log"));
        }
    }
    drop((meta, txn));

    let (writer, reader) = shared_state(state, last_applied.map_or(0, |l| l.index));
    let db = Arc::new(db);
    let log = LogStore::new(db.clone(), sealer.clone());
    let sm = StateMachineStore::new(db, sealer, writer, last_applied, last_membership);
    Ok((log, sm, reader))
}

/// A database from before the state lived in its snapshot: its rows (the
/// state as of `applied`) become the current snapshot, and go, in one
/// transaction.
fn convert_rows(
    db: &Database,
    sealer: &Sealer,
    state: &State,
    applied: Option<LogId>,
    membership: &StoredMembership,
) -> Result<(), redb::Error> {
    let other = |e: &dyn std::fmt::Display| redb::Error::Io(std::io::Error::other(e.to_string()));
    let meta = SnapshotMeta {
        last_log_id: applied,
        last_membership: membership.clone(),
        snapshot_id: format!("converted-{}", applied.map_or(0, |l| l.index)),
    };
    let blob = snapshot::encode(&meta, &state.rows()).map_err(|e| other(&e))?;
    let sealed = sealer.seal(SNAPSHOT_PLACE, &blob).map_err(|e| other(&e))?;
    let txn = db.begin_write()?;
    {
        let mut m = txn.open_table(META)?;
        m.insert(
            META_SNAPSHOT,
            encode(&meta).map_err(|e| other(&e))?.as_slice(),
        )?;
        m.remove(META_LAST_APPLIED)?;
        m.remove(META_LAST_MEMBERSHIP)?;
        txn.open_table(SNAPSHOTS)?
            .insert(SNAPSHOT_KEY, sealed.as_slice())?;
        txn.open_table(OBJECTS)?.retain(|_, _| false)?;
    }
    txn.commit()?;
    Ok(())
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(v)
}

fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, serde_json::Error> {
    serde_json::from_slice(b)
}

/// What a storage call was doing, to build openraft's error for it.
#[derive(Clone, Copy, Debug)]
enum Op {
    ReadLogs,
    WriteLogs,
    ReadVote,
    WriteVote,
    WriteStateMachine,
    ReadSnapshot,
    WriteSnapshot,
}

impl Op {
    fn error(self, source: AnyError) -> Error {
        match self {
            Op::ReadLogs => StorageIOError::read_logs(source),
            Op::WriteLogs => StorageIOError::write_logs(source),
            Op::ReadVote => StorageIOError::read_vote(source),
            Op::WriteVote => StorageIOError::write_vote(source),
            Op::WriteStateMachine => StorageIOError::write_state_machine(source),
            Op::ReadSnapshot => StorageIOError::read_snapshot(None, source),
            Op::WriteSnapshot => StorageIOError::write_snapshot(None, source),
        }
        .into()
    }
}

/// `result.or_io(Op::ReadLogs)?`: any error (redb, serde) as a `StorageError`.
trait OrIo<T> {
    fn or_io(self, op: Op) -> Result<T, Error>;
}

impl<T, E: std::error::Error + 'static> OrIo<T> for Result<T, E> {
    fn or_io(self, op: Op) -> Result<T, Error> {
        self.map_err(|e| op.error(AnyError::new(&e)))
    }
}

/// Run blocking database work off the async runtime. A panic inside is a
/// storage error for `op`, not a panic of the caller.
async fn blocking<T, F>(op: Op, f: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, Error> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(op.error(AnyError::new(&e))),
    }
}

/// Read one JSON value from the meta table.
fn read_meta<T, Tbl>(table: &Tbl, key: &str, op: Op) -> Result<Option<T>, Error>
where
    T: DeserializeOwned,
    Tbl: ReadableTable<&'static str, &'static [u8]>,
{
    match table.get(key).or_io(op)? {
        Some(v) => decode(v.value())
            .map_err(|e| op.error(AnyError::new(&e).add_context(|| format!("stored {key}"))))
            .map(Some),
        None => Ok(None),
    }
}

/// Write one JSON value to the meta table (`None` removes the key).
fn write_meta<T: Serialize>(
    table: &mut redb::Table<&str, &[u8]>,
    key: &str,
    value: Option<&T>,
    op: Op,
) -> Result<(), Error> {
    match value {
        Some(v) => {
            let bytes = encode(v).or_io(op)?;
            table.insert(key, bytes.as_slice()).or_io(op)?;
        }
        None => {
            table.remove(key).or_io(op)?;
        }
    }
    Ok(())
}
