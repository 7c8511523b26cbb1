//! The daemon log: one line per event, RFC 3339 timestamp first, to stderr
//! and, when configured, appended to a log file.
//!
//! A process-wide sink because every part of the daemon logs (supervisor,
//! server, hooks, watcher) and the lines must interleave in one order.
//!
//! Logging never blocks its caller (SPEC §17): the supervisor is one thread,
//! and a stderr pipe nobody reads, or a slow disk, must not stop it. So each
//! sink (stderr, the log file) has a writer thread fed by a bounded queue;
//! [`line`] only `try_send`s, and when a sink's queue is full the line is
//! dropped for that sink and counted. Once the writer has caught up (its
//! queue is empty) it logs `dropped N log lines (…)`, to every sink. One
//! lock orders the lines across sinks (the timestamp is taken under it, so
//! times never go backwards within a sink); it is held only for `try_send`.
//! The writer writes each line with a single `write_all` of the whole line,
//! and is the only writer of its sink, so lines are never torn.
//!
//! Every message is made exactly one line ([`escape`]): text from a client
//! or a hook could otherwise forge a line of its own.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

/// Lines a sink holds while its writer is busy: enough for a burst (a start
/// of 1000 instances logs about 2000 lines at once), small enough
/// (≈ 0.5 MB) that a sink stuck for good costs little.
const QUEUE: usize = 4096;

/// One formatted line, shared by the sinks' queues.
type Line = Arc<str>;

/// What a sink's writer thread shares with the loggers.
struct Progress {
    /// How the sink is named in a `dropped` line.
    name: &'static str,
    /// Lines dropped since the last `dropped` line.
    dropped: AtomicU64,
    /// Lines the writer has taken off the queue and written (or failed to).
    written: Mutex<u64>,
    /// Signalled after each line written, for [`flush`].
    wrote: Condvar,
}

/// The logging side of one sink.
struct Sink {
    /// The writer thread's queue.
    tx: SyncSender<Line>,
    /// Lines accepted into the queue so far: [`flush`] waits for `written`
    /// to reach it.
    queued: u64,
    progress: Arc<Progress>,
}

impl Sink {
    /// Starts a writer thread for `out`; None if no thread can be started.
    fn spawn(name: &'static str, out: impl Write + Send + 'static) -> Option<Sink> {
        let (tx, rx) = sync_channel(QUEUE);
        let progress = Arc::new(Progress {
            name,
            dropped: AtomicU64::new(0),
            written: Mutex::new(0),
            wrote: Condvar::new(),
        });
        let shared = Arc::clone(&progress);
        std::thread::Builder::new()
            .name(format!("log-{}", name.replace(' ', "-")))
            .spawn(move || write_lines(rx, out, &shared))
            .ok()?;
        Some(Sink {
            tx,
            queued: 0,
            progress,
        })
    }

    /// Queues `line` unless the queue is full (then counts it as dropped);
    /// whether it was queued.
    fn offer(&mut self, line: &Line) -> bool {
        match self.tx.try_send(Arc::clone(line)) {
            Ok(()) => {
                self.queued += 1;
                true
            }
            Err(TrySendError::Full(_)) => {
                self.progress.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
            // The writer is gone (it never returns while we hold its
            // sender, short of a panic): nothing to write to.
            Err(TrySendError::Disconnected(_)) => false,
        }
    }
}

/// The writer thread: writes queued lines in order; reports drops once the
/// queue is empty, that is, once the sink took everything it was given.
fn write_lines(rx: Receiver<Line>, mut out: impl Write, progress: &Progress) {
    loop {
        let line = match rx.try_recv() {
            Ok(line) => line,
            Err(TryRecvError::Empty) => {
                let dropped = progress.dropped.swap(0, Ordering::Relaxed);
                if dropped > 0 {
                    self::line(format_args!(
                        "dropped {dropped} log lines ({} could not take them)",
                        progress.name
                    ));
                }
                match rx.recv() {
                    Ok(line) => line,
                    Err(_) => return,
                }
            }
            Err(TryRecvError::Disconnected) => return,
        };
        // A write error (stderr closed, disk full) is not a drop: there is
        // nothing to tell, and telling it would be one more failed write.
        let _ = out.write_all(line.as_bytes());
        let mut written = lock(&progress.written);
        *written += 1;
        progress.wrote.notify_all();
    }
}

/// Every sink, under the one lock that orders lines.
struct Sinks {
    /// None until the first line (no thread before the daemon forks its
    /// guard), or when no writer thread could be started.
    stderr: Option<Sink>,
    /// Whether starting the stderr writer was tried already.
    stderr_tried: bool,
    /// The log file (absolute path) and its writer.
    file: Option<(PathBuf, Sink)>,
}

static SINKS: Mutex<Sinks> = Mutex::new(Sinks {
    stderr: None,
    stderr_tried: false,
    file: None,
});

/// A panic elsewhere while holding a log lock leaves nothing inconsistent
/// that matters more than logging on.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts appending log lines to `path` (creating its folder).
pub fn set_file(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let file: File = OpenOptions::new().create(true).append(true).open(path)?;
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let sink = Sink::spawn("the log file", file)
        .ok_or_else(|| std::io::Error::other("cannot start the log file's writer thread"))?;
    // A previous file's writer finishes its queue and ends once its sender
    // is dropped here.
    lock(&SINKS).file = Some((abs, sink));
    Ok(())
}

/// The log file in use, if any (the watcher ignores it).
pub fn file_path() -> Option<PathBuf> {
    lock(&SINKS).file.as_ref().map(|(p, _)| p.clone())
}

/// Writes one timestamped line (escaped to stay one line); never blocks on
/// a sink.
pub fn line(args: fmt::Arguments<'_>) {
    let message = fmt::format(args);
    let message = escape(&message);
    let mut sinks = lock(&SINKS);
    let stamp = humantime::format_rfc3339_millis(SystemTime::now());
    let text: Line = format!("{stamp} {message}\n").into();
    if !sinks.stderr_tried {
        sinks.stderr_tried = true;
        sinks.stderr = Sink::spawn("stderr", std::io::stderr());
    }
    if let Some(sink) = sinks.stderr.as_mut() {
        sink.offer(&text);
    }
    if let Some((_, sink)) = sinks.file.as_mut() {
        sink.offer(&text);
    }
}

/// Waits, at most `timeout` in all, until every line logged so far has
/// been written to every sink; false if some sink did not get there (it is
/// stuck: its remaining lines are left behind).
pub fn flush(timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let targets: Vec<(Arc<Progress>, u64)> = {
        let sinks = lock(&SINKS);
        sinks
            .stderr
            .iter()
            .chain(sinks.file.iter().map(|(_, s)| s))
            .map(|s| (Arc::clone(&s.progress), s.queued))
            .collect()
    };
    let mut all = true;
    for (progress, target) in targets {
        let mut written = lock(&progress.written);
        while *written < target {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                all = false;
                break;
            }
            written = match progress.wrote.wait_timeout(written, left) {
                Ok((w, _)) => w,
                Err(e) => e.into_inner().0,
            };
        }
    }
    all
}

/// Makes `text` one line that shows what it held: `\n` and `\r` become
/// `\\n` and `\\r`, other C0 controls and DEL `\\xNN`; tabs and valid
/// non-ASCII text stay as they are.
pub fn escape(text: &str) -> Cow<'_, str> {
    fn needs(b: u8) -> bool {
        (b < 0x20 && b != b'\t') || b == 0x7f
    }
    if !text.bytes().any(needs) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c.is_ascii() && needs(c as u8) => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// `log!("spawned: '{}' with pid {}", name, pid)`.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => { $crate::log::line(format_args!($($arg)*)) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn escaping_keeps_a_message_on_one_line() {
        for (text, want) in [
            ("plain text", "plain text"),
            ("a\nb", "a\\nb"),
            ("a\r\nb", "a\\r\\nb"),
            ("tab\tstays", "tab\tstays"),
            ("nul\0bell\x07esc\x1b[31m", "nul\\x00bell\\x07esc\\x1b[31m"),
            ("del\x7f", "del\\x7f"),
            ("unit\x1fsep", "unit\\x1fsep"),
            ("héllo → ✓ 日本", "héllo → ✓ 日本"),
            ("é\nü", "é\\nü"),
            ("", ""),
            ("\n", "\\n"),
            ("back\\slash", "back\\slash"),
        ] {
            assert_eq!(escape(text), want, "{text:?}");
        }
        assert!(matches!(escape("no controls"), Cow::Borrowed(_)));
    }

    /// A sink whose writes wait until the test lets them through.
    struct Gate {
        open: mpsc::Receiver<()>,
        out: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _ = self.open.recv();
            lock(&self.out).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_sink_drops_and_counts_without_blocking_then_writes_in_order() {
        let (open, gate) = mpsc::channel();
        let out = Arc::new(Mutex::new(Vec::new()));
        let mut sink = Sink::spawn(
            "test sink",
            Gate {
                open: gate,
                out: Arc::clone(&out),
            },
        )
        .expect("writer thread");
        // The writer takes one line and blocks in write; QUEUE more fit.
        let extra = 10;
        let t = Instant::now();
        let accepted: Vec<usize> = (0..QUEUE + 1 + extra)
            .filter(|i| sink.offer(&Line::from(format!("{i}\n"))))
            .collect();
        assert!(t.elapsed() < Duration::from_secs(5), "offering blocked");
        // Depending on whether the writer took line 0 yet, 10 or 11 dropped.
        let dropped = sink.progress.dropped.load(Ordering::Relaxed);
        assert!(
            (extra as u64..=extra as u64 + 1).contains(&dropped),
            "{dropped}"
        );
        assert_eq!(sink.queued, accepted.len() as u64);
        assert_eq!(sink.queued + dropped, (QUEUE + 1 + extra) as u64);
        for _ in 0..sink.queued {
            let _ = open.send(());
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut written = lock(&sink.progress.written);
        while *written < sink.queued && Instant::now() < deadline {
            written = sink
                .progress
                .wrote
                .wait_timeout(written, Duration::from_millis(100))
                .map(|(w, _)| w)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        drop(written);
        let text = String::from_utf8(lock(&out).clone()).unwrap_or_default();
        let got: Vec<usize> = text.lines().filter_map(|l| l.parse().ok()).collect();
        let want = accepted;
        assert_eq!(got, want, "lines kept their order");
    }
}
