//! How a `cmd` string becomes a process: exec'd directly when it is one
//! simple command, else run by `/bin/sh -c`.
//!
//! A command the daemon execs itself has the program's own pid, signals and
//! exit status, and "command not found" is a spawn error rather than exit
//! status 127 (SPEC §3).

/// Characters that need a shell.
const SHELL_SYNTAX: &[char] = &[
    '|', '&', ';', '<', '>', '(', ')', '$', '`', '\\', '"', '\'', '*', '?', '[', ']', '#', '~',
    '=', '%', '{', '}', '!', '\n',
];

/// Shell words that are not programs (keywords and special builtins).
const SHELL_WORDS: &[&str] = &[
    "if", "then", "else", "elif", "fi", "case", "esac", "for", "while", "until", "do", "done",
    "in", "function", "select", "time", "exit", "cd", "export", "set", "unset", ".", ":", "eval",
    "exec", "readonly", "return", "shift", "trap", "times", "wait", "ulimit", "umask", "alias",
    "unalias", "read", "source", "local", "break", "continue", "type", "command", "hash", "jobs",
    "fg", "bg", "kill", "getopts", "builtin", "let", "declare", "typeset",
];

/// How to run a `cmd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launch {
    /// Exec this argv directly.
    Direct(Vec<String>),
    /// Run this script with `/bin/sh -c`.
    Shell(String),
}

/// Decides how to run `cmd`.
pub fn launch(cmd: &str) -> Launch {
    match plain_argv(cmd) {
        Some(argv) => Launch::Direct(argv.into_iter().map(String::from).collect()),
        None => Launch::Shell(cmd.to_string()),
    }
}

/// The argv of a command that needs no shell, or None.
pub fn plain_argv(cmd: &str) -> Option<Vec<&str>> {
    if cmd.contains(SHELL_SYNTAX) {
        return None;
    }
    let argv: Vec<&str> = cmd.split_whitespace().collect();
    match argv.first() {
        Some(first) if !SHELL_WORDS.contains(first) => Some(argv),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_commands_skip_the_shell() {
        assert_eq!(plain_argv("sleep 10"), Some(vec!["sleep", "10"]));
        assert_eq!(
            plain_argv("  /bin/echo  a b "),
            Some(vec!["/bin/echo", "a", "b"])
        );
        for shelly in [
            "sleep 1 & sleep 2",
            "echo $HOME",
            "exit 3",
            "FOO=1 env",
            "echo 'a b'",
            "ls *.rs",
            "cd /tmp",
            "a | b",
            "",
        ] {
            assert_eq!(plain_argv(shelly), None, "{shelly}");
        }
    }
}
