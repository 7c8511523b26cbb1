//! Reading the end of a log back (SPEC §10 `tail`/`logs`, §18): the last N
//! lines of a stream whose file `F` is rotated by rename into `F.1` (newest)
//! … `F.N`.
//!
//! The stream is the concatenation `F.N … F.1 F`, so when `F` holds fewer
//! lines than asked the read carries on backwards into `F.1`, `F.2`, …, and
//! a line that a rotation cut in two (it may fall inside a line) comes back
//! whole. Files are read backwards in fixed chunks with positioned reads,
//! and only what is kept is held: memory is bounded by the answer (itself
//! capped by `max_bytes`), never by the size of a file.
//!
//! A rotation may happen while we read. Every file read stays open until the
//! end, so its inode cannot be reused, and a backup that turns out to be a
//! file already read (it was renamed under us) is skipped: the answer is a
//! consistent tail of the stream as it was when `F` was opened, give or take
//! lines appended meanwhile. Missing files are an empty stream, not an error.

use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::{FileExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

/// Bytes read per system call, walking a file backwards.
const CHUNK: usize = 64 * 1024;

/// Backups looked at, at most (`F.1` … `F.1000`): far more than any config
/// keeps, and a bound on the walk whatever is on disk.
pub const MAX_BACKUPS: u32 = 1000;

/// What identifies an open file across renames: (device, inode).
pub type FileId = (u64, u64);

/// The identity of the file `meta` describes.
pub fn file_id(meta: &Metadata) -> FileId {
    (meta.dev(), meta.ino())
}

/// `F.k`: the k-th newest backup of the log at `path`.
pub fn backup_path(path: &Path, k: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{k}"));
    PathBuf::from(name)
}

/// The last `lines` lines of the log at `path` (reading back into its
/// backups), at most `max_bytes` of them, as UTF-8 with invalid bytes
/// replaced by U+FFFD. A last line without its newline yet counts as a line.
pub fn last_lines(path: &Path, lines: usize, max_bytes: usize) -> io::Result<String> {
    let current = match File::open(path) {
        Ok(file) => {
            let end = file.metadata()?.len();
            Some((file, end))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    last_lines_before(
        path,
        current.as_ref().map(|(f, end)| (f, *end)),
        lines,
        max_bytes,
    )
}

/// [`last_lines`] of the stream up to byte `end` of `current`, the file
/// open as `F` (None: there is no `F`): a follower that starts at that
/// point continues exactly where this text stops.
pub fn last_lines_before(
    path: &Path,
    current: Option<(&File, u64)>,
    lines: usize,
    max_bytes: usize,
) -> io::Result<String> {
    let mut reader = Backwards::new(lines, max_bytes);
    // Files read so far, kept open so that no inode among them is reused.
    let mut seen: Vec<File> = Vec::new();
    let mut ids: Vec<FileId> = Vec::new();
    if let Some((file, end)) = current {
        ids.push(file_id(&file.metadata()?));
        if reader.read(file, end)? {
            return Ok(reader.text());
        }
    }
    let mut k = 1;
    while k <= MAX_BACKUPS {
        let file = match File::open(backup_path(path, k)) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // A rotation renames from the oldest down, so for a moment
                // `F.k` is gone while its old content already sits at
                // `F.k+1`: look there once before calling the stream ended.
                match File::open(backup_path(path, k + 1)) {
                    Ok(file) if k < MAX_BACKUPS => {
                        k += 1;
                        file
                    }
                    _ => break,
                }
            }
            Err(e) => return Err(e),
        };
        k += 1;
        let meta = file.metadata()?;
        let id = file_id(&meta);
        if ids.contains(&id) {
            // Renamed under us by a rotation: already read.
            continue;
        }
        ids.push(id);
        let done = reader.read(&file, meta.len())?;
        seen.push(file);
        if done {
            break;
        }
    }
    Ok(reader.text())
}

/// The walk backwards through the stream: chunks kept newest first, and how
/// many line ends are still to be found.
struct Backwards {
    /// Line ends still to find before the answer starts.
    wanted: usize,
    /// Whether no byte has been looked at yet: the stream's very last byte,
    /// when it is a newline, ends the last line rather than starting one.
    at_end: bool,
    /// What is kept, newest chunk first.
    chunks: Vec<Vec<u8>>,
    /// Bytes in `chunks`.
    kept: usize,
    /// At most this many bytes are kept.
    max_bytes: usize,
    /// Whether the byte cap, not the line count, ended the walk inside a
    /// line (so the kept bytes start with the end of a line).
    capped: bool,
}

impl Backwards {
    fn new(lines: usize, max_bytes: usize) -> Backwards {
        Backwards {
            wanted: lines,
            at_end: true,
            chunks: Vec::new(),
            kept: 0,
            max_bytes,
            capped: false,
        }
    }

    /// Reads `file` backwards from `end`; true once enough is kept.
    fn read(&mut self, file: &File, end: u64) -> io::Result<bool> {
        if self.wanted == 0 || self.max_bytes == 0 {
            return Ok(true);
        }
        let mut pos = end;
        while pos > 0 {
            let len = CHUNK.min(usize::try_from(pos).unwrap_or(CHUNK));
            let start = pos - len as u64;
            let mut chunk = vec![0; len];
            read_exact_at(file, &mut chunk, start)?;
            pos = start;
            let mut scan = chunk.len();
            if self.at_end {
                self.at_end = false;
                if chunk.last() == Some(&b'\n') {
                    scan -= 1;
                }
            }
            // The line end that starts the answer, if it is in this chunk.
            let mut cut = None;
            for (i, byte) in chunk[..scan].iter().enumerate().rev() {
                if *byte == b'\n' {
                    self.wanted -= 1;
                    if self.wanted == 0 {
                        cut = Some(i + 1);
                        break;
                    }
                }
            }
            if let Some(cut) = cut {
                chunk.drain(..cut);
            }
            let room = self.max_bytes - self.kept;
            let full = cut.is_none() && chunk.len() >= room;
            if chunk.len() > room {
                let drop = chunk.len() - room;
                self.capped = chunk[drop - 1] != b'\n';
                chunk.drain(..drop);
            } else if full {
                // Exactly full, and what comes before is not read: assume
                // the kept bytes start inside a line.
                self.capped = true;
            }
            self.kept += chunk.len();
            self.chunks.push(chunk);
            if cut.is_some() || full || self.capped {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The kept bytes in stream order, as text. When the byte cap cut the
    /// walk, the answer starts at the first line start within it (or, for
    /// one line longer than the cap, at a character boundary).
    fn text(self) -> String {
        let mut bytes = Vec::with_capacity(self.kept);
        for chunk in self.chunks.into_iter().rev() {
            bytes.extend_from_slice(&chunk);
        }
        if self.capped {
            let body = bytes.len().saturating_sub(1);
            let start = match bytes[..body].iter().position(|b| *b == b'\n') {
                Some(i) => i + 1,
                None => bytes
                    .iter()
                    .position(|b| (b & 0xC0) != 0x80)
                    .unwrap_or(bytes.len()),
            };
            bytes.drain(..start);
        }
        String::from_utf8(bytes)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }
}

/// Fills `buf` from `offset`; a file that shrank meanwhile (cleared) leaves
/// zeros, which is as good as any snapshot of a file being truncated.
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => {
                buf[done..].fill(0);
                return Ok(());
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::fs;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh empty folder for one test.
    pub(crate) fn scratch(tag: &str) -> PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("tm-output-{}-{tag}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn numbered(from: usize, to: usize) -> String {
        (from..=to).map(|n| format!("line {n}\n")).collect()
    }

    const BIG: usize = 1 << 20;

    #[test]
    fn the_last_lines_of_one_file() {
        let dir = scratch("one");
        let f = dir.join("out.log");
        fs::write(&f, numbered(1, 20)).unwrap();
        assert_eq!(last_lines(&f, 3, BIG).unwrap(), numbered(18, 20));
        assert_eq!(last_lines(&f, 1, BIG).unwrap(), "line 20\n");
        assert_eq!(last_lines(&f, 20, BIG).unwrap(), numbered(1, 20));
        assert_eq!(last_lines(&f, 100, BIG).unwrap(), numbered(1, 20));
        // A last line still being written counts as a line.
        fs::write(&f, "a\nb\nc").unwrap();
        assert_eq!(last_lines(&f, 2, BIG).unwrap(), "b\nc");
        // Empty lines are lines.
        fs::write(&f, "a\n\n\n").unwrap();
        assert_eq!(last_lines(&f, 2, BIG).unwrap(), "\n\n");
        fs::write(&f, "").unwrap();
        assert_eq!(last_lines(&f, 5, BIG).unwrap(), "");
    }

    #[test]
    fn missing_files_are_an_empty_stream() {
        let dir = scratch("missing");
        assert_eq!(last_lines(&dir.join("nope.log"), 10, BIG).unwrap(), "");
        // F gone (mid-rotation) but F.1 there: read from F.1.
        fs::write(dir.join("out.log.1"), "old\n").unwrap();
        assert_eq!(last_lines(&dir.join("out.log"), 10, BIG).unwrap(), "old\n");
    }

    #[test]
    fn reads_back_into_the_backups_across_a_line_cut_by_a_rotation() {
        let dir = scratch("backups");
        let f = dir.join("out.log");
        fs::write(backup_path(&f, 3), numbered(1, 5)).unwrap();
        // "line 10" was cut by a rotation: "li" in F.2, "ne 10\n" in F.1.
        fs::write(backup_path(&f, 2), format!("{}li", numbered(6, 9))).unwrap();
        fs::write(backup_path(&f, 1), format!("ne 10\n{}", numbered(11, 12))).unwrap();
        fs::write(&f, numbered(13, 14)).unwrap();
        assert_eq!(last_lines(&f, 2, BIG).unwrap(), numbered(13, 14));
        assert_eq!(last_lines(&f, 4, BIG).unwrap(), numbered(11, 14));
        assert_eq!(last_lines(&f, 5, BIG).unwrap(), numbered(10, 14));
        assert_eq!(last_lines(&f, 6, BIG).unwrap(), numbered(9, 14));
        assert_eq!(last_lines(&f, 1000, BIG).unwrap(), numbered(1, 14));
        // A gap ends the stream: F.6 beyond a missing F.4 and F.5 is not
        // read (one missing name alone may be a rotation in progress).
        fs::write(backup_path(&f, 6), "stale\n").unwrap();
        assert_eq!(last_lines(&f, 1000, BIG).unwrap(), numbered(1, 14));
    }

    #[test]
    fn long_files_are_read_backwards_in_chunks() {
        let dir = scratch("long");
        let f = dir.join("out.log");
        // Lines of every length around the chunk size: 3 MB in all.
        let text = numbered(1, 200_000);
        fs::write(&f, &text).unwrap();
        let tail = last_lines(&f, 10_000, BIG).unwrap();
        assert_eq!(tail, numbered(190_001, 200_000));
        let long_line = "x".repeat(3 * CHUNK + 7);
        fs::write(&f, format!("first\n{long_line}\nlast\n")).unwrap();
        assert_eq!(
            last_lines(&f, 2, BIG).unwrap(),
            format!("{long_line}\nlast\n")
        );
    }

    #[test]
    fn the_byte_cap_keeps_the_newest_whole_lines() {
        let dir = scratch("cap");
        let f = dir.join("out.log");
        fs::write(&f, numbered(1, 1000)).unwrap();
        let tail = last_lines(&f, 1000, 100).unwrap();
        assert!(tail.len() <= 100, "{tail}");
        assert!(
            tail.starts_with("line ") && tail.ends_with("line 1000\n"),
            "{tail}"
        );
        assert_eq!(tail, numbered(1000 - tail.lines().count() + 1, 1000));
        // One line longer than the cap: its end, from a character boundary.
        fs::write(&f, "ééééé").unwrap();
        assert_eq!(last_lines(&f, 1, 5).unwrap(), "éé");
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        let dir = scratch("utf8");
        let f = dir.join("out.log");
        fs::write(&f, b"ok\n\xff\xfe bad\n\xc3\xa9\n").unwrap();
        assert_eq!(last_lines(&f, 2, BIG).unwrap(), "\u{FFFD}\u{FFFD} bad\né\n");
    }

    #[test]
    fn a_rotation_while_reading_does_not_repeat_a_file() {
        let dir = scratch("race");
        let f = dir.join("out.log");
        fs::write(backup_path(&f, 1), numbered(1, 3)).unwrap();
        fs::write(&f, numbered(4, 6)).unwrap();
        let current = File::open(&f).unwrap();
        let end = current.metadata().unwrap().len();
        // The rotation lands between opening F and reading its backups.
        fs::rename(backup_path(&f, 1), backup_path(&f, 2)).unwrap();
        fs::rename(&f, backup_path(&f, 1)).unwrap();
        fs::write(&f, numbered(7, 7)).unwrap();
        let tail = last_lines_before(&f, Some((&current, end)), 100, BIG).unwrap();
        assert_eq!(tail, numbered(1, 6));
    }
}
