//! The layout rules of docs/design.md that a reading of the source can
//! check: which module may use which client library, and which modules may
//! not import which. Every `.rs` file under `src/` is scanned; a rule is
//! broken by a path that names the library or module (`rdkafka::…`,
//! `use rumqttc`, `crate::kafka`), not by prose that mentions it
//! ("librdkafka", "rumqttc=warn" in a log filter).

use std::path::{Path, PathBuf};

/// Where names may appear.
struct Rule {
    /// What the rule keeps in one place, for the failure message.
    what: &'static str,
    /// The names looked for.
    names: &'static [Name],
    /// The files the names may appear in.
    allowed: Scope,
}

/// Files, as paths from the crate root; a directory ends in `/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// These files and directories only.
    Only(&'static [&'static str]),
    /// Every file but those of this directory.
    Outside(&'static str),
}

/// A name as code uses it.
#[derive(Clone, Copy)]
enum Name {
    /// An external crate: `name::…`, `use name`, `extern crate name`.
    Crate(&'static str),
    /// A module of this crate: `crate::name`.
    Module(&'static str),
    /// Any module of this crate: `crate::`.
    AnyModule,
}

const RULES: &[Rule] = &[
    Rule {
        what: "librdkafka's bindings are used by the Kafka module only; everything else speaks its facade",
        names: &[Name::Crate("rdkafka")],
        allowed: Scope::Only(&["src/kafka/"]),
    },
    Rule {
        what: "the MQTT client library is used by the MQTT session, the load generator and the demo fleet only",
        names: &[Name::Crate("rumqttc")],
        allowed: Scope::Only(&["src/mqtt/", "src/simulate.rs", "src/simulate/", "src/demo/"]),
    },
    Rule {
        what: "the embedded MQTT broker is for `iotpipe demo` only",
        names: &[Name::Crate("rumqttd")],
        allowed: Scope::Only(&["src/demo/"]),
    },
    Rule {
        what: "the database clients are used by the store module only",
        names: &[
            Name::Crate("tokio_postgres"),
            Name::Crate("tokio_postgres_rustls"),
            Name::Crate("rusqlite"),
            Name::Crate("reqwest"),
        ],
        allowed: Scope::Only(&["src/store/"]),
    },
    Rule {
        what: "dependencies point one way: only the wiring above the components (pipeline, cli, config) imports the Kafka module",
        names: &[Name::Module("kafka")],
        allowed: Scope::Only(&["src/kafka/", "src/pipeline/", "src/cli/", "src/config/"]),
    },
    Rule {
        what: "each pipeline gets its command's settings; only the command line, the demo and the fuzz checks read the assembled configuration file",
        names: &[Name::Module("config")],
        allowed: Scope::Only(&["src/config/", "src/cli/", "src/demo/", "src/fuzzing.rs"]),
    },
    Rule {
        what: "record is the bottom layer: what flows through every stage imports no other module",
        names: &[Name::AnyModule],
        allowed: Scope::Outside("src/record/"),
    },
];

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Whether `line` uses `name` as code does (see [`Name`]).
fn uses(line: &str, name: Name) -> bool {
    let (word, needs_path) = match name {
        Name::Crate(c) => (c, true),
        Name::Module(m) => return module_path(line, Some(m)),
        Name::AnyModule => return module_path(line, None),
    };
    let mut from = 0;
    while let Some(i) = line[from..].find(word).map(|i| i + from) {
        from = i + word.len();
        let before = line[..i].chars().next_back();
        let after = &line[i + word.len()..];
        if before.is_some_and(|c| is_ident(c) || c == '-') || after.chars().next().is_some_and(is_ident) {
            continue;
        }
        let head = line[..i].trim_end();
        let named_in_use = head.ends_with("use") || head.ends_with("extern crate");
        if (needs_path && after.trim_start().starts_with("::")) || named_in_use {
            return true;
        }
    }
    false
}

/// `crate::<module>` (any module when `module` is `None`).
fn module_path(line: &str, module: Option<&str>) -> bool {
    let mut from = 0;
    while let Some(i) = line[from..].find("crate::").map(|i| i + from) {
        from = i + "crate::".len();
        if line[..i].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        let rest = &line[from..];
        let name: String = rest.chars().take_while(|c| is_ident(*c)).collect();
        if !name.is_empty() && module.is_none_or(|m| name == m) {
            return true;
        }
    }
    false
}

fn allowed(file: &str, scope: Scope) -> bool {
    match scope {
        Scope::Only(paths) => paths.iter().any(|p| file.starts_with(p)),
        Scope::Outside(dir) => !file.starts_with(dir),
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap_or_else(|e| panic!("reading {}: {e}", dir.display())).path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every `src/…` file with its text, paths relative to the crate with `/`.
fn sources() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
            let rel = p.strip_prefix(root).unwrap_or(&p).to_string_lossy().replace('\\', "/");
            (rel, text)
        })
        .collect()
}

/// `file:line: text` of every line that breaks `rule`, and whether any
/// allowed file uses the names (a rule nothing uses any more checks nothing).
fn check(rule: &Rule, sources: &[(String, String)]) -> (Vec<String>, bool) {
    let mut broken = Vec::new();
    let mut used_where_allowed = false;
    for (file, text) in sources {
        let ok_here = allowed(file, rule.allowed);
        for (n, line) in text.lines().enumerate() {
            if rule.names.iter().any(|name| uses(line, *name)) {
                if ok_here {
                    used_where_allowed = true;
                } else {
                    broken.push(format!("{file}:{}: {}", n + 1, line.trim()));
                }
            }
        }
    }
    (broken, used_where_allowed)
}

#[test]
fn every_module_rule_holds() {
    let sources = sources();
    assert!(sources.iter().any(|(f, _)| f == "src/lib.rs"), "src/ was not found");
    let mut failures = Vec::new();
    for rule in RULES {
        let (broken, used) = check(rule, &sources);
        if !broken.is_empty() {
            failures.push(format!("{}:\n  {}", rule.what, broken.join("\n  ")));
        }
        assert!(used, "no allowed file uses what this rule is about (renamed?): {}", rule.what);
    }
    assert!(failures.is_empty(), "module rules broken (docs/design.md):\n{}", failures.join("\n"));
}

#[test]
fn the_scan_sees_paths_not_prose() {
    let rdkafka = Name::Crate("rdkafka");
    assert!(uses("use rdkafka::error::KafkaError;", rdkafka));
    assert!(uses("    Kafka(#[from] rdkafka::error::KafkaError),", rdkafka));
    assert!(uses("fn f(e: &::rdkafka::error::KafkaError) {}", rdkafka));
    assert!(uses("use rdkafka as rk;", rdkafka));
    assert!(uses("extern crate rdkafka;", rdkafka));
    assert!(!uses("//! librdkafka appears nowhere else", rdkafka));
    assert!(!uses("// (rust-rdkafka issue #665)", rdkafka));
    assert!(!uses("init_logging(\"info,rumqttc=warn\")", Name::Crate("rumqttc")));
    assert!(!uses("use tokio_postgres_rustls::MakeRustlsConnect;", Name::Crate("tokio_postgres")));

    let kafka = Name::Module("kafka");
    assert!(uses("use crate::kafka::{ClientError, Producer};", kafka));
    assert!(uses("Kafka(#[from] crate::kafka::ClientError),", kafka));
    assert!(!uses("use crate::kafka_topics::X;", kafka));
    assert!(uses("use crate::units::Millis;", Name::AnyModule));
    assert!(!uses("use super::RecordId;", Name::AnyModule));
}

#[test]
fn a_violation_is_reported_with_its_place() {
    let rule = &RULES[0];
    let sources = vec![
        ("src/kafka/producer.rs".to_string(), "use rdkafka::producer::ThreadedProducer;\n".to_string()),
        ("src/pipeline/kafka_forwarder.rs".to_string(), "// x\nfn f(e: &rdkafka::error::KafkaError) {}\n".to_string()),
    ];
    let (broken, used) = check(rule, &sources);
    assert!(used);
    assert_eq!(broken, ["src/pipeline/kafka_forwarder.rs:2: fn f(e: &rdkafka::error::KafkaError) {}"]);

    let record = RULES.iter().find(|r| r.allowed == Scope::Outside("src/record/")).map(|r| {
        check(
            r,
            &[
                ("src/record/mod.rs".to_string(), "use crate::store::StoreRow;\n".to_string()),
                ("src/store/mod.rs".to_string(), "use crate::record::RecordId;\n".to_string()),
            ],
        )
    });
    assert_eq!(record, Some((vec!["src/record/mod.rs:1: use crate::store::StoreRow;".to_string()], true)));
}
