//! Probes against real local servers and processes, each wait bounded.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::time::{timeout, Instant};

use super::http::{parse, Url};
use super::net::split_host_port;
use super::{clip, describe, run, ProbeResult, ProbeRun, OUTPUT_MAX};
use crate::config::Probe;

/// Every test's outer bound: a hung probe fails the test instead of hanging it.
const BOUND: Duration = Duration::from_secs(20);

fn probe(probe: Probe, timeout: Duration) -> ProbeRun {
    ProbeRun {
        probe,
        timeout,
        env: BTreeMap::new(),
        workingdir: None,
        credentials: None,
    }
}

async fn check(run_: ProbeRun) -> ProbeResult {
    match timeout(BOUND, run(run_)).await {
        Ok(r) => r,
        Err(_) => panic!("probe did not end within {BOUND:?}"),
    }
}

async fn cmd(script: &str) -> ProbeResult {
    check(probe(Probe::Cmd(script.into()), Duration::from_secs(10))).await
}

/// A scratch folder for one test, removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("taskmaster-health-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch folder");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether `pid` is a process that still runs (a zombie does not: it is
/// only waiting for whoever its parent is now to collect it).
fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

/// Whether `pid` exists at all (a zombie counts: not reaped).
fn exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Waits (bounded) until none of `pids` runs.
async fn all_gone(pids: &[u32]) {
    let until = Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|&p| running(p)) {
        assert!(
            Instant::now() < until,
            "probe processes left running: {pids:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn pids_in(text: &str) -> Vec<u32> {
    text.split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect()
}

/// Reads the pids a probe wrote to `file`, waiting (bounded) for them.
async fn read_pids(file: &std::path::Path, count: usize) -> Vec<u32> {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let pids = pids_in(&std::fs::read_to_string(file).unwrap_or_default());
        if pids.len() >= count {
            return pids;
        }
        assert!(Instant::now() < until, "probe did not write its pids");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---- pure parts ----

#[test]
fn urls_parse() {
    let url = |host, port, authority, target: &'static str| Url {
        host,
        port,
        authority,
        target: target.into(),
    };
    assert_eq!(
        parse("http://127.0.0.1:8080/health?x=1#top"),
        Ok(url("127.0.0.1", 8080, "127.0.0.1:8080", "/health?x=1"))
    );
    assert_eq!(
        parse("http://localhost"),
        Ok(url("localhost", 80, "localhost", "/"))
    );
    assert_eq!(
        parse("HTTP://example.com?q"),
        Ok(url("example.com", 80, "example.com", "/?q"))
    );
    assert_eq!(
        parse("http://[::1]:81/a"),
        Ok(url("::1", 81, "[::1]:81", "/a"))
    );
    assert_eq!(parse("http://[::1]/"), Ok(url("::1", 80, "[::1]", "/")));
    for bad in [
        "https://x/",
        "http:/x",
        "http://",
        "http:///path",
        "http://x:/",
        "http://x:0/",
        "http://x:99999/",
        "http://x:8a/",
        "http://u:p@x/",
        "http://::1/",
        "http://[::1/",
        "http://[::1]x/",
        "http://x/a b",
        "ftp://x/",
        "",
    ] {
        assert!(parse(bad).is_err(), "{bad:?} parsed");
    }
}

#[test]
fn addresses_split() {
    assert_eq!(split_host_port("db:5432"), Ok(("db", Some(5432))));
    assert_eq!(split_host_port("[::1]:5432"), Ok(("::1", Some(5432))));
    assert_eq!(split_host_port("db"), Ok(("db", None)));
    assert!(split_host_port(":5432").is_err());
    assert!(split_host_port("::1:5432").is_err());
    assert!(split_host_port("db:+1").is_err());
}

#[test]
fn statuses_parse() {
    use super::http::{status, Status};
    let fin = |code, reason: &'static [u8]| Status::Final(code, reason);
    assert_eq!(status(b"HTTP/1.1 200 OK\r\n"), fin(200, b"OK"));
    assert_eq!(status(b"HTTP/1.0 204\r\n"), fin(204, b""));
    assert_eq!(
        status(b"HTTP/1.1 503 Service Unavailable\n"),
        fin(503, b"Service Unavailable")
    );
    assert_eq!(status(b"HTTP/1.1 20"), Status::Incomplete);
    assert_eq!(status(b"HTT"), Status::Incomplete);
    assert_eq!(
        status(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\n"),
        fin(200, b"OK")
    );
    assert_eq!(
        status(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1."),
        Status::Incomplete
    );
    assert_eq!(status(b"HTTP/1.1 100 Continue\r\n"), Status::Incomplete);
    assert_eq!(
        status(b"HTTP/1.1 101 Switching\r\n"),
        fin(101, b"Switching")
    );
    assert_eq!(status(b"SSH-2.0-OpenSSH\r\n"), Status::Invalid);
    assert_eq!(status(b"<html>"), Status::Invalid);
    assert_eq!(status(b"HTTP/1.1 2000 OK\r\n"), Status::Invalid);
    assert_eq!(status(b"HTTP/1.1 abc\r\n"), Status::Invalid);
}

#[test]
fn output_is_clipped_at_a_char_boundary() {
    let text = "é".repeat(150); // 300 bytes, 2 per char
    let clipped = clip(text);
    assert_eq!(clipped.len(), OUTPUT_MAX);
    let text = format!("a{}", "é".repeat(150));
    assert_eq!(clip(text).len(), OUTPUT_MAX - 1);
    assert_eq!(clip("short".into()), "short");
}

#[test]
fn io_errors_read_like_prose() {
    let e = std::io::Error::from_raw_os_error(libc::ECONNREFUSED);
    assert_eq!(describe(&e), "connection refused");
}

#[test]
fn the_probe_future_can_be_spawned() {
    fn spawnable<T: Send + 'static>(_: &T) {}
    let fut = run(probe(
        Probe::Tcp("127.0.0.1:1".into()),
        Duration::from_secs(1),
    ));
    spawnable(&fut);
}

// ---- cmd ----

#[tokio::test]
async fn cmd_exit_0_passes_with_its_output() {
    let r = cmd("echo out; echo err >&2; echo again").await;
    assert_eq!(
        r,
        ProbeResult {
            ok: true,
            output: "out\nerr\nagain".into()
        }
    );
}

#[tokio::test]
async fn cmd_failure_shows_its_output_or_its_status() {
    let r = cmd("echo 'db not ready' >&2; exit 3").await;
    assert!(!r.ok);
    assert_eq!(r.output, "db not ready");
    for _ in 0..20 {
        let r = cmd("printf 'last words'; exit 1").await;
        assert_eq!((r.ok, r.output.as_str()), (false, "last words"));
    }
    let r = cmd("exit 2").await;
    assert_eq!((r.ok, r.output.as_str()), (false, "exit status 2"));
    let r = cmd("kill -SEGV $$").await;
    assert_eq!((r.ok, r.output.as_str()), (false, "killed by SIGSEGV"));
}

#[tokio::test]
async fn cmd_output_is_bounded_and_never_blocks_the_probe() {
    // 4 MiB, far more than a pipe holds: the probe must drain it to finish.
    let r = cmd("head -c 4194304 /dev/zero | tr '\\0' x; echo; echo done >&2").await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.output, "x".repeat(OUTPUT_MAX));
}

#[tokio::test]
async fn cmd_gets_the_env_and_workingdir() {
    let dir = Scratch::new("env");
    let mut run_ = probe(
        Probe::Cmd("echo \"$GREETING $TASKMASTER_INSTANCE\"; pwd".into()),
        Duration::from_secs(10),
    );
    run_.env.insert("GREETING".into(), "hello".into());
    run_.env.insert("TASKMASTER_INSTANCE".into(), "3".into());
    run_.workingdir = Some(dir.0.clone());
    let r = check(run_).await;
    let real = std::fs::canonicalize(&dir.0).expect("scratch folder");
    assert_eq!(r.output, format!("hello 3\n{}", real.display()));
    assert!(r.ok);

    let mut run_ = probe(Probe::Cmd("true".into()), Duration::from_secs(10));
    run_.workingdir = Some(dir.0.join("missing"));
    let r = check(run_).await;
    assert!(!r.ok);
    assert!(r.output.contains("does not exist"), "{r:?}");
}

#[tokio::test]
async fn cmd_timeout_kills_the_whole_group_and_reaps_it() {
    let dir = Scratch::new("timeout");
    let file = dir.0.join("pids");
    let script = format!(
        "sleep 100 & echo $! >> {f}; sleep 100 & echo $! >> {f}; echo $$ >> {f}; echo started; wait",
        f = file.display()
    );
    let started = Instant::now();
    let r = check(probe(Probe::Cmd(script), Duration::from_millis(300))).await;
    let took = started.elapsed();
    assert!(!r.ok);
    assert_eq!(r.output, "timed out after 300ms: started");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    let pids = read_pids(&file, 3).await;
    // The shell was reaped before the verdict; its children die with it.
    assert!(!exists(pids[2]), "the probe's shell was not reaped");
    all_gone(&pids).await;
}

#[tokio::test]
async fn cmd_leftovers_are_killed_when_the_shell_exits() {
    let r = cmd("sleep 100 & echo $!").await;
    assert!(r.ok);
    let pids = pids_in(&r.output);
    assert_eq!(pids.len(), 1, "{r:?}");
    all_gone(&pids).await;
}

#[tokio::test]
async fn cmd_that_writes_forever_still_times_out() {
    let started = Instant::now();
    let r = check(probe(Probe::Cmd("yes".into()), Duration::from_millis(300))).await;
    assert!(!r.ok);
    assert!(
        r.output.starts_with("timed out after 300ms: y\ny\n"),
        "{r:?}"
    );
    assert!(r.output.len() <= OUTPUT_MAX);
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn a_dropped_cmd_probe_is_killed_and_reaped() {
    let dir = Scratch::new("dropped");
    let file = dir.0.join("pids");
    let script = format!(
        "sleep 100 & echo $! >> {f}; echo $$ >> {f}; wait",
        f = file.display()
    );
    let fut = run(probe(Probe::Cmd(script), Duration::from_secs(60)));
    let pids = {
        tokio::pin!(fut);
        let pids = tokio::select! {
            r = &mut fut => panic!("probe ended early: {r:?}"),
            pids = read_pids(&file, 2) => pids,
        };
        assert!(pids.iter().all(|&p| running(p)));
        pids
        // Dropped here, mid-run.
    };
    all_gone(&pids).await;
    // The shell is reaped by a thread: bounded wait until it is gone.
    let until = Instant::now() + Duration::from_secs(5);
    while exists(pids[1]) {
        assert!(Instant::now() < until, "dropped probe's shell not reaped");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn cmd_without_a_pidfd_is_waited_for_on_the_pool() {
    let follow = |script: &str, timeout: Duration| {
        let mut child =
            crate::process::exec::spawn_probe(script, &BTreeMap::new(), None, None).expect("spawn");
        assert!(child.exited.is_some(), "this kernel has pidfd_open");
        child.exited = None;
        tokio::time::timeout(
            BOUND,
            super::cmd::follow(child, Instant::now() + timeout, timeout),
        )
    };
    let r = follow("echo fine; sleep 100 & echo $!", Duration::from_secs(10)).await;
    let text = r.expect("bounded").expect("passes");
    all_gone(&pids_in(&text)).await;
    let r = follow("exit 4", Duration::from_secs(10)).await;
    assert_eq!(r.expect("bounded"), Err("exit status 4".to_string()));
    // Written just before the exit, seen only after it: never lost.
    for _ in 0..20 {
        let r = follow("printf 'last words'; exit 1", Duration::from_secs(10)).await;
        assert_eq!(r.expect("bounded"), Err("last words".to_string()));
    }
    let r = follow("echo $$; sleep 100", Duration::from_millis(200)).await;
    let text = r.expect("bounded").expect_err("times out");
    let pids = pids_in(&text);
    assert!(text.starts_with("timed out after 200ms: "), "{text}");
    assert!(!exists(pids[0]), "the probe's shell was not reaped");
}

// ---- http ----

/// A one-route server: answers every request with `response` and sends the
/// requests it got (head only) to the returned receiver.
async fn serve(
    response: &'static [u8],
) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16384 {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
                let _ = stream.write_all(response).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (addr, rx)
}

async fn http(url: String, timeout: Duration) -> ProbeResult {
    check(probe(Probe::Http(url), timeout)).await
}

#[tokio::test]
async fn http_200_passes_and_sends_a_minimal_request() {
    let (addr, mut requests) =
        serve(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok").await;
    let r = http(
        format!("http://{addr}/health?full=1#x"),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!((r.ok, r.output.as_str()), (true, "HTTP 200 OK"));
    let request = requests.recv().await.expect("a request");
    assert_eq!(
        request,
        format!(
            "GET /health?full=1 HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nUser-Agent: taskmaster\r\n\r\n"
        )
    );
}

#[tokio::test]
async fn http_503_fails_with_its_status() {
    let (addr, _requests) =
        serve(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n").await;
    let r = http(format!("http://{addr}/"), Duration::from_secs(5)).await;
    assert_eq!(
        (r.ok, r.output.as_str()),
        (false, "HTTP 503 Service Unavailable")
    );
}

#[tokio::test]
async fn http_302_passes_without_following() {
    let (addr, mut requests) =
        serve(b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/\r\n\r\n").await;
    let r = http(format!("http://{addr}/"), Duration::from_secs(5)).await;
    assert_eq!((r.ok, r.output.as_str()), (true, "HTTP 302 Found"));
    assert!(requests.recv().await.is_some());
    assert!(requests.try_recv().is_err(), "one request only");
}

#[tokio::test]
async fn http_interim_and_odd_responses() {
    let (addr, _r) =
        serve(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n")
            .await;
    let r = http(format!("http://{addr}/"), Duration::from_secs(5)).await;
    assert_eq!((r.ok, r.output.as_str()), (true, "HTTP 204 No Content"));

    let (addr, _r) = serve(b"SSH-2.0-OpenSSH_9.6\r\n").await;
    let r = http(format!("http://{addr}/"), Duration::from_secs(5)).await;
    assert_eq!(
        (r.ok, r.output.as_str()),
        (false, "not an HTTP response: SSH-2.0-OpenSSH_9.6")
    );

    let (addr, _r) = serve(b"").await;
    let r = http(format!("http://{addr}/"), Duration::from_secs(5)).await;
    assert_eq!(
        (r.ok, r.output.as_str()),
        (false, "connection closed without a response")
    );
}

#[tokio::test]
async fn http_status_line_in_pieces() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        let mut buf = [0u8; 1024];
        let _ = stream.read(&mut buf).await;
        for piece in [&b"HTT"[..], b"P/1.1 2", b"00 O", b"K\r", b"\n\r\n"] {
            let _ = stream.write_all(piece).await;
            let _ = stream.flush().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let r = http(format!("http://{addr}/"), Duration::from_secs(5)).await;
    assert_eq!((r.ok, r.output.as_str()), (true, "HTTP 200 OK"));
}

#[tokio::test]
async fn http_server_that_never_answers_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (held_tx, held_rx) = oneshot::channel();
    tokio::spawn(async move {
        // Accepts, then holds the connection without a word.
        if let Ok((stream, _)) = listener.accept().await {
            let _ = held_rx.await;
            drop(stream);
        }
    });
    let started = Instant::now();
    let r = http(format!("http://{addr}/"), Duration::from_millis(300)).await;
    assert_eq!((r.ok, r.output.as_str()), (false, "timed out after 300ms"));
    assert!(started.elapsed() < Duration::from_secs(3));
    let _ = held_tx.send(());
}

/// A port nobody listens on (bound, then closed).
async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    port
}

#[tokio::test]
async fn http_connection_refused_fails() {
    let port = closed_port().await;
    let r = http(format!("http://127.0.0.1:{port}/"), Duration::from_secs(5)).await;
    assert_eq!((r.ok, r.output.as_str()), (false, "connection refused"));
}

#[tokio::test]
async fn http_huge_body_is_not_read() {
    const BODY: usize = 1 << 30;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (sent_tx, sent_rx) = oneshot::channel();
    tokio::spawn(async move {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        let mut buf = [0u8; 1024];
        let _ = stream.read(&mut buf).await;
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {BODY}\r\n\r\n");
        let _ = stream.write_all(head.as_bytes()).await;
        let chunk = vec![b'x'; 64 * 1024];
        let mut sent = 0;
        // Writes until the probe's close makes a write fail.
        while sent < BODY {
            match stream.write(&chunk).await {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        let _ = sent_tx.send(sent);
    });
    let started = Instant::now();
    let r = http(format!("http://{addr}/big"), Duration::from_secs(10)).await;
    assert_eq!((r.ok, r.output.as_str()), (true, "HTTP 200 OK"));
    assert!(started.elapsed() < Duration::from_secs(3));
    let sent = timeout(BOUND, sent_rx)
        .await
        .expect("server ended")
        .expect("count");
    // Whatever the socket buffers took, and no more: nobody read it.
    assert!(sent < 64 << 20, "server sent {sent} bytes");
}

#[tokio::test]
async fn http_ipv6() {
    // IPv6 only where the loopback has it.
    let Ok(listener) = TcpListener::bind("[::1]:0").await else {
        return;
    };
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        if let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let n = stream.read(&mut buf).await.unwrap_or(0);
            let ok =
                String::from_utf8_lossy(&buf[..n]).contains(&format!("Host: [::1]:{port}\r\n"));
            let answer: &[u8] = if ok {
                b"HTTP/1.1 200 OK\r\n\r\n"
            } else {
                b"HTTP/1.1 400 Bad Host\r\n\r\n"
            };
            let _ = stream.write_all(answer).await;
        }
    });
    let r = http(format!("http://[::1]:{port}/"), Duration::from_secs(5)).await;
    assert_eq!((r.ok, r.output.as_str()), (true, "HTTP 200 OK"));
}

#[tokio::test]
async fn http_bad_url_fails_without_connecting() {
    let r = http("http://u:p@127.0.0.1/".into(), Duration::from_secs(5)).await;
    assert!(!r.ok);
    assert!(r.output.contains("credentials"), "{r:?}");
}

// ---- tcp ----

#[tokio::test]
async fn tcp_connect_passes_and_refused_fails() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let r = check(probe(Probe::Tcp(addr.to_string()), Duration::from_secs(5))).await;
    assert_eq!(
        r,
        ProbeResult {
            ok: true,
            output: format!("connected to {addr}")
        }
    );
    drop(listener);

    let port = closed_port().await;
    let r = check(probe(
        Probe::Tcp(format!("127.0.0.1:{port}")),
        Duration::from_secs(5),
    ))
    .await;
    assert_eq!((r.ok, r.output.as_str()), (false, "connection refused"));
    let r = check(probe(
        Probe::Tcp("127.0.0.1".into()),
        Duration::from_secs(5),
    ))
    .await;
    assert!(!r.ok && r.output.contains("no port"), "{r:?}");
}

/// The only test that probes by name (`localhost`, what /etc/hosts has):
/// it checks the table of names, which others would change meanwhile.
#[tokio::test]
async fn by_name_and_remembered_until_no_address_answers() {
    let (addr, mut requests) = serve(b"HTTP/1.0 200 OK\r\n\r\n").await;
    let port = addr.port();
    let r = http(format!("http://localhost:{port}/"), Duration::from_secs(5)).await;
    assert_eq!((r.ok, r.output.as_str()), (true, "HTTP 200 OK"));
    let request = requests.recv().await.expect("a request");
    assert!(request.contains(&format!("\r\nHost: localhost:{port}\r\n")));
    assert!(super::net::remembered("localhost"));

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let tcp = |port| {
        probe(
            Probe::Tcp(format!("localhost:{port}")),
            Duration::from_secs(5),
        )
    };
    let r = check(tcp(port)).await;
    assert!(r.ok && r.output.starts_with("connected to "), "{r:?}");
    drop(listener);
    let r = check(tcp(port)).await;
    assert_eq!((r.ok, r.output.as_str()), (false, "connection refused"));
    assert!(!super::net::remembered("localhost"));

    let r = check(probe(
        Probe::Tcp("nosuch.invalid:80".into()),
        Duration::from_secs(5),
    ))
    .await;
    // Refused by the resolver, or a resolver that never answers.
    assert!(!r.ok, "{r:?}");
    assert!(
        r.output.starts_with("nosuch.invalid: ") || r.output.starts_with("timed out"),
        "{r:?}"
    );
}

#[tokio::test]
async fn tcp_connect_is_bounded_by_the_timeout() {
    // A non-routable address (TEST-NET-1): the SYN goes unanswered, or the
    // network is unreachable at once; either way the probe fails in time.
    let started = Instant::now();
    let r = check(probe(
        Probe::Tcp("192.0.2.1:9".into()),
        Duration::from_millis(300),
    ))
    .await;
    assert!(!r.ok);
    assert!(started.elapsed() < Duration::from_secs(3));
}

// ---- cost ----

/// CPU time of this thread and of the whole process, in microseconds.
fn cpu_us() -> (u64, u64) {
    let get = |who| {
        let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: getrusage fills the struct it is given.
        let usage = unsafe {
            libc::getrusage(who, usage.as_mut_ptr());
            usage.assume_init()
        };
        let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
        us(usage.ru_utime) + us(usage.ru_stime)
    };
    (get(libc::RUSAGE_THREAD), get(libc::RUSAGE_SELF))
}

/// Not an assertion: prints the daemon-side CPU cost of `http` probes
/// against a local server on its own thread. Run alone:
/// `cargo test --release --lib health::tests::http_probe_cost -- --ignored --nocapture`.
#[test]
#[ignore]
fn http_probe_cost() {
    const PROBES: usize = 1000;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    // Four rounds (by IP, by IP 200 at a time, by name, and a blocking std
    // client doing the same as the floor); after each the
    // server says how much CPU it has used, to tell it from the probes'.
    let (cpu_tx, cpu_rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        for _ in 0..4 {
            for _ in 0..PROBES {
                let Ok((mut stream, _)) = listener.accept() else {
                    return;
                };
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf);
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
            }
            let _ = cpu_tx.send(cpu_us().0);
        }
    });
    let mut server_cpu = 0;
    let mut server_round = || {
        let now = cpu_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("server round");
        let used = now - server_cpu;
        server_cpu = now;
        used
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let one = |url: String| probe(Probe::Http(url), Duration::from_secs(5));
    let report = |what: &str,
                  before: (u64, u64),
                  after: (u64, u64),
                  server: u64,
                  wall: Duration| {
        let thread = after.0 - before.0;
        let process = (after.1 - before.1).saturating_sub(server);
        println!(
            "{what}: {PROBES} probes in {wall:?}; probing thread {thread} us CPU ({:.1} us/probe, \
             {:.2} % of a core at 200/s); process minus server {process} us ({:.1} us/probe, {:.2} %)",
            thread as f64 / PROBES as f64,
            thread as f64 / PROBES as f64 * 200.0 / 1e4,
            process as f64 / PROBES as f64,
            process as f64 / PROBES as f64 * 200.0 / 1e4,
        );
    };
    rt.block_on(async {
        let url = format!("http://{addr}/health");
        let (b, w) = (cpu_us(), std::time::Instant::now());
        for _ in 0..PROBES {
            let r = run(one(url.clone())).await;
            assert!(r.ok, "{r:?}");
        }
        let (a, w) = (cpu_us(), w.elapsed());
        report("sequential, by IP", b, a, server_round(), w);

        let (b, w) = (cpu_us(), std::time::Instant::now());
        for _ in 0..PROBES / 200 {
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..200 {
                set.spawn(run(one(url.clone())));
            }
            while let Some(r) = set.join_next().await {
                assert!(r.is_ok_and(|r| r.ok));
            }
        }
        let (a, w) = (cpu_us(), w.elapsed());
        report("200 at a time, by IP", b, a, server_round(), w);

        let url = format!("http://localhost:{}/health", addr.port());
        let (b, w) = (cpu_us(), std::time::Instant::now());
        for _ in 0..PROBES {
            let r = run(one(url.clone())).await;
            assert!(r.ok, "{r:?}");
        }
        let (a, w) = (cpu_us(), w.elapsed());
        report("sequential, by name (lookup_host)", b, a, server_round(), w);
    });
    let (b, w) = (cpu_us(), std::time::Instant::now());
    for _ in 0..PROBES {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        let request = format!(
            "GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nUser-Agent: taskmaster\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).expect("send");
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf).expect("read");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    }
    let (a, w) = (cpu_us(), w.elapsed());
    report("floor: blocking std client, by IP", b, a, server_round(), w);
    // For comparison, `cmd = "true"` (the daemon's side: spawn, pipe,
    // pidfd, reap; the shell's own CPU is its, not the daemon's).
    rt.block_on(async {
        let (b, w) = (cpu_us(), std::time::Instant::now());
        for _ in 0..PROBES {
            let r = run(probe(Probe::Cmd("true".into()), Duration::from_secs(5))).await;
            assert!(r.ok, "{r:?}");
        }
        let (a, w) = (cpu_us(), w.elapsed());
        report("cmd = \"true\"", b, a, 0, w);
    });
    let _ = server.join();
}

/// cmd probes while a thread reaps like the daemon's SIGCHLD handler does
/// (`process::reap`, racing `wait_child`), leaking no descriptor. Ignored: it reaps every child
/// of the test process, so run it alone:
/// `cargo test --lib health::tests::cmd_probes_beside_the_reaper -- --ignored`.
#[tokio::test]
#[ignore]
async fn cmd_probes_beside_the_reaper() {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reaper = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = crate::process::reap();
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };
    let fds = || std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    // After a first probe: /dev/null is opened once, at the first spawn.
    assert!(cmd("true").await.ok);
    let before = fds();
    for i in 0..100 {
        let script = format!("echo {i}; exit {}", i % 2);
        let r = cmd(&script).await;
        assert_eq!(r.ok, i % 2 == 0, "{r:?}");
        assert_eq!(r.output, i.to_string());
    }
    let r = check(probe(
        Probe::Cmd("echo $$; sleep 100".into()),
        Duration::from_millis(200),
    ))
    .await;
    assert!(r.output.starts_with("timed out after 200ms: "), "{r:?}");
    let pids = pids_in(&r.output);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = reaper.join();
    assert!(!exists(pids[0]));
    // No pipe or pidfd left open (alone in the process, the count is exact).
    assert_eq!(fds(), before);
}
