//! Daemon-side writers: one per log path, fed by the children's pipes,
//! rotating the file by rename exactly as SPEC §10 says.
//!
//! Every writer lives on the thread of the device its file is on (one
//! thread per filesystem device, created on first use), so a slow disk
//! holds up only the children writing to it. The thread sleeps in
//! `epoll_wait` on the read ends of the pipes plus an eventfd for commands
//! (attach a pipe, flush an exited child's pipes, stop). Bytes go from a pipe
//! into the file with `splice(2)` at the file's own offset: no copy through
//! user space, and never more than the room left before `maxbytes`, so a
//! rotation falls exactly at the limit (possibly inside a line) and no file
//! ever exceeds it. With `timestamps` the bytes are read, prefixed at each
//! line start and written (a copying path).
//!
//! When a child exits, the supervisor asks its device thread(s) to drain
//! that child's pipes ([`Output::flush`]) and reports the exit only once
//! they did, so output written just before an exit is in the file when the
//! exit is announced. A file that cannot be written (full disk) still has
//! its pipe drained and the loss logged: a child never blocks because of it.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use crate::config::Rotation;

/// Most bytes moved per `splice` call.
const CHUNK: usize = 1 << 20;
/// Pipe capacity asked for (a burst the child can write while the writer
/// is busy elsewhere); the kernel may give less.
const PIPE_SIZE: libc::c_int = 1 << 20;

/// Who a pipe belongs to: the pid of the instance's main process.
pub type Owner = u32;

/// The registry of daemon-side writers, shared by the supervisor (which
/// attaches children's pipes) and the server (`clear`).
#[derive(Clone, Default)]
pub struct Output {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Writers by path (one writer per file, whoever writes it).
    writers: Mutex<HashMap<PathBuf, Arc<Writer>>>,
    /// Device threads by `st_dev`.
    devices: Mutex<HashMap<u64, Arc<Device>>>,
    /// Which devices hold pipes of each owner, for flushes.
    owners: Mutex<HashMap<Owner, Vec<Arc<Device>>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One log file and how it rotates.
pub struct Writer {
    /// The configured path.
    path: PathBuf,
    /// When and how it rotates.
    rotation: Rotation,
    /// Prefix lines with a timestamp.
    timestamps: bool,
    /// The open file and its size (locked by the device thread while it
    /// writes, and by `clear`/`reopen`).
    file: Mutex<Open>,
}

struct Open {
    /// Written at explicit offsets (never O_APPEND: splice refuses it).
    file: File,
    /// Bytes in the current file.
    size: u64,
    /// Bytes lost since the last successful write (reported once).
    lost: u64,
}

fn open_log(path: &Path) -> io::Result<Open> {
    let file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(path)?;
    let size = file.metadata()?.len();
    Ok(Open {
        file,
        size,
        lost: 0,
    })
}

impl Writer {
    /// Renames `F.k` → `F.k+1` (the oldest beyond `backups` is overwritten,
    /// hence deleted), `F` → `F.1`, and starts a new `F`; with no backups,
    /// `F` starts afresh in place.
    fn rotate(&self, open: &mut Open) -> io::Result<()> {
        if self.rotation.backups == 0 {
            open.file.set_len(0)?;
            open.size = 0;
            return Ok(());
        }
        let numbered = |k: u32| {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{k}"));
            PathBuf::from(p)
        };
        for k in (1..self.rotation.backups).rev() {
            match std::fs::rename(numbered(k), numbered(k + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        std::fs::rename(&self.path, numbered(1))?;
        *open = open_log(&self.path)?;
        Ok(())
    }

    /// Room before the next rotation.
    fn room(&self, open: &Open) -> u64 {
        match self.rotation.maxbytes {
            0 => u64::MAX,
            max => max.saturating_sub(open.size),
        }
    }

    /// Empties the file (backups are kept).
    pub fn clear(&self) -> io::Result<()> {
        let mut open = lock(&self.file);
        open.file.set_len(0)?;
        open.size = 0;
        Ok(())
    }

    /// Opens the path again (after an external logrotate moved the file).
    pub fn reopen(&self) -> io::Result<()> {
        let mut open = lock(&self.file);
        *open = open_log(&self.path)?;
        Ok(())
    }

    /// Records `n` bytes that could not be written.
    fn lose(&self, open: &mut Open, n: u64, why: &io::Error) {
        if open.lost == 0 {
            crate::log!(
                "warning: cannot write log file {}: {why}; dropping output until it works again",
                self.path.display()
            );
        }
        open.lost += n;
    }

    fn recovered(&self, open: &mut Open) {
        if open.lost > 0 {
            crate::log!(
                "log file {} writable again; {} bytes of output were lost",
                self.path.display(),
                open.lost
            );
            open.lost = 0;
        }
    }
}

/// A pipe a child writes into.
struct Source {
    /// Read end (non-blocking).
    fd: OwnedFd,
    /// Where its bytes go.
    writer: Arc<Writer>,
    /// The child it belongs to.
    owner: Owner,
    /// With timestamps: whether the next byte starts a line.
    line_start: bool,
}

enum Command {
    Attach(Source),
    /// Drain the owner's pipes, then call `done`.
    Flush(Owner, Box<dyn FnOnce() + Send>),
}

/// One device's thread: its command queue and the eventfd that wakes it.
struct Device {
    commands: Mutex<Vec<Command>>,
    wake: OwnedFd,
}

impl Device {
    fn start(dev: u64) -> io::Result<Arc<Device>> {
        // SAFETY: plain syscalls creating new descriptors we own.
        let (wake, epoll) = unsafe {
            let wake = libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK);
            if wake < 0 {
                return Err(io::Error::last_os_error());
            }
            let wake = OwnedFd::from_raw_fd(wake);
            let epoll = libc::epoll_create1(libc::EPOLL_CLOEXEC);
            if epoll < 0 {
                return Err(io::Error::last_os_error());
            }
            (wake, OwnedFd::from_raw_fd(epoll))
        };
        epoll_add(&epoll, wake.as_raw_fd(), 0)?;
        let device = Arc::new(Device {
            commands: Mutex::new(Vec::new()),
            wake,
        });
        let d = device.clone();
        std::thread::Builder::new()
            .name(format!("tm-output-{dev:x}"))
            .spawn(move || run(&d, &epoll))?;
        Ok(device)
    }

    fn send(&self, command: Command) {
        lock(&self.commands).push(command);
        let one: u64 = 1;
        // SAFETY: an 8-byte write to our eventfd; EAGAIN (counter full)
        // still leaves it readable, which is all we need.
        unsafe {
            libc::write(
                self.wake.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }
}

fn epoll_add(epoll: &OwnedFd, fd: RawFd, token: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR) as u32,
        u64: token,
    };
    // SAFETY: registering a descriptor we own with a valid event struct.
    if unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The device thread: moves bytes until the process ends.
fn run(device: &Device, epoll: &OwnedFd) {
    let mut sources: HashMap<u64, Source> = HashMap::new();
    let mut next_token: u64 = 1;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: `events` is a valid buffer of that many entries.
        let n = unsafe {
            libc::epoll_wait(
                epoll.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as libc::c_int,
                -1,
            )
        };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            crate::log!(
                "warning: output thread stopped: {}",
                io::Error::last_os_error()
            );
            return;
        }
        for ev in &events[..n as usize] {
            let token = ev.u64;
            if token == 0 {
                continue;
            }
            let done = match sources.get_mut(&token) {
                Some(src) => drain(src, &mut buf, TURN),
                None => false,
            };
            if done {
                // EOF: every writer of the pipe closed it. Dropping the fd
                // also removes it from the epoll set.
                sources.remove(&token);
            }
        }
        // Commands after the events: a flush then sees the latest bytes.
        let mut counter = 0u64;
        // SAFETY: reading our non-blocking eventfd's 8-byte counter.
        unsafe {
            libc::read(
                device.wake.as_raw_fd(),
                (&mut counter as *mut u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
        let commands = std::mem::take(&mut *lock(&device.commands));
        for command in commands {
            match command {
                Command::Attach(src) => {
                    let token = next_token;
                    next_token += 1;
                    match epoll_add(epoll, src.fd.as_raw_fd(), token) {
                        Ok(()) => {
                            sources.insert(token, src);
                        }
                        Err(e) => crate::log!(
                            "warning: cannot watch an output pipe for {}: {e}",
                            src.writer.path.display()
                        ),
                    }
                }
                Command::Flush(owner, done) => {
                    let ended: Vec<u64> = sources
                        .iter_mut()
                        .filter(|(_, s)| s.owner == owner)
                        .filter_map(|(t, s)| drain(s, &mut buf, FLUSH_LIMIT).then_some(*t))
                        .collect();
                    for t in ended {
                        sources.remove(&t);
                    }
                    done();
                }
            }
        }
    }
}

/// Bytes one pipe may move per wake-up before the others get their turn
/// (epoll is level-triggered: it comes back to the rest).
const TURN: u64 = 8 << 20;
/// Bytes a flush moves at most: a grandchild still writing must not keep
/// an exit from being reported forever.
const FLUSH_LIMIT: u64 = 256 << 20;

/// Moves what the pipe holds into the file, up to about `budget` bytes;
/// true at EOF.
fn drain(src: &mut Source, buf: &mut [u8], budget: u64) -> bool {
    let writer = src.writer.clone();
    let mut open = lock(&writer.file);
    let mut moved = 0u64;
    let mut rotate_failed = false;
    while moved < budget {
        let mut room = writer.room(&open);
        if room == 0 && !rotate_failed {
            // Rotate only for bytes that are there: a file that ends exactly
            // full stays the current one.
            match waiting(&src.fd) {
                Waiting::Bytes => {}
                Waiting::Nothing => return false,
                Waiting::HungUp => return true,
            }
            match writer.rotate(&mut open) {
                Ok(()) => continue,
                Err(e) => {
                    crate::log!(
                        "warning: cannot rotate log file {}: {e}; it grows past its limit",
                        writer.path.display()
                    );
                    rotate_failed = true;
                }
            }
        }
        if rotate_failed {
            // Keep writing rather than losing output.
            room = u64::MAX;
        }
        let step = if writer.timestamps {
            copy_stamped(src, &writer, &mut open, buf)
        } else {
            splice_into(src, &writer, &mut open, room)
        };
        match step {
            Step::More(n) => moved += n,
            Step::Empty => return false,
            Step::Eof => return true,
        }
    }
    false
}

enum Waiting {
    Bytes,
    Nothing,
    HungUp,
}

/// Whether a pipe holds bytes, is empty, or is empty with every writer gone.
fn waiting(fd: &OwnedFd) -> Waiting {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD into a local int; poll on one descriptor we own.
    unsafe {
        if libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) == 0 && n > 0 {
            return Waiting::Bytes;
        }
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        if libc::poll(&mut p, 1, 0) == 1 && p.revents & libc::POLLHUP != 0 {
            return Waiting::HungUp;
        }
    }
    Waiting::Nothing
}

enum Step {
    /// Moved (or dropped) this many bytes; there may be more.
    More(u64),
    /// Nothing to read now.
    Empty,
    /// Every writer closed the pipe.
    Eof,
}

fn splice_into(src: &Source, writer: &Writer, open: &mut Open, room: u64) -> Step {
    let len = room.min(CHUNK as u64) as usize;
    let mut off = open.size as libc::loff_t;
    // SAFETY: splice between two descriptors we own, with a valid offset
    // pointer for the (non-pipe) output side.
    let n = unsafe {
        libc::splice(
            src.fd.as_raw_fd(),
            std::ptr::null_mut(),
            open.file.as_raw_fd(),
            &mut off,
            len,
            libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE,
        )
    };
    match n {
        0 => Step::Eof,
        n if n > 0 => {
            open.size += n as u64;
            writer.recovered(open);
            Step::More(n as u64)
        }
        _ => {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock => Step::Empty,
                io::ErrorKind::Interrupted => Step::More(0),
                _ => discard(src, writer, open, &e),
            }
        }
    }
}

/// The file refused the bytes: read them out of the pipe anyway (a child
/// must never block on a broken log) and count them.
fn discard(src: &Source, writer: &Writer, open: &mut Open, why: &io::Error) -> Step {
    let mut buf = [0u8; 16 * 1024];
    // SAFETY: reading into a local buffer from a descriptor we own.
    let n = unsafe { libc::read(src.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    match n {
        0 => Step::Eof,
        n if n > 0 => {
            writer.lose(open, n as u64, why);
            Step::More(n as u64)
        }
        _ => match io::Error::last_os_error().kind() {
            io::ErrorKind::Interrupted => Step::More(0),
            _ => Step::Empty,
        },
    }
}

/// The timestamps path: read, prefix each line start, write at the file's
/// offset; never past `room` (a rotation may split a prefix from its line).
fn copy_stamped(src: &mut Source, writer: &Writer, open: &mut Open, buf: &mut [u8]) -> Step {
    // SAFETY: reading into our buffer from a descriptor we own.
    let n = unsafe { libc::read(src.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    let n = match n {
        0 => return Step::Eof,
        n if n > 0 => n as usize,
        _ => {
            return match io::Error::last_os_error().kind() {
                io::ErrorKind::WouldBlock => Step::Empty,
                io::ErrorKind::Interrupted => Step::More(0),
                _ => Step::Empty,
            }
        }
    };
    let stamped = stamp(&buf[..n], &mut src.line_start, SystemTime::now());
    let mut rest: &[u8] = &stamped;
    while !rest.is_empty() {
        let room = writer.room(open);
        if room == 0 {
            if let Err(e) = writer.rotate(open) {
                writer.lose(open, rest.len() as u64, &e);
                return Step::More(n as u64);
            }
            continue;
        }
        let take = rest.len().min(room.min(usize::MAX as u64) as usize);
        match open.file.write_all_at(&rest[..take], open.size) {
            Ok(()) => {
                open.size += take as u64;
                writer.recovered(open);
                rest = &rest[take..];
            }
            Err(e) => {
                writer.lose(open, rest.len() as u64, &e);
                return Step::More(n as u64);
            }
        }
    }
    Step::More(n as u64)
}

/// Inserts `TIMESTAMP ` at each line start of `bytes`.
pub(crate) fn stamp(bytes: &[u8], line_start: &mut bool, now: SystemTime) -> Vec<u8> {
    let prefix = format!("{} ", humantime::format_rfc3339_millis(now));
    let mut out = Vec::with_capacity(bytes.len() + prefix.len() * 2);
    for &b in bytes {
        if *line_start {
            out.extend_from_slice(prefix.as_bytes());
        }
        out.push(b);
        *line_start = b == b'\n';
    }
    out
}

/// Pipes of a child not yet handed to their writers.
#[derive(Default)]
pub struct Pipes(pub(super) Vec<(OwnedFd, Arc<Writer>)>);

impl Output {
    /// The writer of `path`, created (with its folder) on first use. The
    /// first service to name a path sets its rotation for everyone.
    pub(super) fn writer(
        &self,
        path: &Path,
        rotation: Rotation,
        timestamps: bool,
    ) -> io::Result<Arc<Writer>> {
        let mut writers = lock(&self.inner.writers);
        if let Some(w) = writers.get(path) {
            return Ok(w.clone());
        }
        let open = open_log(path)?;
        let w = Arc::new(Writer {
            path: path.to_path_buf(),
            rotation,
            timestamps,
            file: Mutex::new(open),
        });
        writers.insert(path.to_path_buf(), w.clone());
        Ok(w)
    }

    fn device(&self, path: &Path) -> io::Result<Arc<Device>> {
        let dev = std::fs::metadata(path)?.dev();
        let mut devices = lock(&self.inner.devices);
        if let Some(d) = devices.get(&dev) {
            return Ok(d.clone());
        }
        let d = Device::start(dev)?;
        devices.insert(dev, d.clone());
        Ok(d)
    }

    /// A pipe into the writer of `path`: the child's end and ours.
    pub(super) fn pipe_to(
        &self,
        path: &Path,
        rotation: Rotation,
        timestamps: bool,
    ) -> io::Result<(OwnedFd, OwnedFd, Arc<Writer>)> {
        let writer = self.writer(path, rotation, timestamps)?;
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        // SAFETY: fcntl on descriptors we own.
        unsafe {
            let flags = libc::fcntl(read.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(read.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
            libc::fcntl(read.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE);
        }
        Ok((read, write, writer))
    }

    /// Hands the pipes of a spawned child (`owner` = its pid) to their
    /// writers' device threads.
    pub fn attach(&self, owner: Owner, pipes: Pipes) {
        let pending = pipes.0;
        if pending.is_empty() {
            return;
        }
        let mut devices = Vec::new();
        for (fd, writer) in pending {
            let device = match self.device(&writer.path) {
                Ok(d) => d,
                Err(e) => {
                    crate::log!(
                        "warning: cannot start the writer of {}: {e}",
                        writer.path.display()
                    );
                    continue;
                }
            };
            device.send(Command::Attach(Source {
                fd,
                writer,
                owner,
                line_start: true,
            }));
            if !devices.iter().any(|d| Arc::ptr_eq(d, &device)) {
                devices.push(device);
            }
        }
        lock(&self.inner.owners).insert(owner, devices);
    }

    /// Drains the pipes of `owner` (an exited child) and calls `done` once
    /// its bytes are in the files. False (and `done` is not called) when the
    /// child writes no pipe.
    pub fn flush(&self, owner: Owner, done: impl FnOnce() + Send + Clone + 'static) -> bool {
        let Some(devices) = lock(&self.inner.owners).remove(&owner) else {
            return false;
        };
        let left = Arc::new(std::sync::atomic::AtomicUsize::new(devices.len()));
        for device in devices {
            let left = left.clone();
            let done = done.clone();
            device.send(Command::Flush(
                owner,
                Box::new(move || {
                    if left.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
                        done();
                    }
                }),
            ));
        }
        true
    }

    /// Empties the log file at `path` (its backups are kept). A file the
    /// daemon writes is truncated by its writer, so the size it rotates at
    /// stays right; any other is truncated in place (a child writing it
    /// appends, so it carries on at the new end).
    pub fn clear(&self, path: &Path) -> io::Result<()> {
        let writer = lock(&self.inner.writers).get(path).cloned();
        match writer {
            Some(w) => w.clear(),
            None => OpenOptions::new().write(true).open(path)?.set_len(0),
        }
    }

    /// Reopens every file the daemon writes (SIGUSR1, after an external
    /// logrotate moved them).
    pub fn reopen_all(&self) {
        let writers: Vec<Arc<Writer>> = lock(&self.inner.writers).values().cloned().collect();
        for w in writers {
            if let Err(e) = w.reopen() {
                crate::log!("warning: cannot reopen log file {}: {e}", w.path.display());
            }
        }
        crate::log!("reopened {} log files", lock(&self.inner.writers).len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_go_at_line_starts_across_chunks() {
        let t = SystemTime::UNIX_EPOCH;
        let mut start = true;
        let a = stamp(b"one\ntw", &mut start, t);
        let b = stamp(b"o\n", &mut start, t);
        let text = String::from_utf8(a.into_iter().chain(b).collect()).unwrap();
        assert_eq!(
            text,
            "1970-01-01T00:00:00.000Z one\n1970-01-01T00:00:00.000Z two\n"
        );
        assert!(start);
    }
}
