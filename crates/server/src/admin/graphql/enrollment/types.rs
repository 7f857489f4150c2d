//! Enrollment object and input types, built from core rows.

use crate::admin::graphql::prelude::*;

/// Longest an enrollment token may live: a week.
pub(crate) const MAX_TOKEN_TTL_MINUTES: i32 = 7 * 24 * 60;

#[derive(SimpleObject, Clone)]
#[graphql(name = "EnrollmentToken")]
pub struct EnrollmentTokenNode {
    pub id: ID,
    pub name: String,
    pub site_id: ID,
    pub expires_at: DateTime<Utc>,
    pub max_uses: i32,
    pub uses: i32,
    pub allowed_ips: Vec<String>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

impl From<mobius_core::enrollment::EnrollmentToken> for EnrollmentTokenNode {
    fn from(t: mobius_core::enrollment::EnrollmentToken) -> Self {
        EnrollmentTokenNode {
            id: global_id("EnrollmentToken", t.id),
            name: t.name,
            site_id: global_id("Site", t.site_id),
            expires_at: t.expires_at,
            max_uses: t.max_uses,
            uses: t.uses,
            allowed_ips: t
                .allowed_ips
                .and_then(|v| serde_json::from_value(v).ok())
                .unwrap_or_default(),
            revoked_at: t.revoked_at,
            created_at: t.created_at,
        }
    }
}

#[derive(SimpleObject)]
pub struct CreatedEnrollmentToken {
    /// Give this to `mobius-agent enroll --token`. Shown once: only a hash
    /// of its secret is kept. It also pins the device listener's CA.
    pub token: String,
    pub enrollment_token: EnrollmentTokenNode,
}

#[derive(InputObject)]
pub struct CreateEnrollmentTokenInput {
    pub site_id: ID,
    #[graphql(default_with = "String::from(\"enrollment token\")")]
    pub name: String,
    /// Minutes until it expires: default 15, at most a week.
    #[graphql(default = 15)]
    pub ttl_minutes: i32,
    /// How many enrollments it allows: default 1.
    #[graphql(default = 1)]
    pub max_uses: i32,
    /// Addresses or CIDR networks allowed to use it; empty: any.
    #[graphql(default)]
    pub allowed_ips: Vec<String>,
}
