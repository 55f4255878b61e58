//! The state machine: applies committed commands to [`State`] (in memory)
//! and keeps the current snapshot, which is the state's durable form.

use std::io::Cursor;
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{AnyError, Entry, EntryPayload, RaftSnapshotBuilder, StorageIOError};
use redb::Database;

use super::{
    blocking, read_meta, snapshot, write_meta, Error, LogId, Op, OrIo, SnapshotMeta,
    StoredMembership, META, META_SNAPSHOT, SNAPSHOTS, SNAPSHOT_KEY, SNAPSHOT_PLACE,
};
use crate::raft::{StateReader, StateWriter, TypeConfig};
use crate::seal::Sealer;
use crate::store::{Response, State};

/// The last applied log id and membership, as persisted. Kept in memory so
/// `applied_state` and snapshot building need no I/O; updated only after
/// the transaction that persists it has committed.
#[derive(Clone, Debug, Default)]
struct Applied {
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
}

/// The state machine half of the raft database. It is the only writer of
/// the shared [`State`] (through its [`StateWriter`]).
pub struct StateMachineStore {
    db: Arc<Database>,
    sealer: Arc<Sealer>,
    writer: Arc<StateWriter>,
    reader: StateReader,
    applied: Arc<Mutex<Applied>>,
}

fn lock(applied: &Mutex<Applied>) -> MutexGuard<'_, Applied> {
    // Only plain assignments happen under this lock: a poisoned value is whole.
    applied.lock().unwrap_or_else(|p| p.into_inner())
}

impl StateMachineStore {
    pub(super) fn new(
        db: Arc<Database>,
        sealer: Arc<Sealer>,
        writer: StateWriter,
        last_applied: Option<LogId>,
        last_membership: StoredMembership,
    ) -> Self {
        let reader = writer.reader();
        StateMachineStore {
            db,
            sealer,
            writer: Arc::new(writer),
            reader,
            applied: Arc::new(Mutex::new(Applied {
                last_applied,
                last_membership,
            })),
        }
    }
}

/// What one committed batch produced.
pub(super) struct Batch {
    pub(super) responses: Vec<Response>,
    /// What the entries did, for `docker events` (`store::events`).
    pub(super) events: Vec<crate::store::events::Event>,
    pub(super) last: LogId,
    pub(super) membership: Option<StoredMembership>,
}

/// Apply `entries` to `state` in place.
///
/// Nothing is written: the entries are durable in the log, the state is
/// durable as of the current snapshot, and opening the database replays
/// the committed entries since it (`super::open`), as swarmkit's store
/// does with its WAL. Writing each change as a row (as before) cost more
/// than everything else in a commit at 100k tasks, and its write
/// transaction held up the log appends of the same file.
pub(super) fn apply_entries(
    state: &mut State,
    entries: &[Entry<TypeConfig>],
) -> Result<Batch, Error> {
    let Some(last) = entries.last().map(|e| e.log_id) else {
        return Err(Op::WriteStateMachine.error(AnyError::error("apply called with no entries")));
    };
    let mut responses = Vec::with_capacity(entries.len());
    let mut events = Vec::new();
    let mut membership = None;
    for entry in entries {
        match &entry.payload {
            EntryPayload::Blank => responses.push(Response::default()),
            EntryPayload::Normal(cmd) => {
                let index = entry.log_id.index;
                let described = crate::store::events::describe(state, cmd);
                let response = state.apply(index, cmd);
                events.extend(crate::store::events::emitted(described, &response));
                responses.push(response);
            }
            EntryPayload::Membership(m) => {
                membership = Some(StoredMembership::new(Some(entry.log_id), m.clone()));
                responses.push(Response::default());
            }
        }
    }
    Ok(Batch {
        responses,
        events,
        last,
        membership,
    })
}

/// Run `f`; if it panics, log and abort the process rather than let the
/// panic unwind with the state half changed under a released lock.
fn abort_on_panic<R>(f: impl FnOnce() -> R) -> R {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => {
            tracing::error!("applying a raft entry panicked: stopping; the next start rebuilds the state from the snapshot and the committed log");
            std::process::abort()
        }
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), Error> {
        let a = lock(&self.applied).clone();
        Ok((a.last_applied, a.last_membership))
    }

    /// Each entry applied in place under the state's write lock. A panic
    /// while applying (a bug: `apply` fails no other way) aborts the
    /// process, in every build (the release profile aborts on any panic):
    /// no reader may see half an entry, and the next start rebuilds the
    /// state from the snapshot and the committed log (`super::open`).
    /// Before, an undo log kept a copy of every task an entry touched so
    /// that a caught panic could be rolled back: 10-15% of every manager's
    /// CPU at 100k tasks, for a path the release build never took.
    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, Error>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let writer = self.writer.clone();
        let applied = self.applied.clone();
        blocking(Op::WriteStateMachine, move || {
            let mut responses = Vec::with_capacity(entries.len());
            // One entry per hold of the write lock: readers on the async
            // threads (long polls, the API) wait for one entry's apply, not
            // a whole payload's (found with 100k tasks: both runtime
            // threads blocked behind a long apply delayed raft's appends).
            for entry in entries.chunks(1) {
                let batch = writer.with(|state| abort_on_panic(|| apply_entries(state, entry)))?;
                responses.extend(batch.responses);
                writer.emit(batch.events);
                let mut a = lock(&applied);
                a.last_applied = Some(batch.last);
                if let Some(m) = batch.membership {
                    a.last_membership = m;
                }
            }
            if let Some(last) = lock(&applied).last_applied {
                writer.set_applied(last.index);
            }
            Ok(responses)
        })
        .await
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        let applied = lock(&self.applied).clone();
        let state = self.reader.read().clone();
        SnapshotBuilder {
            db: self.db.clone(),
            sealer: self.sealer.clone(),
            state,
            applied,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, Error> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    /// Store the snapshot as the current one (with it, the applied id and
    /// membership: `super::open` starts from it); the in-memory state is
    /// replaced only after that committed.
    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), Error> {
        let blob = snapshot.into_inner();
        let meta = meta.clone();
        let db = self.db.clone();
        let sealer = self.sealer.clone();
        let writer = self.writer.clone();
        let applied = self.applied.clone();
        blocking(Op::WriteSnapshot, move || {
            let signature = Some(meta.signature());
            let read_err = |e: AnyError| -> Error {
                StorageIOError::read_snapshot(signature.clone(), e).into()
            };

            let decoded = snapshot::decode(&blob).map_err(|e| read_err(AnyError::new(&e)))?;
            if decoded.meta.last_log_id != meta.last_log_id {
                return Err(read_err(AnyError::error(format!(
                    "snapshot data is for log id {:?}, its meta says {:?}",
                    decoded.meta.last_log_id, meta.last_log_id
                ))));
            }

            let op = Op::WriteSnapshot;
            let txn = db.begin_write().or_io(op)?;
            {
                let mut t = txn.open_table(META).or_io(op)?;
                write_meta(&mut t, META_SNAPSHOT, Some(&meta), op)?;
                let mut s = txn.open_table(SNAPSHOTS).or_io(op)?;
                let sealed = sealer
                    .seal(SNAPSHOT_PLACE, &blob)
                    .map_err(|e| op.error(AnyError::new(&e)))?;
                s.insert(SNAPSHOT_KEY, sealed.as_slice()).or_io(op)?;
            }
            // Decode the rows before committing: a snapshot whose rows do not
            // make a State must change nothing.
            let state = State::from_rows(decoded.rows).map_err(|e| read_err(AnyError::new(&e)))?;
            txn.commit().or_io(op)?;

            let old = writer.with(|s| std::mem::replace(s, state));
            drop(old);
            {
                let mut a = lock(&applied);
                a.last_applied = meta.last_log_id;
                a.last_membership = meta.last_membership.clone();
            }
            writer.set_applied(meta.last_log_id.map_or(0, |l| l.index));
            Ok(())
        })
        .await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, Error> {
        let db = self.db.clone();
        let sealer = self.sealer.clone();
        blocking(Op::ReadSnapshot, move || {
            let op = Op::ReadSnapshot;
            let txn = db.begin_read().or_io(op)?;
            let meta_table = txn.open_table(META).or_io(op)?;
            let meta: Option<SnapshotMeta> = read_meta(&meta_table, META_SNAPSHOT, op)?;
            let blobs = txn.open_table(SNAPSHOTS).or_io(op)?;
            let blob = match blobs.get(SNAPSHOT_KEY).or_io(op)? {
                Some(g) => Some(
                    sealer
                        .open(SNAPSHOT_PLACE, g.value())
                        .map_err(|e| op.error(AnyError::new(&e)))?,
                ),
                None => None,
            };
            match (meta, blob) {
                (Some(meta), Some(blob)) => Ok(Some(Snapshot {
                    meta,
                    snapshot: Box::new(Cursor::new(blob)),
                })),
                (None, None) => Ok(None),
                (Some(_), None) => Err(op.error(AnyError::error(
                    "snapshot meta is stored but its data is missing",
                ))),
                (None, Some(_)) => Err(op.error(AnyError::error(
                    "snapshot data is stored but its meta is missing",
                ))),
            }
        })
        .await
    }
}

/// Builds a snapshot of the state as it was when the builder was made (a
/// copy, so applying goes on meanwhile), and stores it as the current one.
pub struct SnapshotBuilder {
    db: Arc<Database>,
    sealer: Arc<Sealer>,
    state: State,
    applied: Applied,
}

fn snapshot_id(last: Option<LogId>) -> String {
    // Unique per build even for the same log id (e.g. after a restart).
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    match last {
        Some(l) => format!("{}-{}-{nanos:x}", l.leader_id.term, l.index),
        None => format!("none-{nanos:x}"),
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, Error> {
        let state = std::mem::take(&mut self.state);
        let applied = self.applied.clone();
        let db = self.db.clone();
        let sealer = self.sealer.clone();
        blocking(Op::WriteSnapshot, move || {
            let op = Op::WriteSnapshot;
            let meta = SnapshotMeta {
                last_log_id: applied.last_applied,
                last_membership: applied.last_membership,
                snapshot_id: snapshot_id(applied.last_applied),
            };
            let blob = snapshot::encode(&meta, &state.rows()).or_io(op)?;

            let txn = db.begin_write().or_io(op)?;
            {
                let mut t = txn.open_table(META).or_io(op)?;
                let current: Option<SnapshotMeta> = read_meta(&t, META_SNAPSHOT, op)?;
                // Never replace a newer snapshot (e.g. one installed while
                // this one was being built) with an older one.
                if current.is_none_or(|c| c.last_log_id <= meta.last_log_id) {
                    write_meta(&mut t, META_SNAPSHOT, Some(&meta), op)?;
                    let mut s = txn.open_table(SNAPSHOTS).or_io(op)?;
                    let sealed = sealer
                        .seal(SNAPSHOT_PLACE, &blob)
                        .map_err(|e| op.error(AnyError::new(&e)))?;
                    s.insert(SNAPSHOT_KEY, sealed.as_slice()).or_io(op)?;
                }
            }
            txn.commit().or_io(op)?;
            Ok(Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(blob)),
            })
        })
        .await
    }
}
