//! Convergence progress after `service create/update/scale` without `-d`,
//! shaped like the docker CLI's (`overall progress: 3 out of 3 tasks`, one
//! bar per task, `verify: Service converged`). It writes to stdout directly
//! because the command's `Output` is only printed when the command ends.

use std::collections::{BTreeMap, HashSet};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use bollard_stubs::models as m;

use crate::cli::client::{encode_query, encode_segment};
use crate::cli::{CliError, Client};

/// How often the service and its tasks are polled (docker polls at 200 ms;
/// 500 ms keeps the load on a small manager low).
const POLL: Duration = Duration::from_millis(500);
/// How long all tasks must stay running before we call it converged. Docker
/// waits 5 s (`monitor`); 1 s catches tasks that die at once without
/// making every create slow.
const STABLE_FOR: Duration = Duration::from_secs(1);
/// Failed or rejected tasks seen before we give up (the orchestrator keeps
/// retrying, so one failure may be transient; three in a row is not).
const MAX_FAILURES: usize = 3;
/// Docker's bar is 50 characters wide.
const BAR_WIDTH: usize = 50;

/// The states a task goes through, in order (docker's `numberedStates`).
const STATES: [&str; 9] = [
    "new",
    "allocated",
    "pending",
    "assigned",
    "accepted",
    "preparing",
    "ready",
    "starting",
    "running",
];

/// `1/3: running   [=====…>] ` — the state padded to the longest one, the
/// bar at the state's rank (docker's `numberedStates`, new = 1 … running = 9).
/// A task with an error shows its error's first line instead, as docker does.
pub fn task_line(id: &str, state: &str, err: &str) -> String {
    if let Some(first) = err.lines().next().filter(|l| !l.is_empty()) {
        return format!("{id}: {first} ");
    }
    match STATES.iter().position(|s| *s == state) {
        Some(i) => {
            let bars = (i + 1) * BAR_WIDTH / STATES.len();
            format!(
                "{id}: {state:<9} [{}>{}] ",
                "=".repeat(bars),
                " ".repeat(BAR_WIDTH - bars)
            )
        }
        None => format!("{id}: {state} "),
    }
}

/// What one poll showed.
#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub lines: Vec<String>,
    pub running: usize,
    pub wanted: usize,
}

/// Pure view of the tasks: one line per slot (replicated) or node (global),
/// the newest task of each.
pub fn snapshot(service: &m::Service, tasks: &[m::Task]) -> Snapshot {
    let mode = service.spec.as_ref().and_then(|s| s.mode.as_ref());
    let global = mode.is_some_and(|md| md.global.is_some());
    let replicas = mode
        .and_then(|md| md.replicated.as_ref())
        .and_then(|r| r.replicas)
        .unwrap_or(1)
        .max(0) as usize;
    // Newest task per slot/node.
    let mut by_key: BTreeMap<(i64, String), &m::Task> = BTreeMap::new();
    for t in tasks {
        let key = if global {
            (0, t.node_id.clone().unwrap_or_default())
        } else {
            (t.slot.unwrap_or(0), String::new())
        };
        if !global && (key.0 < 1 || key.0 as usize > replicas) {
            continue;
        }
        let newer = by_key.get(&key).is_none_or(|old| {
            t.created_at.as_deref().unwrap_or("") > old.created_at.as_deref().unwrap_or("")
        });
        if newer {
            by_key.insert(key, t);
        }
    }
    let wanted = if global { by_key.len() } else { replicas };
    let mut running = 0;
    let mut lines = Vec::new();
    if global {
        for ((_, node), t) in &by_key {
            let (state, err) = state_err(t);
            if state == "running" {
                running += 1;
            }
            lines.push(task_line(super::tasks::trunc_id(node), &state, &err));
        }
    } else {
        for slot in 1..=replicas {
            let id = format!("{slot}/{replicas}");
            match by_key.get(&(slot as i64, String::new())) {
                Some(t) => {
                    let (state, err) = state_err(t);
                    if state == "running" {
                        running += 1;
                    }
                    lines.push(task_line(&id, &state, &err));
                }
                None => lines.push(task_line(&id, "new", "")),
            }
        }
    }
    Snapshot {
        lines,
        running,
        wanted,
    }
}

fn state_err(t: &m::Task) -> (String, String) {
    let st = t.status.clone().unwrap_or_default();
    (
        st.state.map(|s| s.to_string()).unwrap_or_default(),
        st.err.unwrap_or_default(),
    )
}

/// Polls until the service's tasks are all running and stay so for
/// `STABLE_FOR`, or fails once `MAX_FAILURES` tasks failed.
pub async fn wait(c: &mut Client, service_id: &str) -> Result<(), CliError> {
    let tty = std::io::stdout().is_terminal();
    let filters = serde_json::json!({
        "service": {service_id: true},
        "_up-to-date": {"true": true},
        "desired-state": {"running": true},
    });
    let tasks_path = format!("/tasks?filters={}", encode_query(&filters.to_string()));
    let svc_path = format!("/services/{}", encode_segment(service_id));
    let mut drawn = 0usize;
    let mut last: Vec<String> = Vec::new();
    let mut failed: HashSet<String> = HashSet::new();
    let mut last_err = String::new();
    let mut converged_since: Option<Instant> = None;
    let mut rollback_said = false;
    loop {
        let service: m::Service = c.get(&svc_path).await?;
        let mode = service.spec.as_ref().and_then(|s| s.mode.clone());
        if mode.is_some_and(|md| md.replicated_job.is_some() || md.global_job.is_some()) {
            return wait_job(c, service_id, tty).await;
        }
        let tasks: Vec<m::Task> = c.get(&tasks_path).await?;
        // A rolling update is done when the agent says so (after its
        // monitor period); a paused one ends the wait with an error, and
        // a rollback is followed to its end, as docker does.
        use m::ServiceUpdateStatusStateEnum as U;
        let update = service.update_status.clone().unwrap_or_default();
        let message = update.message.clone().unwrap_or_default();
        match update.state {
            Some(U::PAUSED) => {
                return Err(CliError::Client(format!(
                    "service update paused: {message}"
                )))
            }
            Some(U::ROLLBACK_PAUSED) => {
                return Err(CliError::Client(format!(
                    "service rollback paused: {message}"
                )))
            }
            Some(U::ROLLBACK_STARTED) if !rollback_said => {
                rollback_said = true;
                // The drawing so far stays above the line.
                drawn = 0;
                println!("rollback: {message}");
                last.clear();
            }
            _ => {}
        }
        let settling = matches!(update.state, Some(U::UPDATING | U::ROLLBACK_STARTED));
        for t in &tasks {
            let (state, err) = state_err(t);
            if state == "failed" || state == "rejected" {
                if let Some(id) = &t.id {
                    failed.insert(id.clone());
                }
                if !err.is_empty() {
                    last_err = err;
                }
            }
        }
        let snap = snapshot(&service, &tasks);
        let mut lines = vec![format!(
            "overall progress: {} out of {} tasks ",
            snap.running, snap.wanted
        )];
        lines.extend(snap.lines.iter().cloned());
        let done = snap.wanted > 0 && snap.running == snap.wanted && !settling;
        converged_since = match (done, converged_since) {
            (true, None) => Some(Instant::now()),
            (true, s) => s,
            (false, _) => None,
        };
        let stable = converged_since.is_some_and(|s| s.elapsed() >= STABLE_FOR);
        if stable {
            lines.push("verify: Service converged ".into());
        } else if settling && snap.wanted > 0 && snap.running == snap.wanted {
            let spec = service.spec.clone().unwrap_or_default();
            let monitor = if update.state == Some(U::ROLLBACK_STARTED) {
                spec.rollback_config.and_then(|r| r.monitor)
            } else {
                spec.update_config.and_then(|u| u.monitor)
            }
            .filter(|m| *m > 0)
            .unwrap_or(5_000_000_000);
            lines.push(format!(
                "verify: Waiting {} seconds to verify that tasks are stable... ",
                (monitor as u64).div_ceil(1_000_000_000)
            ));
        } else if done {
            lines.push("verify: Waiting 1 seconds to verify that tasks are stable... ".into());
        }
        draw(tty, &mut drawn, &last, &lines);
        last = lines;
        if stable {
            return Ok(());
        }
        if failed.len() >= MAX_FAILURES {
            return Err(CliError::Client(format!(
                "service {service_id} did not converge: {} tasks failed, the last with: {}\nSee `apiary service ps {service_id} --no-trunc` for every task's error.",
                failed.len(),
                if last_err.is_empty() { "no error message" } else { &last_err }
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A job's progress, as docker shows it: completions out of the total,
/// the tasks running out of those wanted at once, then `job complete`.
async fn wait_job(c: &mut Client, service_id: &str, tty: bool) -> Result<(), CliError> {
    let filters = serde_json::json!({"id": {service_id: true}});
    let path = format!(
        "/services?status=true&filters={}",
        encode_query(&filters.to_string())
    );
    let tasks_filters = serde_json::json!({"service": {service_id: true}});
    let tasks_path = format!(
        "/tasks?filters={}",
        encode_query(&tasks_filters.to_string())
    );
    let (mut drawn, mut last) = (0usize, Vec::<String>::new());
    loop {
        let services: Vec<m::Service> = c.get(&path).await?;
        let Some(service) = services.into_iter().next() else {
            return Err(CliError::Client(format!(
                "service {service_id} was removed"
            )));
        };
        let iteration = service
            .job_status
            .as_ref()
            .and_then(|j| j.job_iteration.as_ref())
            .and_then(|v| v.index);
        let st = service.service_status.clone().unwrap_or_default();
        let (running, desired, completed) = (
            st.running_tasks.unwrap_or(0),
            st.desired_tasks.unwrap_or(0),
            st.completed_tasks.unwrap_or(0),
        );
        let total = match service
            .spec
            .as_ref()
            .and_then(|s| s.mode.as_ref())
            .and_then(|m| m.replicated_job.as_ref())
        {
            Some(j) => j.total_completions.unwrap_or(0).max(0) as u64,
            None => desired + completed,
        };
        let tasks: Vec<m::Task> = c.get(&tasks_path).await?;
        let failed = tasks
            .iter()
            .filter(|t| t.job_iteration.as_ref().and_then(|v| v.index) == iteration)
            .filter(|t| {
                matches!(
                    t.status.as_ref().and_then(|s| s.state),
                    Some(m::TaskState::FAILED | m::TaskState::REJECTED)
                )
            })
            .count();
        let mut lines = vec![
            format!("job progress: {completed} out of {total} complete "),
            format!("active tasks: {running} out of {desired} tasks "),
        ];
        let done = completed >= total && running == 0;
        if done {
            lines.push("job complete".into());
        }
        draw(tty, &mut drawn, &last, &lines);
        last = lines;
        if done {
            return Ok(());
        }
        if failed >= MAX_FAILURES {
            return Err(CliError::Client(format!(
                "job {service_id} did not complete: {failed} tasks failed\nSee `apiary service ps {service_id} --no-trunc` for every task's error."
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// On a TTY, moves up over the previous drawing and redraws it; otherwise
/// prints only lines that changed.
fn draw(tty: bool, drawn: &mut usize, last: &[String], lines: &[String]) {
    let mut s = String::new();
    if tty {
        if *drawn > 0 {
            s.push_str(&format!("\x1b[{}A", *drawn));
        }
        for l in lines {
            s.push_str("\x1b[2K");
            s.push_str(l);
            s.push('\n');
        }
        *drawn = lines.len();
    } else {
        for (i, l) in lines.iter().enumerate() {
            if last.get(i) != Some(l) {
                s.push_str(l);
                s.push('\n');
            }
        }
    }
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(s.as_bytes());
    let _ = stdout.flush();
}
