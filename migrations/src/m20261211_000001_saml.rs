//! SAML single sign-on (cloud edition): each tenant's IdP configuration
//! (its metadata, kept verbatim so the signing certificates it names are
//! the ones checked) and the AuthnRequests in flight, so a response's
//! `InResponseTo` can be matched to a request this server sent, once.
//! Consumed assertion ids go to the existing `sso_replay_cache`.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

use crate::tables::{isolate, tenant_table, tenant_unique, timestamp};

/// Tenant tables this migration creates (each gets RLS below).
pub(crate) const SAML_TABLES: &[&str] = &["saml_configs", "saml_requests"];

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

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                tenant_table("saml_configs")
                    .col(text("idp_entity_id"))
                    // The IdP's HTTP-Redirect SingleSignOnService.
                    .col(text("idp_sso_url"))
                    // The metadata as given (or fetched): signatures are
                    // checked against the certificates it lists.
                    .col(text("idp_metadata_xml"))
                    .col(ColumnDef::new("idp_metadata_url").text().null())
                    // SHA-256 fingerprints of the signing certificates, for
                    // admins comparing with their IdP's console.
                    .col(json("idp_cert_fingerprints"))
                    .col(ColumnDef::new("email_attribute").text().null())
                    .col(ColumnDef::new("name_attribute").text().null())
                    .col(ColumnDef::new("groups_attribute").text().null())
                    .col(json("group_roles"))
                    .col(json("allowed_email_domains"))
                    .col(ColumnDef::new("jit_enabled").boolean().not_null())
                    .col(text("default_role"))
                    .col(ColumnDef::new("allow_idp_initiated").boolean().not_null())
                    .col(ColumnDef::new("enabled").boolean().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                tenant_unique("saml_configs", &[])
                    .name("uq_saml_configs_tenant")
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                tenant_table("saml_requests")
                    // SHA-256 of the RelayState sent with the request.
                    .col(
                        ColumnDef::new("relay_state_hash")
                            .binary_len(32)
                            .not_null()
                            .unique_key(),
                    )
                    // The AuthnRequest's ID (random, public: the IdP echoes it).
                    .col(text("request_id"))
                    .col(text("redirect_to"))
                    .col(timestamp("expires_at"))
                    .col(
                        ColumnDef::new("consumed_at")
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .to_owned(),
            )
            .await?;

        if manager.get_database_backend() == DbBackend::Postgres {
            let mut sql = String::new();
            for table in SAML_TABLES {
                sql.push_str(&isolate(table, "tenant_id"));
            }
            manager.get_connection().execute_unprepared(&sql).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in SAML_TABLES.iter().rev() {
            manager
                .drop_table(Table::drop().table(*table).to_owned())
                .await?;
        }
        Ok(())
    }
}
