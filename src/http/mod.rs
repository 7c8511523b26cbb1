//! The plain-HTTP side of the daemon's port (SPEC §14, §18): the request
//! head, routes, responses, the login form, sessions and `/metrics` text.
//!
//! Everything here is pure or nearly so: the server (`server/web.rs`) owns
//! the socket, reads the head through [`read_head`], and either hands a
//! WebSocket upgrade on to tungstenite or answers with a [`Response`] built
//! here. A head is bounded ([`MAX_HEAD`], 431 past it) and parsed by
//! `httparse`, the parser tungstenite itself uses; a body is read only for
//! `POST /login`, bounded by [`MAX_BODY`]. Every response closes the
//! connection: the page loads one document and then lives on its
//! WebSocket, so keep-alive would only hold sockets for nothing.

pub mod metrics;
pub mod sessions;

use tokio::io::{AsyncRead, AsyncReadExt as _};

/// The largest request head accepted (SPEC §14: over 8 KiB is refused).
pub const MAX_HEAD: usize = 8 * 1024;
/// The largest request body read (`POST /login` carries one short field).
pub const MAX_BODY: usize = 4 * 1024;
/// Headers in one request head at most.
const MAX_HEADERS: usize = 64;

/// The dashboard page, embedded so the binary serves it with no files.
pub const DASHBOARD: &str = include_str!("dashboard.html");
/// The login form shown in place of the page when a token is set.
const LOGIN: &str = include_str!("login.html");

/// A parsed request head.
#[derive(Debug, Clone)]
pub struct Head {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The request target as sent (`/metrics?x=1`).
    pub target: String,
    /// `1` for HTTP/1.1, `0` for HTTP/1.0.
    pub version: u8,
    /// Headers in order, names as sent.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Why no head could be read.
#[derive(Debug)]
pub enum HeadError {
    /// Over [`MAX_HEAD`] bytes or [`MAX_HEADERS`] headers (431).
    TooLarge,
    /// Not HTTP (400).
    Malformed(String),
    /// The peer closed or failed before a whole head arrived.
    Closed,
}

/// Reads one request head. Returns it with the bytes read past it (the
/// start of a body, or of the first WebSocket frames).
pub async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Result<(Head, Vec<u8>), HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        if let Some((head, used)) = parse_head(&buf)? {
            return Ok((head, buf.split_off(used)));
        }
        if buf.len() >= MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
        let room = (MAX_HEAD - buf.len()).min(chunk.len());
        match stream.read(&mut chunk[..room]).await {
            Ok(0) | Err(_) => return Err(HeadError::Closed),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Parses a head from the start of `buf`: `None` while it is incomplete,
/// else the head and how many bytes it took.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let used = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(e) => return Err(HeadError::Malformed(e.to_string())),
    };
    if used > MAX_HEAD {
        return Err(HeadError::TooLarge);
    }
    let head = Head {
        method: req.method.unwrap_or_default().to_string(),
        target: req.path.unwrap_or_default().to_string(),
        version: req.version.unwrap_or(1),
        headers: req
            .headers
            .iter()
            .map(|h| (h.name.to_string(), h.value.to_vec()))
            .collect(),
    };
    Ok(Some((head, used)))
}

impl Head {
    /// The first header of that name (case-insensitive) as text; a value
    /// that is not UTF-8 reads as one no check accepts.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| std::str::from_utf8(v).unwrap_or("\u{0}"))
    }

    /// The path without its query.
    pub fn path(&self) -> &str {
        self.target.split(['?', '#']).next().unwrap_or("")
    }

    /// Whether it asks for a WebSocket (`Upgrade: websocket`).
    pub fn is_upgrade(&self) -> bool {
        self.header("upgrade").is_some_and(|v| {
            v.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("websocket"))
        })
    }

    /// The same head as an `http` request, which tungstenite's handshake
    /// functions take.
    pub fn to_request(&self) -> Result<http::Request<()>, String> {
        let mut builder = http::Request::builder()
            .method(self.method.as_str())
            .uri(self.target.as_str())
            .version(if self.version == 0 {
                http::Version::HTTP_10
            } else {
                http::Version::HTTP_11
            });
        for (name, value) in &self.headers {
            builder = builder.header(name.as_str(), value.as_slice());
        }
        builder.body(()).map_err(|e| e.to_string())
    }

    /// The value of cookie `name` in the `Cookie` headers.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"))
            .filter_map(|(_, v)| std::str::from_utf8(v).ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.trim_matches('"'))
    }
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /`: the page (or the login form).
    Dashboard,
    /// `GET /metrics`.
    Metrics,
    /// `POST /login`.
    Login,
    /// A path we do not serve (404).
    NotFound,
    /// A path we serve, with a method it does not take (405); the value is
    /// the `Allow` header.
    MethodNotAllowed(&'static str),
}

/// Routes a request by method and path. `HEAD` is served wherever `GET` is.
pub fn route(method: &str, path: &str) -> Route {
    let get = matches!(method, "GET" | "HEAD");
    match path {
        "/" if get => Route::Dashboard,
        "/metrics" if get => Route::Metrics,
        "/" | "/metrics" => Route::MethodNotAllowed("GET, HEAD"),
        "/login" if method == "POST" => Route::Login,
        "/login" => Route::MethodNotAllowed("POST"),
        _ => Route::NotFound,
    }
}

/// The session cookie's name for a request. It carries the port of the
/// `Host` the browser used, because cookies are per host, not per port: two
/// daemons on one machine (say root's on 3333 and a user's on 3334) would
/// otherwise overwrite each other's sessions.
pub fn cookie_name(host: Option<&str>) -> String {
    let port = host
        .and_then(|h| h.rsplit_once(':'))
        .map(|(_, p)| p)
        .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    match port {
        Some(p) => format!("taskmaster_session_{p}"),
        None => "taskmaster_session".to_string(),
    }
}

/// The field `name` of an `application/x-www-form-urlencoded` body.
pub fn form_field(body: &[u8], name: &str) -> Option<Vec<u8>> {
    body.split(|&b| b == b'&').find_map(|pair| {
        let (k, v) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &[][..]),
        };
        (url_decode(k) == name.as_bytes()).then(|| url_decode(v))
    })
}

/// Decodes `+` and `%XX` (a malformed escape stays as it is).
fn url_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < s.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(s[i + 1]), hex(s[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// An HTTP response, written whole and followed by closing the connection.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers besides the ones every response gets.
    pub headers: Vec<(&'static str, String)>,
    /// Content type of the body.
    pub content_type: &'static str,
    /// The body.
    pub body: Vec<u8>,
}

/// The policy for our HTML: nothing from elsewhere, scripts and styles only
/// inline, connections only back to us, and no framing (the page has
/// buttons that stop services: it must not be clickjacked).
const HTML_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
style-src 'unsafe-inline'; img-src data:; connect-src 'self'; \
form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

impl Response {
    /// A plain-text response.
    pub fn text(status: u16, text: impl Into<String>) -> Response {
        Response {
            status,
            headers: Vec::new(),
            content_type: "text/plain; charset=utf-8",
            body: text.into().into_bytes(),
        }
    }

    /// An HTML page.
    pub fn html(status: u16, html: &str) -> Response {
        Response {
            status,
            headers: vec![
                ("Content-Security-Policy", HTML_POLICY.to_string()),
                ("X-Frame-Options", "DENY".to_string()),
                // Not `no-referrer`: under it a browser sends `Origin: null`
                // with the login form's POST, which the Origin check refuses.
                ("Referrer-Policy", "same-origin".to_string()),
            ],
            content_type: "text/html; charset=utf-8",
            body: html.as_bytes().to_vec(),
        }
    }

    /// The login form, with `message` shown above it (already HTML-safe).
    pub fn login(status: u16, message: &str) -> Response {
        Response::html(status, &LOGIN.replace("{{message}}", message))
    }

    /// The dashboard page.
    pub fn dashboard() -> Response {
        Response::html(200, DASHBOARD)
    }

    /// Adds a header.
    pub fn with(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    /// The bytes on the wire; without the body for `HEAD`.
    pub fn to_bytes(&self, head_only: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
             Connection: close\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        for (name, value) in &self.headers {
            // Values are ours; never let one break the head.
            let value: String = value.chars().filter(|c| !c.is_control()).collect();
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        if !head_only {
            bytes.extend_from_slice(&self.body);
        }
        bytes
    }
}

/// The reason phrase of the codes we send.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        303 => "See Other",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

#[cfg(test)]
mod tests;
