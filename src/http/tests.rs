//! Table tests of the pure HTTP pieces: heads, routes, cookies, forms and
//! the bytes of a response.

use super::*;

fn head(raw: &str) -> Head {
    match parse_head(raw.as_bytes()) {
        Ok(Some((h, _))) => h,
        other => panic!("{raw:?}: {other:?}"),
    }
}

#[test]
fn heads_parse_or_say_why_not() {
    let h =
        head("GET /metrics?x=1 HTTP/1.1\r\nHost: 127.0.0.1:3333\r\nUpgrade: WebSocket\r\n\r\nrest");
    assert_eq!(h.method, "GET");
    assert_eq!(h.path(), "/metrics");
    assert_eq!(h.header("host"), Some("127.0.0.1:3333"));
    assert_eq!(h.header("HOST"), Some("127.0.0.1:3333"));
    assert!(h.is_upgrade());
    assert!(!head("GET / HTTP/1.1\r\nUpgrade: h2c\r\n\r\n").is_upgrade());
    assert!(head("GET / HTTP/1.1\r\nUpgrade: h2c, websocket\r\n\r\n").is_upgrade());
    // Incomplete: wait for more.
    assert!(matches!(
        parse_head(b"GET / HTTP/1.1\r\nHost: x\r\n"),
        Ok(None)
    ));
    assert!(matches!(
        parse_head(b"\x16\x03\x01 tls hello\r\n\r\n"),
        Err(HeadError::Malformed(_))
    ));
    let many: String = (0..80).map(|i| format!("X-{i}: y\r\n")).collect();
    let raw = format!("GET / HTTP/1.1\r\n{many}\r\n");
    assert!(matches!(
        parse_head(raw.as_bytes()),
        Err(HeadError::TooLarge)
    ));
    // The bytes after the head are kept for whoever reads on.
    let (_, used) = parse_head(b"GET / HTTP/1.1\r\n\r\nabc").unwrap().unwrap();
    assert_eq!(used, 18);
}

#[tokio::test]
async fn a_head_over_8_kib_is_too_large_and_one_under_is_read() {
    let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
    let mut r = big.as_bytes();
    assert!(matches!(read_head(&mut r).await, Err(HeadError::TooLarge)));
    let fits = format!(
        "GET / HTTP/1.1\r\nX: {}\r\n\r\nBODY",
        "a".repeat(MAX_HEAD - 40)
    );
    let mut r = fits.as_bytes();
    let (h, rest) = read_head(&mut r).await.unwrap();
    assert_eq!(h.path(), "/");
    assert_eq!(rest, b"BODY");
    let mut short: &[u8] = b"GET / HT";
    assert!(matches!(
        read_head(&mut short).await,
        Err(HeadError::Closed)
    ));
}

#[test]
fn routes() {
    let table = [
        ("GET", "/", Route::Dashboard),
        ("HEAD", "/", Route::Dashboard),
        ("GET", "/metrics", Route::Metrics),
        ("POST", "/login", Route::Login),
        ("GET", "/login", Route::MethodNotAllowed("POST")),
        ("POST", "/", Route::MethodNotAllowed("GET, HEAD")),
        ("DELETE", "/metrics", Route::MethodNotAllowed("GET, HEAD")),
        ("GET", "/index.html", Route::NotFound),
        ("POST", "/nope", Route::NotFound),
        ("GET", "", Route::NotFound),
    ];
    for (method, path, want) in table {
        assert_eq!(route(method, path), want, "{method} {path}");
    }
}

#[test]
fn cookies_by_name_and_port() {
    let h = head("GET / HTTP/1.1\r\nCookie: a=1; taskmaster_session_3333=abc ; b=\"q\"\r\nCookie: c=3\r\n\r\n");
    assert_eq!(h.cookie("taskmaster_session_3333"), Some("abc"));
    assert_eq!(h.cookie("b"), Some("q"));
    assert_eq!(h.cookie("c"), Some("3"));
    assert_eq!(h.cookie("taskmaster_session"), None);
    assert_eq!(
        cookie_name(Some("127.0.0.1:3333")),
        "taskmaster_session_3333"
    );
    assert_eq!(cookie_name(Some("[::1]:80")), "taskmaster_session_80");
    assert_eq!(cookie_name(Some("localhost")), "taskmaster_session");
    assert_eq!(cookie_name(Some("[::1]")), "taskmaster_session");
    assert_eq!(cookie_name(Some("x:y;z")), "taskmaster_session");
    assert_eq!(cookie_name(None), "taskmaster_session");
}

#[test]
fn form_fields_are_url_decoded() {
    assert_eq!(
        form_field(b"token=s3cr%2Ft+x&y=1", "token"),
        Some(b"s3cr/t x".to_vec())
    );
    assert_eq!(form_field(b"a=1&token=", "token"), Some(Vec::new()));
    assert_eq!(form_field(b"a=1", "token"), None);
    assert_eq!(form_field(b"token=%zz%4", "token"), Some(b"%zz%4".to_vec()));
    assert_eq!(form_field(b"to%6Ben=v", "token"), Some(b"v".to_vec()));
}

#[test]
fn responses_close_and_keep_their_head_clean() {
    let r = Response::text(405, "no\n").with("Allow", "GET\r\nX-Evil: 1");
    let text = String::from_utf8(r.to_bytes(false)).unwrap();
    assert!(
        text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
        "{text}"
    );
    assert!(text.contains("\r\nContent-Length: 3\r\n"));
    assert!(text.contains("\r\nConnection: close\r\n"));
    assert!(
        text.contains("\r\nAllow: GETX-Evil: 1\r\n"),
        "no header injection: {text}"
    );
    assert!(text.ends_with("\r\n\r\nno\n"));
    let head_only = String::from_utf8(r.to_bytes(true)).unwrap();
    assert!(head_only.ends_with("\r\n\r\n") && head_only.contains("Content-Length: 3"));
    let page = String::from_utf8(Response::dashboard().to_bytes(false)).unwrap();
    assert!(page.contains("Content-Security-Policy: default-src 'none'"));
    assert!(page.contains("X-Frame-Options: DENY"));
    let login = String::from_utf8(Response::login(401, "<p>Wrong</p>").to_bytes(false)).unwrap();
    assert!(login.contains("<p>Wrong</p>") && login.contains("action=\"/login\""));
    assert!(!login.contains("{{message}}"));
}
