//! Tenancy object and input types, built from core rows.

use crate::admin::graphql::prelude::*;

#[derive(SimpleObject, Clone)]
#[graphql(name = "Tenant", complex)]
pub struct TenantNode {
    pub id: ID,
    pub name: String,
    pub slug: String,
    /// Longest lifetime an API token may be given, in days.
    pub api_token_max_days: i32,
}

impl From<mobius_core::tenancy::Tenant> for TenantNode {
    fn from(t: mobius_core::tenancy::Tenant) -> Self {
        TenantNode {
            id: global_id("Tenant", t.id),
            name: t.name,
            slug: t.slug,
            api_token_max_days: t.api_token_max_days,
        }
    }
}

#[derive(SimpleObject, Clone)]
#[graphql(name = "Site")]
pub struct SiteNode {
    pub id: ID,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<mobius_core::tenancy::Site> for SiteNode {
    fn from(s: mobius_core::tenancy::Site) -> Self {
        SiteNode {
            id: global_id("Site", s.id),
            name: s.name,
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}

#[derive(SimpleObject, Clone)]
#[graphql(name = "Team")]
pub struct TeamNode {
    pub id: ID,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<mobius_core::tenancy::Team> for TeamNode {
    fn from(t: mobius_core::tenancy::Team) -> Self {
        TeamNode {
            id: global_id("Team", t.id),
            name: t.name,
            created_at: t.created_at,
            updated_at: t.updated_at,
        }
    }
}

#[derive(InputObject)]
pub struct TenantInput {
    pub name: Option<String>,
    /// Longest lifetime an API token may be given, in days (1 to 3650).
    pub api_token_max_days: Option<i32>,
}

#[derive(InputObject)]
pub struct SiteInput {
    pub name: String,
}

#[derive(InputObject)]
pub struct TeamInput {
    pub name: String,
}
