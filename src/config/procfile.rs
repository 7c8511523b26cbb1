//! `load_procfile(path)` (SPEC §15): a foreman/Heroku `Procfile` read into
//! the tree a Lua config would return.
//!
//! Apps that ship a Procfile already say how to run each of their
//! processes; this takes that list as it is. Each `name: command` line is a
//! service with the defaults; blank lines and `#` comments are skipped.
//! As foreman does, each process gets `PORT = 5000 + 100 × i` in its `env`,
//! `i` being the 0-based index of its line among the process lines, so a
//! `web: bin/server --port $PORT` line works unchanged. The command is
//! shell text as written: its braces are escaped, so no `{instance}`
//! placeholder appears by accident. Any other line is an error with its
//! `FILE:LINE`, as is a name used twice.

use std::path::Path;

use serde_json::{json, Map, Value};

/// foreman's first port.
pub const BASE_PORT: u32 = 5000;
/// foreman's step between two process types.
pub const PORT_STEP: u32 = 100;

/// Reads the Procfile at `path`.
pub fn load(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse(&text, &path.display().to_string())
}

/// Parses Procfile text; `file` names it in errors (`FILE:LINE: why`).
pub fn parse(text: &str, file: &str) -> Result<Value, String> {
    let mut services = Map::new();
    let mut errors = Vec::new();
    let mut index = 0;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = format!("{file}:{}", n + 1);
        let Some((name, cmd)) = line.split_once(':') else {
            errors.push(format!("{at}: expected NAME: COMMAND"));
            continue;
        };
        let (name, cmd) = (name.trim(), cmd.trim());
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        {
            errors.push(format!(
                "{at}: process name \"{name}\" may only use letters, digits, '_', '.' and '-'"
            ));
            continue;
        }
        if cmd.is_empty() {
            errors.push(format!("{at}: {name} has no command"));
            continue;
        }
        if services.contains_key(name) {
            errors.push(format!("{at}: {name} is defined twice"));
            continue;
        }
        let port = BASE_PORT + PORT_STEP * index;
        index += 1;
        let cmd = cmd.replace('{', "{{").replace('}', "}}");
        services.insert(
            name.to_string(),
            json!({ "cmd": cmd, "env": { "PORT": port.to_string() } }),
        );
    }
    if errors.is_empty() {
        Ok(json!({ "services": services }))
    } else {
        Err(errors.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_services_with_foremans_ports() {
        let text = "# a comment\n\nweb: bundle exec puma -p $PORT\n  worker:python3 -m worker {x}  \n#later: no\nclock: bin/clock\n";
        let v = parse(text, "Procfile").unwrap();
        let s = &v["services"];
        assert_eq!(s["web"]["cmd"], "bundle exec puma -p $PORT");
        assert_eq!(s["web"]["env"]["PORT"], "5000");
        // Braces are text, not placeholders.
        assert_eq!(s["worker"]["cmd"], "python3 -m worker {{x}}");
        assert_eq!(s["worker"]["env"]["PORT"], "5100");
        assert_eq!(s["clock"]["env"]["PORT"], "5200");
        assert_eq!(s.as_object().unwrap().len(), 3);
        // A colon in the command stays in the command.
        let v = parse("web: serve -b 0.0.0.0:3000\n", "P").unwrap();
        assert_eq!(v["services"]["web"]["cmd"], "serve -b 0.0.0.0:3000");
    }

    #[test]
    fn bad_lines_name_file_and_line() {
        let bad: &[(&str, &str)] = &[
            ("web: a\njust words\n", "Procfile:2: expected NAME: COMMAND"),
            (
                "\nweb server: a\n",
                "Procfile:2: process name \"web server\" may only use letters, digits, '_', '.' and '-'",
            ),
            ("web:\n", "Procfile:1: web has no command"),
            ("web: a\nweb: b\n", "Procfile:2: web is defined twice"),
        ];
        for (text, want) in bad {
            assert_eq!(parse(text, "Procfile").unwrap_err(), *want, "{text:?}");
        }
        // Every bad line at once.
        let e = parse("x\ny\n", "P").unwrap_err();
        assert_eq!(
            e,
            "P:1: expected NAME: COMMAND\nP:2: expected NAME: COMMAND"
        );
    }
}
