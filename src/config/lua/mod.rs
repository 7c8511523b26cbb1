//! The Lua front-end: evaluates `taskmaster.lua` in a fresh Lua 5.4 state.
//!
//! The chunk is named after its file so errors read `taskmaster.lua:12: ...`.
//! `load_json`, `load_ini`, `load_procfile` (`migrate.rs`), `dofile` and
//! `require` resolve relative names against the
//! config's folder (`require` also searches its `scripts/`, then the modules
//! of `scripts/` shipped inside the binary), and every file they read is
//! recorded so the watcher can follow it. Evaluation runs under
//! an instruction-count hook with a wall-clock deadline that stays expired
//! (a `pcall` cannot swallow it) and a memory limit, so a config that loops or
//! allocates forever fails with a clear error instead of hanging the daemon.
//! The standard library is complete except where it would reach past the
//! daemon: `os.exit` raises an error (a config or hook must not end the
//! process), and `os.execute`/`io.popen` are replaced by versions that spawn
//! through `process::exec` (Lua's own race the daemon's reaper and make it
//! ignore SIGINT while they wait). They return what Lua's return, and their
//! waits are bounded by the same budget: past it, the command's process
//! group is killed and the call is cut off.
//!
//! The returned table is converted into a `serde_json::Value` and validated by
//! the shared schema in `config/mod.rs`. The conversion copies every value,
//! so it is bounded ([`MAX_VALUES`], a shared subtable counted each time it
//! appears, counted in Lua first without expanding anything) and runs under
//! the evaluation's deadline and memory limit. The Lua state survives in
//! [`HookState`]: it holds the handlers the config registered with
//! `require("taskmaster").on(...)`.

mod commands;
mod migrate;

use commands::install_commands;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mlua::{
    AnyUserData, Function, HookTriggers, Lua, MetaMethod, MultiValue, Table, UserData,
    UserDataFields, UserDataMethods, Value as LuaValue, VmState,
};
use serde_json::{Map, Number, Value};

use super::{base_dir, validate_for, ConfigError, HostChecks, Loaded};
use crate::process::exec::{Capture, Shell};
use crate::process::Exit;

/// How long a config may take to evaluate.
pub const LOAD_BUDGET: Duration = Duration::from_secs(5);
/// How many values the table a config returns may hold, a shared subtable
/// counted each time it appears (SPEC §17): its conversion copies each one.
pub const MAX_VALUES: usize = 1_000_000;
/// How much memory a config's Lua state may use.
pub const MEMORY_LIMIT: usize = 256 * 1024 * 1024;
/// Instructions between two deadline checks.
const CHECK_EVERY: u32 = 10_000;
/// Registry key of the `taskmaster` module table.
pub const MODULE_KEY: &str = "taskmaster.module";
/// Registry key of the handler lists, by event name.
pub const HANDLERS_KEY: &str = "taskmaster.handlers";

/// A config's Lua state, kept alive for its hooks.
pub struct HookState {
    /// The state that evaluated the config.
    pub lua: Lua,
}

impl HookState {
    /// The events the config registered handlers for (`tm.on(EVENT, fn)`),
    /// sorted: what an export must say it leaves behind.
    pub fn events(&self) -> Vec<String> {
        let Ok(handlers) = self.lua.named_registry_value::<Table>(HANDLERS_KEY) else {
            return Vec::new();
        };
        let mut events: Vec<String> = handlers
            .pairs::<String, LuaValue>()
            .filter_map(|pair| pair.ok().map(|(event, _)| event))
            .collect();
        events.sort();
        events
    }
}

/// A wall-clock budget for Lua code, shared with the instruction hook.
#[derive(Default)]
pub struct Budget {
    /// When the running code must stop; None while no budgeted call runs.
    pub deadline: Mutex<Option<Instant>>,
    /// Set once the hook has cut code off (and switched to failing every
    /// instruction): the state needs [`arm_budget`] again before reuse.
    pub tripped: std::sync::atomic::AtomicBool,
}

/// The budget a state's instruction hook enforces, also kept in the state's
/// app data: Rust functions that block on a command (`os.execute`,
/// `io.popen`) honour the same deadline.
#[derive(Clone)]
struct Armed {
    /// The budget of the calls made in this state.
    budget: Arc<Budget>,
    /// What a cut-off is called (`hook`, `config evaluation`).
    what: &'static str,
}

/// Makes the Lua state error out once the budget's deadline has passed, on
/// every instruction from then on, naming the place it was cut off.
pub fn arm_budget(lua: &Lua, budget: Arc<Budget>, what: &'static str) {
    budget
        .tripped
        .store(false, std::sync::atomic::Ordering::Relaxed);
    lua.set_app_data(Armed {
        budget: budget.clone(),
        what,
    });
    let result = lua.set_hook(
        HookTriggers::new().every_nth_instruction(CHECK_EVERY),
        move |lua, debug| {
            let expired = budget
                .deadline
                .lock()
                .map(|d| d.is_some_and(|d| Instant::now() >= d))
                .unwrap_or(false);
            if !expired {
                return Ok(VmState::Continue);
            }
            let src = debug.source();
            let place = match (src.short_src, debug.current_line()) {
                (Some(file), Some(line)) => format!("{file}:{line}: "),
                _ => String::new(),
            };
            Err(trip(lua, &budget, format!("{place}{what} ran out of time")))
        },
    );
    if let Err(e) = result {
        crate::log::line(format_args!("warning: cannot arm the Lua time budget: {e}"));
    }
}

/// Cuts the running code off with `message`: from now on every instruction
/// fails, so a `pcall` that caught the error cannot go on and the error
/// reaches the top within a few steps.
fn trip(lua: &Lua, budget: &Budget, message: String) -> mlua::Error {
    budget
        .tripped
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let again = message.clone();
    let result = lua.set_hook(HookTriggers::new().every_nth_instruction(1), move |_, _| {
        Err(mlua::Error::runtime(again.clone()))
    });
    if let Err(e) = result {
        crate::log::line(format_args!(
            "warning: cannot trip the Lua time budget: {e}"
        ));
    }
    mlua::Error::runtime(message)
}

/// The deadline of the budgeted call running in `lua` now, if any.
fn deadline(lua: &Lua) -> Option<Instant> {
    let armed = lua.app_data_ref::<Armed>()?.clone();
    let deadline = armed.budget.deadline.lock().ok().and_then(|d| *d);
    deadline
}

/// Evaluates a Lua config file.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    load_for(path, HostChecks::Enforce)
}

/// [`load`], with the host-dependent checks treated as `host` says.
pub fn load_for(path: &Path, host: HostChecks) -> Result<Loaded, ConfigError> {
    let source = std::fs::read(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let base = std::path::absolute(base_dir(path)).unwrap_or_else(|_| base_dir(path).to_path_buf());
    let lua = Lua::new();
    let files = Arc::new(Mutex::new(vec![path.to_path_buf()]));
    prepare(&lua, &base, files.clone()).map_err(|e| ConfigError::Lua(error_text(&e)))?;
    lua.set_memory_limit(MEMORY_LIMIT)
        .map_err(|e| ConfigError::Lua(error_text(&e)))?;
    let budget = Arc::new(Budget::default());
    if let Ok(mut d) = budget.deadline.lock() {
        *d = Some(Instant::now() + LOAD_BUDGET);
    }
    arm_budget(&lua, budget.clone(), "config evaluation");

    let chunk_name = format!("@{}", path.display());
    let result: LuaValue = lua
        .load(&source[..])
        .set_name(chunk_name)
        .eval()
        .map_err(|e| ConfigError::Lua(error_text(&e)))?;
    // The conversion is part of the evaluation: still under its deadline
    // and the memory limit. The values are counted in Lua first (under the
    // instruction hook, and much faster than the walk through mlua), so a
    // table that expands past the limit fails before any copying.
    count_values(&lua, &result)?;
    let deadline = budget.deadline.lock().ok().and_then(|d| *d);
    let mut allow = Allowance {
        values: 0,
        bytes: 0,
        deadline,
    };
    let value = match result {
        LuaValue::Table(t) => to_json(&LuaValue::Table(t), &Place::Root, 0, &mut allow)
            .map_err(|e| ConfigError::Invalid(vec![e]))?,
        other => {
            return Err(ConfigError::Invalid(vec![format!(
                "{}: the config must return a table, got {}",
                path.display(),
                other.type_name()
            )]))
        }
    };
    lua.remove_hook();
    let (config, warnings) = validate_for(&value, &base, host)?;
    let mut files = files.lock().map(|f| f.clone()).unwrap_or_default();
    files.extend(config.env_files());
    Ok(Loaded {
        config,
        files,
        hooks: Some(HookState { lua }),
        warnings,
    })
}

/// Installs `load_json`, `load_ini`, `load_procfile`, the path-aware
/// `dofile` and `require`, and the `taskmaster` module.
fn prepare(lua: &Lua, base: &Path, files: Arc<Mutex<Vec<PathBuf>>>) -> mlua::Result<()> {
    let globals = lua.globals();
    let base_str = base.to_string_lossy().to_string();

    let record_files = files.clone();
    let resolve_base = base.to_path_buf();
    // Resolves a name against the config folder and remembers it for the watcher.
    let resolve = lua.create_function(move |_, name: String| {
        let p = resolve_base.join(&name);
        if let Ok(mut f) = record_files.lock() {
            if !f.contains(&p) {
                f.push(p.clone());
            }
        }
        Ok(p.to_string_lossy().to_string())
    })?;
    // Reads a JSON file into Lua, returning (value) or (nil, message).
    let read_json = lua.create_function(|lua, path: String| {
        let parsed = super::json::read(Path::new(&path));
        match parsed {
            Ok(v) => Ok((migrate::to_lua(lua, &v)?, LuaValue::Nil)),
            Err(e) => Ok((
                LuaValue::Nil,
                LuaValue::String(lua.create_string(e.to_string())?),
            )),
        }
    })?;
    let log = lua.create_function(|_, msg: mlua::Value| {
        let text = msg.to_string().unwrap_or_else(|_| "<unprintable>".into());
        crate::log::line(format_args!("lua: {text}"));
        Ok(())
    })?;

    install_commands(lua)?;
    let (read_ini, read_procfile) = migrate::functions(lua, files)?;

    let package: Table = globals.get("package")?;
    let path: String = package.get("path")?;
    let lua_base = lua_pattern_escape(&base_str);
    package.set(
        "path",
        format!("{lua_base}/?.lua;{lua_base}/?/init.lua;{lua_base}/scripts/?.lua;{lua_base}/scripts/?/init.lua;{path}"),
    )?;

    let bundled = lua.create_table_with_capacity(0, BUNDLED.len())?;
    for (name, source) in BUNDLED {
        bundled.raw_set(*name, *source)?;
    }
    let (module, handlers): (Table, Table) = lua.load(PRELUDE).set_name("=taskmaster").call((
        resolve,
        read_json,
        log,
        base_str.clone(),
        bundled,
        read_ini,
        read_procfile,
    ))?;
    lua.set_named_registry_value(MODULE_KEY, module)?;
    lua.set_named_registry_value(HANDLERS_KEY, handlers)?;
    Ok(())
}

/// The Lua modules shipped inside the binary (SPEC §18), found by `require`
/// from any config folder. A file of the same name on the search path (the
/// config folder, its `scripts/`, then Lua's own) wins: their searcher is
/// the last one.
const BUNDLED: &[(&str, &str)] = &[
    (
        "crashguard",
        include_str!("../../../scripts/crashguard.lua"),
    ),
    ("json", include_str!("../../../scripts/json.lua")),
    ("jsonlog", include_str!("../../../scripts/jsonlog.lua")),
    ("webhook", include_str!("../../../scripts/webhook.lua")),
];

/// Lua's package.path treats `;` and `?` specially; nothing else needs escaping.
fn lua_pattern_escape(s: &str) -> String {
    s.replace(';', "_")
}

/// Lua side of `prepare`: error levels point at the caller's file:line.
const PRELUDE: &str = r#"
local resolve, read_json, log, config_dir, bundled, read_ini, read_procfile = ...
local orig_dofile, loadfile, searchpath, load = dofile, loadfile, package.searchpath, load

-- The config and its hooks run inside the daemon: ending the process is
-- never theirs to do. An error instead, at the caller's file:line.
function os.exit()
  error("os.exit cannot end the daemon (use error() to fail a config or a hook)", 2)
end

function load_json(path)
  if type(path) ~= "string" then error("load_json: expected a path string", 2) end
  local value, err = read_json(resolve(path))
  if err then error(err, 2) end
  return value
end

-- A supervisord config / a Procfile as `{ services = {...} }` (SPEC §15).
function load_ini(path)
  if type(path) ~= "string" then error("load_ini: expected a path string", 2) end
  local value, err = read_ini(resolve(path))
  if err then error(err, 2) end
  return value
end

function load_procfile(path)
  if type(path) ~= "string" then error("load_procfile: expected a path string", 2) end
  local value, err = read_procfile(resolve(path))
  if err then error(err, 2) end
  return value
end

function dofile(path)
  if path == nil then return orig_dofile() end
  return orig_dofile(resolve(path))
end

-- Before the stock Lua searcher: same path, but records the file it finds.
table.insert(package.searchers, 2, function(name)
  local found, err = searchpath(name, package.path)
  if not found then return err end
  resolve(found)
  local chunk, lerr = loadfile(found)
  if not chunk then error(lerr, 0) end
  return chunk, found
end)

-- Last: the modules shipped in the binary, for names no file provides.
table.insert(package.searchers, function(name)
  local source = bundled[name]
  if not source then return "no bundled module '" .. name .. "'" end
  local chunk, lerr = load(source, "=[bundled] " .. name .. ".lua", "t")
  if not chunk then error(lerr, 0) end
  return chunk, ":bundled:" .. name
end)

local handlers = {}
local tm = {
  hook_timeout = 1,
  config_dir = config_dir,
  on = function(event, fn)
    if type(event) ~= "string" then error("taskmaster.on: event must be a string", 2) end
    if type(fn) ~= "function" then error("taskmaster.on: handler must be a function", 2) end
    local list = handlers[event]
    if not list then list = {}; handlers[event] = list end
    list[#list + 1] = fn
  end,
  log = log,
}
-- Bound to the daemon once the config is running (hooks only).
for _, name in ipairs({ "exec", "start", "stop", "restart", "status" }) do
  tm[name] = function()
    error("taskmaster." .. name .. " is only available inside hooks", 2)
  end
end
package.loaded["taskmaster"] = tm
taskmaster = tm
return tm, handlers
"#;

/// The message of a Lua error without mlua's prefixes or the traceback.
pub fn error_text(err: &mlua::Error) -> String {
    let text = match err {
        mlua::Error::SyntaxError { message, .. } => message.clone(),
        mlua::Error::RuntimeError(m) => m.clone(),
        mlua::Error::MemoryError(m) => format!("out of memory: {m}"),
        mlua::Error::CallbackError { cause, .. } => return error_text(cause),
        mlua::Error::WithContext { cause, .. } => return error_text(cause),
        other => other.to_string(),
    };
    match text.find("\nstack traceback:") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

// `os.execute` and `io.popen`, replaced (SPEC §17): Lua's own call
// `system()`/`popen()`, which race the actor's reaper and make the daemon
// ignore SIGINT while they wait. Ours run `/bin/sh -c` through
// `process::exec::Shell` and return exactly what Lua 5.4 returns. Their
// waits and pipe reads are bounded by the running call's budget: past it,
// the command's group is killed and the call is cut off like a loop.
//
// The Rust side returns `true, results...` or `false, message`; thin Lua
// wrappers ([`COMMANDS`]) turn the latter into a plain string error at the
// caller's file:line, as Lua's own functions raise (an error returned from
// Rust would reach Lua as an mlua userdata, not a string).

const MAX_DEPTH: usize = 32;
/// Values converted between two looks at the clock.
const CLOCK_EVERY: usize = 4096;

/// What converting the returned table may still spend: it copies every
/// value (a subtable shared a million times is copied a million times), in
/// Rust, where neither the instruction hook nor Lua's memory limit reaches.
struct Allowance {
    /// Values converted so far.
    values: usize,
    /// Bytes of strings copied so far.
    bytes: usize,
    /// The config's evaluation budget, which the conversion is part of.
    deadline: Option<Instant>,
}

impl Allowance {
    /// Counts one more value (of `bytes` string bytes).
    fn take(&mut self, bytes: usize) -> Result<(), String> {
        self.values += 1;
        self.check(0)?;
        self.take_bytes(bytes)?;
        if self.values.is_multiple_of(CLOCK_EVERY)
            && self.deadline.is_some_and(|d| Instant::now() >= d)
        {
            return Err(
                "config: config evaluation ran out of time converting the returned table"
                    .to_string(),
            );
        }
        Ok(())
    }

    /// Fails when `more` values still to come would pass the limit.
    fn check(&self, more: usize) -> Result<(), String> {
        if self.values.saturating_add(more) > MAX_VALUES {
            return Err(too_many_values());
        }
        Ok(())
    }

    /// Counts copied string bytes (keys and values).
    fn take_bytes(&mut self, bytes: usize) -> Result<(), String> {
        self.bytes = self.bytes.saturating_add(bytes);
        if self.bytes > MEMORY_LIMIT {
            return Err(format!(
                "config: the strings of the returned table take more than {} MiB \
                 (a shared string counts each time it appears)",
                MEMORY_LIMIT >> 20
            ));
        }
        Ok(())
    }
}

/// Counts the values of the returned table, a shared subtable each time it
/// appears, without expanding it: a table's count is remembered, so
/// `t = {t, t}` thirty times takes thirty steps (`next` is raw: no
/// metamethod runs). A table met again inside itself counts nothing here:
/// the conversion reports it as nested too deeply, and its own count stops
/// an expansion that would pass the limit.
const COUNT_VALUES: &str = r#"
local root, max = ...
local next, type = next, type
local memo, active = {}, {}
local function inside(t)
  local known = memo[t]
  if known then return known end
  if active[t] then return 0 end
  active[t] = true
  local n = 0
  for _, v in next, t do
    n = n + 1
    if type(v) == "table" then n = n + inside(v) end
    if n > max then break end
  end
  active[t] = nil
  memo[t] = n
  return n
end
return 1 + inside(root) <= max
"#;

/// Fails when the returned value holds more than [`MAX_VALUES`] values.
fn count_values(lua: &Lua, result: &LuaValue) -> Result<(), ConfigError> {
    let LuaValue::Table(_) = result else {
        return Ok(());
    };
    let within: bool = lua
        .load(COUNT_VALUES)
        .set_name("=taskmaster")
        .call((result.clone(), MAX_VALUES))
        .map_err(|e| ConfigError::Lua(error_text(&e)))?;
    if within {
        Ok(())
    } else {
        Err(ConfigError::Invalid(vec![too_many_values()]))
    }
}

fn too_many_values() -> String {
    format!(
        "config: the returned table has more than {MAX_VALUES} values \
         (a shared subtable counts each time it appears)"
    )
}

/// Where a value sits in the returned table (`services.web.env`,
/// `x[1][2]`), spelled out only when an error names it.
enum Place<'a> {
    /// The table itself.
    Root,
    /// A field of a table.
    Key(&'a Place<'a>, &'a str),
    /// An item of a sequence.
    Index(&'a Place<'a>, usize),
}

impl std::fmt::Display for Place<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Root => f.write_str("config"),
            Place::Key(Place::Root, key) => f.write_str(key),
            Place::Key(parent, key) => write!(f, "{parent}.{key}"),
            Place::Index(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

/// A table key as the conversion sees it.
enum Key {
    /// An integer key (a sequence's, or turned into a string in a map).
    Int(i64),
    /// A string key.
    Str(String),
}

/// Converts a table into a value tree, naming the place of anything that
/// has no JSON equivalent, within the limits of `allow`.
fn table_to_json(
    t: &Table,
    place: &Place,
    depth: usize,
    allow: &mut Allowance,
) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err(format!(
            "{place}: nested too deeply (a table that contains itself?)"
        ));
    }
    let len = t.raw_len();
    let mut sequence = true;
    let mut entries = Vec::new();
    for pair in t.pairs::<LuaValue, LuaValue>() {
        let (k, v) = pair.map_err(|e| format!("{place}: {}", error_text(&e)))?;
        // Each entry is a value to come: a huge table fails before its
        // entries are collected.
        allow.check(entries.len() + 1)?;
        let key = match &k {
            LuaValue::String(s) => {
                sequence = false;
                let key = s
                    .to_str()
                    .map_err(|_| format!("{place}: table keys must be UTF-8"))?
                    .to_string();
                allow.take_bytes(key.len())?;
                Key::Str(key)
            }
            LuaValue::Integer(i) => {
                if *i < 1 || *i as usize > len {
                    sequence = false;
                }
                Key::Int(*i)
            }
            other => {
                return Err(format!(
                    "{place}: table keys must be strings, got {}",
                    other.type_name()
                ))
            }
        };
        entries.push((key, v));
    }
    if sequence && entries.len() == len && len > 0 {
        // Keys 1..=len, each once (pairs need not give them in order).
        let mut slots: Vec<Option<LuaValue>> = vec![None; len];
        for (key, v) in entries {
            if let Key::Int(i) = key {
                slots[i as usize - 1] = Some(v);
            }
        }
        let mut items = Vec::with_capacity(len);
        for (i, v) in slots.into_iter().enumerate() {
            let v = v.unwrap_or(LuaValue::Nil);
            items.push(to_json(&v, &Place::Index(place, i + 1), depth + 1, allow)?);
        }
        return Ok(Value::Array(items));
    }
    let mut named: Vec<(String, LuaValue)> = entries
        .into_iter()
        .map(|(key, v)| match key {
            Key::Str(s) => (s, v),
            Key::Int(i) => (i.to_string(), v),
        })
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let mut map = Map::new();
    for (key, v) in named {
        let value = to_json(&v, &Place::Key(place, &key), depth + 1, allow)?;
        map.insert(key, value);
    }
    Ok(Value::Object(map))
}

fn to_json(
    v: &LuaValue,
    place: &Place,
    depth: usize,
    allow: &mut Allowance,
) -> Result<Value, String> {
    let bytes = match v {
        LuaValue::String(s) => s.as_bytes().len(),
        _ => 0,
    };
    allow.take(bytes)?;
    Ok(match v {
        LuaValue::Nil => Value::Null,
        LuaValue::Boolean(b) => Value::Bool(*b),
        LuaValue::Integer(i) => Value::Number((*i).into()),
        LuaValue::Number(f) => Number::from_f64(*f)
            .map(Value::Number)
            .ok_or_else(|| format!("{place}: expected a finite number, got {f}"))?,
        LuaValue::String(s) => Value::String(
            s.to_str()
                .map_err(|_| format!("{place}: strings must be UTF-8"))?
                .to_string(),
        ),
        LuaValue::Table(t) => table_to_json(t, place, depth, allow)?,
        LuaValue::LightUserData(p) if p.0.is_null() => Value::Null,
        other => {
            return Err(format!(
                "{place}: a {} cannot be a config value",
                other.type_name()
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::commands::*;
    use super::*;
    use std::fs;

    fn dir() -> PathBuf {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let d = std::env::temp_dir().join(format!("tm-lua-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(d.join("scripts")).unwrap();
        d
    }

    fn load_err(src: &str) -> String {
        let d = dir();
        let p = d.join("taskmaster.lua");
        fs::write(&p, src).unwrap();
        match load(&p) {
            Err(e) => e.to_string().replace(&format!("{}/", d.display()), ""),
            Ok(_) => panic!("expected an error for {src:?}"),
        }
    }

    #[test]
    fn runtime_and_syntax_errors_name_file_and_line() {
        assert_eq!(
            load_err("local x = 1\n\nerror('boom')\n"),
            "taskmaster.lua:3: boom"
        );
        let e = load_err("return {\n services = {\n web = { cmd = 'x' \n}\n");
        assert!(e.starts_with("taskmaster.lua:5: "), "{e}");
        let e = load_err("local t = nil\nreturn t.services\n");
        assert!(e.starts_with("taskmaster.lua:2: attempt to index"), "{e}");
    }

    #[test]
    fn must_return_a_table() {
        let e = load_err("return 42");
        assert_eq!(
            e,
            "taskmaster.lua: the config must return a table, got integer"
        );
    }

    #[test]
    fn schema_errors_come_through_with_paths() {
        let e = load_err(
            "return { services = { web = { cmd = 'x', numprocs = 0, autorestrat = 'x' } } }",
        );
        assert!(
            e.contains("services.web.numprocs: must be between 1 and 100, got 0"),
            "{e}"
        );
        assert!(
            e.contains(
                "unknown option \"autorestrat\" in services.web — did you mean \"autorestart\"?"
            ),
            "{e}"
        );
        let e = load_err("return { services = { web = { cmd = print } } }");
        assert_eq!(e, "services.web.cmd: a function cannot be a config value");
    }

    #[test]
    fn integer_floats_and_numeric_env_are_accepted() {
        let d = dir();
        let p = d.join("taskmaster.lua");
        fs::write(&p, "return { services = { w = { cmd = 'x', numprocs = 2.0, env = { PORT = 8080, R = 0.5 }, exitcodes = {0, 2} } } }").unwrap();
        let c = load(&p).unwrap().config;
        let s = &c.services["w"];
        assert_eq!(s.numprocs, 2);
        assert_eq!(s.spawn.env["PORT"], "8080");
        assert_eq!(s.spawn.env["R"], "0.5");
        assert_eq!(s.policy.exitcodes, vec![0, 2]);
    }

    #[test]
    fn load_json_require_and_dofile_resolve_against_the_config_folder() {
        let d = dir();
        fs::write(
            d.join("conf.json"),
            r#"{"services": {"a": {"cmd": "sleep 1", "numprocs": 2}}}"#,
        )
        .unwrap();
        fs::write(d.join("scripts/helper.lua"), "return { n = 3 }").unwrap();
        fs::write(d.join("extra.lua"), "return 'from dofile'").unwrap();
        let p = d.join("taskmaster.lua");
        fs::write(
            &p,
            "local cfg = load_json('conf.json')\nlocal h = require('helper')\nlocal s = dofile('extra.lua')\n\
             cfg.services.b = { cmd = s, numprocs = h.n }\nreturn cfg\n",
        )
        .unwrap();
        // Run from elsewhere: resolution must not depend on the daemon's cwd.
        let loaded = load(&p).unwrap();
        assert_eq!(loaded.config.services["a"].numprocs, 2);
        assert_eq!(loaded.config.services["b"].numprocs, 3);
        assert_eq!(loaded.config.services["b"].spawn.cmd, "from dofile");
        for f in [
            "taskmaster.lua",
            "conf.json",
            "scripts/helper.lua",
            "extra.lua",
        ] {
            assert!(
                loaded.files.contains(&d.join(f)),
                "{f} not recorded in {:?}",
                loaded.files
            );
        }
    }

    #[test]
    fn load_json_errors_carry_line_and_column_and_the_caller() {
        let d = dir();
        fs::write(d.join("bad.json"), "{\n \"a\": [1,,2]\n}").unwrap();
        let p = d.join("taskmaster.lua");
        fs::write(&p, "\nlocal c = load_json('bad.json')\nreturn c\n").unwrap();
        let e = load(&p)
            .err()
            .unwrap()
            .to_string()
            .replace(&format!("{}/", d.display()), "");
        assert_eq!(
            e,
            "taskmaster.lua:2: bad.json: line 2, column 10: expected value"
        );
    }

    #[test]
    fn os_exit_is_an_error_at_the_callers_line() {
        let e = load_err("local x = 1\nos.exit(3)\nreturn { services = {} }\n");
        assert!(
            e.starts_with("taskmaster.lua:2: os.exit cannot end the daemon"),
            "{e}"
        );
    }

    #[test]
    fn shared_subtables_count_each_time_they_appear() {
        // 2^21 values once expanded, from a few dozen tables.
        let e = load_err(
            "local t = {}\nfor i = 1, 20 do t = {t, t} end\nreturn { services = {}, x = t }\n",
        );
        assert!(e.contains("more than 1000000 values"), "{e}");
        // 2^30: refused as fast (the expansion used to take gigabytes).
        let started = Instant::now();
        let e = load_err(
            "local t = {}\nfor i = 1, 30 do t = {t, t} end\nreturn { services = {}, x = t }\n",
        );
        assert!(e.contains("more than 1000000 values"), "{e}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn cycles_and_shared_strings_are_bounded_too() {
        let e = load_err("local t = {}\nt[1] = t\nt[2] = t\nreturn { services = {}, x = t }\n");
        assert!(e.contains("nested too deeply"), "{e}");
        // A cycle under a big table: the walk's own count stops it.
        let e = load_err(
            "local t = { {} }\nfor i = 1, 600000 do t[1][i] = i end\nt[2] = t\nreturn { services = {}, x = t }\n",
        );
        assert!(e.contains("more than 1000000 values"), "{e}");
        // One 64 MiB string, shared: counted each time it appears.
        let e = load_err(
            "local s = string.rep('x', 64 << 20)\nreturn { services = {}, x = { s, s, s, s, s } }\n",
        );
        assert!(e.contains("take more than 256 MiB"), "{e}");
    }

    #[test]
    fn the_value_limit_is_exact() {
        // The root, `services` and `x` count too: 3 + N values. The first
        // item is no config value, so an accepted count fails right there
        // (without copying a million values).
        let list = |n: usize| {
            format!("local l = {{ print }}\nfor i = 2, {n} do l[i] = i end\nreturn {{ services = {{}}, x = l }}\n")
        };
        let at_limit = load_err(&list(MAX_VALUES - 3));
        assert_eq!(at_limit, "x[1]: a function cannot be a config value");
        let over = load_err(&list(MAX_VALUES - 2));
        assert!(over.contains("more than 1000000 values"), "{over}");
    }

    #[test]
    fn endless_config_is_cut_off_even_through_pcall() {
        let started = Instant::now();
        let e = load_err("while true do pcall(function() while true do end end) end");
        assert!(e.contains("config evaluation ran out of time"), "{e}");
        assert!(e.starts_with("taskmaster.lua:1: "), "{e}");
        assert!(started.elapsed() < LOAD_BUDGET + Duration::from_secs(3));
    }

    #[test]
    fn unbounded_allocation_is_cut_off() {
        let e =
            load_err("local t = {}\nfor i = 1, 1e12 do t[i] = string.rep('x', 100000) .. i end");
        assert!(
            e.contains("not enough memory") || e.contains("out of memory"),
            "{e}"
        );
    }

    /// Runs `script` in a state with Lua's own `io.popen`/`os.execute` and
    /// in one with ours; returns both outputs (the script returns a string).
    fn stock_and_ours(script: &str) -> (String, String) {
        let stock = Lua::new();
        let ours = Lua::new();
        install_commands(&ours).unwrap();
        let run = |lua: &Lua| match lua.load(script).set_name("=t").eval::<String>() {
            Ok(s) => s,
            Err(e) => format!("error: {}", error_text(&e)),
        };
        (run(&stock), run(&ours))
    }

    /// Lua source that shows every value `f(...)` returns, quoted.
    const SHOW: &str = r#"
local out = {}
local function rec(...)
  local t = table.pack(...)
  for i = 1, t.n do
    local v = t[i]
    t[i] = type(v) == "string" and string.format("%q", v) or (math.type(v) or tostring(v)) .. ":" .. tostring(v)
  end
  out[#out + 1] = table.concat(t, " ", 1, t.n)
end
local function with(text, ...)
  local p = io.popen("printf '%s' '" .. text .. "'")
  rec(p:read(...))
  p:close()
end
"#;

    #[test]
    fn popen_reads_like_lua_itself() {
        let script = format!(
            "{SHOW}
with('12 0x1F -0x10 0xffffffffffffffff 99999999999999999999 1e2 .5 5. 0x1p4 0x1e', 'n', 'n', 'n', 'n', 'n', 'n', 'n', 'n', 'n', 'n', 'n')
with('  +7\\n-', 'n', 'n')
with('0x', 'n', 'l')
with('1e+', 'n', 'a')
with('--1', 'n', 'a')
with('abc', 'n', 'a')
with('12abc', 'n', 'a')
with('a\\nb\\n', 'L', 'l', 'l', 'a')
with('', 'a', 'l')
with('', 0)
with('xy', 0, 1, 5, 1)
with('xy', '*L', '*a')
with(string.rep('9', 250), 'n', 'a')
with('3.0', 2.0)
rec(pcall(function() local p = io.popen('true'); return (p:read('x')) end))
rec(pcall(function() local p = io.popen('true'); return (p:read({{}})) end))
rec(pcall(function() return (io.popen('true', 'rw')) end))
rec(pcall(function() return (io.popen({{}})) end))
rec(pcall(function() local p = io.popen('true'); p:close(); return (p:read()) end))
rec(pcall(function() local p = io.popen('true'); p:close(); return (p:lines()) end))
rec(pcall(function() local p = io.popen('printf 1'); for l in p:lines() do p:close() end end))
rec(pcall(function() local p = io.popen('true'); p:close(); return (p:close()) end))
rec(pcall(function() local p = io.popen('cat', 'w'); local r = p:write({{}}); p:close(); return r end))
rec(io.popen('exit 2'):close())
rec(io.popen('printf a', 'w'):close())
rec(os.execute('exit 9'))
rec(os.execute())
rec(select('#', io.popen('true'):read('a', 'l', 'a')))
return table.concat(out, '\\n')"
        );
        let (stock, ours) = stock_and_ours(&script);
        assert_eq!(ours, stock, "ours:\n{ours}\nstock:\n{stock}");
        assert!(!stock.contains("error:"), "{stock}");
    }

    #[test]
    fn os_execute_and_popen_work_in_a_config() {
        let d = dir();
        let p = d.join("taskmaster.lua");
        fs::write(
            &p,
            "local n = io.popen('echo 3'):read('n')\nlocal ok = os.execute('exit 0')\n\
             return { services = { w = { cmd = tostring(ok), numprocs = n } } }",
        )
        .unwrap();
        let c = load(&p).unwrap().config;
        assert_eq!(c.services["w"].numprocs, 3);
        assert_eq!(c.services["w"].spawn.cmd, "true");
    }

    #[test]
    fn hooks_registered_by_the_config_are_kept() {
        let d = dir();
        let p = d.join("taskmaster.lua");
        fs::write(
            &p,
            "local tm = require('taskmaster')\ntm.on('FATAL', function() end)\ntaskmaster.on('FATAL', print)\nreturn { services = {} }",
        )
        .unwrap();
        let loaded = load(&p).unwrap();
        let lua = loaded.hooks.unwrap().lua;
        let handlers: Table = lua.named_registry_value(HANDLERS_KEY).unwrap();
        let fatal: Table = handlers.get("FATAL").unwrap();
        assert_eq!(fatal.raw_len(), 2);
    }
}
