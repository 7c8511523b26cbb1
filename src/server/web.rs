//! The first bytes of every connection (SPEC §7, §14, §18): one request
//! head, then either a WebSocket session or one plain-HTTP answer.
//!
//! tungstenite's own accept answers nothing to a plain GET and refuses a
//! request body, so the head is read here ([`crate::http::read_head`],
//! bounded to 8 KiB), checked, and then either upgraded — the 101 is
//! built by tungstenite from the head and the bytes read past it are handed
//! to [`WebSocketStream::from_partially_read`] — or answered and closed.
//! The checks are the same for both and run in the same order (Host, then
//! Origin, then token or session; `handshake.rs`). `/metrics` asks the
//! supervisor for a status snapshot and reads the groups' CPU and memory
//! from /proc on the blocking pool, only when scraped.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::handshake::server::{create_response, write_response};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use super::handshake::{self, constant_time_eq, Credentials};
use super::listen::Io;
use super::{Context, Peer, Ws};
use crate::http::{self, metrics, HeadError, Response, Route, MAX_BODY};

/// How long a closed connection's input is drained at most.
const LINGER: Duration = Duration::from_secs(1);
/// How many bytes of it at most.
const LINGER_BYTES: usize = 64 * 1024;

/// Reads the head and serves it: the WebSocket when it asks for one and
/// passes the checks, else `None` once the HTTP answer is written.
pub(super) async fn open(
    mut stream: Box<dyn Io>,
    peer: &Peer,
    ctx: &Context,
    config: WebSocketConfig,
) -> Option<Ws> {
    let (head, rest) = match http::read_head(&mut stream).await {
        Ok(read) => read,
        Err(HeadError::TooLarge) => {
            crate::log!("client {peer}: request head over 8 KiB refused");
            let resp = Response::text(431, "request head over 8 KiB\n");
            send(&mut stream, &resp, false).await;
            return None;
        }
        Err(HeadError::Malformed(e)) => {
            crate::log!("client {peer}: not an HTTP request: {e}");
            send(
                &mut stream,
                &Response::text(400, format!("bad request: {e}\n")),
                false,
            )
            .await;
            return None;
        }
        Err(HeadError::Closed) => return None,
    };
    if head.is_upgrade() {
        return upgrade(stream, peer, ctx, head, rest, config).await;
    }
    let resp = answer(&mut stream, peer, ctx, &head, rest).await;
    send(&mut stream, &resp, head.method == "HEAD").await;
    None
}

/// The WebSocket handshake proper, once the head is read.
async fn upgrade(
    mut stream: Box<dyn Io>,
    peer: &Peer,
    ctx: &Context,
    head: http::Head,
    rest: Vec<u8>,
    config: WebSocketConfig,
) -> Option<Ws> {
    if let Err((status, text)) = handshake::check(&head, &ctx.access) {
        crate::log!(
            "client {peer}: handshake refused: {status} {}",
            text.trim_end()
        );
        send(&mut stream, &Response::text(status, text), false).await;
        return None;
    }
    let response = head
        .to_request()
        .map_err(|e| e.to_string())
        .and_then(|req| create_response(&req).map_err(|e| e.to_string()));
    let response = match response {
        Ok(r) => r,
        Err(e) => {
            crate::log!("client {peer}: handshake refused: {e}");
            send(&mut stream, &Response::text(400, format!("{e}\n")), false).await;
            return None;
        }
    };
    let mut bytes = Vec::with_capacity(160);
    if write_response(&mut bytes, &response).is_err() || stream.write_all(&bytes).await.is_err() {
        return None;
    }
    Some(WebSocketStream::from_partially_read(stream, rest, Role::Server, Some(config)).await)
}

/// The answer to a plain HTTP request.
async fn answer(
    stream: &mut Box<dyn Io>,
    peer: &Peer,
    ctx: &Context,
    head: &http::Head,
    rest: Vec<u8>,
) -> Response {
    let access = &ctx.access;
    if let Err((status, text)) = handshake::host_and_origin(head, access) {
        crate::log!(
            "client {peer}: {} {} refused: {status} {}",
            head.method,
            head.path(),
            text.trim_end()
        );
        return Response::text(status, text);
    }
    let creds = handshake::credentials(head, access);
    let locked = access.token.is_some();
    match http::route(&head.method, head.path()) {
        Route::NotFound => Response::text(404, "not found\n"),
        Route::MethodNotAllowed(allow) => {
            Response::text(405, "method not allowed\n").with("Allow", allow)
        }
        Route::Dashboard if locked && creds == Credentials::Nothing => Response::login(200, ""),
        Route::Dashboard => Response::dashboard(),
        Route::Metrics if locked && creds != Credentials::Bearer => {
            Response::text(401, "/metrics needs Authorization: Bearer TOKEN\n")
                .with("WWW-Authenticate", "Bearer")
        }
        Route::Metrics => scrape(ctx).await,
        Route::Login => login(stream, peer, ctx, head, rest).await,
    }
}

/// `POST /login`: a right token gets a session cookie and is sent to `/`.
async fn login(
    stream: &mut Box<dyn Io>,
    peer: &Peer,
    ctx: &Context,
    head: &http::Head,
    mut body: Vec<u8>,
) -> Response {
    if head.header("transfer-encoding").is_some() {
        return Response::text(411, "send the form with a Content-Length\n");
    }
    let Some(len) = head
        .header("content-length")
        .and_then(|v| v.trim().parse::<usize>().ok())
    else {
        return Response::text(411, "send the form with a Content-Length\n");
    };
    if len > MAX_BODY {
        return Response::text(413, "the form is over 4 KiB\n");
    }
    while body.len() < len {
        let mut chunk = [0u8; 1024];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Response::text(400, "the form ended early\n"),
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    body.truncate(len);
    let see_dashboard = |r: Response| r.with("Location", "/");
    let Some(token) = &ctx.access.token else {
        // Nothing to log into: the page is open already.
        return see_dashboard(Response::text(303, "no token is set\n"));
    };
    let given = http::form_field(&body, "token").unwrap_or_default();
    if !constant_time_eq(&given, token.as_bytes()) {
        crate::log!("client {peer}: login with a wrong token");
        return Response::login(401, "<p class=\"error\">Wrong token.</p>");
    }
    match ctx.access.sessions.create() {
        Ok(id) => {
            crate::log!("client {peer}: logged in to the dashboard");
            let name = http::cookie_name(head.header("host"));
            see_dashboard(Response::text(303, "signed in\n")).with(
                "Set-Cookie",
                format!("{name}={id}; HttpOnly; SameSite=Strict; Path=/"),
            )
        }
        Err(e) => {
            crate::log!("client {peer}: login failed: {e}");
            Response::text(500, format!("{e}\n"))
        }
    }
}

/// `GET /metrics`: a status snapshot and one scan of /proc.
async fn scrape(ctx: &Context) -> Response {
    let status = match ctx.handle.status(Vec::new()).await {
        Ok(s) => s,
        Err(e) => return Response::text(503, format!("{}\n", e.message)),
    };
    let groups: BTreeSet<u32> = status.instances.iter().filter_map(|i| i.pid).collect();
    let usage = tokio::task::spawn_blocking(move || crate::process::memory::group_usage(&groups))
        .await
        .unwrap_or_default();
    let text = metrics::render(
        &status,
        &usage,
        crate::process::memory::clock_ticks(),
        &ctx.cpu,
        env!("CARGO_PKG_VERSION"),
    );
    let mut resp = Response::text(200, text);
    resp.content_type = metrics::CONTENT_TYPE;
    resp
}

/// Writes a response and closes the write side, then reads and drops what
/// the peer still sends for a moment (bounded in bytes and time): closing a
/// socket with unread input resets it, and the peer — say one whose head
/// was too large — would lose the answer.
async fn send(stream: &mut Box<dyn Io>, resp: &Response, head_only: bool) {
    if stream.write_all(&resp.to_bytes(head_only)).await.is_err() {
        return;
    }
    let _ = stream.shutdown().await;
    let drain = async {
        let mut sink = [0u8; 4096];
        let mut left = LINGER_BYTES;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}
