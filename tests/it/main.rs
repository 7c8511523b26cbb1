//! One integration test binary (fast to link) with a module per area.

mod access;
mod browser;
mod cdp;
mod cli;
mod commands;
mod common;
mod deps;
mod engine;
mod faults;
mod hardening;
mod hooks;
mod logging;
mod logs;
mod lua;
mod migration;
mod output;
mod privileges;
mod reload;
mod server;
mod web;
