//! The INI grammar of supervisord's config files, with line numbers.
//!
//! supervisord reads its files with Python's `ConfigParser`, whose quirks
//! real files rely on, so they are kept here:
//! - `[name]` starts a section; `key = value` or `key: value` (the first
//!   `=` or `:` splits) adds to it; keys are lowercased, values trimmed, and
//!   a key given twice keeps its last value;
//! - a line whose first non-blank character is `;` or `#` is a comment; an
//!   inline comment starts at a `;` that follows a blank (`a=b ;c`, but
//!   `a=b;c` is the value `b;c`), and `#` never starts one inline;
//! - an indented line continues the value above it (joined with a newline),
//!   blank lines and comments in between being skipped;
//! - `%` expansions (`%%` included) are not the grammar's business: they
//!   apply to some keys only (`expand.rs`).
//!
//! Anything else (text outside a section, a line with no `=`/`:`, an
//! unclosed `[`) is an error with its line number. A small parser of our own:
//! the INI crates at hand drop line numbers or these quirks.

/// One `[section]` of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// The text between the brackets, trimmed (`program:web`).
    pub name: String,
    /// 1-based line of the header.
    pub line: usize,
    /// Its keys in file order, each once (the last one given wins).
    pub entries: Vec<Entry>,
}

/// One `key = value` of a section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Lowercased key.
    pub key: String,
    /// The value, continuation lines joined with `\n`.
    pub value: String,
    /// 1-based line of the key.
    pub line: usize,
}

impl Section {
    /// The entry for `key`, if given.
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.key == key)
    }
}

/// Parses a whole file; the error is `(LINE, why)` of the first bad line.
pub fn parse(text: &str) -> Result<Vec<Section>, (usize, String)> {
    let mut sections: Vec<Section> = Vec::new();
    // Whether the last line read was a key, which an indented line continues.
    let mut open_entry = false;
    for (n, raw) in text.lines().enumerate() {
        let line = n + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with([';', '#']) {
            continue;
        }
        let indented = raw.starts_with([' ', '\t']);
        if indented && open_entry {
            let more = strip_comment(trimmed).trim();
            if let Some(entry) = sections.last_mut().and_then(|s| s.entries.last_mut()) {
                if !more.is_empty() {
                    if !entry.value.is_empty() {
                        entry.value.push('\n');
                    }
                    entry.value.push_str(more);
                }
            }
            continue;
        }
        let content = strip_comment(trimmed).trim_end();
        if let Some(rest) = content.strip_prefix('[') {
            let Some(name) = rest.strip_suffix(']') else {
                return Err((line, "expected a section header like [program:name]".into()));
            };
            let name = name.trim();
            if name.is_empty() {
                return Err((line, "empty section name".into()));
            }
            sections.push(Section {
                name: name.to_string(),
                line,
                entries: Vec::new(),
            });
            open_entry = false;
            continue;
        }
        let Some(section) = sections.last_mut() else {
            return Err((
                line,
                "expected a [section] header before the first key".into(),
            ));
        };
        let Some(at) = content.find(['=', ':']) else {
            return Err((line, "expected KEY = VALUE".into()));
        };
        let key = content[..at].trim().to_ascii_lowercase();
        if key.is_empty() {
            return Err((line, format!("missing key before '{}'", &content[at..=at])));
        }
        let value = content[at + 1..].trim().to_string();
        // A key given again replaces the value, in its first place.
        match section.entries.iter_mut().find(|e| e.key == key) {
            Some(entry) => {
                entry.value = value;
                entry.line = line;
            }
            None => section.entries.push(Entry { key, value, line }),
        }
        open_entry = true;
    }
    Ok(sections)
}

/// `text` up to an inline comment: a `;` after a blank.
fn strip_comment(text: &str) -> &str {
    let bytes = text.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b';' && i > 0 && (bytes[i - 1] == b' ' || bytes[i - 1] == b'\t') {
            return &text[..i];
        }
    }
    text
}
