//! Addresses and connects for the socket probes, and the `tcp` probe: a
//! completed connect to `host:port` passes.
//!
//! An IP literal is connected to directly; a name goes through tokio's
//! `lookup_host` (getaddrinfo on the blocking pool, so `localhost` and
//! /etc/hosts work), and each address it gives is tried in turn, so a
//! `localhost` that resolves to `::1` first still reaches a server bound
//! to 127.0.0.1 only.
//!
//! A name's addresses are reused for [`NAME_TTL`]: a lookup costs more than
//! the probe itself (a pool thread, /etc/hosts, netlink for
//! AI_ADDRCONFIG), and 200 instances probing `localhost` every second
//! would spend most of their budget on it. A probe that reaches none of
//! the addresses forgets them, so the next one looks the name up again.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{describe, Verdict};

/// The `tcp` probe (the caller bounds it by the timeout).
pub(super) async fn probe(address: &str) -> Verdict {
    let (host, port) = split_host_port(address)?;
    let Some(port) = port else {
        return Err(format!("{address:?} has no port (host:port)"));
    };
    let (_stream, peer) = connect(host, port).await?;
    // Dropping the stream closes it: the connect was the check.
    Ok(format!("connected to {peer}"))
}

/// Splits `host[:port]`, `[v6]` or `[v6]:port`; the host comes without
/// brackets.
pub(super) fn split_host_port(address: &str) -> Result<(&str, Option<u16>), String> {
    let (host, port) = if let Some(rest) = address.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err(format!("{address:?}: unclosed [ in the address"));
        };
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err(format!("{address:?}: unexpected text after ]")),
            },
        }
    } else {
        match address.split_once(':') {
            Some((_, rest)) if rest.contains(':') => {
                return Err(format!(
                    "{address:?}: an IPv6 address needs brackets ([::1]:80)"
                ))
            }
            Some((host, port)) => (host, Some(port)),
            None => (address, None),
        }
    };
    if host.is_empty() {
        return Err(format!("{address:?} has no host"));
    }
    if host.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!("{address:?}: invalid character in the host"));
    }
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Some(n),
            _ => return Err(format!("{address:?}: invalid port {p:?}")),
        },
    };
    Ok((host, port))
}

/// Connects to `host:port`, trying each address of a name in turn; returns
/// the stream and the address it reached, or the last error as the text.
pub(super) async fn connect(host: &str, port: u16) -> Result<(TcpStream, SocketAddr), String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        let peer = SocketAddr::new(ip, port);
        return match TcpStream::connect(peer).await {
            Ok(stream) => Ok((stream, peer)),
            Err(e) => Err(describe(&e)),
        };
    }
    let mut last: Option<io::Error> = None;
    for ip in resolve(host).await? {
        let peer = SocketAddr::new(ip, port);
        match TcpStream::connect(peer).await {
            Ok(stream) => return Ok((stream, peer)),
            Err(e) => last = Some(e),
        }
    }
    // Perhaps the name moved: the next probe looks it up again.
    names().remove(host);
    Err(match last {
        Some(e) => describe(&e),
        None => format!("{host}: no address"),
    })
}

/// How long a name's addresses are reused.
const NAME_TTL: Duration = Duration::from_secs(5);
/// The most names remembered (the config's probes name a few).
const NAMES_MAX: usize = 256;

/// A name's addresses, and when they were looked up.
type Names = BTreeMap<String, (Instant, Vec<IpAddr>)>;

/// Names looked up lately. A lock rather than a thread-local: a probe may
/// run on any runtime thread; it is never held across an await.
static NAMES: Mutex<Names> = Mutex::new(BTreeMap::new());

fn names() -> MutexGuard<'static, Names> {
    // A panic elsewhere cannot leave the table worse than stale: go on.
    NAMES.lock().unwrap_or_else(|e| e.into_inner())
}

/// `host`'s addresses, from the table while fresh, else looked up.
async fn resolve(host: &str) -> Result<Vec<IpAddr>, String> {
    let now = Instant::now();
    if let Some((at, ips)) = names().get(host) {
        if now.duration_since(*at) < NAME_TTL {
            return Ok(ips.clone());
        }
    }
    let ips: Vec<IpAddr> = tokio::net::lookup_host((host, 0))
        .await
        .map_err(|e| format!("{host}: {}", describe(&e)))?
        .map(|a| a.ip())
        .collect();
    let mut table = names();
    if table.len() >= NAMES_MAX {
        table.retain(|_, (at, _)| now.duration_since(*at) < NAME_TTL);
        if table.len() >= NAMES_MAX {
            table.clear();
        }
    }
    table.insert(host.to_string(), (now, ips.clone()));
    Ok(ips)
}

/// Whether `host`'s addresses are in the table (for tests).
#[cfg(test)]
pub(super) fn remembered(host: &str) -> bool {
    names().contains_key(host)
}
