//! One integration test binary (fast to link) with a module per area.

mod cli;
mod common;
mod engine;
mod faults;
mod hooks;
mod lua;
mod reload;
mod server;
