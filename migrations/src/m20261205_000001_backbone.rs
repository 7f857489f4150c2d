//! The backbone (reverse tunnel): services and their tokens, principals,
//! grants, and each tenant's sealed master secret for principal keys. All
//! tenant tables under RLS; five narrow lookups for what must be found
//! before a tenant is known (a presented token's owner, a host name's
//! service, a registration's tenant, revocations for parked tunnels).

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

use crate::tables::{isolate, owner_lookup, same_tenant_fk, tenant_table, tenant_unique};

const BACKBONE_TABLES: &[&str] = &[
    "backbone_tenants",
    "backbone_services",
    "backbone_service_tokens",
    "backbone_principals",
    "backbone_grants",
];

/// Tables the lookup functions below read (as the owner).
const LOOKUP_TABLES: &[&str] = &[
    "backbone_tenants",
    "backbone_services",
    "backbone_service_tokens",
    "backbone_principals",
];

const LOOKUP_FUNCTIONS: &str = r#"
-- The tenant owning a service token / principal credential, by the SHA-256
-- of the presented secret (256 random bits, or an HMAC output).
CREATE FUNCTION mobius_backbone_service_token_tenant(p_token_hash bytea) RETURNS uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT tenant_id FROM backbone_service_tokens WHERE token_hash = p_token_hash
$$;
CREATE FUNCTION mobius_backbone_principal_tenant(p_credential_hash bytea) RETURNS uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT tenant_id FROM backbone_principals WHERE credential_hash = p_credential_hash
$$;
-- Which tenant a host name `<service>.<domain>` belongs to (names are
-- unique across tenants, like DNS labels).
CREATE FUNCTION mobius_backbone_service_tenant(p_name text) RETURNS uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT tenant_id FROM backbone_services WHERE name = p_name
$$;
-- The tenant a self-registering principal joins: by slug, and only when
-- that tenant has not switched registration off.
CREATE FUNCTION mobius_backbone_registration_tenant(p_slug text) RETURNS uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT t.id FROM tenants t
    LEFT JOIN backbone_tenants b ON b.tenant_id = t.id
    WHERE t.slug = p_slug AND coalesce(b.open_registration, true)
$$;
-- Service tokens revoked after a time, in every tenant (ids only): parked
-- tunnels using them are closed.
CREATE FUNCTION mobius_backbone_revoked_tokens_since(p_since timestamptz)
RETURNS TABLE (token_id uuid, revoked_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT id, revoked_at FROM backbone_service_tokens WHERE revoked_at > p_since
$$;
REVOKE ALL ON FUNCTION mobius_backbone_service_token_tenant(bytea) FROM PUBLIC;
REVOKE ALL ON FUNCTION mobius_backbone_principal_tenant(bytea) FROM PUBLIC;
REVOKE ALL ON FUNCTION mobius_backbone_service_tenant(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION mobius_backbone_registration_tenant(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION mobius_backbone_revoked_tokens_since(timestamptz) FROM PUBLIC;
"#;

const DROP_FUNCTIONS: &str = "DROP FUNCTION IF EXISTS mobius_backbone_service_token_tenant(bytea);\n\
     DROP FUNCTION IF EXISTS mobius_backbone_principal_tenant(bytea);\n\
     DROP FUNCTION IF EXISTS mobius_backbone_service_tenant(text);\n\
     DROP FUNCTION IF EXISTS mobius_backbone_registration_tenant(text);\n\
     DROP FUNCTION IF EXISTS mobius_backbone_revoked_tokens_since(timestamptz);\n";

#[derive(DeriveMigrationName)]
pub struct Migration;

fn hash_column(name: &'static str) -> ColumnDef {
    let mut col = ColumnDef::new(name);
    col.binary_len(32).not_null().unique_key();
    col
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                tenant_table("backbone_tenants")
                    // 32 random bytes sealed by the edition's SecretSealer
                    // (context: tenant id): the root of principal keys.
                    .col(ColumnDef::new("sealed_master_secret").binary().not_null())
                    .col(
                        ColumnDef::new("open_registration")
                            .boolean()
                            .not_null()
                            .default(true),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("uq_backbone_tenants_tenant")
                    .table("backbone_tenants")
                    .col("tenant_id")
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                tenant_table("backbone_services")
                    .col(ColumnDef::new("name").string().not_null())
                    .col(
                        ColumnDef::new("require_identity")
                            .boolean()
                            .not_null()
                            .default(false),
                    )
                    .to_owned(),
            )
            .await?;
        // Global, not per tenant: the name is a host name under one domain.
        manager
            .create_index(
                Index::create()
                    .name("uq_backbone_services_name")
                    .table("backbone_services")
                    .col("name")
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                tenant_table("backbone_service_tokens")
                    .col(ColumnDef::new("service_id").uuid().not_null())
                    .col(hash_column("token_hash"))
                    .col(ColumnDef::new("created_by").uuid().null())
                    .col(
                        ColumnDef::new("last_used_at")
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .col(
                        ColumnDef::new("revoked_at")
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .foreign_key(&mut same_tenant_fk(
                        "backbone_service_tokens",
                        "service_id",
                        "backbone_services",
                        ForeignKeyAction::Cascade,
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                tenant_table("backbone_principals")
                    .col(ColumnDef::new("name").string().not_null())
                    .col(ColumnDef::new("email").string().not_null())
                    .col(ColumnDef::new("note").string().null())
                    .col(
                        ColumnDef::new("key_version")
                            .integer()
                            .not_null()
                            .default(1),
                    )
                    .col(hash_column("credential_hash"))
                    .col(
                        ColumnDef::new("revoked_at")
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                tenant_table("backbone_grants")
                    .col(ColumnDef::new("principal_id").uuid().not_null())
                    .col(ColumnDef::new("service_id").uuid().not_null())
                    .foreign_key(&mut same_tenant_fk(
                        "backbone_grants",
                        "principal_id",
                        "backbone_principals",
                        ForeignKeyAction::Cascade,
                    ))
                    .foreign_key(&mut same_tenant_fk(
                        "backbone_grants",
                        "service_id",
                        "backbone_services",
                        ForeignKeyAction::Cascade,
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(tenant_unique(
                "backbone_grants",
                &["principal_id", "service_id"],
            ))
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_backbone_service_tokens_revoked_at")
                    .table("backbone_service_tokens")
                    .col("revoked_at")
                    .to_owned(),
            )
            .await?;
        if manager.get_database_backend() == DbBackend::Postgres {
            let mut sql = String::new();
            for table in BACKBONE_TABLES {
                sql.push_str(&isolate(table, "tenant_id"));
            }
            for table in LOOKUP_TABLES {
                sql.push_str(&owner_lookup(table));
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
                .execute_unprepared(DROP_FUNCTIONS)
                .await?;
        }
        for table in BACKBONE_TABLES.iter().rev() {
            manager
                .drop_table(Table::drop().table(*table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
