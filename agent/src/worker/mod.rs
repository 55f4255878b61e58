//! The worker: runs the tasks the managers assign to this node.
//!
//! One loop owns the map of task runners. It long-polls its assignments
//! (through the `Cluster` seam), starts a runner for each new task, tells
//! runners when a task's desired state rises, and removes containers of
//! tasks the cluster no longer has. Each runner drives one container through
//! prepare → start → wait with the `Executor` and reports every step; a
//! reporter task batches the reports back to the managers and keeps them
//! while no manager answers.
//!
//! Containers are not tied to the agent process: when the agent restarts it
//! finds its containers again by their task label and adopts them.
//!
//! Networking goes through the `Network` seam: a task is attached (its
//! namespace, address and /etc files) and its host-mode ports published
//! while its container is prepared, before it starts, and detached once the container has
//! ended — not when it is removed, which waits for the task's deletion:
//! a finished task must not keep its address or its host ports.

mod cleanup;
mod health;
pub mod spec;

pub use cleanup::clear;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::executor::{ContainerSpec, ContainerState, ContainerStatus, Executor};
use crate::network::view::TaskNetwork;
use crate::network::{Network, PortMapping};
use crate::rpc::Assignments;
use crate::store::{PublishedPort, Task, TaskId, TaskState, TaskStatus, TaskStatusUpdate};

/// How the worker talks to the managers.
pub trait Cluster: Send + Sync + 'static {
    /// Long poll: this node's assignments once they differ from `known`.
    /// `have`: the tasks held from earlier answers, by
    /// `Task::assignment_digest`; the answer sends the others and names
    /// the copies that no longer stand (`Assignments::dropped`).
    fn assignments(&self, known: u64, have: Vec<u64>)
        -> BoxFuture<'_, Result<Assignments, String>>;
    fn report(&self, updates: Vec<TaskStatusUpdate>) -> BoxFuture<'_, Result<(), String>>;
}

const RETRY: Duration = Duration::from_secs(1);
/// Failed assignment polls in a row after which the node considers itself
/// cut off from every manager and restarts its tasks itself.
const OFFLINE_AFTER: u32 = 3;

struct Runner {
    desired: watch::Sender<TaskState>,
    handle: JoinHandle<()>,
}

/// What a task runner works with.
#[derive(Clone)]
struct Host {
    ex: Arc<dyn Executor>,
    net: Arc<dyn Network>,
}

/// The node's tasks as the answers so far give them. An answer sends only
/// the tasks that changed since the copies held here and names the copies
/// that no longer stand (`Cluster::assignments`): with 100 tasks a node,
/// going over all of them on every answer was a fifth of a 1,000-node
/// simulated fleet's CPU.
#[derive(Default)]
struct Held {
    tasks: HashMap<TaskId, Task>,
    /// Each held copy's assignment digest, to its task.
    digests: HashMap<u64, TaskId>,
}

/// What one answer changed in [`Held`].
#[derive(Debug, PartialEq)]
struct Delta {
    /// New tasks and new copies of held ones: the tasks to act on.
    changed: Vec<TaskId>,
    /// Tasks no longer held: deleted, or gone to another node.
    gone: Vec<TaskId>,
}

impl Held {
    /// What to send as `have`.
    fn digests(&self) -> Vec<u64> {
        self.digests.keys().copied().collect()
    }

    /// Take in an answer to `have = self.digests()`. None when it does not
    /// fit the copies held (a dropped copy not held, or a second copy of a
    /// held task): the caller then asks for everything again.
    fn take(&mut self, a: &mut Assignments) -> Option<Delta> {
        let mut dropped = Vec::new();
        for d in std::mem::take(&mut a.dropped) {
            let id = self.digests.remove(&d)?;
            self.tasks.remove(&id);
            dropped.push(id);
        }
        let mut changed = Vec::with_capacity(a.tasks.len());
        for t in std::mem::take(&mut a.tasks) {
            if self.tasks.contains_key(&t.id) {
                return None;
            }
            self.digests.insert(t.assignment_digest(), t.id.clone());
            changed.push(t.id.clone());
            self.tasks.insert(t.id.clone(), t);
        }
        let gone = dropped
            .into_iter()
            .filter(|id| !self.tasks.contains_key(id))
            .collect();
        Some(Delta { changed, gone })
    }
}

pub async fn run(
    cluster: Arc<dyn Cluster>,
    executor: Arc<dyn Executor>,
    network: Arc<dyn Network>,
    stop: CancellationToken,
) {
    let host = Host {
        ex: executor.clone(),
        net: network,
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let reporter = tokio::spawn(report_loop(cluster.clone(), rx, stop.clone()));
    // Containers from before a restart, by task ID.
    let listing = executor.list().await;
    // Without the list, every network would look orphaned: no sweep then.
    let listed = listing.is_ok();
    let mut adoptable: HashMap<String, ContainerState> = match listing {
        Ok(list) => list
            .into_iter()
            .filter_map(|c| {
                let id = c.labels.get(spec::LABEL_TASK)?.clone();
                Some((id, c))
            })
            .collect(),
        Err(e) => {
            warn!("cannot list this node's containers: {e}");
            HashMap::new()
        }
    };
    if !adoptable.is_empty() {
        info!(
            containers = adoptable.len(),
            "found containers from before the restart"
        );
    }
    if listed {
        cleanup::sweep(&host, &adoptable).await;
    }
    let mut runners: HashMap<TaskId, Runner> = HashMap::new();
    // Containers of finished tasks: kept (with their logs, for `service
    // logs`) until the cluster deletes the task, like Docker's.
    let mut finished: HashSet<TaskId> = HashSet::new();
    let mut known = 0u64;
    // The node's tasks as the answers so far give them: the next answer
    // sends only what changed.
    let mut held = Held::default();
    // Runners whose task's end the cluster has recorded: once a runner
    // has ended too (at once, or on a later answer: it may still be
    // detaching the network), its container waits in `finished` for the
    // task's deletion.
    let mut ending: HashSet<TaskId> = HashSet::new();
    // Set while no manager answers: runners then apply the restart policy
    // themselves (Swarm's workers leave a failed task dead until a
    // manager returns).
    let offline = Arc::new(AtomicBool::new(false));
    let mut failures = 0u32;
    // The network views last programmed; None: not yet by this process,
    // so the first answer also clears what an earlier one left.
    let mut programmed: Option<Vec<crate::network::view::NetworkView>> = None;
    loop {
        // Asked with nothing held, the answer is the node's whole set.
        let whole = held.tasks.is_empty();
        let a = tokio::select! {
            _ = stop.cancelled() => break,
            a = cluster.assignments(known, held.digests()) => a,
        };
        let mut a = match a {
            Ok(a) => a,
            Err(e) => {
                debug!("no assignments: {e}");
                failures += 1;
                if failures == OFFLINE_AFTER {
                    warn!("no manager answers: this node restarts its own tasks until one does");
                    offline.store(true, Ordering::Relaxed);
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(RETRY) => {}
                }
                continue;
            }
        };
        let Some(delta) = held.take(&mut a) else {
            // Cannot happen with an answer to our own `have`; ask for all.
            warn!("assignments do not match the tasks this node holds: asking for all of them");
            known = 0;
            held = Held::default();
            continue;
        };
        known = a.fingerprint;
        // The overlays before the tasks that join them.
        if programmed.as_ref() != Some(&a.networks) {
            match host.net.program(a.networks.clone(), a.data_path_port).await {
                Ok(()) => programmed = Some(a.networks.clone()),
                Err(e) => warn!("{e}"),
            }
        }
        if failures >= OFFLINE_AFTER {
            info!("a manager answers again");
        }
        failures = 0;
        offline.store(false, Ordering::Relaxed);
        for t in delta.changed.iter().filter_map(|id| held.tasks.get(id)) {
            if let Some(r) = runners.get(&t.id) {
                r.desired.send_if_modified(|d| {
                    let rise = t.desired_state > *d;
                    if rise {
                        *d = t.desired_state;
                    }
                    rise
                });
                if t.status.state.is_terminal() {
                    ending.insert(t.id.clone());
                }
                continue;
            }
            let adopted = adoptable.remove(&t.id.0).map(|c| c.status);
            let wanted = t.desired_state <= TaskState::Running;
            let unfinished = !t.status.state.is_terminal();
            if !unfinished {
                if adopted.is_some() {
                    finished.insert(t.id.clone());
                }
                continue;
            }
            if !wanted && adopted.is_none() && t.status.state < TaskState::Starting {
                // Stopped before it ever started here.
                let _ = tx.send(update(
                    &t.id,
                    TaskState::Shutdown,
                    "shutdown before start",
                    None,
                ));
                continue;
            }
            let spec = spec::container_spec(t, &a).and_then(|s| {
                Ok((
                    s,
                    spec::host_ports(t)?,
                    spec::task_networks(t, &a.networks)?,
                ))
            });
            let (dtx, drx) = watch::channel(t.desired_state);
            let handle = tokio::spawn(run_task(
                host.clone(),
                t.id.clone(),
                spec,
                adopted,
                drx,
                tx.clone(),
                Autonomy {
                    offline: offline.clone(),
                    policy: t.restart_policy(),
                },
            ));
            runners.insert(
                t.id.clone(),
                Runner {
                    desired: dtx,
                    handle,
                },
            );
        }
        // Tasks the cluster deleted (or moved away): stop and remove. A
        // whole answer is checked against every runner and kept container.
        let gone: Vec<TaskId> = if whole {
            runners
                .keys()
                .chain(finished.iter())
                .filter(|id| !held.tasks.contains_key(*id))
                .cloned()
                .collect()
        } else {
            delta.gone
        };
        for id in gone {
            if let Some(r) = runners.remove(&id) {
                r.desired.send_replace(TaskState::Remove);
                let h = host.clone();
                tokio::spawn(async move {
                    let _ = r.handle.await;
                    remove_quietly(&h, &id.0).await;
                });
            } else if finished.remove(&id) {
                let h = host.clone();
                tokio::spawn(async move { remove_quietly(&h, &id.0).await });
            }
        }
        ending.retain(|id| match runners.get(id) {
            Some(r) if r.handle.is_finished() => {
                runners.remove(id);
                finished.insert(id.clone());
                false
            }
            Some(_) => true,
            None => false,
        });
        // Containers of tasks the cluster does not know at all.
        for (id, _) in adoptable.drain() {
            info!(task.id = %id, "removing a container of a task the swarm no longer has");
            let h = host.clone();
            tokio::spawn(async move { remove_quietly(&h, &id).await });
        }
    }
    // Leave the containers running: a restarted agent adopts them.
    for (_, r) in runners {
        r.handle.abort();
    }
    reporter.abort();
}

fn update(id: &TaskId, state: TaskState, message: &str, err: Option<String>) -> TaskStatusUpdate {
    let mut status = TaskStatus::new(state, message, &crate::util::now_rfc3339());
    status.err = err;
    TaskStatusUpdate {
        id: id.clone(),
        status,
    }
}

async fn remove_quietly(h: &Host, id: &str) {
    let _ = h.ex.stop(id, None, Duration::from_secs(10)).await;
    if let Err(e) = h.ex.remove(id).await {
        warn!(task.id = %id, "could not remove the container: {e}");
    }
    detach_quietly(h, id).await;
}

/// Release the task's network once its container has ended.
async fn detach_quietly(h: &Host, id: &str) {
    if let Err(e) = h.net.detach(id).await {
        warn!(task.id = %id, "could not release the task's network: {e}");
    }
}

fn published(ports: &[PortMapping]) -> Vec<PublishedPort> {
    ports
        .iter()
        .map(|p| PublishedPort {
            protocol: p.protocol.as_str().to_string(),
            target: p.target,
            published: p.published,
        })
        .collect()
}

type Reports = mpsc::UnboundedSender<TaskStatusUpdate>;

/// What a runner needs to restart its task by itself while the node is cut
/// off. The restart is the same task (same ID and container name), so when a
/// manager returns there is nothing to reconcile and nothing duplicated.
struct Autonomy {
    offline: Arc<AtomicBool>,
    policy: crate::store::RestartPolicy,
}

impl Autonomy {
    fn restarts(&self, code: i64, done: u64) -> bool {
        let state = if code == 0 {
            TaskState::Complete
        } else {
            TaskState::Failed
        };
        self.offline.load(Ordering::Relaxed)
            && self.policy.wants_restart(state, Some(code))
            && (self.policy.max_attempts == 0 || done < self.policy.max_attempts)
    }
}

/// Drive one task's container to its end, reporting each step.
async fn run_task(
    h: Host,
    id: TaskId,
    spec: Result<(ContainerSpec, Vec<PortMapping>, Vec<TaskNetwork>), String>,
    adopted: Option<ContainerStatus>,
    mut desired: watch::Receiver<TaskState>,
    reports: Reports,
    autonomy: Autonomy,
) {
    let mut restarts = 0u64;
    let ex = &h.ex;
    let send = |state: TaskState, message: &str, err: Option<String>| {
        let _ = reports.send(update(&id, state, message, err));
    };
    let (spec, ports, nets) = match spec {
        Ok(s) => s,
        Err(e) => {
            send(TaskState::Rejected, "rejected", Some(e));
            return;
        }
    };
    let grace = spec.stop_grace.unwrap_or(Duration::from_secs(10));
    let stop_signal = spec.stop_signal.clone();
    let running = |pid: u32, ports: &[PortMapping]| {
        let mut u = update(&id, TaskState::Running, "started", None);
        u.status.pid = Some(i64::from(pid));
        u.status.container_id = Some(id.0.clone());
        u.status.ports = published(ports);
        let _ = reports.send(u);
    };
    let (pid, ports, mut announced) = match adopted {
        Some(ContainerStatus::Running { pid }) => {
            debug!(task.id = %id, "adopted a running container");
            // Its overlays' names and VIPs are served by this process:
            // attach again (idempotent) to take them up.
            if !nets.is_empty() {
                if let Err(e) = h.net.attach(&id.0, &spec::hostname(&spec), &nets).await {
                    warn!(task.id = %id, "re-joining the overlay networks of an adopted task: {e}");
                }
            }
            // Its rules normally survived the restart; publishing again is
            // idempotent and repairs them if not.
            let ports = match h.net.publish(&id.0, &ports).await {
                Ok(p) => p,
                Err(e) => {
                    warn!(task.id = %id, "re-publishing the ports of an adopted task: {e}");
                    Vec::new()
                }
            };
            // It was running before: it stays so unless its health check
            // (watched again below) fails.
            running(pid, &ports);
            (pid, ports, true)
        }
        Some(ContainerStatus::Exited { code }) => {
            finish(&id, code, &reports).await;
            detach_quietly(&h, &id.0).await;
            return;
        }
        Some(ContainerStatus::Created) | None => {
            debug!(task.id = %id, "preparing");
            send(TaskState::Preparing, "preparing", None);
            // Ports are published before the task starts: a port in use
            // is the task's error before it runs.
            let ports = match prepare_networked(&h, &id, &spec, &ports, &nets).await {
                Ok(p) => {
                    debug!(task.id = %id, "network attached and container prepared");
                    p
                }
                Err(e) => {
                    send(TaskState::Rejected, "rejected", Some(e));
                    let _ = ex.remove(&id.0).await;
                    detach_quietly(&h, &id.0).await;
                    return;
                }
            };
            if *desired.borrow() > TaskState::Running {
                let _ = ex.remove(&id.0).await;
                detach_quietly(&h, &id.0).await;
                send(TaskState::Shutdown, "shutdown", None);
                return;
            }
            send(TaskState::Starting, "starting", None);
            match ex.start(&id.0).await {
                Ok(pid) => {
                    debug!(task.id = %id, pid, "container started");
                    (pid, ports, false)
                }
                Err(e) => {
                    send(TaskState::Failed, "starting", Some(e.to_string()));
                    let _ = ex.remove(&id.0).await;
                    detach_quietly(&h, &id.0).await;
                    return;
                }
            }
        }
    };
    // A container with a health check stays `starting` until it is
    // healthy (what rolling updates wait for) and fails when unhealthy.
    let probe = ex.probe(&id.0).await.unwrap_or_else(|e| {
        warn!(task.id = %id, "reading the container's health check: {e}");
        None
    });
    let (_watcher, mut health) = match probe {
        Some(p) => {
            let (w, rx) = health::spawn(ex.clone(), &id.0, p);
            (Some(w), Some(rx))
        }
        None => (None, None),
    };
    if health.is_none() && !announced {
        running(pid, &ports);
        announced = true;
    }
    loop {
        if *desired.borrow_and_update() > TaskState::Running {
            if let Err(e) = ex.stop(&id.0, stop_signal.as_deref(), grace).await {
                warn!(task.id = %id, "stopping the container failed: {e}");
            }
            let code = ex.wait(&id.0).await.map(|e| e.code).ok();
            detach_quietly(&h, &id.0).await;
            let mut u = update(&id, TaskState::Shutdown, "shutdown", None);
            u.status.exit_code = code;
            u.status.container_id = Some(id.0.clone());
            let _ = reports.send(u);
            return;
        }
        tokio::select! {
            exit = ex.wait(&id.0) => {
                match exit {
                    Ok(e) if autonomy.restarts(e.code, restarts) => {
                        restarts += 1;
                        info!(task.id = %id, code = e.code, "no manager reachable: restarting the task here");
                        tokio::time::sleep(autonomy.policy.delay).await;
                        // The same attachment (attach is idempotent) and
                        // the same container name: the task, not a copy.
                        let restarted: Result<u32, String> = async {
                            let attached = h
                                .net
                                .attach(&id.0, &spec::hostname(&spec), &nets)
                                .await
                                .map_err(|e| e.to_string())?;
                            let again = spec::with_attachment(spec.clone(), &attached);
                            ex.remove(&id.0).await.map_err(|e| e.to_string())?;
                            ex.prepare(&again).await.map_err(|e| e.to_string())?;
                            ex.start(&id.0).await.map_err(|e| e.to_string())
                        }
                        .await;
                        match restarted {
                            Ok(pid) => {
                                let mut u = update(
                                    &id,
                                    TaskState::Running,
                                    "restarted by its node while no manager was reachable",
                                    None,
                                );
                                u.status.pid = Some(i64::from(pid));
                                u.status.container_id = Some(id.0.clone());
                                let _ = reports.send(u);
                                continue;
                            }
                            Err(err) => {
                                send(TaskState::Failed, "failed", Some(format!("restart without a manager failed: {err}")));
                            }
                        }
                    }
                    Ok(e) => finish(&id, e.code, &reports).await,
                    Err(e) => {
                        send(TaskState::Failed, "failed", Some(format!("lost the container: {e}")));
                        let _ = ex.remove(&id.0).await;
                    }
                }
                detach_quietly(&h, &id.0).await;
                return;
            }
            change = async { health.as_mut()?.recv().await }, if health.is_some() => match change {
                Some(health::Health::Healthy) => {
                    if !announced {
                        running(pid, &ports);
                        announced = true;
                    }
                }
                Some(health::Health::Unhealthy) => {
                    info!(task.id = %id, "the container is unhealthy: stopping it");
                    if let Err(e) = ex.stop(&id.0, stop_signal.as_deref(), grace).await {
                        warn!(task.id = %id, "stopping the unhealthy container failed: {e}");
                    }
                    let code = ex.wait(&id.0).await.map(|e| e.code).ok();
                    detach_quietly(&h, &id.0).await;
                    // Swarm's words for it (swarmkit's container adapter).
                    let mut u = update(
                        &id,
                        TaskState::Failed,
                        "failed",
                        Some("dockerexec: unhealthy container".into()),
                    );
                    u.status.exit_code = code;
                    u.status.container_id = Some(id.0.clone());
                    let _ = reports.send(u);
                    return;
                }
                None => health = None,
            },
            r = desired.changed() => {
                if r.is_err() {
                    // The worker is stopping: leave the container running.
                    return;
                }
            }
        }
    }
}

/// Attach and publish the task's network while its container is prepared;
/// returns the published ports. The container's spec only names the
/// namespace and the /etc files (`Network::planned`), which runc needs when
/// the task is created, in `start`. A network error ends the wait at once:
/// a port in use must not wait for an image pull (the unfinished prepare is
/// dropped; the caller removes whatever it made, its lease expires).
async fn prepare_networked(
    h: &Host,
    id: &TaskId,
    spec: &ContainerSpec,
    ports: &[PortMapping],
    nets: &[TaskNetwork],
) -> Result<Vec<PortMapping>, String> {
    let planned = spec::with_attachment(spec.clone(), &h.net.planned(&id.0));
    let network = async {
        let attached = h.net.attach(&id.0, &spec::hostname(spec), nets).await?;
        let ports = h.net.publish(&id.0, ports).await?;
        Ok::<_, crate::network::NetError>((attached, ports))
    };
    tokio::pin!(network);
    let prepare = h.ex.prepare(&planned);
    tokio::pin!(prepare);
    let mut prepared = None;
    let (attached, ports) = loop {
        tokio::select! {
            n = &mut network => break n.map_err(|e| e.to_string())?,
            p = &mut prepare, if prepared.is_none() => prepared = Some(p),
        }
    };
    match prepared {
        Some(p) => p,
        None => prepare.await,
    }
    .map_err(|e| e.to_string())?;
    let spec = spec::with_attachment(spec.clone(), &attached);
    if spec != planned {
        // Not expected: the network gave other paths than it planned. Make
        // the container from what it gave (prepare keeps an existing one:
        // it must go first).
        warn!(task.id = %id, "the task's network differs from its plan: creating its container again");
        h.ex.remove(&id.0).await.map_err(|e| e.to_string())?;
        h.ex.prepare(&spec).await.map_err(|e| e.to_string())?;
    }
    Ok(ports)
}

async fn finish(id: &TaskId, code: i64, reports: &Reports) {
    let mut u = if code == 0 {
        update(id, TaskState::Complete, "finished", None)
    } else {
        update(
            id,
            TaskState::Failed,
            "failed",
            Some(format!("task: non-zero exit ({code})")),
        )
    };
    u.status.exit_code = Some(code);
    u.status.container_id = Some(id.0.clone());
    let _ = reports.send(u);
}

/// Batch reports; keep them (latest per task) while no manager answers.
async fn report_loop(
    cluster: Arc<dyn Cluster>,
    mut rx: mpsc::UnboundedReceiver<TaskStatusUpdate>,
    stop: CancellationToken,
) {
    let mut pending: Vec<TaskStatusUpdate> = Vec::new();
    loop {
        if pending.is_empty() {
            tokio::select! {
                _ = stop.cancelled() => return,
                u = rx.recv() => match u { Some(u) => pending.push(u), None => return },
            }
        }
        // Send at once: what queues while this report is being written
        // goes out together in the next one (as the leader batches raft
        // writes), so a burst still becomes few writes without a fixed
        // delay on every task start.
        tokio::task::yield_now().await;
        while let Ok(u) = rx.try_recv() {
            pending.push(u);
        }
        // Only each task's latest report matters (reports arrive in the
        // order they happened; a task restarted by its node while cut off
        // goes Failed → Running, and Running is the truth).
        let mut latest: HashMap<TaskId, TaskStatusUpdate> = HashMap::new();
        for u in pending.drain(..) {
            latest.insert(u.id.clone(), u);
        }
        let batch: Vec<TaskStatusUpdate> = latest.into_values().collect();
        if let Err(e) = cluster.report(batch.clone()).await {
            debug!("could not report task states, will retry: {e}");
            pending = batch;
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(RETRY) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests;
