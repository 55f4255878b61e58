//! Jobs through the orchestrator and the state machine: a replicated job
//! runs MaxConcurrent at a time until TotalCompletions have completed, a
//! global job once per node, and an update runs either again.

use super::updates::report;
use super::*;

fn job(id: &str, mode: m::ServiceSpecMode) -> Service {
    let mut s = service(id, Some(1));
    s.spec.mode = Some(mode);
    s
}

fn replicated_job(id: &str, max_concurrent: i64, total: i64) -> Service {
    job(
        id,
        m::ServiceSpecMode {
            replicated_job: Some(m::ServiceSpecModeReplicatedJob {
                max_concurrent: Some(max_concurrent),
                total_completions: Some(total),
            }),
            ..Default::default()
        },
    )
}

/// Every running task of the service exits with `state`.
fn finish_running(st: &mut State, sid: &ServiceId, state: TaskState) {
    let ids = st
        .tasks_of_service(sid)
        .filter(|t| t.status.state == TaskState::Running)
        .map(|t| t.id.clone())
        .collect();
    report(st, ids, state, "2026-01-01T00:00:30Z");
}

fn count(st: &State, sid: &ServiceId, state: TaskState) -> usize {
    st.tasks_of_service(sid)
        .filter(|t| t.desired_state <= TaskState::Running && t.status.state == state)
        .count()
}

fn three_nodes() -> Vec<Node> {
    ["a", "b", "c"]
        .iter()
        .map(|n| node(n, NodeState::Ready, Availability::Active))
        .collect()
}

#[test]
fn a_replicated_job_runs_max_concurrent_at_a_time_until_the_total_completed() {
    let sid = ServiceId("j".into());
    let mut st = state_with(&three_nodes(), &[replicated_job("j", 2, 5)]);
    let mut waves = Vec::new();
    for _ in 0..5 {
        converge(&mut st, now(), 5);
        run_all(&mut st);
        waves.push(count(&st, &sid, TaskState::Running));
        finish_running(&mut st, &sid, TaskState::Complete);
    }
    assert_eq!(waves, [2, 2, 1, 0, 0], "at most 2 at once, 5 in all");
    assert_eq!(count(&st, &sid, TaskState::Complete), 5);
    let slots: BTreeSet<u64> = st.tasks_of_service(&sid).map(|t| t.slot).collect();
    assert_eq!(slots, (1..=5).collect(), "one task per completion slot");
    // Completed tasks are not restarted, though restart `any` is the
    // default.
    converge(&mut st, now(), 5);
    assert_eq!(st.tasks_of_service(&sid).count(), 5);
}

#[test]
fn a_failed_job_task_is_retried_in_its_slot_and_an_update_runs_the_job_again() {
    let sid = ServiceId("j".into());
    let mut st = state_with(&three_nodes(), &[replicated_job("j", 1, 1)]);
    converge(&mut st, now(), 5);
    run_all(&mut st);
    finish_running(&mut st, &sid, TaskState::Failed);
    // After the restart delay (5 s by default) a new task takes slot 1.
    let later = now() + time::Duration::seconds(60);
    converge(&mut st, later, 5);
    run_all(&mut st);
    assert_eq!(count(&st, &sid, TaskState::Running), 1);
    let retry = st
        .tasks_of_service(&sid)
        .find(|t| t.status.state == TaskState::Running)
        .unwrap();
    assert_eq!((retry.slot, retry.attempt), (1, 1));
    finish_running(&mut st, &sid, TaskState::Complete);
    converge(&mut st, later, 5);
    assert_eq!(count(&st, &sid, TaskState::Complete), 1);
    assert_eq!(st.task_index.counts[&sid].completed, 1);
    // Any update (here, of the total: what `service scale` does) is a
    // new iteration: the old completion no longer counts.
    let mut spec = st.services[&sid].spec.clone();
    spec.mode = replicated_job("j", 1, 2).spec.mode;
    let version = st.services[&sid].version;
    let before = st.services[&sid].spec_version;
    let r = st.apply(
        70_000,
        &Command::UpdateService {
            id: sid.clone(),
            version,
            spec,
            registry_auth: None,
            now: "2026-01-01T00:02:00Z".into(),
        },
    );
    assert!(r.error.is_none(), "{r:?}");
    let s = &st.services[&sid];
    assert!(s.spec_version > before, "a new iteration");
    assert!(s.update_status.is_none(), "a job has no rolling update");
    converge(&mut st, later, 5);
    run_all(&mut st);
    assert_eq!(count(&st, &sid, TaskState::Complete), 0);
    assert_eq!(count(&st, &sid, TaskState::Running), 1);
    finish_running(&mut st, &sid, TaskState::Complete);
    converge(&mut st, later, 5);
    run_all(&mut st);
    finish_running(&mut st, &sid, TaskState::Complete);
    converge(&mut st, later, 5);
    assert_eq!(count(&st, &sid, TaskState::Complete), 2);
    let v = st.services[&sid].spec_version;
    assert!(st
        .tasks_of_service(&sid)
        .filter(|t| t.desired_state <= TaskState::Running)
        .all(|t| t.spec_version == v));
}

#[test]
fn a_global_job_completes_once_per_node_and_on_nodes_that_join() {
    let sid = ServiceId("g".into());
    let g = job(
        "g",
        m::ServiceSpecMode {
            global_job: Some(Default::default()),
            ..Default::default()
        },
    );
    let mut st = state_with(&three_nodes()[..2], &[g]);
    converge(&mut st, now(), 5);
    run_all(&mut st);
    assert_eq!(count(&st, &sid, TaskState::Running), 2);
    finish_running(&mut st, &sid, TaskState::Complete);
    converge(&mut st, now(), 5);
    assert_eq!(count(&st, &sid, TaskState::Complete), 2);
    assert_eq!(st.tasks_of_service(&sid).count(), 2, "not run again");
    let c = three_nodes().remove(2);
    st.nodes.insert(c.id.clone(), c);
    // Written past `apply`: the hints cannot know.
    st.task_index.hints.everything();
    converge(&mut st, now(), 5);
    run_all(&mut st);
    let on_c: Vec<_> = st
        .tasks_of_service(&sid)
        .filter(|t| t.node_id == Some(NodeId("c".into())))
        .collect();
    assert_eq!(on_c.len(), 1);
    assert_eq!(on_c[0].status.state, TaskState::Running);
}
