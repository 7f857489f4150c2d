//! Single sign-on: each tenant's OIDC configuration, the short-lived
//! login-state records that bind `state`, `nonce` and the PKCE verifier of
//! one sign-in to this server, the link from an IdP subject to a user, and
//! a replay cache of consumed assertions (ID tokens; SAML assertion ids).
//!
//! Sign-in starts before anyone is authenticated, at a URL naming the
//! tenant by slug, so one new cross-tenant lookup finds a tenant by slug:
//! `mobius_tenant_by_slug(text)` (the slug is public: it is in the URL).

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

use crate::tables::{isolate, same_tenant_fk, tenant_table, tenant_unique, timestamp};

/// Tenant tables this migration creates (each gets RLS below).
pub(crate) const SSO_TABLES: &[&str] = &[
    "sso_configs",
    "sso_login_states",
    "sso_identities",
    "sso_replay_cache",
];

const LOOKUP_FUNCTIONS: &str = r#"
-- The tenant with this slug (slugs are public: they name the tenant in
-- sign-in URLs). The owner's `owner_lookup` policy on tenants lets it read.
CREATE FUNCTION mobius_tenant_by_slug(p_slug text) RETURNS uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT id FROM tenants WHERE slug = p_slug
$$;
REVOKE ALL ON FUNCTION mobius_tenant_by_slug(text) FROM PUBLIC;
"#;

#[derive(DeriveMigrationName)]
pub struct Migration;

fn text(name: &'static str) -> ColumnDef {
    let mut col = ColumnDef::new(name);
    col.text().not_null();
    col
}

fn json(name: &'static str) -> ColumnDef {
    let mut col = ColumnDef::new(name);
    col.json_binary().not_null();
    col
}

fn hash(name: &'static str) -> ColumnDef {
    let mut col = ColumnDef::new(name);
    col.binary_len(32).not_null();
    col
}

fn nullable_time(name: &'static str) -> ColumnDef {
    let mut col = ColumnDef::new(name);
    col.timestamp_with_time_zone().null();
    col
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                tenant_table("sso_configs")
                    .col(text("issuer_url"))
                    .col(text("client_id"))
                    // Sealed with the server's SecretSealer (context names
                    // the tenant); never returned by the API.
                    .col(ColumnDef::new("sealed_client_secret").binary().null())
                    .col(json("scopes"))
                    .col(json("allowed_email_domains"))
                    .col(ColumnDef::new("groups_claim").text().null())
                    .col(json("group_roles"))
                    .col(ColumnDef::new("jit_enabled").boolean().not_null())
                    .col(text("default_role"))
                    .col(ColumnDef::new("sso_required").boolean().not_null())
                    .col(json("break_glass_user_ids"))
                    .col(json("allowed_redirect_origins"))
                    .col(ColumnDef::new("enabled").boolean().not_null())
                    .to_owned(),
            )
            .await?;
        // One configuration per tenant.
        manager
            .create_index(
                tenant_unique("sso_configs", &[])
                    .name("uq_sso_configs_tenant")
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                tenant_table("sso_login_states")
                    // SHA-256 of the `state` sent through the browser.
                    .col(hash("state_hash").unique_key().to_owned())
                    // SHA-256 of the nonce the ID token must carry.
                    .col(hash("nonce_hash"))
                    // Sent in clear to the IdP's token endpoint, so sealed
                    // rather than hashed.
                    .col(ColumnDef::new("sealed_pkce_verifier").binary().not_null())
                    .col(text("redirect_to"))
                    // For `mobius login --sso`: the CLI's loopback port and
                    // the S256 challenge of its own verifier.
                    .col(ColumnDef::new("cli_challenge").text().null())
                    .col(timestamp("expires_at"))
                    .col(nullable_time("consumed_at"))
                    // The one-time code handed to the CLI's loopback listener.
                    .col(
                        ColumnDef::new("handoff_hash")
                            .binary_len(32)
                            .null()
                            .unique_key(),
                    )
                    .col(ColumnDef::new("user_id").uuid().null())
                    .foreign_key(&mut same_tenant_fk(
                        "sso_login_states",
                        "user_id",
                        "users",
                        ForeignKeyAction::Cascade,
                    ))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                tenant_table("sso_identities")
                    .col(ColumnDef::new("user_id").uuid().not_null())
                    .col(text("issuer"))
                    .col(text("subject"))
                    .foreign_key(&mut same_tenant_fk(
                        "sso_identities",
                        "user_id",
                        "users",
                        ForeignKeyAction::Cascade,
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(tenant_unique("sso_identities", &["issuer", "subject"]))
            .await?;

        manager
            .create_table(
                tenant_table("sso_replay_cache")
                    .col(hash("key_hash"))
                    .col(timestamp("expires_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(tenant_unique("sso_replay_cache", &["key_hash"]))
            .await?;

        if manager.get_database_backend() == DbBackend::Postgres {
            let mut sql = String::new();
            for table in SSO_TABLES {
                sql.push_str(&isolate(table, "tenant_id"));
            }
            sql.push_str(LOOKUP_FUNCTIONS);
            manager.get_connection().execute_unprepared(&sql).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == DbBackend::Postgres {
            manager
                .get_connection()
                .execute_unprepared("DROP FUNCTION IF EXISTS mobius_tenant_by_slug(text);\n")
                .await?;
        }
        for table in SSO_TABLES.iter().rev() {
            manager
                .drop_table(Table::drop().table(*table).to_owned())
                .await?;
        }
        Ok(())
    }
}
