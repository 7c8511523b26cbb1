//! Reading a config file: the front-end by extension (`.json` as JSON,
//! anything else as Lua), what can go wrong, and what a load gives besides
//! the config (the files the watcher follows, the Lua state the hooks run
//! in, the host problems let through as warnings for `--export`).

use std::path::{Path, PathBuf};

use super::{json, lua, validate_for, Config, HostChecks};

/// Everything that can go wrong loading a config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// JSON syntax error, with line and column.
    #[error("{path}: line {line}, column {column}: {message}")]
    Json {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What serde_json said.
        message: String,
    },
    /// A Lua error, already carrying `file:line:`.
    #[error("{0}")]
    Lua(String),
    /// Schema errors, one per offending field, each with its path.
    #[error("{}", .0.join("\n"))]
    Invalid(Vec<String>),
}

/// A loaded config plus what the watcher and the hooks need from its evaluation.
pub struct Loaded {
    /// The validated config.
    pub config: Config,
    /// Every file the config read (itself, `load_json`, `require`, `dofile`).
    pub files: Vec<PathBuf>,
    /// The Lua state that evaluated it, with its registered hooks (None for JSON).
    pub hooks: Option<lua::HookState>,
    /// Host problems let through as warnings ([`HostChecks::Warn`] only),
    /// each with its field path.
    pub warnings: Vec<String>,
}

/// Loads a config file: `.json` as JSON, anything else as Lua.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    load_for(path, HostChecks::Enforce)
}

/// [`load`], with the host-dependent checks treated as `host` says.
pub fn load_for(path: &Path, host: HostChecks) -> Result<Loaded, ConfigError> {
    if path.extension().is_some_and(|e| e == "json") {
        let value = json::read(path)?;
        let (config, warnings) = validate_for(&value, base_dir(path), host)?;
        let mut files = vec![path.to_path_buf()];
        files.extend(config.env_files());
        Ok(Loaded {
            config,
            files,
            hooks: None,
            warnings,
        })
    } else {
        lua::load_for(path, host)
    }
}

impl Config {
    /// Every service's `env_file`s: the watcher follows them like the
    /// files the config itself read.
    pub fn env_files(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = self
            .services
            .values()
            .flat_map(|s| s.spawn.env_files.iter().cloned())
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// The folder relative paths in a config resolve against.
pub fn base_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}
