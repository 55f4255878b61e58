//! Task logs: the node that runs a task serves its log file (`serve`); a
//! manager answering `service logs` asks each task's node in turn and, when
//! following, polls them for new lines (`stream`).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::control::{ControlResult, LogLine, LogsOptions, LogsTarget, TaskView};
use crate::executor::logs as logfile;
use crate::manager::Manager;
use crate::rpc::{self, LogsReply, LogsRequest, Reply, Request};

use super::{services, Running};

/// How often a follower asks the task's node for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(500);
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Answer a manager's request for a task's lines from our log file.
pub(super) fn serve(running: &Running, req: &LogsRequest) -> Reply {
    let Some(path) = running.executor.log_path(&req.task.0) else {
        return Reply::Logs(LogsReply {
            gone: true,
            ..Default::default()
        });
    };
    match read_from(&path, req.offset, req.tail, req.since.as_deref()) {
        Ok((lines, next_offset)) => Reply::Logs(LogsReply {
            lines: lines
                .into_iter()
                .map(|l| (l.timestamp, l.stream, l.line))
                .collect(),
            next_offset,
            gone: false,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Reply::Logs(LogsReply {
            gone: true,
            ..Default::default()
        }),
        Err(e) => Reply::Error(rpc::RpcError::Other(format!(
            "cannot read the logs of task {}: {e}",
            req.task
        ))),
    }
}

/// Lines of the target's tasks, from their nodes, into a channel.
pub(super) fn stream(
    running: Arc<Running>,
    m: Arc<Manager>,
    target: LogsTarget,
    opts: LogsOptions,
) -> ControlResult<mpsc::Receiver<LogLine>> {
    // Resolve now so that an unknown service is an error, not an empty stream.
    let initial = tasks_of(&m, &target)?;
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        let mut started: HashSet<String> = HashSet::new();
        let mut fetchers = tokio::task::JoinSet::new();
        let mut tasks = initial;
        loop {
            for t in tasks {
                if started.insert(t.task.id.0.clone()) {
                    fetchers.spawn(fetch(
                        running.clone(),
                        m.clone(),
                        t,
                        opts.clone(),
                        tx.clone(),
                    ));
                }
            }
            if !opts.follow {
                break;
            }
            // Following a service: new tasks (scale up, restarts) join in.
            tokio::select! {
                _ = tx.closed() => break,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            tasks = match tasks_of(&m, &target) {
                Ok(t) => t,
                Err(_) => break,
            };
        }
        while fetchers.join_next().await.is_some() {}
    });
    Ok(rx)
}

fn tasks_of(m: &Manager, target: &LogsTarget) -> ControlResult<Vec<TaskView>> {
    let state = m.state.read();
    match target {
        LogsTarget::Service(key) => {
            let s = services::resolve_service(&state, key)?;
            let mut tasks: Vec<TaskView> = state
                .tasks_of_service(&s.id)
                .map(|t| services::task_view(&state, t))
                .collect();
            tasks.sort_by(|a, b| a.task.created_at.cmp(&b.task.created_at));
            Ok(tasks)
        }
        LogsTarget::Task(key) => {
            let t = services::resolve_task(&state, key)?;
            Ok(vec![services::task_view(&state, t)])
        }
    }
}

async fn fetch(
    running: Arc<Running>,
    m: Arc<Manager>,
    task: TaskView,
    opts: LogsOptions,
    tx: mpsc::Sender<LogLine>,
) {
    let Some(node_id) = task.task.node_id.clone() else {
        return;
    };
    let mut offset = 0u64;
    let mut first = true;
    loop {
        let addr = {
            let state = m.state.read();
            state.nodes.get(&node_id).and_then(|n| {
                format!("{}:{}", n.status.addr, n.status.port)
                    .parse::<SocketAddr>()
                    .ok()
            })
        };
        let Some(addr) = addr else { return };
        let req = Request::TaskLogs(LogsRequest {
            task: task.task.id.clone(),
            offset,
            tail: if first { opts.tail } else { None },
            since: opts.since.clone(),
        });
        let reply = if node_id.0 == running.file().node_id.0 {
            Ok(serve(
                &running,
                match &req {
                    Request::TaskLogs(r) => r,
                    _ => return,
                },
            ))
        } else {
            running
                .transport
                .call(addr, &node_id.0, rpc::encode(&req), CALL_TIMEOUT)
                .await
                .map_err(|e| e.to_string())
                .and_then(|b| rpc::decode::<Reply>(&b))
        };
        first = false;
        match reply {
            Ok(Reply::Logs(r)) => {
                for (timestamp, stream, line) in r.lines {
                    let wanted = (stream == 1 && opts.stdout) || (stream == 2 && opts.stderr);
                    if !wanted {
                        continue;
                    }
                    let l = LogLine {
                        task: task.clone(),
                        node_id: node_id.0.clone(),
                        timestamp,
                        stream,
                        line,
                    };
                    if tx.send(l).await.is_err() {
                        return;
                    }
                }
                offset = r.next_offset;
                if r.gone {
                    return;
                }
            }
            Ok(Reply::Error(e)) => {
                tracing::debug!(task.id = %task.task.id, "logs: {e}");
                if !opts.follow {
                    return;
                }
            }
            Ok(_) | Err(_) => {
                if !opts.follow {
                    return;
                }
            }
        }
        if !opts.follow {
            return;
        }
        tokio::select! {
            _ = tx.closed() => return,
            _ = tokio::time::sleep(FOLLOW_POLL) => {}
        }
    }
}

/// One line of a task's log file.
struct FileLine {
    timestamp: String,
    stream: u8,
    line: String,
}

/// Lines of the log file after byte `offset` (the last `tail` of them, and
/// none before `since`), and the offset to continue from. A file shorter
/// than `offset` was rotated: read it from the start. Lines that do not
/// decode (a torn last write) are skipped, not fatal.
fn read_from(
    path: &std::path::Path,
    offset: u64,
    tail: Option<usize>,
    since: Option<&str>,
) -> std::io::Result<(Vec<FileLine>, u64)> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let start = if offset > len { 0 } else { offset };
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    // Only whole lines: a line being written is read next time.
    let complete = buf.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
    let since = since.and_then(|s| {
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
    });
    let mut lines = Vec::new();
    for raw in buf[..complete].split(|b| *b == b'\n') {
        if raw.is_empty() {
            continue;
        }
        // The log driver's own format (`executor::logs`).
        let Some(l) = logfile::LogLine::decode(raw) else {
            continue;
        };
        if since.is_some_and(|since| l.time < since) {
            continue;
        }
        lines.push(FileLine {
            timestamp: l
                .time
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            stream: match l.stream {
                logfile::Stream::Stdout => 1,
                logfile::Stream::Stderr => 2,
            },
            line: l.line + "\n",
        });
    }
    if let Some(n) = tail {
        let skip = lines.len().saturating_sub(n);
        lines.drain(..skip);
    }
    Ok((lines, start + complete as u64))
}
