//! The Lua front-end: evaluates `taskmaster.lua` in a fresh Lua 5.4 state.
//!
//! The chunk is named after its file so errors read `taskmaster.lua:12: ...`.
//! `load_json`, `dofile` and `require` resolve relative names against the
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

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mlua::{
    AnyUserData, Function, HookTriggers, Lua, LuaSerdeExt, MetaMethod, MultiValue, Table, UserData,
    UserDataFields, UserDataMethods, Value as LuaValue, VmState,
};
use serde_json::{Map, Number, Value};

use super::{base_dir, validate, ConfigError, Loaded};
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
    let config = validate(&value, &base)?;
    let mut files = files.lock().map(|f| f.clone()).unwrap_or_default();
    files.extend(config.env_files());
    Ok(Loaded {
        config,
        files,
        hooks: Some(HookState { lua }),
    })
}

/// Installs `load_json`, the path-aware `dofile` and `require`, and the
/// `taskmaster` module.
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
            Ok(v) => {
                let opts = mlua::serde::SerializeOptions::new()
                    .set_array_metatable(false)
                    .serialize_none_to_null(false)
                    .serialize_unit_to_null(false);
                Ok((lua.to_value_with(&v, opts)?, LuaValue::Nil))
            }
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
    ("crashguard", include_str!("../../scripts/crashguard.lua")),
    ("json", include_str!("../../scripts/json.lua")),
    ("jsonlog", include_str!("../../scripts/jsonlog.lua")),
    ("webhook", include_str!("../../scripts/webhook.lua")),
];

/// Lua's package.path treats `;` and `?` specially; nothing else needs escaping.
fn lua_pattern_escape(s: &str) -> String {
    s.replace(';', "_")
}

/// Lua side of `prepare`: error levels point at the caller's file:line.
const PRELUDE: &str = r#"
local resolve, read_json, log, config_dir, bundled = ...
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

/// Lua's `__name` for the files `io.popen` returns.
const PIPE_NAME: &str = "popen file";
/// Registry key of the pipe files' method table.
const PIPE_METHODS_KEY: &str = "taskmaster.pipe_methods";
/// Registry key of the pipe files' `__close`.
const PIPE_CLOSE_KEY: &str = "taskmaster.pipe_close";
/// How much a pipe read asks for at once.
const PIPE_CHUNK: usize = 8192;
/// Lua's limit on the length of a numeral `read("n")` scans.
const MAX_NUMERAL: usize = 200;

/// Lua side of the commands: the public functions and the pipe methods.
const COMMANDS: &str = r##"
local raw_execute, raw_popen, raw_read, raw_write, raw_close, raw_flush, kind = ...
local lua_type, lua_close = io.type, io.close
local pack, unpack, select = table.pack, table.unpack, select

-- Tail-called by the wrappers: level 2 is the wrapper's caller.
local function check(ok, ...)
  if ok then return ... end
  error((...), 2)
end

function os.execute(cmd) return check(raw_execute(cmd)) end
function io.popen(cmd, mode) return check(raw_popen(cmd, mode)) end
function io.type(f)
  local k = kind(f)
  if k then return k end
  return lua_type(f)
end
function io.close(...)
  local f = ...
  if kind(f) then return check(raw_close(f)) end
  return lua_close(...)
end

local methods = {}
function methods.read(f, ...) return check(raw_read(f, ...)) end
function methods.write(f, ...) return check(raw_write(f, ...)) end
function methods.close(f) return check(raw_close(f)) end
function methods.flush(f) return check(raw_flush(f)) end
function methods.lines(f, ...)
  if kind(f) ~= "file" then error("attempt to use a closed file", 2) end
  local n, formats = select("#", ...), { ... }
  return function()
    if kind(f) ~= "file" then error("file is already closed", 2) end
    local r = pack(raw_read(f, unpack(formats, 1, n)))
    if not r[1] then error(r[2], 2) end
    if r[2] ~= nil then return unpack(r, 2, r.n) end
    if r[3] ~= nil then error(r[3], 2) end
    return nil
  end
end
local function close(f)
  if kind(f) == "file" then raw_close(f) end
end
return methods, close
"##;

/// Installs `os.execute`, `io.popen`, and an `io.type`/`io.close` that know
/// its files.
fn install_commands(lua: &Lua) -> mlua::Result<()> {
    let kind = lua.create_function(|_, v: LuaValue| {
        Ok(match &v {
            LuaValue::UserData(ud) => ud.borrow::<PipeFile>().ok().map(|f| {
                if f.shell.is_some() {
                    "file"
                } else {
                    "closed file"
                }
            }),
            _ => None,
        })
    })?;
    let (methods, close): (Table, Function) = lua.load(COMMANDS).set_name("=taskmaster").call((
        lua.create_function(raw_execute)?,
        lua.create_function(raw_popen)?,
        lua.create_function(raw_read)?,
        lua.create_function(raw_write)?,
        lua.create_function(|lua, ud: AnyUserData| close_pipe(lua, &ud))?,
        lua.create_function(raw_flush)?,
        kind,
    ))?;
    lua.set_named_registry_value(PIPE_METHODS_KEY, methods)?;
    lua.set_named_registry_value(PIPE_CLOSE_KEY, close)?;
    Ok(())
}

/// `true, values...`: a successful result for the Lua wrappers.
fn success(values: impl IntoIterator<Item = LuaValue>) -> MultiValue {
    std::iter::once(LuaValue::Boolean(true))
        .chain(values)
        .collect()
}

/// `false, message`: the Lua wrapper raises `message` at its caller.
fn failure(lua: &Lua, message: impl AsRef<str>) -> mlua::Result<MultiValue> {
    Ok(MultiValue::from_iter([
        LuaValue::Boolean(false),
        LuaValue::String(lua.create_string(message.as_ref())?),
    ]))
}

/// A command was killed at the deadline: the running call is cut off, as
/// when the instruction hook finds the budget spent. Level 2 is the code
/// that called the Lua wrapper.
fn cut_off(lua: &Lua, what_ran: &str) -> mlua::Error {
    let place = lua
        .inspect_stack(2, |debug| {
            let src = debug.source();
            match (src.short_src, debug.current_line()) {
                (Some(file), Some(line)) => format!("{file}:{line}: "),
                _ => String::new(),
            }
        })
        .unwrap_or_default();
    let armed = lua.app_data_ref::<Armed>().map(|a| a.clone());
    match armed {
        Some(a) => trip(
            lua,
            &a.budget,
            format!("{place}{} ran out of time ({what_ran} killed)", a.what),
        ),
        None => mlua::Error::runtime(format!("{place}{what_ran} killed: out of time")),
    }
}

/// A string argument as bytes (a number is converted, as Lua does), or
/// the message of Lua's argument error.
fn string_arg(
    lua: &Lua,
    v: &LuaValue,
    n: usize,
    func: &str,
) -> mlua::Result<Result<Vec<u8>, String>> {
    Ok(match v {
        LuaValue::String(s) => Ok(s.as_bytes().to_vec()),
        LuaValue::Integer(_) | LuaValue::Number(_) => Ok(lua
            .coerce_string(v.clone())?
            .map(|s| s.as_bytes().to_vec())
            .unwrap_or_default()),
        other => Err(format!(
            "bad argument #{n} to '{func}' (string expected, got {})",
            other.type_name()
        )),
    })
}

/// `nil, message, errno`, as `luaL_fileresult` gives on failure.
fn io_failure(lua: &Lua, e: &std::io::Error, prefix: Option<&[u8]>) -> mlua::Result<Vec<LuaValue>> {
    let errno = e.raw_os_error().unwrap_or(0);
    // strerror's words, without the " (os error N)" std adds.
    let text = e.to_string();
    let suffix = format!(" (os error {errno})");
    let text = text.strip_suffix(&suffix).unwrap_or(&text).to_string();
    let message = match prefix {
        Some(p) => format!("{}: {text}", String::from_utf8_lossy(p)),
        None => text,
    };
    Ok(vec![
        LuaValue::Nil,
        LuaValue::String(lua.create_string(message)?),
        LuaValue::Integer(errno.into()),
    ])
}

/// `true|nil, "exit"|"signal", code`, as `luaL_execresult` gives.
fn exec_result(lua: &Lua, exit: Exit) -> mlua::Result<Vec<LuaValue>> {
    let (ok, what, code) = match exit {
        Exit::Code(0) => (LuaValue::Boolean(true), "exit", 0),
        Exit::Code(c) => (LuaValue::Nil, "exit", c),
        Exit::Signal(s) => (LuaValue::Nil, "signal", s as i32),
    };
    Ok(vec![
        ok,
        LuaValue::String(lua.create_string(what)?),
        LuaValue::Integer(code.into()),
    ])
}

/// Lua's `os.execute([cmd])`.
fn raw_execute(lua: &Lua, cmd: Option<LuaValue>) -> mlua::Result<MultiValue> {
    let Some(cmd) = cmd.filter(|c| !c.is_nil()) else {
        // "Is a shell available?"
        return Ok(success([LuaValue::Boolean(true)]));
    };
    let cmd = match string_arg(lua, &cmd, 1, "execute")? {
        Ok(c) => c,
        Err(m) => return failure(lua, m),
    };
    let mut shell = match Shell::spawn(OsStr::from_bytes(&cmd), "os.execute", Capture::Nothing) {
        Ok(s) => s,
        Err(e) => return Ok(success(io_failure(lua, &e, None)?)),
    };
    match shell.finish(deadline(lua)) {
        Ok(exit) => Ok(success(exec_result(lua, exit)?)),
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            Err(cut_off(lua, &format!("os.execute[{}]", shell.pid())))
        }
        Err(e) => Ok(success(io_failure(lua, &e, None)?)),
    }
}

/// Lua's `io.popen(cmd [, mode])`.
fn raw_popen(lua: &Lua, (cmd, mode): (LuaValue, Option<LuaValue>)) -> mlua::Result<MultiValue> {
    let cmd = match string_arg(lua, &cmd, 1, "popen")? {
        Ok(c) => c,
        Err(m) => return failure(lua, m),
    };
    let mode = match mode.filter(|m| !m.is_nil()) {
        None => b"r".to_vec(),
        Some(m) => match string_arg(lua, &m, 2, "popen")? {
            Ok(m) => m,
            Err(m) => return failure(lua, m),
        },
    };
    let capture = match mode.as_slice() {
        b"r" => Capture::Stdout,
        b"w" => Capture::Stdin,
        _ => return failure(lua, "bad argument #2 to 'popen' (invalid mode)"),
    };
    let shell = match Shell::spawn(OsStr::from_bytes(&cmd), "io.popen", capture) {
        Ok(s) => s,
        Err(e) => return Ok(success(io_failure(lua, &e, Some(&cmd))?)),
    };
    let file = PipeFile {
        shell: Some(shell),
        buf: Vec::new(),
        pos: 0,
        eof: false,
        writing: capture == Capture::Stdin,
    };
    Ok(success([LuaValue::UserData(lua.create_userdata(file)?)]))
}

/// `f:read(...)`.
fn raw_read(lua: &Lua, (ud, formats): (AnyUserData, MultiValue)) -> mlua::Result<MultiValue> {
    let mut f = ud.borrow_mut::<PipeFile>()?;
    let formats: Vec<LuaValue> = formats.into_iter().collect();
    f.read(lua, &formats)
}

/// `f:write(...)`: the file, or `nil, message, errno`.
fn raw_write(lua: &Lua, (ud, values): (AnyUserData, MultiValue)) -> mlua::Result<MultiValue> {
    let values: Vec<LuaValue> = values.into_iter().collect();
    let result = ud.borrow_mut::<PipeFile>()?.write(lua, &values)?;
    match result {
        Err(m) => failure(lua, m),
        Ok(None) => Ok(success([LuaValue::UserData(ud)])),
        Ok(Some(e)) => Ok(success(io_failure(lua, &e, None)?)),
    }
}

/// `f:flush()`: writes are not buffered, so only the check that it is open.
fn raw_flush(lua: &Lua, ud: AnyUserData) -> mlua::Result<MultiValue> {
    if ud.borrow::<PipeFile>()?.shell.is_none() {
        return failure(lua, "attempt to use a closed file");
    }
    Ok(success([LuaValue::UserData(ud)]))
}

/// `f:close()` / `io.close(f)`: Lua's `pclose` results.
fn close_pipe(lua: &Lua, ud: &AnyUserData) -> mlua::Result<MultiValue> {
    let mut f = ud.borrow_mut::<PipeFile>()?;
    let Some(mut shell) = f.shell.take() else {
        return failure(lua, "attempt to use a closed file");
    };
    match shell.finish(deadline(lua)) {
        Ok(exit) => Ok(success(exec_result(lua, exit)?)),
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            Err(cut_off(lua, &format!("io.popen[{}]", shell.pid())))
        }
        Err(e) => Ok(success(io_failure(lua, &e, None)?)),
    }
}

/// What `io.popen` returns: a pipe from (mode "r") or to ("w") a command.
/// Dropped without a close (garbage), the command is reaped off the Lua thread.
struct PipeFile {
    /// The command; None once closed.
    shell: Option<Shell>,
    /// Mode "r": bytes read from the command, consumed from `pos`.
    buf: Vec<u8>,
    /// Where the unread part of `buf` starts.
    pos: usize,
    /// Whether the command's output reached end of file.
    eof: bool,
    /// Mode "w".
    writing: bool,
}

/// One format of `read`/`lines`.
#[derive(Clone, Copy)]
enum Format {
    /// A byte count (0: test for end of file).
    Count(usize),
    /// "n": a numeral.
    Number,
    /// "l" (false) or "L" (true: keep the newline).
    Line(bool),
    /// "a": everything left.
    All,
}

/// Why a read stopped short of a value.
enum ReadError {
    /// The pipe failed (Lua returns nil, message, errno).
    Io(std::io::Error),
    /// The budget ran out and the command was killed.
    CutOff,
}

impl From<std::io::Error> for ReadError {
    fn from(e: std::io::Error) -> ReadError {
        if e.kind() == std::io::ErrorKind::TimedOut {
            ReadError::CutOff
        } else {
            ReadError::Io(e)
        }
    }
}

impl PipeFile {
    /// Makes sure unread bytes are buffered; false at end of file.
    fn fill(&mut self, deadline: Option<Instant>) -> Result<bool, ReadError> {
        if self.pos < self.buf.len() {
            return Ok(true);
        }
        let Some(shell) = self.shell.as_mut().filter(|_| !self.eof) else {
            return Ok(false);
        };
        self.buf.resize(PIPE_CHUNK, 0);
        self.pos = 0;
        match shell.read(&mut self.buf, deadline) {
            Ok(n) => {
                self.buf.truncate(n);
                self.eof = n == 0;
                Ok(n > 0)
            }
            Err(e) => {
                self.buf.clear();
                Err(e.into())
            }
        }
    }

    fn peek(&mut self, deadline: Option<Instant>) -> Result<Option<u8>, ReadError> {
        Ok(if self.fill(deadline)? {
            Some(self.buf[self.pos])
        } else {
            None
        })
    }

    fn line(
        &mut self,
        keep: bool,
        deadline: Option<Instant>,
    ) -> Result<Option<Vec<u8>>, ReadError> {
        let mut out = Vec::new();
        while self.fill(deadline)? {
            let rest = &self.buf[self.pos..];
            if let Some(i) = rest.iter().position(|&b| b == b'\n') {
                out.extend_from_slice(&rest[..if keep { i + 1 } else { i }]);
                self.pos += i + 1;
                return Ok(Some(out));
            }
            out.extend_from_slice(rest);
            self.pos = self.buf.len();
        }
        Ok((!out.is_empty()).then_some(out))
    }

    fn all(&mut self, deadline: Option<Instant>) -> Result<Vec<u8>, ReadError> {
        let mut out = Vec::new();
        while self.fill(deadline)? {
            out.extend_from_slice(&self.buf[self.pos..]);
            self.pos = self.buf.len();
        }
        Ok(out)
    }

    fn count(&mut self, n: usize, deadline: Option<Instant>) -> Result<Option<Vec<u8>>, ReadError> {
        if n == 0 {
            return Ok(self.fill(deadline)?.then(Vec::new));
        }
        let mut out = Vec::new();
        while out.len() < n && self.fill(deadline)? {
            let take = (n - out.len()).min(self.buf.len() - self.pos);
            out.extend_from_slice(&self.buf[self.pos..self.pos + take]);
            self.pos += take;
        }
        Ok((!out.is_empty()).then_some(out))
    }

    /// Takes the next byte into `text` when it is in `set` (`test2` and
    /// `readdigits` of Lua's `l_getn`); a numeral over 200 bytes is no numeral.
    fn accept(
        &mut self,
        set: &[u8],
        text: &mut Vec<u8>,
        deadline: Option<Instant>,
    ) -> Result<bool, ReadError> {
        match self.peek(deadline)? {
            Some(c) if set.contains(&c) && text.len() <= MAX_NUMERAL => {
                text.push(c);
                self.pos += 1;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Scans a numeral the way Lua's `read("n")` does (`l_getn` in liolib.c):
    /// the longest prefix that can start a number.
    fn numeral(&mut self, deadline: Option<Instant>) -> Result<Vec<u8>, ReadError> {
        const DEC: &[u8] = b"0123456789";
        const HEX: &[u8] = b"0123456789abcdefABCDEF";
        while let Some(b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c) = self.peek(deadline)? {
            self.pos += 1;
        }
        let mut text = Vec::new();
        self.accept(b"-+", &mut text, deadline)?;
        let mut count = 0;
        let mut hex = false;
        if self.accept(b"0", &mut text, deadline)? {
            hex = self.accept(b"xX", &mut text, deadline)?;
            count = usize::from(!hex);
        }
        let digits = if hex { HEX } else { DEC };
        while self.accept(digits, &mut text, deadline)? {
            count += 1;
        }
        if self.accept(b".", &mut text, deadline)? {
            while self.accept(digits, &mut text, deadline)? {
                count += 1;
            }
        }
        let exponent: &[u8] = if hex { b"pP" } else { b"eE" };
        if count > 0 && self.accept(exponent, &mut text, deadline)? {
            self.accept(b"-+", &mut text, deadline)?;
            while self.accept(DEC, &mut text, deadline)? {}
        }
        Ok(text)
    }

    /// Reads with `formats` (none: a line), as Lua's `read` does: one value
    /// per format, stopping at the first that fails (which gives nil).
    fn read(&mut self, lua: &Lua, formats: &[LuaValue]) -> mlua::Result<MultiValue> {
        if self.shell.is_none() {
            return failure(lua, "attempt to use a closed file");
        }
        let mut parsed = Vec::with_capacity(formats.len().max(1));
        for (i, f) in formats.iter().enumerate() {
            match parse_format(lua, f, i + 1)? {
                Ok(f) => parsed.push(f),
                Err(m) => return failure(lua, m),
            }
        }
        if parsed.is_empty() {
            parsed.push(Format::Line(false));
        }
        if self.writing {
            let e = std::io::Error::from_raw_os_error(libc::EBADF);
            return Ok(success(io_failure(lua, &e, None)?));
        }
        let deadline = deadline(lua);
        let mut out = vec![LuaValue::Boolean(true)];
        for format in parsed {
            let value = match self.read_one(format, deadline) {
                Ok(None) => LuaValue::Nil,
                Ok(Some(Read::Bytes(b))) => LuaValue::String(lua.create_string(b)?),
                Ok(Some(Read::Numeral(text))) => string_to_number(lua, &text)?,
                Err(ReadError::Io(e)) => return Ok(success(io_failure(lua, &e, None)?)),
                Err(ReadError::CutOff) => {
                    let pid = self.shell.as_ref().map(Shell::pid).unwrap_or(0);
                    return Err(cut_off(lua, &format!("io.popen[{pid}]")));
                }
            };
            let failed = value.is_nil();
            out.push(value);
            if failed {
                break;
            }
        }
        Ok(out.into_iter().collect())
    }

    fn read_one(
        &mut self,
        format: Format,
        deadline: Option<Instant>,
    ) -> Result<Option<Read>, ReadError> {
        Ok(match format {
            Format::Count(n) => self.count(n, deadline)?.map(Read::Bytes),
            Format::Line(keep) => self.line(keep, deadline)?.map(Read::Bytes),
            Format::All => Some(Read::Bytes(self.all(deadline)?)),
            Format::Number => Some(Read::Numeral(self.numeral(deadline)?)),
        })
    }

    /// Writes each value (strings, or numbers formatted as Lua does).
    /// Ok(None) when written, Ok(Some(e)) when the pipe failed, Err(message)
    /// for a bad argument.
    #[allow(clippy::type_complexity)]
    fn write(
        &mut self,
        lua: &Lua,
        values: &[LuaValue],
    ) -> mlua::Result<Result<Option<std::io::Error>, String>> {
        let mut data = Vec::new();
        for (i, v) in values.iter().enumerate() {
            match v {
                LuaValue::String(s) => data.extend_from_slice(&s.as_bytes()),
                LuaValue::Integer(n) => data.extend_from_slice(n.to_string().as_bytes()),
                LuaValue::Number(x) => data.extend_from_slice(lua_number_format(*x).as_bytes()),
                other => {
                    return Ok(Err(format!(
                        "bad argument #{} to 'write' (string expected, got {})",
                        i + 1,
                        other.type_name()
                    )))
                }
            }
        }
        let Some(shell) = self.shell.as_mut() else {
            return Ok(Err("attempt to use a closed file".into()));
        };
        if !self.writing {
            return Ok(Ok(Some(std::io::Error::from_raw_os_error(libc::EBADF))));
        }
        match shell.write_all(&data, deadline(lua)) {
            Ok(()) => Ok(Ok(None)),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                Err(cut_off(lua, &format!("io.popen[{}]", shell.pid())))
            }
            Err(e) => Ok(Ok(Some(e))),
        }
    }
}

/// What one format read.
enum Read {
    /// Bytes for a string.
    Bytes(Vec<u8>),
    /// The text of a numeral, still to convert.
    Numeral(Vec<u8>),
}

/// One argument of `read`/`lines`: a byte count, or "n", "l", "L", "a"
/// (optionally spelled with the Lua 5.1 `*`); Err is Lua's argument error.
fn parse_format(lua: &Lua, v: &LuaValue, n: usize) -> mlua::Result<Result<Format, String>> {
    let invalid = || Err(format!("bad argument #{n} to 'read' (invalid format)"));
    let not_string = |v: &LuaValue| {
        Err(format!(
            "bad argument #{n} to 'read' (string expected, got {})",
            v.type_name()
        ))
    };
    Ok(match v {
        LuaValue::Integer(_) | LuaValue::Number(_) => match lua.coerce_integer(v.clone())? {
            Some(count) => Ok(Format::Count(usize::try_from(count).unwrap_or(usize::MAX))),
            None => Err(format!(
                "bad argument #{n} to 'read' (number has no integer representation)"
            )),
        },
        LuaValue::String(s) => {
            let b = s.as_bytes();
            let b = b.strip_prefix(b"*").unwrap_or(&b);
            match b.first() {
                Some(b'n') => Ok(Format::Number),
                Some(b'l') => Ok(Format::Line(false)),
                Some(b'L') => Ok(Format::Line(true)),
                Some(b'a') => Ok(Format::All),
                _ => invalid(),
            }
        }
        other => not_string(other),
    })
}

/// `lua_stringtonumber`: an integer when the numeral has no fraction or
/// exponent (and fits), else a float; nil when it is no numeral.
fn string_to_number(lua: &Lua, text: &[u8]) -> mlua::Result<LuaValue> {
    if text.is_empty() || text.len() > MAX_NUMERAL {
        return Ok(LuaValue::Nil);
    }
    let unsigned = text
        .strip_prefix(b"-")
        .or(text.strip_prefix(b"+"))
        .unwrap_or(text);
    let hex = unsigned.starts_with(b"0x") || unsigned.starts_with(b"0X");
    let float_marks: &[u8] = if hex { b".pP" } else { b".eE" };
    let s = lua.create_string(text)?;
    if !text.iter().any(|c| float_marks.contains(c)) {
        if let Some(i) = lua.coerce_integer(LuaValue::String(s.clone()))? {
            return Ok(LuaValue::Integer(i));
        }
    }
    Ok(match lua.coerce_number(LuaValue::String(s))? {
        Some(x) => LuaValue::Number(x),
        None => LuaValue::Nil,
    })
}

/// A float as Lua's `write` formats it (`%.14g`).
fn lua_number_format(x: f64) -> String {
    let mut buf = [0u8; 64];
    // SAFETY: the buffer and its length are valid, and the format takes one double.
    let n = unsafe { libc::snprintf(buf.as_mut_ptr().cast(), buf.len(), c"%.14g".as_ptr(), x) };
    let n = usize::try_from(n).unwrap_or(0).min(buf.len() - 1);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

impl UserData for PipeFile {
    fn add_fields<F: UserDataFields<Self>>(fields: &mut F) {
        fields.add_meta_field(MetaMethod::Type, PIPE_NAME);
        // The methods are the Lua wrappers of COMMANDS, so their errors are
        // strings at the caller's line.
        fields.add_meta_field_with(MetaMethod::Index, |lua| {
            lua.named_registry_value::<Table>(PIPE_METHODS_KEY)
        });
        fields.add_meta_field_with(MetaMethod::Close, |lua| {
            lua.named_registry_value::<Function>(PIPE_CLOSE_KEY)
        });
    }

    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_meta_function(MetaMethod::ToString, |_, ud: AnyUserData| {
            Ok(if ud.borrow::<PipeFile>()?.shell.is_some() {
                format!("file ({:p})", ud.to_pointer())
            } else {
                "file (closed)".to_string()
            })
        });
    }
}

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
