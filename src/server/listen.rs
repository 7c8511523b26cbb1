//! Listeners (SPEC §2, §13): loopback TCP and Unix sockets, served alike.
//!
//! `--listen` takes an address (`127.0.0.1`, `::1`, `localhost`, or any IP
//! with a token) or `unix:PATH`, and may be given several times. Every
//! listener feeds the one accept loop, so the connection cap, eviction and
//! handshake limits are shared and identical; past `accept` a connection is
//! just a byte stream ([`Io`]).
//!
//! A Unix socket is the way to give access to the daemon's user only: it is
//! created with mode 0600 (under a umask of 0177, so it is never reachable
//! by others even for a moment, then chmod'ed for good measure). A socket
//! file left by a daemon that died is replaced, but only once a connect to it
//! is refused — a socket that answers belongs to a live daemon and is an
//! error, and a path that is anything but a socket is never deleted. The
//! file is removed when the listener is dropped at shutdown, unless it is no
//! longer the one we made (same device and inode).

use std::io;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener, UnixStream};

/// The longest Unix socket path the kernel takes (`sun_path` is 108 bytes
/// with its terminating NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// How long a connect to an existing socket file may take before we count
/// it as live (a daemon so busy its backlog is full is still a daemon).
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// A connection's byte stream, whichever listener it came from.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One `--listen` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A TCP address (`--port` gives its port).
    Tcp(String),
    /// A Unix socket path.
    Unix(PathBuf),
}

impl Listen {
    /// Parses `unix:PATH` or a TCP address (an IP address or `localhost`).
    pub fn parse(value: &str) -> Result<Listen, String> {
        if let Some(path) = value.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("invalid listen address \"unix:\": expected unix:PATH".into());
            }
            return Ok(Listen::Unix(PathBuf::from(path)));
        }
        let host = value.trim_start_matches('[').trim_end_matches(']');
        if host != "localhost" && host.parse::<std::net::IpAddr>().is_err() {
            return Err(format!(
                "invalid listen address {value:?}: expected an IP address such as 127.0.0.1 or ::1, or unix:PATH"
            ));
        }
        Ok(Listen::Tcp(value.to_string()))
    }
}

/// A bound listener.
pub enum Listener {
    /// TCP.
    Tcp(TcpListener),
    /// A Unix socket and the file it made.
    Unix(UnixSocket),
}

/// A bound Unix socket; dropping it removes its file.
pub struct UnixSocket {
    /// The socket.
    listener: UnixListener,
    /// Its file.
    path: PathBuf,
    /// The file's device and inode when we made it: we only ever remove
    /// that file, not one someone put in its place since.
    id: (u64, u64),
}

impl Drop for UnixSocket {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.file_type().is_socket() && (m.dev(), m.ino()) == self.id);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Listener {
    /// Where it listens, as a log line or a client's `--url` says it.
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => match l.local_addr() {
                Ok(addr) => format!("ws://{addr}/"),
                Err(_) => "ws://?/".into(),
            },
            Listener::Unix(u) => format!("unix:{}", u.path.display()),
        }
    }

    /// The dashboard's URL on this listener: TCP ones serve HTTP too.
    pub fn dashboard_url(&self) -> Option<String> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok().map(|a| format!("http://{a}/")),
            Listener::Unix(_) => None,
        }
    }

    /// Accepts one connection; also names its peer for log lines.
    pub async fn accept(&self) -> io::Result<(Box<dyn Io>, String)> {
        match self {
            Listener::Tcp(l) => {
                let (stream, peer) = l.accept().await?;
                // Replies are small and latency matters more than packing.
                let _ = stream.set_nodelay(true);
                Ok((Box::new(stream), peer.to_string()))
            }
            Listener::Unix(u) => {
                let (stream, _) = u.listener.accept().await?;
                let who = match stream.peer_cred().ok().and_then(|c| c.pid()) {
                    Some(pid) => format!("unix:{} (pid {pid})", u.path.display()),
                    None => format!("unix:{}", u.path.display()),
                };
                Ok((Box::new(stream), who))
            }
        }
    }
}

/// Binds one listener (before anything is spawned, so that a port in use or
/// a live socket fails start-up cleanly).
pub async fn bind(listen: &Listen, port: u16) -> Result<Listener, String> {
    match listen {
        Listen::Tcp(host) => bind_tcp(host, port).await.map(Listener::Tcp),
        Listen::Unix(path) => bind_unix(path).await.map(Listener::Unix),
    }
}

async fn bind_tcp(listen: &str, port: u16) -> Result<TcpListener, String> {
    let host = listen.trim_start_matches('[').trim_end_matches(']');
    let addr = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    TcpListener::bind(&addr).await.map_err(|e| match e.kind() {
        io::ErrorKind::AddrInUse => {
            format!("cannot listen on {addr}: the port is already in use (is another taskmasterd running? use --port)")
        }
        _ => format!("cannot listen on {addr}: {e}"),
    })
}

async fn bind_unix(path: &Path) -> Result<UnixSocket, String> {
    let shown = path.display();
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(format!(
            "cannot listen on unix:{shown}: the path is {len} bytes, over the {MAX_SOCKET_PATH} a Unix socket allows; use a shorter one"
        ));
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            match tokio::time::timeout(PROBE_TIMEOUT, UnixStream::connect(path)).await {
                Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    crate::log!("replacing the stale socket unix:{shown} (nothing answers on it)");
                    std::fs::remove_file(path).map_err(|e| {
                        format!("cannot remove the stale socket unix:{shown}: {e}")
                    })?;
                }
                Ok(Err(e)) => return Err(format!("cannot listen on unix:{shown}: {e}")),
                Ok(Ok(_)) | Err(_) => {
                    return Err(format!(
                        "cannot listen on unix:{shown}: something is already listening on it (is another taskmasterd running?)"
                    ))
                }
            }
        }
        Ok(_) => {
            let why = "the path exists and is not a socket (not removing it)";
            return Err(format!("cannot listen on unix:{shown}: {why}"));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot listen on unix:{shown}: {e}")),
    }
    // The umask is the process's, but nothing else creates files while the
    // daemon starts (the log file is already open): no other file gets it.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound.map_err(|e| format!("cannot listen on unix:{shown}: {e}"))?;
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot listen on unix:{shown}: {e}"))?;
    let socket = UnixSocket {
        listener,
        path: path.to_path_buf(),
        id: (meta.dev(), meta.ino()),
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot set the mode of unix:{shown} to 0600: {e}"))?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_values() {
        assert_eq!(
            Listen::parse("unix:/run/tm.sock"),
            Ok(Listen::Unix("/run/tm.sock".into()))
        );
        assert_eq!(
            Listen::parse("127.0.0.1"),
            Ok(Listen::Tcp("127.0.0.1".into()))
        );
        assert_eq!(Listen::parse("[::1]"), Ok(Listen::Tcp("[::1]".into())));
        assert!(Listen::parse("unix:").is_err());
        assert!(Listen::parse("example.com").is_err());
    }
}
