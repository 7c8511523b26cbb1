//! The Lua front-end: evaluates `taskmaster.lua` in a fresh Lua 5.4 state.
//!
//! The chunk is named after its file so errors read `taskmaster.lua:12: ...`.
//! `load_json`, `dofile` and `require` resolve relative names against the
//! config's folder (`require` also searches its `scripts/`), and every file
//! they read is recorded so the watcher can follow it. Evaluation runs under
//! an instruction-count hook with a wall-clock deadline that stays expired
//! (a `pcall` cannot swallow it) and a memory limit, so a config that loops or
//! allocates forever fails with a clear error instead of hanging the daemon.
//! The standard library is complete except where it would reach past the
//! daemon: `os.exit` raises an error (a config or hook must not end the
//! process).
//!
//! The returned table is converted into a `serde_json::Value` and validated by
//! the shared schema in `config/mod.rs`. The Lua state survives in
//! [`HookState`]: it holds the handlers the config registered with
//! `require("taskmaster").on(...)`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mlua::{HookTriggers, Lua, LuaSerdeExt, Table, Value as LuaValue, VmState};
use serde_json::{Map, Number, Value};

use super::{base_dir, validate, ConfigError, Loaded};

/// How long a config may take to evaluate.
pub const LOAD_BUDGET: Duration = Duration::from_secs(5);
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

/// Makes the Lua state error out once the budget's deadline has passed, on
/// every instruction from then on, naming the place it was cut off.
pub fn arm_budget(lua: &Lua, budget: Arc<Budget>, what: &'static str) {
    budget
        .tripped
        .store(false, std::sync::atomic::Ordering::Relaxed);
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
            let message = format!("{place}{what} ran out of time");
            // From now on every instruction fails, so a `pcall` that caught this
            // error cannot go on: the error reaches the top within a few steps.
            budget
                .tripped
                .store(true, std::sync::atomic::Ordering::Relaxed);
            let again = message.clone();
            lua.set_hook(HookTriggers::new().every_nth_instruction(1), move |_, _| {
                Err(mlua::Error::runtime(again.clone()))
            })?;
            Err(mlua::Error::runtime(message))
        },
    );
    if let Err(e) = result {
        crate::log::line(format_args!("warning: cannot arm the Lua time budget: {e}"));
    }
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
    arm_budget(&lua, budget, "config evaluation");

    let chunk_name = format!("@{}", path.display());
    let result: LuaValue = lua
        .load(&source[..])
        .set_name(chunk_name)
        .eval()
        .map_err(|e| ConfigError::Lua(error_text(&e)))?;
    lua.remove_hook();
    let value = match result {
        LuaValue::Table(t) => {
            table_to_json(&t, "config", 0).map_err(|e| ConfigError::Invalid(vec![e]))?
        }
        other => {
            return Err(ConfigError::Invalid(vec![format!(
                "{}: the config must return a table, got {}",
                path.display(),
                other.type_name()
            )]))
        }
    };
    let config = validate(&value, &base)?;
    let files = files.lock().map(|f| f.clone()).unwrap_or_default();
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

    let package: Table = globals.get("package")?;
    let path: String = package.get("path")?;
    let lua_base = lua_pattern_escape(&base_str);
    package.set(
        "path",
        format!("{lua_base}/?.lua;{lua_base}/?/init.lua;{lua_base}/scripts/?.lua;{lua_base}/scripts/?/init.lua;{path}"),
    )?;

    let (module, handlers): (Table, Table) = lua.load(PRELUDE).set_name("=taskmaster").call((
        resolve,
        read_json,
        log,
        base_str.clone(),
    ))?;
    lua.set_named_registry_value(MODULE_KEY, module)?;
    lua.set_named_registry_value(HANDLERS_KEY, handlers)?;
    Ok(())
}

/// Lua's package.path treats `;` and `?` specially; nothing else needs escaping.
fn lua_pattern_escape(s: &str) -> String {
    s.replace(';', "_")
}

/// Lua side of `prepare`: error levels point at the caller's file:line.
const PRELUDE: &str = r#"
local resolve, read_json, log, config_dir = ...
local orig_dofile, loadfile, searchpath = dofile, loadfile, package.searchpath

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

const MAX_DEPTH: usize = 32;

/// Converts the config table into a value tree, naming the path of anything
/// that has no JSON equivalent.
fn table_to_json(t: &Table, path: &str, depth: usize) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err(format!(
            "{path}: nested too deeply (a table that contains itself?)"
        ));
    }
    let len = t.raw_len();
    let mut count = 0usize;
    let mut sequence = true;
    let mut entries = Vec::new();
    for pair in t.pairs::<LuaValue, LuaValue>() {
        let (k, v) = pair.map_err(|e| format!("{path}: {}", error_text(&e)))?;
        count += 1;
        let key = match &k {
            LuaValue::String(s) => {
                sequence = false;
                s.to_str()
                    .map_err(|_| format!("{path}: table keys must be UTF-8"))?
                    .to_string()
            }
            LuaValue::Integer(i) => {
                if *i < 1 || *i as usize > len {
                    sequence = false;
                }
                i.to_string()
            }
            other => {
                return Err(format!(
                    "{path}: table keys must be strings, got {}",
                    other.type_name()
                ))
            }
        };
        entries.push((key, v));
    }
    if sequence && count == len && count > 0 {
        let mut items = Vec::with_capacity(len);
        for i in 1..=len {
            let v: LuaValue = t
                .raw_get(i)
                .map_err(|e| format!("{path}: {}", error_text(&e)))?;
            items.push(to_json(&v, &format!("{path}[{i}]"), depth + 1)?);
        }
        return Ok(Value::Array(items));
    }
    let mut map = Map::new();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    for (key, v) in entries {
        let sub = if path == "config" {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        map.insert(key, to_json(&v, &sub, depth + 1)?);
    }
    Ok(Value::Object(map))
}

fn to_json(v: &LuaValue, path: &str, depth: usize) -> Result<Value, String> {
    Ok(match v {
        LuaValue::Nil => Value::Null,
        LuaValue::Boolean(b) => Value::Bool(*b),
        LuaValue::Integer(i) => Value::Number((*i).into()),
        LuaValue::Number(f) => Number::from_f64(*f)
            .map(Value::Number)
            .ok_or_else(|| format!("{path}: expected a finite number, got {f}"))?,
        LuaValue::String(s) => Value::String(
            s.to_str()
                .map_err(|_| format!("{path}: strings must be UTF-8"))?
                .to_string(),
        ),
        LuaValue::Table(t) => table_to_json(t, path, depth)?,
        LuaValue::LightUserData(p) if p.0.is_null() => Value::Null,
        other => {
            return Err(format!(
                "{path}: a {} cannot be a config value",
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
    fn endless_config_is_cut_off_even_through_pcall() {
        let started = Instant::now();
        let e = load_err("while true do pcall(function() while true do end end) end");
        assert!(e.contains("config evaluation ran out of time"), "{e}");
        assert!(e.starts_with("taskmaster.lua:1: "), "{e}");
        assert!(started.elapsed() < LOAD_BUDGET + Duration::from_secs(3));
    }

    #[test]
    fn unbounded_allocation_is_cut_off() {
        let e = load_err("local t = {}\nfor i = 1, 1e12 do t[i] = string.rep('x', 1000) .. i end");
        assert!(
            e.contains("not enough memory") || e.contains("out of memory"),
            "{e}"
        );
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
