//! The security settings of `[kafka.properties]` (TLS, SASL): checked at
//! load so that a typo or a missing file is one clear error naming the key
//! instead of a client that retries for ever, and the one default iotpipe
//! adds (where to find the CA roots).
//!
//! librdkafka is built with OpenSSL compiled in (static, so the image needs
//! no system libraries); its compiled-in certificate directory does not
//! exist on the host or in the image, so without `ssl.ca.location` the
//! system roots are found with librdkafka's `probe` (which knows
//! `/etc/ssl/certs/ca-certificates.crt` and the other usual places), unless
//! `SSL_CERT_FILE` or `SSL_CERT_DIR` name them.

use crate::units::KeyError;
use rdkafka::config::ClientConfig;
use std::collections::BTreeMap;

const PROTOCOLS: [&str; 4] = ["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"];

/// The SASL mechanisms this build of librdkafka carries (GSSAPI needs
/// Kerberos libraries, which the image does not have).
const MECHANISMS: [&str; 4] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"];

/// Properties naming a file that must exist (`probe` is a value, not a file).
const FILE_KEYS: [&str; 4] = ["ssl.ca.location", "ssl.certificate.location", "ssl.key.location", "ssl.crl.location"];

fn get<'a>(props: &'a BTreeMap<String, String>, key: &str) -> Option<&'a str> {
    props.get(key).map(String::as_str).map(str::trim).filter(|v| !v.is_empty())
}

/// `security.protocol`, lower case (`plaintext` when not given).
pub fn protocol(props: &BTreeMap<String, String>) -> String {
    get(props, "security.protocol").unwrap_or("plaintext").to_ascii_lowercase()
}

/// Does this protocol use TLS / SASL?
pub fn uses_tls(protocol: &str) -> bool {
    protocol == "ssl" || protocol == "sasl_ssl"
}

pub fn uses_sasl(protocol: &str) -> bool {
    protocol.starts_with("sasl_")
}

/// The SASL mechanism (`sasl.mechanisms`, or its alias `sasl.mechanism`).
pub fn mechanism(props: &BTreeMap<String, String>) -> String {
    get(props, "sasl.mechanisms").or_else(|| get(props, "sasl.mechanism")).unwrap_or("GSSAPI").to_ascii_uppercase()
}

/// Check the security properties; keys are relative to the section holding
/// the map (`prefix` is its name there, e.g. `properties`).
pub fn validate(props: &BTreeMap<String, String>, prefix: &str) -> Result<(), KeyError> {
    let key = |k: &str| format!("{prefix}.{k}");
    let proto = protocol(props);
    if !PROTOCOLS.contains(&proto.as_str()) {
        return Err(KeyError::new(
            key("security.protocol"),
            format!("`{proto}` is not one of {}", PROTOCOLS.join(", ")),
        ));
    }
    let sasl_keys: Vec<&String> = props.keys().filter(|k| k.starts_with("sasl.")).collect();
    if uses_sasl(&proto) {
        let mech = mechanism(props);
        if !MECHANISMS.contains(&mech.as_str()) {
            let hint = if mech == "GSSAPI" { " (GSSAPI/Kerberos is not built in; set sasl.mechanisms)" } else { "" };
            return Err(KeyError::new(
                key("sasl.mechanisms"),
                format!("`{mech}` is not one of {}{hint}", MECHANISMS.join(", ")),
            ));
        }
        if mech != "OAUTHBEARER" {
            for k in ["sasl.username", "sasl.password"] {
                if get(props, k).is_none() {
                    return Err(KeyError::new(
                        key(k),
                        format!("is needed for SASL {mech} (or `{k}_file` naming a file that holds it)"),
                    ));
                }
            }
        }
    } else if let Some(k) = sasl_keys.first() {
        return Err(KeyError::new(
            key(k),
            format!("is set but security.protocol is `{proto}`; SASL needs sasl_ssl (or sasl_plaintext)"),
        ));
    }
    for k in FILE_KEYS {
        let Some(path) = get(props, k) else { continue };
        if k == "ssl.ca.location" && path == "probe" {
            continue;
        }
        if let Err(e) = std::fs::metadata(path) {
            return Err(KeyError::new(key(k), format!("cannot read {path}: {e}")));
        }
    }
    if get(props, "ssl.certificate.location").is_some() != get(props, "ssl.key.location").is_some() {
        return Err(KeyError::new(
            key("ssl.key.location"),
            "a client certificate needs both ssl.certificate.location and ssl.key.location",
        ));
    }
    Ok(())
}

/// Where the CA roots come from when TLS is on and none are given.
pub fn apply_defaults(c: &mut ClientConfig, props: &BTreeMap<String, String>) {
    let given = ["ssl.ca.location", "ssl.ca.pem", "ssl.ca.certificate.stores"].iter().any(|k| get(props, k).is_some());
    let from_env = std::env::var_os("SSL_CERT_FILE").is_some() || std::env::var_os("SSL_CERT_DIR").is_some();
    if uses_tls(&protocol(props)) && !given && !from_env {
        c.set("ssl.ca.location", "probe");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn plaintext_needs_nothing() {
        assert_eq!(validate(&props(&[]), "properties"), Ok(()));
    }

    #[test]
    fn each_mistake_names_its_key() {
        let e = |p: &[(&str, &str)]| validate(&props(p), "properties").unwrap_err().key;
        assert_eq!(e(&[("security.protocol", "tls")]), "properties.security.protocol");
        assert_eq!(e(&[("security.protocol", "sasl_ssl")]), "properties.sasl.mechanisms");
        assert_eq!(
            e(&[("security.protocol", "SASL_SSL"), ("sasl.mechanisms", "SCRAM-SHA-512")]),
            "properties.sasl.username"
        );
        assert_eq!(
            e(&[("security.protocol", "sasl_ssl"), ("sasl.mechanism", "PLAIN"), ("sasl.username", "u")]),
            "properties.sasl.password"
        );
        assert_eq!(e(&[("sasl.username", "u")]), "properties.sasl.username");
        assert_eq!(
            e(&[("security.protocol", "ssl"), ("ssl.ca.location", "/nonexistent/ca.pem")]),
            "properties.ssl.ca.location"
        );
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("c.pem");
        std::fs::write(&cert, "x").unwrap();
        let cert = cert.display().to_string();
        assert_eq!(
            e(&[("security.protocol", "ssl"), ("ssl.certificate.location", &cert)]),
            "properties.ssl.key.location"
        );
        let ok = props(&[
            ("security.protocol", "sasl_ssl"),
            ("sasl.mechanisms", "scram-sha-256"),
            ("sasl.username", "u"),
            ("sasl.password", "p"),
            ("ssl.ca.location", "probe"),
        ]);
        assert_eq!(validate(&ok, "properties"), Ok(()));
        let oauth = props(&[("security.protocol", "sasl_ssl"), ("sasl.mechanisms", "OAUTHBEARER")]);
        assert_eq!(validate(&oauth, "properties"), Ok(()));
    }

    #[test]
    fn tls_without_a_ca_probes_the_system_roots() {
        if std::env::var_os("SSL_CERT_FILE").is_some() || std::env::var_os("SSL_CERT_DIR").is_some() {
            return;
        }
        let mut c = ClientConfig::new();
        apply_defaults(&mut c, &props(&[("security.protocol", "ssl")]));
        assert_eq!(c.get("ssl.ca.location"), Some("probe"));
        let mut c = ClientConfig::new();
        apply_defaults(&mut c, &props(&[("security.protocol", "ssl"), ("ssl.ca.location", "/ca.pem")]));
        assert_eq!(c.get("ssl.ca.location"), None, "the user's value is applied by the passthrough");
        let mut c = ClientConfig::new();
        apply_defaults(&mut c, &props(&[]));
        assert_eq!(c.get("ssl.ca.location"), None);
    }
}
