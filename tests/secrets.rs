//! No password, token or private key leaks: secrets given in a URL, in a
//! file and in the environment, to a bridge, a sink and `iotpipe run` that
//! work and to ones that fail (wrong MQTT password, SASL against a broker
//! that does not take it, a store that is down, an unreadable client key),
//! logging at debug level. None of them may appear in any log, `/metrics`,
//! `/readyz`, `/healthz`, `iotpipe check` output or dashboard API answer.
//! Also: the dashboard API's bearer token (missing, wrong, right) and the
//! refusal to serve the API beyond loopback without one.

mod common;

use common::kafka::Tansu;
use common::mqtt::{spawn_publish, GuardedMosquitto};
use common::postgres::{count, Server};
use common::process::{bridge_config, check, sink_config, Iotpipe};
use common::store::fresh_name;
use common::{eventually, http_get_answer as get};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const MQTT_PASSWORD: &str = "mqtt-pw-Q7x2vL";
const WRONG_MQTT_PASSWORD: &str = "wrong-mqtt-pw-Z9kd";
const KAFKA_PASSWORD: &str = "kafka-pw-K3j8Rt";
const PG_PASSWORD: &str = "pg-pw-P5m1Wq";
const TOKEN: &str = "api-token-T4n6Hs";
const WRONG_TOKEN: &str = "wrong-token-W2cB";
const KEY_MATERIAL: &str = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDsecretkeyX9";

/// Every process and every `iotpipe check` here logs at debug level.
const DEBUG: (&str, &str) = ("RUST_LOG", "debug");

const SECRETS: [&str; 7] =
    [MQTT_PASSWORD, WRONG_MQTT_PASSWORD, KAFKA_PASSWORD, PG_PASSWORD, TOKEN, WRONG_TOKEN, KEY_MATERIAL];

/// Fails naming the secret and the line it is on.
fn assert_no_secret(what: &str, text: &str) {
    for s in SECRETS {
        if let Some(line) = text.lines().find(|l| l.contains(s)) {
            panic!("{what} contains the secret `{s}`: {line}");
        }
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write file");
    p
}

/// Every HTTP answer a process gives without the API: metrics, health.
fn scan_http(name: &str, p: &Iotpipe) {
    for path in ["/metrics", "/readyz", "/healthz"] {
        let (_, answer) = get(p.http_port, path, None);
        assert_no_secret(&format!("{name} {path}"), &answer);
    }
}

#[test]
fn no_secret_reaches_logs_metrics_check_output_or_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The bridges connect to the listener that needs user `iot`; publishers to the open one.
    let mqtt = GuardedMosquitto::with_password(d, "iot", MQTT_PASSWORD);
    let kafka = Tansu::start();
    let mqtt_password_file = write(d, "mqtt-password", &format!("{MQTT_PASSWORD}\n"));
    let kafka_password_file = write(d, "kafka-password", KAFKA_PASSWORD);
    let token_file = write(d, "token", &format!("{TOKEN}\n"));
    let bad_key =
        write(d, "client.key", &format!("-----BEGIN PRIVATE KEY-----\n{KEY_MATERIAL}\n-----END PRIVATE KEY-----\n"));
    let auth_url = format!("mqtt://127.0.0.1:{}", mqtt.guarded);
    let user = ("IOTPIPE_MQTT__USERNAME", "iot");
    let pw_file = mqtt_password_file.display().to_string();

    // A bridge that works: the password from a file named in the environment.
    let good_env = [DEBUG, user, ("IOTPIPE_MQTT__PASSWORD_FILE", pw_file.as_str())];
    let good = Iotpipe::start_named(
        d,
        "bridge",
        "bridge-good",
        &bridge_config(&auth_url, &kafka.brokers(), "secrets-good", ""),
        &good_env,
    );
    eventually(Duration::from_secs(30), "the bridge with the right password ready", || good.get("/readyz").0 == 200);

    // One that fails twice: the wrong MQTT password in the environment, and
    // SASL (password from a file) against a broker that does not take it.
    let sasl = format!(
        "[kafka.properties]\n\"security.protocol\" = \"sasl_plaintext\"\n\"sasl.mechanisms\" = \"PLAIN\"\n\
         \"sasl.username\" = \"iotpipe\"\n\"sasl.password_file\" = \"{}\"\n",
        kafka_password_file.display()
    );
    let bad_env = [DEBUG, user, ("IOTPIPE_MQTT__PASSWORD", WRONG_MQTT_PASSWORD)];
    let bad_toml = bridge_config(&auth_url, &kafka.brokers(), "secrets-bad", &sasl);
    let bad = Iotpipe::start_named(d, "bridge", "bridge-bad", &bad_toml, &bad_env);

    // The sink: the store's password in the URL, given in the environment;
    // and one whose store (URL with the password in the file) is down.
    let db = fresh_name("secrets");
    let base = Server::shared().url(&db);
    let with_password = base.replacen("postgres://iotpipe@", &format!("postgres://iotpipe:{PG_PASSWORD}@"), 1);
    assert_ne!(with_password, base, "the shared server's URL names user iotpipe");
    let sink_env = [DEBUG, ("IOTPIPE_STORE__URL", with_password.as_str())];
    let sink = Iotpipe::start_named(d, "sink", "sink-good", &sink_config(&kafka.brokers(), &db).toml(), &sink_env);
    let down = format!("postgres://iotpipe:{PG_PASSWORD}@127.0.0.1:{}/x?sslmode=disable", common::free_port());
    let down_toml = sink_config(&kafka.brokers(), "secrets-down").store(&down).toml();
    let sink_down = Iotpipe::start_named(d, "sink", "sink-down", &down_toml, &[DEBUG]);

    spawn_publish(format!("mqtt://127.0.0.1:{}", mqtt.open), 0..300, None).join().unwrap();
    eventually(Duration::from_secs(90), "300 rows stored", || count(&base, "SELECT count(*) FROM telemetry") == 300);
    eventually(Duration::from_secs(20), "the wrong MQTT password refused and logged", || {
        bad.log_text().contains("NotAuthorized")
    });
    eventually(Duration::from_secs(20), "the sink with its store down says so", || {
        sink_down.get("/readyz").0 == 503 && !sink_down.log_text().is_empty()
    });

    // `iotpipe run` with the token in the environment and in a file.
    let run_toml = |name: &str| {
        format!(
            "[mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\nclient_id = \"secrets-{name}\"\n\
             [store]\nurl = \"sqlite://{db}\"\n[journal]\npath = \"{journal}\"\n\
             [http]\nlisten = \"{{HTTP}}\"\n",
            mqtt.open,
            db = d.join(format!("{name}.db")).display(),
            journal = d.join(format!("{name}-journal")).display(),
        )
    };
    let run = Iotpipe::start_named(d, "run", "run", &run_toml("run"), &[DEBUG, ("IOTPIPE_HTTP__TOKEN", TOKEN)]);
    let tf = token_file.display().to_string();
    let file_env = [DEBUG, ("IOTPIPE_HTTP__TOKEN_FILE", tf.as_str())];
    let run_file = Iotpipe::start_named(d, "run", "run-file", &run_toml("run-file"), &file_env);
    // HTTP answers while the journal recovers, before MQTT is subscribed:
    // publish once both are ready, or the messages reach no subscriber.
    for p in [&run, &run_file] {
        eventually(Duration::from_secs(30), "run ready", || p.get("/readyz").0 == 200);
    }
    spawn_publish(format!("mqtt://127.0.0.1:{}", mqtt.open), 1000..1010, None).join().unwrap();
    for (name, p) in [("run", &run), ("run-file", &run_file)] {
        for path in ["/api/tenants", "/api/health", "/api/tenants/tenant-1/projects", "/api/nowhere"] {
            let (status, answer) = get(p.http_port, path, None);
            assert_eq!(status, 401, "{name} {path} without a token: {answer}");
            assert_no_secret(&format!("{name} {path} without a token"), &answer);
            let (status, answer) = get(p.http_port, path, Some(&format!("Bearer {WRONG_TOKEN}")));
            assert_eq!(status, 401, "{name} {path} with a wrong token: {answer}");
            assert_no_secret(&format!("{name} {path} with a wrong token"), &answer);
            let (status, answer) = get(p.http_port, path, Some(&format!("Basic {TOKEN}")));
            assert_eq!(status, 401, "{name} {path} with the token in a Basic header: {answer}");
            assert_no_secret(&format!("{name} {path} with a Basic header"), &answer);
            let (status, answer) = get(p.http_port, path, Some(&format!("Bearer {TOKEN}")));
            assert_ne!(status, 401, "{name} {path} with the right token: {answer}");
            assert_no_secret(&format!("{name} {path} with the right token"), &answer);
        }
        eventually(Duration::from_secs(30), "run stored the messages", || {
            get(p.http_port, "/api/tenants", Some(&format!("Bearer {TOKEN}"))).1.contains("tenant-")
        });
        scan_http(name, p);
    }

    // `iotpipe check` on each config, with the same environment; and a
    // client key that cannot be parsed.
    let dir_cfg = |name: &str| d.join(format!("{name}.toml"));
    let (code, out) = check(&dir_cfg("bridge-bad"), &[], &bad_env).code_and_text();
    assert_eq!(code, Some(1), "check of the failing bridge: {out}");
    assert_no_secret("iotpipe check (wrong MQTT password, SASL)", &out);
    let (code, out) = check(&dir_cfg("bridge-good"), &[], &good_env).code_and_text();
    assert_eq!(code, Some(0), "check of the working bridge: {out}");
    assert_no_secret("iotpipe check (working bridge)", &out);
    let (code, out) = check(&dir_cfg("sink-down"), &[], &[DEBUG]).code_and_text();
    assert_eq!(code, Some(1), "check of the sink whose store is down: {out}");
    assert!(out.contains("iotpipe:***@") || !out.contains("iotpipe:"), "the URL is shown redacted: {out}");
    assert_no_secret("iotpipe check (store down)", &out);
    let (code, out) = check(&dir_cfg("sink-good"), &[], &sink_env).code_and_text();
    assert_eq!(code, Some(0), "check of the working sink: {out}");
    assert_no_secret("iotpipe check (working sink)", &out);
    let (_, out) =
        check(&dir_cfg("run"), &["--command", "run"], &[DEBUG, ("IOTPIPE_HTTP__TOKEN", TOKEN)]).code_and_text();
    assert_no_secret("iotpipe check (run)", &out);
    let cert = write(d, "client.pem", "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n");
    let key_toml = write(
        d,
        "bridge-key.toml",
        &bridge_config(&format!("mqtts://127.0.0.1:{}", mqtt.guarded), &kafka.brokers(), "secrets-key", "")
            .replace("{HTTP}", "127.0.0.1:0")
            .replace(
                "qos = 1\n",
                &format!(
                    "qos = 1\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"\n",
                    cert.display(),
                    bad_key.display()
                ),
            ),
    );
    let (code, out) = check(&key_toml, &[], &[DEBUG]).code_and_text();
    assert_eq!(code, Some(1), "check with an unparseable client key: {out}");
    assert!(out.contains("client_key_file"), "the key file is named: {out}");
    assert_no_secret("iotpipe check (unparseable client key)", &out);
    let (_, out) = check(&key_toml, &["--offline"], &[DEBUG]).code_and_text();
    assert_no_secret("iotpipe check --offline (unparseable client key)", &out);

    // Every process's HTTP answers, then its whole log.
    for (name, p) in [("bridge-good", &good), ("bridge-bad", &bad), ("sink-good", &sink), ("sink-down", &sink_down)] {
        scan_http(name, p);
    }
    drop((good, bad, sink, sink_down, run, run_file));
    let mut logs = 0;
    for entry in std::fs::read_dir(d).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "log") && !path.ends_with("mosquitto.log") {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(!text.is_empty(), "{} is empty", path.display());
            assert_no_secret(&path.display().to_string(), &text);
            logs += 1;
        }
    }
    assert_eq!(logs, 6, "the six processes' logs were read");
}

#[test]
fn the_api_is_not_served_beyond_loopback_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = common::free_port();
    let toml = |extra: &str| {
        format!(
            "[mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\n[store]\nurl = \"sqlite://{db}\"\n[journal]\npath = \"{j}\"\n\
             [http]\nlisten = \"0.0.0.0:{port}\"\n{extra}",
            common::free_port(),
            db = d.join("x.db").display(),
            j = d.join("journal").display(),
        )
    };
    let refused = write(d, "open.toml", &toml(""));
    let out = Command::new(Iotpipe::binary()).args(["run", "--config"]).arg(&refused).output().expect("iotpipe run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "iotpipe run without a token on 0.0.0.0: {stderr}");
    assert!(stderr.contains("http.token") && stderr.contains("api_without_token"), "{stderr}");
    assert!(!d.join("x.db").exists(), "nothing was started");
    let (code, text) = check(&refused, &["--command", "run", "--offline"], &[DEBUG]).code_and_text();
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("http.token"), "{text}");

    // Told to: it starts (and the API answers without a token).
    let allowed = write(d, "allowed.toml", &toml("api_without_token = true\n"));
    let mut child = Command::new(Iotpipe::binary())
        .args(["run", "--config"])
        .arg(&allowed)
        .stderr(Stdio::null())
        .spawn()
        .expect("iotpipe run");
    common::wait_for_port(port, Duration::from_secs(15));
    // The API is mounted once the store is open (503 "starting" before).
    eventually(Duration::from_secs(15), "the API answers", || get(port, "/api/tenants", None).0 != 503);
    let (status, answer) = get(port, "/api/tenants", None);
    assert_eq!(status, 200, "{answer}");
    common::signal(child.id(), "TERM");
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0));

    // With a token it starts too, and the token is needed.
    let with_token = write(d, "token.toml", &toml(&format!("token = \"{TOKEN}\"\n")));
    let (code, text) = check(&with_token, &["--command", "run", "--offline"], &[DEBUG]).code_and_text();
    assert_eq!(code, Some(0), "{text}");
}
