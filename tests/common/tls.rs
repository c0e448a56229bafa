//! Kafka over TLS for tests: certificates generated at test time (a CA, a
//! server certificate for 127.0.0.1 and localhost, a client certificate, and
//! a second CA nobody uses), and Debian's stunnel terminating TLS in front of
//! a private Tansu that advertises the stunnel port, so every client
//! connection goes through the handshake for real. With `mutual`, stunnel
//! asks for a client certificate signed by the CA and refuses others.
//! With a SASL-capable Tansu (SQLite storage, `--authentication`), SCRAM
//! users are created before it starts requiring authentication.

use super::kafka::Tansu;
use super::{free_port, signal, wait_for_port};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// PEM files in a directory.
pub struct Certs {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A CA that signed nothing here: trusting only it must fail.
    pub other_ca: PathBuf,
}

fn ca(name: &str) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().expect("CA key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    (p.self_signed(&key).expect("CA certificate"), key)
}

fn leaf(
    names: &[&str],
    cn: &str,
    usage: ExtendedKeyUsagePurpose,
    issuer: &rcgen::Certificate,
    issuer_key: &KeyPair,
) -> (String, String) {
    let key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("params");
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![usage];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    let cert = p.signed_by(&key, issuer, issuer_key).expect("certificate");
    (cert.pem(), key.serialize_pem())
}

impl Certs {
    pub fn generate(dir: &Path) -> Self {
        let (ca_cert, ca_key) = ca("iotpipe test CA");
        let (other, _) = ca("some other CA");
        let (sc, sk) =
            leaf(&["127.0.0.1", "localhost"], "kafka", ExtendedKeyUsagePurpose::ServerAuth, &ca_cert, &ca_key);
        let (cc, ck) = leaf(&[], "iotpipe-client", ExtendedKeyUsagePurpose::ClientAuth, &ca_cert, &ca_key);
        let write = |name: &str, pem: &str| {
            let p = dir.join(name);
            std::fs::write(&p, pem).expect("write PEM");
            p
        };
        Self {
            ca: write("ca.pem", &ca_cert.pem()),
            server_cert: write("server.pem", &sc),
            server_key: write("server.key", &sk),
            client_cert: write("client.pem", &cc),
            client_key: write("client.key", &ck),
            other_ca: write("other-ca.pem", &other.pem()),
        }
    }
}

/// Debian's stunnel (installed by `scripts/services.sh tools`).
fn stunnel_bin() -> &'static str {
    for b in ["/usr/bin/stunnel4", "/usr/bin/stunnel"] {
        if Path::new(b).exists() {
            return b;
        }
    }
    panic!("stunnel is not installed: run `bash scripts/services.sh tools` (Debian package stunnel4)");
}

/// The Tansu binary with SQLite storage that can require SASL, when this
/// machine has one (`scripts/services.sh install tansu-sql`, cached).
pub fn sasl_tansu() -> Option<String> {
    let env = super::services::shared(&["tansu"]);
    env.get("IOTPIPE_TEST_TANSU_SQL_BIN").map(String::from).filter(|b| Path::new(b).exists())
}

/// A SCRAM user to create before the broker requires authentication.
pub struct User {
    pub name: &'static str,
    pub password: &'static str,
    /// `scram256` or `scram512` (Tansu's names).
    pub mechanism: &'static str,
}

/// Tansu behind stunnel.
pub struct TlsKafka {
    tansu: Tansu,
    stunnel: Child,
    /// The TLS port clients use.
    pub port: u16,
    pub certs: Certs,
}

impl TlsKafka {
    /// Plain TLS (the client checks the server), or `mutual` TLS.
    pub fn start(dir: &Path, mutual: bool) -> Self {
        let env = super::services::shared(&["tansu"]);
        let port = free_port();
        let tansu = Tansu::start_behind(env.require("IOTPIPE_TEST_TANSU_BIN"), port, "memory://tansu/", &[], None);
        Self::front(dir, tansu, port, mutual)
    }

    /// TLS with SASL/SCRAM required, on the SQLite-backed Tansu `bin`: the
    /// users are created on a first run without authentication, then the
    /// broker is started again on the same storage, requiring it.
    pub fn start_sasl(dir: &Path, bin: &str, users: &[User]) -> Self {
        // Tansu's SQLite engine resolves the URL against its working directory.
        let storage = "sqlite://tansu.db";
        let port = free_port();
        {
            let open = Tansu::start_behind(bin, port, storage, &[], Some(dir));
            for u in users {
                let out = Command::new(bin)
                    .args(["user", "create", "--broker", &format!("tcp://127.0.0.1:{}", open.port)])
                    .args(["--mechanism", u.mechanism, u.name, u.password])
                    .output()
                    .expect("tansu user create");
                assert!(out.status.success(), "tansu user create {}: {}", u.name, String::from_utf8_lossy(&out.stderr));
            }
        }
        let tansu = Tansu::start_behind(bin, port, storage, &["--authentication"], Some(dir));
        Self::front(dir, tansu, port, false)
    }

    fn front(dir: &Path, tansu: Tansu, port: u16, mutual: bool) -> Self {
        let certs = Certs::generate(dir);
        let verify = if mutual { format!("CAfile = {}\nverify = 2\n", certs.ca.display()) } else { String::new() };
        let conf = dir.join("stunnel.conf");
        std::fs::write(
            &conf,
            format!(
                "foreground = yes\npid =\ndebug = 4\noutput = {log}\n\n[kafka]\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:{backend}\ncert = {cert}\nkey = {key}\n{verify}",
                log = dir.join("stunnel.log").display(),
                backend = tansu.port,
                cert = certs.server_cert.display(),
                key = certs.server_key.display(),
            ),
        )
        .expect("stunnel.conf");
        let stunnel = Command::new(stunnel_bin())
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start stunnel");
        wait_for_port(port, Duration::from_secs(10));
        Self { tansu, stunnel, port, certs }
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `[kafka.properties]` lines for TLS trusting `ca` (and presenting the
    /// client certificate when `client_cert`).
    pub fn properties(&self, ca: &Path, client_cert: bool) -> String {
        let mut p = format!("\"security.protocol\" = \"ssl\"\n\"ssl.ca.location\" = \"{}\"\n", ca.display());
        if client_cert {
            p.push_str(&format!(
                "\"ssl.certificate.location\" = \"{}\"\n\"ssl.key.location\" = \"{}\"\n",
                self.certs.client_cert.display(),
                self.certs.client_key.display()
            ));
        }
        p
    }

    /// The Tansu behind the TLS port (to pause it, say).
    pub fn broker(&self) -> &Tansu {
        &self.tansu
    }
}

impl Drop for TlsKafka {
    fn drop(&mut self) {
        signal(self.stunnel.id(), "TERM");
        let _ = self.stunnel.kill();
        let _ = self.stunnel.wait();
    }
}
