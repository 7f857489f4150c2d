//! Sealing secrets at rest (JWT signing keys, tenant CA keys): one trait,
//! one implementation per edition. OSS seals with AES-256-GCM under a local
//! master key; the cloud edition will seal through AWS KMS with the same
//! signature.

use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// Sealing failed, or a sealed value is corrupt or belongs elsewhere.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("sealed secret is corrupt, or was sealed under another key or context")]
    Unsealable,
    #[error("master key: {0}")]
    MasterKey(String),
}

/// Seals and opens small secrets. `context` is bound to the ciphertext
/// (AES-GCM associated data; a KMS encryption context), so a value sealed
/// for one key id or tenant cannot be replayed as another's.
#[async_trait::async_trait]
pub trait SecretSealer: Send + Sync + std::fmt::Debug {
    async fn seal(&self, context: &str, plaintext: &[u8]) -> Result<Vec<u8>, SealError>;
    async fn open(&self, context: &str, sealed: &[u8]) -> Result<Vec<u8>, SealError>;
}

/// Format version of [`LocalSealer`] output: `1 || nonce(12) || ciphertext+tag`.
const LOCAL_FORMAT_V1: u8 = 1;

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
    async fn seal(&self, context: &str, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let nonce_bytes: [u8; 12] = rand::random();
        let ciphertext = self
            .cipher
            .encrypt(
                &Nonce::from(nonce_bytes),
                Payload {
                    msg: plaintext,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| SealError::Unsealable)?;
        let mut out = Vec::with_capacity(1 + 12 + ciphertext.len());
        out.push(LOCAL_FORMAT_V1);
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&ciphertext);
        Ok(out)
    }

    async fn open(&self, context: &str, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
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
                    aad: context.as_bytes(),
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
