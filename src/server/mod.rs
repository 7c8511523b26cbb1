//! The WebSocket server (SPEC §7, §13): accept loop, handshake checks, one
//! task per client.
//!
//! Every byte from a socket is hostile. Connections come from any number of
//! listeners (`listen.rs`: loopback TCP and Unix sockets) into one accept
//! loop, and are served alike past `accept`. Each starts with one request
//! head (`web.rs`): a plain HTTP request (the dashboard, `/metrics`,
//! `/login`) is answered and closed, an upgrade becomes a session. The
//! handshake is bounded in time (half-open handshakes are dropped) and
//! checked by `handshake.rs`: a
//! `Host` that is not loopback (DNS rebinding) and a browser `Origin` that
//! is not loopback (cross-site WebSocket hijacking) get 403, a missing or
//! wrong token 401. Frames and messages over 64 KiB are refused by
//! tungstenite from the frame header, before the payload is buffered.
//!
//! A client cannot stall the daemon or other clients: each request runs in
//! its own task (a slow `start` does not hold up a `status` on the same
//! connection), replies go through a small bounded queue drained by the
//! connection's writer, in-flight requests per connection are capped (a
//! client that never reads just stops being read), and a subscriber that
//! falls behind the bounded event channel is disconnected.
//!
//! Logs (SPEC §10, §18): `tail`, `logs`, `clear` and `signal` ask the
//! supervisor which files (or process groups) the names mean, then do the
//! file work on the blocking pool — the daemon runs on one thread, which a
//! slow disk must never hold. With `follow`, the request's task goes on
//! after its reply as the follow: it hands its [`Follower`]s to the
//! server's one [`Poller`] thread and turns what comes back into `output`
//! events carrying the request's id. A follow costs nothing to the child
//! (it only reads the files the child writes) and nothing when nobody
//! follows (no thread, no timer). Its events go through the connection's
//! one bounded queue: a connection that takes no frame for
//! [`SLOW_FOLLOWER`] does not keep up and is closed; until then the poller
//! simply reads later, since the text waits in the file rather than in
//! memory. `unfollow ID` stops the follow and waits for its task to end
//! before replying, so no event of it comes after the reply.
//!
//! Idle connections cannot lock new clients out (SPEC §17). At most
//! [`MAX_CLIENTS`] are served at once; a connection past that closes the one
//! that has been idle the longest — idle meaning no request being carried
//! out, no `subscribe` and no follow — so opening hundreds of silent
//! sockets, even from one loopback peer, only ever costs the attacker their
//! own oldest ones. A connection still in its handshake counts as idle. Only
//! when every slot is busy, subscribed or following does the accept loop
//! wait (new clients then queue in the kernel's backlog). A closing
//! connection gets a moment to flush, then its socket is dropped, so a peer
//! that stopped reading cannot keep it.

mod commands;
mod connections;
mod handshake;
mod listen;
mod web;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc, oneshot, Semaphore};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use tokio_util::sync::CancellationToken;

pub use handshake::{host_allowed, origin_allowed, Access};
pub use listen::{bind, Listen, Listener, MAX_SOCKET_PATH};

pub use commands::execute;
use commands::{command_opts, run, shown};
use connections::{Connections, Following, Slot};
use listen::Io;

use crate::output::follow::{Follower, Poller};
use crate::output::{tail, LogTarget, Stream};
use crate::protocol::{
    parse_signal, LogLine, LogsData, OptError, OptType, OutputEvent, Reply, Request, TailData,
    MAX_FRAME,
};
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

/// How long a subscriber's full queue is waited for before it is dropped.
const SLOW_SUBSCRIBER: Duration = Duration::from_secs(2);
/// Bytes tungstenite may hold for a connection whose socket is full. A
/// single frame larger than this cannot be sent at all, so it bounds the
/// largest reply: a `tail` of [`MAX_LOG_TEXT`] JSON-escapes to at most six
/// times that.
const MAX_WRITE_BUFFER: usize = 8 * 1024 * 1024;

/// How long a follow waits for room in its connection's queue before the
/// connection counts as not keeping up and is closed.
pub const SLOW_FOLLOWER: Duration = Duration::from_secs(2);
/// Follows one connection may run at once (each holds its files open).
pub const MAX_FOLLOWS: usize = 8;
/// Lines `tail` and `logs` return at most per stream, and by default.
pub const MAX_LINES: i64 = 10_000;
const DEFAULT_LINES: i64 = 10;
/// Bytes of text a `tail` reply carries at most (the newest whole lines).
const MAX_LOG_TEXT: usize = 1024 * 1024;
/// The JSON size a `logs` reply keeps to, shared between its streams.
const MAX_LOGS_REPLY: usize = 4 * 1024 * 1024;

/// Every command the server knows, for "did you mean".
const COMMANDS: &[&str] = &[
    "status",
    "start",
    "stop",
    "restart",
    "reload",
    "shutdown",
    "exit",
    "subscribe",
    "version",
    "tail",
    "logs",
    "clear",
    "signal",
    "unfollow",
];

/// What the server needs from the daemon.
#[derive(Clone)]
pub struct Context {
    /// The supervisor.
    pub handle: Handle,
    /// Reload entry point.
    pub reloader: Reloader,
    /// What handshakes are checked against (token, listen addresses).
    pub access: Access,
    /// Asks the daemon to shut down.
    pub shutdown: mpsc::Sender<()>,
    /// The log writers (`clear` goes through them).
    pub output: crate::output::Output,
    /// The dashboard's URL on the first TCP listener, if there is one.
    pub dashboard: Option<String>,
    /// `/metrics` CPU counters, kept between scrapes so they never go back.
    pub cpu: Arc<crate::http::metrics::CpuCounters>,
}

/// Is this listen address loopback-only?
pub fn is_loopback(listen: &str) -> bool {
    let host = listen.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Serves clients from every listener until the task is dropped; they share
/// one connection table, so the cap and eviction count them all.
pub async fn serve(listeners: Vec<Listener>, ctx: Context) {
    let connections = Connections::new(MAX_CLIENTS);
    let poller = Poller::default();
    if listeners.is_empty() {
        return;
    }
    loop {
        // Accept only a client that can be served: otherwise leave it in
        // the backlog rather than take a socket just to hold it. One loop
        // for every listener, so a freed slot goes to whoever comes first.
        connections.room().await;
        // Both accepts are cancel-safe: the losers lose nothing.
        let accepts = listeners.iter().map(|l| Box::pin(l.accept()));
        let (accepted, _, _) = futures_util::future::select_all(accepts).await;
        let (stream, peer) = match accepted {
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
        let poller = poller.clone();
        tokio::spawn(client(
            stream,
            peer.into(),
            ctx,
            poller,
            Arc::new(slot),
            evicted,
        ));
    }
}

type Ws = WebSocketStream<Box<dyn Io>>;

/// Who a connection is, for log lines: a TCP peer address or the socket
/// path and the peer's pid.
type Peer = Arc<str>;

async fn client(
    stream: Box<dyn Io>,
    peer: Peer,
    ctx: Context,
    poller: Poller,
    slot: Arc<Slot>,
    mut evicted: oneshot::Receiver<()>,
) {
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME))
        .max_frame_size(Some(MAX_FRAME))
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_WRITE_BUFFER);
    let opened = tokio::select! {
        opened = tokio::time::timeout(HANDSHAKE_TIMEOUT, web::open(stream, &peer, &ctx, config)) => opened,
        _ = &mut evicted => {
            crate::log!("client {peer}: closed during its handshake to make room for a new connection");
            return;
        }
    };
    let ws = match opened {
        Ok(Some(ws)) => ws,
        // A plain HTTP request, answered; or a refused handshake, logged.
        Ok(None) => return,
        Err(_) => {
            crate::log!("client {peer}: handshake timed out");
            return;
        }
    };
    let (sink, source) = ws.split();
    let (out, outbox) = mpsc::channel::<Message>(OUTBOX);
    let mut writer = tokio::spawn(write_frames(sink, outbox));
    let conn = Conn {
        out,
        slot,
        peer: peer.clone(),
        poller,
        follows: Arc::default(),
        serial: Arc::default(),
        ended: CancellationToken::new(),
        kill: CancellationToken::new(),
    };

    // The event forwarder holds a sender to the writer: it must end with the
    // connection, or the writer (and the socket) would live on.
    let mut forwarder: Option<tokio::task::JoinHandle<()>> = None;
    tokio::select! {
        () = read_requests(source, &conn, &ctx, &mut forwarder) => {}
        _ = &mut evicted => {
            crate::log!(
                "client {peer}: closed, the longest idle of {MAX_CLIENTS} connections, to make room for a new one"
            );
            let frame = CloseFrame {
                code: CloseCode::Again,
                reason: "too many connections: closing the longest idle one".into(),
            };
            let _ = conn.out.try_send(Message::Close(Some(frame)));
        }
        // A subscriber or a follow that could not deliver: whoever gave up
        // on it logged why. Its queue is full, so the close frame may not
        // fit; the socket is dropped after the grace either way.
        () = conn.kill.cancelled() => {
            let frame = CloseFrame {
                code: CloseCode::Policy,
                reason: "too slow reading".into(),
            };
            let _ = conn.out.try_send(Message::Close(Some(frame)));
        }
    }
    if let Some(f) = forwarder {
        f.abort();
    }
    // Every follow stops (they hold senders to the writer too).
    conn.ended.cancel();
    drop(conn);
    // Requests still running hold senders too; a peer that went away or
    // stopped reading must not keep the socket for as long as they run.
    if tokio::time::timeout(CLOSE_GRACE, &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
}

/// One connection as its request tasks see it.
#[derive(Clone)]
struct Conn {
    /// The writer's queue: replies and events.
    out: mpsc::Sender<Message>,
    /// Its place in the connection table.
    slot: Arc<Slot>,
    /// Who it is, for log lines.
    peer: Peer,
    /// The thread that reads every followed file.
    poller: Poller,
    /// Follows running on it, by the id of the request that started each
    /// (as [`follow_key`] spells it).
    follows: Arc<Mutex<HashMap<String, Follow>>>,
    /// Numbers follows, so a follow ending removes its own entry and never
    /// a newer one registered under the same id.
    serial: Arc<std::sync::atomic::AtomicU64>,
    /// Cancelled when the connection ends: every follow stops.
    ended: CancellationToken,
    /// Cancelled to close the connection: a consumer that does not keep up.
    kill: CancellationToken,
}

impl Conn {
    fn follows(&self) -> MutexGuard<'_, HashMap<String, Follow>> {
        // Holds no invariant beyond its entries; see `Connections::table`.
        self.follows.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Books a follow under the id of the request starting it, before the
    /// request runs, so an `unfollow` sent right behind it finds it.
    fn register(&self, id: &Value) -> Result<Registration, String> {
        let key = follow_key(id);
        let mut follows = self.follows();
        if follows.contains_key(&key) {
            return Err(format!(
                "a follow with id {key} is already running on this connection; \
                 end it with unfollow or use another id"
            ));
        }
        if follows.len() >= MAX_FOLLOWS {
            return Err(format!(
                "too many follows on this connection (at most {MAX_FOLLOWS}); end one with unfollow"
            ));
        }
        let serial = self
            .serial
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let stop = self.ended.child_token();
        let (done, ended) = oneshot::channel();
        follows.insert(
            key.clone(),
            Follow {
                serial,
                stop: stop.clone(),
                ended,
            },
        );
        drop(follows);
        Ok(Registration {
            key,
            serial,
            stop,
            _done: done,
            _following: self.slot.following(),
            follows: self.follows.clone(),
        })
    }
}

/// A follow as `unfollow` reaches it.
struct Follow {
    /// Which registration made it.
    serial: u64,
    /// Stops it.
    stop: CancellationToken,
    /// Resolves (closed) once its task has ended.
    ended: oneshot::Receiver<()>,
}

/// A follow's own side of its booking; dropping it (the follow ended, or
/// its request failed) removes the booking and tells `unfollow`.
struct Registration {
    /// Its key in the table.
    key: String,
    /// Its number, to remove only its own entry.
    serial: u64,
    /// Cancelled by `unfollow` or by the end of the connection.
    stop: CancellationToken,
    /// Dropped with the registration: `unfollow` waits for that.
    _done: oneshot::Sender<()>,
    /// Keeps the connection from counting as idle.
    _following: Following,
    /// The connection's table, to remove the booking from.
    follows: Arc<Mutex<HashMap<String, Follow>>>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut follows = self.follows.lock().unwrap_or_else(PoisonError::into_inner);
        if follows
            .get(&self.key)
            .is_some_and(|f| f.serial == self.serial)
        {
            follows.remove(&self.key);
        }
    }
}

/// A request id as `unfollow` names it: `7` and `"7"` are the same follow.
fn follow_key(id: &Value) -> String {
    match id {
        Value::String(s) => s.clone(),
        other => other.to_string(),
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
/// own task; replies go to the connection's queue.
async fn read_requests(
    mut source: SplitStream<Ws>,
    conn: &Conn,
    ctx: &Context,
    forwarder: &mut Option<tokio::task::JoinHandle<()>>,
) {
    let (out, slot, peer) = (&conn.out, &conn.slot, &conn.peer);
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
        // A follow is booked here, in request order, so that an `unfollow`
        // right behind its request finds it.
        let registration = match command_opts(&request) {
            Ok(opts) if opts.follow() => match conn.register(&request.id) {
                Ok(registration) => Some(registration),
                Err(message) => {
                    let reply = Reply::err(request.id, "bad_args", message);
                    if out.send(Message::text(reply.encode())).await.is_err() {
                        break;
                    }
                    continue;
                }
            },
            _ => None,
        };
        if request.cmd == "subscribe" {
            let ok = request.args.is_empty() && request.opts.is_empty();
            // Subscribe before replying: no event after the reply is missed.
            let events = (ok && forwarder.is_none()).then(|| ctx.handle.subscribe());
            if events.is_some() {
                slot.subscribed();
            }
            let reply = if ok {
                Reply::ok(request.id, json!({}))
            } else {
                Reply::err(
                    request.id,
                    "bad_args",
                    "subscribe takes no arguments or options",
                )
            };
            if out.send(Message::text(reply.encode())).await.is_err() {
                break;
            }
            if let Some(events) = events {
                *forwarder = Some(tokio::spawn(forward_events(
                    events,
                    out.clone(),
                    peer.clone(),
                    conn.kill.clone(),
                )));
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
        let conn = conn.clone();
        tokio::spawn(async move {
            let (reply, follow) = if request.cmd == "unfollow" {
                (unfollow(&conn, request).await, None)
            } else {
                run(&ctx, request, registration).await
            };
            // Carried out: a reply the peer does not read leaves the
            // connection idle (and evictable), not busy.
            drop(busy);
            let sent = conn.out.send(Message::text(reply.encode())).await.is_ok();
            drop(permit);
            // The reply is queued before the first event of the follow.
            if let (true, Some(follow)) = (sent, follow) {
                follow.run(&conn).await;
            }
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
    peer: Peer,
    kill: CancellationToken,
) {
    let why = loop {
        match events.recv().await {
            Ok(ev) => {
                let text = serde_json::to_string(&ev).unwrap_or_default();
                // A burst (200 instances starting) may fill the queue of a
                // subscriber that does read: the broadcast backlog holds the
                // rest meanwhile. One whose queue stays full is not reading:
                // drop it rather than let it hold events back.
                match tokio::time::timeout(SLOW_SUBSCRIBER, out.send(Message::text(text))).await {
                    Ok(Ok(())) => {}
                    Err(_) => {
                        break format!("its queue stayed full for {} s", SLOW_SUBSCRIBER.as_secs())
                    }
                    Ok(Err(_)) => return,
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => break format!("it missed {n} events"),
            Err(broadcast::error::RecvError::Closed) => return,
        }
    };
    crate::log!("client {peer}: subscriber too slow ({why}), disconnecting");
    // The queue may be too full for a close frame: closing the connection
    // is the connection task's job.
    kill.cancel();
}

/// `unfollow ID`: ends the follow that request ID started on this
/// connection, once its task is done, so no event of it follows the reply.
async fn unfollow(conn: &Conn, req: Request) -> Reply {
    if !req.opts.is_empty() {
        let name = req.opts.keys().next().cloned().unwrap_or_default();
        return Reply::err(
            req.id,
            "bad_args",
            format!("unfollow takes no options (got {})", shown(&name)),
        );
    }
    let [key] = req.args.as_slice() else {
        return Reply::err(
            req.id,
            "bad_args",
            "unfollow takes the id of the request that started the follow",
        );
    };
    let Some(follow) = conn.follows().remove(key) else {
        return Reply::err(
            req.id,
            "bad_args",
            format!("no follow with id {} on this connection", shown(key)),
        );
    };
    follow.stop.cancel();
    // A follow notices within one poll, or one blocking read.
    let _ = tokio::time::timeout(Duration::from_secs(5), follow.ended).await;
    Reply::ok(req.id, json!({}))
}

/// One followed stream.
struct Followed {
    /// `web:0`.
    name: String,
    /// Which stream.
    stream: Stream,
    /// Its reader.
    follower: Follower,
}

/// A follow to run once its request's reply is queued.
struct FollowTask {
    /// The id of the request that started it, carried by its events.
    id: Value,
    /// Its booking in the connection (dropped when it ends).
    registration: Registration,
    /// What it follows.
    followed: Vec<Followed>,
}

impl FollowTask {
    /// Queues what the poller reads for it as `output` events, until
    /// `unfollow`, the end of the connection, or a connection that does not
    /// take an event within [`SLOW_FOLLOWER`] (then closed).
    async fn run(self, conn: &Conn) {
        let FollowTask {
            id,
            registration,
            followed,
        } = self;
        let (labels, followers): (Vec<_>, Vec<_>) = followed
            .into_iter()
            .map(|f| ((f.name, f.stream.name()), f.follower))
            .unzip();
        let mut chunks = match conn.poller.watch(followers) {
            Ok(chunks) => chunks,
            Err(e) => {
                crate::log!("client {}: cannot follow: {e}", conn.peer);
                return;
            }
        };
        let stop = registration.stop.clone();
        'follow: loop {
            let batch = tokio::select! {
                biased;
                () = stop.cancelled() => break,
                chunk = chunks.recv() => match chunk {
                    Some(chunk) => chunk,
                    None => break,
                },
            };
            for (i, text) in batch {
                let Some((name, stream)) = labels.get(i) else {
                    continue;
                };
                let event = OutputEvent {
                    id: id.clone(),
                    name: name.clone(),
                    stream: (*stream).into(),
                    text,
                };
                let frame = Message::text(event.encode());
                tokio::select! {
                    biased;
                    () = stop.cancelled() => break 'follow,
                    sent = tokio::time::timeout(SLOW_FOLLOWER, conn.out.send(frame)) => match sent {
                        Ok(Ok(())) => {}
                        Err(_) => {
                            crate::log!(
                                "client {}: follower too slow (no room in its queue for {} s), disconnecting",
                                conn.peer,
                                SLOW_FOLLOWER.as_secs()
                            );
                            conn.kill.cancel();
                            break 'follow;
                        }
                        Ok(Err(_)) => break 'follow, // the connection is gone
                    },
                }
            }
        }
        // Dropping the receiver ends the poller's watch; the registration
        // tells `unfollow` the follow is over.
        drop(chunks);
        drop(registration);
    }
}

#[cfg(test)]
mod tests {
    use super::commands::*;
    use super::*;

    #[test]
    fn only_commands_that_change_something_are_logged_without_a_trailing_space() {
        let request = |cmd: &str, args: &[&str]| {
            let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            Request::new(Value::Null, cmd, &args)
        };
        for cmd in [
            "start", "stop", "restart", "reload", "shutdown", "exit", "signal", "clear",
        ] {
            assert!(changes_something(cmd), "{cmd}");
        }
        for cmd in [
            "status",
            "version",
            "subscribe",
            "tail",
            "logs",
            "unfollow",
            "nosuch",
        ] {
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

    fn with_opts(cmd: &str, opts: Value) -> Request {
        let mut req = Request::new(json!(1), cmd, &[]);
        if let Value::Object(opts) = opts {
            req.opts = opts;
        }
        req
    }

    #[test]
    fn options_get_defaults_and_every_mistake_is_named() {
        assert_eq!(
            command_opts(&with_opts("tail", json!({}))),
            Ok(Opts::Tail {
                stream: Stream::Stdout,
                lines: 10,
                follow: false
            })
        );
        assert_eq!(
            command_opts(&with_opts(
                "tail",
                json!({"stream": "stderr", "lines": 10000, "follow": true})
            )),
            Ok(Opts::Tail {
                stream: Stream::Stderr,
                lines: 10_000,
                follow: true
            })
        );
        assert_eq!(
            command_opts(&with_opts("logs", json!({"lines": 1}))),
            Ok(Opts::Logs {
                lines: 1,
                follow: true
            })
        );
        assert_eq!(
            command_opts(&with_opts("status", json!({}))),
            Ok(Opts::None)
        );
        // An unknown command's own error comes first.
        assert_eq!(
            command_opts(&with_opts("frob", json!({"x": 1}))),
            Ok(Opts::None)
        );
        let cases = [
            (
                "tail",
                json!({"lines": 0}),
                "lines must be between 1 and 10000, got 0",
            ),
            (
                "tail",
                json!({"lines": 10001}),
                "lines must be between 1 and 10000, got 10001",
            ),
            ("logs", json!({"lines": -3}), "got -3"),
            (
                "tail",
                json!({"lines": "5"}),
                "option \"lines\" of tail must be an integer, got \"5\"",
            ),
            (
                "tail",
                json!({"follow": "yes"}),
                "option \"follow\" of tail must be a boolean",
            ),
            (
                "tail",
                json!({"stream": "stdin"}),
                "stream must be \"stdout\" or \"stderr\", got \"stdin\"",
            ),
            (
                "tail",
                json!({"lnes": 5}),
                "unknown option \"lnes\" for tail (did you mean \"lines\"?)",
            ),
            (
                "logs",
                json!({"stream": "stdout"}),
                "unknown option \"stream\" for logs",
            ),
            (
                "status",
                json!({"lines": 5}),
                "status takes no options (got \"lines\")",
            ),
            ("clear", json!({"x": true}), "clear takes no options"),
        ];
        for (cmd, opts, want) in cases {
            let got = command_opts(&with_opts(cmd, opts.clone())).expect_err(&opts.to_string());
            assert!(got.contains(want), "{cmd} {opts}: {got}");
        }
    }

    #[test]
    fn follow_ids_match_as_text() {
        assert_eq!(follow_key(&json!(7)), "7");
        assert_eq!(follow_key(&json!("7")), "7");
        assert_eq!(follow_key(&json!("a b")), "a b");
        assert_eq!(follow_key(&Value::Null), "null");
    }

    #[test]
    fn logs_lines_keep_the_newest_that_fit_and_json_len_is_exact() {
        for text in [
            "plain",
            "quote \" and \\",
            "tab\tnl\ncr\r",
            "\u{1}\u{1b}[0m",
            "é☃",
        ] {
            let encoded = serde_json::to_string(text).unwrap();
            assert_eq!(json_len(text), encoded.len() - 2, "{text:?}");
        }
        let lines = newest_lines("web:0", Stream::Stdout, "a\nb\nc", 1000);
        let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["a", "b", "c"]);
        assert_eq!(lines[0].name, "web:0");
        assert_eq!(lines[0].stream, "stdout");
        // Room for two lines' worth: the newest two.
        let one = 40 + "web:0".len() + "stdout".len() + 1;
        let lines = newest_lines("web:0", Stream::Stdout, "a\nb\nc\n", 2 * one);
        let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["b", "c"]);
        let encoded = serde_json::to_string(&lines).unwrap();
        assert!(encoded.len() <= 2 * one, "{encoded}");
        assert!(newest_lines("web:0", Stream::Stdout, "", 1000).is_empty());
    }

    #[test]
    fn no_log_names_the_first_instance_without_any_file() {
        let target = |name: &str, stream, path: Option<&str>| LogTarget {
            name: name.into(),
            stream,
            path: path.map(PathBuf::from),
            missing: format!("{name} has no {} file", stream.name()),
        };
        let half = [
            target("web:0", Stream::Stdout, Some("/x/out.log")),
            target("web:0", Stream::Stderr, None),
        ];
        assert_eq!(
            without_files(&half),
            None,
            "one stream with a file is enough"
        );
        let none = [
            target("web:0", Stream::Stdout, Some("/x/out.log")),
            target("web:0", Stream::Stderr, None),
            target("db:0", Stream::Stdout, None),
            target("db:0", Stream::Stderr, None),
        ];
        assert_eq!(
            without_files(&none).as_deref(),
            Some("db:0 has no stdout file")
        );
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
