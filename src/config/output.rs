//! The output options of SPEC §10 — `stdout_maxbytes`, `stderr_maxbytes`,
//! `stdout_backups`, `stderr_backups`, `redirect_stderr`, `timestamps` — read
//! into a service's [`SpawnSpec`].
//!
//! They sit apart from the §3 options in `mod.rs` because sizes have a small
//! grammar of their own ([`size`]) and because `redirect_stderr` constrains
//! another option (`stderr`). Being spawn options, a change to any of them
//! restarts the service's instances on reload (`supervisor/reload.rs`
//! compares `SpawnSpec`s).
//!
//! Accepted sizes: a JSON/Lua integer number of bytes, or a string of ASCII
//! digits followed by an optional unit — `B`, `K`/`KB`/`KiB`, `M`/`MB`/`MiB`,
//! `G`/`GB`/`GiB`, any case, 1024-based, optionally after spaces (`"50MB"`,
//! `"50 mb"`, `"512k"`, `"1024"`). Whole numbers only: no fraction, no sign,
//! no exponent, no `_`. At most `i64::MAX` bytes (see [`MAX_BYTES`]).

use serde_json::{Map, Value};

use super::fields::{boolean, int_in, kind, Problems};
use super::SpawnSpec;

/// The option names this file reads, for the unknown-option check and its
/// suggestions.
pub(super) const KEYS: &[&str] = &[
    "stdout_maxbytes",
    "stderr_maxbytes",
    "stdout_backups",
    "stderr_backups",
    "redirect_stderr",
    "timestamps",
];

/// The largest `*_maxbytes`: a file offset (`off_t`, signed 64-bit) cannot
/// go past it, so a larger limit could never be reached anyway.
pub(super) const MAX_BYTES: u64 = i64::MAX as u64;

/// The most `*_backups`: every rotation renames each kept backup once, so
/// the count bounds the work of one rotation; 1000 files is far beyond any
/// real need (supervisord's default is 10).
pub(super) const MAX_BACKUPS: i64 = 1000;

/// What a size that does not parse is told; names the units so nobody has to
/// guess whether `"50M"` or `"50MiB"` works (both do).
const SIZE_EXPECTED: &str =
    "expected bytes (an integer) or a size such as \"50MB\" (B, KB, MB or GB, 1024-based)";

/// Reads the §10 options of the service table `obj` (at `path`) into `spawn`,
/// whose `stderr` must already be read: `redirect_stderr` forbids it.
pub(super) fn read(obj: &Map<String, Value>, path: &str, spawn: &mut SpawnSpec, p: &mut Problems) {
    // null means "not given", as for every other option.
    let field = |name: &str| obj.get(name).filter(|v| !v.is_null());
    let at = |name: &str| format!("{path}.{name}");

    if let Some(v) = field("stdout_maxbytes") {
        if let Some(n) = size(v, &at("stdout_maxbytes"), p) {
            spawn.stdout_rotation.maxbytes = n;
        }
    }
    if let Some(v) = field("stderr_maxbytes") {
        if let Some(n) = size(v, &at("stderr_maxbytes"), p) {
            spawn.stderr_rotation.maxbytes = n;
        }
    }
    if let Some(v) = field("stdout_backups") {
        if let Some(n) = backups(v, &at("stdout_backups"), p) {
            spawn.stdout_rotation.backups = n;
        }
    }
    if let Some(v) = field("stderr_backups") {
        if let Some(n) = backups(v, &at("stderr_backups"), p) {
            spawn.stderr_rotation.backups = n;
        }
    }
    if let Some(v) = field("redirect_stderr") {
        spawn.redirect_stderr = boolean(v, &at("redirect_stderr"), p).unwrap_or(false);
    }
    if let Some(v) = field("timestamps") {
        spawn.timestamps = boolean(v, &at("timestamps"), p).unwrap_or(false);
    }
    // Two destinations for one stream would leave one of them silently
    // unused; SPEC §10 makes it an error. The `stderr_*` rotation options are
    // left alone: supervisord ignores them too, and §10 forbids only `stderr`.
    if spawn.redirect_stderr && spawn.stderr.is_some() {
        p.add(
            &at("stderr"),
            "must be unset when redirect_stderr is true (stderr then goes to the stdout file)",
        );
    }
}

fn backups(v: &Value, path: &str, p: &mut Problems) -> Option<u32> {
    // MAX_BACKUPS fits a u32, so the conversion cannot fail once in range.
    int_in(v, path, 0, MAX_BACKUPS, p).and_then(|n| u32::try_from(n).ok())
}

/// Reads a byte count (see the module header for the spellings), or records
/// why it is not one.
pub(super) fn size(v: &Value, path: &str, p: &mut Problems) -> Option<u64> {
    match bytes(v) {
        Ok(n) => Some(n),
        Err(why) => {
            let expected = match why {
                Bad::Shape => SIZE_EXPECTED.to_string(),
                Bad::Negative => "must not be negative".to_string(),
                Bad::TooLarge => format!("must be at most {MAX_BYTES} bytes"),
            };
            p.add(path, format!("{expected}, got {}", kind(v)));
            None
        }
    }
}

/// Why a value is not a size.
#[derive(Debug, PartialEq)]
enum Bad {
    /// Not a whole number of bytes, nor a string of the size grammar.
    Shape,
    /// Below zero.
    Negative,
    /// Above [`MAX_BYTES`].
    TooLarge,
}

fn bytes(v: &Value) -> Result<u64, Bad> {
    match v {
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                return at_most(u);
            }
            // Not a u64: negative, or a float (Lua `2.0`, JSON `1e6`), which
            // counts when it is a whole number, as for every integer option.
            let f = n.as_f64().ok_or(Bad::Shape)?;
            if f < 0.0 {
                Err(Bad::Negative)
            } else if f.fract() != 0.0 {
                Err(Bad::Shape)
            } else if f >= 9_223_372_036_854_775_808.0 {
                // 2^63: every whole float below it converts exactly.
                Err(Bad::TooLarge)
            } else {
                Ok(f as u64)
            }
        }
        Value::String(s) => parse_size(s),
        _ => Err(Bad::Shape),
    }
}

fn at_most(n: u64) -> Result<u64, Bad> {
    if n <= MAX_BYTES {
        Ok(n)
    } else {
        Err(Bad::TooLarge)
    }
}

/// The string grammar: digits, optional spaces, optional unit.
fn parse_size(s: &str) -> Result<u64, Bad> {
    let t = s.trim();
    if let Some(rest) = t.strip_prefix('-') {
        // "-5MB" reads as a size below zero: say that rather than "bad shape".
        return match parse_size(rest) {
            Err(Bad::Shape) => Err(Bad::Shape),
            _ => Err(Bad::Negative),
        };
    }
    let end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(end);
    if digits.is_empty() {
        return Err(Bad::Shape);
    }
    let shift = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(Bad::Shape),
    };
    // Only ASCII digits are left, so the one way parse fails is overflow.
    let n: u64 = digits.parse().map_err(|_| Bad::TooLarge)?;
    n.checked_mul(1 << shift)
        .ok_or(Bad::TooLarge)
        .and_then(at_most)
}

#[cfg(test)]
mod tests {
    use super::super::{json, lua, validate, Config, ConfigError, Rotation};
    use super::*;
    use serde_json::json;
    use std::path::Path;

    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * 1024;
    const GIB: u64 = 1024 * 1024 * 1024;

    #[test]
    fn size_table() {
        let good: &[(Value, u64)] = &[
            (json!(0), 0),
            (json!(1), 1),
            (json!(52428800), 50 * MIB),
            (json!(2.0), 2),
            (json!(1e6), 1_000_000),
            (json!(9223372036854775807u64), MAX_BYTES),
            (json!("0"), 0),
            (json!("1024"), 1024),
            (json!("0MB"), 0),
            (json!("10B"), 10),
            (json!("10b"), 10),
            (json!("500KB"), 500 * KIB),
            (json!("500kb"), 500 * KIB),
            (json!("500K"), 500 * KIB),
            (json!("500k"), 500 * KIB),
            (json!("500KiB"), 500 * KIB),
            (json!("50MB"), 50 * MIB),
            (json!("50Mb"), 50 * MIB),
            (json!("50M"), 50 * MIB),
            (json!("50MiB"), 50 * MIB),
            (json!("50 MB"), 50 * MIB),
            (json!("  50  mb "), 50 * MIB),
            (json!("1GB"), GIB),
            (json!("1g"), GIB),
            (json!("1GiB"), GIB),
            (json!("8589934591GB"), 8_589_934_591 * GIB),
        ];
        for (v, want) in good {
            let mut p = Problems::default();
            assert_eq!(size(v, "x", &mut p), Some(*want), "{v}");
            assert_eq!(p.count(), 0, "{v}: {:?}", p.into_vec());
        }

        let shape = SIZE_EXPECTED;
        let too_large = "must be at most 9223372036854775807 bytes";
        let bad: &[(Value, String)] = &[
            (json!(-1), "must not be negative, got number -1".into()),
            (json!(-1.5), "must not be negative, got number -1.5".into()),
            (json!(1.5), format!("{shape}, got number 1.5")),
            (
                json!(9223372036854775808u64),
                format!("{too_large}, got number 9223372036854775808"),
            ),
            (json!(1e300), format!("{too_large}, got number 1e+300")),
            (json!(true), format!("{shape}, got boolean true")),
            (json!([1]), format!("{shape}, got a list")),
            (json!({"a": 1}), format!("{shape}, got a table")),
            (json!(""), format!("{shape}, got string \"\"")),
            (json!("MB"), format!("{shape}, got string \"MB\"")),
            (json!("50XB"), format!("{shape}, got string \"50XB\"")),
            (json!("50TB"), format!("{shape}, got string \"50TB\"")),
            (json!("50 M B"), format!("{shape}, got string \"50 M B\"")),
            (json!("1.5MB"), format!("{shape}, got string \"1.5MB\"")),
            (json!("1e6"), format!("{shape}, got string \"1e6\"")),
            (json!("+5MB"), format!("{shape}, got string \"+5MB\"")),
            (json!("1_000"), format!("{shape}, got string \"1_000\"")),
            (
                json!("-5MB"),
                "must not be negative, got string \"-5MB\"".into(),
            ),
            (json!("-x"), format!("{shape}, got string \"-x\"")),
            (
                json!("8589934592GB"),
                format!("{too_large}, got string \"8589934592GB\""),
            ),
            (
                json!("99999999999999999999"),
                format!("{too_large}, got string \"99999999999999999999\""),
            ),
            (
                json!("9223372036854775808"),
                format!("{too_large}, got string \"9223372036854775808\""),
            ),
        ];
        for (v, want) in bad {
            let mut p = Problems::default();
            assert_eq!(size(v, "x", &mut p), None, "{v}");
            assert_eq!(p.into_vec(), vec![format!("x: {want}")], "{v}");
        }
    }

    fn web(options: Value) -> Result<Config, ConfigError> {
        let mut svc = json!({"cmd": "x"});
        if let (Some(s), Some(o)) = (svc.as_object_mut(), options.as_object()) {
            s.extend(o.clone());
        }
        validate(&json!({"services": {"web": svc}}), Path::new("/b"))
    }

    fn spawn(options: Value) -> SpawnSpec {
        match web(options.clone()) {
            Ok(c) => c.services["web"].spawn.clone(),
            Err(e) => panic!("{options}: {e}"),
        }
    }

    fn errors(options: Value) -> Vec<String> {
        match web(options.clone()) {
            Err(ConfigError::Invalid(e)) => e,
            other => panic!("{options}: expected schema errors, got {other:?}"),
        }
    }

    #[test]
    fn defaults_when_absent() {
        for options in [
            json!({}),
            json!({"stdout_maxbytes": null, "timestamps": null}),
        ] {
            let s = spawn(options);
            // SPEC §10: "50MB" and 10 backups for each stream, both flags off.
            let want = Rotation {
                maxbytes: 50 * MIB,
                backups: 10,
            };
            assert_eq!(Rotation::default(), want);
            assert_eq!(s.stdout_rotation, want);
            assert_eq!(s.stderr_rotation, want);
            assert!(!s.redirect_stderr);
            assert!(!s.timestamps);
        }
    }

    #[test]
    fn maxbytes_good_and_bad() {
        for stream in ["stdout", "stderr"] {
            let key = format!("{stream}_maxbytes");
            let rotation = |s: &SpawnSpec| match stream {
                "stdout" => s.stdout_rotation,
                _ => s.stderr_rotation,
            };
            for (v, want) in [
                (json!(0), 0),
                (json!(1000), 1000),
                (json!("500KB"), 500 * KIB),
                (json!("1GB"), GIB),
            ] {
                let s = spawn(json!({ key.as_str(): v }));
                assert_eq!(rotation(&s).maxbytes, want, "{key} = {v}");
                // The other half of the rotation keeps its default.
                assert_eq!(rotation(&s).backups, 10);
            }
            let path = format!("services.web.{key}");
            for (v, want) in [
                (json!(-1), format!("{path}: must not be negative, got number -1")),
                (json!("50XB"), format!("{path}: {SIZE_EXPECTED}, got string \"50XB\"")),
                (json!(0.5), format!("{path}: {SIZE_EXPECTED}, got number 0.5")),
                (
                    json!("9000000000GB"),
                    format!(
                        "{path}: must be at most 9223372036854775807 bytes, got string \"9000000000GB\""
                    ),
                ),
            ] {
                assert_eq!(errors(json!({ key.as_str(): v })), vec![want], "{key} = {v}");
            }
        }
        // The exact sentence a user sees, spelled out once.
        assert_eq!(
            errors(json!({"stdout_maxbytes": "50XB"})),
            vec!["services.web.stdout_maxbytes: expected bytes (an integer) or a size such as \"50MB\" (B, KB, MB or GB, 1024-based), got string \"50XB\""]
        );
    }

    #[test]
    fn backups_good_and_bad() {
        for stream in ["stdout", "stderr"] {
            let key = format!("{stream}_backups");
            let rotation = |s: &SpawnSpec| match stream {
                "stdout" => s.stdout_rotation,
                _ => s.stderr_rotation,
            };
            for (v, want) in [
                (json!(0), 0),
                (json!(3), 3),
                (json!(2.0), 2),
                (json!(1000), 1000),
            ] {
                let s = spawn(json!({ key.as_str(): v }));
                assert_eq!(rotation(&s).backups, want, "{key} = {v}");
                assert_eq!(rotation(&s).maxbytes, 50 * MIB);
            }
            let path = format!("services.web.{key}");
            for (v, want) in [
                (
                    json!(-1),
                    format!("{path}: must be between 0 and 1000, got -1"),
                ),
                (
                    json!(1001),
                    format!("{path}: must be between 0 and 1000, got 1001"),
                ),
                (
                    json!(1.5),
                    format!("{path}: expected an integer, got number 1.5"),
                ),
                (
                    json!("3"),
                    format!("{path}: expected an integer, got string \"3\""),
                ),
            ] {
                assert_eq!(
                    errors(json!({ key.as_str(): v })),
                    vec![want],
                    "{key} = {v}"
                );
            }
        }
    }

    #[test]
    fn flags_good_and_bad() {
        for key in ["redirect_stderr", "timestamps"] {
            let flag = |s: &SpawnSpec| match key {
                "redirect_stderr" => s.redirect_stderr,
                _ => s.timestamps,
            };
            assert!(flag(&spawn(json!({ key: true }))), "{key}");
            assert!(!flag(&spawn(json!({ key: false }))), "{key}");
            for (v, got) in [(json!("yes"), "string \"yes\""), (json!(1), "number 1")] {
                assert_eq!(
                    errors(json!({ key: v })),
                    vec![format!(
                        "services.web.{key}: expected true or false, got {got}"
                    )]
                );
            }
        }
    }

    #[test]
    fn redirect_stderr_forbids_stderr() {
        // stdout set or not, an explicit null stderr is "unset".
        let s = spawn(json!({"redirect_stderr": true, "stdout": "out.log", "stderr": null}));
        assert!(s.redirect_stderr);
        assert_eq!(s.stderr, None);
        assert!(spawn(json!({"redirect_stderr": true})).redirect_stderr);
        // Without the flag, both files are fine.
        spawn(json!({"redirect_stderr": false, "stderr": "err.log"}));

        assert_eq!(
            errors(json!({"redirect_stderr": true, "stdout": "out.log", "stderr": "err.log"})),
            vec!["services.web.stderr: must be unset when redirect_stderr is true (stderr then goes to the stdout file)"]
        );
        // A stderr that is already wrong is reported once, for what is wrong.
        assert_eq!(
            errors(json!({"redirect_stderr": true, "stderr": 5})),
            vec!["services.web.stderr: expected a path or null, got number 5"]
        );
    }

    #[test]
    fn unknown_options_suggest_the_output_ones() {
        for (typo, near) in [
            ("stdout_maxbyte", "stdout_maxbytes"),
            ("stderr_max_bytes", "stderr_maxbytes"),
            ("stdout_backup", "stdout_backups"),
            ("redirect_stdout", "redirect_stderr"),
            ("timestamp", "timestamps"),
        ] {
            assert_eq!(
                errors(json!({ typo: 1 })),
                vec![format!(
                    "unknown option \"{typo}\" in services.web — did you mean \"{near}\"?"
                )]
            );
        }
    }

    #[test]
    fn every_problem_of_a_service_at_once() {
        let e = errors(json!({
            "stdout_maxbytes": "big", "stderr_maxbytes": -2, "stdout_backups": 5000,
            "stderr_backups": "x", "redirect_stderr": true, "stderr": "e.log", "timestamps": "no"
        }));
        let p = "services.web";
        assert_eq!(
            e,
            vec![
                format!("{p}.stdout_maxbytes: {SIZE_EXPECTED}, got string \"big\""),
                format!("{p}.stderr_maxbytes: must not be negative, got number -2"),
                format!("{p}.stdout_backups: must be between 0 and 1000, got 5000"),
                format!("{p}.stderr_backups: expected an integer, got string \"x\""),
                format!("{p}.timestamps: expected true or false, got string \"no\""),
                format!("{p}.stderr: must be unset when redirect_stderr is true (stderr then goes to the stdout file)"),
            ]
        );
    }

    /// The JSON front-end: text through `json::parse`, then the same validator.
    #[test]
    fn json_configs() {
        let text = r#"{"services": {"web": {
            "cmd": "x", "stdout": "out.log",
            "stdout_maxbytes": "500KB", "stderr_maxbytes": 1048576,
            "stdout_backups": 0, "stderr_backups": 3,
            "redirect_stderr": true, "timestamps": true
        }}}"#;
        let value = json::parse(text, Path::new("conf.json")).unwrap();
        let s = validate(&value, Path::new("/b")).unwrap().services["web"]
            .spawn
            .clone();
        assert_eq!(
            s.stdout_rotation,
            Rotation {
                maxbytes: 500 * KIB,
                backups: 0
            }
        );
        assert_eq!(
            s.stderr_rotation,
            Rotation {
                maxbytes: MIB,
                backups: 3
            }
        );
        assert!(s.redirect_stderr && s.timestamps);

        let text = r#"{"services": {"web": {"cmd": "x", "stdout_maxbytes": "50XB",
            "redirect_stderr": true, "stderr": "e.log"}}}"#;
        let value = json::parse(text, Path::new("conf.json")).unwrap();
        let err = validate(&value, Path::new("/b")).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "services.web.stdout_maxbytes: {SIZE_EXPECTED}, got string \"50XB\"\n\
                 services.web.stderr: must be unset when redirect_stderr is true (stderr then goes to the stdout file)"
            )
        );
    }

    /// The Lua front-end: integers, floats and strings arrive as the validator
    /// expects them.
    #[test]
    fn lua_configs() {
        let dir = std::env::temp_dir().join(format!("tm-config-output-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("taskmaster.lua");
        std::fs::write(
            &file,
            "return { services = { web = { cmd = 'x', stdout_maxbytes = '50 mb',\n\
             stderr_maxbytes = 2 * 1024, stdout_backups = 4.0, timestamps = true } } }",
        )
        .unwrap();
        let s = lua::load(&file).unwrap().config.services["web"]
            .spawn
            .clone();
        assert_eq!(s.stdout_rotation.maxbytes, 50 * MIB);
        assert_eq!(s.stderr_rotation.maxbytes, 2 * KIB);
        assert_eq!(s.stdout_rotation.backups, 4);
        assert!(s.timestamps);

        std::fs::write(
            &file,
            "return { services = { web = { cmd = 'x', stderr_backups = 1.5 } } }",
        )
        .unwrap();
        let err = lua::load(&file).err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("services.web.stderr_backups: expected an integer, got number 1.5")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
