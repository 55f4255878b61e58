//! `service logs`: Docker's multiplexed stream decoded frame by frame, and
//! each line prefixed the docker CLI's way (`web.1.abcd1234efgh@node1    | `).

/// One decoded frame: stream 1 (stdout) or 2 (stderr) and its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub stream: u8,
    pub payload: Vec<u8>,
}

/// Incremental decoder: feed chunks as they arrive, take whole frames out
/// (a chunk may end in the middle of a header or a payload).
#[derive(Default)]
pub struct Demux {
    buf: Vec<u8>,
}

/// Header: stream byte, three zero bytes, big-endian u32 length.
const HEADER_LEN: usize = 8;

impl Demux {
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next whole frame, or None until more bytes arrive.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, String> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let stream = self.buf[0];
        if !matches!(stream, 0..=2) {
            return Err(format!(
                "unexpected stream byte {stream} in the log stream (expected 1 or 2): is the agent a different version?"
            ));
        }
        let len = u32::from_be_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]]) as usize;
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let payload = self.buf[HEADER_LEN..HEADER_LEN + len].to_vec();
        self.buf.drain(..HEADER_LEN + len);
        Ok(Some(Frame { stream, payload }))
    }

    /// Bytes left over at the end of the stream (a cut-off frame).
    pub fn leftover(&self) -> usize {
        self.buf.len()
    }
}

/// A payload split into its parts: `[timestamp ]details message`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogLine {
    pub timestamp: Option<String>,
    pub node_id: String,
    pub service_id: String,
    pub task_id: String,
    pub message: String,
}

/// Splits a payload as the docker CLI does: the timestamp (when asked for)
/// and the details are the first space-separated fields.
pub fn parse_payload(payload: &str, timestamps: bool) -> Result<LogLine, String> {
    let mut rest = payload;
    let mut line = LogLine::default();
    if timestamps {
        let (ts, r) = rest
            .split_once(' ')
            .ok_or_else(|| format!("invalid context in log message: {payload}"))?;
        line.timestamp = Some(ts.to_string());
        rest = r;
    }
    let (details, msg) = rest.split_once(' ').unwrap_or((rest, ""));
    for kv in details.split(',') {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("invalid details in log message: {payload}"))?;
        match k {
            "com.docker.swarm.node.id" => line.node_id = v.to_string(),
            "com.docker.swarm.service.id" => line.service_id = v.to_string(),
            "com.docker.swarm.task.id" => line.task_id = v.to_string(),
            _ => {}
        }
    }
    line.message = msg.to_string();
    Ok(line)
}

/// How to name a task in the prefix.
pub struct Prefix<'a> {
    pub service_name: &'a str,
    /// Slot, or None for a global service's task (named after its node).
    pub slot: Option<i64>,
    /// Digits of the largest slot, so prefixes line up (docker's padding).
    pub width: usize,
    pub node_name: &'a str,
    pub no_task_ids: bool,
    pub no_trunc: bool,
}

/// `web.1.abcd1234efgh@node1    | [timestamp ]message` (or the bare message
/// with `--raw`, keeping the timestamp).
pub fn format_line(line: &LogLine, p: &Prefix<'_>, raw: bool) -> String {
    let mut out = String::new();
    if !raw {
        let slot = match p.slot {
            Some(s) if s != 0 => s.to_string(),
            _ => line.node_id.clone(),
        };
        let mut name = format!("{}.{slot}", p.service_name);
        if !p.no_task_ids {
            let id = if p.no_trunc {
                line.task_id.as_str()
            } else {
                super::tasks::trunc_id(&line.task_id)
            };
            name.push('.');
            name.push_str(id);
        }
        let pad = p.width.saturating_sub(slot.len());
        out.push_str(&name);
        out.extend(std::iter::repeat_n(' ', pad));
        out.push('@');
        out.push_str(p.node_name);
        out.push_str("    | ");
    }
    if let Some(ts) = &line.timestamp {
        out.push_str(ts);
        out.push(' ');
    }
    out.push_str(&line.message);
    out
}
