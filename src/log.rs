//! The daemon log: one line per event, RFC 3339 timestamp first, to stderr
//! and, when configured, appended to a log file.
//!
//! A process-wide sink because every part of the daemon logs (supervisor,
//! server, hooks, watcher) and the lines must interleave in one order.
//!
//! Logging never blocks its caller (SPEC §17): the supervisor is one thread,
//! and a stderr pipe nobody reads, or a slow disk, must not stop it. So each
//! sink (stderr, the log file) has a writer thread fed by a bounded queue;
//! [`line`] only queues, and when a sink's queue is full the line is
//! dropped for that sink and counted. Once the writer has caught up (its
//! queue is empty) it logs `dropped N log lines (…)`, to every sink. One
//! lock orders the lines across sinks (the timestamp is taken under it, so
//! times never go backwards within a sink); it is held only to queue.
//! The writer takes every line queued so far and writes them with as few
//! `write`s as it can, each of whole lines and at most `PIPE_BUF` bytes
//! (unless one line is longer), so a line is never torn, not even by a
//! child that shares the daemon's stderr pipe.
//!
//! Waking a writer costs a futex call and, on a busy core, two context
//! switches; a crash loop logs three lines per restart. So the supervisor
//! actor logs inside a [`batch`]: lines queued on its thread meanwhile wake
//! their writer once, when the batch ends (before the actor's events reach
//! any connection, so a line is still on its way to its sink before anyone
//! hears of what it tells), or as soon as a sink holds [`WAKE_AT`] lines.
//! Lines logged outside a batch wake their writer at once.
//!
//! Every message is made exactly one line ([`escape`]): text from a client
//! or a hook could otherwise forge a line of its own.

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::VecDeque;
use std::fmt::{self, Write as _};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

/// Lines a sink holds while its writer is busy: enough for a burst (a start
/// of 1000 instances logs about 2000 lines at once), small enough
/// (≈ 0.5 MB) that a sink stuck for good costs little.
const QUEUE: usize = 4096;

/// In a batch, a sink holding this many lines wakes its writer anyway.
const WAKE_AT: usize = 256;

/// What one `write` of the writer carries at most (unless a single line is
/// longer): writes to a pipe up to this size are atomic.
const WRITE_AT_MOST: usize = 4096;

/// One formatted line, shared by the sinks' queues.
type Line = Arc<str>;

/// A sink's queue, shared by the loggers and its writer thread.
struct Queue {
    /// The lines, and whether the writer sleeps waiting for them.
    state: Mutex<QueueState>,
    /// Signalled when a sleeping writer has lines (or the sink closed).
    ready: Condvar,
}

struct QueueState {
    /// Lines not yet taken by the writer.
    lines: VecDeque<Line>,
    /// The writer waits on `ready` (only then is a wake needed).
    sleeping: bool,
    /// The sink was replaced: write what is left and end.
    closed: bool,
}

impl Queue {
    /// Wakes the writer if it sleeps and has something to do.
    fn wake(&self) {
        let st = lock(&self.state);
        if st.sleeping && (!st.lines.is_empty() || st.closed) {
            self.ready.notify_one();
        }
    }
}

/// What a sink's writer thread shares with the loggers.
struct Progress {
    /// How the sink is named in a `dropped` line.
    name: &'static str,
    /// Lines dropped since the last `dropped` line.
    dropped: AtomicU64,
    /// Lines the writer has taken off the queue and written (or failed to).
    written: Mutex<u64>,
    /// Signalled after each batch written, for [`flush`].
    wrote: Condvar,
}

/// The logging side of one sink.
struct Sink {
    /// The writer thread's queue.
    queue: Arc<Queue>,
    /// Lines accepted into the queue so far: [`flush`] waits for `written`
    /// to reach it.
    queued: u64,
    progress: Arc<Progress>,
    /// Lines queued in a batch that have not woken the writer yet.
    unwoken: bool,
}

impl Sink {
    /// Starts a writer thread for `out`; None if no thread can be started.
    fn spawn(name: &'static str, out: impl Write + Send + 'static) -> Option<Sink> {
        let queue = Arc::new(Queue {
            state: Mutex::new(QueueState {
                lines: VecDeque::new(),
                sleeping: false,
                closed: false,
            }),
            ready: Condvar::new(),
        });
        let progress = Arc::new(Progress {
            name,
            dropped: AtomicU64::new(0),
            written: Mutex::new(0),
            wrote: Condvar::new(),
        });
        let (q, shared) = (Arc::clone(&queue), Arc::clone(&progress));
        std::thread::Builder::new()
            .name(format!("log-{}", name.replace(' ', "-")))
            .spawn(move || write_lines(&q, out, &shared))
            .ok()?;
        Some(Sink {
            queue,
            queued: 0,
            progress,
            unwoken: false,
        })
    }

    /// Queues `line` unless the queue is full (then counts it as dropped);
    /// whether it was queued. In a batch (`defer`), the writer is woken
    /// later by [`Sink::wake`] unless the queue holds [`WAKE_AT`] lines.
    fn offer(&mut self, line: &Line, defer: bool) -> bool {
        let mut st = lock(&self.queue.state);
        if st.lines.len() >= QUEUE {
            self.progress.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        st.lines.push_back(Arc::clone(line));
        self.queued += 1;
        if st.sleeping && (!defer || st.lines.len() >= WAKE_AT) {
            self.queue.ready.notify_one();
            self.unwoken = false;
        } else if st.sleeping {
            self.unwoken = true;
        }
        true
    }

    /// Wakes the writer for lines a batch queued.
    fn wake(&mut self) {
        if std::mem::take(&mut self.unwoken) {
            self.queue.wake();
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        lock(&self.queue.state).closed = true;
        self.queue.wake();
    }
}

/// The writer thread: writes queued lines in order; reports drops once the
/// queue is empty, that is, once the sink took everything it was given.
fn write_lines(queue: &Queue, mut out: impl Write, progress: &Progress) {
    let mut taken: Vec<Line> = Vec::new();
    let mut buf: Vec<u8> = Vec::with_capacity(WRITE_AT_MOST);
    loop {
        {
            let mut st = lock(&queue.state);
            if st.lines.is_empty() {
                drop(st);
                let dropped = progress.dropped.swap(0, Ordering::Relaxed);
                if dropped > 0 {
                    self::line(format_args!(
                        "dropped {dropped} log lines ({} could not take them)",
                        progress.name
                    ));
                }
                st = lock(&queue.state);
                while st.lines.is_empty() && !st.closed {
                    st.sleeping = true;
                    st = queue.ready.wait(st).unwrap_or_else(|e| e.into_inner());
                    st.sleeping = false;
                }
                if st.lines.is_empty() {
                    return;
                }
            }
            taken.extend(st.lines.drain(..));
        }
        // A write error (stderr closed, disk full) is not a drop: there is
        // nothing to tell, and telling it would be one more failed write.
        for line in taken.iter() {
            if !buf.is_empty() && buf.len() + line.len() > WRITE_AT_MOST {
                let _ = out.write_all(&buf);
                buf.clear();
            }
            buf.extend_from_slice(line.as_bytes());
        }
        if !buf.is_empty() {
            let _ = out.write_all(&buf);
            buf.clear();
        }
        let n = taken.len() as u64;
        taken.clear();
        let mut written = lock(&progress.written);
        *written += n;
        progress.wrote.notify_all();
    }
}

thread_local! {
    /// Depth of the [`batch`]es open on this thread.
    static BATCH: Cell<u32> = const { Cell::new(0) };
}

/// Lines logged on this thread until the returned guard drops wake their
/// writers once, then (see the module header). Batches nest.
pub fn batch() -> Batch {
    BATCH.with(|b| b.set(b.get() + 1));
    Batch(())
}

/// An open [`batch`]; never held across an `.await` (other tasks of the
/// thread would log into it).
#[must_use]
pub struct Batch(());

impl Drop for Batch {
    fn drop(&mut self) {
        let depth = BATCH.with(|b| {
            let d = b.get().saturating_sub(1);
            b.set(d);
            d
        });
        if depth == 0 {
            let mut sinks = lock(&SINKS);
            if let Some(s) = sinks.stderr.as_mut() {
                s.wake();
            }
            if let Some((_, s)) = sinks.file.as_mut() {
                s.wake();
            }
        }
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
    let defer = BATCH.with(|b| b.get() > 0);
    if let Some(sink) = sinks.stderr.as_mut() {
        sink.offer(&text, defer);
    }
    if let Some((_, sink)) = sinks.file.as_mut() {
        sink.offer(&text, defer);
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
        /// Told each time a write starts (and blocks until `open`).
        entered: mpsc::Sender<()>,
        out: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _ = self.entered.send(());
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
        let (entered, writing) = mpsc::channel();
        let out = Arc::new(Mutex::new(Vec::new()));
        let mut sink = Sink::spawn(
            "test sink",
            Gate {
                open: gate,
                entered,
                out: Arc::clone(&out),
            },
        )
        .expect("writer thread");
        // The writer takes the first line and blocks in its write; then
        // QUEUE more fit, and the rest is dropped.
        let extra = 10;
        let total = 2 * QUEUE + extra;
        let t = Instant::now();
        assert!(sink.offer(&Line::from("0\n".to_string()), false));
        writing
            .recv_timeout(Duration::from_secs(10))
            .expect("the writer took the first line");
        let accepted: Vec<usize> = std::iter::once(0)
            .chain((1..total).filter(|i| sink.offer(&Line::from(format!("{i}\n")), false)))
            .collect();
        assert!(t.elapsed() < Duration::from_secs(5), "offering blocked");
        let dropped = sink.progress.dropped.load(Ordering::Relaxed);
        assert!(dropped >= extra as u64, "{dropped}");
        assert!(accepted.len() > QUEUE, "{}", accepted.len());
        assert_eq!(sink.queued, accepted.len() as u64);
        assert_eq!(sink.queued + dropped, total as u64);
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

    /// Waits until the writer has written `n` lines (or 10 s).
    fn written_reaches(sink: &Sink, n: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut written = lock(&sink.progress.written);
        while *written < n && Instant::now() < deadline {
            written = sink
                .progress
                .wrote
                .wait_timeout(written, Duration::from_millis(20))
                .map(|(w, _)| w)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        *written
    }

    /// A sink that keeps what it is given.
    struct Keep(Arc<Mutex<Vec<u8>>>);

    impl Write for Keep {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            lock(&self.0).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn writer_sleeps(sink: &Sink) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !lock(&sink.queue.state).sleeping && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_batch_wakes_the_writer_once_at_its_end_or_when_lines_pile_up() {
        let out = Arc::new(Mutex::new(Vec::new()));
        let mut sink = Sink::spawn("batch sink", Keep(Arc::clone(&out))).expect("writer");
        writer_sleeps(&sink);
        for i in 0..3 {
            assert!(sink.offer(&Line::from(format!("{i}\n")), true));
        }
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            *lock(&sink.progress.written),
            0,
            "woken before the batch ended"
        );
        sink.wake();
        assert_eq!(written_reaches(&sink, 3), 3);
        assert_eq!(String::from_utf8_lossy(&lock(&out)), "0\n1\n2\n");
        // A batch that logs a lot wakes the writer before it ends.
        writer_sleeps(&sink);
        for i in 0..WAKE_AT {
            assert!(sink.offer(&Line::from(format!("{i}\n")), true));
        }
        assert_eq!(
            written_reaches(&sink, 3 + WAKE_AT as u64),
            3 + WAKE_AT as u64
        );
        // Outside a batch every line wakes it.
        writer_sleeps(&sink);
        assert!(sink.offer(&Line::from("last\n"), false));
        assert_eq!(
            written_reaches(&sink, 4 + WAKE_AT as u64),
            4 + WAKE_AT as u64
        );
    }

    #[test]
    fn the_writer_joins_lines_into_whole_line_writes_of_at_most_pipe_buf() {
        struct Sizes(Arc<Mutex<Vec<usize>>>, mpsc::Receiver<()>);
        impl Write for Sizes {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                let _ = self.1.recv();
                lock(&self.0).push(buf.len());
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let (open, gate) = mpsc::channel();
        let mut sink = Sink::spawn("size sink", Sizes(Arc::clone(&sizes), gate)).expect("writer");
        writer_sleeps(&sink);
        // 100-byte lines, queued while the writer sleeps: one wake, then
        // writes of 40 whole lines (4,000 bytes) each.
        let line: Line = format!("{}\n", "x".repeat(99)).into();
        for _ in 0..200 {
            assert!(sink.offer(&line, true));
        }
        for _ in 0..200 {
            let _ = open.send(());
        }
        sink.wake();
        assert_eq!(written_reaches(&sink, 200), 200);
        let sizes = lock(&sizes).clone();
        assert!(
            sizes.iter().all(|&n| n % 100 == 0 && n <= WRITE_AT_MOST),
            "{sizes:?}"
        );
        assert_eq!(sizes.iter().sum::<usize>(), 200 * 100);
        assert!(sizes.len() <= 6, "{sizes:?}");
    }
}
