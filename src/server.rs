//! The WebSocket server (SPEC §7): accept loop, handshake checks, one task
//! per client.
//!
//! Every byte from a socket is hostile. The handshake is bounded in time
//! (half-open handshakes are dropped), refuses browser `Origin`s that are
//! not loopback (cross-site WebSocket hijacking) with 403, and requires
//! `Authorization: Bearer TOKEN` (the scheme in any case, the token compared
//! in constant time) with 401 when a token is set. Frames and messages over 64 KiB are refused by tungstenite
//! from the frame header, before the payload is buffered.
//!
//! A client cannot stall the daemon or other clients: each request runs in
//! its own task (a slow `start` does not hold up a `status` on the same
//! connection), replies go through a small bounded queue drained by the
//! connection's writer, in-flight requests per connection are capped (a
//! client that never reads just stops being read), and a subscriber that
//! falls behind the bounded event channel is disconnected.
//!
//! Idle connections cannot lock new clients out (SPEC §17). At most
//! [`MAX_CLIENTS`] are served at once; a connection past that closes the one
//! that has been idle the longest — idle meaning no request being carried
//! out and no `subscribe` — so opening hundreds of silent sockets, even from
//! one loopback peer, only ever costs the attacker their own oldest ones. A
//! connection still in its handshake counts as idle. Only when every slot is
//! busy or subscribed does the accept loop wait (new clients then queue in
//! the kernel's backlog). A closing connection gets a moment to flush, then
//! its socket is dropped, so a peer that stopped reading cannot keep it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, oneshot, Notify, Semaphore};
use tokio_tungstenite::tungstenite::handshake::server::{
    ErrorResponse, Request as HttpRequest, Response,
};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use crate::protocol::{Reply, Request, MAX_FRAME};
use crate::reloader::Reloader;
use crate::supervisor::{Control, Handle};

/// How long a client may take to complete the WebSocket handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once. Past it, the longest idle one is closed to
/// make room; when none is idle, new ones wait in the kernel's backlog.
pub const MAX_CLIENTS: usize = 512;
/// How long a closing connection may take to flush what is queued for it.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Requests of one connection in flight at once.
const MAX_IN_FLIGHT: usize = 16;
/// Frames queued for one connection's writer.
const OUTBOX: usize = 64;

/// What the server needs from the daemon.
#[derive(Clone)]
pub struct Context {
    /// The supervisor.
    pub handle: Handle,
    /// Reload entry point.
    pub reloader: Reloader,
    /// Required bearer token.
    pub token: Option<Arc<str>>,
    /// Asks the daemon to shut down.
    pub shutdown: mpsc::Sender<()>,
    /// The log writers (`clear` goes through them).
    pub output: crate::output::Output,
}

/// Is this listen address loopback-only?
pub fn is_loopback(listen: &str) -> bool {
    let host = listen.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Binds the listening socket (before anything is spawned, so a port in
/// use fails start-up cleanly).
pub async fn bind(listen: &str, port: u16) -> Result<TcpListener, String> {
    let host = listen.trim_start_matches('[').trim_end_matches(']');
    let addr = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    TcpListener::bind(&addr).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            format!("cannot listen on {addr}: the port is already in use (is another taskmasterd running? use --port)")
        }
        _ => format!("cannot listen on {addr}: {e}"),
    })
}

/// Serves clients until the task is dropped.
pub async fn serve(listener: TcpListener, ctx: Context) {
    let connections = Connections::new(MAX_CLIENTS);
    loop {
        // Accept only a client that can be served: otherwise leave it in
        // the backlog rather than take a socket just to hold it.
        connections.room().await;
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off briefly rather than spin.
                crate::log!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (slot, evicted) = connections.admit();
        let ctx = ctx.clone();
        tokio::spawn(client(stream, peer, ctx, Arc::new(slot), evicted));
    }
}

/// The connections being served, so that a new one past the cap can close
/// the one idle the longest. Shared by the accept loop and every connection;
/// the lock is only ever held for a few field updates or one scan of at most
/// [`MAX_CLIENTS`] entries, never across an await.
#[derive(Clone)]
struct Connections {
    /// The table and the accept loop's wake-up.
    shared: Arc<Shared>,
}

struct Shared {
    /// Connections served at once before idle ones are closed for new ones.
    cap: usize,
    /// Every connection still counted against the cap.
    table: Mutex<Table>,
    /// Notified when a connection ends or turns idle: the accept loop,
    /// waiting because every slot was busy, may have room again.
    room: Notify,
}

#[derive(Default)]
struct Table {
    /// Connections by id; an evicted one is removed at once (its task winds
    /// down within [`CLOSE_GRACE`] and is not counted meanwhile).
    entries: HashMap<u64, Entry>,
    /// A logical clock: connection ids and activity stamps, always rising.
    clock: u64,
}

struct Entry {
    /// Clock reading of its last activity: accepted, a frame received, or a
    /// request finished. The smallest among idle entries is evicted first.
    last_active: u64,
    /// Requests being carried out for it.
    in_flight: usize,
    /// Whether it receives the event stream; then it is never idle.
    subscribed: bool,
    /// Fired to close the connection when it is evicted.
    evict: oneshot::Sender<()>,
}

impl Entry {
    fn idle(&self) -> bool {
        self.in_flight == 0 && !self.subscribed
    }
}

impl Table {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// The idle connection whose last activity is the oldest.
    fn longest_idle(&self) -> Option<u64> {
        self.entries
            .iter()
            .filter(|(_, e)| e.idle())
            .min_by_key(|(_, e)| e.last_active)
            .map(|(id, _)| *id)
    }
}

impl Connections {
    fn new(cap: usize) -> Connections {
        Connections {
            shared: Arc::new(Shared {
                cap,
                table: Mutex::new(Table::default()),
                room: Notify::new(),
            }),
        }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        // The table holds no invariant a panic mid-update could break
        // beyond a stale count; keep serving rather than propagate.
        self.shared
            .table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Resolves once a new connection can be served: below the cap, or an
    /// idle connection can make room.
    async fn room(&self) {
        loop {
            // `notify_one` keeps a permit when nobody waits, so a wake-up
            // between this check and the await is not lost.
            let woken = self.shared.room.notified();
            {
                let table = self.table();
                if table.entries.len() < self.shared.cap || table.longest_idle().is_some() {
                    return;
                }
            }
            woken.await;
        }
    }

    /// Counts a new connection in, first evicting the longest idle ones
    /// while the table is full. The receiver fires when this one is evicted.
    fn admit(&self) -> (Slot, oneshot::Receiver<()>) {
        let mut table = self.table();
        while table.entries.len() >= self.shared.cap {
            let Some(victim) = table.longest_idle() else {
                // It turned busy since `room`: serve the new one anyway;
                // the excess is worked off by the next admissions.
                break;
            };
            if let Some(entry) = table.entries.remove(&victim) {
                let _ = entry.evict.send(());
            }
        }
        let id = table.tick();
        let (evict, evicted) = oneshot::channel();
        table.entries.insert(
            id,
            Entry {
                last_active: id,
                in_flight: 0,
                subscribed: false,
                evict,
            },
        );
        let slot = Slot {
            id,
            connections: self.clone(),
        };
        (slot, evicted)
    }

    /// Updates one connection's entry, if it is still counted.
    fn update(&self, id: u64, f: impl FnOnce(&mut Entry, u64)) {
        let mut table = self.table();
        let now = table.tick();
        if let Some(entry) = table.entries.get_mut(&id) {
            f(entry, now);
        }
    }
}

/// One connection's place in the [`Connections`] table; dropping it frees
/// the place.
struct Slot {
    /// Its key in the table.
    id: u64,
    /// The table.
    connections: Connections,
}

impl Slot {
    /// A frame arrived: it is active now.
    fn touch(&self) {
        self.connections
            .update(self.id, |e, now| e.last_active = now);
    }

    /// From now on it follows the event stream, so it is never idle.
    fn subscribed(&self) {
        self.connections.update(self.id, |e, _| e.subscribed = true);
    }

    /// A request is being carried out until the guard drops.
    fn request(self: &Arc<Self>) -> InFlight {
        self.connections.update(self.id, |e, _| e.in_flight += 1);
        InFlight(self.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.connections.table().entries.remove(&self.id);
        self.connections.shared.room.notify_one();
    }
}

/// A request in flight on a connection (so the connection is not idle).
struct InFlight(Arc<Slot>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut idle = false;
        self.0.connections.update(self.0.id, |e, now| {
            e.in_flight = e.in_flight.saturating_sub(1);
            e.last_active = now;
            idle = e.idle();
        });
        if idle {
            self.0.connections.shared.room.notify_one();
        }
    }
}

/// Whether a browser `Origin` may drive the daemon (SPEC §9).
pub fn origin_allowed(origin: Option<&str>) -> bool {
    let Some(origin) = origin else { return true };
    let rest = match origin.split_once("://") {
        Some(("http" | "https", rest)) => rest,
        _ => return false,
    };
    let host = if let Some(v6) = rest.strip_prefix('[') {
        match v6.split_once(']') {
            Some((h, tail)) if tail.is_empty() || tail.starts_with(':') => {
                return h == "::1" && port_ok(tail)
            }
            _ => return false,
        }
    } else {
        rest
    };
    let (name, tail) = match host.split_once(':') {
        Some((n, p)) => (n, format!(":{p}")),
        None => (host, String::new()),
    };
    matches!(
        name.to_ascii_lowercase().as_str(),
        "127.0.0.1" | "localhost"
    ) && port_ok(&tail)
}

fn port_ok(tail: &str) -> bool {
    tail.is_empty() || tail[1..].parse::<u16>().is_ok()
}

/// Compares two byte strings in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

/// The token of an `Authorization: Bearer TOKEN` header value. The scheme is
/// case-insensitive (RFC 9110 §11.1, SPEC §17), the token is not.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once([' ', '\t'])?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn refuse(status: StatusCode, text: &str) -> ErrorResponse {
    let mut resp = ErrorResponse::new(Some(text.to_string()));
    *resp.status_mut() = status;
    resp
}

fn check_handshake(
    req: &HttpRequest,
    token: Option<&str>,
) -> Result<(), (StatusCode, &'static str)> {
    let origin = req
        .headers()
        .get("origin")
        .map(|v| v.to_str().unwrap_or("\u{0}"));
    if !origin_allowed(origin) {
        return Err((StatusCode::FORBIDDEN, "cross-origin requests are refused\n"));
    }
    if let Some(token) = token {
        let given = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .unwrap_or("");
        if !constant_time_eq(given.as_bytes(), token.as_bytes()) {
            return Err((StatusCode::UNAUTHORIZED, "missing or wrong token\n"));
        }
    }
    Ok(())
}

type Ws = WebSocketStream<TcpStream>;

// tungstenite's Callback trait fixes the large error type of the closure.
#[allow(clippy::result_large_err)]
async fn client(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: Context,
    slot: Arc<Slot>,
    mut evicted: oneshot::Receiver<()>,
) {
    let _ = stream.set_nodelay(true);
    let token = ctx.token.clone();
    let callback = move |req: &HttpRequest, resp: Response| {
        check_handshake(req, token.as_deref())
            .map(|()| resp)
            .map_err(|(status, text)| refuse(status, text))
    };
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME))
        .max_frame_size(Some(MAX_FRAME))
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(1024 * 1024);
    let accepted = tokio::select! {
        accepted = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)),
        ) => accepted,
        _ = &mut evicted => {
            crate::log!("client {peer}: closed during its handshake to make room for a new connection");
            return;
        }
    };
    let ws = match accepted {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            crate::log!("client {peer}: handshake refused: {e}");
            return;
        }
        Err(_) => {
            crate::log!("client {peer}: handshake timed out");
            return;
        }
    };
    let (sink, source) = ws.split();
    let (out, outbox) = mpsc::channel::<Message>(OUTBOX);
    let mut writer = tokio::spawn(write_frames(sink, outbox));

    // The event forwarder holds a sender to the writer: it must end with the
    // connection, or the writer (and the socket) would live on.
    let mut forwarder: Option<tokio::task::JoinHandle<()>> = None;
    tokio::select! {
        () = read_requests(source, &out, &ctx, &slot, peer, &mut forwarder) => {}
        _ = &mut evicted => {
            crate::log!(
                "client {peer}: closed, the longest idle of {MAX_CLIENTS} connections, to make room for a new one"
            );
            let frame = CloseFrame {
                code: CloseCode::Again,
                reason: "too many connections: closing the longest idle one".into(),
            };
            let _ = out.try_send(Message::Close(Some(frame)));
        }
    }
    if let Some(f) = forwarder {
        f.abort();
    }
    drop(out);
    // Requests still running hold senders too; a peer that went away or
    // stopped reading must not keep the socket for as long as they run.
    if tokio::time::timeout(CLOSE_GRACE, &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
}

/// Sends queued frames until the queue closes or a close frame went out.
async fn write_frames(mut sink: SplitSink<Ws, Message>, mut outbox: mpsc::Receiver<Message>) {
    while let Some(msg) = outbox.recv().await {
        let closing = matches!(msg, Message::Close(_));
        if sink.send(msg).await.is_err() || closing {
            break;
        }
    }
    let _ = sink.close().await;
}

/// Reads requests until the peer closes or misbehaves, running each in its
/// own task; replies go to `out`.
async fn read_requests(
    mut source: SplitStream<Ws>,
    out: &mpsc::Sender<Message>,
    ctx: &Context,
    slot: &Arc<Slot>,
    peer: SocketAddr,
    forwarder: &mut Option<tokio::task::JoinHandle<()>>,
) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    while let Some(frame) = source.next().await {
        slot.touch();
        let text = match frame {
            Ok(Message::Text(t)) => t,
            Ok(Message::Binary(_)) => {
                let reply = Reply::err(
                    Value::Null,
                    "bad_request",
                    "binary frames are not supported; send JSON text",
                );
                if out.send(Message::text(reply.encode())).await.is_err() {
                    break;
                }
                continue;
            }
            Ok(Message::Close(_)) => break,
            Ok(_) => continue, // ping/pong are answered by tungstenite
            Err(WsError::Capacity(e)) => {
                crate::log!("client {peer}: {e}; closing");
                let frame = CloseFrame {
                    code: CloseCode::Size,
                    reason: "frame too large (limit 64 KiB)".into(),
                };
                let _ = out.send(Message::Close(Some(frame))).await;
                break;
            }
            Err(e) => {
                crate::log!("client {peer}: {e}; closing");
                break;
            }
        };
        let request = match Request::decode(&text) {
            Ok(r) => r,
            Err(e) => {
                let reply = Reply::err(e.id, e.code, e.message);
                if out.send(Message::text(reply.encode())).await.is_err() {
                    break;
                }
                continue;
            }
        };
        if changes_something(&request.cmd) {
            crate::log!("client {peer}: {}", command_line(&request));
        }
        if request.cmd == "subscribe" {
            let ok = request.args.is_empty();
            // Subscribe before replying: no event after the reply is missed.
            let events = (ok && forwarder.is_none()).then(|| ctx.handle.subscribe());
            if events.is_some() {
                slot.subscribed();
            }
            let reply = if ok {
                Reply::ok(request.id, json!({}))
            } else {
                Reply::err(request.id, "bad_args", "subscribe takes no arguments")
            };
            if out.send(Message::text(reply.encode())).await.is_err() {
                break;
            }
            if let Some(events) = events {
                *forwarder = Some(tokio::spawn(forward_events(events, out.clone(), peer)));
            }
            continue;
        }
        // Waiting here for a free slot stops reading from a client that
        // floods requests without reading the replies.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let busy = slot.request();
        let ctx = ctx.clone();
        let out = out.clone();
        tokio::spawn(async move {
            let reply = execute(&ctx, request).await;
            // Carried out: a reply the peer does not read leaves the
            // connection idle (and evictable), not busy.
            drop(busy);
            let _ = out.send(Message::text(reply.encode())).await;
            drop(permit);
        });
    }
}

/// Commands that change something, the only ones the daemon logs (SPEC §2):
/// read-only ones (`status`, `version`, `subscribe`, …) would bury the log
/// under every poll of a dashboard or a monitoring script.
const LOGGED_COMMANDS: &[&str] = &[
    "start", "stop", "restart", "reload", "shutdown", "exit", "signal", "clear",
];

fn changes_something(cmd: &str) -> bool {
    LOGGED_COMMANDS.contains(&cmd)
}

/// `start web web:1` as a log line shows it: words joined by one space, with
/// control characters escaped, so a client-sent name can never start a log
/// line of its own (SPEC §2).
fn command_line(request: &Request) -> String {
    let mut line = request.cmd.clone();
    for arg in &request.args {
        line.push(' ');
        for c in arg.chars() {
            if c.is_control() {
                line.extend(c.escape_default());
            } else {
                line.push(c);
            }
        }
    }
    line
}

async fn forward_events(
    mut events: broadcast::Receiver<crate::protocol::Event>,
    out: mpsc::Sender<Message>,
    peer: SocketAddr,
) {
    let why = loop {
        match events.recv().await {
            Ok(ev) => {
                let text = serde_json::to_string(&ev).unwrap_or_default();
                // A subscriber whose queue is full is not reading: drop it
                // rather than let it hold events (or the daemon) back.
                match out.try_send(Message::text(text)) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        break "its queue is full".to_string()
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => break format!("it missed {n} events"),
            Err(broadcast::error::RecvError::Closed) => return,
        }
    };
    crate::log!("client {peer}: subscriber too slow ({why}), disconnecting");
    let frame = CloseFrame {
        code: CloseCode::Policy,
        reason: "too slow reading events".into(),
    };
    let _ = out.try_send(Message::Close(Some(frame)));
}

/// Runs one request and builds its reply.
pub async fn execute(ctx: &Context, req: Request) -> Reply {
    let id = req.id;
    let no_args = |cmd: &str| -> Option<Reply> {
        (!req.args.is_empty())
            .then(|| Reply::err(id.clone(), "bad_args", format!("{cmd} takes no arguments")))
    };
    match req.cmd.as_str() {
        "status" => match ctx.handle.status(req.args).await {
            Ok(data) => Reply::ok(id, serde_json::to_value(data).unwrap_or(Value::Null)),
            Err(e) => Reply::err(id, e.code, e.message),
        },
        "start" | "stop" | "restart" => {
            let action = match req.cmd.as_str() {
                "start" => Control::Start,
                "stop" => Control::Stop,
                _ => Control::Restart,
            };
            match ctx.handle.control(action, req.args).await {
                Ok(results) => Reply::ok(id, json!({ "results": results })),
                Err(e) => Reply::err(id, e.code, e.message),
            }
        }
        "reload" => {
            if let Some(r) = no_args("reload") {
                return r;
            }
            match ctx.reloader.reload().await {
                Ok(diff) => Reply::ok(id, serde_json::to_value(diff).unwrap_or(Value::Null)),
                Err(e) => Reply::err(id, "bad_config", e),
            }
        }
        "shutdown" | "exit" => {
            if let Some(r) = no_args(&req.cmd) {
                return r;
            }
            let _ = ctx.shutdown.try_send(());
            Reply::ok(id, json!({}))
        }
        "version" => no_args("version")
            .unwrap_or_else(|| Reply::ok(id, json!({ "version": env!("CARGO_PKG_VERSION") }))),
        other => {
            let known = [
                "status",
                "start",
                "stop",
                "restart",
                "reload",
                "shutdown",
                "exit",
                "subscribe",
                "version",
            ];
            let hint = crate::config::did_you_mean(other, &known)
                .map(|k| format!(" (did you mean \"{k}\"?)"))
                .unwrap_or_default();
            let shown: String = other.chars().take(64).collect();
            Reply::err(
                id,
                "unknown_command",
                format!("unknown command \"{shown}\"{hint}"),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        let allowed = [
            None,
            Some("http://127.0.0.1"),
            Some("http://127.0.0.1:3333"),
            Some("https://localhost:8080"),
            Some("http://LOCALHOST"),
            Some("http://[::1]:3333"),
            Some("http://[::1]"),
        ];
        for o in allowed {
            assert!(origin_allowed(o), "{o:?}");
        }
        let refused = [
            "http://evil.com",
            "http://127.0.0.1.evil.com",
            "http://localhost.evil.com:80",
            "null",
            "file://",
            "ws://127.0.0.1",
            "http://[::2]",
            "http://127.0.0.1:notaport",
            "http://user@127.0.0.1",
            "",
        ];
        for o in refused {
            assert!(!origin_allowed(Some(o)), "{o}");
        }
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_the_token_is_not() {
        for value in [
            "Bearer tok",
            "bearer tok",
            "BEARER tok",
            "Bearer   tok ",
            "bearer\ttok",
        ] {
            assert_eq!(bearer_token(value), Some("tok"), "{value:?}");
        }
        assert_eq!(bearer_token("bearer TOK"), Some("TOK"));
        for value in ["Bearertok", "Basic tok", "bearer", "", "tok"] {
            assert_ne!(bearer_token(value), Some("tok"), "{value:?}");
        }
    }

    #[test]
    fn only_commands_that_change_something_are_logged_without_a_trailing_space() {
        let request = |cmd: &str, args: &[&str]| {
            let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            Request::new(Value::Null, cmd, &args)
        };
        for cmd in ["start", "stop", "restart", "reload", "shutdown", "exit"] {
            assert!(changes_something(cmd), "{cmd}");
        }
        for cmd in ["status", "version", "subscribe", "tail", "logs", "nosuch"] {
            assert!(!changes_something(cmd), "{cmd}");
        }
        assert_eq!(command_line(&request("reload", &[])), "reload");
        assert_eq!(
            command_line(&request("start", &["web", "web:1"])),
            "start web web:1"
        );
        assert_eq!(
            command_line(&request("stop", &["a\n2026-01-01T00:00:00Z forged\r"])),
            "stop a\\n2026-01-01T00:00:00Z forged\\r"
        );
    }

    #[test]
    fn a_full_table_evicts_the_longest_idle_never_a_busy_or_subscribed_one() {
        let connections = Connections::new(4);
        let mut admitted: Vec<_> = (0..4)
            .map(|_| {
                let (slot, evicted) = connections.admit();
                (Arc::new(slot), evicted)
            })
            .collect();
        let evicted = |admitted: &mut Vec<(Arc<Slot>, oneshot::Receiver<()>)>| -> Vec<usize> {
            (0..admitted.len())
                .filter(|&i| admitted[i].1.try_recv().is_ok())
                .collect()
        };
        admitted[0].0.subscribed();
        let busy = admitted[1].0.request();
        admitted[2].0.touch(); // now more recent than 3
        let newcomer = connections.admit();
        assert_eq!(evicted(&mut admitted), [3]);
        // A finished request makes its connection idle, and recent.
        drop(busy);
        let (slot, rx) = newcomer;
        admitted.push((Arc::new(slot), rx));
        let _kept = connections.admit();
        assert_eq!(evicted(&mut admitted), [2]);
        let _kept_too = connections.admit();
        assert_eq!(
            evicted(&mut admitted),
            [4],
            "the newcomer, idle since before 1 finished"
        );
        let _and_more = connections.admit();
        assert_eq!(evicted(&mut admitted), [1]);
    }

    #[tokio::test]
    async fn room_waits_while_every_connection_is_busy() {
        let connections = Connections::new(2);
        let (a, _a) = connections.admit();
        let (b, _b) = connections.admit();
        let (a, b) = (Arc::new(a), Arc::new(b));
        a.subscribed();
        let busy = b.request();
        let waiting = tokio::time::timeout(Duration::from_millis(50), connections.room());
        assert!(waiting.await.is_err(), "no room while all are busy");
        drop(busy);
        let waiting = tokio::time::timeout(Duration::from_secs(5), connections.room());
        assert!(waiting.await.is_ok(), "an idle connection makes room");
        drop(b);
        assert_eq!(connections.table().entries.len(), 1);
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn loopback_listen_addresses() {
        for a in ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"] {
            assert!(is_loopback(a), "{a}");
        }
        for a in ["0.0.0.0", "::", "192.168.1.2", "example.com"] {
            assert!(!is_loopback(a), "{a}");
        }
    }
}
