//! Access-token signing keys: sealed at rest, rotatable without logging
//! anyone out.

use std::sync::Arc;

use mobius_core::Uuid;
use mobius_core::crypto::sealing::{LocalSealer, SealContext, SecretSealer};
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
    let sealed = sealer
        .seal(
            &SealContext::platform("test", "tenant-a"),
            b"secret key bytes",
        )
        .await
        .unwrap();
    assert!(
        !sealed.windows(6).any(|w| w == b"secret"),
        "ciphertext must not contain the plaintext"
    );
    assert_eq!(
        sealer
            .open(&SealContext::platform("test", "tenant-a"), &sealed)
            .await
            .unwrap(),
        b"secret key bytes"
    );
    assert!(
        sealer
            .open(&SealContext::platform("test", "tenant-b"), &sealed)
            .await
            .is_err(),
        "another context cannot open it"
    );
    let mut flipped = sealed.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    assert!(
        sealer
            .open(&SealContext::platform("test", "tenant-a"), &flipped)
            .await
            .is_err(),
        "a flipped bit is detected"
    );
}

/// A key another server made since is learnt on first sight, but forged
/// key ids cannot make every request a database query: ids older than the
/// newest known key, or dated in the future, are refused without a look,
/// and other unknown ids reload the keys at most once a second.
#[tokio::test]
async fn unknown_key_ids_reload_only_for_plausible_new_keys_and_at_most_once_a_second() {
    let t = TestStore::new(Backend::Sqlite).await;
    let sealer: Arc<dyn SecretSealer> = Arc::new(LocalSealer::new(&[5u8; 32]));
    let here = AccessTokens::load(t.store.clone(), sealer.clone())
        .await
        .unwrap();
    let there = AccessTokens::load(t.store.clone(), sealer).await.unwrap();
    there.rotate().await.unwrap();
    let ids = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let (from_there, _) = there.issue(ids.0, ids.1, ids.2).await.unwrap();
    assert!(
        here.verify(&from_there).await.is_ok(),
        "a rotation elsewhere is learnt"
    );

    // Forged tokens naming unknown key ids: fresh UUIDv7s (plausible),
    // one from the far future, one older than every known key.
    let header = |kid: Uuid| {
        use base64::Engine;
        let json = serde_json::json!({ "alg": "EdDSA", "typ": "JWT", "kid": kid.to_string() });
        format!(
            "{}.e30.AAAA",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json.to_string())
        )
    };
    let future = Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        4_000_000_000,
        0,
    ));
    let old = Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        1_000_000_000,
        0,
    ));
    let before = t.store.statement_count();
    for kid in [future, old] {
        assert!(matches!(
            here.verify(&header(kid)).await,
            Err(AccessTokenError::Invalid)
        ));
    }
    assert_eq!(
        t.store.statement_count(),
        before,
        "implausible ids cost no query"
    );
    for _ in 0..50 {
        assert!(matches!(
            here.verify(&header(Uuid::now_v7())).await,
            Err(AccessTokenError::Invalid)
        ));
    }
    let reload_cost = t.store.statement_count() - before;
    assert!(
        reload_cost <= 2,
        "50 forged ids within a second cost {reload_cost} statements (one reload at most)"
    );
}
