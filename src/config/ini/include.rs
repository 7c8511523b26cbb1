//! `[include] files = GLOB ...`: the files a supervisord config pulls in.
//!
//! As supervisord does, each pattern is relative to the folder of the file
//! that names it, may use `%(here)s` and `%(ENV_X)s`, and its matches are
//! read in sorted order; a pattern that matches nothing is a warning.
//! Beyond supervisord (which follows the main file's `[include]` only),
//! included files may include in turn: a file met again inside its own
//! chain is an include cycle, an error at the `files` line that closes it;
//! a file met again elsewhere (two patterns matching it) is read once.
//!
//! The glob is a small matcher of our own (`*`, `?`, `[set]`, `[!set]`
//! and ranges, per path component, dot files matched only by a pattern
//! that starts with a dot, as Python's `glob`), so no crate is needed for
//! what supervisord's patterns use.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

use super::expand::{expand, Mode, Names};
use super::syntax::{self, Section};

/// One file read, in the order they were read.
#[derive(Debug)]
pub struct File {
    /// The path as it was reached (the main file as given, an included one
    /// joined to its includer's folder).
    pub path: PathBuf,
    /// Its folder, absolute: `%(here)s`.
    pub here: String,
    /// Its sections.
    pub sections: Vec<Section>,
}

/// What reading a config and its includes gave.
#[derive(Debug, Default)]
pub struct Read {
    /// Every file, the main one first.
    pub files: Vec<File>,
    /// `FILE:LINE: ...` lines about patterns that matched nothing.
    pub warnings: Vec<String>,
}

/// Reads `path` and, transitively, the files its `[include]`s name.
pub fn read(path: &Path) -> Result<Read, Vec<String>> {
    let mut state = State::default();
    state.visit(path, None);
    if state.errors.is_empty() {
        Ok(state.read)
    } else {
        Err(state.errors)
    }
}

#[derive(Default)]
struct State {
    read: Read,
    errors: Vec<String>,
    /// The chain of files being read (canonical paths), for cycles.
    stack: Vec<(PathBuf, String)>,
    /// Every file read so far (canonical paths).
    seen: HashSet<PathBuf>,
}

impl State {
    /// Reads one file; `from` is the `FILE:LINE` of the include that named it.
    fn visit(&mut self, path: &Path, from: Option<&str>) {
        let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let shown = path.display().to_string();
        let place = |from: Option<&str>| from.map(|f| format!("{f}: ")).unwrap_or_default();
        if let Some(i) = self.stack.iter().position(|(p, _)| *p == canonical) {
            let chain: Vec<&str> = self.stack[i..].iter().map(|(_, s)| s.as_str()).collect();
            self.errors.push(format!(
                "{}include cycle: {} -> {shown}",
                place(from),
                chain.join(" -> ")
            ));
            return;
        }
        if !self.seen.insert(canonical.clone()) {
            return;
        }
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                self.errors
                    .push(format!("{}cannot read {shown}: {e}", place(from)));
                return;
            }
        };
        let sections = match syntax::parse(&text) {
            Ok(s) => s,
            Err((line, why)) => {
                self.errors.push(format!("{shown}:{line}: {why}"));
                return;
            }
        };
        let dir = super::super::base_dir(path);
        let here = std::path::absolute(dir)
            .unwrap_or_else(|_| dir.to_path_buf())
            .display()
            .to_string();
        let includes: Vec<(usize, Result<String, String>)> = sections
            .iter()
            .filter(|s| s.name == "include")
            .map(|s| match s.get("files") {
                None => (s.line, Err("[include] has no files = setting".to_string())),
                Some(e) => {
                    let names = Names {
                        program: None,
                        here: &here,
                        numprocs: None,
                        start: None,
                    };
                    (e.line, expand(&e.value, "files", &names, Mode::Literal))
                }
            })
            .collect();
        self.read.files.push(File {
            path: path.to_path_buf(),
            here,
            sections,
        });
        self.stack.push((canonical, shown.clone()));
        for (line, files) in includes {
            let at = format!("{shown}:{line}");
            let files = match files {
                Ok(f) => f,
                Err(why) => {
                    self.errors.push(format!("{at}: {why}"));
                    continue;
                }
            };
            for pattern in files.split_whitespace() {
                let full = dir.join(pattern);
                let found = glob(&full);
                if found.is_empty() {
                    self.read.warnings.push(format!(
                        "{at}: no file matches include \"{}\"",
                        full.display()
                    ));
                }
                for file in found {
                    self.visit(&file, Some(&at));
                }
            }
        }
        self.stack.pop();
    }
}

/// The regular files `pattern` matches, sorted.
pub fn glob(pattern: &Path) -> Vec<PathBuf> {
    let mut current: Vec<PathBuf> = vec![PathBuf::new()];
    for component in pattern.components() {
        let part = match component {
            Component::Normal(p) => p.to_string_lossy().into_owned(),
            other => {
                // `/`, `.` and `..` are taken as they are.
                for c in &mut current {
                    c.push(other.as_os_str());
                }
                continue;
            }
        };
        if !part.contains(['*', '?', '[']) {
            for c in &mut current {
                c.push(&part);
            }
            continue;
        }
        let mut next = Vec::new();
        for dir in &current {
            let listed = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir.as_path()
            };
            let Ok(entries) = std::fs::read_dir(listed) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') && !part.starts_with('.') {
                    continue;
                }
                if matches(&part, &name) {
                    next.push(dir.join(&name));
                }
            }
        }
        current = next;
    }
    let mut out: Vec<PathBuf> = current.into_iter().filter(|p| p.is_file()).collect();
    out.sort();
    out
}

/// Whether `name` matches the shell pattern `pattern` (`*`, `?`, `[...]`).
pub fn matches(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    matches_at(&p, &n)
}

fn matches_at(p: &[char], n: &[char]) -> bool {
    match p.first() {
        None => n.is_empty(),
        Some('*') => (0..=n.len()).any(|skip| matches_at(&p[1..], &n[skip..])),
        Some('?') => !n.is_empty() && matches_at(&p[1..], &n[1..]),
        Some('[') => match set(&p[1..]) {
            // An unclosed `[` is a plain character.
            None => n.first() == Some(&'[') && matches_at(&p[1..], &n[1..]),
            Some((used, negated, items)) => match n.first() {
                Some(&c) => {
                    let hit = items.iter().any(|&(lo, hi)| lo <= c && c <= hi);
                    hit != negated && matches_at(&p[1 + used..], &n[1..])
                }
                None => false,
            },
        },
        Some(&c) => n.first() == Some(&c) && matches_at(&p[1..], &n[1..]),
    }
}

/// A `[...]` set: how many characters it used after its `[` (up to and
/// including `]`), whether it is negated (`[!...]`), and its ranges.
type Set = (usize, bool, Vec<(char, char)>);

/// Reads a set after its `[`.
fn set(p: &[char]) -> Option<Set> {
    let mut i = 0;
    let negated = matches!(p.first(), Some('!'));
    if negated {
        i += 1;
    }
    let mut items = Vec::new();
    let start = i;
    while i < p.len() {
        let c = p[i];
        // A `]` first in the set is a member, as in fnmatch.
        if c == ']' && i > start {
            return Some((i + 1, negated, items));
        }
        if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|&e| e != ']') {
            items.push((c, p[i + 2]));
            i += 3;
        } else {
            items.push((c, c));
            i += 1;
        }
    }
    None
}
