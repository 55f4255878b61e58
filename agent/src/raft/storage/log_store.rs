//! The raft log and vote.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, Entry, RaftLogReader, StorageIOError, Vote};
use redb::{Database, ReadableTable, ReadableTableMetadata};

use super::log_place;
use super::{
    blocking, decode, encode, read_meta, write_meta, Error, LogId, Op, OrIo, LOG, META,
    META_COMMITTED, META_LAST_PURGED, META_VOTE,
};
use crate::raft::TypeConfig;
use crate::seal::Sealer;

/// The log half of the raft database: entries, vote, committed and purge
/// marks. Cheap to clone; clones read the same database (openraft hands one
/// to each replication task as its log reader) and share `recent`.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    sealer: Arc<Sealer>,
    recent: Arc<Mutex<Recent>>,
}

/// The latest entries appended, in memory: apply and each follower's
/// replication read what was just appended, and decoding it back from the
/// database took a sixth of a leader's CPU at 100k tasks. Entries share
/// their command (`raft::Payload`), so a hit copies no command. Only
/// entries on disk are here (added after the append committed), and they
/// leave before a truncate touches the database. openraft calls append,
/// truncate and purge one at a time (`&mut self` on its one handle);
/// readers see the entries before or after a change, which the database
/// then agrees with.
#[derive(Default)]
pub(super) struct Recent(pub(super) BTreeMap<u64, Entry<TypeConfig>>);

/// Entries kept in `recent`: a commit pipeline holds a few (payloads of 4
/// entries); a follower further behind reads from the database. Bounded by
/// count (at most ~1,000 tasks per entry): 64 entries put a 100k-task
/// leader over 500 MB, 16 keep it at about 320 MB and run as fast.
pub(super) const RECENT_ENTRIES: usize = 16;

impl Recent {
    /// Every entry of `[start, end)`, or None if any is missing.
    pub(super) fn range(&self, start: u64, end: u64) -> Option<Vec<Entry<TypeConfig>>> {
        if start >= end {
            return Some(Vec::new());
        }
        let first = *self.0.keys().next()?;
        let last = *self.0.keys().next_back()?;
        if start < first || end - 1 > last {
            return None;
        }
        // Keys are contiguous: entries are appended in order and removed
        // from either end only.
        Some(self.0.range(start..end).map(|(_, e)| e.clone()).collect())
    }

    pub(super) fn add(&mut self, entries: &[Entry<TypeConfig>]) {
        for e in entries {
            let index = e.log_id.index;
            // An append after a gap (a snapshot installed meanwhile)
            // starts the run again, keeping the keys contiguous.
            if self
                .0
                .keys()
                .next_back()
                .is_some_and(|last| last + 1 != index)
            {
                self.0.clear();
            }
            self.0.insert(index, e.clone());
        }
        while self.0.len() > RECENT_ENTRIES {
            self.0.pop_first();
        }
    }

    /// Forget entries from `index` on.
    pub(super) fn truncate(&mut self, index: u64) {
        self.0.split_off(&index);
    }

    /// Forget entries up to `index`, inclusive.
    pub(super) fn purge(&mut self, index: u64) {
        self.0 = self.0.split_off(&(index.saturating_add(1)));
    }
}

fn lock(r: &Mutex<Recent>) -> std::sync::MutexGuard<'_, Recent> {
    // Changed only by whole inserts and removals: a poisoned map is whole.
    r.lock().unwrap_or_else(|p| p.into_inner())
}

/// `[start, end)` of a range, if it has an end.
fn bounds(range: &(Bound<u64>, Bound<u64>)) -> Option<(u64, u64)> {
    let start = match range.0 {
        Bound::Included(s) => s,
        Bound::Excluded(s) => s.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let end = match range.1 {
        Bound::Included(e) => e.checked_add(1)?,
        Bound::Excluded(e) => e,
        Bound::Unbounded => return None,
    };
    Some((start, end))
}

impl LogStore {
    pub(super) fn new(db: Arc<Database>, sealer: Arc<Sealer>) -> Self {
        LogStore {
            db,
            sealer,
            recent: Arc::default(),
        }
    }

    /// The same database without the in-memory entries (tests compare).
    #[cfg(test)]
    pub(super) fn uncached(&self) -> LogStore {
        LogStore::new(self.db.clone(), self.sealer.clone())
    }

    /// True if the database holds a vote or any log (present or purged):
    /// the node was a raft member before and must restart raft from this
    /// state rather than initialise or join a cluster.
    pub async fn has_state(&self) -> Result<bool, Error> {
        let db = self.db.clone();
        blocking(Op::ReadLogs, move || {
            let txn = db.begin_read().or_io(Op::ReadLogs)?;
            let meta = txn.open_table(META).or_io(Op::ReadLogs)?;
            if meta.get(META_VOTE).or_io(Op::ReadVote)?.is_some()
                || meta.get(META_LAST_PURGED).or_io(Op::ReadLogs)?.is_some()
            {
                return Ok(true);
            }
            let log = txn.open_table(LOG).or_io(Op::ReadLogs)?;
            Ok(!log.is_empty().or_io(Op::ReadLogs)?)
        })
        .await
    }
}

/// Decode the entry stored at `index`, checking it is the one asked for.
pub(super) fn decode_entry(
    sealer: &Sealer,
    index: u64,
    sealed: &[u8],
) -> Result<Entry<TypeConfig>, Error> {
    let bytes = sealer
        .open(&log_place(index), sealed)
        .map_err(|e| StorageIOError::read_log_at_index(index, AnyError::new(&e)))?;
    let entry: Entry<TypeConfig> =
        decode(&bytes).map_err(|e| StorageIOError::read_log_at_index(index, AnyError::new(&e)))?;
    if entry.log_id.index != index {
        return Err(StorageIOError::read_log_at_index(
            index,
            AnyError::error(format!(
                "entry stored at index {index} has log id {}",
                entry.log_id
            )),
        )
        .into());
    }
    Ok(entry)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, Error> {
        let range: (Bound<u64>, Bound<u64>) =
            (range.start_bound().cloned(), range.end_bound().cloned());
        if let Some(hit) = bounds(&range).and_then(|(s, e)| lock(&self.recent).range(s, e)) {
            return Ok(hit);
        }
        let db = self.db.clone();
        let sealer = self.sealer.clone();
        blocking(Op::ReadLogs, move || {
            let txn = db.begin_read().or_io(Op::ReadLogs)?;
            let log = txn.open_table(LOG).or_io(Op::ReadLogs)?;
            let mut entries = Vec::new();
            for row in log.range::<u64>(range).or_io(Op::ReadLogs)? {
                let (k, v) = row.or_io(Op::ReadLogs)?;
                entries.push(decode_entry(&sealer, k.value(), v.value())?);
            }
            Ok(entries)
        })
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, Error> {
        let db = self.db.clone();
        let sealer = self.sealer.clone();
        blocking(Op::ReadLogs, move || {
            let txn = db.begin_read().or_io(Op::ReadLogs)?;
            let meta = txn.open_table(META).or_io(Op::ReadLogs)?;
            let last_purged_log_id: Option<LogId> =
                read_meta(&meta, META_LAST_PURGED, Op::ReadLogs)?;
            let log = txn.open_table(LOG).or_io(Op::ReadLogs)?;
            let last_log_id = match log.last().or_io(Op::ReadLogs)? {
                Some((k, v)) => Some(decode_entry(&sealer, k.value(), v.value())?.log_id),
                None => last_purged_log_id,
            };
            Ok(LogState {
                last_purged_log_id,
                last_log_id,
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), Error> {
        let db = self.db.clone();
        let vote = *vote;
        blocking(Op::WriteVote, move || {
            let txn = db.begin_write().or_io(Op::WriteVote)?;
            {
                let mut meta = txn.open_table(META).or_io(Op::WriteVote)?;
                write_meta(&mut meta, META_VOTE, Some(&vote), Op::WriteVote)?;
            }
            txn.commit().or_io(Op::WriteVote)
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, Error> {
        let db = self.db.clone();
        blocking(Op::ReadVote, move || {
            let txn = db.begin_read().or_io(Op::ReadVote)?;
            let meta = txn.open_table(META).or_io(Op::ReadVote)?;
            read_meta(&meta, META_VOTE, Op::ReadVote)
        })
        .await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), Error> {
        let db = self.db.clone();
        blocking(Op::WriteLogs, move || {
            let mut txn = db.begin_write().or_io(Op::WriteLogs)?;
            // Durable with the next log append (same file): the committed
            // id only lets a restart apply sooner, and it never points past
            // entries this node has flushed.
            txn.set_durability(redb::Durability::None);
            {
                let mut meta = txn.open_table(META).or_io(Op::WriteLogs)?;
                write_meta(&mut meta, META_COMMITTED, committed.as_ref(), Op::WriteLogs)?;
            }
            txn.commit().or_io(Op::WriteLogs)
        })
        .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, Error> {
        let db = self.db.clone();
        blocking(Op::ReadLogs, move || {
            let txn = db.begin_read().or_io(Op::ReadLogs)?;
            let meta = txn.open_table(META).or_io(Op::ReadLogs)?;
            read_meta(&meta, META_COMMITTED, Op::ReadLogs)
        })
        .await
    }

    /// One write transaction for the whole batch; `callback` is told only
    /// after it committed, so the entries are on disk (and readable) by then.
    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), Error>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let db = self.db.clone();
        let sealer = self.sealer.clone();
        let written = blocking(Op::WriteLogs, move || {
            let entries = entries;
            let txn = db.begin_write().or_io(Op::WriteLogs)?;
            {
                let mut log = txn.open_table(LOG).or_io(Op::WriteLogs)?;
                for entry in &entries {
                    let bytes = encode(entry)
                        .map_err(|e| {
                            StorageIOError::write_log_entry(entry.log_id, AnyError::new(&e))
                        })
                        .and_then(|b| {
                            sealer
                                .seal(&log_place(entry.log_id.index), &b)
                                .map_err(|e| {
                                    StorageIOError::write_log_entry(entry.log_id, AnyError::new(&e))
                                })
                        })?;
                    log.insert(entry.log_id.index, bytes.as_slice())
                        .or_io(Op::WriteLogs)?;
                }
            }
            txn.commit().or_io(Op::WriteLogs)?;
            Ok(entries)
        })
        .await;
        match written {
            Ok(entries) => {
                lock(&self.recent).add(&entries);
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    /// Delete entries from `log_id.index` on, inclusive.
    async fn truncate(&mut self, log_id: LogId) -> Result<(), Error> {
        lock(&self.recent).truncate(log_id.index);
        let db = self.db.clone();
        blocking(Op::WriteLogs, move || {
            let txn = db.begin_write().or_io(Op::WriteLogs)?;
            {
                let mut log = txn.open_table(LOG).or_io(Op::WriteLogs)?;
                log.retain_in(log_id.index.., |_, _| false)
                    .or_io(Op::WriteLogs)?;
            }
            txn.commit().or_io(Op::WriteLogs)
        })
        .await
    }

    /// Delete entries up to `log_id.index`, inclusive, and remember `log_id`
    /// as the last purged one, in one transaction.
    async fn purge(&mut self, log_id: LogId) -> Result<(), Error> {
        lock(&self.recent).purge(log_id.index);
        let db = self.db.clone();
        blocking(Op::WriteLogs, move || {
            let txn = db.begin_write().or_io(Op::WriteLogs)?;
            {
                let mut meta = txn.open_table(META).or_io(Op::WriteLogs)?;
                write_meta(&mut meta, META_LAST_PURGED, Some(&log_id), Op::WriteLogs)?;
                let mut log = txn.open_table(LOG).or_io(Op::WriteLogs)?;
                log.retain_in(..=log_id.index, |_, _| false)
                    .or_io(Op::WriteLogs)?;
            }
            txn.commit().or_io(Op::WriteLogs)
        })
        .await
    }
}
