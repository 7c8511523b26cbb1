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

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, Semaphore};
use tokio_tungstenite::tungstenite::handshake::server::{
    ErrorResponse, Request as HttpRequest, Response,
};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::protocol::{Reply, Request, MAX_FRAME};
use crate::reloader::Reloader;
use crate::supervisor::{Control, Handle};

/// How long a client may take to complete the WebSocket handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait in the kernel's backlog.
const MAX_CLIENTS: usize = 512;
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
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off briefly rather than spin.
                crate::log!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            client(stream, peer, ctx).await;
            drop(permit);
        });
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

// tungstenite's Callback trait fixes the large error type of the closure.
#[allow(clippy::result_large_err)]
async fn client(stream: TcpStream, peer: SocketAddr, ctx: Context) {
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
    let accepted = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)),
    )
    .await;
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
    let (mut sink, mut source) = ws.split();
    let (out, mut outbox) = mpsc::channel::<Message>(OUTBOX);

    let writer = tokio::spawn(async move {
        while let Some(msg) = outbox.recv().await {
            let closing = matches!(msg, Message::Close(_));
            if sink.send(msg).await.is_err() || closing {
                break;
            }
        }
        let _ = sink.close().await;
    });

    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    // The event forwarder holds a sender to the writer: it must end with the
    // connection, or the writer (and the socket) would live on.
    let mut forwarder: Option<tokio::task::JoinHandle<()>> = None;
    while let Some(frame) = source.next().await {
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
            let reply = if ok {
                Reply::ok(request.id, json!({}))
            } else {
                Reply::err(request.id, "bad_args", "subscribe takes no arguments")
            };
            if out.send(Message::text(reply.encode())).await.is_err() {
                break;
            }
            if let Some(events) = events {
                forwarder = Some(tokio::spawn(forward_events(events, out.clone(), peer)));
            }
            continue;
        }
        // Waiting here for a free slot stops reading from a client that
        // floods requests without reading the replies.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let ctx = ctx.clone();
        let out = out.clone();
        tokio::spawn(async move {
            let reply = execute(&ctx, request).await;
            let _ = out.send(Message::text(reply.encode())).await;
            drop(permit);
        });
    }
    if let Some(f) = forwarder {
        f.abort();
    }
    drop(out);
    let _ = writer.await;
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
        let request = |cmd: &str, args: &[&str]| Request {
            id: Value::Null,
            cmd: cmd.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
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
