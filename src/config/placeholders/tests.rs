//! Tables for the placeholder grammar: expansion, detection, checks,
//! escaping, and the parts an export renders.

use super::*;
use std::ffi::OsStr;

#[test]
fn expand_table() {
    let table: &[(&str, u32, &str)] = &[
        // Each form.
        ("{instance}", 0, "0"),
        ("{instance}", 7, "7"),
        ("{instance+8000}", 3, "8003"),
        ("{instance+0}", 3, "3"),
        ("{instance-0}", 3, "3"),
        ("{instance-2}", 5, "3"),
        ("{instance-5}", 5, "0"),
        ("{instance:02}", 0, "00"),
        ("{instance:02}", 1, "01"),
        ("{instance:02}", 12, "12"),
        ("{instance:02}", 123, "123"),
        ("{instance:05}", 42, "00042"),
        ("{instance:00}", 4, "4"),
        ("{instance:0}", 4, "4"),
        ("{instance:010}", 4, "0000000004"),
        ("{instance+8000:05}", 3, "08003"),
        ("{instance-1:03}", 5, "004"),
        ("{service}", 2, "web"),
        ("{name}", 2, "web:2"),
        // In context, several at once.
        (
            "python3 -m http.server {instance+8000}",
            1,
            "python3 -m http.server 8001",
        ),
        ("logs/{name}.log", 1, "logs/web:1.log"),
        ("{service}-{instance}{instance}", 3, "web-33"),
        ("{instance}{{instance}}", 3, "3{instance}"),
        // Escapes.
        ("{{instance}}", 3, "{instance}"),
        ("{{", 0, "{"),
        ("}}", 0, "}"),
        ("{{{instance}}}", 3, "{3}"),
        ("{{}}", 0, "{}"),
        ("{{{{", 0, "{{"),
        ("{instance}}", 3, "3}"),
        ("{{instance}", 3, "{instance}"),
        ("'{\"a\":{\"b\":1}}}}'", 0, "'{\"a\":{\"b\":1}}'"),
        // Other text in braces, unmatched braces: as written.
        ("awk '{print $1}'", 0, "awk '{print $1}'"),
        ("echo ${HOME}", 0, "echo ${HOME}"),
        ("{}", 0, "{}"),
        ("{", 0, "{"),
        ("}", 0, "}"),
        ("a{b", 0, "a{b"),
        ("a}b", 0, "a}b"),
        ("{instance", 4, "{instance"),
        ("instance}", 4, "instance}"),
        ("{ instance }", 4, "{ instance }"),
        ("{Instance}", 4, "{Instance}"),
        ("{instances}", 4, "{instances}"),
        ("{instance+}", 4, "{instance+}"),
        ("{instance-}", 4, "{instance-}"),
        ("{instance+-1}", 4, "{instance+-1}"),
        ("{instance++1}", 4, "{instance++1}"),
        ("{instance+ 1}", 4, "{instance+ 1}"),
        ("{instance*2}", 4, "{instance*2}"),
        ("{instance:5}", 4, "{instance:5}"),
        ("{instance:02x}", 4, "{instance:02x}"),
        ("{instance:+02}", 4, "{instance:+02}"),
        ("{instance:02+1}", 4, "{instance:02+1}"),
        ("{instance+1.5}", 4, "{instance+1.5}"),
        ("{instance+١}", 4, "{instance+١}"),
        ("{{print}", 4, "{print}"),
        ("{a{instance}b}", 4, "{a4b}"),
        ("{x}{instance}", 4, "{x}4"),
        // Out of range stays as written (refused at load).
        (
            "{instance+99999999999999999999}",
            0,
            "{instance+99999999999999999999}",
        ),
        (
            "{instance+9223372036854775807}",
            1,
            "{instance+9223372036854775807}",
        ),
        ("{instance:065}", 1, "{instance:065}"),
        // A negative value (refused at load) is not hidden.
        ("{instance-1}", 0, "-1"),
        // Unicode around and inside braces.
        ("héllo {instance} wörld", 2, "héllo 2 wörld"),
        ("{ünïcode}{instance}→{{", 2, "{ünïcode}2→{"),
        ("日本{name}語", 1, "日本web:1語"),
        // Nothing to do.
        ("", 0, ""),
        ("sleep 1", 0, "sleep 1"),
    ];
    for (template, index, want) in table {
        assert_eq!(
            expand(template, "web", *index),
            *want,
            "{template} @ {index}"
        );
    }
}

#[test]
fn has_placeholders_table() {
    let yes = [
        "{instance}",
        "{instance+1}",
        "{instance:02}",
        "{service}",
        "{name}",
        "{{",
        "}}",
        "a {{b}} c",
        "x {instance-1}",
    ];
    let no = [
        "",
        "sleep 1",
        "awk '{print $1}'",
        "${HOME}",
        "{",
        "}",
        "{instance",
        "{instance:5}",
        "{instance+99999999999999999999}",
    ];
    for s in yes {
        assert!(has_placeholders(s), "{s}");
    }
    for s in no {
        assert!(!has_placeholders(s), "{s}");
        // What has none expands to itself, for any instance.
        assert_eq!(expand(s, "web", 3), s);
    }
}

#[test]
fn check_table() {
    let ok: &[(&str, u32)] = &[
        ("{instance}", 99),
        ("{instance-0}", 0),
        ("{instance+65535}", 99),
        ("{instance:064}", 0),
        ("{instance+9223372036854775807}", 0),
        ("awk '{print $1}' {instance-x}", 0),
        ("{{instance-1}}", 0),
    ];
    for (template, last) in ok {
        assert_eq!(check(template, *last), Ok(()), "{template}");
    }
    let bad: &[(&str, u32, &str)] = &[
        ("{instance-5}", 0, "{instance-5} is negative for instance 0"),
        (
            "x {instance-1:02}",
            9,
            "{instance-1:02} is negative for instance 0",
        ),
        (
            "{instance+99999999999999999999}",
            0,
            "{instance+99999999999999999999} is out of range",
        ),
        (
            "{instance+9223372036854775807}",
            1,
            "{instance+9223372036854775807} is out of range",
        ),
        (
            "{instance:065}",
            0,
            "{instance:065} pads to more than 64 digits (out of range)",
        ),
        (
            "{instance:099999999999999999999}",
            0,
            "{instance:099999999999999999999} pads to more than 64 digits (out of range)",
        ),
        // The first problem is the one reported.
        (
            "{instance-1} {instance-2}",
            0,
            "{instance-1} is negative for instance 0",
        ),
    ];
    for (template, last, want) in bad {
        assert_eq!(check(template, *last), Err(want.to_string()), "{template}");
    }
}

#[test]
fn escape_round_trips() {
    for s in ["/srv/{x}/", "/a/}}/{{", "/plain", "{instance}"] {
        let escaped = escape(s.as_bytes());
        assert_eq!(expand_bytes(&escaped, "web", 1), s.as_bytes(), "{s}");
    }
}

#[test]
fn join_escapes_the_config_folder_only() {
    let t = join(Path::new("/srv/{x}"), "logs/{name}.log");
    assert_eq!(t, PathBuf::from("/srv/{{x}}/logs/{name}.log"));
    assert_eq!(
        expand_path(&t, "web", 1),
        PathBuf::from("/srv/{x}/logs/web:1.log")
    );
    assert_eq!(
        join(Path::new("/srv/{x}"), "/abs/{instance}"),
        PathBuf::from("/abs/{instance}")
    );
    assert_eq!(join(Path::new("/b"), "o.log"), PathBuf::from("/b/o.log"));
}

#[test]
fn paths_need_not_be_utf8() {
    let raw = OsStr::from_bytes(b"/srv/\xff/{name}.log");
    let out = expand_path(Path::new(raw), "web", 1);
    assert_eq!(out.as_os_str().as_bytes(), b"/srv/\xff/web:1.log");
}

#[test]
fn parts_table() {
    use Part::*;
    let t = |s: &str| Text(s.to_string());
    let table: Vec<(&str, Vec<Part>)> = vec![
        ("", vec![]),
        ("sleep 1", vec![t("sleep 1")]),
        (
            "serve {instance+8000} {instance:02}",
            vec![
                t("serve "),
                Instance {
                    offset: 8000,
                    width: 0,
                },
                t(" "),
                Instance {
                    offset: 0,
                    width: 2,
                },
            ],
        ),
        ("{service}/{name}", vec![Service, t("/"), Name]),
        // Escapes and non-placeholders merge into the text around them.
        ("a{{b}}c {x} }", vec![t("a{b}c {x} }")]),
        (
            "{instance+99999999999999999999}",
            vec![t("{instance+99999999999999999999}")],
        ),
    ];
    for (template, want) in table {
        assert_eq!(parts(template), want, "{template}");
    }
    assert!(varies("x {instance}"));
    assert!(varies("logs/{name}.log"));
    assert!(!varies("{service}.log"));
    assert!(!varies("{{instance}}"));
}
