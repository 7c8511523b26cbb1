//! Handshake checks (SPEC §7, §13, §18): who may open a session.
//!
//! They run in a fixed order, each answering with its own status: the
//! `Host` header (403 when no token is set and it names neither loopback nor
//! a configured listen address: a DNS-rebinding page reaches us under its
//! own name, never under one of those), then the browser `Origin` (403
//! unless loopback: cross-site WebSocket hijacking), then the bearer token
//! (401). With a token set the Host check is off: remote clients on a
//! non-loopback `--listen` name us however they reach us, and the token is
//! what keeps strangers out. The same checks run on every listener, the
//! Unix socket included.

use std::net::IpAddr;

use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request as HttpRequest};
use tokio_tungstenite::tungstenite::http::StatusCode;

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
pub(super) fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once([' ', '\t'])?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

pub(super) fn refuse(status: StatusCode, text: &str) -> ErrorResponse {
    let mut resp = ErrorResponse::new(Some(text.to_string()));
    *resp.status_mut() = status;
    resp
}

/// What a handshake is checked against: the same for every listener.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Required bearer token.
    pub token: Option<std::sync::Arc<str>>,
    /// The configured TCP listen addresses, accepted as `Host` names
    /// besides the loopback ones.
    pub hosts: Vec<String>,
}

/// Whether a `Host` header value names us safely: a loopback name or
/// address, or one of the configured listen addresses, with any port.
pub fn host_allowed(host: Option<&str>, listen: &[String]) -> bool {
    let Some(host) = host.map(str::trim) else {
        return false;
    };
    let (name, tail) = if let Some(v6) = host.strip_prefix('[') {
        match v6.split_once(']') {
            Some((name, tail)) => (name, tail.to_string()),
            None => return false,
        }
    } else {
        match host.split_once(':') {
            Some((name, port)) => (name, format!(":{port}")),
            None => (host, String::new()),
        }
    };
    if name.is_empty() || !port_ok(&tail) {
        return false;
    }
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
        || listen.iter().any(|l| {
            l.trim_start_matches('[')
                .trim_end_matches(']')
                .eq_ignore_ascii_case(name)
        })
}

/// Runs the checks in their order: Host, Origin, token.
pub(super) fn check(req: &HttpRequest, access: &Access) -> Result<(), (StatusCode, &'static str)> {
    // A header that is not text counts as a value no check accepts.
    let header = |name: &str| {
        req.headers()
            .get(name)
            .map(|v| v.to_str().unwrap_or("\u{0}"))
    };
    if access.token.is_none() && !host_allowed(header("host"), &access.hosts) {
        return Err((
            StatusCode::FORBIDDEN,
            "the Host header must name a loopback address (or set a token for remote access)\n",
        ));
    }
    if !origin_allowed(header("origin")) {
        return Err((StatusCode::FORBIDDEN, "cross-origin requests are refused\n"));
    }
    if let Some(token) = &access.token {
        let given = header("authorization").and_then(bearer_token).unwrap_or("");
        if !constant_time_eq(given.as_bytes(), token.as_bytes()) {
            return Err((StatusCode::UNAUTHORIZED, "missing or wrong token\n"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        let listen = vec!["10.1.2.3".to_string(), "[fd00::1]".to_string()];
        for h in [
            "127.0.0.1",
            "127.0.0.1:3333",
            "localhost",
            "LocalHost:80",
            "[::1]",
            "[::1]:3333",
            "127.0.0.2:1",
            "10.1.2.3:3333",
            "[fd00::1]:9",
        ] {
            assert!(host_allowed(Some(h), &listen), "{h}");
        }
        for h in [
            "evil.com",
            "evil.com:3333",
            "localhost.evil.com",
            "127.0.0.1.nip.io",
            "::1",
            "[::1",
            "[::1]x",
            "localhost:notaport",
            "10.1.2.4",
            "",
            ":3333",
        ] {
            assert!(!host_allowed(Some(h), &listen), "{h}");
        }
        assert!(!host_allowed(None, &listen));
    }

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
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }
}
