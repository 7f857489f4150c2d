//! Sealing secrets at rest (JWT signing keys, tenant CA keys): one trait,
//! one implementation per edition. OSS seals with AES-256-GCM under a local
//! master key; the cloud edition will seal through AWS KMS with the same
//! signature.

use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sea_orm::prelude::Uuid;

/// Sealing failed, or a sealed value is corrupt or belongs elsewhere.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("sealed secret is corrupt, or was sealed under another key or context")]
    Unsealable,
    #[error("master key: {0}")]
    MasterKey(String),
    /// The key service (KMS) failed or could not be reached; the text is
    /// for the log, never for a client.
    #[error("key service: {0}")]
    KeyService(String),
}

/// What a sealed secret is bound to: its tenant (none for platform-wide
/// secrets such as the JWT signing keys), its purpose, and the row it
/// belongs to. Sealers bind all of it to the ciphertext, so a value
/// sealed for one tenant, purpose or key id cannot be replayed as
/// another's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealContext {
    tenant_id: Option<Uuid>,
    purpose: &'static str,
    subject: String,
}

impl SealContext {
    /// A secret of one tenant (`purpose` e.g. `tenant-ca`, `subject` the
    /// row's id).
    pub fn tenant(tenant_id: Uuid, purpose: &'static str, subject: impl std::fmt::Display) -> Self {
        SealContext {
            tenant_id: Some(tenant_id),
            purpose,
            subject: subject.to_string(),
        }
    }

    /// A secret of the platform itself, not of any tenant.
    pub fn platform(purpose: &'static str, subject: impl std::fmt::Display) -> Self {
        SealContext {
            tenant_id: None,
            purpose,
            subject: subject.to_string(),
        }
    }

    pub fn tenant_id(&self) -> Option<Uuid> {
        self.tenant_id
    }

    pub fn purpose(&self) -> &'static str {
        self.purpose
    }

    /// The whole context as one string, for AES-GCM associated data:
    /// `mobius:<purpose>:<tenant>:<subject>` (no tenant part for platform
    /// secrets), the exact strings used before this type existed, so
    /// values sealed then still open.
    pub fn associated_data(&self) -> String {
        match self.tenant_id {
            Some(tenant) => format!("mobius:{}:{tenant}:{}", self.purpose, self.subject),
            None => format!("mobius:{}:{}", self.purpose, self.subject),
        }
    }
}

/// Seals and opens small secrets, each bound to its [`SealContext`]
/// (AES-GCM associated data; a KMS encryption context).
#[async_trait::async_trait]
pub trait SecretSealer: Send + Sync + std::fmt::Debug {
    async fn seal(&self, context: &SealContext, plaintext: &[u8]) -> Result<Vec<u8>, SealError>;
    async fn open(&self, context: &SealContext, sealed: &[u8]) -> Result<Vec<u8>, SealError>;
}

/// Format version of [`LocalSealer`] output: `1 || nonce(12) || ciphertext+tag`.
/// (Other sealers use other first bytes, so `reseal` can tell them apart.)
pub const LOCAL_FORMAT_V1: u8 = 1;

/// AES-256-GCM under a 32-byte master key.
pub struct LocalSealer {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for LocalSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalSealer(..)")
    }
}

impl LocalSealer {
    pub fn new(key: &[u8; 32]) -> LocalSealer {
        LocalSealer {
            cipher: Aes256Gcm::new(key.into()),
        }
    }

    /// The master key from `MOBIUS_MASTER_KEY`-style base64 text if given,
    /// else from `path` (created on first run with 32 random bytes, base64,
    /// mode 0600).
    pub fn from_key_or_file(
        key_base64: Option<&str>,
        path: &Path,
    ) -> Result<LocalSealer, SealError> {
        let text = match key_base64 {
            Some(text) => text.trim().to_owned(),
            None => match std::fs::read_to_string(path) {
                Ok(text) => text.trim().to_owned(),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                    let key: [u8; 32] = rand::random();
                    let text = STANDARD.encode(key);
                    write_private_file(path, &text).map_err(|e| {
                        SealError::MasterKey(format!("cannot create {}: {e}", path.display()))
                    })?;
                    tracing::info!(path = %path.display(), "created a new master key; back it up with the data directory");
                    text
                }
                Err(err) => {
                    return Err(SealError::MasterKey(format!(
                        "cannot read {}: {err}",
                        path.display()
                    )));
                }
            },
        };
        let bytes = STANDARD
            .decode(text.as_bytes())
            .map_err(|_| SealError::MasterKey("not valid base64".into()))?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| {
            SealError::MasterKey("must be 32 bytes (44 characters of base64)".into())
        })?;
        Ok(LocalSealer::new(&key))
    }
}

#[async_trait::async_trait]
impl SecretSealer for LocalSealer {
    async fn seal(&self, context: &SealContext, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let aad = context.associated_data();
        let nonce_bytes: [u8; 12] = rand::random();
        let ciphertext = self
            .cipher
            .encrypt(
                &Nonce::from(nonce_bytes),
                Payload {
                    msg: plaintext,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| SealError::Unsealable)?;
        let mut out = Vec::with_capacity(1 + 12 + ciphertext.len());
        out.push(LOCAL_FORMAT_V1);
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&ciphertext);
        Ok(out)
    }

    async fn open(&self, context: &SealContext, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let aad = context.associated_data();
        let (&version, rest) = sealed.split_first().ok_or(SealError::Unsealable)?;
        if version != LOCAL_FORMAT_V1 || rest.len() < 12 + 16 {
            return Err(SealError::Unsealable);
        }
        let (nonce, ciphertext) = rest.split_at(12);
        let nonce: [u8; 12] = nonce.try_into().map_err(|_| SealError::Unsealable)?;
        self.cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| SealError::Unsealable)
    }
}

/// Writes `contents` to `path` with mode 0600, atomically (temp file,
/// fsync, rename), creating the directory with mode 0700 if needed.
pub fn write_private_file(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(parent) = path.parent() {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder.create(parent)?;
    }
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}
