//! Installers as files in a local directory (`<data_dir>/installers` by
//! default): written to a temporary file beside the target, then renamed,
//! so a reader never sees half an installer.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::{ByteStream, InstallerStorage, Meter, Opened, StorageError, Stored};

pub struct LocalStorage {
    dir: PathBuf,
}

impl LocalStorage {
    pub fn new(dir: &Path) -> std::io::Result<LocalStorage> {
        std::fs::create_dir_all(dir)?;
        Ok(LocalStorage {
            dir: dir.to_path_buf(),
        })
    }

    /// Keys are made by the server (`<tenant>/<version>`, UUIDs); anything
    /// else is refused rather than joined onto the directory.
    fn path(&self, key: &str) -> Result<PathBuf, StorageError> {
        let safe = !key.is_empty()
            && key.split('/').all(|part| {
                !part.is_empty()
                    && part != ".."
                    && part != "."
                    && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
        if !safe {
            return Err(StorageError::Backend(format!("unsafe storage key {key:?}")));
        }
        Ok(self.dir.join(key))
    }
}

fn backend(err: std::io::Error) -> StorageError {
    StorageError::Backend(err.to_string())
}

#[async_trait::async_trait]
impl InstallerStorage for LocalStorage {
    fn backend(&self) -> &'static str {
        "local"
    }

    async fn put(
        &self,
        key: &str,
        mut body: ByteStream<'_>,
        max_bytes: u64,
    ) -> Result<Stored, StorageError> {
        let path = self.path(key)?;
        let parent = path.parent().unwrap_or(&self.dir).to_path_buf();
        tokio::fs::create_dir_all(&parent).await.map_err(backend)?;
        let temp = parent.join(format!(".upload-{:016x}", rand::random::<u64>()));
        let result = async {
            let mut file = tokio::fs::File::create(&temp).await.map_err(backend)?;
            let mut meter = Meter::new(max_bytes);
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(StorageError::Body)?;
                meter.take(&chunk)?;
                file.write_all(&chunk).await.map_err(backend)?;
            }
            file.sync_all().await.map_err(backend)?;
            Ok(meter.finish())
        }
        .await;
        match result {
            Ok(stored) => {
                tokio::fs::rename(&temp, &path).await.map_err(backend)?;
                Ok(stored)
            }
            Err(err) => {
                let _ = tokio::fs::remove_file(&temp).await;
                Err(err)
            }
        }
    }

    async fn open(&self, key: &str, start: u64) -> Result<Opened, StorageError> {
        let path = self.path(key)?;
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Err(StorageError::NotFound);
            }
            Err(err) => return Err(backend(err)),
        };
        let total = file.metadata().await.map_err(backend)?.len();
        if start > total {
            return Err(StorageError::BadRange);
        }
        file.seek(SeekFrom::Start(start)).await.map_err(backend)?;
        let body = futures_util::stream::unfold(file, |mut file| async move {
            let mut buf = vec![0u8; 64 * 1024];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(axum::body::Bytes::from(buf)), file))
                }
                Err(err) => Some((Err(err), file)),
            }
        });
        Ok(Opened {
            total,
            body: Box::pin(body),
        })
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match tokio::fs::remove_file(self.path(key)?).await {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(backend(err)),
        }
    }

    async fn delete_tenant(&self, tenant_id: mobius_core::Uuid) -> Result<u64, StorageError> {
        let dir = self.path(&tenant_id.simple().to_string())?;
        let mut entries = match tokio::fs::read_dir(&dir).await {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(err) => return Err(backend(err)),
        };
        let mut deleted = 0;
        while let Some(entry) = entries.next_entry().await.map_err(backend)? {
            tokio::fs::remove_file(entry.path())
                .await
                .map_err(backend)?;
            deleted += 1;
        }
        tokio::fs::remove_dir(&dir).await.map_err(backend)?;
        Ok(deleted)
    }
}
