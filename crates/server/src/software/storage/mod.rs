//! Installer storage behind one trait: a local directory (the embedded
//! default, under the data directory) or an S3-compatible bucket. Both
//! take the upload as a stream and never hold it whole in memory; both
//! hash it on the way (SHA-256) and stop at the size limit.

pub mod local;
pub mod s3;

use std::pin::Pin;

use axum::body::Bytes;
use futures_util::Stream;
use sha2::{Digest, Sha256};

/// A body on its way in or out.
pub type ByteStream<'a> = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send + 'a>>;

/// What a finished upload stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub size: u64,
    /// Hex.
    pub sha256: String,
}

/// A stored installer opened for reading, from `start`.
pub struct Opened {
    /// The whole object's size.
    pub total: u64,
    pub body: ByteStream<'static>,
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The upload grew past the limit; nothing is kept.
    #[error("the installer is larger than the limit of {max} bytes")]
    TooLarge { max: u64 },
    /// The client's upload broke off (its error, not ours).
    #[error("the upload was interrupted: {0}")]
    Body(std::io::Error),
    #[error("no such installer in storage")]
    NotFound,
    /// The range starts past the end.
    #[error("the range starts past the installer's end")]
    BadRange,
    /// The store failed (disk, network, bucket): logged, never shown.
    #[error("installer storage failed: {0}")]
    Backend(String),
}

#[async_trait::async_trait]
pub trait InstallerStorage: Send + Sync {
    /// `local` or `s3`, for logs.
    fn backend(&self) -> &'static str;
    /// Stores `body` under `key`; refuses (keeping nothing) past `max_bytes`.
    async fn put(
        &self,
        key: &str,
        body: ByteStream<'_>,
        max_bytes: u64,
    ) -> Result<Stored, StorageError>;
    /// Reads from byte `start` to the end.
    async fn open(&self, key: &str, start: u64) -> Result<Opened, StorageError>;
    /// Deletes; an absent key is not an error.
    async fn delete(&self, key: &str) -> Result<(), StorageError>;
    /// Deletes every installer of a tenant (keys `<tenant id>/…`), when the
    /// tenant itself is deleted; answers how many went.
    async fn delete_tenant(&self, tenant_id: mobius_core::Uuid) -> Result<u64, StorageError>;
}

/// Counts and hashes an upload as it passes, and stops it at the limit.
pub(crate) struct Meter {
    hasher: Sha256,
    size: u64,
    max: u64,
}

impl Meter {
    pub(crate) fn new(max: u64) -> Meter {
        Meter {
            hasher: Sha256::new(),
            size: 0,
            max,
        }
    }

    pub(crate) fn take(&mut self, chunk: &[u8]) -> Result<(), StorageError> {
        self.size += chunk.len() as u64;
        if self.size > self.max {
            return Err(StorageError::TooLarge { max: self.max });
        }
        self.hasher.update(chunk);
        Ok(())
    }

    pub(crate) fn finish(self) -> Stored {
        Stored {
            size: self.size,
            sha256: hex::encode(self.hasher.finalize()),
        }
    }
}
