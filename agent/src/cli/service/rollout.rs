//! The update and rollback flags `service create` and `service update`
//! share (`--update-*`, `--rollback-*`), and what they set in a spec.

use bollard_stubs::models as m;
use clap::Args;

use super::spec::parse_dur;

#[derive(Args, Debug, Default, Clone)]
pub struct RolloutFlags {
    /// Maximum number of tasks updated simultaneously (0 to update all at once)
    #[arg(long = "update-parallelism")]
    pub update_parallelism: Option<u64>,
    /// Delay between updates (ns|us|ms|s|m|h)
    #[arg(long = "update-delay", value_parser = parse_dur, allow_hyphen_values = true)]
    pub update_delay: Option<i64>,
    /// Action on update failure ("pause", "continue", "rollback")
    #[arg(long = "update-failure-action", value_parser = parse_update_action)]
    pub update_failure_action: Option<m::ServiceSpecUpdateConfigFailureActionEnum>,
    /// Duration after each task update to monitor for failure (ns|us|ms|s|m|h)
    #[arg(long = "update-monitor", value_parser = parse_dur, allow_hyphen_values = true)]
    pub update_monitor: Option<i64>,
    /// Failure rate to tolerate during an update
    #[arg(long = "update-max-failure-ratio", allow_hyphen_values = true)]
    pub update_max_failure_ratio: Option<f64>,
    /// Update order ("start-first", "stop-first")
    #[arg(long = "update-order", value_parser = parse_update_order)]
    pub update_order: Option<m::ServiceSpecUpdateConfigOrderEnum>,
    /// Maximum number of tasks rolled back simultaneously (0 to roll back all at once)
    #[arg(long = "rollback-parallelism")]
    pub rollback_parallelism: Option<u64>,
    /// Delay between task rollbacks (ns|us|ms|s|m|h)
    #[arg(long = "rollback-delay", value_parser = parse_dur, allow_hyphen_values = true)]
    pub rollback_delay: Option<i64>,
    /// Action on rollback failure ("pause", "continue")
    #[arg(long = "rollback-failure-action", value_parser = parse_rollback_action)]
    pub rollback_failure_action: Option<m::ServiceSpecRollbackConfigFailureActionEnum>,
    /// Duration after each task rollback to monitor for failure (ns|us|ms|s|m|h)
    #[arg(long = "rollback-monitor", value_parser = parse_dur, allow_hyphen_values = true)]
    pub rollback_monitor: Option<i64>,
    /// Failure rate to tolerate during a rollback
    #[arg(long = "rollback-max-failure-ratio", allow_hyphen_values = true)]
    pub rollback_max_failure_ratio: Option<f64>,
    /// Rollback order ("start-first", "stop-first")
    #[arg(long = "rollback-order", value_parser = parse_rollback_order)]
    pub rollback_order: Option<m::ServiceSpecRollbackConfigOrderEnum>,
}

fn parse_update_action(s: &str) -> Result<m::ServiceSpecUpdateConfigFailureActionEnum, String> {
    use m::ServiceSpecUpdateConfigFailureActionEnum as A;
    match s {
        "pause" => Ok(A::PAUSE),
        "continue" => Ok(A::CONTINUE),
        "rollback" => Ok(A::ROLLBACK),
        _ => Err(format!(
            "invalid failure action {s:?}: use pause, continue or rollback"
        )),
    }
}

fn parse_rollback_action(s: &str) -> Result<m::ServiceSpecRollbackConfigFailureActionEnum, String> {
    use m::ServiceSpecRollbackConfigFailureActionEnum as A;
    match s {
        "pause" => Ok(A::PAUSE),
        "continue" => Ok(A::CONTINUE),
        _ => Err(format!(
            "invalid failure action {s:?}: use pause or continue (a rollback is not rolled back)"
        )),
    }
}

fn order(s: &str) -> Result<bool, String> {
    match s {
        "start-first" => Ok(true),
        "stop-first" => Ok(false),
        _ => Err(format!(
            "invalid order {s:?}: use start-first or stop-first"
        )),
    }
}

fn parse_update_order(s: &str) -> Result<m::ServiceSpecUpdateConfigOrderEnum, String> {
    use m::ServiceSpecUpdateConfigOrderEnum as O;
    Ok(if order(s)? {
        O::START_FIRST
    } else {
        O::STOP_FIRST
    })
}

fn parse_rollback_order(s: &str) -> Result<m::ServiceSpecRollbackConfigOrderEnum, String> {
    use m::ServiceSpecRollbackConfigOrderEnum as O;
    Ok(if order(s)? {
        O::START_FIRST
    } else {
        O::STOP_FIRST
    })
}

impl RolloutFlags {
    fn any_update(&self) -> bool {
        self.update_parallelism.is_some()
            || self.update_delay.is_some()
            || self.update_failure_action.is_some()
            || self.update_monitor.is_some()
            || self.update_max_failure_ratio.is_some()
            || self.update_order.is_some()
    }

    fn any_rollback(&self) -> bool {
        self.rollback_parallelism.is_some()
            || self.rollback_delay.is_some()
            || self.rollback_failure_action.is_some()
            || self.rollback_monitor.is_some()
            || self.rollback_max_failure_ratio.is_some()
            || self.rollback_order.is_some()
    }

    pub fn any(&self) -> bool {
        self.any_update() || self.any_rollback()
    }

    /// Sets what was given, over the spec's configs. A config the spec
    /// lacks starts from Docker's defaults (1, 0 s, pause, 5 s, 0,
    /// stop-first), as the docker CLI fills it: a config with only the
    /// given field would read parallelism 0 (all at once).
    pub fn apply(&self, spec: &mut m::ServiceSpec) {
        if self.any_update() {
            let u = spec
                .update_config
                .get_or_insert_with(|| m::ServiceSpecUpdateConfig {
                    parallelism: Some(1),
                    delay: Some(0),
                    failure_action: Some(m::ServiceSpecUpdateConfigFailureActionEnum::PAUSE),
                    monitor: Some(5_000_000_000),
                    max_failure_ratio: Some(0.0),
                    order: Some(m::ServiceSpecUpdateConfigOrderEnum::STOP_FIRST),
                });
            set(
                &mut u.parallelism,
                self.update_parallelism.map(|p| p as i64),
            );
            set(&mut u.delay, self.update_delay);
            set(&mut u.failure_action, self.update_failure_action);
            set(&mut u.monitor, self.update_monitor);
            set(&mut u.max_failure_ratio, self.update_max_failure_ratio);
            set(&mut u.order, self.update_order);
        }
        if self.any_rollback() {
            let r = spec
                .rollback_config
                .get_or_insert_with(|| m::ServiceSpecRollbackConfig {
                    parallelism: Some(1),
                    delay: Some(0),
                    failure_action: Some(m::ServiceSpecRollbackConfigFailureActionEnum::PAUSE),
                    monitor: Some(5_000_000_000),
                    max_failure_ratio: Some(0.0),
                    order: Some(m::ServiceSpecRollbackConfigOrderEnum::STOP_FIRST),
                });
            set(
                &mut r.parallelism,
                self.rollback_parallelism.map(|p| p as i64),
            );
            set(&mut r.delay, self.rollback_delay);
            set(&mut r.failure_action, self.rollback_failure_action);
            set(&mut r.monitor, self.rollback_monitor);
            set(&mut r.max_failure_ratio, self.rollback_max_failure_ratio);
            set(&mut r.order, self.rollback_order);
        }
    }
}

fn set<T>(field: &mut Option<T>, value: Option<T>) {
    if value.is_some() {
        *field = value;
    }
}
