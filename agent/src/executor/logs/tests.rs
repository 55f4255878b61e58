use super::*;
use time::macros::datetime;

fn line(t: OffsetDateTime, s: Stream, text: &str) -> LogLine {
    LogLine {
        time: t,
        stream: s,
        line: text.into(),
    }
}

#[test]
fn encode_decode_round_trip() {
    let l = line(
        datetime!(2024-05-01 10:00:00.123456789 UTC),
        Stream::Stderr,
        "héllo \"quoted\" \\ tab\t",
    );
    let enc = l.encode();
    assert!(enc.ends_with(b"\n"));
    let text = String::from_utf8(enc.clone()).expect("utf8");
    assert!(
        text.starts_with(r#"{"t":"2024-05-01T10:00:00.123456789Z","s":"stderr","l":"#),
        "{text}"
    );
    assert_eq!(LogLine::decode(&enc[..enc.len() - 1]), Some(l));
}

#[test]
fn decode_skips_torn_and_foreign_lines() {
    assert_eq!(
        LogLine::decode(br#"{"t":"2024-05-01T10:00:00Z","s":"std"#),
        None
    );
    assert_eq!(LogLine::decode(b"plain text"), None);
    assert_eq!(
        LogLine::decode(br#"{"t":"yesterday","s":"stdout","l":"x"}"#),
        None
    );
}

#[test]
fn render_with_and_without_timestamps() {
    let l = line(datetime!(2024-05-01 10:00:00 UTC), Stream::Stdout, "hi");
    assert_eq!(l.render(false), b"hi\n");
    assert_eq!(l.render(true), b"2024-05-01T10:00:00Z hi\n");
}

#[test]
fn mux_frames_have_dockers_header() {
    let f = mux_frame(Stream::Stderr, b"abc");
    assert_eq!(f, vec![2, 0, 0, 0, 0, 0, 0, 3, b'a', b'b', b'c']);
    let mut both = mux_frame(Stream::Stdout, b"out\n");
    both.extend(mux_frame(Stream::Stderr, b""));
    let half = mux_frame(Stream::Stdout, b"partial");
    both.extend(&half[..5]);
    let (frames, used) = mux_decode(&both);
    assert_eq!(
        frames,
        vec![
            (Stream::Stdout, b"out\n".to_vec()),
            (Stream::Stderr, vec![])
        ]
    );
    assert_eq!(used, 12 + 8);
}

fn write_lines(path: &Path, n: usize, max: u64, files: usize) {
    let mut w = RotatingWriter::open(path, max, files).expect("open");
    for i in 0..n {
        let l = line(
            OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(i as i64),
            if i % 2 == 0 {
                Stream::Stdout
            } else {
                Stream::Stderr
            },
            &format!("line {i}"),
        );
        w.write_record(&l.encode()).expect("write");
    }
}

#[test]
fn rotation_keeps_max_files_and_read_goes_oldest_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.log");
    // Each record is ~60 bytes: 200-byte files hold 3 records.
    write_lines(&path, 20, 200, 3);
    assert!(path.exists());
    assert!(rotated(&path, 1).exists());
    assert!(rotated(&path, 2).exists());
    assert!(!rotated(&path, 3).exists(), "only 3 files kept");
    for f in files(&path) {
        let len = std::fs::metadata(&f).expect("stat").len();
        assert!(len <= 200, "{} is {len} bytes", f.display());
    }
    let all = read(&path, &LogOptions::default());
    let nums: Vec<usize> = all
        .iter()
        .map(|l| l.line.trim_start_matches("line ").parse().expect("number"))
        .collect();
    // Consecutive, ending with the last line written.
    assert_eq!(nums.last(), Some(&19));
    assert!(nums.windows(2).all(|w| w[1] == w[0] + 1), "{nums:?}");
    assert!(nums.len() >= 7 && nums.len() <= 9, "{nums:?}");
}

#[test]
fn read_filters_by_stream_since_and_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.log");
    write_lines(&path, 10, MAX_FILE_BYTES, MAX_FILES);
    let only_err = read(
        &path,
        &LogOptions {
            stdout: false,
            ..Default::default()
        },
    );
    assert_eq!(only_err.len(), 5);
    assert!(only_err.iter().all(|l| l.stream == Stream::Stderr));
    let since = read(
        &path,
        &LogOptions {
            since: Some(OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(7)),
            ..Default::default()
        },
    );
    assert_eq!(
        since.iter().map(|l| l.line.as_str()).collect::<Vec<_>>(),
        ["line 7", "line 8", "line 9"]
    );
    let tail = read(
        &path,
        &LogOptions {
            tail: Some(2),
            stderr: false,
            ..Default::default()
        },
    );
    assert_eq!(
        tail.iter().map(|l| l.line.as_str()).collect::<Vec<_>>(),
        ["line 6", "line 8"]
    );
    assert!(read(&dir.path().join("none.log"), &LogOptions::default()).is_empty());
}

async fn recv(rx: &mut tokio::sync::mpsc::Receiver<LogLine>) -> String {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a line within 5 s")
        .expect("channel open")
        .line
}

#[tokio::test]
async fn follow_sees_new_lines_across_rotation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.log");
    write_lines(&path, 2, 10_000, 3);
    let mut rx = follow(path.clone(), LogOptions::default());
    assert_eq!(recv(&mut rx).await, "line 0");
    assert_eq!(recv(&mut rx).await, "line 1");
    // Small files: the next writes rotate.
    let mut w = RotatingWriter::open(&path, 200, 3).expect("open");
    for i in 2..8 {
        let l = line(
            OffsetDateTime::now_utc(),
            Stream::Stdout,
            &format!("line {i}"),
        );
        w.write_record(&l.encode()).expect("write");
        // One rotation at a time between polls (two would skip a file).
        assert_eq!(recv(&mut rx).await, format!("line {i}"));
    }
}
