//! `env_file` (SPEC §12): dotenv files read at load, so a bad line is a
//! config error with `FILE:LINE` and the resolved content takes part in the
//! reload diff (an edit restarts the instances, like any spawn change).
//!
//! The grammar is the common subset of dotenv tools: `KEY=VALUE` lines,
//! blank lines and `#` comments, an optional `export ` prefix, values bare
//! (a ` #` starts a comment, surrounding blanks trimmed), in single quotes
//! (literal) or in double quotes (`\n`, `\t`, `\"`, `\\` escapes). A small
//! parser of our own, because the usual crate's errors carry no line number.

use std::collections::BTreeMap;

/// Parses a whole file; the error is `LINE: why` (1-based).
pub fn parse(text: &str) -> Result<BTreeMap<String, String>, (usize, String)> {
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        if let Some((key, value)) = parse_line(line).map_err(|why| (n + 1, why))? {
            out.insert(key, value);
        }
    }
    Ok(out)
}

/// One line: None for a blank or comment line.
pub fn parse_line(line: &str) -> Result<Option<(String, String)>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let line = line
        .strip_prefix("export")
        .filter(|rest| rest.starts_with([' ', '\t']))
        .map(str::trim_start)
        .unwrap_or(line);
    let Some((key, raw)) = line.split_once('=') else {
        return Err("expected KEY=VALUE".into());
    };
    let key = key.trim_end();
    let valid = key
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    if !valid {
        return Err(format!("invalid variable name \"{key}\""));
    }
    let value = value(raw.trim_start())?;
    if value.contains('\0') {
        return Err("values must not contain NUL bytes".into());
    }
    Ok(Some((key.to_string(), value)))
}

fn value(raw: &str) -> Result<String, String> {
    let (text, rest) = if let Some(body) = raw.strip_prefix('\'') {
        let end = body.find('\'').ok_or("unterminated single-quoted value")?;
        (body[..end].to_string(), &body[end + 1..])
    } else if let Some(body) = raw.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = body.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    end = Some(i);
                    break;
                }
                '\\' => match chars.next() {
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, 't')) => out.push('\t'),
                    Some((_, 'r')) => out.push('\r'),
                    Some((_, e @ ('"' | '\\' | '$'))) => out.push(e),
                    Some((_, other)) => {
                        out.push('\\');
                        out.push(other);
                    }
                    None => break,
                },
                c => out.push(c),
            }
        }
        let end = end.ok_or("unterminated double-quoted value")?;
        (out, &body[end + 1..])
    } else {
        // A bare value ends at a comment that follows a blank.
        let end = raw
            .char_indices()
            .find(|&(i, c)| c == '#' && i > 0 && raw[..i].ends_with([' ', '\t']))
            .map_or(raw.len(), |(i, _)| i);
        return Ok(raw[..end].trim_end().to_string());
    };
    let rest = rest.trim_start();
    if !rest.is_empty() && !rest.starts_with('#') {
        return Err("unexpected text after the closing quote".into());
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        let good: &[(&str, Option<(&str, &str)>)] = &[
            ("", None),
            ("   ", None),
            ("# comment", None),
            ("  # indented comment", None),
            ("A=1", Some(("A", "1"))),
            ("A = 1 ", Some(("A", "1"))),
            ("A=", Some(("A", ""))),
            ("export A=1", Some(("A", "1"))),
            ("export\tA=1", Some(("A", "1"))),
            ("exported=1", Some(("exported", "1"))),
            ("A=b c", Some(("A", "b c"))),
            ("A=b #c", Some(("A", "b"))),
            ("A=b#c", Some(("A", "b#c"))),
            ("A='x #y' # z", Some(("A", "x #y"))),
            ("A='a\\nb'", Some(("A", "a\\nb"))),
            ("A=\"a\\nb\"", Some(("A", "a\nb"))),
            ("A=\"say \\\"hi\\\"\"", Some(("A", "say \"hi\""))),
            ("A=\"x=y\"", Some(("A", "x=y"))),
            ("_A.b=1", Some(("_A.b", "1"))),
        ];
        for (line, want) in good {
            let got = parse_line(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
            let got = got.as_ref().map(|(k, v)| (k.as_str(), v.as_str()));
            assert_eq!(got, *want, "{line:?}");
        }
        let bad: &[(&str, &str)] = &[
            ("JUSTAWORD", "expected KEY=VALUE"),
            ("export", "expected KEY=VALUE"),
            ("=1", "invalid variable name \"\""),
            ("1A=1", "invalid variable name \"1A\""),
            ("A B=1", "invalid variable name \"A B\""),
            ("A='open", "unterminated single-quoted value"),
            ("A=\"open", "unterminated double-quoted value"),
            ("A='x' y", "unexpected text after the closing quote"),
        ];
        for (line, want) in bad {
            assert_eq!(parse_line(line).unwrap_err(), *want, "{line:?}");
        }
    }

    #[test]
    fn files_report_the_line_and_later_lines_win() {
        let ok = parse("# top\nA=1\n\nB=2\nA=3\n").unwrap();
        assert_eq!(ok["A"], "3");
        assert_eq!(ok["B"], "2");
        assert_eq!(
            parse("A=1\n\nnot a pair\n").unwrap_err(),
            (3, "expected KEY=VALUE".into())
        );
    }
}
