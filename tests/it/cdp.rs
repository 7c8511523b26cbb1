//! A small Chrome DevTools Protocol driver: headless Chromium on a fresh
//! profile, one page, JavaScript evaluated in it, real mouse and keyboard
//! input, screenshots. Used by the browser tests and the dashboard bench
//! (`examples/bench/dashboard.rs` includes this file).
//!
//! How it works: Chromium is started with `--remote-debugging-port=0`; it
//! picks a port and writes it, with the browser target's path, to
//! `DevToolsActivePort` in the profile folder (its "DevTools listening on"
//! line on stderr tells us when). One blocking WebSocket speaks to the
//! browser target; the page is a `Target.createTarget` attached with
//! `flatten: true`, so its commands go over the same socket with a
//! `sessionId`. Replies are matched by id; events are queued for
//! [`Browser::wait_event`].
//!
//! Waiting is event-driven: [`Browser::wait_for`] evaluates a promise in the
//! page that resolves when a JavaScript condition holds, checked on every
//! DOM mutation (a `MutationObserver`) and on each animation frame, and
//! rejects at its deadline; the test never sleeps.
//!
//! Chromium runs in a process group of its own, ended by the browser's pid
//! (`Browser.close`, then SIGKILL to the group) when the driver is closed or
//! dropped, also when a launch fails half-way. Its crash handler puts
//! itself in a session of its own: `HOME` points into the profile folder
//! (nothing is written to the user's), so the handler's command line names
//! that folder, and whatever still names it is killed by pid too.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::fs;
use std::io::{BufRead, BufReader, ErrorKind};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::stream::MaybeTlsStream;
use tokio_tungstenite::tungstenite::{self, Message, WebSocket};

/// Debian's Chromium (the `chromium` package).
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Events kept for [`Browser::wait_event`]; older ones are dropped.
const MAX_EVENTS: usize = 1000;

/// How long one protocol command may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

pub type Result<T> = std::result::Result<T, String>;

/// Whether Chromium is installed.
pub fn available() -> bool {
    Path::new(CHROMIUM).is_file()
}

/// A headless Chromium with one page.
pub struct Browser {
    /// The browser process, leader of its own process group.
    child: Option<Child>,
    /// The DevTools socket of the browser target.
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    /// The id of the next command.
    next_id: u64,
    /// The page's session (flattened into the browser socket).
    session: String,
    /// Events received while waiting for replies, oldest first.
    events: VecDeque<Value>,
    /// The profile folder (removed on drop).
    profile: PathBuf,
}

impl Browser {
    /// Starts Chromium with a profile under `dir` and opens a blank page of
    /// `width` × `height` CSS pixels.
    pub fn launch(dir: &Path, width: u32, height: u32) -> Result<Browser> {
        let profile = dir.join("chromium-profile");
        let _ = fs::remove_dir_all(&profile);
        fs::create_dir_all(&profile).map_err(|e| format!("profile dir: {e}"))?;
        let child = Command::new(CHROMIUM)
            .arg("--headless=new")
            .arg("--remote-debugging-port=0")
            .arg(format!("--user-data-dir={}", profile.display()))
            .args([
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--mute-audio",
                "--hide-scrollbars",
            ])
            .arg(format!("--window-size={width},{height}"))
            .arg("about:blank")
            // Nothing of the user's profile is read or written.
            .env("HOME", &profile)
            .env("XDG_CONFIG_HOME", profile.join("config"))
            .env("XDG_CACHE_HOME", profile.join("cache"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start {CHROMIUM}: {e}"))?;
        let mut guard = Group(Some(child), profile.clone());
        // stderr is read to its end by a thread of its own (a full pipe
        // would stall Chromium); its listening line is our start signal.
        let (tx, rx) = mpsc::channel::<String>();
        if let Some(stderr) = guard.0.as_mut().and_then(|c| c.stderr.take()) {
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
                    let _ = tx.send(line);
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut said = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains("DevTools listening on") => break,
                Ok(line) => said.push(line),
                Err(_) => {
                    return Err(format!(
                        "chromium did not start its DevTools server; stderr:\n{}",
                        said.join("\n")
                    ))
                }
            }
        }
        // The file may be written just after the line.
        let port_file = profile.join("DevToolsActivePort");
        let active = loop {
            let text = fs::read_to_string(&port_file).unwrap_or_default();
            if text.lines().count() >= 2 {
                break text;
            }
            if Instant::now() >= deadline {
                return Err(format!("no {}: {text:?}", port_file.display()));
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut lines = active.lines();
        let (port, path) = (
            lines.next().unwrap_or_default(),
            lines.next().unwrap_or_default(),
        );
        let url = format!("ws://127.0.0.1:{}{}", port.trim(), path.trim());
        let (ws, _) =
            tungstenite::connect(url.as_str()).map_err(|e| format!("connect {url}: {e}"))?;
        let mut browser = Browser {
            child: guard.0.take(),
            ws,
            next_id: 0,
            session: String::new(),
            events: VecDeque::new(),
            profile,
        };
        let target = browser.browser_call("Target.createTarget", json!({"url": "about:blank"}))?;
        let target_id = target["targetId"].clone();
        let attached = browser.browser_call(
            "Target.attachToTarget",
            json!({"targetId": target_id, "flatten": true}),
        )?;
        browser.session = attached["sessionId"]
            .as_str()
            .ok_or_else(|| format!("no sessionId in {attached}"))?
            .to_string();
        browser.call("Page.enable", json!({}))?;
        browser.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        )?;
        Ok(browser)
    }

    /// The browser's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// A command to the browser target.
    pub fn browser_call(&mut self, method: &str, params: Value) -> Result<Value> {
        self.send(method, params, None)
    }

    /// A command to the page.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        let session = self.session.clone();
        self.send(method, params, Some(&session))
    }

    fn send(&mut self, method: &str, params: Value, session: Option<&str>) -> Result<Value> {
        self.send_within(method, params, session, CALL_TIMEOUT)
    }

    fn send_within(
        &mut self,
        method: &str,
        params: Value,
        session: Option<&str>,
        timeout: Duration,
    ) -> Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut frame = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            frame["sessionId"] = json!(s);
        }
        self.ws
            .send(Message::text(frame.to_string()))
            .map_err(|e| format!("{method}: send: {e}"))?;
        let deadline = Instant::now() + timeout;
        loop {
            let msg = self.read(deadline).map_err(|e| format!("{method}: {e}"))?;
            if msg["id"] == id {
                if let Some(err) = msg.get("error") {
                    return Err(format!("{method}: {err}"));
                }
                return Ok(msg["result"].clone());
            }
            if msg.get("method").is_some() {
                if self.events.len() >= MAX_EVENTS {
                    self.events.pop_front();
                }
                self.events.push_back(msg);
            }
        }
    }

    /// The next message from the socket, before `deadline`.
    fn read(&mut self, deadline: Instant) -> Result<Value> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("timed out waiting for chromium".into());
            }
            if let MaybeTlsStream::Plain(s) = self.ws.get_mut() {
                let _ = s.set_read_timeout(Some(left));
            }
            match self.ws.read() {
                Ok(Message::Text(t)) => {
                    return serde_json::from_str(&t).map_err(|e| format!("bad frame: {e}"))
                }
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                {
                    continue
                }
                Err(e) => return Err(format!("devtools socket: {e}")),
            }
        }
    }

    /// Forgets the events received so far.
    pub fn clear_events(&mut self) {
        self.events.clear();
    }

    /// Waits for an event of the page named `method` (received since the
    /// last [`Browser::clear_events`]).
    pub fn wait_event(&mut self, method: &str, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let session = self.session.as_str();
            if let Some(i) = self
                .events
                .iter()
                .position(|e| e["method"] == method && e["sessionId"] == session)
            {
                return Ok(self.events.remove(i).unwrap_or_default()["params"].clone());
            }
            let msg = self
                .read(deadline)
                .map_err(|e| format!("waiting for {method}: {e}"))?;
            if msg.get("method").is_some() {
                self.events.push_back(msg);
            }
        }
    }

    /// Navigates and waits for the page's load event.
    pub fn goto(&mut self, url: &str) -> Result<()> {
        self.clear_events();
        let nav = self.call("Page.navigate", json!({"url": url}))?;
        if let Some(err) = nav.get("errorText").and_then(Value::as_str) {
            return Err(format!("navigate to {url}: {err}"));
        }
        self.wait_event("Page.loadEventFired", Duration::from_secs(30))
            .map(|_| ())
    }

    /// Evaluates `expr` in the page (awaiting a promise) and returns its
    /// value as JSON; a thrown exception is the error.
    pub fn eval(&mut self, expr: &str) -> Result<Value> {
        self.eval_within(expr, CALL_TIMEOUT)
    }

    fn eval_within(&mut self, expr: &str, timeout: Duration) -> Result<Value> {
        let session = self.session.clone();
        let r = self.send_within(
            "Runtime.evaluate",
            json!({"expression": expr, "awaitPromise": true, "returnByValue": true}),
            Some(&session),
            timeout,
        )?;
        if let Some(ex) = r.get("exceptionDetails") {
            let what = ex["exception"]["description"]
                .as_str()
                .or_else(|| ex["text"].as_str())
                .unwrap_or("exception");
            return Err(what.to_string());
        }
        Ok(r["result"]["value"].clone())
    }

    /// Waits until the JavaScript expression `cond` is truthy in the page
    /// and returns its value. Checked at once, on every DOM mutation and on
    /// every animation frame; past `timeout` the error says `what` and
    /// shows the page's text.
    pub fn wait_for(&mut self, what: &str, cond: &str, timeout: Duration) -> Result<Value> {
        let ms = timeout.as_millis();
        let script = format!(
            r#"new Promise((resolve, reject) => {{
  const cond = () => {{ try {{ return ({cond}); }} catch (e) {{ return undefined; }} }};
  let done = false, obs = null, timer = 0;
  const finish = (ok, v) => {{
    if (done) return; done = true;
    if (obs) obs.disconnect(); clearTimeout(timer);
    ok ? resolve(v) : reject(new Error(v));
  }};
  const check = () => {{ if (done) return; const v = cond(); if (v) finish(true, v); }};
  const frame = () => {{ check(); if (!done) requestAnimationFrame(frame); }};
  timer = setTimeout(() => {{
    check();
    finish(false, 'timed out after {ms} ms; page text: ' + (document.body ? document.body.innerText.slice(0, 3000) : ''));
  }}, {ms});
  check();
  if (!done) {{
    obs = new MutationObserver(check);
    obs.observe(document, {{subtree: true, childList: true, attributes: true, characterData: true}});
    requestAnimationFrame(frame);
  }}
}})"#
        );
        self.eval_within(&script, timeout + Duration::from_secs(30))
            .map_err(|e| format!("waiting for {what}: {e}"))
    }

    /// Clicks the centre of the first element matching `selector` with the
    /// mouse (scrolled into view first), as a user would: it must be the
    /// element on top at that point.
    pub fn click(&mut self, selector: &str) -> Result<()> {
        let sel = serde_json::to_string(selector).unwrap_or_default();
        let at = self.eval(&format!(
            r#"(() => {{
  const el = document.querySelector({sel});
  if (!el) throw new Error('no element ' + {sel});
  el.scrollIntoView({{block: 'center', inline: 'center'}});
  const r = el.getBoundingClientRect();
  const x = r.left + r.width / 2, y = r.top + r.height / 2;
  const top = document.elementFromPoint(x, y);
  if (!top || !(top === el || el.contains(top))) throw new Error('element ' + {sel} + ' is covered by ' + (top ? top.outerHTML.slice(0, 200) : 'nothing'));
  return [x, y];
}})()"#
        ))?;
        let (x, y) = (at[0].as_f64().unwrap_or(0.0), at[1].as_f64().unwrap_or(0.0));
        for (kind, buttons) in [("mouseMoved", 0), ("mousePressed", 1), ("mouseReleased", 0)] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "buttons": buttons, "clickCount": 1}),
            )?;
        }
        Ok(())
    }

    /// Focuses the element matching `selector` and types `text` into it.
    pub fn type_into(&mut self, selector: &str, text: &str) -> Result<()> {
        let sel = serde_json::to_string(selector).unwrap_or_default();
        self.eval(&format!(
            "(() => {{ const el = document.querySelector({sel}); if (!el) throw new Error('no element ' + {sel}); el.focus(); }})()"
        ))?;
        self.call("Input.insertText", json!({"text": text}))?;
        Ok(())
    }

    /// Presses and releases Enter in the focused element.
    pub fn press_enter(&mut self) -> Result<()> {
        let key = json!({"key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13, "nativeVirtualKeyCode": 13});
        let mut down = key.clone();
        down["type"] = json!("keyDown");
        down["text"] = json!("\r");
        let mut up = key;
        up["type"] = json!("keyUp");
        self.call("Input.dispatchKeyEvent", down)?;
        self.call("Input.dispatchKeyEvent", up)?;
        Ok(())
    }

    /// Emulates the system's colour scheme (`"light"` or `"dark"`).
    pub fn color_scheme(&mut self, scheme: &str) -> Result<()> {
        self.call(
            "Emulation.setEmulatedMedia",
            json!({"features": [{"name": "prefers-color-scheme", "value": scheme}]}),
        )
        .map(|_| ())
    }

    /// Saves a PNG of the viewport to `path`.
    pub fn screenshot(&mut self, path: &Path) -> Result<()> {
        let shot = self.call("Page.captureScreenshot", json!({"format": "png"}))?;
        let data = shot["data"].as_str().ok_or("no screenshot data")?;
        let png = base64_decode(data)?;
        if !png.starts_with(b"\x89PNG") {
            return Err("the screenshot is not a PNG".into());
        }
        fs::write(path, png).map_err(|e| format!("write {}: {e}", path.display()))
    }

    /// Asks Chromium to quit, then makes sure its process group is gone.
    pub fn close(mut self) {
        let _ = self.send_within("Browser.close", json!({}), None, Duration::from_secs(5));
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            kill_group(&mut child);
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_group(&mut child);
        }
        kill_profile_users(&self.profile);
        let _ = fs::remove_dir_all(&self.profile);
    }
}

/// Ends Chromium if launching fails half-way.
struct Group(Option<Child>, PathBuf);

impl Drop for Group {
    fn drop(&mut self) {
        // Taken: the launch succeeded and the browser owns the child.
        if let Some(mut child) = self.0.take() {
            kill_group(&mut child);
            kill_profile_users(&self.1);
        }
    }
}

/// SIGKILLs, by pid, every process whose command line names `profile`:
/// what is left of this browser outside its group (the crash handler,
/// which sets up a session of its own with its database under `HOME`).
fn kill_profile_users(profile: &Path) {
    let needle = profile.as_os_str().as_encoded_bytes();
    if needle.is_empty() {
        return;
    }
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if pid > 1 && cmdline.windows(needle.len()).any(|w| w == needle) {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// SIGKILLs Chromium's process group (renderers, zygotes) by the browser's
/// pid, and reaps the browser.
fn kill_group(child: &mut Child) {
    let pid = child.id() as i32;
    if pid > 1 {
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Standard base64 (with padding), as CDP encodes binary data.
pub fn base64_decode(text: &str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b'\n' | b'\r' => continue,
            _ => return Err(format!("bad base64 byte {c:#x}")),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}
