//! `taskmasterd --export` (SPEC §15): a config written for the engine that
//! takes over when one machine is not enough, systemd units or a Nomad job.
//!
//! Each format is a pure function from a validated [`Config`] to text
//! (`systemd.rs`, `nomad.rs`), so the mapping is tested without any file or
//! process; the daemon's wiring evaluates the config (host checks as
//! warnings: it will run elsewhere), calls one of them and writes the files.
//! Nothing is guessed silently: what has no equivalent is said, as
//! `# not exported:` comments in the units or as lines for stderr.
//!
//! Shared here: how a `cmd` becomes the script a shell runs (the daemon's
//! own rule, `config::launch`, so the program ends up as the pid exactly as
//! under Taskmaster), and the shell quoting both formats need.
//!
//! This module depends on `config` only; `daemon` and the binary call it.

pub mod nomad;
pub mod systemd;

use crate::config::{launch, Launch};

/// What `/bin/sh -c` runs for `cmd`: `exec CMD` for one simple command
/// (sh becomes the program), the assignments kept in front
/// (`A=1 exec prog`), anything else as written.
pub fn command_script(cmd: &str) -> String {
    match launch(cmd) {
        Launch::Direct(_) => format!("exec {cmd}"),
        Launch::Shell(script) => script,
    }
}

/// `s` as one single-quoted shell word.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Whether `key` is a name a shell (and systemd) accepts for a variable.
pub fn is_env_name(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A name that service registries accept (RFC 1123 labels): lowercase
/// letters, digits and dashes.
pub fn dns_name(name: &str) -> String {
    let mapped: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let trimmed = mapped.trim_matches('-');
    if trimmed.is_empty() {
        "service".to_string()
    } else {
        trimmed.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_exec_the_program_when_sh_would_run_one() {
        let table: &[(&str, &str)] = &[
            ("sleep 5", "exec sleep 5"),
            (
                "python3 -m http.server {instance+8000}",
                "exec python3 -m http.server {instance+8000}",
            ),
            ("echo $HOME", "exec echo $HOME"),
            ("A=1 prog", "A=1 exec prog"),
            ("a; b", "a; b"),
            ("a | b", "a | b"),
            ("cd /tmp && run", "cd /tmp && run"),
        ];
        for (cmd, want) in table {
            assert_eq!(command_script(cmd), *want, "{cmd}");
        }
    }

    #[test]
    fn quoting_and_names() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert!(is_env_name("PORT"));
        assert!(is_env_name("_x1"));
        assert!(!is_env_name("1X"));
        assert!(!is_env_name("my-var"));
        assert!(!is_env_name(""));
        assert_eq!(dns_name("Web_API.v2"), "web-api-v2");
        assert_eq!(dns_name("__"), "service");
    }
}
