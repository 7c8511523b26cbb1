//! Following a log as it grows (SPEC §10 `tail -f`, `logs`): every byte
//! appended to the stream after a starting point, in order, none lost or
//! repeated, across rotations by rename, truncation, and a file that only
//! appears later.
//!
//! A [`Follower`] holds the file it reads open, with its offset, and is
//! polled: [`Follower::read`] returns what was appended since the last call.
//! Holding the descriptor is what makes rotation exact: when `F` is renamed
//! to `F.1` the bytes written before the rename are still in the file we
//! hold. Each time the follower has read its file to the end it checks
//! whether the path now names another file; if so, the rename has happened,
//! so every byte the writer put in the old file is there: it reads the old
//! file to its end once more and only then moves to the old file's
//! successor from offset 0. The successor is found by inode rather than
//! assumed to be `F`: if several rotations happened between two polls, the
//! old file now sits at some `F.k` and its successor at `F.k-1`, which is
//! read in turn, so a fast writer with small files loses nothing as long as
//! its backups are not deleted before the follower gets to them.
//!
//! A child that writes its file directly (rotation off) keeps writing the
//! renamed file after an external logrotate until it is restarted, while
//! the new `F` stays empty. So the file left behind at a switch stays
//! watched too: whatever is appended to it later is returned as well (until
//! it is deleted or the next switch replaces it). The daemon's own writer
//! never writes a file after renaming it, so for its files this finds
//! nothing and costs one `fstat` per poll.
//!
//! A file that got shorter than the offset was truncated in place (`clear`,
//! or a rotation with no backups): reading restarts at 0. (A truncation
//! followed, before the next poll, by writes past the old offset cannot be
//! told from appends; polls are 25 ms apart in the server, so this takes a
//! clear and a burst in the same instant.) A path with nothing there yet is
//! polled until a file appears, then read from its start.
//!
//! Text is decoded as UTF-8 with invalid bytes replaced by U+FFFD; the bytes
//! of a character cut by the end of a read (or by a rotation) are held back
//! until the rest arrives, so no chunk ever ends inside a character.
//!
//! A [`Follower`] does blocking file IO and has no notion of time. The
//! [`Poller`] is what drives them in the daemon: one thread polls every
//! follower of every follow every [`POLL`] ([`IDLE_POLL`] once all is
//! quiet), and hands what it reads to each
//! follow through a small bounded channel. One thread rather than a task
//! (or a blocking-pool job) per follow and poll: two hundred idle follows
//! then cost two `fstat`s each per poll and one wake-up in all, instead of
//! thousands of thread hand-offs a second. The thread exists only while
//! something is followed. It reads a follower only when its follow's
//! channel has room, so a follow whose client is slow holds at most
//! [`QUEUED`] chunks in memory; the rest waits in the file.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc;

use super::tail::{backup_path, file_id, FileId, MAX_BACKUPS};

/// How often the poller looks for appended output when nothing is pending.
/// A line reaches a follow within this plus a read, well inside the 100 ms
/// SPEC §10 promises. Polling, rather than inotify, works the same for files
/// the daemon writes, files a child writes directly, renames by an external
/// logrotate, files that appear later and any filesystem.
pub const POLL: Duration = Duration::from_millis(25);

/// The poll interval once nothing has been read for [`QUIET_AFTER`]: half
/// the cost for idle follows, and still a line within 100 ms.
pub const IDLE_POLL: Duration = Duration::from_millis(50);

/// How long without output before polls slow down to [`IDLE_POLL`].
pub const QUIET_AFTER: Duration = Duration::from_secs(1);

/// Bytes read from one file per turn, and the most one chunk carries; a
/// file with more is read again at once, in turn with the others.
pub const CHUNK: usize = 32 * 1024;

/// Chunks a follow may have waiting for its consumer.
pub const QUEUED: usize = 8;

/// Most text one batch carries (a follow of many files gets one batch per
/// turn, so a full queue never starves the files late in its list).
pub const BATCH: usize = 256 * 1024;

/// Text read for a follow in one turn: which of its followers (by index)
/// and the text, each follower's pieces in order.
pub type Output = Vec<(usize, String)>;

/// The daemon's one polling thread for every follow (cheap to clone).
#[derive(Clone, Default)]
pub struct Poller {
    /// The follows, and whether the thread runs.
    shared: Arc<Mutex<Polled>>,
}

#[derive(Default)]
struct Polled {
    /// Follows added since the thread last took them.
    added: Vec<Watch>,
    /// Whether the polling thread is alive (it ends when nothing is left).
    running: bool,
}

/// One follow as the poller holds it.
struct Watch {
    /// Its files.
    followers: Vec<Follower>,
    /// Where their text goes; closed when the follow ends.
    out: mpsc::Sender<Output>,
    /// The follower read first next turn (turns rotate, for fairness).
    next: usize,
}

impl Poller {
    /// Polls `followers` until the returned receiver is dropped; their text
    /// comes out in order, tagged with each follower's index.
    pub fn watch(&self, followers: Vec<Follower>) -> io::Result<mpsc::Receiver<Output>> {
        let (out, chunks) = mpsc::channel(QUEUED);
        let mut polled = self.lock();
        polled.added.push(Watch {
            followers,
            out,
            next: 0,
        });
        if !polled.running {
            let shared = self.shared.clone();
            std::thread::Builder::new()
                .name("follow".into())
                .spawn(move || poll(&shared))
                .inspect_err(|_| {
                    polled.added.pop();
                })?;
            polled.running = true;
        }
        Ok(chunks)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Polled> {
        // Holds only a list and a flag; a panic cannot leave them torn.
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the polling thread is alive (for tests: it must not be when
    /// nothing is followed).
    pub fn running(&self) -> bool {
        self.lock().running
    }
}

/// The polling thread: until no follow is left.
fn poll(shared: &Mutex<Polled>) {
    let mut watches: Vec<Watch> = Vec::new();
    let mut last_output = std::time::Instant::now();
    loop {
        {
            let mut polled = shared.lock().unwrap_or_else(PoisonError::into_inner);
            watches.append(&mut polled.added);
            watches.retain(|w| !w.out.is_closed());
            if watches.is_empty() {
                polled.running = false;
                return;
            }
        }
        let (mut more, mut read) = (false, false);
        for watch in &mut watches {
            let (m, r) = poll_watch(watch);
            more |= m;
            read |= r;
        }
        if read {
            last_output = std::time::Instant::now();
        }
        if !more {
            let quiet = last_output.elapsed() >= QUIET_AFTER;
            std::thread::sleep(if quiet { IDLE_POLL } else { POLL });
        }
    }
}

/// One turn of one follow: a read of each follower, starting with the one
/// after last turn's first, into one batch while the channel has room and
/// the batch is under [`BATCH`]. Returns whether something was left unread
/// though there was room, and whether anything was read.
fn poll_watch(watch: &mut Watch) -> (bool, bool) {
    let Ok(permit) = watch.out.try_reserve() else {
        // Full (the consumer is behind: the text waits in the file) or
        // closed (the follow ended; dropped at the next turn).
        return (false, false);
    };
    let n = watch.followers.len();
    let (mut more, mut bytes) = (false, 0);
    let mut batch = Vec::new();
    for k in 0..n {
        let i = (watch.next + k) % n;
        if bytes >= BATCH {
            more = true;
            break;
        }
        // An unreadable file (permissions changed) is tried again next turn.
        if let Ok(chunk) = watch.followers[i].read(CHUNK) {
            more |= chunk.more;
            if !chunk.text.is_empty() {
                bytes += chunk.text.len();
                batch.push((i, chunk.text));
            }
        }
    }
    watch.next = if n == 0 { 0 } else { (watch.next + 1) % n };
    let read = !batch.is_empty();
    if read {
        permit.send(batch);
    }
    (more, read)
}

/// The follower of one log path.
pub struct Follower {
    /// The configured path, `F`.
    path: PathBuf,
    /// The file being read (`F` or, after a rotation, one of its backups
    /// until it is drained), or None while nothing is there to read.
    current: Option<Reading>,
    /// The file read before the last switch, still written by a child that
    /// has not reopened its output since a rename.
    previous: Option<Reading>,
    /// The first bytes of a character whose end has not been read yet.
    carry: Vec<u8>,
    /// Run between reaching the end of the file and checking the path, so
    /// a test can put a write and a rotation exactly there.
    #[cfg(test)]
    at_eof: Option<Box<dyn FnMut() + Send>>,
}

/// An open file and how far it has been read.
struct Reading {
    /// The file, held open so a rename or an unlink cannot take it away.
    file: File,
    /// Its identity, to tell whether the path still names it.
    id: FileId,
    /// Bytes of it already returned.
    offset: u64,
}

/// What one [`Follower::read`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The text appended (possibly empty).
    pub text: String,
    /// Whether the read stopped at its limit with more to read: poll again
    /// at once rather than after a pause.
    pub more: bool,
}

impl Follower {
    /// Follows `path` from its current end: only what is appended from now
    /// on is returned. If nothing is there yet, the file that appears is
    /// read from its start.
    pub fn at_end(path: PathBuf) -> io::Result<Follower> {
        let current = match File::open(&path) {
            Ok(file) => {
                let meta = file.metadata()?;
                Some(Reading {
                    file,
                    id: file_id(&meta),
                    offset: meta.len(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        Ok(Follower {
            path,
            current,
            previous: None,
            carry: Vec::new(),
            #[cfg(test)]
            at_eof: None,
        })
    }

    /// The file and offset the follower starts from, for
    /// [`super::tail::last_lines_before`]: the text before it and what the
    /// follower returns join exactly.
    pub fn position(&self) -> Option<(&File, u64)> {
        self.current.as_ref().map(|r| (&r.file, r.offset))
    }

    /// The followed path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads what was appended since the last call, at most about `limit`
    /// bytes.
    pub fn read(&mut self, limit: usize) -> io::Result<Chunk> {
        let limit = limit.max(1);
        let mut bytes = std::mem::take(&mut self.carry);
        let held = bytes.len();
        let result = self.read_bytes(&mut bytes, limit + held);
        let more = match result {
            Ok(more) => more,
            // What was read before the error is returned, not lost; the
            // error comes back on the next call if it persists.
            Err(e) if bytes.len() == held => {
                self.carry = bytes;
                return Err(e);
            }
            Err(_) => true,
        };
        let complete = complete_prefix(&bytes);
        self.carry = bytes.split_off(complete);
        let text = match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        };
        Ok(Chunk { text, more })
    }

    /// Appends to `out` until it holds `limit` bytes (true: more to read)
    /// or everything appended so far is read (false).
    fn read_bytes(&mut self, out: &mut Vec<u8>, limit: usize) -> io::Result<bool> {
        if let Some(prev) = self.previous.as_mut() {
            let meta = prev.file.metadata()?;
            if meta.len() > prev.offset && drain(prev, out, limit)? {
                return Ok(true);
            }
            if meta.nlink() == 0 {
                // Deleted: nobody can open it to write any more.
                self.previous = None;
            }
        }
        // Each turn either returns or moves to a newer file; a bound in case
        // renames keep racing the walk.
        for _ in 0..64 {
            if self.current.is_none() {
                match open(&self.path)? {
                    Some(reading) => self.current = Some(reading),
                    None => return Ok(false),
                }
            }
            let Some(cur) = self.current.as_mut() else {
                return Ok(false);
            };
            let len = cur.file.metadata()?.len();
            if len < cur.offset {
                // Truncated in place: what is there now is new.
                cur.offset = 0;
            }
            if len > cur.offset && drain(cur, out, limit)? {
                return Ok(true);
            }
            #[cfg(test)]
            if let Some(hook) = self.at_eof.as_mut() {
                hook();
            }
            // At the end of this file. Does the path still name it?
            match fs::metadata(&self.path) {
                Ok(meta) if file_id(&meta) == cur.id => return Ok(false),
                // Renamed away and no new file yet, or removed: keep the
                // descriptor; a file that appears later is its successor.
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(e),
                Ok(_) => {}
            }
            // The path names another file: the rename is done, so the old
            // file holds everything written to it. Read it to its end
            // before moving on.
            if drain(cur, out, limit)? {
                return Ok(true);
            }
            let old = cur.id;
            match successor(&self.path, old)? {
                Some(next) => self.previous = self.current.replace(next),
                // Between a rename and the new file: stay on the old one,
                // whose successor the next poll looks for again (opening
                // `F` then could skip a file written and rotated meanwhile).
                None => return Ok(false),
            }
        }
        Ok(true)
    }
}

/// Opens `path` from its start, or None when nothing is there.
fn open(path: &Path) -> io::Result<Option<Reading>> {
    match File::open(path) {
        Ok(file) => {
            let id = file_id(&file.metadata()?);
            Ok(Some(Reading {
                file,
                id,
                offset: 0,
            }))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads `cur` from its offset to its end, or until `out` holds `limit`
/// bytes: true when the limit stopped it.
fn drain(cur: &mut Reading, out: &mut Vec<u8>, limit: usize) -> io::Result<bool> {
    const STEP: usize = 16 * 1024;
    loop {
        let room = limit.saturating_sub(out.len());
        if room == 0 {
            return Ok(true);
        }
        let start = out.len();
        out.resize(start + room.min(STEP), 0);
        let got = loop {
            match cur.file.read_at(&mut out[start..], cur.offset) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    out.truncate(start);
                    return Err(e);
                }
            }
        };
        out.truncate(start + got);
        cur.offset += got as u64;
        if got == 0 {
            return Ok(false);
        }
    }
}

/// The file written after `old`, which a rotation renamed away: the
/// backup one newer than the one `old` is now (`F.k-1`, or `F` when `old`
/// is `F.1`), opened from its start. When `old` is not among the backups
/// (deleted beyond `backups`, or moved elsewhere by an external logrotate)
/// the best guess is whatever `F` is now. None: the successor cannot be
/// told yet; the caller stays on `old` and asks again later.
///
/// A rotation may be under way meanwhile: it renames from the oldest down,
/// so at any moment one name in the chain may be missing (its file already
/// moved up, the next one not yet moved in), and every name may shift by
/// one between two looks. Hence the walk steps over one missing name, and a
/// find is only trusted when `old` is still where it was found after its
/// neighbour was opened.
fn successor(path: &Path, old: FileId) -> io::Result<Option<Reading>> {
    for _ in 0..3 {
        let Some(k) = find_backup(path, old)? else {
            continue;
        };
        let newer = if k == 1 {
            path.to_path_buf()
        } else {
            backup_path(path, k - 1)
        };
        let next = open(&newer)?;
        return match fs::metadata(backup_path(path, k)) {
            // Still where it was: `next` is its neighbour, or the neighbour
            // is not there yet (the gap of a rotation in progress, or `F`
            // between its rename and the new file): None, look again at
            // the next poll.
            Ok(meta) if file_id(&meta) == old => Ok(next),
            // Moved on meanwhile: look again at the next poll.
            _ => Ok(None),
        };
    }
    open(path)
}

/// Where `old` is among the backups: k for `F.k`.
fn find_backup(path: &Path, old: FileId) -> io::Result<Option<u32>> {
    let mut k = 1;
    while k <= MAX_BACKUPS {
        match fs::metadata(backup_path(path, k)) {
            Ok(meta) if file_id(&meta) == old => return Ok(Some(k)),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // One missing name may be a rotation's gap; two end the list.
                match fs::metadata(backup_path(path, k + 1)) {
                    Ok(meta) if file_id(&meta) == old => return Ok(Some(k + 1)),
                    Ok(_) => k += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
        k += 1;
    }
    Ok(None)
}

/// The length of the longest prefix of `bytes` that does not end inside a
/// UTF-8 character: the bytes after it are the start of a character whose
/// other bytes have not been read yet. Invalid bytes count as complete (they
/// become U+FFFD).
fn complete_prefix(bytes: &[u8]) -> usize {
    let len = bytes.len();
    for back in 1..=len.min(3) {
        let byte = bytes[len - back];
        if byte & 0xC0 == 0x80 {
            continue; // a continuation byte: its lead is further back
        }
        let width = match byte {
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => 1, // ASCII or a byte that never starts a character
        };
        return if width > back { len - back } else { len };
    }
    len
}

#[cfg(test)]
mod tests {
    use super::super::tail::tests::scratch;
    use super::*;
    use std::io::Write as _;

    /// Writes a log the way the daemon's writer does: appends to `F`, and
    /// rotates by renaming `F.k` to `F.k+1` and `F` to `F.1`, then creating
    /// a new `F`.
    struct Writer {
        path: PathBuf,
        file: File,
        backups: u32,
        /// Backups on disk now (`F.1` … `F.existing`).
        existing: u32,
    }

    impl Writer {
        fn new(path: &Path, backups: u32) -> Writer {
            Writer {
                path: path.to_path_buf(),
                file: append(path),
                backups,
                existing: 0,
            }
        }

        fn write(&mut self, bytes: &[u8]) {
            self.file.write_all(bytes).unwrap();
        }

        fn rotate(&mut self) {
            if self.backups == 0 {
                self.file.set_len(0).unwrap();
                return;
            }
            if self.existing == self.backups {
                fs::remove_file(backup_path(&self.path, self.backups)).unwrap();
                self.existing -= 1;
            }
            for k in (1..=self.existing).rev() {
                fs::rename(backup_path(&self.path, k), backup_path(&self.path, k + 1)).unwrap();
            }
            fs::rename(&self.path, backup_path(&self.path, 1)).unwrap();
            self.existing += 1;
            self.file = append(&self.path);
        }
    }

    fn append(path: &Path) -> File {
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap()
    }

    /// Everything the follower has to give right now.
    fn all(f: &mut Follower) -> String {
        let mut text = String::new();
        loop {
            let chunk = f.read(1000).unwrap();
            text.push_str(&chunk.text);
            if !chunk.more {
                return text;
            }
        }
    }

    #[test]
    fn returns_what_is_appended_after_the_start_only() {
        let dir = scratch("append");
        let path = dir.join("out.log");
        let mut w = Writer::new(&path, 3);
        w.write(b"before\n");
        let mut f = Follower::at_end(path.clone()).unwrap();
        assert_eq!(f.position().map(|(_, at)| at), Some(7));
        assert_eq!(all(&mut f), "");
        w.write(b"one\n");
        assert_eq!(all(&mut f), "one\n");
        assert_eq!(all(&mut f), "", "nothing is repeated");
        w.write(b"two\nthr");
        w.write(b"ee\n");
        assert_eq!(all(&mut f), "two\nthree\n");
    }

    #[test]
    fn a_read_stops_at_its_limit_and_says_there_is_more() {
        let dir = scratch("limit");
        let path = dir.join("out.log");
        let mut w = Writer::new(&path, 3);
        let mut f = Follower::at_end(path.clone()).unwrap();
        w.write(&[b'x'; 2500]);
        let sizes: Vec<(usize, bool)> = (0..4)
            .map(|_| {
                let c = f.read(1000).unwrap();
                (c.text.len(), c.more)
            })
            .collect();
        assert_eq!(
            sizes,
            [(1000, true), (1000, true), (500, false), (0, false)]
        );
    }

    #[test]
    fn a_file_that_appears_later_is_read_from_its_start() {
        let dir = scratch("later");
        let path = dir.join("out.log");
        let mut f = Follower::at_end(path.clone()).unwrap();
        assert!(f.position().is_none());
        assert_eq!(all(&mut f), "");
        let mut w = Writer::new(&path, 3);
        w.write(b"hello\n");
        assert_eq!(all(&mut f), "hello\n");
    }

    #[test]
    fn follows_rotations_by_rename_one_or_several_between_reads() {
        let dir = scratch("rotate");
        let path = dir.join("out.log");
        let mut w = Writer::new(&path, 10);
        let mut f = Follower::at_end(path.clone()).unwrap();
        w.write(b"a1\na");
        assert_eq!(all(&mut f), "a1\na");
        // Written to the old file, then rotated before the next read.
        w.write(b"2\n");
        w.rotate();
        w.write(b"b1\n");
        assert_eq!(all(&mut f), "2\nb1\n");
        // Three rotations between two reads, one inside a line.
        w.write(b"b2\n");
        w.rotate();
        w.write(b"c1\nc");
        w.rotate();
        w.write(b"2\nd1\n");
        w.rotate();
        w.write(b"e1\n");
        assert_eq!(all(&mut f), "b2\nc1\nc2\nd1\ne1\n");
        // The rotated-away F with no new F yet: keep reading what we have.
        w.write(b"e2\n");
        fs::rename(&path, backup_path(&path, 99)).unwrap();
        assert_eq!(all(&mut f), "e2\n");
        w.file = append(&path);
        w.write(b"f1\n");
        assert_eq!(all(&mut f), "f1\n");
    }

    #[test]
    fn bytes_written_just_before_a_rename_are_read_from_the_old_file() {
        let dir = scratch("race");
        let path = dir.join("out.log");
        let w = std::sync::Arc::new(std::sync::Mutex::new(Writer::new(&path, 3)));
        let mut f = Follower::at_end(path.clone()).unwrap();
        w.lock().unwrap().write(b"a\n");
        // After the follower read "a" to the end of the file and before it
        // looks at the path: one more write, then the rotation.
        let hooked = w.clone();
        let mut once = true;
        f.at_eof = Some(Box::new(move || {
            if std::mem::take(&mut once) {
                let mut w = hooked.lock().unwrap();
                w.write(b"b\n");
                w.rotate();
                w.write(b"c\n");
            }
        }));
        assert_eq!(all(&mut f), "a\nb\nc\n");
    }

    #[test]
    fn a_child_writing_a_renamed_file_directly_is_still_followed() {
        let dir = scratch("logrotate");
        let path = dir.join("out.log");
        // The child's own descriptor, opened before the logrotate.
        let mut child = append(&path);
        let mut f = Follower::at_end(path.clone()).unwrap();
        child.write_all(b"one\n").unwrap();
        assert_eq!(all(&mut f), "one\n");
        // logrotate with `create`: rename, then a new empty F.
        fs::rename(&path, backup_path(&path, 1)).unwrap();
        drop(append(&path));
        child.write_all(b"two\n").unwrap();
        assert_eq!(all(&mut f), "two\n");
        child.write_all(b"three\n").unwrap();
        assert_eq!(all(&mut f), "three\n");
        // Restarted, the child writes the new F.
        let mut child = append(&path);
        child.write_all(b"four\n").unwrap();
        assert_eq!(all(&mut f), "four\n");
        assert_eq!(all(&mut f), "");
    }

    #[test]
    fn a_truncated_file_is_read_again_from_its_start() {
        let dir = scratch("truncate");
        let path = dir.join("out.log");
        let mut w = Writer::new(&path, 0);
        let mut f = Follower::at_end(path.clone()).unwrap();
        w.write(b"long line before the clear\n");
        assert_eq!(all(&mut f), "long line before the clear\n");
        // `clear` (or a rotation with no backups) truncates in place; the
        // writer's O_APPEND carries on at the new end.
        fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        w.write(b"after\n");
        assert_eq!(all(&mut f), "after\n");
        w.write(b"more\n");
        assert_eq!(all(&mut f), "more\n");
    }

    #[test]
    fn a_character_is_never_split_between_chunks() {
        let dir = scratch("chars");
        let path = dir.join("out.log");
        let mut w = Writer::new(&path, 3);
        let mut f = Follower::at_end(path.clone()).unwrap();
        let snowman = "☃".as_bytes(); // three bytes
        w.write(&snowman[..1]);
        assert_eq!(all(&mut f), "");
        w.write(&snowman[1..2]);
        assert_eq!(all(&mut f), "");
        w.write(&snowman[2..]);
        assert_eq!(all(&mut f), "☃");
        // Cut by a rotation.
        w.write("é".as_bytes().get(..1).unwrap());
        w.rotate();
        w.write("é".as_bytes().get(1..).unwrap());
        assert_eq!(all(&mut f), "é");
        // Cut by the read limit.
        w.write("aé".as_bytes());
        assert_eq!(f.read(2).unwrap().text, "a");
        assert_eq!(f.read(2).unwrap().text, "é");
        // Invalid bytes become U+FFFD, and are not held back.
        w.write(b"\xff\xfe!\n");
        assert_eq!(all(&mut f), "\u{FFFD}\u{FFFD}!\n");
        assert_eq!(complete_prefix(b"ab\xc3"), 2);
        assert_eq!(complete_prefix(b"ab\xc3\xa9"), 4);
        assert_eq!(complete_prefix(b"\xf0\x9f\x98"), 0);
        assert_eq!(complete_prefix(b"\xf0\x9f\x98\x80"), 4);
        assert_eq!(complete_prefix(b"\x80\x80\x80\x80"), 4);
    }

    /// Writes `text` in pieces of varying sizes, rotating at `maxbytes`
    /// (splitting a piece there, as the daemon's writer does), and calls
    /// `between` after each piece.
    fn write_rotating(
        w: &mut Writer,
        text: &[u8],
        maxbytes: usize,
        mut between: impl FnMut(usize),
    ) {
        let mut size = 0;
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut at = 0;
        while at < text.len() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let piece = &text[at..text.len().min(at + 1 + (seed % 3000) as usize)];
            at += piece.len();
            let mut rest = piece;
            while !rest.is_empty() {
                let room = maxbytes - size;
                if room == 0 {
                    w.rotate();
                    size = 0;
                    continue;
                }
                let (now, later) = rest.split_at(rest.len().min(room));
                w.write(now);
                size += now.len();
                rest = later;
            }
            between(seed as usize);
        }
    }

    /// The same megabyte read at pseudo-random points between the writes,
    /// in reads of pseudo-random sizes: some reads see no rotation, some
    /// several (the successor walk through the backups).
    #[test]
    fn a_megabyte_read_between_writes_and_rotations_comes_back_exactly() {
        let dir = scratch("interleaved");
        let path = dir.join("out.log");
        let text: String = (0..100_000).map(|n| format!("line {n:06}\n")).collect();
        let mut w = Writer::new(&path, 300);
        let mut f = Follower::at_end(path.clone()).unwrap();
        let mut got = String::new();
        write_rotating(&mut w, text.as_bytes(), 5_000, |r| {
            if r % 7 == 0 {
                got.push_str(&f.read(1 + r % 9000).unwrap().text);
            }
        });
        got.push_str(&all(&mut f));
        assert_eq!(got.len(), text.len());
        assert!(
            got == text,
            "the followed text differs from what was written"
        );
    }

    #[test]
    fn the_poller_feeds_each_follow_in_order_and_stops_with_the_last() {
        let dir = scratch("poller");
        let (a, b) = (dir.join("a.log"), dir.join("b.log"));
        let mut wa = Writer::new(&a, 3);
        let mut wb = Writer::new(&b, 3);
        let poller = Poller::default();
        assert!(!poller.running(), "no thread before anything is followed");
        let both = vec![
            Follower::at_end(a.clone()).unwrap(),
            Follower::at_end(b.clone()).unwrap(),
        ];
        let mut chunks = poller.watch(both).unwrap();
        let mut only_b = poller
            .watch(vec![Follower::at_end(b.clone()).unwrap()])
            .unwrap();
        assert!(poller.running());
        wa.write(b"a1\n");
        wb.write(b"b1\n");
        let mut got = [String::new(), String::new()];
        let mut second = Some(b"a2\n");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while got != ["a1\na2\n", "b1\n"] {
            assert!(std::time::Instant::now() < deadline, "{got:?}");
            if let Ok(batch) = chunks.try_recv() {
                for (i, text) in batch {
                    got[i].push_str(&text);
                }
                if got[0] == "a1\n" {
                    if let Some(line) = second.take() {
                        wa.write(line);
                    }
                }
            } else {
                std::thread::sleep(POLL);
            }
        }
        let mut b_alone = String::new();
        while b_alone != "b1\n" {
            assert!(std::time::Instant::now() < deadline, "{b_alone:?}");
            match only_b.try_recv() {
                Ok(batch) => {
                    for (i, text) in batch {
                        assert_eq!(i, 0);
                        b_alone.push_str(&text);
                    }
                }
                Err(_) => std::thread::sleep(POLL),
            }
        }
        // A follow whose consumer does not take its chunks holds at most
        // QUEUED of them; the rest stays in the file until there is room.
        for n in 0..(QUEUED * 4) {
            wb.write(&vec![b'x'; CHUNK]);
            wb.write(format!("{n}\n").as_bytes());
        }
        let mut held = 0;
        while held < QUEUED {
            assert!(std::time::Instant::now() < deadline, "{held}");
            std::thread::sleep(POLL);
            held = QUEUED - only_b.capacity();
        }
        let mut rest = 0;
        while rest < QUEUED * 4 * (CHUNK + 2) {
            assert!(std::time::Instant::now() < deadline, "{rest}");
            match only_b.try_recv() {
                Ok(batch) => rest += batch.iter().map(|(_, t)| t.len()).sum::<usize>(),
                Err(_) => std::thread::sleep(POLL),
            }
        }
        drop(chunks);
        drop(only_b);
        while poller.running() {
            assert!(
                std::time::Instant::now() < deadline,
                "the poller never stopped"
            );
            std::thread::sleep(POLL);
        }
    }

    /// A megabyte of numbered lines, written in pieces that do not match
    /// lines while the file is rotated every 20 KB (inside lines too), read
    /// concurrently by a follower in small reads: what it returns is exactly
    /// what was written.
    #[test]
    fn a_megabyte_with_rotations_comes_back_exactly() {
        let dir = scratch("megabyte");
        let path = dir.join("out.log");
        let text: String = (0..100_000).map(|n| format!("line {n:06}\n")).collect();
        assert!(text.len() > 1 << 20);
        let written = text.clone();
        let mut w = Writer::new(&path, 200);
        let mut f = Follower::at_end(path.clone()).unwrap();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let done = done.clone();
            std::thread::spawn(move || {
                write_rotating(&mut w, written.as_bytes(), 20_000, |_| {});
                done.store(true, std::sync::atomic::Ordering::SeqCst);
            })
        };
        let mut got = String::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let finished = done.load(std::sync::atomic::Ordering::SeqCst);
            got.push_str(&f.read(4096).unwrap().text);
            if finished {
                // One more pass after the writer finished gets the rest.
                got.push_str(&all(&mut f));
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "writer never finished"
            );
        }
        writer.join().unwrap();
        assert_eq!(got.len(), text.len());
        assert!(
            got == text,
            "the followed text differs from what was written"
        );
    }
}
