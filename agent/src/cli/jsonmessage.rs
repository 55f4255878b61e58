//! Docker's JSON message stream (`/images/create`, `/images/load`) shown
//! the way the docker CLI shows it.
//!
//! On a terminal, each layer keeps one line that is redrawn in place
//! (cursor up to it, clear it, write, cursor back down), so a pull reads
//! `a1b2c3d4e5f6: Downloading [=====>   ]  1.2MB/3.4MB` and then
//! `a1b2c3d4e5f6: Pull complete`. Elsewhere (a pipe, a CI log) progress
//! bars are left out and every other event is one plain line.
//!
//! The state is pure: `show` returns the text to write, so the drawing is
//! tested without a terminal.

use serde_json::Value;

use super::table::human_size;
use super::CliError;

/// Docker's progress bar is 50 characters wide.
const BAR_WIDTH: u64 = 50;

#[derive(Debug, Default)]
pub struct Display {
    tty: bool,
    /// The IDs whose lines are on screen, top to bottom; the cursor rests
    /// on the line below the last.
    lines: Vec<String>,
}

impl Display {
    pub fn new(tty: bool) -> Display {
        Display {
            tty,
            lines: Vec::new(),
        }
    }

    /// The text to write for one message; an error message is the
    /// command's error.
    pub fn show(&mut self, msg: &Value) -> Result<String, CliError> {
        if let Some(e) = msg.get("errorDetail").or_else(|| msg.get("error")) {
            let text = e["message"]
                .as_str()
                .or(e.as_str())
                .or(msg["error"].as_str())
                .unwrap_or("the pull failed")
                .to_string();
            return Err(CliError::Daemon(text));
        }
        let id = msg["id"].as_str().unwrap_or("");
        let status = msg["status"].as_str().unwrap_or("");
        let stream = msg["stream"].as_str();
        let detail = msg.get("progressDetail");
        let bar = detail.map(progress_bar).unwrap_or_default();
        let text = match (id, bar.is_empty()) {
            ("", _) => status.to_string(),
            (id, true) => format!("{id}: {status}"),
            (id, false) => format!("{id}: {status} {bar}"),
        };
        // A layer's line: it stays on screen and is redrawn in place.
        if !id.is_empty() && detail.is_some() {
            if !self.tty {
                // A bar means nothing in a log: only the events count.
                return Ok(if bar.is_empty() {
                    format!("{text}\n")
                } else {
                    String::new()
                });
            }
            let mut out = String::new();
            let index = match self.lines.iter().position(|l| l == id) {
                Some(i) => i,
                None => {
                    self.lines.push(id.to_string());
                    out.push('\n');
                    self.lines.len() - 1
                }
            };
            let up = self.lines.len() - index;
            out.push_str(&format!("\x1b[{up}A\x1b[2K\r{text}\r\x1b[{up}B"));
            return Ok(out);
        }
        // Anything else ends the block of layer lines.
        self.lines.clear();
        if let Some(s) = stream {
            return Ok(s.to_string());
        }
        if text.is_empty() {
            return Ok(String::new());
        }
        Ok(if self.tty {
            format!("\x1b[2K\r{text}\n")
        } else {
            format!("{text}\n")
        })
    }
}

/// `[=====>        ]  1.2MB/3.4MB`, or nothing without a total.
fn progress_bar(detail: &Value) -> String {
    let current = detail["current"].as_u64().unwrap_or(0);
    let total = detail["total"].as_u64().unwrap_or(0);
    if total == 0 {
        return if current > 0 {
            human_size(current as f64)
        } else {
            String::new()
        };
    }
    let filled = (current.min(total) * BAR_WIDTH / total) as usize;
    let bar = if filled as u64 >= BAR_WIDTH {
        "=".repeat(BAR_WIDTH as usize + 1)
    } else {
        format!(
            "{}>{}",
            "=".repeat(filled),
            " ".repeat(BAR_WIDTH as usize - filled)
        )
    };
    format!(
        "[{bar}] {:>8}/{}",
        human_size(current as f64),
        human_size(total as f64)
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests fail loudly on purpose
mod tests {
    use super::*;
    use serde_json::json;

    fn all(d: &mut Display, msgs: &[Value]) -> String {
        msgs.iter()
            .map(|m| d.show(m).expect("no error"))
            .collect::<Vec<_>>()
            .concat()
    }

    fn pull() -> Vec<Value> {
        vec![
            json!({"status": "Pulling from busybox", "id": "latest"}),
            json!({"status": "Pulling fs layer", "progressDetail": {}, "id": "aaaaaaaaaaaa"}),
            json!({"status": "Pulling fs layer", "progressDetail": {}, "id": "bbbbbbbbbbbb"}),
            json!({"status": "Already exists", "progressDetail": {}, "id": "bbbbbbbbbbbb"}),
            json!({"status": "Downloading", "progressDetail": {"current": 1_200_000, "total": 3_400_000}, "id": "aaaaaaaaaaaa"}),
            json!({"status": "Download complete", "progressDetail": {}, "id": "aaaaaaaaaaaa"}),
            json!({"status": "Pull complete", "progressDetail": {}, "id": "aaaaaaaaaaaa"}),
            json!({"status": "Digest: sha256:1234"}),
            json!({"status": "Status: Downloaded newer image for reg:5000/busybox:latest"}),
        ]
    }

    #[test]
    fn plain_output_is_one_line_per_event_without_bars() {
        let mut d = Display::new(false);
        assert_eq!(
            all(&mut d, &pull()),
            "latest: Pulling from busybox\n\
             aaaaaaaaaaaa: Pulling fs layer\n\
             bbbbbbbbbbbb: Pulling fs layer\n\
             bbbbbbbbbbbb: Already exists\n\
             aaaaaaaaaaaa: Download complete\n\
             aaaaaaaaaaaa: Pull complete\n\
             Digest: sha256:1234\n\
             Status: Downloaded newer image for reg:5000/busybox:latest\n"
        );
    }

    #[test]
    fn a_terminal_redraws_each_layer_in_place() {
        let mut d = Display::new(true);
        let msgs = pull();
        assert_eq!(
            d.show(&msgs[0]).unwrap(),
            "\x1b[2K\rlatest: Pulling from busybox\n"
        );
        // A new layer takes a new line (the newline), then is drawn on it.
        assert_eq!(
            d.show(&msgs[1]).unwrap(),
            "\n\x1b[1A\x1b[2K\raaaaaaaaaaaa: Pulling fs layer\r\x1b[1B"
        );
        assert_eq!(
            d.show(&msgs[2]).unwrap(),
            "\n\x1b[1A\x1b[2K\rbbbbbbbbbbbb: Pulling fs layer\r\x1b[1B"
        );
        // The first layer is two lines up from the cursor.
        let bar = d.show(&msgs[4]).unwrap();
        assert_eq!(
            bar,
            format!(
                "\x1b[2A\x1b[2K\raaaaaaaaaaaa: Downloading [{}>{}]    1.2MB/3.4MB\r\x1b[2B",
                "=".repeat(17),
                " ".repeat(33)
            )
        );
        assert_eq!(
            d.show(&msgs[6]).unwrap(),
            "\x1b[2A\x1b[2K\raaaaaaaaaaaa: Pull complete\r\x1b[2B"
        );
        // Lines without an ID go below the block and end it.
        assert_eq!(d.show(&msgs[7]).unwrap(), "\x1b[2K\rDigest: sha256:1234\n");
        assert!(d.lines.is_empty());
    }

    #[test]
    fn a_full_bar_and_errors() {
        assert_eq!(
            progress_bar(&json!({"current": 10, "total": 10})),
            format!("[{}]      10B/10B", "=".repeat(51))
        );
        assert_eq!(progress_bar(&json!({})), "");
        let mut d = Display::new(false);
        let e = d
            .show(&json!({"errorDetail": {"message": "manifest unknown"}, "error": "manifest unknown"}))
            .unwrap_err();
        assert_eq!(e, CliError::Daemon("manifest unknown".into()));
        // `docker load`'s stream lines pass through.
        assert_eq!(
            d.show(&json!({"stream": "Loaded image: x\n"})).unwrap(),
            "Loaded image: x\n"
        );
    }
}
