use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    AnyError, BasicNode, CommittedLeaderId, Entry, EntryPayload, Membership, RaftLogReader,
    RaftSnapshotBuilder, StorageIOError, Vote,
};

use super::*;
use crate::raft::TypeConfig;
use crate::store::{Cluster, ClusterSpec, Command, JoinSecrets, Node, NodeId, Role, RootCa};

/// A fixed data key: the storage tests are about storage, `seal` has its own.
fn key() -> std::sync::Arc<crate::seal::Sealer> {
    std::sync::Arc::new(crate::seal::Sealer::new([7u8; 32]))
}

/// Stores over a fresh file in a temp dir, kept alive by the guard.
struct TempFileBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for TempFileBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), Error> {
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
        let path = dir.path().join("raft.redb");
        let (log, sm, _reader) = tokio::task::spawn_blocking(move || open(&path, key()))
            .await
            .map_err(|e| StorageIOError::write(AnyError::new(&e)))?
            .map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
        Ok((dir, log, sm))
    }
}

struct InMemoryBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore> for InMemoryBuilder {
    async fn build(&self) -> Result<((), LogStore, StateMachineStore), Error> {
        let (log, sm, _reader) =
            open_in_memory(key()).map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
        Ok(((), log, sm))
    }
}

#[test]
fn openraft_suite_over_temp_files() -> Result<(), Error> {
    Suite::test_all(TempFileBuilder)
}

#[test]
fn openraft_suite_in_memory() -> Result<(), Error> {
    Suite::test_all(InMemoryBuilder)
}

/// The error opening `path` gives; an error of the test if it opens.
fn open_fails(path: &Path, why: &str) -> Result<OpenError, String> {
    match open(path, key()) {
        Ok(_) => Err(format!("{why}: open must fail")),
        Err(e) => Ok(e),
    }
}

fn log_id(term: u64, index: u64) -> LogId {
    openraft::LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn entry(term: u64, index: u64, payload: EntryPayload<TypeConfig>) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(term, index),
        payload,
    }
}

fn membership() -> Membership<u64, BasicNode> {
    Membership::new(
        vec![BTreeSet::from([1])],
        BTreeMap::from([(1, BasicNode::new("127.0.0.1:4242"))]),
    )
}

fn node(id: &str) -> Node {
    Node {
        id: NodeId(id.to_string()),
        version: 0,
        created_at: "2025-01-01T00:00:00Z".into(),
        updated_at: "2025-01-01T00:00:00Z".into(),
        spec: Default::default(),
        description: Default::default(),
        status: Default::default(),
        role: Role::Manager,
        manager_status: None,
        cert_expiry: String::new(),
        key_fingerprint: String::new(),
    }
}

fn init_cluster() -> Command {
    Command::InitCluster {
        cluster: Cluster {
            id: "cluster1".into(),
            version: 0,
            created_at: "2025-01-01T00:00:00Z".into(),
            updated_at: "2025-01-01T00:00:00Z".into(),
            spec: ClusterSpec::default(),
            root_ca: RootCa {
                cert_pem: "cert".into(),
                key_pem: "key".into(),
            },
            join_secrets: JoinSecrets {
                worker: "w".into(),
                manager: "m".into(),
            },
            unlock_key: None,
            rotation: None,
            addr_pool: Default::default(),
        },
        node: node("node1"),
    }
}

/// A membership entry, the cluster's first command and a second node.
fn first_entries() -> Vec<Entry<TypeConfig>> {
    vec![
        entry(1, 1, EntryPayload::Membership(membership())),
        entry(1, 2, EntryPayload::Normal(init_cluster().into())),
        entry(
            1,
            3,
            EntryPayload::Normal(
                Command::AddNode {
                    node: node("node2"),
                }
                .into(),
            ),
        ),
        entry(1, 4, EntryPayload::Blank),
    ]
}

#[tokio::test]
async fn reopen_restores_vote_log_applied_and_state() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("raft.redb");
    let vote = Vote::new(1, 1);
    {
        let (mut log, mut sm, reader) = open(&path, key())?;
        assert!(
            !log.has_state().await?,
            "a new database holds no raft state"
        );
        log.blocking_append(first_entries()).await?;
        assert!(log.has_state().await?);
        log.save_vote(&vote).await?;
        log.save_committed(Some(log_id(1, 4))).await?;
        let responses = sm.apply(first_entries()).await?;
        assert_eq!(responses.len(), 4);
        assert_eq!(responses[1].version, Some(2));
        assert_eq!(responses[2].version, Some(3));
        assert_eq!(responses[2].error, None);
        assert_eq!(reader.applied(), 4);
        assert_eq!(reader.read().nodes.len(), 2);
    }

    let (mut log, mut sm, reader) = open(&path, key())?;
    assert!(log.has_state().await?);
    assert_eq!(log.read_vote().await?, Some(vote));
    assert_eq!(log.read_committed().await?, Some(log_id(1, 4)));
    let state = log.get_log_state().await?;
    assert_eq!(state.last_log_id, Some(log_id(1, 4)));
    assert_eq!(state.last_purged_log_id, None);
    let entries = log.try_get_log_entries(2..4).await?;
    assert_eq!(entries.len(), 2);
    assert!(matches!(
        &entries[0].payload,
        EntryPayload::Normal(c) if matches!(**c, Command::InitCluster { .. })
    ));

    let (applied, mem) = sm.applied_state().await?;
    assert_eq!(applied, Some(log_id(1, 4)));
    assert_eq!(mem.log_id(), &Some(log_id(1, 1)));
    assert_eq!(mem.membership(), &membership());

    assert_eq!(reader.applied(), 4);
    let state = reader.read().clone();
    let cluster = state
        .cluster
        .as_ref()
        .ok_or("cluster missing after reopen")?;
    assert_eq!(cluster.id, "cluster1");
    assert_eq!(cluster.version, 2);
    let n1 = state
        .nodes
        .get(&NodeId("node1".into()))
        .ok_or("node1 missing after reopen")?;
    assert_eq!(n1.version, 2);
    let n2 = state
        .nodes
        .get(&NodeId("node2".into()))
        .ok_or("node2 missing after reopen")?;
    assert_eq!(n2.version, 3);
    Ok(())
}

#[tokio::test]
async fn removed_object_stays_removed_after_reopen() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("raft.redb");
    {
        let (mut log, mut sm, _reader) = open(&path, key())?;
        let remove = entry(
            1,
            5,
            EntryPayload::Normal(
                Command::RemoveNode {
                    id: NodeId("node2".into()),
                }
                .into(),
            ),
        );
        log.blocking_append(first_entries()).await?;
        log.blocking_append([remove.clone()]).await?;
        log.save_committed(Some(log_id(1, 5))).await?;
        sm.apply(first_entries()).await?;
        let r = sm.apply([remove]).await?;
        // node2 has no manager status, so it may be removed.
        assert_eq!(r[0].error, None);
    }
    let (_log, _sm, reader) = open(&path, key())?;
    assert_eq!(reader.applied(), 5);
    assert!(!reader.read().nodes.contains_key(&NodeId("node2".into())));
    assert!(reader.read().nodes.contains_key(&NodeId("node1".into())));
    Ok(())
}

#[tokio::test]
async fn snapshot_round_trip() -> Result<(), Box<dyn std::error::Error>> {
    let (_log_a, mut sm_a, reader_a) = open_in_memory(key())?;
    sm_a.apply(first_entries()).await?;
    let built = sm_a.get_snapshot_builder().await.build_snapshot().await?;
    assert_eq!(built.meta.last_log_id, Some(log_id(1, 4)));
    assert_eq!(built.meta.last_membership.membership(), &membership());

    let current = sm_a
        .get_current_snapshot()
        .await?
        .ok_or("no current snapshot after build")?;
    assert_eq!(current.meta, built.meta);
    assert_eq!(current.snapshot.get_ref(), built.snapshot.get_ref());

    let dir = tempfile::tempdir()?;
    let path = dir.path().join("raft.redb");
    {
        let (_log_b, mut sm_b, reader_b) = open(&path, key())?;
        let mut received = sm_b.begin_receiving_snapshot().await?;
        assert!(received.get_ref().is_empty());
        *received = *current.snapshot;
        sm_b.install_snapshot(&current.meta, received).await?;

        assert_eq!(*reader_b.read(), *reader_a.read());
        assert_eq!(reader_b.applied(), 4);
        assert_eq!(sm_b.applied_state().await?, sm_a.applied_state().await?);
        let again = sm_b
            .get_current_snapshot()
            .await?
            .ok_or("no snapshot after install")?;
        assert_eq!(again.meta, built.meta);
    }
    // The installed state is durable.
    let (_log_b, _sm_b, reader_b) = open(&path, key())?;
    assert_eq!(*reader_b.read(), *reader_a.read());
    assert_eq!(reader_b.applied(), 4);
    Ok(())
}

#[tokio::test]
async fn install_replaces_existing_objects() -> Result<(), Box<dyn std::error::Error>> {
    let (_la, mut sm_a, reader_a) = open_in_memory(key())?;
    sm_a.apply([entry(1, 1, EntryPayload::Membership(membership()))])
        .await?;
    sm_a.apply([entry(1, 2, EntryPayload::Normal(init_cluster().into()))])
        .await?;
    let snap = sm_a.get_snapshot_builder().await.build_snapshot().await?;

    // The follower holds an extra node the snapshot does not know.
    let (_lb, mut sm_b, reader_b) = open_in_memory(key())?;
    sm_b.apply(first_entries()).await?;
    assert_eq!(reader_b.read().nodes.len(), 2);
    sm_b.install_snapshot(&snap.meta, snap.snapshot).await?;
    assert_eq!(*reader_b.read(), *reader_a.read());
    assert_eq!(reader_b.read().nodes.len(), 1);
    Ok(())
}

#[tokio::test]
async fn corrupt_snapshot_is_an_error_and_changes_nothing() -> Result<(), Box<dyn std::error::Error>>
{
    let (_la, mut sm_a, _ra) = open_in_memory(key())?;
    sm_a.apply(first_entries()).await?;
    let snap = sm_a.get_snapshot_builder().await.build_snapshot().await?;
    let mut blob = snap.snapshot.into_inner();
    blob.truncate(blob.len() - 3);

    let (_lb, mut sm_b, reader_b) = open_in_memory(key())?;
    let r = sm_b
        .install_snapshot(&snap.meta, Box::new(std::io::Cursor::new(blob)))
        .await;
    assert!(r.is_err());
    assert_eq!(*reader_b.read(), State::default());
    assert_eq!(sm_b.get_current_snapshot().await?.map(|s| s.meta), None);
    Ok(())
}

/// The state is durable as its snapshot plus the committed log after it:
/// a reopen replays those entries; entries not (known) committed wait for
/// raft.
#[tokio::test]
async fn reopen_replays_the_committed_entries_after_the_snapshot(
) -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("raft.redb");
    let node3 = |i| {
        entry(
            1,
            i,
            EntryPayload::Normal(
                Command::AddNode {
                    node: node(&format!("node{i}")),
                }
                .into(),
            ),
        )
    };
    {
        let (mut log, mut sm, reader) = open(&path, key())?;
        log.blocking_append(first_entries()).await?;
        sm.apply(first_entries()).await?;
        sm.get_snapshot_builder().await.build_snapshot().await?;
        log.blocking_append([node3(5), node3(6)]).await?;
        sm.apply([node3(5)]).await?;
        log.save_committed(Some(log_id(1, 5))).await?;
        assert_eq!(reader.read().nodes.len(), 3);
    }
    let (_log, mut sm, reader) = open(&path, key())?;
    assert_eq!(reader.applied(), 5);
    let nodes: Vec<String> = reader.read().nodes.keys().map(|n| n.0.clone()).collect();
    assert_eq!(nodes, ["node1", "node2", "node5"]);
    assert_eq!(sm.applied_state().await?.0, Some(log_id(1, 5)));
    assert_eq!(sm.applied_state().await?.1.membership(), &membership());
    Ok(())
}

/// A committed entry that is not in the log cannot be replayed: opening
/// says which, rather than starting with a state that skipped it.
#[tokio::test]
async fn a_committed_entry_missing_from_the_log_fails_open(
) -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("raft.redb");
    {
        let (mut log, _sm, _reader) = open(&path, key())?;
        log.blocking_append(first_entries()).await?;
        log.save_committed(Some(log_id(1, 6))).await?;
    }
    let err = open_fails(&path, "a committed entry is missing")?;
    assert!(matches!(err, OpenError::State { .. }), "{err:?}");
    assert!(err.to_string().contains("committed log entry 5"), "{err}");
    Ok(())
}

/// A database written when the state was kept as rows opens with the same
/// state, turned into its snapshot (and opens from it the next time).
#[tokio::test]
async fn rows_of_the_older_layout_become_the_snapshot() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("raft.redb");
    let mut expected = State::default();
    for e in first_entries() {
        if let EntryPayload::Normal(c) = &e.payload {
            expected.apply(e.log_id.index, c);
        }
    }
    drop(open(&path, key())?);
    {
        let db = redb::Database::create(&path)?;
        let txn = db.begin_write()?;
        {
            let mut objects = txn.open_table(OBJECTS)?;
            for (k, v) in expected.rows() {
                let sealed = key().seal(&object_place(&k), &v)?;
                objects.insert(k.as_str(), sealed.as_slice())?;
            }
            let mut meta = txn.open_table(META)?;
            let applied = encode(&log_id(1, 4))?;
            meta.insert(META_LAST_APPLIED, applied.as_slice())?;
            let m = encode(&StoredMembership::new(Some(log_id(1, 1)), membership()))?;
            meta.insert(META_LAST_MEMBERSHIP, m.as_slice())?;
        }
        txn.commit()?;
    }
    for _ in 0..2 {
        let (_log, mut sm, reader) = open(&path, key())?;
        assert_eq!(*reader.read(), expected);
        assert_eq!(reader.applied(), 4);
        assert_eq!(sm.applied_state().await?.1.membership(), &membership());
        let snap = sm.get_current_snapshot().await?.ok_or("no snapshot")?;
        assert_eq!(snap.meta.last_log_id, Some(log_id(1, 4)));
    }
    Ok(())
}

#[test]
fn corrupt_row_fails_open_naming_the_file() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("raft.redb");
    drop(open(&path, key())?);
    {
        let db = redb::Database::create(&path)?;
        let txn = db.begin_write()?;
        let sealed = key().seal("obj/node/x", b"not json")?;
        txn.open_table(OBJECTS)?
            .insert("node/x", sealed.as_slice())?;
        // Rows count only in a database of the older layout, which has
        // the applied id beside them.
        let applied = encode(&log_id(1, 4))?;
        txn.open_table(META)?
            .insert(META_LAST_APPLIED, applied.as_slice())?;
        txn.commit()?;
    }
    let err = open_fails(&path, "a corrupt row")?;
    assert!(matches!(err, OpenError::State { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    // A row tampered with on disk (not sealed by our key) is detected too.
    {
        let db = redb::Database::create(&path)?;
        let txn = db.begin_write()?;
        txn.open_table(OBJECTS)?
            .insert("node/x", b"not sealed at all, just bytes".as_slice())?;
        txn.commit()?;
    }
    let err = open_fails(&path, "a tampered row")?;
    assert!(matches!(err, OpenError::Sealed { .. }), "{err:?}");
    assert!(err.to_string().contains("does not open"), "{err}");
    Ok(())
}

#[tokio::test]
async fn corrupt_log_entry_is_a_storage_error() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("raft.redb");
    {
        let (mut log, _sm, _r) = open(&path, key())?;
        log.blocking_append(first_entries()).await?;
    }
    {
        let db = redb::Database::create(&path)?;
        let txn = db.begin_write()?;
        txn.open_table(LOG)?.insert(3, b"{".as_slice())?;
        txn.commit()?;
    }
    let (mut log, _sm, _r) = open(&path, key())?;
    assert!(log.try_get_log_entries(1..3).await.is_ok());
    assert!(log.try_get_log_entries(1..5).await.is_err());
    Ok(())
}

#[test]
fn second_open_of_the_same_file_says_why() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path: &Path = &dir.path().join("raft.redb");
    let _first = open(path, key())?;
    let err = match open(path, key()) {
        Ok(_) => return Err("the file is already open".into()),
        Err(e) => e,
    };
    assert!(err.to_string().contains("another apiary agent"), "{err}");
    Ok(())
}

/// An in-memory redb backend whose writes and syncs fail once told to.
#[derive(Debug, Default)]
struct FailingBackend {
    inner: redb::backends::InMemoryBackend,
    fail: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FailingBackend {
    fn check(&self) -> std::io::Result<()> {
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            Err(std::io::Error::other("injected disk failure"))
        } else {
            Ok(())
        }
    }
}

impl redb::StorageBackend for FailingBackend {
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn read(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        self.inner.read(offset, len)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.check()?;
        self.inner.set_len(len)
    }
    fn sync_data(&self, eventual: bool) -> std::io::Result<()> {
        self.check()?;
        self.inner.sync_data(eventual)
    }
    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.check()?;
        self.inner.write(offset, data)
    }
}

/// Applying touches no disk (the state is durable as snapshot + log); a
/// failed log append is reported.
#[tokio::test]
async fn failed_append_is_reported_and_applying_needs_no_disk(
) -> Result<(), Box<dyn std::error::Error>> {
    let backend = FailingBackend::default();
    let fail = backend.fail.clone();
    let db = redb::Database::builder().create_with_backend(backend)?;
    let (mut log, mut sm, reader) = init(db, Path::new("<failing>"), key())?;
    sm.apply(first_entries()).await?;

    fail.store(true, std::sync::atomic::Ordering::SeqCst);
    let node3 = entry(
        1,
        5,
        EntryPayload::Normal(
            Command::AddNode {
                node: node("node3"),
            }
            .into(),
        ),
    );
    assert!(
        log.blocking_append([node3.clone()]).await.is_err(),
        "append must report the failed commit"
    );
    sm.apply([node3]).await?;
    assert_eq!(reader.applied(), 5);
    assert_eq!(reader.read().nodes.len(), 3);
    Ok(())
}

/// The log's in-memory copy of its latest entries (`Recent`) answers as
/// the database does, through appends, a truncate (a follower's conflict)
/// and a purge; ranges it does not hold whole come from the database.
#[tokio::test]
async fn recent_entries_answer_as_the_database_does() -> Result<(), Box<dyn std::error::Error>> {
    let (mut log, _sm, _reader) = open_in_memory(key())?;
    let add = |term: u64, index: u64| {
        entry(
            term,
            index,
            EntryPayload::Normal(
                Command::AddNode {
                    node: node(&format!("n{index}t{term}")),
                }
                .into(),
            ),
        )
    };
    log.blocking_append((1..=10).map(|i| add(1, i))).await?;
    log.truncate(log_id(1, 6)).await?;
    log.blocking_append((6..=8).map(|i| add(2, i))).await?;
    log.purge(log_id(1, 2)).await?;
    let mut disk = log.uncached();
    for range in [3..9, 3..6, 6..9, 8..9, 5..7, 1..9, 3..12, 9..12] {
        let cached = log.try_get_log_entries(range.clone()).await?;
        let stored = disk.try_get_log_entries(range.clone()).await?;
        assert_eq!(cached, stored, "entries {range:?}");
    }
    let ids: Vec<u64> = log
        .try_get_log_entries(3..=8)
        .await?
        .iter()
        .map(|e| e.log_id.leader_id.term)
        .collect();
    assert_eq!(ids, vec![1, 1, 1, 2, 2, 2]);
    Ok(())
}

#[test]
fn recent_keeps_a_contiguous_bounded_run() {
    let mut r = Recent::default();
    let blank = |i: u64| entry(1, i, EntryPayload::Blank);
    r.add(&(1..=3).map(blank).collect::<Vec<_>>());
    assert_eq!(r.range(1, 4).map(|v| v.len()), Some(3));
    assert_eq!(r.range(0, 2), None, "index 0 was never added");
    assert_eq!(r.range(2, 5), None, "index 4 was never added");
    // A gap (a snapshot installed meanwhile) starts the run again.
    r.add(&[blank(7)]);
    assert_eq!(r.range(3, 4), None);
    assert_eq!(r.range(7, 8).map(|v| v.len()), Some(1));
    r.add(
        &(8..8 + RECENT_ENTRIES as u64 + 5)
            .map(blank)
            .collect::<Vec<_>>(),
    );
    assert_eq!(r.0.len(), RECENT_ENTRIES);
    assert_eq!(r.range(7, 9), None, "the oldest went first");
    let last = 8 + RECENT_ENTRIES as u64 + 4;
    assert_eq!(r.range(last, last + 1).map(|v| v.len()), Some(1));
    r.truncate(last);
    assert_eq!(r.range(last, last + 1), None);
    r.purge(last - 2);
    assert_eq!(r.0.keys().copied().collect::<Vec<_>>(), vec![last - 1]);
}
