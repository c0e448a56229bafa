//! TLS to MQTT and to PostgreSQL with certificates made at test time:
//! Mosquitto requiring a client certificate, and PostgreSQL with `ssl = on`
//! reached with `sslmode=verify-full`. What works delivers every message;
//! a missing client certificate or a CA that did not sign the server is a
//! clear FAIL from `iotpipe check` and a process that stays up, not ready.

mod common;

use common::kafka::Tansu;
use common::mqtt::{spawn_publish, GuardedMosquitto};
use common::postgres::{count, query, PrivatePostgres};
use common::process::{bridge_config, check, write_config, Iotpipe};
use common::tls::Certs;
use common::{eventually, is_root};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The bridge config with TLS settings in `[mqtt]`.
fn tls_bridge(url: &str, brokers: &str, id: &str, mqtt_tls: &str) -> String {
    bridge_config(url, brokers, id, "").replace("qos = 1\n", &format!("qos = 1\n{mqtt_tls}"))
}

#[test]
fn mqtt_over_tls_with_a_client_certificate_delivers_and_is_refused_without() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let certs = Certs::generate(d);
    // A plain listener for the test's publisher, and a TLS listener that
    // requires a client certificate signed by the test CA.
    let mqtt = GuardedMosquitto::with_client_certificate(d, &certs.ca, &certs.server_cert, &certs.server_key);
    let kafka = Tansu::start();
    let url = format!("mqtts://127.0.0.1:{}", mqtt.guarded);
    let with_cert = format!(
        "ca_file = \"{}\"\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"\n",
        certs.ca.display(),
        certs.client_cert.display(),
        certs.client_key.display()
    );
    let b =
        Iotpipe::start_named(d, "bridge", "bridge-tls", &tls_bridge(&url, &kafka.brokers(), "tls-ok", &with_cert), &[]);
    eventually(Duration::from_secs(30), "the bridge ready over MQTT TLS", || b.get("/readyz").0 == 200);
    spawn_publish(mqtt.open_url(), 0..500, None).join().unwrap();
    eventually(Duration::from_secs(60), "500 messages delivered", || {
        b.metric("iotpipe_messages_delivered_total") == 500.0
    });
    let (code, out) = check(&d.join("bridge-tls.toml"), &[], &[]).code_and_text();
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(&format!("ok    mqtt     {url} connected")), "{out}");

    // No client certificate: the broker ends the handshake.
    let no_cert = format!("ca_file = \"{}\"\n", certs.ca.display());
    let n = Iotpipe::start_named(
        d,
        "bridge",
        "bridge-nocert",
        &tls_bridge(&url, &kafka.brokers(), "tls-no", &no_cert),
        &[],
    );
    let (code, out) = check(&d.join("bridge-nocert.toml"), &[], &[]).code_and_text();
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("FAIL  mqtt"), "{out}");
    // A CA that did not sign the broker's certificate.
    let wrong_ca = with_cert.replace(&certs.ca.display().to_string(), &certs.other_ca.display().to_string());
    let w = Iotpipe::start_named(
        d,
        "bridge",
        "bridge-wrongca",
        &tls_bridge(&url, &kafka.brokers(), "tls-ca", &wrong_ca),
        &[],
    );
    let (code, out) = check(&d.join("bridge-wrongca.toml"), &[], &[]).code_and_text();
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("FAIL  mqtt") && out.to_lowercase().contains("certificate"), "names the certificate: {out}");
    std::thread::sleep(Duration::from_secs(3));
    for (name, p) in [("without a client certificate", &n), ("with the wrong CA", &w)] {
        assert_eq!(p.get("/healthz").0, 200, "the bridge {name} is alive");
        assert_eq!(p.get("/readyz").0, 503, "the bridge {name} is not ready");
        assert_eq!(p.metric("iotpipe_mqtt_connected"), 0.0, "the bridge {name} is not connected");
    }
    assert!(w.log_text().to_lowercase().contains("certificate"), "the log says why: {}", w.log_text());
}

/// The private cluster with `ssl = on` and the test server certificate.
fn enable_ssl(pg: &PrivatePostgres, certs: &Certs) {
    let tls_dir = pg.dir.path().join("tls");
    std::fs::create_dir_all(&tls_dir).unwrap();
    let cert = tls_dir.join("server.crt");
    let key = tls_dir.join("server.key");
    std::fs::copy(&certs.server_cert, &cert).unwrap();
    std::fs::copy(&certs.server_key, &key).unwrap();
    let chmod = |mode: &str, p: &Path| {
        assert!(Command::new("chmod").arg(mode).arg(p).status().unwrap().success());
    };
    chmod("755", pg.dir.path());
    chmod("755", &tls_dir);
    chmod("600", &key);
    // The cluster runs as the `postgres` user when the tests run as root.
    if is_root() {
        assert!(Command::new("chown").args(["-R", "postgres:"]).arg(&tls_dir).status().unwrap().success());
    }
    let url = pg.url("postgres");
    let out = Command::new("psql")
        .arg(&url)
        .args(["-qAt", "-v", "ON_ERROR_STOP=1"])
        .args(["-c", &format!("ALTER SYSTEM SET ssl_cert_file = '{}'", cert.display())])
        .args(["-c", &format!("ALTER SYSTEM SET ssl_key_file = '{}'", key.display())])
        .args(["-c", "ALTER SYSTEM SET ssl = on", "-c", "SELECT pg_reload_conf()"])
        .output()
        .expect("psql");
    assert!(out.status.success(), "enabling ssl: {}", String::from_utf8_lossy(&out.stderr));
    eventually(Duration::from_secs(10), "ssl on", || query(&url, "SHOW ssl").as_deref() == Some("on"));
}

#[test]
fn postgres_with_verify_full_stores_every_message_and_a_wrong_ca_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let certs = Certs::generate(d);
    let pg = PrivatePostgres::start();
    enable_ssl(&pg, &certs);
    let mqtt = common::mqtt::Mosquitto::start(100_000);
    let plain = pg.url("tlsdb");
    let verify_full = plain.replace("sslmode=disable", "sslmode=verify-full");
    assert_ne!(plain, verify_full);
    let run_toml = |name: &str, ca: &Path| {
        format!(
            "[mqtt]\nurl = \"{mqtt}\"\nclient_id = \"tls-{name}\"\n\
             [store]\nurl = \"{verify_full}\"\nca_file = \"{ca}\"\n\
             [journal]\npath = \"{journal}\"\n[http]\nlisten = \"{{HTTP}}\"\n",
            mqtt = mqtt.url(),
            ca = ca.display(),
            journal = d.join(format!("{name}-journal")).display(),
        )
    };
    let run = Iotpipe::start_named(d, "run", "run-tls", &run_toml("ok", &certs.ca), &[]);
    eventually(Duration::from_secs(30), "run ready with the store over TLS", || run.get("/readyz").0 == 200);
    spawn_publish(mqtt.url(), 0..400, None).join().unwrap();
    eventually(Duration::from_secs(60), "400 rows", || count(&plain, "SELECT count(*) FROM telemetry") == 400);
    let ssl_sessions = count(
        &plain,
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.datname = 'tlsdb' AND s.ssl",
    );
    assert!(ssl_sessions >= 1, "iotpipe's connections use TLS ({ssl_sessions})");
    let (code, out) = check(&d.join("run-tls.toml"), &["--command", "run"], &[]).code_and_text();
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("ok    store"), "{out}");

    let wrong = write_config(d, "run-wrongca.toml", &run_toml("wrong", &certs.other_ca));
    let (code, out) = check(&wrong, &["--command", "run"], &[]).code_and_text();
    assert_eq!(code, Some(1), "{out}");
    let store_line =
        out.lines().find(|l| l.starts_with("FAIL  store")).unwrap_or_else(|| panic!("no store line: {out}"));
    assert!(store_line.to_lowercase().contains("certificate"), "names the certificate: {store_line}");
}
