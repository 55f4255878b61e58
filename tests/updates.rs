//! Rolling updates on real agents and containers: the chapter's update
//! walk-through (parallelism 2, a delay) with the docker CLI, rollback by
//! hand and automatic, a paused update and its resumption, start-first
//! with one replica, and the apiary CLI's progress view; health checks
//! gating a task's start, replacing an unhealthy one and failing an update.
//!
//! Two images stand for the chapter's `tu-demo:v1` and `:v2`: busybox with
//! a different `/version` file in each, loaded on every node.

mod harness;

use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::containerd::Daemon;
use harness::{running_on, Agent, Cluster};

/// `(image, current state)` of the tasks that should run.
fn tasks(m: &Agent, service: &str) -> Vec<(String, String)> {
    let out = m.docker(&[
        "service",
        "ps",
        service,
        "--filter",
        "desired-state=running",
        "--format",
        "{{.Image}}|{{.CurrentState}}",
    ]);
    out.stdout
        .lines()
        .filter_map(|l| l.split_once('|'))
        .map(|(i, s)| (i.to_string(), s.to_string()))
        .collect()
}

fn running(m: &Agent, service: &str, image: Option<&str>) -> usize {
    tasks(m, service)
        .iter()
        .filter(|(i, s)| s.starts_with("Running") && image.is_none_or(|want| i == want))
        .count()
}

fn inspect(m: &Agent, service: &str, template: &str) -> String {
    m.docker(&["service", "inspect", "--format", template, service])
        .stdout
        .trim()
        .to_string()
}

fn update_state(m: &Agent, service: &str) -> String {
    inspect(
        m,
        service,
        "{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}",
    )
}

/// Polls until the service's update reaches `state`, recording the fewest
/// tasks seen running on the way. Panics with the tasks and logs if it
/// never gets there.
fn watch_until(c: &Cluster, service: &str, state: &str) -> usize {
    let m = &c.managers[0];
    let mut fewest = usize::MAX;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        fewest = fewest.min(running(m, service, None));
        if update_state(m, service) == state {
            return fewest;
        }
        if Instant::now() > deadline {
            panic!(
                "{service}'s update never reached {state} (at {:?}):\n{}\n{}",
                update_state(m, service),
                m.docker(&["service", "ps", "--no-trunc", service]).stdout,
                c.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn rolling_updates_and_rollbacks_on_real_containers() {
    let daemon = Arc::new(Daemon::start());
    let c = Cluster::new("upd")
        .managers(1)
        .workers(2)
        .containerd(daemon.clone())
        .start();
    let m = &c.managers[0];
    for v in ["v1", "v2"] {
        let tar = c.root.path().join(format!("demo-{v}.tar"));
        harness::image::busybox_oci_tar_with(
            &tar,
            &format!("demo:{v}"),
            &[("version", v.as_bytes())],
        );
        for a in c.all() {
            a.apiary(&["image", "load", "-i", tar.to_str().expect("utf-8 path")])
                .ok();
        }
    }

    // The chapter: 4 replicas of v1, then v2 two at a time with a delay.
    m.docker(&[
        "service",
        "create",
        "--name",
        "uber-svc",
        "--replicas",
        "4",
        "--no-resolve-image",
        "-d",
        "demo:v1",
        "sleep",
        "3600",
    ])
    .ok();
    running_on(&c, m, "uber-svc", 4);
    assert_eq!(update_state(m, "uber-svc"), "", "no update yet");
    m.docker(&[
        "service",
        "update",
        "--image",
        "demo:v2",
        "--update-parallelism",
        "2",
        "--update-delay",
        "3s",
        "--no-resolve-image",
        "-d",
        "uber-svc",
    ])
    .ok();
    assert_eq!(update_state(m, "uber-svc"), "updating");
    let fewest = watch_until(&c, "uber-svc", "completed");
    assert!(
        fewest >= 2,
        "never fewer than replicas - parallelism running: {fewest}"
    );
    assert_eq!(running(m, "uber-svc", Some("demo:v2")), 4);
    // The delay: the second pair was made at least 3 s after the first.
    let created: Vec<String> = m
        .docker(&[
            "service",
            "ps",
            "-q",
            "--filter",
            "desired-state=running",
            "uber-svc",
        ])
        .ok()
        .lines()
        .map(|id| {
            m.docker(&[
                "inspect",
                "--type",
                "task",
                "--format",
                "{{.CreatedAt.UnixNano}}",
                id,
            ])
            .stdout
            .trim()
            .to_string()
        })
        .collect();
    let mut at: Vec<i128> = created.iter().filter_map(|s| s.parse().ok()).collect();
    assert_eq!(at.len(), 4, "{created:?}");
    at.sort();
    assert!(
        at[2] - at[1] >= 3_000_000_000,
        "the second batch waited out the delay: {created:?}"
    );
    let pretty = m
        .docker(&["service", "inspect", "--pretty", "uber-svc"])
        .ok()
        .to_string();
    assert!(pretty.contains("UpdateStatus:"), "{pretty}");
    assert!(pretty.contains("update completed"), "{pretty}");
    assert!(
        pretty.contains("Parallelism:   2") || pretty.contains("Parallelism:\t2"),
        "{pretty}"
    );

    // Rollback by hand: back to v1, with the rollback config (defaults).
    m.docker(&["service", "rollback", "-d", "uber-svc"]).ok();
    assert_eq!(
        inspect(m, "uber-svc", "{{.UpdateStatus.Message}}"),
        "manually requested rollback"
    );
    let fewest = watch_until(&c, "uber-svc", "rollback_completed");
    assert!(
        fewest >= 3,
        "the rollback config's parallelism is 1: {fewest}"
    );
    assert_eq!(running(m, "uber-svc", Some("demo:v1")), 4);
    assert_eq!(
        inspect(m, "uber-svc", "{{.Spec.TaskTemplate.ContainerSpec.Image}}"),
        "demo:v1"
    );

    // An image that cannot be had, failure action rollback: the update
    // undoes itself and says why; the slots it never reached keep their
    // tasks.
    let before: Vec<String> = m
        .docker(&[
            "service",
            "ps",
            "-q",
            "--filter",
            "desired-state=running",
            "uber-svc",
        ])
        .ok()
        .lines()
        .map(String::from)
        .collect();
    m.docker(&[
        "service",
        "update",
        "--image",
        "127.0.0.1:1/missing:1",
        "--update-parallelism",
        "1",
        "--update-failure-action",
        "rollback",
        "--no-resolve-image",
        "-d",
        "uber-svc",
    ])
    .ok();
    let fewest = watch_until(&c, "uber-svc", "rollback_started");
    let message = inspect(m, "uber-svc", "{{.UpdateStatus.Message}}");
    assert!(
        message.starts_with("update rolled back due to failure or early termination of task "),
        "{message}"
    );
    let fewest = fewest.min(watch_until(&c, "uber-svc", "rollback_completed"));
    assert!(fewest >= 3, "one slot at a time: {fewest}");
    assert_eq!(running(m, "uber-svc", Some("demo:v1")), 4);
    let after: Vec<String> = m
        .docker(&[
            "service",
            "ps",
            "-q",
            "--filter",
            "desired-state=running",
            "uber-svc",
        ])
        .ok()
        .lines()
        .map(String::from)
        .collect();
    let kept = after.iter().filter(|id| before.contains(id)).count();
    assert_eq!(
        kept, 3,
        "only the slot the update reached was replaced: {before:?} {after:?}"
    );

    // Failure action pause (the default): one slot tried, then it stops
    // and says why; the apiary CLI's wait ends with that message.
    let out = m.apiary(&[
        "service",
        "update",
        "--image",
        "127.0.0.1:1/missing:2",
        "uber-svc",
    ]);
    let err = out.fails().to_string();
    assert!(
        err.contains(
            "service update paused: update paused due to failure or early termination of task "
        ),
        "{err}\n{}",
        out.stdout
    );
    assert_eq!(update_state(m, "uber-svc"), "paused");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        running(m, "uber-svc", Some("demo:v1")),
        3,
        "nothing more replaced"
    );
    // Another update resumes: here, to a good image, followed to its end.
    let out = m.apiary(&["service", "update", "--image", "demo:v2", "uber-svc"]);
    let shown = out.ok().to_string();
    assert!(shown.contains("verify: Service converged"), "{shown}");
    assert_eq!(update_state(m, "uber-svc"), "completed");
    assert_eq!(running(m, "uber-svc", Some("demo:v2")), 4);

    // Start-first with one replica: it never has no task running.
    m.docker(&[
        "service",
        "create",
        "--name",
        "one",
        "--update-order",
        "start-first",
        "--no-resolve-image",
        "-d",
        "demo:v1",
        "sleep",
        "3600",
    ])
    .ok();
    running_on(&c, m, "one", 1);
    m.docker(&[
        "service",
        "update",
        "--image",
        "demo:v2",
        "--no-resolve-image",
        "-d",
        "one",
    ])
    .ok();
    let fewest = watch_until(&c, "one", "completed");
    assert_eq!(
        fewest, 1,
        "start-first keeps the old task until the new one runs"
    );
    assert_eq!(running(m, "one", Some("demo:v2")), 1);

    // Health checks. A task is `starting` until its check passes, fails
    // when it turns unhealthy, and is replaced.
    let t0 = Instant::now();
    m.docker(&[
        "service",
        "create",
        "--name",
        "hc",
        "--health-cmd",
        "test -f /tmp/ok",
        "--health-interval",
        "1s",
        "--health-retries",
        "2",
        // Without a start period the failures of its first 4 s would count.
        "--health-start-period",
        "8s",
        "--no-resolve-image",
        "-d",
        "demo:v1",
        "sh",
        "-c",
        "sleep 4; touch /tmp/ok; sleep 6; rm /tmp/ok; sleep 3600",
    ])
    .ok();
    let (mut saw_starting, mut healthy_at) = (false, None);
    while healthy_at.is_none() && t0.elapsed() < Duration::from_secs(60) {
        let states = tasks(m, "hc");
        saw_starting |= states.iter().any(|(_, s)| s.starts_with("Starting"));
        if states.iter().any(|(_, s)| s.starts_with("Running")) {
            healthy_at = Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let healthy_at = healthy_at.unwrap_or_else(|| {
        panic!(
            "hc never became healthy:\n{}\n{}",
            m.docker(&["service", "ps", "--no-trunc", "hc"]).stdout,
            c.logs()
        )
    });
    assert!(
        saw_starting,
        "the task was shown starting before it was healthy"
    );
    assert!(
        healthy_at >= Duration::from_secs(4),
        "running only once /tmp/ok exists: {healthy_at:?}"
    );
    let first = m
        .docker(&[
            "service",
            "ps",
            "-q",
            "--filter",
            "desired-state=running",
            "hc",
        ])
        .ok()
        .trim()
        .to_string();
    // /tmp/ok goes 10 s after the start; two failed probes 1 s apart make
    // it unhealthy, and the restart policy's 5 s delay precedes the new one.
    let replaced = loop {
        let out = m
            .docker(&[
                "service",
                "ps",
                "--no-trunc",
                "--format",
                "{{.ID}}|{{.DesiredState}}|{{.CurrentState}}|{{.Error}}",
                "hc",
            ])
            .ok()
            .to_string();
        let failed = out
            .lines()
            .any(|l| l.starts_with(&first) && l.contains("dockerexec: unhealthy container"));
        let again = out
            .lines()
            .any(|l| !l.starts_with(&first) && l.contains("|Running|Running"));
        if failed && again {
            break t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "the unhealthy task was not replaced:\n{out}\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!(
        "health: healthy after {healthy_at:?}; unhealthy at ~10 s of the container's life, replacement running at {replaced:?} from create"
    );
    m.docker(&["service", "rm", "hc"]).ok();

    // An update whose new check never passes never counts as running: it
    // fails the update, which rolls back to the old check.
    m.docker(&[
        "service",
        "create",
        "--name",
        "hu",
        "--health-cmd",
        "true",
        "--health-interval",
        "1s",
        "--no-resolve-image",
        "-d",
        "demo:v1",
        "sleep",
        "3600",
    ])
    .ok();
    running_on(&c, m, "hu", 1);
    m.docker(&[
        "service",
        "update",
        "--health-cmd",
        "false",
        "--health-retries",
        "1",
        "--update-failure-action",
        "rollback",
        "--update-order",
        "start-first",
        "--no-resolve-image",
        "-d",
        "hu",
    ])
    .ok();
    let fewest = watch_until(&c, "hu", "rollback_completed");
    assert_eq!(fewest, 1, "start-first: the old healthy task kept running");
    assert_eq!(
        inspect(
            m,
            "hu",
            "{{json .Spec.TaskTemplate.ContainerSpec.Healthcheck.Test}}"
        ),
        r#"["CMD-SHELL","true"]"#
    );
    let err = m
        .apiary(&[
            "service",
            "update",
            "--no-healthcheck",
            "--health-cmd",
            "true",
            "hu",
        ])
        .fails()
        .to_string();
    assert!(
        err.contains("--no-healthcheck conflicts with --health-* options"),
        "{err}"
    );

    // Jobs: a replicated job runs 2 at a time until 3 completed, and is
    // not restarted; the apiary CLI follows a global job to its end.
    m.docker(&[
        "service",
        "create",
        "--name",
        "batch",
        "--mode",
        "replicated-job",
        "--replicas",
        "3",
        "--max-concurrent",
        "2",
        "--no-resolve-image",
        "-d",
        "demo:v1",
        "sh",
        "-c",
        "sleep 1",
    ])
    .ok();
    let t0 = Instant::now();
    let ls = loop {
        let ls = m
            .docker(&[
                "service",
                "ls",
                "--filter",
                "name=batch",
                "--format",
                "{{.Mode}} {{.Replicas}}",
            ])
            .ok()
            .trim()
            .to_string();
        if ls.ends_with("(3/3 completed)") {
            break ls;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "the job did not complete: {ls}\n{}\n{}",
            m.docker(&["service", "ps", "--no-trunc", "batch"]).stdout,
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(ls, "replicated job 0/2 (3/3 completed)");
    std::thread::sleep(Duration::from_secs(3));
    let ps = m
        .docker(&[
            "service",
            "ps",
            "--format",
            "{{.DesiredState}} {{.CurrentState}}",
            "batch",
        ])
        .ok()
        .to_string();
    assert_eq!(
        ps.lines().count(),
        3,
        "completed tasks are not restarted:\n{ps}"
    );
    assert!(
        ps.lines().all(|l| l.starts_with("Complete Complete")),
        "{ps}"
    );
    let out = m
        .apiary(&[
            "service",
            "create",
            "--name",
            "once",
            "--mode",
            "global-job",
            "demo:v1",
            "true",
        ])
        .ok()
        .to_string();
    assert!(out.contains("job complete"), "{out}");
    let err = m
        .docker(&["service", "scale", "once=2"])
        .fails()
        .to_string();
    assert!(
        err.contains("scale can only be used with replicated or replicated-job mode"),
        "{err}"
    );

    // Bad input: Swarm's wording, nothing changed.
    let err = m
        .docker(&[
            "service",
            "update",
            "--update-max-failure-ratio",
            "2",
            "-d",
            "one",
        ])
        .fails()
        .to_string();
    assert!(
        err.contains("update-maxfailureratio cannot be less than 0 or bigger than 1"),
        "{err}"
    );
    let err = m
        .docker(&["service", "update", "--update-delay", "-1s", "-d", "one"])
        .fails()
        .to_string();
    assert!(err.contains("update-delay cannot be negative"), "{err}");
    assert_eq!(update_state(m, "one"), "completed");
}
