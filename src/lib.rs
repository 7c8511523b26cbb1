//! Taskmaster: a process supervisor in the family of supervisord, configured
//! and extended in Lua.
//!
//! The daemon (`taskmasterd`) evaluates a config ([`config`]), supervises its
//! services ([`supervisor`], which spawns and signals through [`process`]),
//! and serves commands over WebSocket ([`server`], speaking [`protocol`]).
//! The client (`taskmasterctl`) lives in [`client`]. `taskmasterd --export`
//! writes a config for systemd or Nomad instead ([`export`]). See
//! ARCHITECTURE.md.

pub mod client;
pub mod config;
pub mod daemon;
pub mod export;
pub mod health;
pub mod hooks;
pub mod http;
pub mod log;
pub mod output;
pub mod process;
pub mod protocol;
pub mod reloader;
pub mod server;
pub mod supervisor;
pub mod watcher;
