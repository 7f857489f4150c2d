//! Installers in an S3-compatible bucket (AWS, MinIO, Ceph, moto). The
//! upload goes up as a multipart upload in parts of [`PART_BYTES`], so at
//! most one part is in memory; an installer smaller than one part is a
//! single PUT. A refused or broken upload aborts its multipart upload, so
//! no half object and no orphaned parts are left.

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream as S3Body;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use futures_util::StreamExt;

use super::{ByteStream, InstallerStorage, Meter, Opened, StorageError, Stored};

/// S3's minimum part size is 5 MiB (except the last part).
const PART_BYTES: usize = 8 * 1024 * 1024;

/// Where and how to reach the bucket.
#[derive(Clone, Debug)]
pub struct S3Config {
    pub bucket: String,
    pub endpoint: Option<String>,
    pub region: String,
    pub path_style: bool,
    pub access_key_id: String,
    pub secret_access_key: String,
}

pub struct S3Storage {
    client: aws_sdk_s3::Client,
    bucket: String,
}

impl S3Storage {
    pub fn new(config: S3Config) -> S3Storage {
        let credentials = aws_sdk_s3::config::Credentials::new(
            config.access_key_id,
            config.secret_access_key,
            None,
            None,
            "mobius-settings",
        );
        let mut builder = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new(config.region))
            .credentials_provider(credentials)
            .force_path_style(config.path_style)
            // Parts are in memory, so a failed call is simply sent again;
            // a busy store gets a few tries and time to accept the
            // connection before an upload is given up.
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::standard().with_max_attempts(4))
            .timeout_config(
                aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(std::time::Duration::from_secs(10))
                    .build(),
            );
        if let Some(endpoint) = config.endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        S3Storage {
            client: aws_sdk_s3::Client::from_conf(builder.build()),
            bucket: config.bucket,
        }
    }

    async fn upload(
        &self,
        key: &str,
        body: &mut ByteStream<'_>,
        meter: &mut Meter,
        upload_id: &mut Option<String>,
    ) -> Result<(), StorageError> {
        let mut part = Vec::with_capacity(PART_BYTES);
        let mut parts = Vec::new();
        loop {
            let chunk = match body.next().await {
                Some(chunk) => Some(chunk.map_err(StorageError::Body)?),
                None => None,
            };
            if let Some(chunk) = &chunk {
                meter.take(chunk)?;
                part.extend_from_slice(chunk);
            }
            let last = chunk.is_none();
            if part.len() < PART_BYTES && !last {
                continue;
            }
            if last && upload_id.is_none() {
                // Small enough for one PUT.
                self.client
                    .put_object()
                    .bucket(&self.bucket)
                    .key(key)
                    .body(S3Body::from(std::mem::take(&mut part)))
                    .send()
                    .await
                    .map_err(|e| backend("put_object", &e))?;
                return Ok(());
            }
            if upload_id.is_none() {
                let created = self
                    .client
                    .create_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key)
                    .send()
                    .await
                    .map_err(|e| backend("create_multipart_upload", &e))?;
                *upload_id = created.upload_id().map(str::to_owned);
            }
            let id = upload_id.clone().unwrap_or_default();
            if !part.is_empty() || parts.is_empty() {
                let number = i32::try_from(parts.len() + 1).unwrap_or(i32::MAX);
                let sent = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(&id)
                    .part_number(number)
                    .body(S3Body::from(std::mem::take(&mut part)))
                    .send()
                    .await
                    .map_err(|e| backend("upload_part", &e))?;
                parts.push(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(sent.e_tag().map(str::to_owned))
                        .build(),
                );
                part = Vec::with_capacity(PART_BYTES);
            }
            if last {
                self.client
                    .complete_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(&id)
                    .multipart_upload(
                        CompletedMultipartUpload::builder()
                            .set_parts(Some(parts))
                            .build(),
                    )
                    .send()
                    .await
                    .map_err(|e| backend("complete_multipart_upload", &e))?;
                return Ok(());
            }
        }
    }
}

/// The SDK's error as one line for the log (code and message, no secrets).
fn backend<E: ProvideErrorMetadata + std::fmt::Debug>(
    call: &str,
    err: &aws_sdk_s3::error::SdkError<E>,
) -> StorageError {
    let detail = match err.as_service_error() {
        Some(service) => format!(
            "{} {}",
            service.code().unwrap_or("error"),
            service.message().unwrap_or("")
        ),
        None => format!("{err:?}").chars().take(300).collect(),
    };
    StorageError::Backend(format!("S3 {call}: {detail}"))
}

#[async_trait::async_trait]
impl InstallerStorage for S3Storage {
    fn backend(&self) -> &'static str {
        "s3"
    }

    async fn put(
        &self,
        key: &str,
        mut body: ByteStream<'_>,
        max_bytes: u64,
    ) -> Result<Stored, StorageError> {
        let mut meter = Meter::new(max_bytes);
        let mut upload_id = None;
        match self
            .upload(key, &mut body, &mut meter, &mut upload_id)
            .await
        {
            Ok(()) => Ok(meter.finish()),
            Err(err) => {
                if let Some(id) = upload_id {
                    let _ = self
                        .client
                        .abort_multipart_upload()
                        .bucket(&self.bucket)
                        .key(key)
                        .upload_id(id)
                        .send()
                        .await;
                }
                Err(err)
            }
        }
    }

    async fn open(&self, key: &str, start: u64) -> Result<Opened, StorageError> {
        let head = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| {
                if e.as_service_error().is_some_and(|s| s.is_not_found()) {
                    StorageError::NotFound
                } else {
                    backend("head_object", &e)
                }
            })?;
        let total = u64::try_from(head.content_length().unwrap_or(0)).unwrap_or(0);
        if start > total {
            return Err(StorageError::BadRange);
        }
        if start == total {
            return Ok(Opened {
                total,
                body: Box::pin(futures_util::stream::empty()),
            });
        }
        let object = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .range(format!("bytes={start}-"))
            .send()
            .await
            .map_err(|e| {
                if e.as_service_error().is_some_and(|s| s.is_no_such_key()) {
                    StorageError::NotFound
                } else {
                    backend("get_object", &e)
                }
            })?;
        let body = futures_util::stream::unfold(object.body, |mut body| async move {
            match body.try_next().await {
                Ok(Some(bytes)) => Some((Ok(bytes), body)),
                Ok(None) => None,
                Err(err) => Some((Err(std::io::Error::other(err)), body)),
            }
        });
        Ok(Opened {
            total,
            body: Box::pin(body),
        })
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| backend("delete_object", &e))?;
        Ok(())
    }

    /// One `DeleteObject` per key rather than `DeleteObjects`: tenants are
    /// deleted rarely, and not every S3-compatible store takes the batch
    /// call the same way (it needs a Content-MD5 some reject).
    async fn delete_tenant(&self, tenant_id: mobius_core::Uuid) -> Result<u64, StorageError> {
        let prefix = format!("{}/", tenant_id.simple());
        let mut deleted = 0;
        let mut continuation = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&prefix)
                .set_continuation_token(continuation.take())
                .send()
                .await
                .map_err(|e| backend("list_objects_v2", &e))?;
            for object in page.contents() {
                if let Some(key) = object.key() {
                    self.delete(key).await?;
                    deleted += 1;
                }
            }
            match page.next_continuation_token() {
                Some(token) if page.is_truncated() == Some(true) => {
                    continuation = Some(token.to_owned());
                }
                _ => return Ok(deleted),
            }
        }
    }
}
