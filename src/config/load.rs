//! Reading the config: TOML file, then the environment overlay, then
//! secrets from `*_file` keys, then validation. Every failure names the key.

use super::{validate, Command, Config};
use crate::pipeline::{RunConfig, RunSettings};
use std::collections::BTreeMap;
use std::path::Path;
use toml::Value;

/// Prefix of environment overrides: `IOTPIPE_MQTT__URL` sets `mqtt.url`.
const ENV_PREFIX: &str = "IOTPIPE_";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: String, message: String },
    #[error("config key `{key}`{origin}: {message}")]
    Key { key: String, origin: String, message: String },
}

impl ConfigError {
    pub(crate) fn key(key: &str, message: impl Into<String>) -> Self {
        Self::Key { key: key.to_string(), origin: String::new(), message: message.into() }
    }

    /// A section's own validation error, with the section's name in front of the key.
    pub(crate) fn in_section(section: &str, e: crate::units::KeyError) -> Self {
        Self::key(&format!("{section}.{}", e.key), e.message)
    }
}

/// Load `path` (or only defaults and environment when `None`) for
/// `command`, with the process environment as overlay.
pub fn load(path: Option<&Path>, command: Command) -> Result<Config, ConfigError> {
    let (text, name) = match path {
        Some(p) => (
            std::fs::read_to_string(p).map_err(|source| ConfigError::Read { path: p.display().to_string(), source })?,
            p.display().to_string(),
        ),
        None => (String::new(), "(defaults)".to_string()),
    };
    load_layers(&text, &name, std::env::vars(), Some(command))
}

/// Load from TOML text and an explicit environment (testable without
/// touching the process), for no command in particular: every section with
/// its own defaults.
pub fn load_str(
    text: &str,
    name: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    load_layers(text, name, env, None)
}

/// As [`load_str`], for `command`: its own defaults where they differ
/// (`run` stores to SQLite) and its own rules (`run` refuses the keys it
/// used to borrow from `[sink]` and `[bridge]`).
pub fn load_str_for(
    text: &str,
    name: &str,
    env: impl IntoIterator<Item = (String, String)>,
    command: Command,
) -> Result<Config, ConfigError> {
    load_layers(text, name, env, Some(command))
}

fn load_layers(
    text: &str,
    name: &str,
    env: impl IntoIterator<Item = (String, String)>,
    command: Option<Command>,
) -> Result<Config, ConfigError> {
    let mut root: Value = toml::from_str::<toml::Table>(text)
        .map(Value::Table)
        .map_err(|e| ConfigError::Syntax { path: name.to_string(), message: e.to_string() })?;
    let mut origins: BTreeMap<String, String> = BTreeMap::new();
    for (var, raw) in env {
        let Some(path) = env_path(&var) else { continue };
        origins.insert(path.join("."), var.clone());
        set_path(&mut root, &path, env_value(&raw)).map_err(|message| ConfigError::Key {
            key: path.join("."),
            origin: format!(" (from {var})"),
            message,
        })?;
    }
    let origin_of = |key: &str| origins.get(key).map(|v| format!(" (from {v})")).unwrap_or_default();
    if command == Some(Command::Run) {
        run_rules(&mut root).map_err(|(key, message)| ConfigError::Key { origin: origin_of(&key), key, message })?;
    }
    let mut config: Config = serde_path_to_error::deserialize(root).map_err(|e| {
        let key = e.path().to_string();
        let origin = origin_of(&key);
        let key = if key == "." { "(top level)".to_string() } else { key };
        ConfigError::Key { key, origin, message: first_line(&e.into_inner().to_string()) }
    })?;
    let with_origin = |e: ConfigError| match e {
        ConfigError::Key { key, origin, message } if origin.is_empty() => {
            ConfigError::Key { origin: origin_of(&key), key, message }
        }
        other => other,
    };
    resolve_secret_files(&mut config).map_err(with_origin)?;
    validate::validate(&config).map_err(with_origin)?;
    Ok(config)
}

/// What `iotpipe run` does to the file (with the environment) before it is read: a key it
/// used to borrow from `[sink]` or `[bridge]`, in a file without `[run]`,
/// is an error naming the key that replaces it (the value would otherwise
/// be ignored without a word); `store.url` defaults to
/// [`RunSettings::DEFAULT_STORE_URL`].
fn run_rules(root: &mut Value) -> Result<(), (String, String)> {
    if get_path(root, &["run"]).is_none() {
        for (old, new) in RunConfig::MOVED_KEYS {
            let path: Vec<&str> = old.split('.').collect();
            if get_path(root, &path).is_some() {
                return Err((
                    old.to_string(),
                    format!(
                        "`iotpipe run` does not read this key; set `{new}` instead (a file shared with another \
                         command keeps `{old}` for it and adds a `[run]` section)"
                    ),
                ));
            }
        }
    }
    if get_path(root, &["store", "url"]).is_none() {
        let url = Value::String(RunSettings::DEFAULT_STORE_URL.to_string());
        set_path(root, &["store".to_string(), "url".to_string()], url)
            .map_err(|message| ("store.url".to_string(), message))?;
    }
    Ok(())
}

fn get_path<'a>(root: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(root, |cur, part| cur.as_table()?.get(*part))
}

/// `IOTPIPE_KAFKA__PROPERTIES__SECURITY_PROTOCOL` -> `kafka.properties.security.protocol`:
/// sections and keys are lower-cased; under `kafka.properties` `_` becomes `.`
/// because librdkafka property names are dotted.
fn env_path(var: &str) -> Option<Vec<String>> {
    let rest = var.strip_prefix(ENV_PREFIX)?;
    if !rest.contains("__") {
        return None;
    }
    let mut parts: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
    if parts.iter().any(|p| p.is_empty()) {
        return None;
    }
    if parts.len() == 3 && parts[0] == "kafka" && parts[1] == "properties" {
        parts[2] = parts[2].replace('_', ".");
    }
    Some(parts)
}

/// Environment values are strings; booleans, integers, arrays and inline
/// tables written in TOML syntax are understood as such.
fn env_value(raw: &str) -> Value {
    let t = raw.trim();
    if t.starts_with('[') || t.starts_with('{') {
        if let Ok(table) = toml::from_str::<toml::Table>(&format!("v = {t}")) {
            if let Some(v) = table.get("v") {
                return v.clone();
            }
        }
    }
    match t {
        "true" => return Value::Boolean(true),
        "false" => return Value::Boolean(false),
        _ => {}
    }
    if !t.is_empty() && t.len() < 19 && t.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(n) = t.parse::<i64>() {
            return Value::Integer(n);
        }
    }
    Value::String(raw.to_string())
}

fn set_path(root: &mut Value, path: &[String], value: Value) -> Result<(), String> {
    let mut cur = root;
    for (i, part) in path.iter().enumerate() {
        let table = cur.as_table_mut().ok_or_else(|| "is not a table in the config file".to_string())?;
        if i + 1 == path.len() {
            table.insert(part.clone(), value);
            return Ok(());
        }
        cur = table.entry(part.clone()).or_insert_with(|| Value::Table(toml::Table::new()));
    }
    Ok(())
}

/// The deserializer's message without the `in <key>` line it may append
/// (the key is reported separately): errors stay on one line.
fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or("").trim().to_string()
}

fn resolve_secret_files(config: &mut Config) -> Result<(), ConfigError> {
    let section = |name: &'static str| move |e: crate::units::KeyError| ConfigError::in_section(name, e);
    config.mqtt.resolve_secrets().map_err(section("mqtt"))?;
    config.http.resolve_secrets().map_err(section("http"))?;
    config.kafka.resolve_secrets().map_err(section("kafka"))?;
    config.sink.resolve_secrets().map_err(section("sink"))?;
    Ok(())
}
