//! Task specs shared by the tasks made from them.
//!
//! A service of 1,000 replicas has 1,000 tasks with one and the same spec
//! (a `TaskSpec` is a few KiB in memory and ~2 KiB of JSON). Copying it
//! per task cost most of a manager's memory at 100k tasks, and writing it
//! per task made every raft entry of new tasks and every persisted status
//! change ~2 KiB heavier. So:
//! - in memory, tasks hold a [`SharedSpec`] (an `Arc`): one copy per
//!   distinct spec, kept in the state's [`SpecTable`] with a task count;
//! - a spec is named by its key, a digest of its JSON;
//! - persisted task rows and the tasks of raft commands name their spec
//!   by key ("encoding by reference"); the spec itself is written once: a
//!   `spec/<key>` row, or the command's own table of specs ([`tasks`]);
//! - everywhere else (the API, the worker's assignments, old logs) a task
//!   carries its spec inline, as before.
//!
//! Which of the two a (derived) `Serialize`/`Deserialize` of a task does is
//! set for the current thread by [`by_reference`] and [`with_table`]:
//! serde gives a field's implementation no other context, and JSON
//! encoding and decoding run synchronously on one thread.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use bollard_stubs::models::TaskSpec;
use serde::de::{self, DeserializeOwned, MapAccess, SeqAccess, Visitor};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::services::Task;

/// Persisted rows of specs: `spec/<key>`.
pub const SPEC_PREFIX: &str = "spec/";

struct Cell {
    spec: TaskSpec,
    key: OnceLock<String>,
}

/// A task's spec, shared with the other tasks made from the same spec.
#[derive(Clone)]
pub struct SharedSpec(Arc<Cell>);

impl SharedSpec {
    pub fn new(spec: TaskSpec) -> Self {
        SharedSpec(Arc::new(Cell {
            spec,
            key: OnceLock::new(),
        }))
    }

    fn with_key(spec: TaskSpec, key: String) -> Self {
        SharedSpec(Arc::new(Cell {
            spec,
            key: OnceLock::from(key),
        }))
    }

    /// The spec's name: the first 128 bits of the SHA-256 of its JSON, in
    /// hex. Computed once per shared copy. Through `serde_json::Value`,
    /// whose maps are sorted: a spec's labels are `HashMap`s, whose order
    /// (and so their JSON) differs from one process to the next, and equal
    /// specs must get one key on every manager.
    pub fn key(&self) -> &str {
        self.0.key.get_or_init(|| {
            // Serializing a plain data type to JSON cannot fail.
            let json = serde_json::to_value(&self.0.spec)
                .and_then(|v| serde_json::to_vec(&v))
                .unwrap_or_default();
            let d = ring::digest::digest(&ring::digest::SHA256, &json);
            d.as_ref()[..16]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        })
    }

    fn same(&self, other: &SharedSpec) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Default for SharedSpec {
    fn default() -> Self {
        SharedSpec::new(TaskSpec::default())
    }
}

impl From<TaskSpec> for SharedSpec {
    fn from(spec: TaskSpec) -> Self {
        SharedSpec::new(spec)
    }
}

impl Deref for SharedSpec {
    type Target = TaskSpec;
    fn deref(&self) -> &TaskSpec {
        &self.0.spec
    }
}

impl fmt::Debug for SharedSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.spec.fmt(f)
    }
}

impl PartialEq for SharedSpec {
    fn eq(&self, other: &Self) -> bool {
        self.same(other) || self.0.spec == other.0.spec
    }
}

impl Eq for SharedSpec {}

/// How specs are written and read on this thread just now.
enum Mode {
    Inline,
    ByReference,
    Table(Arc<HashMap<String, SharedSpec>>),
}

thread_local! {
    static MODE: RefCell<Mode> = const { RefCell::new(Mode::Inline) };
}

/// Puts the previous mode back when dropped (also on an early `?`).
struct ModeGuard(Option<Mode>);

impl ModeGuard {
    fn enter(mode: Mode) -> ModeGuard {
        ModeGuard(Some(
            MODE.with(|m| std::mem::replace(&mut *m.borrow_mut(), mode)),
        ))
    }
}

impl Drop for ModeGuard {
    fn drop(&mut self) {
        if let Some(prev) = self.0.take() {
            MODE.with(|m| *m.borrow_mut() = prev);
        }
    }
}

/// Run `f` with specs serialized by key.
pub fn by_reference<R>(f: impl FnOnce() -> R) -> R {
    let _g = ModeGuard::enter(Mode::ByReference);
    f()
}

/// Run `f` with spec keys resolved from `table`.
pub fn with_table<R>(table: Arc<HashMap<String, SharedSpec>>, f: impl FnOnce() -> R) -> R {
    let _g = ModeGuard::enter(Mode::Table(table));
    f()
}

/// `v` as JSON, its tasks' specs by key.
pub fn encode_by_reference<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing our own plain data types cannot fail.
    by_reference(|| serde_json::to_vec(v).unwrap_or_default())
}

/// Decode JSON whose tasks name their specs by key.
pub fn decode_with_table<T: DeserializeOwned>(
    bytes: &[u8],
    table: &Arc<HashMap<String, SharedSpec>>,
) -> serde_json::Result<T> {
    with_table(table.clone(), || serde_json::from_slice(bytes))
}

impl Serialize for SharedSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let by_ref = MODE.with(|m| matches!(*m.borrow(), Mode::ByReference));
        if by_ref {
            s.serialize_str(self.key())
        } else {
            // Inside a spec table (or inline): the spec itself. A task's
            // spec holds no task, so no reference mode can be active here
            // other than the one that asked for this spec.
            self.0.spec.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for SharedSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SharedSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a task spec, or the key of one")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<SharedSpec, E> {
                MODE.with(|m| match &*m.borrow() {
                    Mode::Table(t) => t.get(key).cloned().ok_or_else(|| {
                        E::custom(format!("task spec {key} is missing from its table"))
                    }),
                    _ => Err(E::custom(format!(
                        "task spec {key} given by key where the spec itself was expected"
                    ))),
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<SharedSpec, A::Error> {
                let spec = TaskSpec::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(SharedSpec::new(spec))
            }
        }
        d.deserialize_any(V)
    }
}

/// `#[serde(with = "spec::tasks")]` for a list of tasks: each distinct spec
/// once, then the tasks naming theirs by key. Reads the plain list (every
/// task with its spec) too: logs written before this format.
pub mod tasks {
    use super::*;

    pub fn serialize<S: Serializer>(tasks: &[Task], s: S) -> Result<S::Ok, S::Error> {
        let mut specs: BTreeMap<&str, &TaskSpec> = BTreeMap::new();
        let mut last: Option<&SharedSpec> = None;
        for t in tasks {
            // Runs of tasks sharing one copy (a service's tasks on one
            // node, or a small pass's): skip the map.
            if last.is_some_and(|l| l.same(&t.spec)) {
                continue;
            }
            specs.entry(t.spec.key()).or_insert(&t.spec.0.spec);
            last = Some(&t.spec);
        }
        let mut st = s.serialize_struct("Tasks", 2)?;
        st.serialize_field("specs", &specs)?;
        let _g = ModeGuard::enter(Mode::ByReference);
        st.serialize_field("tasks", tasks)?;
        drop(_g);
        st.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Task>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vec<Task>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of tasks, or {\"specs\": .., \"tasks\": ..}")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Task>, A::Error> {
                let mut out = Vec::new();
                while let Some(t) = seq.next_element::<Task>()? {
                    out.push(t);
                }
                Ok(out)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<Task>, A::Error> {
                let mut table: Option<Arc<HashMap<String, SharedSpec>>> = None;
                let mut tasks = None;
                while let Some(k) = map.next_key::<String>()? {
                    match k.as_str() {
                        "specs" => {
                            let specs: BTreeMap<String, TaskSpec> = map.next_value()?;
                            table = Some(Arc::new(
                                specs
                                    .into_iter()
                                    .map(|(k, s)| (k.clone(), SharedSpec::with_key(s, k)))
                                    .collect(),
                            ));
                        }
                        "tasks" => {
                            let Some(t) = &table else {
                                return Err(de::Error::custom("tasks before their specs"));
                            };
                            let _g = ModeGuard::enter(Mode::Table(t.clone()));
                            tasks = Some(map.next_value::<Vec<Task>>()?);
                        }
                        _ => {
                            map.next_value::<de::IgnoredAny>()?;
                        }
                    }
                }
                tasks.ok_or_else(|| de::Error::missing_field("tasks"))
            }
        }
        d.deserialize_any(V)
    }
}

/// The distinct specs of the state's tasks, each with how many tasks hold
/// it. Derived from the tasks; its rows are persisted beside theirs.
#[derive(Clone, Debug, Default)]
pub struct SpecTable {
    by_key: HashMap<String, (SharedSpec, u64)>,
}

impl PartialEq for SpecTable {
    fn eq(&self, other: &Self) -> bool {
        self.by_key.len() == other.by_key.len()
            && self
                .by_key
                .iter()
                .all(|(k, (_, n))| other.by_key.get(k).is_some_and(|(_, m)| m == n))
    }
}

impl SpecTable {
    /// A new task holds `spec`: share the copy already held for its key.
    pub fn hold(&mut self, spec: &mut SharedSpec) {
        let key = spec.key();
        match self.by_key.get_mut(key) {
            Some((held, n)) => {
                *n += 1;
                if !held.same(spec) {
                    *spec = held.clone();
                }
            }
            None => {
                self.by_key.insert(key.to_string(), (spec.clone(), 1));
            }
        }
    }

    /// A task that held `spec` is gone.
    pub fn release(&mut self, spec: &SharedSpec) {
        let key = spec.key();
        if let Some((_, n)) = self.by_key.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                self.by_key.remove(key);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Every spec as a persisted row (for snapshots).
    pub fn rows(&self) -> impl Iterator<Item = (String, Vec<u8>)> + '_ {
        self.by_key
            .iter()
            .map(|(key, (s, _))| (format!("{SPEC_PREFIX}{key}"), spec_row(s)))
    }
}

fn spec_row(s: &SharedSpec) -> Vec<u8> {
    // A plain data type: serializing it cannot fail.
    serde_json::to_vec(&s.0.spec).unwrap_or_default()
}

/// A spec row read back: its key is the row's, not recomputed.
pub fn spec_from_row(key: &str, value: &[u8]) -> serde_json::Result<SharedSpec> {
    let spec: TaskSpec = serde_json::from_slice(value)?;
    Ok(SharedSpec::with_key(spec, key.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ServiceId, TaskId, TaskState, TaskStatus};

    fn task(id: &str, spec: &SharedSpec) -> Task {
        Task {
            id: TaskId(id.into()),
            version: 1,
            created_at: String::new(),
            updated_at: String::new(),
            service_id: ServiceId("s".into()),
            slot: 1,
            node_id: None,
            spec: spec.clone(),
            spec_version: 1,
            ports: vec![],
            desired_state: TaskState::Running,
            status: TaskStatus::new(TaskState::Pending, "", ""),
            attempt: 0,
            registry_auth: None,
            networks: Vec::new(),
            running_since: None,
        }
    }

    fn spec(image: &str) -> SharedSpec {
        SharedSpec::new(TaskSpec {
            container_spec: Some(bollard_stubs::models::TaskSpecContainerSpec {
                image: Some(image.into()),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    #[derive(Serialize, Deserialize)]
    struct Cmd {
        #[serde(with = "tasks")]
        tasks: Vec<Task>,
    }

    #[test]
    fn a_command_carries_each_spec_once_and_its_tasks_share_it_again() {
        let (a, b) = (spec("busybox"), spec("nginx"));
        let cmd = Cmd {
            tasks: vec![task("t1", &a), task("t2", &a), task("t3", &b)],
        };
        let json = serde_json::to_string(&cmd).unwrap();
        assert_eq!(json.matches("busybox").count(), 1, "{json}");
        assert_eq!(json.matches("nginx").count(), 1, "{json}");
        let back: Cmd = serde_json::from_str(&json).unwrap();
        assert_eq!(back.tasks, cmd.tasks);
        assert!(back.tasks[0].spec.same(&back.tasks[1].spec));
        assert!(!back.tasks[0].spec.same(&back.tasks[2].spec));
        // Outside a table, a task is written whole again.
        let inline = serde_json::to_string(&back.tasks[0]).unwrap();
        assert!(inline.contains("busybox"), "{inline}");
    }

    #[test]
    fn the_plain_list_of_older_logs_still_reads() {
        let a = spec("busybox");
        let plain = format!(
            "{{\"tasks\":[{}]}}",
            serde_json::to_string(&task("t1", &a)).unwrap()
        );
        let back: Cmd = serde_json::from_str(&plain).unwrap();
        assert_eq!(back.tasks[0].spec, a);
    }

    #[test]
    fn a_reference_without_its_table_is_an_error_naming_the_key() {
        let a = spec("busybox");
        let row = encode_by_reference(&task("t1", &a));
        let e = serde_json::from_slice::<Task>(&row)
            .unwrap_err()
            .to_string();
        assert!(e.contains(a.key()), "{e}");
        let table = Arc::new(HashMap::from([(a.key().to_string(), a.clone())]));
        let back: Task = decode_with_table(&row, &table).unwrap();
        assert!(back.spec.same(&a));
    }

    #[test]
    fn equal_specs_get_one_key_whatever_the_order_of_their_labels() {
        let with_labels = |order: &mut dyn Iterator<Item = usize>| {
            let labels: HashMap<String, String> =
                order.map(|i| (format!("l{i}"), format!("v{i}"))).collect();
            SharedSpec::new(TaskSpec {
                container_spec: Some(bollard_stubs::models::TaskSpecContainerSpec {
                    image: Some("busybox".into()),
                    labels: Some(labels),
                    ..Default::default()
                }),
                ..Default::default()
            })
        };
        let a = with_labels(&mut (0..32));
        let b = with_labels(&mut (0..32).rev());
        assert_eq!(a.key(), b.key());
        assert_ne!(a.key(), spec("busybox").key());
    }

    #[test]
    fn the_table_counts_holders_and_keeps_a_row_while_one_holds_it() {
        let mut table = SpecTable::default();
        let (mut a1, mut a2) = (spec("busybox"), spec("busybox"));
        table.hold(&mut a1);
        table.hold(&mut a2);
        assert!(a1.same(&a2), "equal specs share one copy");
        assert_eq!(table.len(), 1);
        assert_eq!(table.rows().count(), 1);
        table.release(&a1);
        assert_eq!(table.len(), 1, "one task still holds it");
        table.release(&a2);
        assert!(table.is_empty());
        assert_eq!(table.rows().count(), 0);
    }
}
