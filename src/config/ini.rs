//! `load_ini(path)` (SPEC §15): a supervisord config read into the tree a
//! Lua config would return, `{ services = { NAME = { cmd = …, … } } }`.
//!
//! People come with a `supervisord.conf`; they should not have to rewrite
//! it to try Taskmaster. The file and its `[include]`s are read by
//! `include.rs` (with the grammar of `syntax.rs`), and each
//! `[program:NAME]` becomes the service NAME: the mapped keys below are
//! converted (values checked here, so a bad one names its `FILE:LINE`), the
//! `%(...)s` expansions applied by `expand.rs`, and every other key of a
//! program is left out with one warning line, which the Lua side writes to
//! the daemon log. Other sections are ignored (`[group:x]`,
//! `[eventlistener:x]` and `[fcgi-program:x]` with a warning: they define
//! processes that will not run). The result goes through the same schema as
//! any config, once the Lua chunk returns it.
//!
//! | supervisord | Taskmaster |
//! |---|---|
//! | `command` | `cmd` (continuation lines joined with spaces) |
//! | `numprocs`, `startretries`, `umask`, `user`, `autostart`, `redirect_stderr` | same name |
//! | `numprocs_start` | shifts `%(process_num)d`: `{instance+K}` |
//! | `autorestart` | `true` → `"always"`, `false` → `"never"`, `unexpected` |
//! | `exitcodes` (`0,2`) | `exitcodes` (a list) |
//! | `startsecs`, `stopwaitsecs` | `starttime`, `stoptime` |
//! | `stopsignal` (a name or a number) | `stopsignal` (a name) |
//! | `stdout_logfile`, `stderr_logfile` | `stdout`, `stderr`; `NONE` → nil, `AUTO` (and `syslog`) → nil with a warning; `stderr_logfile` dropped with `redirect_stderr` |
//! | `*_logfile_maxbytes`, `*_logfile_backups` | `*_maxbytes`, `*_backups` |
//! | `environment` (`A="1",B=2`) | `env` |
//! | `directory` | `workingdir` |
//!
//! Booleans are `true/false/yes/no/on/off/1/0` in any case. Relative paths
//! are kept as written: they resolve against the Lua config's folder, like
//! every relative path of a config (`%(here)s` names the INI file's own).

mod expand;
mod include;
mod syntax;
#[cfg(test)]
mod tests;
mod values;

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use expand::{expand, Mode, Names};
use syntax::{Entry, Section};
use values::{boolean, environment, signal_name, size};

/// A supervisord config, read.
#[derive(Debug)]
pub struct Ini {
    /// `{ "services": { ... } }`, the tree a Lua config would return.
    pub config: Value,
    /// Every file read, the main one first (for the watcher).
    pub files: Vec<PathBuf>,
    /// One line per ignored key or dropped value, `FILE:LINE: ...`.
    pub warnings: Vec<String>,
}

/// Reads the supervisord config at `path`; the error lines are
/// `FILE:LINE: why`, every problem found.
pub fn load(path: &Path) -> Result<Ini, String> {
    let read = include::read(path).map_err(|e| e.join("\n"))?;
    let mut warnings = read.warnings;
    let mut errors = Vec::new();
    let mut services = Map::new();
    // Where each program was first defined, for duplicates.
    let mut defined: Vec<(String, String)> = Vec::new();
    for file in &read.files {
        let shown = file.path.display().to_string();
        for section in &file.sections {
            let at = |line: usize| format!("{shown}:{line}");
            let kind = section.name.split_once(':').map(|(k, n)| (k, n.trim()));
            match kind {
                Some(("program", name)) => {
                    if let Err(why) = check_name(name) {
                        errors.push(format!("{}: {why}", at(section.line)));
                        continue;
                    }
                    if let Some((_, first)) = defined.iter().find(|(n, _)| n == name) {
                        errors.push(format!(
                            "{}: [program:{name}] is defined twice (first at {first})",
                            at(section.line)
                        ));
                        continue;
                    }
                    defined.push((name.to_string(), at(section.line)));
                    let mut out = Program {
                        file: &shown,
                        section,
                        name,
                        here: &file.here,
                        errors: Vec::new(),
                        warnings: Vec::new(),
                    };
                    let service = out.read();
                    errors.append(&mut out.errors);
                    warnings.append(&mut out.warnings);
                    if let Some(s) = service {
                        services.insert(name.to_string(), s);
                    }
                }
                Some((k @ ("group" | "eventlistener" | "fcgi-program"), name)) => {
                    let why = if k == "group" {
                        "its programs run as services of their own"
                    } else {
                        "no equivalent"
                    };
                    warnings.push(format!("{}: [{k}:{name}] ignored: {why}", at(section.line)));
                }
                _ => {}
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors.join("\n"));
    }
    Ok(Ini {
        config: json!({ "services": services }),
        files: read.files.into_iter().map(|f| f.path).collect(),
        warnings,
    })
}

/// A program name must be a service name.
fn check_name(name: &str) -> Result<(), String> {
    if !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    {
        Ok(())
    } else {
        Err(format!(
            "program name \"{name}\" may only use letters, digits, '_', '.' and '-'"
        ))
    }
}

/// Every key supervisord reads in a program section (its documentation's
/// list), mapped or not: a key outside it is probably a typo.
const SUPERVISORD_KEYS: &[&str] = &[
    "command",
    "process_name",
    "numprocs",
    "numprocs_start",
    "priority",
    "autostart",
    "startsecs",
    "startretries",
    "autorestart",
    "exitcodes",
    "stopsignal",
    "stopwaitsecs",
    "stopasgroup",
    "killasgroup",
    "user",
    "redirect_stderr",
    "stdout_logfile",
    "stdout_logfile_maxbytes",
    "stdout_logfile_backups",
    "stdout_capture_maxbytes",
    "stdout_events_enabled",
    "stdout_syslog",
    "stderr_logfile",
    "stderr_logfile_maxbytes",
    "stderr_logfile_backups",
    "stderr_capture_maxbytes",
    "stderr_events_enabled",
    "stderr_syslog",
    "environment",
    "directory",
    "umask",
    "serverurl",
];

/// The keys converted by [`Program::read`].
const MAPPED: &[&str] = &[
    "command",
    "numprocs",
    "numprocs_start",
    "autostart",
    "startsecs",
    "startretries",
    "autorestart",
    "exitcodes",
    "stopsignal",
    "stopwaitsecs",
    "user",
    "redirect_stderr",
    "stdout_logfile",
    "stdout_logfile_maxbytes",
    "stdout_logfile_backups",
    "stderr_logfile",
    "stderr_logfile_maxbytes",
    "stderr_logfile_backups",
    "environment",
    "directory",
    "umask",
];

/// Why a supervisord key that is not mapped is left out.
fn ignored_because(key: &str) -> String {
    match key {
        "priority" => "start order comes from depends_on".into(),
        "process_name" => "instances are named NAME:0 … NAME:N-1".into(),
        "stopasgroup" | "killasgroup" => "stop signals always go to the whole process group".into(),
        "stdout_capture_maxbytes"
        | "stderr_capture_maxbytes"
        | "stdout_events_enabled"
        | "stderr_events_enabled" => "process communication events have no equivalent".into(),
        "stdout_syslog" | "stderr_syslog" => "no syslog output".into(),
        k if SUPERVISORD_KEYS.contains(&k) => "no equivalent".into(),
        k => {
            let hint = super::did_you_mean(k, MAPPED)
                .map(|m| format!(" — did you mean \"{m}\"?"))
                .unwrap_or_default();
            format!("not a supervisord program key{hint}")
        }
    }
}

/// One `[program:NAME]` section being converted.
struct Program<'a> {
    /// The file it is in, as shown in messages.
    file: &'a str,
    /// The section.
    section: &'a Section,
    /// The program (service) name.
    name: &'a str,
    /// `%(here)s` of its file.
    here: &'a str,
    /// `FILE:LINE: ...` errors.
    errors: Vec<String>,
    /// `FILE:LINE: ...` warnings.
    warnings: Vec<String>,
}

impl Program<'_> {
    fn error(&mut self, line: usize, why: impl std::fmt::Display) {
        self.errors.push(format!("{}:{line}: {why}", self.file));
    }

    fn warn(&mut self, line: usize, why: impl std::fmt::Display) {
        self.warnings.push(format!(
            "{}:{line}: [program:{}] {why}",
            self.file, self.name
        ));
    }

    /// The service's options, or None after recording errors.
    fn read(&mut self) -> Option<Value> {
        let before = self.errors.len();
        let mut out = Map::new();
        let mut names = Names {
            program: Some(self.name),
            here: self.here,
            numprocs: None,
            start: None,
        };
        // The two that `process_num` depends on come first.
        let numprocs = self.integer("numprocs", &names, 1).unwrap_or(1);
        let start = self.integer("numprocs_start", &names, 0).unwrap_or(0);
        names.numprocs = Some(u32::try_from(numprocs).unwrap_or(1));
        names.start = Some(u32::try_from(start).unwrap_or(0));
        if self.section.get("numprocs").is_some() {
            out.insert("numprocs".into(), json!(numprocs));
        }
        for entry in &self.section.entries {
            if !MAPPED.contains(&entry.key.as_str()) {
                let why = ignored_because(&entry.key);
                self.warn(entry.line, format!("{} ignored: {why}", entry.key));
            }
        }
        match self.section.get("command") {
            None => self.error(
                self.section.line,
                format!("[program:{}] has no command", self.name),
            ),
            Some(e) => {
                if let Some(cmd) = self.value(e, &names, Mode::Template) {
                    // Continuation lines are more words, as supervisord's
                    // shlex split reads them.
                    let cmd = cmd.replace('\n', " ");
                    if cmd.trim().is_empty() {
                        self.error(e.line, "command is empty");
                    }
                    out.insert("cmd".into(), json!(cmd));
                }
            }
        }
        for (key, option) in [
            ("autostart", "autostart"),
            ("redirect_stderr", "redirect_stderr"),
        ] {
            if let Some(b) = self.boolean(key, &names) {
                out.insert(option.into(), json!(b));
            }
        }
        if let Some(e) = self.section.get("autorestart") {
            if let Some(v) = self.value(e, &names, Mode::Literal) {
                let v = v.trim().to_ascii_lowercase();
                let policy = match boolean(&v) {
                    Some(true) => Some("always"),
                    Some(false) => Some("never"),
                    None if v == "unexpected" => Some("unexpected"),
                    None => None,
                };
                match policy {
                    Some(p) => {
                        out.insert("autorestart".into(), json!(p));
                    }
                    None => self.error(
                        e.line,
                        format!("autorestart: expected true, false or unexpected, got \"{v}\""),
                    ),
                }
            }
        }
        if let Some(e) = self.section.get("exitcodes") {
            if let Some(v) = self.value(e, &names, Mode::Literal) {
                let mut codes = Vec::new();
                for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    match item.parse::<u8>() {
                        Ok(c) => codes.push(c),
                        Err(_) => self.error(
                            e.line,
                            format!("exitcodes: expected exit codes 0-255 separated by commas, got \"{item}\""),
                        ),
                    }
                }
                out.insert("exitcodes".into(), json!(codes));
            }
        }
        for (key, option) in [("startsecs", "starttime"), ("stopwaitsecs", "stoptime")] {
            if let Some(s) = self.seconds(key, &names) {
                out.insert(option.into(), s);
            }
        }
        if self.section.get("startretries").is_some() {
            if let Some(n) = self.integer("startretries", &names, 0) {
                out.insert("startretries".into(), json!(n));
            }
        }
        if let Some(e) = self.section.get("stopsignal") {
            if let Some(v) = self.value(e, &names, Mode::Literal) {
                match signal_name(v.trim()) {
                    Some(name) => {
                        out.insert("stopsignal".into(), json!(name));
                    }
                    None => self.error(
                        e.line,
                        format!("stopsignal: unknown signal \"{}\"", v.trim()),
                    ),
                }
            }
        }
        let redirect = out.get("redirect_stderr") == Some(&Value::Bool(true));
        for (stream, option) in [("stdout", "stdout"), ("stderr", "stderr")] {
            let key = format!("{stream}_logfile");
            let Some(e) = self.section.get(&key) else {
                continue;
            };
            if stream == "stderr" && redirect {
                self.warn(
                    e.line,
                    "stderr_logfile ignored: redirect_stderr is true (stderr goes to the stdout file)",
                );
                continue;
            }
            if let Some(v) = self.value(e, &names, Mode::Template) {
                match v.trim().to_ascii_uppercase().as_str() {
                    "NONE" => {}
                    "AUTO" | "SYSLOG" => self.warn(
                        e.line,
                        format!(
                            "{key} = {}: no such file here, the stream is discarded (name a file to keep it)",
                            v.trim()
                        ),
                    ),
                    _ => {
                        out.insert(option.into(), json!(v.trim()));
                    }
                }
            }
        }
        for stream in ["stdout", "stderr"] {
            let key = format!("{stream}_logfile_maxbytes");
            if let Some(e) = self.section.get(&key) {
                if let Some(v) = self.value(e, &names, Mode::Literal) {
                    match size(v.trim()) {
                        Some(n) => {
                            out.insert(format!("{stream}_maxbytes"), n);
                        }
                        None => self.error(
                            e.line,
                            format!(
                                "{key}: expected bytes or a size like 50MB, got \"{}\"",
                                v.trim()
                            ),
                        ),
                    }
                }
            }
            let key = format!("{stream}_logfile_backups");
            if self.section.get(&key).is_some() {
                if let Some(n) = self.integer(&key, &names, 0) {
                    out.insert(format!("{stream}_backups"), json!(n));
                }
            }
        }
        if let Some(e) = self.section.get("environment") {
            if let Some(v) = self.value(e, &names, Mode::Template) {
                match environment(&v) {
                    Ok(pairs) => {
                        let env: Map<String, Value> =
                            pairs.into_iter().map(|(k, v)| (k, json!(v))).collect();
                        out.insert("env".into(), Value::Object(env));
                    }
                    Err(why) => self.error(e.line, format!("environment: {why}")),
                }
            }
        }
        if let Some(e) = self.section.get("directory") {
            if let Some(v) = self.value(e, &names, Mode::Template) {
                out.insert("workingdir".into(), json!(v.trim()));
            }
        }
        if let Some(e) = self.section.get("umask") {
            if let Some(v) = self.value(e, &names, Mode::Literal) {
                let v = v.trim();
                if v.is_empty() || u32::from_str_radix(v, 8).map_or(true, |m| m > 0o777) {
                    self.error(
                        e.line,
                        format!("umask: expected an octal umask like 022, got \"{v}\""),
                    );
                } else {
                    out.insert("umask".into(), json!(v));
                }
            }
        }
        if let Some(e) = self.section.get("user") {
            if let Some(v) = self.value(e, &names, Mode::Literal) {
                out.insert("user".into(), json!(v.trim()));
            }
        }
        (self.errors.len() == before).then_some(Value::Object(out))
    }

    /// The expanded value of `e`, or None after recording why not.
    fn value(&mut self, e: &Entry, names: &Names, mode: Mode) -> Option<String> {
        match expand(&e.value, &e.key, names, mode) {
            Ok(v) => Some(v),
            Err(why) => {
                self.error(e.line, why);
                None
            }
        }
    }

    /// An integer key (≥ 0), `default` when absent.
    fn integer(&mut self, key: &str, names: &Names, default: i64) -> Option<i64> {
        let Some(e) = self.section.get(key) else {
            return Some(default);
        };
        let v = self.value(e, names, Mode::Literal)?;
        match v.trim().parse::<i64>() {
            Ok(n) if n >= 0 => Some(n),
            _ => {
                self.error(
                    e.line,
                    format!("{key}: expected an integer >= 0, got \"{}\"", v.trim()),
                );
                None
            }
        }
    }

    /// A boolean key, if given.
    fn boolean(&mut self, key: &str, names: &Names) -> Option<bool> {
        let e = self.section.get(key)?;
        let v = self.value(e, names, Mode::Literal)?;
        let b = boolean(v.trim());
        if b.is_none() {
            self.error(
                e.line,
                format!(
                    "{key}: expected true/false, yes/no, on/off or 1/0, got \"{}\"",
                    v.trim()
                ),
            );
        }
        b
    }

    /// A number of seconds, if given.
    fn seconds(&mut self, key: &str, names: &Names) -> Option<Value> {
        let e = self.section.get(key)?;
        let v = self.value(e, names, Mode::Literal)?;
        let v = v.trim();
        if let Ok(n) = v.parse::<u64>() {
            return Some(json!(n));
        }
        match v.parse::<f64>() {
            Ok(f) if f.is_finite() && f >= 0.0 => Some(json!(f)),
            _ => {
                self.error(
                    e.line,
                    format!("{key}: expected a number of seconds, got \"{v}\""),
                );
                None
            }
        }
    }
}
