//! The `http` probe: a minimal HTTP/1.1 GET over a plain TCP connection; a
//! 2xx or 3xx status passes (a redirect is not followed).
//!
//! Only the status line is read: at most [`READ_MAX`] bytes of the
//! response, then the connection is closed, so a health endpoint that
//! answers with a large body costs the daemon no more than a small one.
//! Interim 1xx responses (`103 Early Hints`) before the final one are
//! skipped within the same bound.

use std::borrow::Cow;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::net::{connect, split_host_port};
use super::{describe, Verdict};

/// The most of a response read (status line, and the headers of interim
/// responses before it).
const READ_MAX: usize = 4096;

/// The parts of an `http://` URL a request needs.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Url<'a> {
    /// Host name or IP (an IPv6 one without brackets).
    pub host: &'a str,
    /// Port, 80 unless given.
    pub port: u16,
    /// `host[:port]` as written, for the Host header.
    pub authority: &'a str,
    /// Path and query (`/`, `/health?full=1`), without the fragment.
    pub target: Cow<'a, str>,
}

/// Parses `http://host[:port][/path][?query][#fragment]`.
pub(super) fn parse(url: &str) -> Result<Url<'_>, String> {
    let rest = match url.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case("http://") => &url[7..],
        _ => return Err(format!("{url:?} is not an http:// URL")),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, rest) = rest.split_at(end);
    if authority.contains('@') {
        return Err(format!("{url:?}: credentials in the URL are not supported"));
    }
    let (host, port) = split_host_port(authority)?;
    let rest = rest.split_once('#').map_or(rest, |(before, _)| before);
    if rest.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!("{url:?}: invalid character in the path"));
    }
    let target = if rest.starts_with('/') {
        Cow::Borrowed(rest)
    } else {
        Cow::Owned(format!("/{rest}"))
    };
    Ok(Url {
        host,
        port: port.unwrap_or(80),
        authority,
        target,
    })
}

/// GETs `url` and judges its status (the caller bounds it by the timeout).
pub(super) async fn get(url: &str) -> Verdict {
    let url = parse(url)?;
    let (mut stream, _) = connect(url.host, url.port).await?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: taskmaster\r\n\r\n",
        url.target, url.authority
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("sending the request: {}", describe(&e)))?;
    // One buffer for the whole read: a small response arrives in one
    // segment and is read whole, so closing sends a FIN, not a reset.
    let mut buf = vec![0u8; READ_MAX];
    let mut len = 0;
    loop {
        let n = stream
            .read(&mut buf[len..])
            .await
            .map_err(|e| format!("reading the response: {}", describe(&e)))?;
        if n == 0 {
            return Err(if len == 0 {
                "connection closed without a response".to_string()
            } else {
                format!(
                    "connection closed in the status line: {}",
                    String::from_utf8_lossy(&buf[..len]).trim()
                )
            });
        }
        len += n;
        match status(&buf[..len]) {
            Status::Final(code, reason) => {
                let text = if reason.is_empty() {
                    format!("HTTP {code}")
                } else {
                    format!("HTTP {code} {}", String::from_utf8_lossy(reason))
                };
                // Closing with the rest unread: the body is not waited for.
                return if (200..400).contains(&code) {
                    Ok(text)
                } else {
                    Err(text)
                };
            }
            Status::Invalid => {
                let line = buf[..len].split(|&b| b == b'\n').next().unwrap_or_default();
                return Err(format!(
                    "not an HTTP response: {}",
                    String::from_utf8_lossy(line).trim()
                ));
            }
            Status::Incomplete if len == READ_MAX => {
                return Err(format!("no status line in the first {READ_MAX} bytes"));
            }
            Status::Incomplete => {}
        }
    }
}

/// What the bytes read so far say.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Status<'a> {
    /// The final response's code and reason phrase.
    Final(u16, &'a [u8]),
    /// Not HTTP.
    Invalid,
    /// More is needed.
    Incomplete,
}

/// Finds the final status line in `buf`, skipping interim 1xx responses.
pub(super) fn status(mut buf: &[u8]) -> Status<'_> {
    loop {
        let Some(eol) = buf.iter().position(|&b| b == b'\n') else {
            // Reject early what cannot become a status line.
            let n = buf.len().min(5);
            return if buf[..n] == b"HTTP/"[..n] {
                Status::Incomplete
            } else {
                Status::Invalid
            };
        };
        let line = buf[..eol].strip_suffix(b"\r").unwrap_or(&buf[..eol]);
        let Some((code, reason)) = status_line(line) else {
            return Status::Invalid;
        };
        if !(100..200).contains(&code) || code == 101 {
            return Status::Final(code, reason);
        }
        // An interim response: its headers end at the first blank line.
        let mut rest = &buf[eol + 1..];
        loop {
            let Some(end) = rest.iter().position(|&b| b == b'\n') else {
                return Status::Incomplete;
            };
            let header = &rest[..end];
            rest = &rest[end + 1..];
            if header.is_empty() || header == b"\r" {
                break;
            }
        }
        buf = rest;
    }
}

/// `HTTP/1.1 200 OK` → (200, `OK`).
fn status_line(line: &[u8]) -> Option<(u16, &[u8])> {
    let rest = line.strip_prefix(b"HTTP/")?;
    let space = rest.iter().position(|&b| b == b' ')?;
    let version = &rest[..space];
    if version.is_empty() || !version.iter().all(|&b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    let rest = &rest[space + 1..];
    let digits = rest.get(..3)?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let code = digits
        .iter()
        .fold(0u16, |n, &d| n * 10 + u16::from(d - b'0'));
    let reason = match rest.get(3..) {
        None | Some([]) => &[][..],
        Some([b' ', reason @ ..]) => reason,
        Some(_) => return None,
    };
    Some((code, reason.trim_ascii()))
}
