//! `service ps` / `node ps` rows: docker's task names, history rows,
//! states and error truncation (cli/command/task), as pure functions.

use std::collections::HashMap;

use bollard_stubs::models as m;
use serde_json::json;

use crate::cli::table::{human_duration, natural_cmp, pretty, render_template, tabwrite};
use crate::cli::CliError;

/// Docker truncates task errors to this many characters (`maxErrLength`).
const MAX_ERR_LENGTH: usize = 30;

/// Docker's `stringid.TruncateID`.
pub fn trunc_id(id: &str) -> &str {
    match id.char_indices().nth(12) {
        Some((i, _)) => &id[..i],
        None => id,
    }
}

/// Drops a `@sha256:…` digest, as docker does for display.
pub fn display_image(image: &str) -> &str {
    image.split('@').next().unwrap_or(image)
}

/// `svc.slot` for replicated tasks, `svc.<node id>` for global ones.
pub fn task_name(t: &m::Task, services: &HashMap<String, String>) -> String {
    let sid = t.service_id.as_deref().unwrap_or("");
    let svc = services.get(sid).map(String::as_str).unwrap_or(sid);
    match t.slot {
        Some(slot) if slot != 0 => format!("{svc}.{slot}"),
        _ => format!("{svc}.{}", t.node_id.as_deref().unwrap_or("")),
    }
}

/// Nanoseconds between an RFC 3339 time and `now` (0 if unparsable).
pub fn since_ns(rfc3339: &str, now: time::OffsetDateTime) -> i64 {
    use time::format_description::well_known::Rfc3339;
    match time::OffsetDateTime::parse(rfc3339, &Rfc3339) {
        Ok(t) => (now - t).whole_nanoseconds().clamp(0, i64::MAX as i128) as i64,
        Err(_) => 0,
    }
}

fn state_str(s: Option<m::TaskState>) -> String {
    s.map(|s| s.to_string()).unwrap_or_default()
}

/// Docker's `formatter.Ellipsis` then quotes.
pub fn error_cell(err: &str, trunc: bool) -> String {
    let mut e = err.to_string();
    if trunc && e.chars().count() > MAX_ERR_LENGTH {
        e = e.chars().take(MAX_ERR_LENGTH - 1).collect::<String>() + "…";
    }
    if e.is_empty() {
        e
    } else {
        format!("\"{e}\"")
    }
}

/// `*:8080->80/tcp` list of a task's host-mode ports.
pub fn task_ports(t: &m::Task) -> String {
    let ports = t
        .status
        .as_ref()
        .and_then(|s| s.port_status.as_ref())
        .and_then(|p| p.ports.clone())
        .unwrap_or_default();
    ports.iter().map(port_string).collect::<Vec<_>>().join(",")
}

pub fn port_string(p: &m::EndpointPortConfig) -> String {
    format!(
        "*:{}->{}/{}",
        p.published_port.unwrap_or(0),
        p.target_port.unwrap_or(0),
        p.protocol
            .map(|x| x.to_string())
            .unwrap_or_else(|| "tcp".into())
    )
}

/// What `ps` needs to render tasks.
pub struct PsView<'a> {
    pub services: &'a HashMap<String, String>,
    pub nodes: &'a HashMap<String, String>,
    pub now: time::OffsetDateTime,
    pub trunc: bool,
}

/// One row per task with docker's field names (the `--format` data), in
/// docker's order: by name (natural), newest first within a slot; older
/// tasks of a slot get ` \_ ` before their name in tables.
pub fn ps_rows(tasks: &[m::Task], v: &PsView<'_>, table: bool) -> Vec<serde_json::Value> {
    let mut named: Vec<(String, &m::Task)> = tasks
        .iter()
        .map(|t| (task_name(t, v.services), t))
        .collect();
    named.sort_by(|(na, a), (nb, b)| {
        natural_cmp(na, nb).then_with(|| {
            // Newest first (RFC 3339 in UTC compares as text).
            b.created_at
                .as_deref()
                .unwrap_or("")
                .cmp(a.created_at.as_deref().unwrap_or(""))
        })
    });
    let mut prev = String::new();
    let mut rows = Vec::new();
    for (name, t) in named {
        let shown = if table && name == prev {
            format!(" \\_ {name}")
        } else {
            name.clone()
        };
        prev = name;
        let id = t.id.as_deref().unwrap_or("");
        let status = t.status.clone().unwrap_or_default();
        let image = t
            .spec
            .as_ref()
            .and_then(|s| s.container_spec.as_ref())
            .and_then(|c| c.image.as_deref())
            .unwrap_or("");
        let node_id = t.node_id.as_deref().unwrap_or("");
        let node = v
            .nodes
            .get(node_id)
            .cloned()
            .unwrap_or_else(|| node_id.to_string());
        let ago = human_duration(since_ns(status.timestamp.as_deref().unwrap_or(""), v.now));
        rows.push(json!({
            "ID": if v.trunc { trunc_id(id) } else { id },
            "Name": shown,
            "Image": if v.trunc { display_image(image) } else { image },
            "Node": node,
            "DesiredState": pretty(&state_str(t.desired_state)),
            "CurrentState": format!("{} {} ago", pretty(&state_str(status.state)), ago.to_lowercase()),
            "Error": error_cell(status.err.as_deref().unwrap_or(""), v.trunc),
            "Ports": task_ports(t),
        }));
    }
    rows
}

fn cell(r: &serde_json::Value, k: &str) -> String {
    r.get(k)
        .and_then(|x| x.as_str())
        .unwrap_or_default()
        .to_string()
}

/// `ps` output for `--format` (table by default, `-q` IDs only).
pub fn render_ps(
    tasks: &[m::Task],
    v: &PsView<'_>,
    quiet: bool,
    format: Option<&str>,
) -> Result<String, CliError> {
    let format = format.unwrap_or("");
    let table = matches!(format, "" | "table") || format.starts_with("table ");
    let rows = ps_rows(tasks, v, table);
    let mut s = String::new();
    match format {
        "" | "table" if quiet => {
            for r in &rows {
                s.push_str(&cell(r, "ID"));
                s.push('\n');
            }
        }
        "" | "table" => {
            let mut t =
                String::from("ID\tNAME\tIMAGE\tNODE\tDESIRED STATE\tCURRENT STATE\tERROR\tPORTS\n");
            for r in &rows {
                t.push_str(&format!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
                    cell(r, "ID"),
                    cell(r, "Name"),
                    cell(r, "Image"),
                    cell(r, "Node"),
                    cell(r, "DesiredState"),
                    cell(r, "CurrentState"),
                    cell(r, "Error"),
                    cell(r, "Ports"),
                ));
            }
            s = tabwrite(&t);
        }
        "json" => {
            for r in &rows {
                s.push_str(&r.to_string());
                s.push('\n');
            }
        }
        other => {
            let headers = json!({
                "ID": "ID", "Name": "NAME", "Image": "IMAGE", "Node": "NODE",
                "DesiredState": "DESIRED STATE", "CurrentState": "CURRENT STATE",
                "Error": "ERROR", "Ports": "PORTS",
            });
            s = render_rows(other, &headers, &rows)?;
        }
    }
    Ok(s)
}

/// A user template over rows; `table …` adds the header row and aligns.
pub fn render_rows(
    format: &str,
    headers: &serde_json::Value,
    rows: &[serde_json::Value],
) -> Result<String, CliError> {
    let (table, tmpl) = match format.strip_prefix("table") {
        Some(rest) => (true, rest.trim()),
        None => (false, format.trim()),
    };
    let mut text = String::new();
    if table {
        text.push_str(&render_template(tmpl, headers).map_err(CliError::Client)?);
        text.push('\n');
    }
    for r in rows {
        text.push_str(&render_template(tmpl, r).map_err(CliError::Client)?);
        text.push('\n');
    }
    Ok(if table { tabwrite(&text) } else { text })
}
