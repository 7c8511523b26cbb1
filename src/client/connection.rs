//! One WebSocket session with taskmasterd (SPEC §7): the handshake with the
//! bearer token, requests matched to their replies by id, and the event stream.
//!
//! Requests go out one at a time, each with a fresh id; frames that are not
//! its reply (events, or a late reply to an abandoned request) are skipped
//! while waiting. A session is cheap to open, and the REPL opens a new one
//! whenever the previous one is found dead, which is how it survives a daemon
//! restart. Nothing here prints: failures come back as [`SessionError`], whose
//! messages name the URL, the reason and what to do about it.
//!
//! `--url unix:PATH` speaks the same protocol over the daemon's Unix
//! socket: the handshake is the one of `ws://localhost/` (the daemon's Host
//! check accepts that name), sent over the socket instead of TCP.
//!
//! Nothing waits forever on a daemon that went silent or floods us with
//! other frames (SPEC §17): the connect and handshake, and the reply to every
//! request but `start`/`stop`/`restart`, must come within [`ANSWER_TIMEOUT`]
//! in all — a deadline for the whole wait, not for each frame, which a
//! flood would keep renewing. `start`/`stop`/`restart` reply once the action
//! has settled, which takes as long as the services' `starttime` and
//! `stoptime` say, so they wait (Ctrl-C ends the wait).

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use serde_json::{Map, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{self, HeaderValue};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use crate::protocol::{Reply, Request};

/// The daemon's port when none is given (SPEC §2).
const DEFAULT_PORT: u16 = 3333;

/// How long the TCP connect plus WebSocket handshake, or the reply to a
/// request that does not wait for an action, may take (SPEC §17). A daemon
/// answers both in well under a millisecond on loopback, so this only
/// catches a host that drops packets, something that is not taskmasterd, or
/// a daemon that is stuck.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Commands whose reply comes only once the action settled: however long a
/// service's `starttime` or `stoptime` is, so no timeout applies to them.
const WAITS_FOR_ACTION: &[&str] = &["start", "stop", "restart"];

/// How long to wait for the daemon to answer our close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_millis(50);

/// The session's byte stream: TCP or the daemon's Unix socket.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The URL the handshake of a `unix:PATH` session names.
const UNIX_REQUEST_URL: &str = "ws://localhost/";

/// Why a session could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The URL or token cannot form a handshake request: a usage error.
    #[error("invalid --url {url:?}: {reason}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Nothing answered at the URL (connection refused, timeout, DNS).
    #[error("cannot reach taskmasterd at {url}: {reason}\n{hint}")]
    Unreachable {
        /// The daemon's URL.
        url: String,
        /// What failed.
        reason: String,
        /// What the user can do about it.
        hint: String,
    },
    /// The daemon answered the handshake with an HTTP error (401, 403).
    #[error("taskmasterd at {url} refused the session: {reason}\n{hint}")]
    Refused {
        /// The daemon's URL.
        url: String,
        /// The HTTP status and the daemon's explanation.
        reason: String,
        /// What the user can do about it.
        hint: String,
    },
    /// Something accepted the connection but did not complete the handshake,
    /// or did not reply, within [`ANSWER_TIMEOUT`].
    #[error("taskmasterd at {url} did not {what} within {} s\n{hint}", ANSWER_TIMEOUT.as_secs())]
    Timeout {
        /// The daemon's URL.
        url: String,
        /// What it did not do in time ("reply to status").
        what: String,
        /// What the user can do about it.
        hint: String,
    },
    /// The connection broke before the reply came.
    #[error("lost the connection to taskmasterd at {url}: {reason}")]
    Lost {
        /// The daemon's URL.
        url: String,
        /// What happened.
        reason: String,
    },
    /// The daemon sent something that is not a reply as SPEC §7 defines it.
    #[error("unexpected reply from taskmasterd at {url}: {reason}")]
    BadReply {
        /// The daemon's URL.
        url: String,
        /// What was wrong with it.
        reason: String,
    },
}

/// Where the daemon is and how to authenticate: everything needed to open a
/// session, checked once up front.
#[derive(Debug, Clone)]
pub struct Target {
    /// The WebSocket URL, with `ws://` added when no scheme was given; or
    /// `unix:PATH` as given.
    url: String,
    /// The daemon's Unix socket, for a `unix:PATH` URL.
    socket: Option<std::path::PathBuf>,
    /// The bearer token, if any (an empty one counts as none).
    token: Option<String>,
}

impl Target {
    /// Checks the URL and token without touching the network.
    pub fn new(url: &str, token: Option<&str>) -> Result<Target, SessionError> {
        let token = token.filter(|t| !t.is_empty()).map(str::to_string);
        if let Some(path) = url.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(SessionError::BadUrl {
                    url: url.to_string(),
                    reason: "no socket path; use unix:PATH".into(),
                });
            }
            let target = Target {
                url: url.to_string(),
                socket: Some(path.into()),
                token,
            };
            target.handshake_request()?;
            return Ok(target);
        }
        let url = if url.contains("://") {
            url.to_string()
        } else {
            format!("ws://{url}")
        };
        let target = Target {
            url,
            socket: None,
            token,
        };
        let request = target.handshake_request()?;
        match request.uri().scheme_str() {
            Some("ws") => Ok(target),
            Some(scheme) => Err(SessionError::BadUrl {
                url: target.url,
                reason: format!("the scheme must be ws:// (taskmasterd speaks plain WebSocket), not {scheme}://"),
            }),
            None => Err(SessionError::BadUrl {
                url: target.url,
                reason: "no scheme; use ws://HOST:PORT".into(),
            }),
        }
    }

    /// The URL sessions connect to.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn handshake_request(&self) -> Result<http::Request<()>, SessionError> {
        let bad = |reason: String| SessionError::BadUrl {
            url: self.url.clone(),
            reason,
        };
        let url = match self.socket {
            Some(_) => UNIX_REQUEST_URL,
            None => self.url.as_str(),
        };
        let mut request = url.into_client_request().map_err(|e| bad(e.to_string()))?;
        if let Some(token) = &self.token {
            let value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| bad("the token contains characters not allowed in a header".into()))?;
            request
                .headers_mut()
                .insert(http::header::AUTHORIZATION, value);
        }
        Ok(request)
    }

    /// The port the URL names, for the "start it with" hint.
    fn port(&self) -> Option<u16> {
        if self.socket.is_some() {
            return None;
        }
        let uri: http::Uri = self.url.parse().ok()?;
        uri.port_u16()
    }

    fn start_hint(&self) -> String {
        let mut hint = String::from(
            "is taskmasterd running? start it with: taskmasterd --config taskmaster.lua",
        );
        if let Some(path) = &self.socket {
            hint.push_str(&format!(" --listen unix:{}", path.display()));
        } else if let Some(port) = self.port().filter(|p| *p != DEFAULT_PORT) {
            hint.push_str(&format!(" --port {port}"));
        }
        hint
    }

    /// Something answers at the URL but not in time.
    fn timeout(&self, what: String) -> SessionError {
        SessionError::Timeout {
            url: self.url.clone(),
            what,
            hint: format!(
                "the daemon may be stuck or overloaded, or something other than \
                 taskmasterd listens at {}",
                self.url
            ),
        }
    }

    /// Turns a failed handshake into a message that says what to do.
    fn handshake_error(&self, error: tungstenite::Error) -> SessionError {
        let unreachable = |reason: String| SessionError::Unreachable {
            url: self.url.clone(),
            reason,
            hint: self.start_hint(),
        };
        match error {
            tungstenite::Error::Http(response) => {
                let status = response.status();
                let mut reason = format!(
                    "HTTP {} {}",
                    status.as_u16(),
                    status.canonical_reason().unwrap_or("")
                )
                .trim_end()
                .to_string();
                let body = response
                    .body()
                    .as_deref()
                    .and_then(|b| std::str::from_utf8(b).ok())
                    .map(str::trim)
                    .unwrap_or("");
                if !body.is_empty() && body.len() <= 200 {
                    reason.push_str(&format!(" ({body})"));
                }
                let hint = match (status.as_u16(), &self.token) {
                    (401, None) => "the daemon requires a token: pass --token TOKEN or set \
                                    TASKMASTER_TOKEN"
                        .to_string(),
                    (401, Some(_)) => "the token was not accepted: check --token or \
                                       TASKMASTER_TOKEN against the daemon's --token"
                        .to_string(),
                    (403, _) => {
                        "the daemon only accepts clients that name it by a loopback address and \
                         come from a loopback origin (a token allows remote clients)"
                            .to_string()
                    }
                    _ => format!("is {} really taskmasterd?", self.url),
                };
                SessionError::Refused {
                    url: self.url.clone(),
                    reason,
                    hint,
                }
            }
            tungstenite::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
                unreachable("connection refused".into())
            }
            tungstenite::Error::Io(io)
                if self.socket.is_some() && io.kind() == std::io::ErrorKind::NotFound =>
            {
                unreachable("no such socket".into())
            }
            tungstenite::Error::Url(reason) => SessionError::BadUrl {
                url: self.url.clone(),
                reason: reason.to_string(),
            },
            other => unreachable(other.to_string()),
        }
    }
}

impl Target {
    /// Connects the byte stream the handshake goes over.
    async fn open(&self) -> std::io::Result<Box<dyn Io>> {
        if let Some(path) = &self.socket {
            return Ok(Box::new(UnixStream::connect(path).await?));
        }
        let uri: http::Uri = self
            .url
            .parse()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let host = uri
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(80);
        let stream = TcpStream::connect((host, port)).await?;
        let _ = stream.set_nodelay(true);
        Ok(Box::new(stream))
    }
}

/// An open WebSocket session with the daemon.
pub struct Session {
    /// The socket, past the handshake.
    ws: WebSocketStream<Box<dyn Io>>,
    /// Where the daemon is, for messages.
    target: Target,
    /// Id of the next request; replies are matched on it.
    next_id: u64,
    /// Whether `subscribe` was sent: from then on, events met while waiting
    /// for a reply are kept for [`Session::next_event`] instead of dropped.
    subscribed: bool,
    /// Events that arrived while a reply was awaited.
    pending_events: VecDeque<Value>,
}

impl Session {
    /// Opens a session: TCP connect and WebSocket handshake, within
    /// [`ANSWER_TIMEOUT`] together.
    pub async fn connect(target: &Target) -> Result<Session, SessionError> {
        let request = target.handshake_request()?;
        let deadline = tokio::time::Instant::now() + ANSWER_TIMEOUT;
        let stream = match tokio::time::timeout_at(deadline, target.open()).await {
            Err(_) => {
                return Err(SessionError::Unreachable {
                    url: target.url.clone(),
                    reason: format!("no answer within {} s", ANSWER_TIMEOUT.as_secs()),
                    hint: target.start_hint(),
                })
            }
            Ok(Err(error)) => return Err(target.handshake_error(tungstenite::Error::Io(error))),
            Ok(Ok(stream)) => stream,
        };
        let handshake = tokio_tungstenite::client_async_with_config(request, stream, None);
        match tokio::time::timeout_at(deadline, handshake).await {
            Err(_) => Err(target.timeout("complete the WebSocket handshake".into())),
            Ok(Err(error)) => Err(target.handshake_error(error)),
            Ok(Ok((ws, _response))) => Ok(Session {
                ws,
                target: target.clone(),
                next_id: 1,
                subscribed: false,
                pending_events: VecDeque::new(),
            }),
        }
    }

    /// Sends one request and waits for its reply: within [`ANSWER_TIMEOUT`],
    /// unless the command waits for an action to settle.
    pub async fn request(&mut self, cmd: &str, args: &[String]) -> Result<Reply, SessionError> {
        self.request_with(cmd, args, Map::new())
            .await
            .map(|(_, reply)| reply)
    }

    /// [`Session::request`] with options; also returns the request's id,
    /// which the output events of a follow it starts carry (and `unfollow`
    /// names).
    pub async fn request_with(
        &mut self,
        cmd: &str,
        args: &[String],
        opts: Map<String, Value>,
    ) -> Result<(u64, Reply), SessionError> {
        let id = self.next_id;
        self.next_id += 1;
        if cmd == "subscribe" {
            self.subscribed = true;
        }
        let mut request = Request::new(Value::from(id), cmd, args);
        request.opts = opts;
        let frame = request.encode();
        if WAITS_FOR_ACTION.contains(&cmd) {
            return self.exchange(frame, id).await.map(|reply| (id, reply));
        }
        match tokio::time::timeout(ANSWER_TIMEOUT, self.exchange(frame, id)).await {
            Ok(result) => result.map(|reply| (id, reply)),
            Err(_) => Err(self.target.timeout(format!("reply to {cmd}"))),
        }
    }

    /// Sends `frame` and reads until the reply with `id` comes.
    async fn exchange(&mut self, frame: String, id: u64) -> Result<Reply, SessionError> {
        if let Err(error) = self.ws.send(Message::text(frame)).await {
            return Err(self.lost(error.to_string()));
        }
        loop {
            let value = match self.ws.next().await {
                Some(Ok(Message::Text(text))) => self.decode(&text)?,
                Some(Ok(Message::Close(frame))) => {
                    let reason = match frame {
                        Some(f) if !f.reason.is_empty() => {
                            format!("the daemon closed it ({})", f.reason)
                        }
                        _ => "the daemon closed it".to_string(),
                    };
                    return Err(self.lost(reason));
                }
                Some(Ok(_)) => continue,
                Some(Err(error)) => return Err(self.lost(error.to_string())),
                None => return Err(self.lost("the daemon closed it".into())),
            };
            if value.get("event").is_some() {
                if self.subscribed {
                    self.pending_events.push_back(value);
                }
                continue;
            }
            // We send one request at a time, so a reply that could not carry
            // our id (`"id": null`, when the daemon could not read the
            // request) is about ours too.
            let ours = match value.get("id") {
                Some(Value::Null) => true,
                Some(other) => other.as_u64() == Some(id),
                None => false,
            };
            if !ours {
                continue;
            }
            return serde_json::from_value(value).map_err(|e| SessionError::BadReply {
                url: self.target.url.clone(),
                reason: e.to_string(),
            });
        }
    }

    /// The next event on a subscribed session; `None` once the daemon closes
    /// the connection in an orderly way.
    pub async fn next_event(&mut self) -> Result<Option<Value>, SessionError> {
        if let Some(event) = self.pending_events.pop_front() {
            return Ok(Some(event));
        }
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    let value = self.decode(&text)?;
                    if value.get("event").is_some() {
                        return Ok(Some(value));
                    }
                }
                Some(Ok(Message::Close(_))) | None => return Ok(None),
                Some(Ok(_)) => {}
                Some(Err(tungstenite::Error::ConnectionClosed)) => return Ok(None),
                Some(Err(error)) => return Err(self.lost(error.to_string())),
            }
        }
    }

    /// Whether the session still looks usable, without waiting: drains what
    /// arrived while it sat idle and reports a close, a reset or an end of
    /// stream as dead. Meant for sessions that are not subscribed: frames read
    /// here are dropped.
    pub async fn is_alive(&mut self) -> bool {
        // Let the runtime poll the socket once, so a close that arrived while
        // the user was typing is seen now rather than after the next send.
        tokio::task::yield_now().await;
        loop {
            match self.ws.next().now_or_never() {
                None => return true,
                Some(Some(Ok(Message::Close(_)))) | Some(Some(Err(_))) | Some(None) => {
                    return false
                }
                Some(Some(Ok(_))) => {}
            }
        }
    }

    /// Ends the session politely: a close frame, then a brief wait for the
    /// daemon's answer so it does not log a reset.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            if self.ws.close(None).await.is_ok() {
                while let Some(Ok(message)) = self.ws.next().await {
                    if matches!(message, Message::Close(_)) {
                        break;
                    }
                }
            }
        })
        .await;
    }

    fn decode(&self, text: &str) -> Result<Value, SessionError> {
        serde_json::from_str(text).map_err(|e| SessionError::BadReply {
            url: self.target.url.clone(),
            reason: format!("not JSON: {e}"),
        })
    }

    fn lost(&self, reason: String) -> SessionError {
        SessionError::Lost {
            url: self.target.url.clone(),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_without_a_scheme_get_ws() {
        let t = Target::new("127.0.0.1:4000", None).unwrap();
        assert_eq!(t.url(), "ws://127.0.0.1:4000");
        assert_eq!(t.port(), Some(4000));
        assert!(t.start_hint().ends_with("--port 4000"));
        let d = Target::new("ws://127.0.0.1:3333", Some("")).unwrap();
        assert!(d.token.is_none());
        assert!(d.start_hint().ends_with("taskmaster.lua"));
    }

    #[test]
    fn unix_urls_name_the_socket_and_handshake_as_localhost() {
        let t = Target::new("unix:/run/tm.sock", Some("tok")).unwrap();
        assert_eq!(t.url(), "unix:/run/tm.sock");
        let request = t.handshake_request().unwrap();
        assert_eq!(request.uri().host(), Some("localhost"));
        assert_eq!(
            request.headers().get("authorization").unwrap(),
            "Bearer tok"
        );
        assert!(t.start_hint().ends_with("--listen unix:/run/tm.sock"));
        assert!(matches!(
            Target::new("unix:", None),
            Err(SessionError::BadUrl { .. })
        ));
    }

    #[test]
    fn bad_urls_and_tokens_are_usage_errors() {
        assert!(matches!(
            Target::new("http://127.0.0.1:3333", None),
            Err(SessionError::BadUrl { .. })
        ));
        assert!(matches!(
            Target::new("wss://127.0.0.1:3333", None),
            Err(SessionError::BadUrl { .. })
        ));
        assert!(matches!(
            Target::new("ws://127.0.0.1:3333", Some("a\nb")),
            Err(SessionError::BadUrl { .. })
        ));
    }

    #[test]
    fn the_token_goes_in_the_authorization_header() {
        let t = Target::new("ws://127.0.0.1:3333", Some("s3cret")).unwrap();
        let request = t.handshake_request().unwrap();
        assert_eq!(
            request.headers().get("authorization").unwrap(),
            "Bearer s3cret"
        );
        let none = Target::new("ws://127.0.0.1:3333", None).unwrap();
        assert!(none
            .handshake_request()
            .unwrap()
            .headers()
            .get("authorization")
            .is_none());
    }

    #[test]
    fn timeouts_say_what_took_too_long_and_only_actions_wait() {
        let t = Target::new("ws://127.0.0.1:3333", None).unwrap();
        let message = t.timeout("reply to status".into()).to_string();
        assert!(
            message.starts_with(
                "taskmasterd at ws://127.0.0.1:3333 did not reply to status within 10 s\n"
            ),
            "{message}"
        );
        assert!(
            message.contains("something other than taskmasterd"),
            "{message}"
        );
        for cmd in ["start", "stop", "restart"] {
            assert!(WAITS_FOR_ACTION.contains(&cmd));
        }
        for cmd in ["status", "version", "reload", "subscribe", "shutdown"] {
            assert!(!WAITS_FOR_ACTION.contains(&cmd));
        }
    }

    #[test]
    fn refusals_name_the_status_and_the_fix() {
        let t = Target::new("ws://127.0.0.1:3333", None).unwrap();
        let response = http::Response::builder()
            .status(401)
            .body(Some(b"missing or wrong token".to_vec()))
            .unwrap();
        let message = t
            .handshake_error(tungstenite::Error::Http(Box::new(response)))
            .to_string();
        assert!(message.contains("HTTP 401 Unauthorized"), "{message}");
        assert!(message.contains("missing or wrong token"), "{message}");
        assert!(message.contains("--token"), "{message}");
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let message = t
            .handshake_error(tungstenite::Error::Io(refused))
            .to_string();
        assert!(
            message.contains("ws://127.0.0.1:3333: connection refused"),
            "{message}"
        );
        assert!(message.contains("taskmasterd --config"), "{message}");
    }
}
