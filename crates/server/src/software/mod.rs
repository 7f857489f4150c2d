//! Software distribution on the server: installer storage, the admin REST
//! surface (`/api/v1/mobius/software/*`), the device endpoints an agent
//! uses while installing (signed downloads with HTTP ranges, progress),
//! and the job that fails installs whose device stayed away too long.

pub mod device;
pub mod rest;
pub mod storage;
pub mod token;

use std::sync::Arc;

use anyhow::{Context as _, bail};
use secrecy::ExposeSecret;

use crate::settings::Settings;
use storage::InstallerStorage;

/// What the software endpoints share on both listeners.
#[derive(Clone)]
pub struct SoftwareServices {
    pub storage: Arc<dyn InstallerStorage>,
    pub max_installer_bytes: u64,
    pub download_url_ttl: chrono::Duration,
}

impl SoftwareServices {
    /// The storage the settings name: `local` (default) or `s3`.
    pub fn from_settings(settings: &Settings) -> anyhow::Result<SoftwareServices> {
        let storage: Arc<dyn InstallerStorage> = match settings.software_storage.as_str() {
            "local" => {
                let dir = settings
                    .software_local_dir
                    .clone()
                    .unwrap_or_else(|| settings.data_dir.join("installers"));
                Arc::new(storage::local::LocalStorage::new(&dir).with_context(|| {
                    format!(
                        "cannot create the installer directory {} (setting software_local_dir)",
                        dir.display()
                    )
                })?)
            }
            "s3" => {
                let Some(bucket) = settings.software_s3_bucket.clone() else {
                    bail!("software_storage = \"s3\" needs software_s3_bucket");
                };
                // Credentials: the settings, else the standard AWS
                // variables (the SDK's own convention; read once, here).
                let access = settings
                    .software_s3_access_key_id
                    .clone()
                    .or_else(|| std::env::var("AWS_ACCESS_KEY_ID").ok());
                let secret = settings
                    .software_s3_secret_access_key
                    .as_ref()
                    .map(|s| s.expose_secret().to_owned())
                    .or_else(|| std::env::var("AWS_SECRET_ACCESS_KEY").ok());
                let (Some(access), Some(secret)) = (access, secret) else {
                    bail!(
                        "no credentials for the installer bucket: set software_s3_access_key_id and software_s3_secret_access_key, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                    );
                };
                Arc::new(storage::s3::S3Storage::new(storage::s3::S3Config {
                    bucket,
                    endpoint: settings.software_s3_endpoint.clone(),
                    region: settings.software_s3_region.clone(),
                    path_style: settings.software_s3_path_style,
                    access_key_id: access,
                    secret_access_key: secret,
                }))
            }
            other => bail!("software_storage must be local or s3, not {other:?}"),
        };
        if settings.software_download_url_ttl_secs == 0 {
            bail!("software_download_url_ttl_secs must be at least 1");
        }
        tracing::info!(backend = storage.backend(), "installer storage");
        Ok(SoftwareServices {
            storage,
            max_installer_bytes: settings.software_max_installer_bytes,
            download_url_ttl: chrono::Duration::seconds(
                i64::try_from(settings.software_download_url_ttl_secs).unwrap_or(i64::MAX / 1000),
            ),
        })
    }
}
