//! Handshake checks (SPEC §7, §13, §18): who may open a session.
//!
//! They run in a fixed order, each answering with its own status: the
//! `Host` header (403 when no token is set and it names neither loopback nor
//! a configured listen address: a DNS-rebinding page reaches us under its
//! own name, never under one of those), then the browser `Origin` (403
//! unless loopback: cross-site WebSocket hijacking), then the bearer token
//! (401) or a dashboard session (SPEC §14, §18): a live session cookie
//! stands in for the token, but on a WebSocket handshake only when the
//! Origin is exactly `http://` + the request's Host, the page we served
//! (403 otherwise); a cookie that is no live session is no credential. With
//! a token set, that same-origin Origin is accepted too (the page served
//! from a non-loopback `--listen`). Plain HTTP requests get the Host and
//! Origin checks alike; what they need beyond is up to `web.rs`. With a token set the Host check is off: remote clients on a
//! non-loopback `--listen` name us however they reach us, and the token is
//! what keeps strangers out. The same checks run on every listener, the
//! Unix socket included.

use std::net::IpAddr;

use crate::http::sessions::Sessions;
use crate::http::Head;

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

/// What a handshake or request is checked against: the same for every listener.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Required bearer token.
    pub token: Option<std::sync::Arc<str>>,
    /// The configured TCP listen addresses, accepted as `Host` names
    /// besides the loopback ones.
    pub hosts: Vec<String>,
    /// Dashboard sessions (SPEC §14), which stand in for the token.
    pub sessions: Sessions,
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

/// A refusal: the status and the text that says why.
pub(super) type Refusal = (u16, &'static str);

/// What a request shows in place of nothing (SPEC §14, §18).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Credentials {
    /// The right bearer token.
    Bearer,
    /// A live session cookie.
    Session,
    /// Neither (a dead session counts as nothing).
    Nothing,
}

/// Whether the Origin is exactly `http://` + the request's own Host: the
/// dashboard served by this very listener.
fn same_origin(head: &Head) -> bool {
    match (head.header("origin"), head.header("host")) {
        (Some(origin), Some(host)) => origin.strip_prefix("http://") == Some(host.trim()),
        _ => false,
    }
}

/// The first two checks, in their order: Host, then Origin.
pub(super) fn host_and_origin(head: &Head, access: &Access) -> Result<(), Refusal> {
    if access.token.is_none() && !host_allowed(head.header("host"), &access.hosts) {
        return Err((
            403,
            "the Host header must name a loopback address (or set a token for remote access)\n",
        ));
    }
    let origin_ok =
        origin_allowed(head.header("origin")) || (access.token.is_some() && same_origin(head));
    if !origin_ok {
        return Err((403, "cross-origin requests are refused\n"));
    }
    Ok(())
}

/// Which credentials the request carries.
pub(super) fn credentials(head: &Head, access: &Access) -> Credentials {
    let Some(token) = &access.token else {
        return Credentials::Nothing;
    };
    let given = head.header("authorization").and_then(bearer_token);
    if given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
        return Credentials::Bearer;
    }
    let cookie = crate::http::cookie_name(head.header("host"));
    if head
        .cookie(&cookie)
        .is_some_and(|id| access.sessions.is_live(id))
    {
        return Credentials::Session;
    }
    Credentials::Nothing
}

/// Runs every check of a WebSocket handshake in their order: Host, Origin,
/// token (or a session, only from the dashboard's own origin).
pub(super) fn check(head: &Head, access: &Access) -> Result<(), Refusal> {
    host_and_origin(head, access)?;
    if access.token.is_none() {
        return Ok(());
    }
    match credentials(head, access) {
        Credentials::Bearer => Ok(()),
        Credentials::Session if same_origin(head) => Ok(()),
        Credentials::Session => Err((
            403,
            "a session cookie opens a WebSocket only from the dashboard's own origin\n",
        )),
        Credentials::Nothing => Err((401, "missing or wrong token\n")),
    }
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

    fn head(lines: &[&str]) -> Head {
        let raw = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            lines.iter().map(|l| format!("{l}\r\n")).collect::<String>()
        );
        crate::http::parse_head(raw.as_bytes()).unwrap().unwrap().0
    }

    #[test]
    fn checks_run_host_then_origin_then_token_or_session() {
        let open = Access::default();
        let locked = Access {
            token: Some("tok".into()),
            ..Access::default()
        };
        let live = locked.sessions.create().unwrap();
        let cookie = format!("Cookie: taskmaster_session_3333={live}");
        let dead = format!("Cookie: taskmaster_session_3333={}", "0".repeat(64));
        let table: Vec<(&Access, Vec<&str>, Result<(), u16>)> = vec![
            (&open, vec!["Host: 127.0.0.1:3333"], Ok(())),
            (&open, vec!["Host: evil.com:3333"], Err(403)),
            (&open, vec![], Err(403)),
            (
                &open,
                vec!["Host: 127.0.0.1:3333", "Origin: http://evil.com"],
                Err(403),
            ),
            // Without a token a cookie is nothing, and nothing is needed.
            (&open, vec!["Host: localhost", &dead], Ok(())),
            // With a token the Host is anything, the token is required.
            (&locked, vec!["Host: evil.com"], Err(401)),
            (
                &locked,
                vec!["Host: 10.0.0.5:3333", "Authorization: Bearer tok"],
                Ok(()),
            ),
            (
                &locked,
                vec!["Host: 10.0.0.5:3333", "Authorization: Bearer no"],
                Err(401),
            ),
            // A session opens a handshake only from the page's own origin.
            (
                &locked,
                vec![
                    "Host: 127.0.0.1:3333",
                    "Origin: http://127.0.0.1:3333",
                    &cookie,
                ],
                Ok(()),
            ),
            (
                &locked,
                vec![
                    "Host: 10.0.0.5:3333",
                    "Origin: http://10.0.0.5:3333",
                    &cookie,
                ],
                Ok(()),
            ),
            (&locked, vec!["Host: 127.0.0.1:3333", &cookie], Err(403)),
            (
                &locked,
                vec![
                    "Host: 127.0.0.1:3333",
                    "Origin: http://localhost:3333",
                    &cookie,
                ],
                Err(403),
            ),
            (
                &locked,
                vec!["Host: 127.0.0.1:3333", "Origin: http://evil.com", &cookie],
                Err(403),
            ),
            (
                &locked,
                vec![
                    "Host: 127.0.0.1:3333",
                    "Origin: http://127.0.0.1:3333",
                    &dead,
                ],
                Err(401),
            ),
            // Origin is checked before the token.
            (
                &locked,
                vec![
                    "Host: x",
                    "Origin: http://evil.com",
                    "Authorization: Bearer tok",
                ],
                Err(403),
            ),
        ];
        for (access, lines, want) in table {
            let got = check(&head(&lines), access).map_err(|(s, _)| s);
            assert_eq!(got, want, "{lines:?} (token: {:?})", access.token);
        }
        let remote = head(&[
            "Host: 10.0.0.5:3333",
            "Origin: http://10.0.0.5:3333",
            "Cookie: taskmaster_session_3333=x",
        ]);
        assert_eq!(credentials(&remote, &locked), Credentials::Nothing);
        assert_eq!(
            credentials(&head(&["Host: a:3333", &cookie]), &locked),
            Credentials::Session
        );
        assert_eq!(
            credentials(&head(&["Host: a:3333", &cookie]), &open),
            Credentials::Nothing
        );
    }
}
