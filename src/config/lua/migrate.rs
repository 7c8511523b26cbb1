//! The Rust side of `load_ini` and `load_procfile` (SPEC §15): a
//! supervisord config or a Procfile read into a Lua table of the shape a
//! Lua config returns, so `return load_ini("supervisord.conf")` is a whole
//! config and a Lua config can also edit what it got.
//!
//! Like `read_json`, each function gets a path already resolved against
//! the config folder (and recorded for the watcher) by the Lua wrapper in
//! the prelude, and returns `(value)` or `(nil, message)`; the wrapper
//! raises the message at the caller's `file:line`. The files a
//! supervisord config includes are recorded for the watcher here, and its
//! warnings (one per ignored key) go to the daemon log at each evaluation.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use mlua::{Function, Lua, LuaSerdeExt, Value as LuaValue};
use serde_json::Value;

/// `read_ini` and `read_procfile`, for the prelude.
pub(super) fn functions(
    lua: &Lua,
    files: Arc<Mutex<Vec<PathBuf>>>,
) -> mlua::Result<(Function, Function)> {
    let read_ini =
        lua.create_function(move |lua, path: String| {
            match crate::config::ini::load(Path::new(&path)) {
                Ok(ini) => {
                    if let Ok(mut f) = files.lock() {
                        for file in ini.files {
                            if !f.contains(&file) {
                                f.push(file);
                            }
                        }
                    }
                    for warning in &ini.warnings {
                        crate::log!("warning: load_ini: {warning}");
                    }
                    Ok((to_lua(lua, &ini.config)?, LuaValue::Nil))
                }
                Err(e) => Ok((LuaValue::Nil, LuaValue::String(lua.create_string(e)?))),
            }
        })?;
    let read_procfile =
        lua.create_function(|lua, path: String| {
            match crate::config::procfile::load(Path::new(&path)) {
                Ok(v) => Ok((to_lua(lua, &v)?, LuaValue::Nil)),
                Err(e) => Ok((LuaValue::Nil, LuaValue::String(lua.create_string(e)?))),
            }
        })?;
    Ok((read_ini, read_procfile))
}

/// A value tree as plain Lua tables (no array metatable, no null sentinel),
/// as `load_json` gives them.
pub(super) fn to_lua(lua: &Lua, v: &Value) -> mlua::Result<LuaValue> {
    let opts = mlua::serde::SerializeOptions::new()
        .set_array_metatable(false)
        .serialize_none_to_null(false)
        .serialize_unit_to_null(false);
    lua.to_value_with(v, opts)
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::PathBuf;

    use super::super::load;

    fn dir() -> PathBuf {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let d = std::env::temp_dir().join(format!("tm-migrate-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(d.join("conf.d")).unwrap();
        d
    }

    #[test]
    fn load_ini_gives_a_config_the_lua_side_can_edit() {
        let d = dir();
        fs::write(
            d.join("supervisord.conf"),
            "[program:web]\ncommand=python3 -m http.server %(process_num)d\nnumprocs=2\n\
             numprocs_start=8000\n[include]\nfiles=conf.d/*.conf\n",
        )
        .unwrap();
        fs::write(d.join("conf.d/w.conf"), "[program:w]\ncommand=sleep 5\n").unwrap();
        let p = d.join("taskmaster.lua");
        fs::write(
            &p,
            "local cfg = load_ini('supervisord.conf')\ncfg.services.w.numprocs = 3\nreturn cfg\n",
        )
        .unwrap();
        let loaded = load(&p).unwrap();
        let web = &loaded.config.services["web"];
        assert_eq!(web.spawn.cmd, "python3 -m http.server {instance+8000}");
        assert_eq!(
            web.spawn.for_instance("web", 1).cmd,
            "python3 -m http.server 8001"
        );
        assert_eq!(loaded.config.services["w"].numprocs, 3);
        for f in ["taskmaster.lua", "supervisord.conf", "conf.d/w.conf"] {
            assert!(
                loaded.files.contains(&d.join(f)),
                "{f} not recorded in {:?}",
                loaded.files
            );
        }
    }

    #[test]
    fn load_ini_and_load_procfile_errors_carry_both_places() {
        let d = dir();
        fs::write(
            d.join("bad.conf"),
            "[program:a]\ncommand=x\n\nnumprocs=lots\n",
        )
        .unwrap();
        fs::write(d.join("Procfile"), "web: x\noops\n").unwrap();
        let p = d.join("taskmaster.lua");
        let strip = |e: String| e.replace(&format!("{}/", d.display()), "");
        fs::write(&p, "\nlocal cfg = load_ini('bad.conf')\nreturn cfg\n").unwrap();
        assert_eq!(
            strip(load(&p).err().unwrap().to_string()),
            "taskmaster.lua:2: bad.conf:4: numprocs: expected an integer >= 0, got \"lots\""
        );
        // `return load_ini(...)` is a tail call: Lua knows no caller line
        // then, and the INI's own place is what is left.
        fs::write(&p, "\nreturn load_ini('bad.conf')\n").unwrap();
        assert_eq!(
            strip(load(&p).err().unwrap().to_string()),
            "bad.conf:4: numprocs: expected an integer >= 0, got \"lots\""
        );
        fs::write(&p, "local p = load_procfile('Procfile')\nreturn p\n").unwrap();
        assert_eq!(
            strip(load(&p).err().unwrap().to_string()),
            "taskmaster.lua:1: Procfile:2: expected NAME: COMMAND"
        );
        fs::write(&p, "local c = load_ini(42)\nreturn c\n").unwrap();
        assert_eq!(
            strip(load(&p).err().unwrap().to_string()),
            "taskmaster.lua:1: load_ini: expected a path string"
        );
    }

    #[test]
    fn load_procfile_sets_foremans_port() {
        let d = dir();
        fs::write(
            d.join("Procfile"),
            "web: serve --port $PORT\nworker: work\n",
        )
        .unwrap();
        let p = d.join("taskmaster.lua");
        fs::write(&p, "return load_procfile('Procfile')\n").unwrap();
        let loaded = load(&p).unwrap();
        assert_eq!(loaded.config.services["web"].spawn.env["PORT"], "5000");
        assert_eq!(loaded.config.services["worker"].spawn.env["PORT"], "5100");
        assert!(loaded.files.contains(&d.join("Procfile")));
    }
}
