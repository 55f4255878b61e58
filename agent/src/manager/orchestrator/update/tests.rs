//! The updater's decisions over hand-made tasks.

use super::*;
use crate::manager::orchestrator::tests::service;
use crate::store::{ServiceId, TaskId, TaskStatus};

fn at(secs: i64) -> OffsetDateTime {
    OffsetDateTime::parse("2026-01-01T00:00:00Z", &Rfc3339).unwrap() + time::Duration::seconds(secs)
}

fn text(secs: i64) -> String {
    at(secs).format(&Rfc3339).unwrap()
}

/// A service at spec version 2, updating since t=0, with `config`.
fn updating(config: m::ServiceSpecUpdateConfig) -> Service {
    let mut s = service("web", Some(4));
    s.spec_version = 2;
    s.spec.update_config = Some(config);
    s.update_status = Some(UpdateStatus::started(
        UpdateState::Updating,
        "update in progress",
        &text(0),
    ));
    s
}

/// A task of spec version `v` made at `made`, in `state` since `since`.
fn task(slot: u64, v: u64, made: i64, state: TaskState, since: i64) -> Task {
    Task {
        id: TaskId(format!("t{slot}v{v}m{made}")),
        version: 1,
        created_at: text(made),
        updated_at: text(since),
        service_id: ServiceId("web".into()),
        slot,
        node_id: None,
        spec: Default::default(),
        spec_version: v,
        ports: Vec::new(),
        desired_state: TaskState::Running,
        status: TaskStatus::new(state, "", &text(since)),
        attempt: 0,
        registry_auth: None,
        networks: Vec::new(),
        running_since: (state >= TaskState::Running).then(|| text(since)),
    }
}

fn old_tasks(n: u64) -> Vec<Task> {
    (1..=n)
        .map(|s| task(s, 1, -100, TaskState::Running, -90))
        .collect()
}

fn refs(tasks: &[Task]) -> Vec<&Task> {
    tasks.iter().collect()
}

fn config(parallelism: i64, delay_s: i64) -> m::ServiceSpecUpdateConfig {
    m::ServiceSpecUpdateConfig {
        parallelism: Some(parallelism),
        delay: Some(delay_s * 1_000_000_000),
        ..Default::default()
    }
}

#[test]
fn defaults_are_dockers() {
    let p = Policy::of(&service("web", Some(1)).spec, false);
    assert_eq!(p.parallelism, 1);
    assert_eq!(p.delay, Duration::ZERO);
    assert_eq!(p.action, FailureAction::Pause);
    assert_eq!(p.monitor, Duration::from_secs(5));
    assert_eq!(p.max_failure_ratio, 0.0);
    assert!(!p.start_first);
    // A rollback config's failure action cannot be rollback.
    let mut s = service("web", Some(1));
    s.spec.rollback_config = Some(m::ServiceSpecRollbackConfig {
        parallelism: Some(0),
        order: Some(m::ServiceSpecRollbackConfigOrderEnum::START_FIRST),
        failure_action: Some(m::ServiceSpecRollbackConfigFailureActionEnum::CONTINUE),
        monitor: Some(0),
        ..Default::default()
    });
    let r = Policy::of(&s.spec, true);
    assert_eq!(r.parallelism, 0);
    assert!(r.start_first);
    assert_eq!(r.action, FailureAction::Continue);
    assert_eq!(
        r.monitor,
        Duration::from_secs(5),
        "a monitor of 0 is the default"
    );
}

#[test]
fn parallelism_bounds_the_slots_in_flight() {
    let s = updating(config(2, 0));
    let mut tasks = old_tasks(4);
    assert_eq!(step(&s, &refs(&tasks), 4, at(1)).budget, 2);
    // Two replacements on their way: none more.
    tasks[0].desired_state = TaskState::Shutdown;
    tasks[1].desired_state = TaskState::Shutdown;
    tasks.push(task(1, 2, 1, TaskState::Preparing, 1));
    tasks.push(task(2, 2, 1, TaskState::Running, 2));
    assert_eq!(step(&s, &refs(&tasks), 4, at(3)).budget, 1);
    tasks.pop();
    tasks.push(task(2, 2, 1, TaskState::Assigned, 1));
    assert_eq!(step(&s, &refs(&tasks), 4, at(3)).budget, 0);
    // Parallelism 0: every out-of-date slot at once.
    let all = updating(config(0, 0));
    assert_eq!(step(&all, &refs(&old_tasks(4)), 4, at(1)).budget, 4);
}

#[test]
fn the_delay_holds_a_slot_after_its_task_runs() {
    let s = updating(config(1, 20));
    let mut tasks = old_tasks(3);
    tasks[0].desired_state = TaskState::Shutdown;
    tasks.push(task(1, 2, 1, TaskState::Running, 5));
    let early = step(&s, &refs(&tasks), 3, at(10));
    assert_eq!(early.budget, 0, "15 s of the 20 s delay are left");
    assert_eq!(early.wake_in, Some(Duration::from_secs(15)));
    let late = step(&s, &refs(&tasks), 3, at(25));
    assert_eq!(late.budget, 1);
}

#[test]
fn a_failure_pauses_with_swarms_message() {
    let s = updating(config(1, 0));
    let mut tasks = old_tasks(3);
    tasks[0].desired_state = TaskState::Shutdown;
    tasks.push(task(1, 2, 1, TaskState::Rejected, 2));
    let st = step(&s, &refs(&tasks), 3, at(3));
    assert_eq!(st.budget, 0);
    let Some(Change::Status(status)) = st.change else {
        panic!("{st:?}")
    };
    assert_eq!(status.state, UpdateState::Paused);
    assert_eq!(
        status.message,
        "update paused due to failure or early termination of task t1v2m1"
    );
    assert_eq!(status.started_at, text(0), "the update keeps its start");
}

#[test]
fn a_task_that_ends_after_the_monitor_window_is_no_failure() {
    let mut s = updating(config(1, 0));
    s.spec.update_config.as_mut().unwrap().monitor = Some(2_000_000_000);
    let mut tasks = old_tasks(2);
    tasks[0].desired_state = TaskState::Shutdown;
    let mut t = task(1, 2, 1, TaskState::Failed, 10);
    t.running_since = Some(text(3));
    tasks.push(t);
    let st = step(&s, &refs(&tasks), 2, at(11));
    assert_eq!(st.change, None, "it ran 7 s, longer than the 2 s monitor");
    assert_eq!(st.budget, 1);
}

#[test]
fn failures_within_the_ratio_go_on_and_beyond_it_roll_back() {
    let mut cfg = config(1, 0);
    cfg.max_failure_ratio = Some(0.3);
    cfg.failure_action = Some(m::ServiceSpecUpdateConfigFailureActionEnum::ROLLBACK);
    let s = updating(cfg);
    let mut tasks = old_tasks(4);
    tasks[0].desired_state = TaskState::Shutdown;
    tasks.push(task(1, 2, 1, TaskState::Failed, 2));
    let st = step(&s, &refs(&tasks), 4, at(3));
    assert_eq!(st.change, None, "1 of 4 is within 0.3");
    assert_eq!(st.budget, 1);
    tasks[1].desired_state = TaskState::Shutdown;
    tasks.push(task(2, 2, 3, TaskState::Failed, 4));
    let st = step(&s, &refs(&tasks), 4, at(5));
    assert_eq!(
        st.change,
        Some(Change::Rollback {
            message: "update rolled back due to failure or early termination of task t1v2m1".into()
        })
    );
    assert_eq!(st.budget, 0);
}

#[test]
fn continue_ignores_failures_and_a_rollback_never_rolls_back() {
    let mut cfg = config(1, 0);
    cfg.failure_action = Some(m::ServiceSpecUpdateConfigFailureActionEnum::CONTINUE);
    let s = updating(cfg);
    let mut tasks = old_tasks(2);
    tasks[0].desired_state = TaskState::Shutdown;
    tasks.push(task(1, 2, 1, TaskState::Failed, 2));
    let st = step(&s, &refs(&tasks), 2, at(3));
    assert_eq!((st.change, st.budget), (None, 1));

    let mut rb = updating(config(1, 0));
    rb.update_status.as_mut().unwrap().state = UpdateState::RollbackStarted;
    let st = step(&rb, &refs(&tasks), 2, at(3));
    let Some(Change::Status(status)) = st.change else {
        panic!("{st:?}")
    };
    assert_eq!(status.state, UpdateState::RollbackPaused);
    assert!(status.message.starts_with("rollback paused due to"));
}

#[test]
fn a_paused_update_replaces_nothing_more() {
    let mut s = updating(config(1, 0));
    s.update_status.as_mut().unwrap().state = UpdateState::Paused;
    let st = step(&s, &refs(&old_tasks(3)), 3, at(1));
    assert_eq!((st.budget, st.change), (0, None));
}

#[test]
fn completes_after_the_last_task_has_run_for_the_monitor_period() {
    let s = updating(config(1, 0));
    let tasks: Vec<Task> = (1..=2)
        .map(|slot| task(slot, 2, 1, TaskState::Running, 2))
        .collect();
    let st = step(&s, &refs(&tasks), 2, at(4));
    assert_eq!(st.change, None);
    assert_eq!(st.wake_in, Some(Duration::from_secs(3)));
    let st = step(&s, &refs(&tasks), 2, at(7));
    let Some(Change::Status(status)) = st.change else {
        panic!("{st:?}")
    };
    assert_eq!(status.state, UpdateState::Completed);
    assert_eq!(status.message, "update completed");
    assert_eq!(status.completed_at, Some(text(7)));
}

#[test]
fn out_of_date_tasks_without_an_update_start_one() {
    let mut s = service("web", Some(2));
    s.spec_version = 2;
    let st = step(&s, &refs(&old_tasks(2)), 2, at(1));
    let Some(Change::Status(status)) = &st.change else {
        panic!("{st:?}")
    };
    assert_eq!(status.state, UpdateState::Updating);
    assert_eq!(st.budget, 1);
    // Nothing out of date and nothing under way: nothing to say.
    let mut done = service("web", Some(2));
    done.spec_version = 1;
    assert_eq!(step(&done, &refs(&old_tasks(2)), 2, at(1)).change, None);
}

#[test]
fn tasks_made_before_a_rollback_are_not_its_own() {
    // Rolled back to spec version 1 at t=0: the tasks of version 1 made
    // long before are kept and their old failures do not count.
    let mut s = service("web", Some(2));
    s.spec_version = 1;
    s.update_status = Some(UpdateStatus::started(
        UpdateState::RollbackStarted,
        "manually requested rollback",
        &text(0),
    ));
    let mut tasks = old_tasks(1);
    let mut old_failure = task(2, 1, -200, TaskState::Failed, -199);
    old_failure.desired_state = TaskState::Shutdown;
    tasks.push(old_failure);
    tasks.push(task(2, 2, -50, TaskState::Running, -40));
    let st = step(&s, &refs(&tasks), 2, at(1));
    assert_eq!(st.change, None);
    assert_eq!(
        st.budget, 1,
        "only the slot the update reached is rolled back"
    );
}
