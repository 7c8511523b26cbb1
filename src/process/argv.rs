//! How a `cmd` string becomes a process: exec'd directly when it is one
//! simple command, else run by `/bin/sh -c`.
//!
//! A command the daemon execs itself has the program's own pid, signals and
//! exit status, and "command not found" is a spawn error rather than exit
//! status 127 (SPEC §3). `/bin/sh -c` does not promise to exec the last
//! command (dash does not, for `python3 -c '…'` or `sleep $T`), and a shell
//! in the program's place shows the shell's pid, turns a SIGKILL of the
//! program into `exit status 137`, and leaves the program running when the
//! shell's pid is killed.
//!
//! So the command is scanned the way sh would read it (quotes, backslashes,
//! `#` comments), with three outcomes:
//! - anything beyond one simple command (an operator outside quotes, a
//!   leading keyword or builtin, a command substitution, bad quoting) runs
//!   as written under `sh -c`, which reports its own errors;
//! - a simple command that needs the shell's expansions (`$VAR`, globs, a
//!   leading `~`) or sets variables (`FOO=1 prog`) runs as
//!   `sh -c '[FOO=1] exec prog …'`: sh expands, then becomes the program
//!   (dash exports the assignments in front of `exec`);
//! - else its words, quotes removed, are exec'd directly: exactly what
//!   `sh -c 'exec CMD'` would have run.

/// Words that make the command shell code rather than a program to exec:
/// keywords, and builtins that `exec` cannot run.
const SHELL_WORDS: &[&str] = &[
    "if", "then", "else", "elif", "fi", "case", "esac", "for", "while", "until", "do", "done",
    "in", "function", "select", "time", "{", "}", "!", "[[", "]]", "exit", "cd", "export", "set",
    "unset", ".", ":", "eval", "exec", "readonly", "return", "shift", "trap", "times", "wait",
    "ulimit", "umask", "alias", "unalias", "read", "source", "local", "break", "continue", "type",
    "command", "hash", "jobs", "fg", "bg", "kill", "getopts", "builtin", "let", "declare",
    "typeset",
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
    let shell = || Launch::Shell(cmd.to_string());
    let Some(scan) = scan(cmd) else {
        return shell();
    };
    let assignments = scan.words.iter().take_while(|w| w.assignment).count();
    let Some(program) = scan.words.get(assignments) else {
        // Empty, a comment, or assignments alone: nothing to exec.
        return shell();
    };
    if SHELL_WORDS.contains(&program.text.as_str()) {
        return shell();
    }
    if scan.expands || assignments > 0 {
        let (vars, rest) = cmd.split_at(program.start);
        return Launch::Shell(format!("{vars}exec {rest}"));
    }
    Launch::Direct(scan.words.into_iter().map(|w| w.text).collect())
}

/// One word of a simple command.
#[derive(Debug)]
struct Word {
    /// Byte offset in the command where the word starts.
    start: usize,
    /// The word with its quotes removed (its literal text when it expands).
    text: String,
    /// Whether it has the form `NAME=value` (NAME unquoted).
    assignment: bool,
}

/// A command read as one simple command.
#[derive(Debug)]
struct Scan {
    words: Vec<Word>,
    /// Whether some word needs the shell's expansions.
    expands: bool,
}

/// Reads `cmd` as one simple command, or None when it is more than that
/// (or badly quoted): then only the shell can run it.
fn scan(cmd: &str) -> Option<Scan> {
    let mut chars = cmd.char_indices().peekable();
    let mut words = Vec::new();
    let mut expands = false;
    loop {
        while chars.next_if(|&(_, c)| c == ' ' || c == '\t').is_some() {}
        let Some(&(start, first)) = chars.peek() else {
            break;
        };
        if first == '#' {
            // A comment runs to the end of the line; a line after it is a
            // second command.
            if cmd[start..].contains('\n') {
                return None;
            }
            break;
        }
        if first == '~' {
            expands = true;
        }
        let mut text = String::new();
        // Whether the word so far is an unquoted NAME, so `=` makes it an
        // assignment.
        let mut name = true;
        let mut assignment = false;
        while let Some(&(_, c)) = chars.peek() {
            if c == ' ' || c == '\t' {
                break;
            }
            chars.next();
            match c {
                '\n' | ';' | '&' | '|' | '<' | '>' | '(' | ')' | '`' => return None,
                '\'' => {
                    name = false;
                    loop {
                        match chars.next()? {
                            (_, '\'') => break,
                            (_, c) => text.push(c),
                        }
                    }
                }
                '"' => {
                    name = false;
                    loop {
                        match chars.next()? {
                            (_, '"') => break,
                            (_, '\\') => match chars.next()? {
                                (_, c @ ('$' | '`' | '"' | '\\')) => text.push(c),
                                (_, '\n') => {}
                                (_, c) => {
                                    text.push('\\');
                                    text.push(c);
                                }
                            },
                            // A command substitution inside quotes can
                            // hold anything, quotes included: leave it to sh.
                            (_, '`') => return None,
                            (_, '$') if chars.peek().is_some_and(|&(_, c)| c == '(') => {
                                return None
                            }
                            (_, c) => {
                                expands |= c == '$';
                                text.push(c);
                            }
                        }
                    }
                }
                '\\' => {
                    name = false;
                    match chars.next()? {
                        (_, '\n') => {}
                        (_, c) => text.push(c),
                    }
                }
                '$' | '*' | '?' | '[' => {
                    name = false;
                    expands = true;
                    text.push(c);
                }
                '=' if name && !text.is_empty() && !assignment => {
                    assignment = true;
                    text.push(c);
                }
                c => {
                    let name_char = c == '_'
                        || c.is_ascii_alphabetic()
                        || (c.is_ascii_digit() && !text.is_empty());
                    name &= name_char || assignment;
                    text.push(c);
                }
            }
        }
        words.push(Word {
            start,
            text,
            assignment,
        });
    }
    Some(Scan { words, expands })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn direct(words: &[&str]) -> Launch {
        Launch::Direct(words.iter().map(|w| w.to_string()).collect())
    }

    fn shell(script: &str) -> Launch {
        Launch::Shell(script.to_string())
    }

    #[test]
    fn simple_commands_are_exec_d_as_their_words() {
        for (cmd, want) in [
            ("sleep 10", direct(&["sleep", "10"])),
            ("  /bin/echo  a\tb ", direct(&["/bin/echo", "a", "b"])),
            (
                "nginx -g 'daemon off;'",
                direct(&["nginx", "-g", "daemon off;"]),
            ),
            (
                "redis-server --save ''",
                direct(&["redis-server", "--save", ""]),
            ),
            (
                "socat TCP-LISTEN:1,bind=127.0.0.1 -",
                direct(&["socat", "TCP-LISTEN:1,bind=127.0.0.1", "-"]),
            ),
            (
                r#"python3 -c 'import os; print("hi")'"#,
                direct(&["python3", "-c", r#"import os; print("hi")"#]),
            ),
            (r#"echo "a b" c"#, direct(&["echo", "a b", "c"])),
            (
                r#"echo "a\"b\\c\$d\qe""#,
                direct(&["echo", r#"a"b\c$d\qe"#]),
            ),
            (r"echo a\ b \'x\' \;", direct(&["echo", "a b", "'x'", ";"])),
            ("echo it's'' ok'", direct(&["echo", "its ok"])),
            ("echo 'a'\"b\"c", direct(&["echo", "abc"])),
            ("echo \"line\\\njoined\"", direct(&["echo", "linejoined"])),
            ("echo a\\\nb", direct(&["echo", "ab"])),
            (
                "prog --opt=value x=1",
                direct(&["prog", "--opt=value", "x=1"]),
            ),
            ("prog a#b # a comment", direct(&["prog", "a#b"])),
            (
                "prog 'a;b' \"c|d\" 'e&f' '(g)'",
                direct(&["prog", "a;b", "c|d", "e&f", "(g)"]),
            ),
            ("prog '$HOME' '*' '~'", direct(&["prog", "$HOME", "*", "~"])),
            (
                "prog a~b {x} a!b %y",
                direct(&["prog", "a~b", "{x}", "a!b", "%y"]),
            ),
            ("'my prog' arg", direct(&["my prog", "arg"])),
            ("prog 'héllo → ✓'", direct(&["prog", "héllo → ✓"])),
            ("'FOO=1' prog", direct(&["FOO=1", "prog"])),
            ("1X=1 prog", direct(&["1X=1", "prog"])),
        ] {
            assert_eq!(launch(cmd), want, "{cmd:?}");
        }
    }

    /// The words `/bin/sh` itself reads from `cmd`.
    fn sh_words(cmd: &str) -> Vec<String> {
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("set -- {cmd}\nprintf '%s\\0' \"$@\""))
            .output()
            .expect("run /bin/sh");
        assert!(out.status.success(), "{cmd:?}: {out:?}");
        let mut words: Vec<String> = out
            .stdout
            .split(|b| *b == 0)
            .map(|w| String::from_utf8_lossy(w).into_owned())
            .collect();
        words.pop();
        words
    }

    #[test]
    fn direct_words_are_the_words_sh_reads() {
        for cmd in [
            "nginx -g 'daemon off;'",
            "redis-server --save ''",
            r#"echo "a\"b\\c\$d\qe" x"y"'z'"#,
            r"echo a\ b \'x\' \;",
            "echo it's'' ok'",
            "echo \"line\\\njoined\" a\\\nb",
            "prog a#b # a comment",
            "prog a~b {x} a!b %y --opt=value",
            "'FOO=1' prog 1X=1",
        ] {
            let Launch::Direct(words) = launch(cmd) else {
                panic!("{cmd:?} is not run directly");
            };
            assert_eq!(words, sh_words(cmd), "{cmd:?}");
        }
    }

    #[test]
    fn expansions_and_assignments_run_as_sh_exec() {
        for (cmd, want) in [
            ("sleep $T", "exec sleep $T"),
            ("sleep ${T:-1}", "exec sleep ${T:-1}"),
            ("echo \"$HOME/x\"", "exec echo \"$HOME/x\""),
            ("ls *.rs", "exec ls *.rs"),
            ("ls file?", "exec ls file?"),
            ("ls [ab]", "exec ls [ab]"),
            ("ls ~/x", "exec ls ~/x"),
            ("~/bin/prog", "exec ~/bin/prog"),
            ("FOO=1 env", "FOO=1 exec env"),
            (
                "FOO='a b' BAR=\"c\" prog x",
                "FOO='a b' BAR=\"c\" exec prog x",
            ),
            ("  A_1= prog", "  A_1= exec prog"),
            ("FOO=$X prog", "FOO=$X exec prog"),
        ] {
            assert_eq!(launch(cmd), shell(want), "{cmd:?}");
        }
    }

    #[test]
    fn shell_code_runs_as_written() {
        for cmd in [
            "sleep 1 & sleep 2",
            "sleep 1; sleep 2",
            "a | b",
            "a && b",
            "a || b",
            "prog > out",
            "prog < in",
            "prog 2>&1",
            "(prog)",
            "echo `date`",
            "echo \"`date`\"",
            "echo $(date)",
            "echo \"$(date)\"",
            "echo $((1 + 2))",
            "prog\nother",
            "prog # comment\nother",
            "exit 3",
            "cd /tmp",
            "export A=1",
            "exec prog",
            "if true; then prog; fi",
            "{ prog; }",
            "! prog",
            "while true",
            "FOO=1 exit 3",
            "FOO=1",
            "",
            "   ",
            "# only a comment",
            "echo 'unterminated",
            "echo \"unterminated",
            "echo trailing\\",
        ] {
            assert_eq!(launch(cmd), shell(cmd), "{cmd:?}");
        }
    }
}
