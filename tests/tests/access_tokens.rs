//! Access-token signing keys: sealed at rest, rotatable without logging
//! anyone out.

use std::sync::Arc;

use mobius_core::Uuid;
use mobius_core::crypto::sealing::{LocalSealer, SecretSealer};
use mobius_core::identity::access_tokens::{AccessTokenError, AccessTokens};
use mobius_tests::{Backend, TestStore};

#[tokio::test]
async fn rotation_keeps_old_tokens_valid_and_signs_new_ones_with_the_new_key() {
    let t = TestStore::new(Backend::Sqlite).await;
    let sealer: Arc<dyn SecretSealer> = Arc::new(LocalSealer::new(&[7u8; 32]));
    let tokens = AccessTokens::load(t.store.clone(), sealer.clone())
        .await
        .unwrap();
    let (user, tenant, session) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());

    let (before, _) = tokens.issue(user, tenant, session).await.unwrap();
    let new_kid = tokens.rotate().await.unwrap();
    let (after, _) = tokens.issue(user, tenant, session).await.unwrap();

    let kid_of = |token: &str| {
        use base64::Engine;
        let header = token.split('.').next().unwrap();
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&json).unwrap()["kid"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_ne!(kid_of(&before), kid_of(&after));
    assert_eq!(kid_of(&after), new_kid.to_string());
    for token in [&before, &after] {
        let claims = tokens.verify(token).await.unwrap();
        assert_eq!(
            (claims.sub, claims.tid, claims.sid),
            (user, tenant, session)
        );
        assert_eq!(
            claims.exp - claims.iat,
            15 * 60,
            "access tokens live 15 minutes"
        );
    }

    // A second server on the same store learns the new key on first sight.
    let other = AccessTokens::load(t.store.clone(), sealer).await.unwrap();
    assert!(other.verify(&after).await.is_ok());

    // Tampering and foreign signatures are refused.
    let mut forged = after.clone();
    forged.replace_range(forged.len() - 4.., "AAAA");
    assert!(matches!(
        tokens.verify(&forged).await,
        Err(AccessTokenError::Invalid)
    ));
    assert!(matches!(
        tokens.verify("not.a.jwt").await,
        Err(AccessTokenError::Invalid)
    ));
}

#[tokio::test]
async fn signing_keys_cannot_be_opened_with_another_master_key() {
    let t = TestStore::new(Backend::Sqlite).await;
    AccessTokens::load(t.store.clone(), Arc::new(LocalSealer::new(&[1u8; 32])))
        .await
        .unwrap();
    let wrong = AccessTokens::load(t.store.clone(), Arc::new(LocalSealer::new(&[2u8; 32]))).await;
    let message = wrong.unwrap_err().to_string();
    assert!(message.contains("master key"), "{message}");
}

#[tokio::test]
async fn sealed_values_are_bound_to_their_context() {
    let sealer = LocalSealer::new(&[9u8; 32]);
    let sealed = sealer.seal("tenant-a", b"secret key bytes").await.unwrap();
    assert!(
        !sealed.windows(6).any(|w| w == b"secret"),
        "ciphertext must not contain the plaintext"
    );
    assert_eq!(
        sealer.open("tenant-a", &sealed).await.unwrap(),
        b"secret key bytes"
    );
    assert!(
        sealer.open("tenant-b", &sealed).await.is_err(),
        "another context cannot open it"
    );
    let mut flipped = sealed.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    assert!(
        sealer.open("tenant-a", &flipped).await.is_err(),
        "a flipped bit is detected"
    );
}
