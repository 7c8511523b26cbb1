//! The `healthcheck` option of SPEC §11, read into a [`Healthcheck`], and
//! the grammar of its `http` and `tcp` targets.
//!
//! The targets' grammar lives here, public ([`http_target`],
//! [`tcp_target`]), so that the probe runner connects to exactly what the
//! validator accepted: one parser, no drift between "valid" and "works".
//!
//! Accepted `http`: `http://HOST[:PORT][/PATH][?QUERY][#FRAGMENT]`, the
//! scheme in any case. HOST is a name or IPv4 address (ASCII letters,
//! digits, `-`, `.`, `_`) or an IPv6 address in brackets; PORT 1–65535,
//! default 80. No `https://` (the probe speaks plain HTTP and says so rather
//! than failing at every probe), no `user:pass@`, no spaces or control
//! characters (they would break the request line).
//! Accepted `tcp`: `HOST:PORT`, the same HOST and PORT, the port required
//! (`[::1]:80` for IPv6).
//!
//! Placeholders: the probe strings are templates, so the target is checked
//! on what each instance will really probe — expanded for every instance
//! `0..numprocs` — and the first failure names its instance. That catches
//! `{instance+65535}` going past the last port at instance 1, and cannot
//! reject a template whose raw text merely looks odd (`{instance+8000}` is
//! no port number, but every expansion of it is).

use std::net::Ipv6Addr;
use std::time::Duration;

use serde_json::Value;

use super::fields::{int_in, kind, positive_seconds, seconds, string, unknown_keys, Problems};
use super::placeholders::{check, expand, has_placeholders};
use super::{Healthcheck, OnUnhealthy, Probe};

/// The keys of a `healthcheck` table, for the unknown-key check and its
/// suggestions.
pub(super) const KEYS: &[&str] = &[
    "cmd",
    "http",
    "tcp",
    "interval",
    "timeout",
    "retries",
    "start_period",
    "on_unhealthy",
];

/// The probe kinds, in the order messages list them.
const PROBES: &[&str] = &["cmd", "http", "tcp"];

/// What an `http` probe connects to and asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTarget {
    /// Name or address to connect to; an IPv6 address without brackets.
    pub host: String,
    /// Port to connect to: the URL's, or 80.
    pub port: u16,
    /// The `Host` header: the URL's host (IPv6 in brackets), with its
    /// `:PORT` when the URL has one.
    pub authority: String,
    /// The request target: path and query, at least `/`, no fragment.
    pub path: String,
}

/// Reads an `http` probe URL (grammar in the module header), or says what
/// is wrong with it in a few words.
pub fn http_target(url: &str) -> Result<HttpTarget, &'static str> {
    if url.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err("a URL must not contain spaces or control characters");
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err("expected an http:// URL");
    };
    if scheme.eq_ignore_ascii_case("https") {
        return Err("https:// is not supported (the probe speaks plain http:// only)");
    }
    if !scheme.eq_ignore_ascii_case("http") {
        return Err("expected an http:// URL");
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, target) = rest.split_at(end);
    if authority.contains('@') {
        return Err("credentials in the URL are not supported");
    }
    let (host, port) = host_port(authority, Some(80))?;
    // The fragment stays with the client; a bare query still needs a path.
    let target = target.split('#').next().unwrap_or_default();
    let path = match target.chars().next() {
        None => "/".to_string(),
        Some('?') => format!("/{target}"),
        Some(_) => target.to_string(),
    };
    Ok(HttpTarget {
        host,
        port,
        authority: authority.to_string(),
        path,
    })
}

/// Reads a `tcp` probe target `host:port` into the host (IPv6 without
/// brackets) and port, or says what is wrong with it.
pub fn tcp_target(target: &str) -> Result<(String, u16), &'static str> {
    host_port(target, None)
}

/// `HOST[:PORT]`, the port required when there is no `default`.
fn host_port(s: &str, default: Option<u16>) -> Result<(String, u16), &'static str> {
    const NO_PORT: &str = "no port (expected \"host:port\")";
    let (host, port) = if let Some(bracketed) = s.strip_prefix('[') {
        let Some((addr, after)) = bracketed.split_once(']') else {
            return Err("an IPv6 address needs its closing ]");
        };
        if addr.parse::<Ipv6Addr>().is_err() {
            return Err("invalid IPv6 address in brackets");
        }
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or("invalid host")?),
        };
        (addr, port)
    } else {
        match s.rsplit_once(':') {
            Some((host, _)) if host.contains(':') => {
                let ipv6 = |t: &str| t.parse::<Ipv6Addr>().is_ok();
                return Err(if ipv6(host) || ipv6(s) {
                    "an IPv6 address needs brackets, as in [::1]:80"
                } else {
                    "invalid host (expected a name or an address)"
                });
            }
            Some((host, port)) => (host, Some(port)),
            None => (s, None),
        }
    };
    if host.is_empty() {
        return Err("no host");
    }
    let name_like = |c: char| c.is_ascii_alphanumeric() || "-._".contains(c);
    if !s.starts_with('[') && !host.chars().all(name_like) {
        return Err("invalid host (expected a name or an address)");
    }
    let port = match port {
        Some(p) => parse_port(p).ok_or("the port must be a number from 1 to 65535")?,
        None => default.ok_or(NO_PORT)?,
    };
    Ok((host.to_string(), port))
}

fn parse_port(s: &str) -> Option<u16> {
    // Digits only: `u16::from_str` would take a `+`.
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u16>().ok().filter(|&p| p != 0)
}

/// Reads the `healthcheck` value `v` of `service` (at `path`), whose
/// instances are `0..=last`. None after recording a problem.
pub(super) fn read(
    v: &Value,
    path: &str,
    service: &str,
    last: u32,
    p: &mut Problems,
) -> Option<Healthcheck> {
    let obj = match v {
        Value::Object(obj) => obj,
        // Lua cannot tell an empty list from an empty table.
        Value::Array(a) if a.is_empty() => {
            p.add(path, "expected exactly one of cmd, http or tcp");
            return None;
        }
        other => {
            p.add(
                path,
                format!(
                    "expected a table with one of cmd, http or tcp, got {}",
                    kind(other)
                ),
            );
            return None;
        }
    };
    let before = p.count();
    unknown_keys(obj, KEYS, path, p);
    let field = |name: &str| obj.get(name).filter(|v| !v.is_null());
    let at = |name: &str| format!("{path}.{name}");

    let given: Vec<&str> = PROBES
        .iter()
        .copied()
        .filter(|k| field(k).is_some())
        .collect();
    let probe = match given.as_slice() {
        [one] => field(one).and_then(|v| probe(one, v, &at(one), service, last, p)),
        [] => {
            p.add(path, "expected exactly one of cmd, http or tcp");
            None
        }
        [others @ .., final_one] => {
            p.add(
                path,
                format!(
                    "expected exactly one of cmd, http or tcp, got {} and {final_one}",
                    others.join(", ")
                ),
            );
            None
        }
    };

    let mut hc = Healthcheck {
        probe: Probe::Cmd(String::new()),
        interval: Duration::from_secs(10),
        timeout: Duration::from_secs(1),
        retries: 3,
        start_period: Duration::ZERO,
        on_unhealthy: OnUnhealthy::Restart,
    };
    if let Some(v) = field("interval") {
        hc.interval = positive_seconds(v, &at("interval"), p).unwrap_or(hc.interval);
    }
    if let Some(v) = field("timeout") {
        hc.timeout = positive_seconds(v, &at("timeout"), p).unwrap_or(hc.timeout);
    }
    if let Some(v) = field("retries") {
        hc.retries = int_in(v, &at("retries"), 1, i64::MAX, p)
            .map_or(hc.retries, |n| u32::try_from(n).unwrap_or(u32::MAX));
    }
    if let Some(v) = field("start_period") {
        hc.start_period = seconds(v, &at("start_period"), p).unwrap_or(hc.start_period);
    }
    if let Some(v) = field("on_unhealthy") {
        match v.as_str() {
            Some("restart") => hc.on_unhealthy = OnUnhealthy::Restart,
            Some("none") => hc.on_unhealthy = OnUnhealthy::None,
            _ => p.add(
                &at("on_unhealthy"),
                format!("expected \"restart\" or \"none\", got {}", kind(v)),
            ),
        }
    }
    hc.probe = probe?;
    (p.count() == before).then_some(hc)
}

/// Reads the probe of kind `which` from `v` (at `path`).
fn probe(
    which: &str,
    v: &Value,
    path: &str,
    service: &str,
    last: u32,
    p: &mut Problems,
) -> Option<Probe> {
    let text = string(v, path, p)?;
    if text.trim().is_empty() {
        p.add(path, "must not be empty");
        return None;
    }
    if let Err(why) = check(text, last) {
        p.add(path, why);
        return None;
    }
    let valid = |target: &str| match which {
        "http" => http_target(target).map(drop),
        _ => tcp_target(target).map(drop),
    };
    if which != "cmd" {
        // Every instance's own target, or just the one when it is the same.
        let instances = if has_placeholders(text) { last } else { 0 };
        for index in 0..=instances {
            let target = expand(text, service, index);
            if let Err(why) = valid(&target) {
                let mut msg = format!("{why}, got {}", kind(v));
                if target != text {
                    msg.push_str(&format!(" (for instance {index}: \"{target}\")"));
                }
                p.add(path, msg);
                return None;
            }
        }
    }
    let text = text.to_string();
    Some(match which {
        "cmd" => Probe::Cmd(text),
        "http" => Probe::Http(text),
        _ => Probe::Tcp(text),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_targets() {
        let good: &[(&str, &str, u16, &str, &str)] = &[
            (
                "http://127.0.0.1:8080/health",
                "127.0.0.1",
                8080,
                "127.0.0.1:8080",
                "/health",
            ),
            ("http://localhost", "localhost", 80, "localhost", "/"),
            ("http://localhost/", "localhost", 80, "localhost", "/"),
            (
                "HTTP://Example.com/a?b=1",
                "Example.com",
                80,
                "Example.com",
                "/a?b=1",
            ),
            ("http://h?x=1", "h", 80, "h", "/?x=1"),
            ("http://h/p#frag", "h", 80, "h", "/p"),
            ("http://h#frag", "h", 80, "h", "/"),
            ("http://[::1]:8000/x", "::1", 8000, "[::1]:8000", "/x"),
            ("http://[::1]/", "::1", 80, "[::1]", "/"),
            (
                "http://my_host.local:65535",
                "my_host.local",
                65535,
                "my_host.local:65535",
                "/",
            ),
        ];
        for (url, host, port, authority, path) in good {
            assert_eq!(
                http_target(url),
                Ok(HttpTarget {
                    host: host.to_string(),
                    port: *port,
                    authority: authority.to_string(),
                    path: path.to_string(),
                }),
                "{url}"
            );
        }
        let bad: &[(&str, &str)] = &[
            ("localhost:80", "expected an http:// URL"),
            ("ftp://h/", "expected an http:// URL"),
            ("//h/", "expected an http:// URL"),
            (
                "https://h/",
                "https:// is not supported (the probe speaks plain http:// only)",
            ),
            ("http://", "no host"),
            ("http:///x", "no host"),
            ("http://:80/", "no host"),
            ("http://h:0/", "the port must be a number from 1 to 65535"),
            (
                "http://h:65536/",
                "the port must be a number from 1 to 65535",
            ),
            ("http://h:/", "the port must be a number from 1 to 65535"),
            ("http://h:+80/", "the port must be a number from 1 to 65535"),
            (
                "http://h:http/",
                "the port must be a number from 1 to 65535",
            ),
            ("http://u:p@h/", "credentials in the URL are not supported"),
            (
                "http://h /",
                "a URL must not contain spaces or control characters",
            ),
            (
                "http://h/\n",
                "a URL must not contain spaces or control characters",
            ),
            (
                "http://::1/",
                "an IPv6 address needs brackets, as in [::1]:80",
            ),
            ("http://[::1/", "an IPv6 address needs its closing ]"),
            ("http://[nope]/", "invalid IPv6 address in brackets"),
            ("http://[::1]x/", "invalid host"),
            (
                "http://h{x}/",
                "invalid host (expected a name or an address)",
            ),
            ("http://hé/", "invalid host (expected a name or an address)"),
        ];
        for (url, why) in bad {
            assert_eq!(http_target(url), Err(*why), "{url}");
        }
    }

    #[test]
    fn tcp_targets() {
        assert_eq!(tcp_target("localhost:5432"), Ok(("localhost".into(), 5432)));
        assert_eq!(tcp_target("[::1]:80"), Ok(("::1".into(), 80)));
        assert_eq!(tcp_target("10.0.0.1:1"), Ok(("10.0.0.1".into(), 1)));
        let bad: &[(&str, &str)] = &[
            ("localhost", "no port (expected \"host:port\")"),
            ("[::1]", "no port (expected \"host:port\")"),
            (":80", "no host"),
            ("h:0", "the port must be a number from 1 to 65535"),
            ("h:99999", "the port must be a number from 1 to 65535"),
            ("h:", "the port must be a number from 1 to 65535"),
            ("::1:80", "an IPv6 address needs brackets, as in [::1]:80"),
            ("tcp://h:80", "invalid host (expected a name or an address)"),
            ("h h:80", "invalid host (expected a name or an address)"),
        ];
        for (target, why) in bad {
            assert_eq!(tcp_target(target), Err(*why), "{target}");
        }
    }
}
