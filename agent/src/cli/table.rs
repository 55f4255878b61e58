//! Docker-style text output: the elastic tab-stop table writer the docker
//! CLI uses (min width 10, padding 3, spaces), and the small formatting
//! helpers its templates rely on.

use std::cmp::Ordering;

/// Docker's table settings (`formatter.Context`).
const MIN_WIDTH: usize = 10;
const PADDING: usize = 3;

/// Aligns tab-terminated cells like Go's `text/tabwriter` with Docker's
/// settings. Cells are `\t`-terminated; the text after the last tab of a
/// line is not part of any column. Columns are blocks of consecutive lines
/// that have a cell in that column.
pub fn tabwrite(text: &str) -> String {
    let lines: Vec<Vec<&str>> = text.split('\n').map(|l| l.split('\t').collect()).collect();
    let mut widths = Vec::new();
    let mut out = String::new();
    format_block(&lines, 0, lines.len(), &mut widths, &mut out);
    out
}

fn cell_width(s: &str) -> usize {
    s.chars().count()
}

fn format_block(
    lines: &[Vec<&str>],
    mut line0: usize,
    line1: usize,
    widths: &mut Vec<usize>,
    out: &mut String,
) {
    let column = widths.len();
    let mut this = line0;
    while this < line1 {
        // A line has a cell in `column` if it has a tab-terminated cell there.
        if column + 1 >= lines[this].len() {
            this += 1;
            continue;
        }
        write_lines(lines, line0, this, widths, out);
        line0 = this;
        let mut width = MIN_WIDTH;
        while this < line1 && column + 1 < lines[this].len() {
            width = width.max(cell_width(lines[this][column]) + PADDING);
            this += 1;
        }
        widths.push(width);
        format_block(lines, line0, this, widths, out);
        widths.pop();
        line0 = this;
    }
    write_lines(lines, line0, line1, widths, out);
}

fn write_lines(
    lines: &[Vec<&str>],
    line0: usize,
    line1: usize,
    widths: &[usize],
    out: &mut String,
) {
    for (i, line) in lines.iter().enumerate().take(line1).skip(line0) {
        for (j, cell) in line.iter().enumerate() {
            out.push_str(cell);
            if j < widths.len() && j + 1 < line.len() {
                let pad = widths[j].saturating_sub(cell_width(cell));
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        if i + 1 < lines.len() {
            out.push('\n');
        }
    }
}

/// Docker's `PrettyPrint`: first letter upper-case, the rest lower-case.
pub fn pretty(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        None => String::new(),
        Some(first) if s.chars().count() == 1 => first.to_lowercase().collect(),
        Some(first) => first
            .to_uppercase()
            .chain(chars.flat_map(char::to_lowercase))
            .collect(),
    }
}

/// go-units `BytesSize`: binary units, 4 significant digits, no space ("7.952GiB").
pub fn bytes_size(bytes: f64) -> String {
    scaled(
        bytes,
        1024.0,
        &["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB"],
    )
}

/// Docker's `units.HumanSize`: decimal units, four significant digits
/// (`1.2MB`, `772.8kB`), as pull progress shows sizes.
pub fn human_size(bytes: f64) -> String {
    scaled(
        bytes,
        1000.0,
        &["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"],
    )
}

fn scaled(bytes: f64, base: f64, units: &[&str]) -> String {
    let mut size = bytes;
    let mut i = 0;
    while size >= base && i + 1 < units.len() {
        size /= base;
        i += 1;
    }
    format!("{}{}", sig4(size), units[i])
}

/// `%.4g` for 0 <= v < 10000.
fn sig4(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let digits = v.abs().log10().floor() as i32 + 1;
    let decimals = (4 - digits).max(0) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// go-units `HumanDuration` ("5 seconds", "3 months").
pub fn human_duration(ns: i64) -> String {
    let secs = ns / 1_000_000_000;
    let minutes = secs / 60;
    let hours = ((ns as f64) / 3.6e12 + 0.5) as i64;
    if secs < 1 {
        "Less than a second".into()
    } else if secs == 1 {
        "1 second".into()
    } else if secs < 60 {
        format!("{secs} seconds")
    } else if minutes == 1 {
        "About a minute".into()
    } else if minutes < 60 {
        format!("{minutes} minutes")
    } else if hours == 1 {
        "About an hour".into()
    } else if hours < 48 {
        format!("{hours} hours")
    } else if hours < 24 * 7 * 2 {
        format!("{} days", hours / 24)
    } else if hours < 24 * 30 * 2 {
        format!("{} weeks", hours / 24 / 7)
    } else if hours < 24 * 365 * 2 {
        format!("{} months", hours / 24 / 30)
    } else {
        format!("{} years", ns / 3_600_000_000_000 / 24 / 365)
    }
}

/// Natural order ("node2" < "node10"), as the docker CLI sorts hostnames.
pub fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let na = a.iter().take_while(|c| c.is_ascii_digit()).count();
                let nb = b.iter().take_while(|c| c.is_ascii_digit()).count();
                let (da, db) = (&a[..na], &b[..nb]);
                let ta = trim_zeros(da);
                let tb = trim_zeros(db);
                let ord = ta
                    .len()
                    .cmp(&tb.len())
                    .then_with(|| ta.cmp(tb))
                    .then_with(|| na.cmp(&nb));
                if ord != Ordering::Equal {
                    return ord;
                }
                a = &a[na..];
                b = &b[nb..];
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                a = &a[1..];
                b = &b[1..];
            }
        }
    }
}

fn trim_zeros(d: &[u8]) -> &[u8] {
    let n = d.iter().take_while(|c| **c == b'0').count();
    &d[n..]
}

/// Go's `time.Time.String()` of an RFC 3339 timestamp, through Docker's
/// `PrettyPrint` ("2024-05-01 10:00:00.123 +0000 utc").
pub fn pretty_time(rfc3339: &str) -> String {
    use time::format_description::well_known::Rfc3339;
    let Ok(t) = time::OffsetDateTime::parse(rfc3339, &Rfc3339) else {
        return pretty(rfc3339);
    };
    let nanos = t.nanosecond();
    let frac = if nanos == 0 {
        String::new()
    } else {
        format!(".{nanos:09}").trim_end_matches('0').to_string()
    };
    let off = t.offset();
    let (h, m, _) = off.as_hms();
    let sign = if off.is_negative() { '-' } else { '+' };
    let zone = if off.is_utc() {
        "UTC".to_string()
    } else {
        String::new()
    };
    let s = format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}{} {}{:02}{:02} {}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        frac,
        sign,
        h.unsigned_abs(),
        m.unsigned_abs(),
        zone
    );
    pretty(s.trim_end())
}

/// A small subset of Go templates for `--format`: `{{.Field}}`,
/// `{{.A.B}}`, `{{json .}}`, `{{json .Field}}`, with `\t` and `\n` escapes.
/// Values come from a JSON object.
pub fn render_template(tmpl: &str, data: &serde_json::Value) -> Result<String, String> {
    let tmpl = tmpl.replace("\\t", "\t").replace("\\n", "\n");
    let mut out = String::new();
    let mut rest = tmpl.as_str();
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("template parsing error: unclosed action in {tmpl:?}"))?;
        let action = after[..end]
            .trim()
            .trim_start_matches('-')
            .trim_end_matches('-')
            .trim();
        out.push_str(&eval_action(action, data)?);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn lookup<'a>(path: &str, data: &'a serde_json::Value) -> Result<&'a serde_json::Value, String> {
    if path == "." {
        return Ok(data);
    }
    let Some(p) = path.strip_prefix('.') else {
        return Err(format!(
            "template parsing error: unsupported action {path:?}"
        ));
    };
    let mut v = data;
    for key in p.split('.') {
        v = v
            .get(key)
            .ok_or_else(|| format!("template: can't evaluate field {key}"))?;
    }
    Ok(v)
}

fn eval_action(action: &str, data: &serde_json::Value) -> Result<String, String> {
    if let Some(arg) = action.strip_prefix("json ") {
        let v = lookup(arg.trim(), data)?;
        return serde_json::to_string(v).map_err(|e| e.to_string());
    }
    let v = lookup(action, data)?;
    Ok(match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "<no value>".into(),
        other => other.to_string(),
    })
}

/// Re-indents raw JSON like Go's `json.Indent(.., "", "    ")`, keeping the
/// key order the agent sent.
pub fn indent_json(raw: &[u8]) -> String {
    let mut out = String::new();
    let mut depth = 0usize;
    let mut in_str = false;
    let mut escaped = false;
    let text = String::from_utf8_lossy(raw);
    let chars: Vec<char> = text.chars().collect();
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.extend(std::iter::repeat_n("    ", depth));
    };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if in_str {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
            }
            i += 1;
            continue;
        }
        match c {
            '"' => {
                in_str = true;
                out.push(c);
            }
            '{' | '[' => {
                // Empty containers stay compact, as in Go.
                let mut k = i + 1;
                while k < chars.len() && chars[k].is_whitespace() {
                    k += 1;
                }
                let close = if c == '{' { '}' } else { ']' };
                if k < chars.len() && chars[k] == close {
                    out.push(c);
                    out.push(close);
                    i = k + 1;
                    continue;
                }
                out.push(c);
                depth += 1;
                newline(&mut out, depth);
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_whitespace() => {}
            c => out.push(c),
        }
        i += 1;
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tabwriter_pads_columns_like_docker() {
        let t = "ID  \tHOSTNAME\tSTATUS\tLAST\nabc *\th1\tReady\tx\n";
        let out = tabwrite(t);
        // Column widths: max(10, longest + 3).
        assert_eq!(
            out,
            "ID        HOSTNAME   STATUS    LAST\nabc *     h1         Ready     x\n"
        );
    }

    #[test]
    fn tabwriter_keeps_empty_cells_padded() {
        let out = tabwrite("A\tMANAGER STATUS\tE\nx\t\t1.0\n");
        assert_eq!(
            out,
            "A         MANAGER STATUS   E\nx                          1.0\n"
        );
    }

    #[test]
    fn pretty_print_capitalises() {
        assert_eq!(pretty("ready"), "Ready");
        assert_eq!(pretty("ACTIVE"), "Active");
        assert_eq!(pretty(""), "");
        assert_eq!(pretty("reachable"), "Reachable");
    }

    #[test]
    fn sizes_and_durations_like_go_units() {
        assert_eq!(bytes_size(8_538_484_736.0), "7.952GiB");
        assert_eq!(bytes_size(1024.0), "1KiB");
        assert_eq!(bytes_size(512.0), "512B");
        assert_eq!(human_duration(5_000_000_000), "5 seconds");
        assert_eq!(human_duration(90 * 24 * 3_600_000_000_000), "3 months");
        assert_eq!(human_duration(60_000_000_000), "About a minute");
    }

    #[test]
    fn natural_order() {
        let mut v = vec!["node10", "node2", "manager", "node1"];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(v, ["manager", "node1", "node2", "node10"]);
    }

    #[test]
    fn go_time_string() {
        assert_eq!(
            pretty_time("2024-05-01T10:00:00.123Z"),
            "2024-05-01 10:00:00.123 +0000 utc"
        );
    }

    #[test]
    fn templates() {
        let v = serde_json::json!({"ID": "x", "Self": true, "Status": {"Addr": "1.2.3.4"}});
        assert_eq!(
            render_template("{{.ID}}\\t{{.Self}} {{.Status.Addr}}", &v).unwrap(),
            "x\ttrue 1.2.3.4"
        );
        assert_eq!(
            render_template("{{json .Status}}", &v).unwrap(),
            r#"{"Addr":"1.2.3.4"}"#
        );
        assert!(render_template("{{.Nope}}", &v).is_err());
    }

    #[test]
    fn json_indent_like_go() {
        let raw = br#"[{"ID":"a","Labels":{},"L":[1,2],"S":"x,y:{"}]"#;
        assert_eq!(
            indent_json(raw),
            "[\n    {\n        \"ID\": \"a\",\n        \"Labels\": {},\n        \"L\": [\n            1,\n            2\n        ],\n        \"S\": \"x,y:{\"\n    }\n]"
        );
    }
}

/// Rows through a user's `--format` template; a `table ...` template gets a
/// header row from `headers` (the column names docker prints) and aligned
/// columns, like Docker's.
pub fn render_rows(
    format: &str,
    headers: &serde_json::Value,
    rows: &[serde_json::Value],
) -> Result<String, String> {
    let (table, tmpl) = match format.strip_prefix("table") {
        Some(rest) => (true, rest.trim()),
        None => (false, format.trim()),
    };
    let mut text = String::new();
    if table {
        text.push_str(&render_template(tmpl, headers)?);
        text.push('\n');
    }
    for r in rows {
        text.push_str(&render_template(tmpl, r)?);
        text.push('\n');
    }
    Ok(if table { tabwrite(&text) } else { text })
}
