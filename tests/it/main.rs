//! One integration test binary (fast to link) with a module per area.

mod common;
mod engine;
mod hooks;
mod reload;
mod server;
