//! The real services of `scripts/services.sh`: `up` runs once per service
//! set a test binary asks for, and [`read_env`] is the one place that parses
//! the env file the script writes (`KEY=VALUE` lines).
//!
//! Self-contained (no `super::`), so examples can include it with `#[path]`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shared state dir: `$IOTPIPE_SERVICES_DIR`, or `<repo>/.services`.
pub fn shared_dir() -> PathBuf {
    std::env::var("IOTPIPE_SERVICES_DIR").map(PathBuf::from).unwrap_or_else(|_| repo().join(".services"))
}

/// The variables of one env file.
#[derive(Debug, Clone)]
pub struct Env {
    vars: HashMap<String, String>,
    file: PathBuf,
}

impl Env {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars.get(key).map(String::as_str)
    }

    /// The value of `key`; panics naming the file when it is missing.
    pub fn require(&self, key: &str) -> &str {
        self.get(key).unwrap_or_else(|| panic!("{key} is not in {}", self.file.display()))
    }
}

/// Parse `<dir>/env`.
pub fn read_env(dir: &Path) -> Env {
    let file = dir.join("env");
    let text = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("services env file {}: {e} (run scripts/services.sh up)", file.display()));
    let vars = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Env { vars, file }
}

/// Run `scripts/services.sh <args>` on the state dir `dir`; panics when it fails.
pub fn script(dir: &Path, args: &[&str]) {
    let status = Command::new("bash")
        .arg(repo().join("scripts/services.sh"))
        .args(args)
        .env("IOTPIPE_SERVICES_DIR", dir)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .expect("run scripts/services.sh");
    assert!(status.success(), "scripts/services.sh {} failed (state dir {})", args.join(" "), dir.display());
}

/// `up` `services` in the state dir `dir` and read its env file.
pub fn up_in(dir: &Path, services: &[&str]) -> Env {
    let mut args = vec!["up"];
    args.extend_from_slice(services);
    script(dir, &args);
    read_env(dir)
}

/// `down` `services` in the state dir `dir`.
pub fn down_in(dir: &Path, services: &[&str]) {
    let mut args = vec!["down"];
    args.extend_from_slice(services);
    script(dir, &args);
}

/// The shared services: `services` are brought up (once per set and
/// process) and the env file is read right after.
pub fn shared(services: &[&str]) -> &'static Env {
    static UP: OnceLock<Mutex<HashMap<Vec<String>, &'static Env>>> = OnceLock::new();
    let mut key: Vec<String> = services.iter().map(|s| s.to_string()).collect();
    key.sort();
    // Held while the script runs: a second test asking for the same set waits for the first.
    let mut up = UP.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    if let Some(env) = up.get(&key) {
        return env;
    }
    let env: &'static Env = Box::leak(Box::new(up_in(&shared_dir(), services)));
    up.insert(key, env);
    env
}
