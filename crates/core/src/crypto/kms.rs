//! Settings of the cloud edition's AWS KMS envelope sealing (`[kms]`).
//! The sealer itself lives in the cloud edition, the only binary that
//! links the AWS SDK.

use secrecy::SecretString;
use serde::{Deserialize, Serialize, Serializer};

/// The `[kms]` settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KmsSettings {
    /// The KMS key (id, ARN or `alias/...`) new data keys are made under.
    /// Changing it rotates: old values still open (their wrapped data key
    /// names its key), and `reseal --to kms` re-wraps them.
    pub key_id: String,
    /// AWS region, e.g. `eu-west-1`.
    pub region: String,
    /// Another KMS endpoint (a VPC endpoint, or an emulator in tests).
    pub endpoint_url: Option<String>,
    /// Static credentials; unset: `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`
    /// / `AWS_SESSION_TOKEN` from the environment.
    pub access_key_id: Option<String>,
    #[serde(serialize_with = "redact")]
    pub secret_access_key: Option<SecretString>,
    #[serde(serialize_with = "redact")]
    pub session_token: Option<SecretString>,
    /// A data key is reused for at most this many seals...
    pub data_key_max_uses: u32,
    /// ...and this many seconds (AWS Encryption SDK style caching).
    pub data_key_max_age_secs: u64,
    /// Opened data keys kept in memory (least recently used goes first).
    pub open_cache_entries: usize,
    /// Each KMS call gives up after this long.
    pub call_timeout_secs: u64,
}

impl Default for KmsSettings {
    fn default() -> Self {
        KmsSettings {
            key_id: String::new(),
            region: "us-east-1".into(),
            endpoint_url: None,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            data_key_max_uses: 1000,
            data_key_max_age_secs: 300,
            open_cache_entries: 1024,
            call_timeout_secs: 5,
        }
    }
}

fn redact<S: Serializer>(value: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        None => s.serialize_none(),
        Some(_) => s.serialize_str("***"),
    }
}
