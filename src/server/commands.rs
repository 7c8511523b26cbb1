//! The commands a connection can run (SPEC §7, §10): decoding each one's
//! `args` and `opts`, asking the supervisor, reading logs back for `tail` and
//! `logs`, and building the reply. The connection machinery (accept loop,
//! queues, follows) stays in `mod.rs`.

#[allow(clippy::wildcard_imports)]
use super::*;

/// Runs one request and builds its reply. Outside a connection nothing
/// can be followed: a `follow` option only returns the lines.
pub async fn execute(ctx: &Context, req: Request) -> Reply {
    run(ctx, req, None).await.0
}

/// Runs one request; with a `registration` (booked by the connection), a
/// `tail`/`logs` that asks to follow also returns the follow to run once
/// its reply is queued.
pub(super) async fn run(
    ctx: &Context,
    req: Request,
    registration: Option<Registration>,
) -> (Reply, Option<FollowTask>) {
    let opts = match command_opts(&req) {
        Ok(opts) => opts,
        Err(message) => return (Reply::err(req.id, "bad_args", message), None),
    };
    match opts {
        Opts::Tail {
            stream,
            lines,
            follow: _,
        } => tail(ctx, req, stream, lines, registration).await,
        Opts::Logs { lines, follow: _ } => logs(ctx, req, lines, registration).await,
        Opts::None => (simple(ctx, req).await, None),
    }
}

/// The commands that take no options and never follow.
pub(super) async fn simple(ctx: &Context, req: Request) -> Reply {
    let id = req.id;
    let no_args = |cmd: &str| -> Option<Reply> {
        (!req.args.is_empty())
            .then(|| Reply::err(id.clone(), "bad_args", format!("{cmd} takes no arguments")))
    };
    match req.cmd.as_str() {
        "status" => match ctx.handle.status(req.args).await {
            Ok(data) => Reply::ok(id, serde_json::to_value(data).unwrap_or(Value::Null)),
            Err(e) => Reply::err(id, e.code, e.message),
        },
        "start" | "stop" | "restart" => {
            let action = match req.cmd.as_str() {
                "start" => Control::Start,
                "stop" => Control::Stop,
                _ => Control::Restart,
            };
            match ctx.handle.control(action, req.args).await {
                Ok(results) => Reply::ok(id, json!({ "results": results })),
                Err(e) => Reply::err(id, e.code, e.message),
            }
        }
        "reload" => {
            if let Some(r) = no_args("reload") {
                return r;
            }
            match ctx.reloader.reload().await {
                Ok(diff) => Reply::ok(id, serde_json::to_value(diff).unwrap_or(Value::Null)),
                Err(e) => Reply::err(id, "bad_config", e),
            }
        }
        "shutdown" | "exit" => {
            if let Some(r) = no_args(&req.cmd) {
                return r;
            }
            let _ = ctx.shutdown.try_send(());
            Reply::ok(id, json!({}))
        }
        "version" => no_args("version").unwrap_or_else(|| {
            // `dashboard`: the page's URL on the first TCP listener (SPEC
            // §14 `taskmasterctl dashboard`), null with only Unix sockets.
            Reply::ok(
                id,
                json!({ "version": env!("CARGO_PKG_VERSION"), "dashboard": ctx.dashboard }),
            )
        }),
        "clear" => clear(ctx, id, req.args).await,
        "signal" => signal(ctx, id, req.args).await,
        "unfollow" => Reply::err(
            id,
            "bad_args",
            "unfollow ends a follow started on the same connection",
        ),
        other => {
            let hint = crate::config::did_you_mean(other, COMMANDS)
                .map(|k| format!(" (did you mean \"{k}\"?)"))
                .unwrap_or_default();
            let shown: String = other.chars().take(64).collect();
            Reply::err(
                id,
                "unknown_command",
                format!("unknown command \"{shown}\"{hint}"),
            )
        }
    }
}

/// A command's options, checked, with the defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Opts {
    /// A command that takes none (or an unknown command, whose own error
    /// comes first).
    None,
    /// `tail`.
    Tail {
        stream: Stream,
        lines: usize,
        follow: bool,
    },
    /// `logs`.
    Logs { lines: usize, follow: bool },
}

impl Opts {
    pub(super) fn follow(self) -> bool {
        match self {
            Opts::Tail { follow, .. } | Opts::Logs { follow, .. } => follow,
            Opts::None => false,
        }
    }
}

/// Checks a request's `opts` against its command (SPEC Part two): an
/// unknown option or a wrong type is `bad_args`, naming it.
pub(super) fn command_opts(req: &Request) -> Result<Opts, String> {
    use OptType::{Bool, Integer, String as Text};
    let cmd = req.cmd.as_str();
    let known: &[(&'static str, OptType)] = match cmd {
        "tail" => &[("stream", Text), ("lines", Integer), ("follow", Bool)],
        "logs" => &[("lines", Integer), ("follow", Bool)],
        _ if COMMANDS.contains(&cmd) => &[],
        // An unknown command: "unknown command" says more than its options.
        _ => return Ok(Opts::None),
    };
    req.check_opts(known).map_err(|e| opt_message(cmd, e))?;
    let lines = match req.opt_int("lines") {
        None => DEFAULT_LINES,
        Some(n) if (1..=MAX_LINES).contains(&n) => n,
        Some(n) => return Err(format!("lines must be between 1 and {MAX_LINES}, got {n}")),
    };
    let lines = usize::try_from(lines).unwrap_or(DEFAULT_LINES as usize);
    Ok(match cmd {
        "tail" => Opts::Tail {
            stream: match req.opt_str("stream") {
                None => Stream::Stdout,
                Some(s) => Stream::parse(s).ok_or_else(|| {
                    format!("stream must be \"stdout\" or \"stderr\", got {}", shown(s))
                })?,
            },
            lines,
            follow: req.opt_bool("follow").unwrap_or(false),
        },
        "logs" => Opts::Logs {
            lines,
            follow: req.opt_bool("follow").unwrap_or(true),
        },
        _ => Opts::None,
    })
}

/// An option error as the `bad_args` message says it.
pub(super) fn opt_message(cmd: &str, error: OptError) -> String {
    match error {
        OptError::Unknown { name, known } if known.is_empty() => {
            format!("{cmd} takes no options (got {})", shown(&name))
        }
        OptError::Unknown { name, known } => {
            let hint = match crate::config::did_you_mean(&name, &known) {
                Some(k) => format!("did you mean \"{k}\"?"),
                None => format!("it takes {}", known.join(", ")),
            };
            format!("unknown option {} for {cmd} ({hint})", shown(&name))
        }
        OptError::WrongType {
            name,
            expected,
            found,
        } => format!(
            "option {} of {cmd} must be {expected}, got {found}",
            shown(&name)
        ),
    }
}

/// A client's word, quoted and cut short, for an error message.
pub(super) fn shown(word: &str) -> String {
    let cut: String = word.chars().take(64).collect();
    format!("{cut:?}")
}

/// `tail NAME`: the last lines of one instance's stream.
pub(super) async fn tail(
    ctx: &Context,
    req: Request,
    stream: Stream,
    lines: usize,
    registration: Option<Registration>,
) -> (Reply, Option<FollowTask>) {
    let id = req.id;
    let fail = |code: &str, message: String| (Reply::err(id.clone(), code, message), None);
    let [name] = req.args.as_slice() else {
        return fail(
            "bad_args",
            "tail takes one instance (usage: tail NAME, with opts stream, lines, follow)".into(),
        );
    };
    let targets = match ctx
        .handle
        .log_targets(vec![name.clone()], Some(stream))
        .await
    {
        Ok(targets) => targets,
        Err(e) => return fail(e.code, e.message),
    };
    let target = match targets.as_slice() {
        [one] => one.clone(),
        many => {
            let names: Vec<&str> = many.iter().map(|t| t.name.as_str()).collect();
            return fail(
                "bad_args",
                format!(
                    "{name} matches {} instances ({}); tail takes one",
                    names.len(),
                    names.join(", ")
                ),
            );
        }
    };
    let Some(path) = target.path.clone() else {
        return fail("no_log", target.missing);
    };
    let follow = registration.is_some();
    let read = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || read_log(path, lines, MAX_LOG_TEXT, follow)).await
    };
    let (text, follower) = match read {
        Ok(Ok(read)) => read,
        Ok(Err(e)) => return fail("io_error", format!("cannot read {}: {e}", path.display())),
        Err(_) => return fail("internal", "reading the log failed".into()),
    };
    let data = TailData {
        name: target.name.clone(),
        stream: stream.name().into(),
        path: path.display().to_string(),
        text,
    };
    let reply = Reply::ok(
        id.clone(),
        serde_json::to_value(data).unwrap_or(Value::Null),
    );
    let follow = registration
        .zip(follower)
        .map(|(registration, follower)| FollowTask {
            id,
            registration,
            followed: vec![Followed {
                name: target.name,
                stream,
                follower,
            }],
        });
    (reply, follow)
}

/// The last `lines` lines of the log at `path`, and with `follow` the
/// follower that continues exactly where they end. Blocking.
pub(super) fn read_log(
    path: PathBuf,
    lines: usize,
    max_bytes: usize,
    follow: bool,
) -> std::io::Result<(String, Option<Follower>)> {
    if !follow {
        return Ok((tail::last_lines(&path, lines, max_bytes)?, None));
    }
    let follower = Follower::at_end(path)?;
    let text = tail::last_lines_before(follower.path(), follower.position(), lines, max_bytes)?;
    Ok((text, Some(follower)))
}

/// `logs [NAME...]`: the last lines of each named instance's streams (of
/// every instance that has a log file when none is named), oldest first
/// within each stream.
pub(super) async fn logs(
    ctx: &Context,
    req: Request,
    lines: usize,
    registration: Option<Registration>,
) -> (Reply, Option<FollowTask>) {
    let id = req.id;
    let fail = |code: &str, message: String| (Reply::err(id.clone(), code, message), None);
    // Like `clear all`, no names (or `all`) skips instances without a file;
    // an instance named outright must have one.
    let every = req.args.is_empty() || req.args.iter().any(|n| n == "all");
    let targets = match ctx.handle.log_targets(req.args, None).await {
        Ok(targets) => targets,
        Err(e) => return fail(e.code, e.message),
    };
    if !every {
        if let Some(missing) = without_files(&targets) {
            return fail("no_log", missing);
        }
    }
    let targets: Vec<(String, Stream, PathBuf)> = targets
        .into_iter()
        .filter_map(|t| Some((t.name, t.stream, t.path?)))
        .collect();
    // Each stream's share of the reply, so a thousand instances still fit
    // one frame; text is at most its share too (escaping only adds).
    let share = MAX_LOGS_REPLY / targets.len().max(1);
    let follow = registration.is_some();
    let read = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        let mut followed = Vec::new();
        for (name, stream, path) in targets {
            let (text, follower) = match read_log(path.clone(), lines, share, follow) {
                Ok(read) => read,
                Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
            };
            out.extend(newest_lines(&name, stream, &text, share));
            if let Some(follower) = follower {
                followed.push(Followed {
                    name,
                    stream,
                    follower,
                });
            }
        }
        Ok((out, followed))
    })
    .await;
    let (lines, followed) = match read {
        Ok(Ok(read)) => read,
        Ok(Err(message)) => return fail("io_error", message),
        Err(_) => return fail("internal", "reading the logs failed".into()),
    };
    let reply = Reply::ok(
        id.clone(),
        serde_json::to_value(LogsData { lines }).unwrap_or(Value::Null),
    );
    let follow = registration.map(|registration| FollowTask {
        id,
        registration,
        followed,
    });
    (reply, follow)
}

/// The `no_log` message for the first instance none of whose streams has a
/// file, if any.
pub(super) fn without_files(targets: &[LogTarget]) -> Option<String> {
    let mut names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
    names.dedup();
    names.into_iter().find_map(|name| {
        let mine = || targets.iter().filter(move |t| t.name == name);
        if mine().any(|t| t.path.is_some()) {
            None
        } else {
            mine().next().map(|t| t.missing.clone())
        }
    })
}

/// `text` as `logs` lines, the newest that fit in `budget` bytes of JSON.
pub(super) fn newest_lines(name: &str, stream: Stream, text: &str, budget: usize) -> Vec<LogLine> {
    let mut kept = Vec::new();
    let mut used = 0;
    for line in text.split_inclusive('\n').rev() {
        let line = line.strip_suffix('\n').unwrap_or(line);
        // {"name":"…","stream":"…","text":"…"} is 33 bytes and the
        // strings, then a comma; a little to spare for the brackets.
        let cost = 40 + name.len() + stream.name().len() + json_len(line);
        if used + cost > budget {
            break;
        }
        used += cost;
        kept.push(LogLine {
            name: name.to_string(),
            stream: stream.name().to_string(),
            text: line.to_string(),
        });
    }
    kept.reverse();
    kept
}

/// The length of `text` as a JSON string body (serde_json's escaping).
pub(super) fn json_len(text: &str) -> usize {
    text.bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum()
}

/// `clear NAME...|all`: empties each instance's log files, backups kept.
pub(super) async fn clear(ctx: &Context, id: Value, names: Vec<String>) -> Reply {
    if names.is_empty() {
        return Reply::err(
            id,
            "bad_args",
            "clear needs at least one name (a service, service:N, or all)",
        );
    }
    let every = names.iter().any(|n| n == "all");
    let targets = match ctx.handle.log_targets(names, None).await {
        Ok(targets) => targets,
        Err(e) => return Reply::err(id, e.code, e.message),
    };
    if !every {
        if let Some(missing) = without_files(&targets) {
            return Reply::err(id, "no_log", missing);
        }
    }
    // Each instance with its files, in order; `all` skips those with none.
    let mut instances: Vec<(String, Vec<PathBuf>)> = Vec::new();
    for target in targets {
        let Some(path) = target.path else { continue };
        match instances.last_mut() {
            Some((name, paths)) if *name == target.name => {
                if !paths.contains(&path) {
                    paths.push(path);
                }
            }
            _ => instances.push((target.name, vec![path])),
        }
    }
    let output = ctx.output.clone();
    let cleared = tokio::task::spawn_blocking(move || {
        instances
            .into_iter()
            .map(|(name, paths)| {
                let failed: Vec<String> = paths
                    .iter()
                    .filter_map(|path| match output.clear(path) {
                        Ok(()) => None,
                        // Never written yet: as empty as it gets.
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                        Err(e) => Some(format!("cannot clear {}: {e}", path.display())),
                    })
                    .collect();
                crate::protocol::ActionResult {
                    name,
                    ok: failed.is_empty(),
                    message: if failed.is_empty() {
                        "cleared".into()
                    } else {
                        failed.join("; ")
                    },
                }
            })
            .collect::<Vec<_>>()
    })
    .await;
    match cleared {
        Ok(results) => Reply::ok(id, json!({ "results": results })),
        Err(_) => Reply::err(id, "internal", "clearing the logs failed"),
    }
}

/// `signal SIG NAME...|all`.
pub(super) async fn signal(ctx: &Context, id: Value, args: Vec<String>) -> Reply {
    let Some((name, names)) = args.split_first() else {
        return Reply::err(
            id,
            "bad_args",
            "signal needs a signal name (HUP, SIGUSR1, …) and at least one name",
        );
    };
    let Some(sig) = parse_signal(name) else {
        return Reply::err(
            id,
            "bad_args",
            format!(
                "unknown signal {} (use a name such as HUP, TERM, USR1)",
                shown(name)
            ),
        );
    };
    match ctx.handle.signal(sig, names.to_vec()).await {
        Ok(results) => Reply::ok(id, json!({ "results": results })),
        Err(e) => Reply::err(id, e.code, e.message),
    }
}
