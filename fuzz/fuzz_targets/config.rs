//! Fuzzes config validation: any JSON value must validate or produce
//! field-path errors, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;
use taskmaster::config::{validate, ConfigError};

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    match validate(&value, Path::new("/fuzz")) {
        Ok(config) => {
            for svc in config.services.values() {
                assert!((1..=100).contains(&svc.numprocs));
            }
        }
        Err(ConfigError::Invalid(errors)) => assert!(!errors.is_empty()),
        Err(other) => panic!("unexpected error kind: {other}"),
    }
});
