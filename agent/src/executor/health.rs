//! A container's health check: the service's (`--health-*`) over the
//! image's HEALTHCHECK, field by field, with Docker's defaults for what
//! neither sets (`daemon/health.go`: interval 30 s, timeout 30 s, start
//! period 0, start interval 5 s, retries 3). The executor works out the
//! probe when it makes the container and keeps it with the container (a
//! label), so a restarted agent checks an adopted container the same way.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Docker's `HealthConfig`, as a service spec and an image config write it:
/// `Test` is `[]` (inherit), `["NONE"]`, `["CMD", arg…]` or
/// `["CMD-SHELL", command]`; a duration or count of 0 inherits.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Healthcheck {
    pub test: Vec<String>,
    pub interval: i64,
    pub timeout: i64,
    pub start_period: i64,
    pub start_interval: i64,
    pub retries: i64,
}

/// What is run, and how often.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    pub argv: Vec<String>,
    #[serde(with = "nanos")]
    pub interval: Duration,
    #[serde(with = "nanos")]
    pub timeout: Duration,
    #[serde(with = "nanos")]
    pub start_period: Duration,
    #[serde(with = "nanos")]
    pub start_interval: Duration,
    pub retries: u32,
}

/// The label the probe is kept in on the container.
pub const LABEL: &str = "com.apiary.healthcheck";

mod nanos {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_nanos() as u64)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_nanos(u64::deserialize(d)?))
    }
}

/// The image's HEALTHCHECK, from its config (`config.Healthcheck`).
pub fn of_image(config: &serde_json::Value) -> Option<Healthcheck> {
    serde_json::from_value(config.get("config")?.get("Healthcheck")?.clone()).ok()
}

/// The probe a container runs, if any. Errors name what is wrong with the
/// service's check (an image's odd check is ignored, as none).
pub fn probe(
    service: Option<&Healthcheck>,
    image: Option<&Healthcheck>,
) -> Result<Option<Probe>, String> {
    let empty = Healthcheck::default();
    let s = service.unwrap_or(&empty);
    let i = image.unwrap_or(&empty);
    let test = if s.test.is_empty() { &i.test } else { &s.test };
    let argv = match test.split_first() {
        None => return Ok(None),
        Some((kind, _)) if kind == "NONE" => return Ok(None),
        Some((kind, rest)) if kind == "CMD" && !rest.is_empty() => rest.to_vec(),
        Some((kind, rest)) if kind == "CMD-SHELL" && !rest.is_empty() => {
            vec!["/bin/sh".into(), "-c".into(), rest.join(" ")]
        }
        Some((kind, _)) if s.test.is_empty() => {
            tracing::warn!("ignoring the image's health check of unknown type {kind:?}");
            return Ok(None);
        }
        Some((kind, _)) => {
            return Err(format!(
                "unknown health check type {kind:?}: use [\"CMD\", args...], [\"CMD-SHELL\", command] or [\"NONE\"]"
            ))
        }
    };
    let pick = |a: i64, b: i64, default: Duration| {
        let ns = if a > 0 { a } else { b };
        if ns > 0 {
            Duration::from_nanos(ns as u64)
        } else {
            default
        }
    };
    let retries = if s.retries > 0 { s.retries } else { i.retries };
    Ok(Some(Probe {
        argv,
        interval: pick(s.interval, i.interval, Duration::from_secs(30)),
        timeout: pick(s.timeout, i.timeout, Duration::from_secs(30)),
        start_period: pick(s.start_period, i.start_period, Duration::ZERO),
        start_interval: pick(s.start_interval, i.start_interval, Duration::from_secs(5)),
        retries: if retries > 0 { retries as u32 } else { 3 },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hc(test: &[&str], interval_s: i64, retries: i64) -> Healthcheck {
        Healthcheck {
            test: test.iter().map(|s| s.to_string()).collect(),
            interval: interval_s * 1_000_000_000,
            retries,
            ..Default::default()
        }
    }

    #[test]
    fn the_service_overrides_the_image_field_by_field_over_dockers_defaults() {
        let image = hc(&["CMD", "true"], 7, 0);
        let p = probe(None, Some(&image)).unwrap().unwrap();
        assert_eq!(p.argv, ["true"]);
        assert_eq!(p.interval, Duration::from_secs(7));
        assert_eq!(p.timeout, Duration::from_secs(30));
        assert_eq!(p.start_interval, Duration::from_secs(5));
        assert_eq!(p.retries, 3);
        let service = hc(&["CMD-SHELL", "test -f /ok"], 0, 2);
        let p = probe(Some(&service), Some(&image)).unwrap().unwrap();
        assert_eq!(p.argv, ["/bin/sh", "-c", "test -f /ok"]);
        assert_eq!(
            p.interval,
            Duration::from_secs(7),
            "inherited from the image"
        );
        assert_eq!(p.retries, 2);
    }

    #[test]
    fn none_and_nothing_mean_no_probe_and_an_unknown_type_is_an_error() {
        let image = hc(&["CMD", "true"], 1, 1);
        assert_eq!(probe(Some(&hc(&["NONE"], 0, 0)), Some(&image)), Ok(None));
        assert_eq!(probe(None, None), Ok(None));
        let err = probe(Some(&hc(&["SHELL", "x"], 0, 0)), None).unwrap_err();
        assert!(err.contains("unknown health check type \"SHELL\""), "{err}");
        assert_eq!(probe(None, Some(&hc(&["SHELL", "x"], 0, 0))), Ok(None));
    }

    #[test]
    fn an_image_config_healthcheck_is_read_and_a_probe_survives_its_label() {
        let config = serde_json::json!({"config": {"Healthcheck": {
            "Test": ["CMD-SHELL", "wget -q localhost"], "Interval": 2_000_000_000i64, "Retries": 4}}});
        let h = of_image(&config).unwrap();
        assert_eq!(h.test, ["CMD-SHELL", "wget -q localhost"]);
        assert_eq!(h.retries, 4);
        let p = probe(None, Some(&h)).unwrap().unwrap();
        let label = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<Probe>(&label).unwrap(), p);
        assert_eq!(of_image(&serde_json::json!({"config": {}})), None);
    }
}
