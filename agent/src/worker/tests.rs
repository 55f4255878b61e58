//! The worker's side of the assignment protocol, against the managers'
//! real answers (`manager::assignments::build`).

use super::*;
use crate::manager::assignments::build;
use crate::manager::orchestrator::tests::{converge, node, run_all, service, state_with};
use crate::store::{Availability, Command, NodeId, NodeState, ServiceId, State};

fn converged(services: &[&str]) -> State {
    let a = node("a", NodeState::Ready, Availability::Active);
    let services: Vec<_> = services.iter().map(|s| service(s, Some(1))).collect();
    let mut st = state_with(&[a], &services);
    let now = time::OffsetDateTime::parse(
        "2026-01-01T00:01:00Z",
        &time::format_description::well_known::Rfc3339,
    )
    .expect("time");
    converge(&mut st, now, 10);
    run_all(&mut st);
    st
}

/// The answer to what `held` holds, taken in.
fn poll(st: &State, held: &mut Held) -> Option<Delta> {
    let mut a = build(st, &NodeId("a".into()), &held.digests());
    held.take(&mut a)
}

fn task_of(st: &State, service: &str) -> TaskId {
    st.tasks
        .values()
        .find(|t| t.service_id.0 == service)
        .map(|t| t.id.clone())
        .expect("task")
}

#[test]
fn the_worker_holds_what_the_answers_add_up_to() {
    let mut st = converged(&["sa", "sb"]);
    let mut held = Held::default();
    let first = poll(&st, &mut held).expect("fits");
    assert_eq!((first.changed.len(), first.gone.len()), (2, 0));
    assert_eq!(held.tasks.len(), 2);
    let again = poll(&st, &mut held).expect("fits");
    assert_eq!(
        again,
        Delta {
            changed: vec![],
            gone: vec![]
        }
    );

    // A task whose desired state changed comes again: changed, not gone.
    let sa = task_of(&st, "sa");
    st.apply(
        90_000,
        &Command::RemoveService {
            id: ServiceId("sa".into()),
            now: String::new(),
        },
    );
    let removed = poll(&st, &mut held).expect("fits");
    assert_eq!(
        removed,
        Delta {
            changed: vec![sa.clone()],
            gone: vec![]
        }
    );
    assert_eq!(held.tasks[&sa].desired_state, TaskState::Remove);

    // Deleted: gone.
    st.apply(
        90_001,
        &Command::DeleteTasks {
            ids: vec![sa.clone()],
        },
    );
    let deleted = poll(&st, &mut held).expect("fits");
    assert_eq!(
        deleted,
        Delta {
            changed: vec![],
            gone: vec![sa]
        }
    );
    assert_eq!(held.tasks.len(), 1);
    assert_eq!(held.digests.len(), 1);
    let whole: Vec<u64> = st.tasks.values().map(|t| t.assignment_digest()).collect();
    assert_eq!(held.digests(), whole, "held matches the cluster's view");
}

#[test]
fn an_answer_that_does_not_fit_what_is_held_is_refused() {
    let st = converged(&["sa"]);
    let mut held = Held::default();
    poll(&st, &mut held).expect("fits");
    // A dropped copy that is not held.
    let mut a = build(&st, &NodeId("a".into()), &held.digests());
    a.dropped.push(7);
    assert_eq!(held.take(&mut a), None);
    // A second copy of a held task.
    let mut held = Held::default();
    poll(&st, &mut held).expect("fits");
    let mut a = build(&st, &NodeId("a".into()), &[]);
    assert_eq!(held.take(&mut a), None);
}
