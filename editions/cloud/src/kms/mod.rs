//! AWS KMS envelope sealing (feature `kms`).
//!
//! Each secret is sealed with AES-256-GCM under a data key from
//! `GenerateDataKey` on the configured KMS key; the data key, wrapped by
//! KMS, is stored beside the ciphertext:
//!
//! `2 || len(key id) u16 || key id || len(wrapped) u16 || wrapped || nonce(12) || ciphertext+tag`
//!
//! Every KMS call carries the encryption context `{tenant_id, purpose}`
//! (`tenant_id` is `platform` for platform secrets), so KMS itself refuses
//! to unwrap a data key for another tenant or purpose; the AES-GCM
//! associated data binds the full context (with the row id) as before.
//!
//! Data keys are cached, bounded: a sealing key per `{tenant_id, purpose}`
//! is reused for at most `data_key_max_uses` seals and
//! `data_key_max_age_secs`; opened data keys are kept for up to
//! `open_cache_entries` wrapped keys. Enrollment opens the tenant CA key
//! once per server (the PKI keeps the opened issuer), so an enrollment
//! storm of any size costs one `Decrypt` per tenant per server.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use aws_sdk_kms::error::ProvideErrorMetadata;
use aws_sdk_kms::primitives::Blob;
use mobius_core::crypto::kms::KmsSettings;
use mobius_core::crypto::sealing::{SealContext, SealError, SecretSealer};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

/// First byte of a KMS-sealed value.
pub const KMS_FORMAT_V2: u8 = 2;

struct DataKey {
    plaintext: [u8; 32],
    wrapped: Vec<u8>,
    key_id: String,
    made: Instant,
    uses: u32,
}

#[derive(Default)]
struct OpenCache {
    keys: HashMap<[u8; 32], [u8; 32]>,
    order: VecDeque<[u8; 32]>,
}

/// The KMS sealer (opens local values through `local`, when given).
pub struct KmsSealer {
    client: aws_sdk_kms::Client,
    key_id: String,
    max_uses: u32,
    max_age: Duration,
    open_entries: usize,
    sealing: Mutex<HashMap<(String, &'static str), DataKey>>,
    opened: Mutex<OpenCache>,
    local: Option<std::sync::Arc<dyn SecretSealer>>,
    /// KMS calls made, for logs and tests.
    calls: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for KmsSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KmsSealer")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl KmsSealer {
    pub fn new(
        settings: &KmsSettings,
        local: Option<std::sync::Arc<dyn SecretSealer>>,
    ) -> anyhow::Result<KmsSealer> {
        if settings.key_id.trim().is_empty() {
            anyhow::bail!("kms.key_id is empty: name the KMS key (id, ARN or alias/...)");
        }
        if settings.data_key_max_uses == 0 || settings.open_cache_entries == 0 {
            anyhow::bail!("kms.data_key_max_uses and kms.open_cache_entries must be at least 1");
        }
        // Credentials: the settings, else the standard AWS variables (the
        // SDK's own convention; read here, once, at start).
        let access = settings
            .access_key_id
            .clone()
            .or_else(|| std::env::var("AWS_ACCESS_KEY_ID").ok());
        let secret = settings
            .secret_access_key
            .as_ref()
            .map(|s| s.expose_secret().to_owned())
            .or_else(|| std::env::var("AWS_SECRET_ACCESS_KEY").ok());
        let token = settings
            .session_token
            .as_ref()
            .map(|s| s.expose_secret().to_owned())
            .or_else(|| std::env::var("AWS_SESSION_TOKEN").ok());
        let (Some(access), Some(secret)) = (access, secret) else {
            anyhow::bail!(
                "no AWS credentials for KMS: set kms.access_key_id and kms.secret_access_key, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            );
        };
        let credentials =
            aws_sdk_kms::config::Credentials::new(access, secret, token, None, "mobius-settings");
        let timeout = Duration::from_secs(settings.call_timeout_secs.max(1));
        let mut config = aws_sdk_kms::Config::builder()
            .behavior_version(aws_sdk_kms::config::BehaviorVersion::latest())
            .region(aws_sdk_kms::config::Region::new(settings.region.clone()))
            .credentials_provider(credentials)
            .retry_config(aws_sdk_kms::config::retry::RetryConfig::standard().with_max_attempts(2))
            .timeout_config(
                aws_sdk_kms::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(timeout)
                    .operation_timeout(timeout)
                    .build(),
            );
        if let Some(url) = &settings.endpoint_url {
            config = config.endpoint_url(url.clone());
        }
        Ok(KmsSealer {
            client: aws_sdk_kms::Client::from_conf(config.build()),
            key_id: settings.key_id.clone(),
            max_uses: settings.data_key_max_uses,
            max_age: Duration::from_secs(settings.data_key_max_age_secs),
            open_entries: settings.open_cache_entries,
            sealing: Mutex::new(HashMap::new()),
            opened: Mutex::new(OpenCache::default()),
            local,
            calls: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// KMS calls made so far.
    pub fn kms_calls(&self) -> u64 {
        self.calls.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The configured key (new values are sealed under it).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Whether `sealed` is a KMS value under the configured key (as
    /// KMS reports it: the key's ARN; compared as a suffix so an id or
    /// ARN setting both match).
    pub fn is_current(&self, sealed: &[u8]) -> bool {
        match parse(sealed) {
            Some(parts) => {
                parts.key_id == self.key_id
                    || parts.key_id.ends_with(&format!("/{}", self.key_id))
                    || self.key_id.ends_with(&format!("/{}", parts.key_id))
            }
            None => false,
        }
    }

    fn pairs(context: &SealContext) -> (String, &'static str) {
        (
            context
                .tenant_id()
                .map_or_else(|| "platform".to_owned(), |t| t.to_string()),
            context.purpose(),
        )
    }

    fn count_call(&self) {
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    async fn data_key(
        &self,
        context: &SealContext,
    ) -> Result<([u8; 32], Vec<u8>, String), SealError> {
        let pairs = Self::pairs(context);
        let mut sealing = self.sealing.lock().await;
        if let Some(key) = sealing.get_mut(&pairs)
            && key.uses < self.max_uses
            && key.made.elapsed() < self.max_age
        {
            key.uses += 1;
            return Ok((key.plaintext, key.wrapped.clone(), key.key_id.clone()));
        }
        self.count_call();
        let out = self
            .client
            .generate_data_key()
            .key_id(&self.key_id)
            .key_spec(aws_sdk_kms::types::DataKeySpec::Aes256)
            .encryption_context("tenant_id", pairs.0.clone())
            .encryption_context("purpose", pairs.1)
            .send()
            .await
            .map_err(|e| key_service("GenerateDataKey", &e))?;
        let plaintext: [u8; 32] = out
            .plaintext()
            .map(|b| b.as_ref().to_vec())
            .unwrap_or_default()
            .try_into()
            .map_err(|_| SealError::KeyService("GenerateDataKey returned no 32-byte key".into()))?;
        let wrapped = out
            .ciphertext_blob()
            .map(|b| b.as_ref().to_vec())
            .ok_or_else(|| {
                SealError::KeyService("GenerateDataKey returned no wrapped key".into())
            })?;
        let key_id = out.key_id().unwrap_or(&self.key_id).to_owned();
        // Opening what was just sealed needs no Decrypt.
        self.remember(Self::open_cache_key(&pairs, &wrapped), plaintext)
            .await;
        sealing.insert(
            pairs,
            DataKey {
                plaintext,
                wrapped: wrapped.clone(),
                key_id: key_id.clone(),
                made: Instant::now(),
                uses: 1,
            },
        );
        Ok((plaintext, wrapped, key_id))
    }

    /// The open cache's key: context pairs and wrapped key together, so
    /// a data key known for one context is never used for another.
    fn open_cache_key(pairs: &(String, &'static str), wrapped: &[u8]) -> [u8; 32] {
        let mut digest = Sha256::new();
        digest.update(pairs.0.as_bytes());
        digest.update([0]);
        digest.update(pairs.1.as_bytes());
        digest.update([0]);
        digest.update(wrapped);
        digest.finalize().into()
    }

    /// Keeps an unwrapped data key, evicting the oldest beyond the bound.
    async fn remember(&self, cache_key: [u8; 32], key: [u8; 32]) {
        let mut opened = self.opened.lock().await;
        if opened.keys.insert(cache_key, key).is_none() {
            opened.order.push_back(cache_key);
        }
        while opened.order.len() > self.open_entries {
            if let Some(old) = opened.order.pop_front() {
                opened.keys.remove(&old);
            }
        }
    }

    async fn unwrap_key(
        &self,
        context: &SealContext,
        key_id: &str,
        wrapped: &[u8],
    ) -> Result<[u8; 32], SealError> {
        let pairs = Self::pairs(context);
        let cache_key = Self::open_cache_key(&pairs, wrapped);
        if let Some(key) = self.opened.lock().await.keys.get(&cache_key) {
            return Ok(*key);
        }
        self.count_call();
        let out = self
            .client
            .decrypt()
            .key_id(key_id)
            .ciphertext_blob(Blob::new(wrapped.to_vec()))
            .encryption_context("tenant_id", pairs.0)
            .encryption_context("purpose", pairs.1)
            .send()
            .await
            .map_err(|e| match e.code() {
                // Another context, another key, or a corrupt blob.
                Some("InvalidCiphertextException" | "IncorrectKeyException") => {
                    SealError::Unsealable
                }
                _ => key_service("Decrypt", &e),
            })?;
        let key: [u8; 32] = out
            .plaintext()
            .map(|b| b.as_ref().to_vec())
            .unwrap_or_default()
            .try_into()
            .map_err(|_| SealError::KeyService("Decrypt returned no 32-byte key".into()))?;
        self.remember(cache_key, key).await;
        Ok(key)
    }
}

fn key_service<E: std::fmt::Display + ProvideErrorMetadata>(call: &str, err: &E) -> SealError {
    SealError::KeyService(format!(
        "KMS {call} failed: {}{}",
        err.code().unwrap_or("no answer"),
        err.message()
            .map(|m| format!(" ({m})"))
            .unwrap_or_else(|| format!(" ({err})")),
    ))
}

struct Parts<'a> {
    key_id: String,
    wrapped: &'a [u8],
    nonce: [u8; 12],
    ciphertext: &'a [u8],
}

fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if rest.len() < n {
        return None;
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Some(head)
}

fn parse(sealed: &[u8]) -> Option<Parts<'_>> {
    let (&version, mut rest) = sealed.split_first()?;
    if version != KMS_FORMAT_V2 {
        return None;
    }
    let len = u16::from_be_bytes(take(&mut rest, 2)?.try_into().ok()?) as usize;
    let key_id = String::from_utf8(take(&mut rest, len)?.to_vec()).ok()?;
    let len = u16::from_be_bytes(take(&mut rest, 2)?.try_into().ok()?) as usize;
    let wrapped = take(&mut rest, len)?;
    let nonce: [u8; 12] = take(&mut rest, 12)?.try_into().ok()?;
    if rest.len() < 16 {
        return None;
    }
    Some(Parts {
        key_id,
        wrapped,
        nonce,
        ciphertext: rest,
    })
}

#[async_trait::async_trait]
impl SecretSealer for KmsSealer {
    async fn seal(&self, context: &SealContext, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let (key, wrapped, key_id) = self.data_key(context).await?;
        let nonce: [u8; 12] = rand::random();
        let aad = context.associated_data();
        let ciphertext = Aes256Gcm::new((&key).into())
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| SealError::Unsealable)?;
        let key_len = u16::try_from(key_id.len())
            .map_err(|_| SealError::KeyService("key id too long".into()))?;
        let wrapped_len = u16::try_from(wrapped.len())
            .map_err(|_| SealError::KeyService("wrapped key too long".into()))?;
        let mut out = Vec::with_capacity(5 + key_id.len() + wrapped.len() + 12 + ciphertext.len());
        out.push(KMS_FORMAT_V2);
        out.extend_from_slice(&key_len.to_be_bytes());
        out.extend_from_slice(key_id.as_bytes());
        out.extend_from_slice(&wrapped_len.to_be_bytes());
        out.extend_from_slice(&wrapped);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        Ok(out)
    }

    async fn open(&self, context: &SealContext, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        if sealed.first() == Some(&mobius_core::crypto::sealing::LOCAL_FORMAT_V1) {
            return match &self.local {
                Some(local) => local.open(context, sealed).await,
                None => Err(SealError::Unsealable),
            };
        }
        let parts = parse(sealed).ok_or(SealError::Unsealable)?;
        let key = self
            .unwrap_key(context, &parts.key_id, parts.wrapped)
            .await?;
        let aad = context.associated_data();
        Aes256Gcm::new((&key).into())
            .decrypt(
                &Nonce::from(parts.nonce),
                Payload {
                    msg: parts.ciphertext,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| SealError::Unsealable)
    }
}
