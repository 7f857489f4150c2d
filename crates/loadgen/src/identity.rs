//! Simulated agents' identities: a fresh P-256 key and CSR per agent, the
//! certificate the server issued for it, and the file that keeps them so
//! later runs need not enroll again.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use mobius_api::device::{Disk, HostFacts, NetworkInterface};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// An agent about to enroll: its key, and what it tells the server.
pub struct NewAgent {
    pub hostname: String,
    pub host_fingerprint: String,
    pub key: KeyPair,
    pub csr_pem: String,
}

impl NewAgent {
    /// `run` keeps fingerprints unique across runs (the same fingerprint
    /// re-enrolling would keep its device instead of adding one).
    pub fn generate(run: Uuid, index: u64) -> Result<NewAgent> {
        let hostname = format!("sim-{}-{index:06}", &run.simple().to_string()[..8]);
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .context("cannot generate an agent key")?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, hostname.as_str());
        params.distinguished_name = name;
        let csr_pem = params
            .serialize_request(&key)
            .and_then(|csr| csr.pem())
            .context("cannot build a certificate request")?;
        Ok(NewAgent {
            host_fingerprint: format!("loadgen-{}-{index}", run.simple()),
            hostname,
            key,
            csr_pem,
        })
    }
}

/// Plausible facts for a simulated host: the size of a real agent's
/// report, so the server parses and stores as much as it would.
pub fn simulated_facts(hostname: &str, index: u64) -> HostFacts {
    let octet = |shift: u32| (index >> shift) & 0xff;
    HostFacts {
        hostname: hostname.to_owned(),
        os_name: "Debian GNU/Linux".into(),
        os_version: "12".into(),
        kernel_version: "6.1.0-37-amd64".into(),
        architecture: "x86_64".into(),
        cpu_model: "Simulated CPU @ 2.40GHz".into(),
        cpu_cores: 8,
        memory_bytes: 32 * 1024 * 1024 * 1024,
        disks: vec![
            Disk {
                mount_point: "/".into(),
                total_bytes: 512 * 1024 * 1024 * 1024,
                available_bytes: 300 * 1024 * 1024 * 1024,
            },
            Disk {
                mount_point: "/var/lib/mobius".into(),
                total_bytes: 1024 * 1024 * 1024 * 1024,
                available_bytes: 900 * 1024 * 1024 * 1024,
            },
        ],
        interfaces: vec![NetworkInterface {
            name: "eth0".into(),
            mac_address: Some(format!(
                "02:00:00:{:02x}:{:02x}:{:02x}",
                octet(16),
                octet(8),
                octet(0)
            )),
            // TEST-NET-1: documentation addresses, never routed.
            addresses: vec![format!("192.0.2.{}/24", octet(0))],
        }],
        uptime_secs: 86_400 + index,
        kvm_available: true,
        hardware_uuid: Some(Uuid::from_u128(u128::from(index)).to_string()),
        serial_number: Some(format!("SIM{index:08}")),
        agent_version: concat!("loadgen-", env!("CARGO_PKG_VERSION")).into(),
    }
}

/// An enrolled agent: enough to open its mutual-TLS connection.
#[derive(Clone)]
pub struct Identity {
    pub device_id: Uuid,
    pub hostname: String,
    pub certificate: CertificateDer<'static>,
    /// PKCS#8 DER.
    pub key: Vec<u8>,
}

impl Identity {
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone()))
    }
}

/// What --identities holds: the server they belong to, its CA, and the
/// agents. The keys are private keys: the file is written mode 0600.
#[derive(Debug, Default, Serialize, Deserialize)]
struct IdentitiesFile {
    server: String,
    server_ca_pem: String,
    agents: Vec<StoredIdentity>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredIdentity {
    device_id: Uuid,
    hostname: String,
    key_pem: String,
    certificate_pem: String,
}

/// Enrolled agents and the server CA they trust.
#[derive(Default)]
pub struct Fleet {
    pub server_ca_pem: Option<String>,
    pub agents: Vec<Identity>,
}

impl Fleet {
    /// Loads `path` if it exists (an absent file is an empty fleet). A file
    /// made against another server is refused: its certificates would
    /// only fail the handshake.
    pub fn load(path: &Path, server: &str) -> Result<Fleet> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Fleet::default()),
            Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
        };
        let file: IdentitiesFile = serde_json::from_str(&text)
            .with_context(|| format!("{} is not an identities file", path.display()))?;
        if file.server != server {
            bail!(
                "{} holds agents enrolled with {}, not {server}: use another --identities file",
                path.display(),
                file.server
            );
        }
        let agents = file
            .agents
            .into_iter()
            .map(|stored| {
                let key = PrivateKeyDer::from_pem_slice(stored.key_pem.as_bytes())
                    .with_context(|| format!("the key of {} is unreadable", stored.hostname))?;
                let PrivateKeyDer::Pkcs8(key) = key else {
                    bail!("the key of {} is not PKCS#8", stored.hostname);
                };
                let certificate = CertificateDer::from_pem_slice(stored.certificate_pem.as_bytes())
                    .with_context(|| {
                        format!("the certificate of {} is unreadable", stored.hostname)
                    })?;
                Ok(Identity {
                    device_id: stored.device_id,
                    hostname: stored.hostname,
                    certificate,
                    key: key.secret_pkcs8_der().to_vec(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Fleet {
            server_ca_pem: Some(file.server_ca_pem).filter(|pem| !pem.is_empty()),
            agents,
        })
    }

    /// Writes the fleet to `path` (0600), through a temporary file so an
    /// interrupted write never leaves half a file.
    pub fn save(&self, path: &Path, server: &str) -> Result<()> {
        let file = IdentitiesFile {
            server: server.to_owned(),
            server_ca_pem: self.server_ca_pem.clone().unwrap_or_default(),
            agents: self
                .agents
                .iter()
                .map(|agent| StoredIdentity {
                    device_id: agent.device_id,
                    hostname: agent.hostname.clone(),
                    key_pem: pem("PRIVATE KEY", &agent.key),
                    certificate_pem: pem("CERTIFICATE", agent.certificate.as_ref()),
                })
                .collect(),
        };
        let temporary = path.with_extension("tmp");
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)
            .with_context(|| format!("creating {}", temporary.display()))?;
        serde_json::to_writer(&mut out, &file)
            .with_context(|| format!("writing {}", temporary.display()))?;
        out.write_all(b"\n")?;
        out.sync_all()?;
        std::fs::rename(&temporary, path)
            .with_context(|| format!("renaming {} to {}", temporary.display(), path.display()))?;
        Ok(())
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_round_trip_through_the_file() {
        let agent = NewAgent::generate(Uuid::from_u128(7), 3).unwrap();
        let cert = CertificateParams::new(vec!["x".into()])
            .unwrap()
            .self_signed(&agent.key)
            .unwrap();
        let fleet = Fleet {
            server_ca_pem: Some(cert.pem()),
            agents: vec![Identity {
                device_id: Uuid::from_u128(1),
                hostname: agent.hostname.clone(),
                certificate: cert.der().clone(),
                key: agent.key.serialize_der(),
            }],
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ids.json");
        fleet.save(&path, "https://127.0.0.1:1").unwrap();
        let loaded = Fleet::load(&path, "https://127.0.0.1:1").unwrap();
        assert_eq!(loaded.agents.len(), 1);
        assert_eq!(loaded.agents[0].certificate, *cert.der());
        assert_eq!(loaded.agents[0].key, agent.key.serialize_der());
        assert_eq!(loaded.server_ca_pem, Some(cert.pem()));
        let other = Fleet::load(&path, "https://127.0.0.1:2").err().unwrap();
        assert!(
            other.to_string().contains("not https://127.0.0.1:2"),
            "{other}"
        );
        assert!(
            Fleet::load(&dir.path().join("absent"), "x")
                .unwrap()
                .agents
                .is_empty()
        );
    }
}
