//! The plain JSON front-end: the original `conf.json` format, read as-is.
//!
//! Syntax errors carry the line and column serde_json reports; the tree then
//! goes through the same validation as a Lua config.

use std::path::Path;

use serde_json::Value;

use super::ConfigError;

/// Reads and parses a JSON file into a value tree.
pub fn read(path: &Path) -> Result<Value, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path)
}

/// Parses JSON text; `path` only names the source in errors.
pub fn parse(text: &str, path: &Path) -> Result<Value, ConfigError> {
    serde_json::from_str(text).map_err(|e| ConfigError::Json {
        path: path.to_path_buf(),
        line: e.line(),
        column: e.column(),
        message: strip_position(&e.to_string()),
    })
}

/// serde_json appends " at line L column C"; the error already says it up front.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax_errors_name_line_and_column() {
        let err = parse(
            "{\n  \"services\": {\n    \"a\": ,\n  }\n}",
            Path::new("conf.json"),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "conf.json: line 3, column 10: expected value"
        );
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = read(Path::new("/nonexistent/conf.json")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot read config /nonexistent/conf.json: "),
            "{err}"
        );
    }
}
