//! What `apiary secret ...` and `apiary config ...` share: both are named
//! blobs with labels, created from a file or stdin, listed, inspected and
//! removed the same way. Only the columns, the `--pretty` page and whether
//! the data is shown differ, and those follow the docker CLI.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;

use base64::Engine;
use serde_json::{json, Value};

use super::client::{decode, encode_query, encode_segment};
use super::node::filters_json;
use super::table::{human_duration, natural_cmp, pretty_time, render_template, tabwrite};
use super::{CliError, Client, Output};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Secret,
    Config,
    /// Networks share `inspect` and `rm` only.
    Network,
}

impl Kind {
    fn path(self) -> &'static str {
        match self {
            Kind::Secret => "/secrets",
            Kind::Config => "/configs",
            Kind::Network => "/networks",
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    /// Labels ("key=value")
    #[arg(short, long = "label", value_name = "list")]
    pub label: Vec<String>,
    /// Name of the new object
    #[arg(value_name = "NAME")]
    pub name: String,
    /// File to read the data from, or "-" for stdin
    #[arg(value_name = "file|-")]
    pub file: String,
}

#[derive(clap::Args, Debug)]
pub struct LsArgs {
    /// Only display IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// Format output: "table", "json", or a template like "{{.ID}}\t{{.Name}}"
    #[arg(long)]
    pub format: Option<String>,
    /// Filter output based on conditions provided (id, label, name)
    #[arg(short, long = "filter", value_name = "filter")]
    pub filter: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// Print the information in a human friendly format
    #[arg(long)]
    pub pretty: bool,
    /// Format output: "json" or a template like "{{.Spec.Name}}"
    #[arg(short, long)]
    pub format: Option<String>,
    /// ID or name
    #[arg(value_name = "NAME", required = true)]
    pub names: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct RmArgs {
    /// ID or name
    #[arg(value_name = "NAME", required = true)]
    pub names: Vec<String>,
}

/// The data to store: a file's content, or stdin for `-`.
pub fn read_data(file: &str, stdin: &mut dyn Read) -> Result<Vec<u8>, CliError> {
    let mut data = Vec::new();
    if file == "-" {
        stdin
            .read_to_end(&mut data)
            .map_err(|e| CliError::Client(format!("error reading content from stdin: {e}")))?;
    } else {
        data = std::fs::read(file)
            .map_err(|e| CliError::Client(format!("error reading content from {file:?}: {e}")))?;
    }
    Ok(data)
}

/// `--label k=v` flags as a map; a bare `k` is an empty value (Docker's rule).
pub fn labels_map(labels: &[String]) -> HashMap<String, String> {
    labels
        .iter()
        .map(|l| match l.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (l.clone(), String::new()),
        })
        .collect()
}

/// `create`: `data` was read from the file or stdin by the caller.
pub async fn create(
    c: &mut Client,
    kind: Kind,
    a: CreateArgs,
    data: Vec<u8>,
    out: &mut Output,
) -> Result<(), CliError> {
    let body = json!({
        "Name": a.name,
        "Labels": labels_map(&a.label),
        "Data": base64::engine::general_purpose::STANDARD.encode(&data),
    });
    let ans = c.post(&format!("{}/create", kind.path()), &body).await?;
    let v: Value = decode(&ans.body, kind.path())?;
    out.println(v["ID"].as_str().unwrap_or_default());
    Ok(())
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_str().unwrap_or_default()
}

/// `2 minutes ago`, as docker writes a time in the past.
pub(crate) fn ago(rfc3339: &str) -> String {
    use time::format_description::well_known::Rfc3339;
    match time::OffsetDateTime::parse(rfc3339, &Rfc3339) {
        Ok(t) => {
            let ns = (time::OffsetDateTime::now_utc() - t).whole_nanoseconds();
            format!(
                "{} ago",
                human_duration(i64::try_from(ns).unwrap_or(i64::MAX))
            )
        }
        Err(_) => String::new(),
    }
}

/// One `ls` row with the docker CLI's field names (also the `--format json` object).
pub fn row(kind: Kind, v: &Value) -> Value {
    let labels: Vec<String> = sorted_labels(v)
        .into_iter()
        .map(|(k, val)| format!("{k}={val}"))
        .collect();
    let mut r = json!({
        "ID": str_at(v, &["ID"]),
        "Name": str_at(v, &["Spec", "Name"]),
        "CreatedAt": ago(str_at(v, &["CreatedAt"])),
        "UpdatedAt": ago(str_at(v, &["UpdatedAt"])),
        "Labels": labels.join(","),
    });
    if kind == Kind::Secret {
        r["Driver"] = json!(str_at(v, &["Spec", "Driver", "Name"]));
    }
    r
}

fn field(v: &Value, k: &str) -> String {
    match v.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

/// Docker's default `secret ls` / `config ls` table.
pub fn render_table(kind: Kind, rows: &[Value]) -> String {
    let mut t = String::new();
    match kind {
        Kind::Secret => t.push_str("ID\tNAME\tDRIVER\tCREATED\tUPDATED\n"),
        Kind::Config | Kind::Network => t.push_str("ID\tNAME\tCREATED\tUPDATED\n"),
    }
    for r in rows {
        t.push_str(&field(r, "ID"));
        t.push('\t');
        t.push_str(&field(r, "Name"));
        t.push('\t');
        if kind == Kind::Secret {
            t.push_str(&field(r, "Driver"));
            t.push('\t');
        }
        t.push_str(&format!(
            "{}\t{}\n",
            field(r, "CreatedAt"),
            field(r, "UpdatedAt")
        ));
    }
    tabwrite(&t)
}

fn render_custom(format: &str, rows: &[Value]) -> Result<String, CliError> {
    let headers = json!({
        "ID": "ID", "Name": "NAME", "Driver": "DRIVER", "CreatedAt": "CREATED",
        "UpdatedAt": "UPDATED", "Labels": "LABELS",
    });
    super::table::render_rows(format, &headers, rows).map_err(CliError::Client)
}

pub async fn ls(c: &mut Client, kind: Kind, a: LsArgs, out: &mut Output) -> Result<(), CliError> {
    let mut path = kind.path().to_string();
    if !a.filter.is_empty() {
        path.push_str(&format!(
            "?filters={}",
            encode_query(&filters_json(&a.filter)?)
        ));
    }
    let mut items: Vec<Value> = c.get(&path).await?;
    items.sort_by(|x, y| natural_cmp(str_at(x, &["Spec", "Name"]), str_at(y, &["Spec", "Name"])));
    let rows: Vec<Value> = items.iter().map(|v| row(kind, v)).collect();
    let format = a.format.unwrap_or_default();
    match format.as_str() {
        "" | "table" if a.quiet => {
            for r in &rows {
                out.println(field(r, "ID"));
            }
        }
        "" | "table" => out.print(render_table(kind, &rows)),
        "json" => {
            for r in &rows {
                out.println(r.to_string());
            }
        }
        other => out.print(render_custom(other, &rows)?),
    }
    Ok(())
}

fn sorted_labels(v: &Value) -> Vec<(String, String)> {
    let map: BTreeMap<String, String> = v["Spec"]["Labels"]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, val)| (k.clone(), val.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default();
    map.into_iter().collect()
}

fn pretty_labels(v: &Value) -> String {
    let labels = sorted_labels(v);
    if labels.is_empty() {
        return String::new();
    }
    let mut s = String::from("\nLabels:");
    for (k, val) in labels {
        if val.is_empty() {
            s.push_str(&format!("\n - {k}"));
        } else {
            s.push_str(&format!("\n - {k}={val}"));
        }
    }
    s
}

/// `secret inspect --pretty`, as the docker CLI's template renders it.
pub fn pretty_secret(v: &Value) -> String {
    format!(
        "ID:              {}\nName:              {}{}\nDriver:            {}\nCreated at:        {}\nUpdated at:        {}",
        str_at(v, &["ID"]),
        str_at(v, &["Spec", "Name"]),
        pretty_labels(v),
        str_at(v, &["Spec", "Driver", "Name"]),
        pretty_time(str_at(v, &["CreatedAt"])),
        pretty_time(str_at(v, &["UpdatedAt"])),
    )
}

/// `config inspect --pretty`, with the docker CLI's literal tabs; shows the data.
pub fn pretty_config(v: &Value) -> String {
    let data = base64::engine::general_purpose::STANDARD
        .decode(str_at(v, &["Spec", "Data"]))
        .map(|d| String::from_utf8_lossy(&d).into_owned())
        .unwrap_or_default();
    format!(
        "ID:\t\t\t{}\nName:\t\t\t{}{}\nCreated at:            \t{}\nUpdated at:            \t{}\nData:\n{}",
        str_at(v, &["ID"]),
        str_at(v, &["Spec", "Name"]),
        pretty_labels(v),
        pretty_time(str_at(v, &["CreatedAt"])),
        pretty_time(str_at(v, &["UpdatedAt"])),
        data,
    )
}

pub async fn inspect(
    c: &mut Client,
    kind: Kind,
    a: InspectArgs,
    out: &mut Output,
) -> Result<(), CliError> {
    let mut raws = Vec::new();
    let mut errs = Vec::new();
    for n in &a.names {
        match c
            .get_raw(&format!("{}/{}", kind.path(), encode_segment(n)))
            .await
        {
            Ok(raw) => raws.push(raw),
            Err(e) => errs.push(e),
        }
    }
    let format = if a.pretty {
        "pretty".to_string()
    } else {
        a.format.unwrap_or_default()
    };
    match format.as_str() {
        "" => {
            let parts: Vec<String> = raws
                .iter()
                .map(|r| String::from_utf8_lossy(r).into_owned())
                .collect();
            let array = format!("[{}]", parts.join(","));
            out.println(super::table::indent_json(array.as_bytes()));
        }
        "pretty" => {
            for raw in &raws {
                let v: Value = decode(raw, kind.path())?;
                out.println(match kind {
                    Kind::Secret => pretty_secret(&v),
                    Kind::Config => pretty_config(&v),
                    Kind::Network => {
                        return Err(CliError::Client(
                            "network inspect has no --pretty format: use --format".into(),
                        ))
                    }
                });
            }
        }
        "json" => {
            for raw in &raws {
                let v: Value = decode(raw, kind.path())?;
                out.println(v.to_string());
            }
        }
        tmpl => {
            for raw in &raws {
                let v: Value = decode(raw, kind.path())?;
                out.println(render_template(tmpl, &v).map_err(CliError::Client)?);
            }
        }
    }
    finish(errs)
}

pub async fn rm(c: &mut Client, kind: Kind, a: RmArgs, out: &mut Output) -> Result<(), CliError> {
    let mut errs = Vec::new();
    for n in &a.names {
        match c
            .delete(&format!("{}/{}", kind.path(), encode_segment(n)))
            .await
        {
            Ok(_) => out.println(n),
            Err(e) => errs.push(e),
        }
    }
    finish(errs)
}

fn finish(mut errs: Vec<CliError>) -> Result<(), CliError> {
    match errs.len() {
        0 => Ok(()),
        1 => Err(errs.remove(0)),
        _ => Err(CliError::Many(errs)),
    }
}
