//! Rolling updates through the orchestrator and the state machine:
//! start-first, automatic rollback, completion.

use super::*;

fn update_image(st: &mut State, sid: &ServiceId, image: &str, index: u64, now: &str) {
    let mut spec = st.services[sid].spec.clone();
    spec.task_template
        .as_mut()
        .unwrap()
        .container_spec
        .as_mut()
        .unwrap()
        .image = Some(image.into());
    let version = st.services[sid].version;
    let r = st.apply(
        index,
        &Command::UpdateService {
            id: sid.clone(),
            version,
            spec,
            registry_auth: None,
            now: now.into(),
        },
    );
    assert!(r.error.is_none(), "{r:?}");
}

pub(super) fn report(st: &mut State, ids: Vec<TaskId>, state: TaskState, at: &str) {
    let updates = ids
        .into_iter()
        .map(|id| TaskStatusUpdate {
            id,
            status: TaskStatus::new(state, state.as_str(), at),
        })
        .collect();
    st.apply(
        60_000,
        &Command::SetTaskStatus {
            updates,
            reporter: None,
        },
    );
}

fn image_of(t: &Task) -> String {
    t.spec
        .container_spec
        .as_ref()
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

fn at(secs: i64) -> OffsetDateTime {
    now() + time::Duration::seconds(secs)
}

fn text(secs: i64) -> String {
    at(secs).format(&Rfc3339).unwrap()
}

#[test]
fn start_first_keeps_the_old_task_until_the_new_one_runs() {
    let nodes = [node("a", NodeState::Ready, Availability::Active)];
    let mut svc = service("web", Some(1));
    svc.spec.update_config = Some(m::ServiceSpecUpdateConfig {
        order: Some(m::ServiceSpecUpdateConfigOrderEnum::START_FIRST),
        ..Default::default()
    });
    let mut st = state_with(&nodes, &[svc]);
    converge(&mut st, at(0), 10);
    run_all(&mut st);
    let sid = ServiceId("web".into());
    update_image(&mut st, &sid, "busybox:2", 50_000, &text(1));
    converge(&mut st, at(2), 10);
    let live = live(&st);
    assert_eq!(live.len(), 2, "the new task beside the old one: {live:?}");
    assert!(live.iter().all(|t| t.slot == 1));
    let old: Vec<&Task> = live
        .iter()
        .filter(|t| image_of(t) == "busybox")
        .copied()
        .collect();
    assert_eq!(old.len(), 1);
    assert_eq!(old[0].status.state, TaskState::Running, "still serving");
    // The new one runs: now the old one goes.
    run_all(&mut st);
    converge(&mut st, at(3), 10);
    let live = super::live(&st);
    assert_eq!(live.len(), 1);
    assert_eq!(image_of(live[0]), "busybox:2");
}

#[test]
fn a_failing_update_rolls_back_only_the_slots_it_reached_and_completes() {
    let nodes = [
        node("a", NodeState::Ready, Availability::Active),
        node("b", NodeState::Ready, Availability::Active),
    ];
    let mut svc = service("web", Some(3));
    svc.spec.update_config = Some(m::ServiceSpecUpdateConfig {
        parallelism: Some(1),
        failure_action: Some(m::ServiceSpecUpdateConfigFailureActionEnum::ROLLBACK),
        ..Default::default()
    });
    let mut st = state_with(&nodes, &[svc]);
    converge(&mut st, at(0), 10);
    run_all(&mut st);
    let sid = ServiceId("web".into());
    let v1 = st.services[&sid].spec_version;
    let untouched: BTreeSet<TaskId> = live(&st).iter().map(|t| t.id.clone()).collect();
    update_image(&mut st, &sid, "busybox:missing", 50_000, &text(1));
    converge(&mut st, at(2), 10);
    let new: Vec<TaskId> = live(&st)
        .iter()
        .filter(|t| image_of(t) == "busybox:missing")
        .map(|t| t.id.clone())
        .collect();
    assert_eq!(new.len(), 1, "parallelism 1");
    // Its image cannot be pulled: rejected at once.
    report(&mut st, new, TaskState::Rejected, &text(3));
    converge(&mut st, at(4), 10);
    let s = &st.services[&sid];
    let status = s.update_status.clone().unwrap();
    assert_eq!(status.state, crate::store::UpdateState::RollbackStarted);
    assert!(
        status
            .message
            .starts_with("update rolled back due to failure or early termination of task "),
        "{status:?}"
    );
    assert_eq!(image_of_spec(s), "busybox");
    assert_eq!(s.spec_version, v1, "the spec's version came back with it");
    // The two slots the update never reached kept their tasks.
    let live_now: Vec<&Task> = live(&st);
    let kept = live_now
        .iter()
        .filter(|t| untouched.contains(&t.id))
        .count();
    assert_eq!(kept, 2, "{live_now:#?}");
    // The failed slot is made again after its restart delay (5 s), from
    // the spec rolled back to.
    timer_pass(&mut st, at(9));
    let live_now: Vec<&Task> = live(&st);
    assert_eq!(live_now.len(), 3, "{live_now:#?}");
    assert!(live_now.iter().all(|t| image_of(t) == "busybox"));
    // It runs; after the monitor period the rollback is done.
    let assigned: Vec<TaskId> = live_now
        .iter()
        .filter(|t| t.status.state == TaskState::Assigned)
        .map(|t| t.id.clone())
        .collect();
    assert_eq!(assigned.len(), 1);
    report(&mut st, assigned, TaskState::Running, &text(10));
    converge(&mut st, at(11), 10);
    assert_eq!(
        st.services[&sid].update_status.as_ref().unwrap().state,
        crate::store::UpdateState::RollbackStarted,
        "watched for 5 s first"
    );
    timer_pass(&mut st, at(16));
    let status = st.services[&sid].update_status.clone().unwrap();
    assert_eq!(status.state, crate::store::UpdateState::RollbackCompleted);
    assert_eq!(status.message, "rollback completed");
}

/// What the leader does when a pass's `wake_in` runs out: a pass over
/// everything (nothing in the state changed, only the time).
fn timer_pass(st: &mut State, now: OffsetDateTime) {
    st.task_index.hints.everything();
    converge(st, now, 10);
}

fn image_of_spec(s: &Service) -> String {
    s.spec
        .task_template
        .as_ref()
        .and_then(|t| t.container_spec.as_ref())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

#[test]
fn a_manual_rollback_needs_a_previous_spec_and_the_version_read() {
    let nodes = [node("a", NodeState::Ready, Availability::Active)];
    let mut st = state_with(&nodes, &[service("web", Some(1))]);
    let sid = ServiceId("web".into());
    let rollback = |version| Command::RollbackService {
        id: sid.clone(),
        guard: crate::store::RollbackGuard::Version(version),
        message: "manually requested rollback".into(),
        now: text(0),
    };
    let r = st.apply(200, &rollback(1));
    assert_eq!(
        r.error.map(|e| e.message),
        Some("service web does not have a previous spec".into())
    );
    update_image(&mut st, &sid, "busybox:2", 300, &text(1));
    let r = st.apply(301, &rollback(1));
    assert!(r.error.unwrap().message.contains("out of sequence"));
    let r = st.apply(302, &rollback(300));
    assert!(r.error.is_none(), "{r:?}");
    let s = &st.services[&sid];
    assert_eq!(image_of_spec(s), "busybox");
    assert_eq!(
        s.previous_spec
            .as_ref()
            .and_then(|p| p.task_template.as_ref())
            .and_then(|t| t.container_spec.as_ref())
            .and_then(|c| c.image.as_deref()),
        Some("busybox:2"),
        "the rolled-back spec becomes the previous one"
    );
    assert_eq!(
        s.update_status.as_ref().unwrap().message,
        "manually requested rollback"
    );
}
