//! The health-check flags `service create` and `service update` share
//! (`--health-*`, `--no-healthcheck`), and what they make of a spec's
//! `HealthCheck`, by docker's rules (cli/command/service/opts.go and
//! update.go's updateHealthcheck).

use bollard_stubs::models as m;
use clap::Args;

use super::spec::parse_dur;
use crate::cli::CliError;

#[derive(Args, Debug, Default, Clone)]
pub struct HealthFlags {
    /// Command to run to check health
    #[arg(long = "health-cmd")]
    pub health_cmd: Option<String>,
    /// Time between running the check (ms|s|m|h)
    #[arg(long = "health-interval", value_parser = parse_dur, allow_hyphen_values = true)]
    pub health_interval: Option<i64>,
    /// Maximum time to allow one check to run (ms|s|m|h)
    #[arg(long = "health-timeout", value_parser = parse_dur, allow_hyphen_values = true)]
    pub health_timeout: Option<i64>,
    /// Consecutive failures needed to report unhealthy
    #[arg(long = "health-retries", allow_hyphen_values = true)]
    pub health_retries: Option<i64>,
    /// Start period for the container to initialize before counting retries towards unstable (ms|s|m|h)
    #[arg(long = "health-start-period", value_parser = parse_dur, allow_hyphen_values = true)]
    pub health_start_period: Option<i64>,
    /// Disable any container-specified HEALTHCHECK
    #[arg(long = "no-healthcheck")]
    pub no_healthcheck: bool,
}

impl HealthFlags {
    fn any_option(&self) -> bool {
        self.health_cmd.is_some()
            || self.health_interval.is_some()
            || self.health_timeout.is_some()
            || self.health_retries.is_some()
            || self.health_start_period.is_some()
    }

    fn check(&self) -> Result<(), CliError> {
        if self.no_healthcheck && self.any_option() {
            return Err(CliError::Client(
                "--no-healthcheck conflicts with --health-* options".into(),
            ));
        }
        for (flag, v) in [
            ("--health-interval", self.health_interval),
            ("--health-timeout", self.health_timeout),
            ("--health-start-period", self.health_start_period),
        ] {
            if v.is_some_and(|v| v < 0) {
                return Err(CliError::Client(format!("{flag} cannot be negative")));
            }
        }
        if self.health_retries.is_some_and(|r| r < 0) {
            return Err(CliError::Client(
                "--health-retries cannot be negative".into(),
            ));
        }
        Ok(())
    }

    /// The health check `service create` sends: None when no flag is given
    /// (the image's HEALTHCHECK applies).
    pub fn for_create(&self) -> Result<Option<m::HealthConfig>, CliError> {
        self.check()?;
        if self.no_healthcheck {
            return Ok(Some(m::HealthConfig {
                test: Some(vec!["NONE".into()]),
                ..Default::default()
            }));
        }
        if !self.any_option() {
            return Ok(None);
        }
        let mut h = m::HealthConfig::default();
        self.set(&mut h);
        Ok(Some(h))
    }

    /// `service update`: change only what the flags name.
    pub fn update(&self, health: &mut Option<m::HealthConfig>) -> Result<(), CliError> {
        self.check()?;
        if self.no_healthcheck {
            *health = Some(m::HealthConfig {
                test: Some(vec!["NONE".into()]),
                ..Default::default()
            });
            return Ok(());
        }
        if !self.any_option() {
            return Ok(());
        }
        let h = health.get_or_insert_with(Default::default);
        if h.test
            .as_deref()
            .is_some_and(|t| t.first().map(String::as_str) == Some("NONE"))
        {
            // A check switched off had no other fields worth keeping.
            *h = m::HealthConfig::default();
        }
        self.set(h);
        Ok(())
    }

    fn set(&self, h: &mut m::HealthConfig) {
        if let Some(cmd) = &self.health_cmd {
            // An empty command inherits the image's test again.
            h.test = (!cmd.is_empty()).then(|| vec!["CMD-SHELL".into(), cmd.clone()]);
        }
        if let Some(v) = self.health_interval {
            h.interval = Some(v);
        }
        if let Some(v) = self.health_timeout {
            h.timeout = Some(v);
        }
        if let Some(v) = self.health_retries {
            h.retries = Some(v);
        }
        if let Some(v) = self.health_start_period {
            h.start_period = Some(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_sets_a_shell_check_and_no_healthcheck_sets_none() {
        let f = HealthFlags {
            health_cmd: Some("wget -q -O- localhost".into()),
            health_interval: Some(2_000_000_000),
            health_retries: Some(2),
            ..Default::default()
        };
        let h = f.for_create().expect("valid").expect("a check");
        assert_eq!(
            h.test.as_deref(),
            Some(&["CMD-SHELL".to_string(), "wget -q -O- localhost".into()][..])
        );
        assert_eq!(
            (h.interval, h.retries, h.timeout),
            (Some(2_000_000_000), Some(2), None)
        );
        assert!(HealthFlags::default()
            .for_create()
            .expect("valid")
            .is_none());
        let off = HealthFlags {
            no_healthcheck: true,
            ..Default::default()
        };
        assert_eq!(
            off.for_create().expect("valid").and_then(|h| h.test),
            Some(vec!["NONE".to_string()])
        );
    }

    #[test]
    fn conflicting_or_negative_flags_are_refused_by_name() {
        let both = HealthFlags {
            no_healthcheck: true,
            health_cmd: Some("true".into()),
            ..Default::default()
        };
        let e = both.for_create().expect_err("conflict").to_string();
        assert!(e.contains("--no-healthcheck conflicts"), "{e}");
        let neg = HealthFlags {
            health_retries: Some(-1),
            ..Default::default()
        };
        let e = neg.for_create().expect_err("negative").to_string();
        assert!(e.contains("--health-retries"), "{e}");
    }

    #[test]
    fn update_changes_only_what_is_named_and_revives_a_disabled_check() {
        let mut h = Some(m::HealthConfig {
            test: Some(vec!["CMD-SHELL".into(), "true".into()]),
            interval: Some(5),
            retries: Some(3),
            ..Default::default()
        });
        HealthFlags {
            health_retries: Some(1),
            ..Default::default()
        }
        .update(&mut h)
        .expect("valid");
        let got = h.clone().expect("kept");
        assert_eq!((got.interval, got.retries), (Some(5), Some(1)));
        let mut off = Some(m::HealthConfig {
            test: Some(vec!["NONE".into()]),
            ..Default::default()
        });
        HealthFlags {
            health_cmd: Some("true".into()),
            ..Default::default()
        }
        .update(&mut off)
        .expect("valid");
        assert_eq!(
            off.and_then(|h| h.test),
            Some(vec!["CMD-SHELL".to_string(), "true".into()])
        );
    }
}
