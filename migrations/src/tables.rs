//! Builders shared by the migrations so every tenant-owned table has the
//! same shape: a UUID key, `tenant_id`, timestamps, and a `(tenant_id, id)`
//! unique key that child tables reference so a row can never point at
//! another tenant's row.

use sea_orm_migration::prelude::*;

/// Every table that carries `tenant_id`, in creation order. The RLS
/// migration enables policies on exactly these; a test checks that no
/// table with a `tenant_id` column is missing from the database's policies.
pub const TENANT_TABLES: &[&str] = &[
    "sites",
    "teams",
    "users",
    "team_memberships",
    "devices",
    "enrollment_tokens",
    "audit_events",
    "refresh_tokens",
    "invitations",
    "api_tokens",
    "certificate_authorities",
    "revoked_devices",
    "sso_configs",
    "sso_login_states",
    "sso_identities",
    "sso_replay_cache",
    "billing_plans",
    "billing_stripe_events",
    "billing_usage_days",
    "plan_signing_keys",
    "plans",
    "plan_executions",
    "plan_operation_results",
    "plan_execution_logs",
    "backbone_tenants",
    "backbone_services",
    "backbone_service_tokens",
    "backbone_principals",
    "backbone_grants",
    "saml_configs",
    "saml_requests",
    "software_titles",
    "software_versions",
    "software_installs",
    "software_inventory",
    // Live queries and policies (m20261208_000001_queries).
    "query_campaigns",
    "query_campaign_devices",
    "policies",
    "policy_results",
    "policy_webhooks",
    "webhook_deliveries",
    // m20261209_000001_osquery
    "agent_option_layers",
    "osquery_enroll_secrets",
    "osquery_nodes",
    "osquery_result_logs",
    "osquery_status_logs",
    // m20261212_000001_portal
    "portal_tokens",
    "portal_branding",
];

/// Tables without `tenant_id` that the request role may still use, with
/// the privileges it gets on each.
pub const SHARED_TABLES: &[(&str, &str)] = &[
    ("signing_keys", "SELECT, INSERT, UPDATE"),
    ("platform_operator_log", "SELECT, INSERT"),
    // The cluster's shared state (migration m20261207_000001): ids and
    // counters only, no tenant data.
    ("cluster_messages", "SELECT, INSERT, DELETE"),
    ("job_runs", "SELECT, INSERT, UPDATE"),
    ("rate_limit_counters", "SELECT, INSERT, UPDATE, DELETE"),
    ("device_listener_ca", "SELECT, INSERT"),
];

/// Every SECURITY DEFINER function the request role calls (the lookups,
/// the audit chainer's and the enrollment claim), with argument types, for
/// `GRANT EXECUTE`.
pub const LOOKUP_FUNCTION_SIGNATURES: &[&str] = &[
    "mobius_default_tenant_id()",
    "mobius_enrollment_token_tenant(bytea)",
    "mobius_login_candidates(text)",
    "mobius_refresh_token_tenant(bytea)",
    "mobius_invitation_tenant(bytea)",
    "mobius_api_token_tenant(bytea)",
    "mobius_trusted_device_cas()",
    "mobius_revoked_devices_since(timestamptz)",
    "mobius_audit_unchained_tenants()",
    "mobius_audit_chain(jsonb)",
    "mobius_claim_enrollment_token(bytea)",
    "mobius_tenant_by_slug(text)",
    "mobius_billing_customer_tenant(text)",
    "mobius_billing_tenant_exists(uuid)",
    "mobius_billing_plans_since(timestamptz)",
    "mobius_billing_tenants()",
    "mobius_billing_usage(date, date)",
    "mobius_blocked_tenants()",
    "mobius_signup_verification_tenant(bytea)",
    "mobius_signups_for_email(text)",
    "mobius_platform_tenants()",
    "mobius_purge_expired(timestamptz)",
    "mobius_plan_log_tenants(timestamptz)",
    "mobius_backbone_service_token_tenant(bytea)",
    "mobius_backbone_principal_tenant(bytea)",
    "mobius_backbone_service_tenant(text)",
    "mobius_backbone_registration_tenant(text)",
    "mobius_backbone_revoked_tokens_since(timestamptz)",
    "mobius_software_stale_install_tenants(timestamptz)",
    "mobius_osquery_enroll_secret_tenant(bytea)",
    "mobius_osquery_node_tenant(bytea)",
    "mobius_osquery_log_tenants(timestamptz)",
    "mobius_portal_token_tenant(bytea)",
];

/// The tenant of the current transaction, or NULL (never an error) when
/// none is set; see the RLS migration for why `nullif` matters.
pub(crate) const CURRENT_TENANT: &str = "nullif(current_setting('app.tenant_id', true), '')::uuid";

/// The statements that put `table` under tenant isolation on `column`.
/// Table names come from constants, never from input.
pub(crate) fn isolate(table: &str, column: &str) -> String {
    format!(
        "ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;\n\
         ALTER TABLE {table} FORCE ROW LEVEL SECURITY;\n\
         CREATE POLICY tenant_isolation ON {table} \
         USING ({column} = {CURRENT_TENANT}) WITH CHECK ({column} = {CURRENT_TENANT});\n"
    )
}

/// A SELECT-only policy for the owner, so SECURITY DEFINER lookups (which
/// run as the owner, and FORCE applies to owners) can find one row by hash.
pub(crate) fn owner_lookup(table: &str) -> String {
    format!("CREATE POLICY owner_lookup ON {table} FOR SELECT TO CURRENT_USER USING (true);\n")
}

/// `CREATE TABLE` with `id`, `tenant_id` (cascading from `tenants`),
/// `created_at`, `updated_at` and `UNIQUE (tenant_id, id)`.
pub fn tenant_table(name: &'static str) -> TableCreateStatement {
    let mut table = Table::create();
    table
        .table(name)
        .col(ColumnDef::new("id").uuid().not_null().primary_key())
        .col(ColumnDef::new("tenant_id").uuid().not_null())
        .col(timestamp("created_at"))
        .col(timestamp("updated_at"))
        .foreign_key(
            ForeignKey::create()
                .name(format!("fk_{name}_tenant"))
                .from(name, "tenant_id")
                .to("tenants", "id")
                .on_delete(ForeignKeyAction::Cascade),
        )
        .index(
            Index::create()
                .name(format!("uq_{name}_tenant_id_id"))
                .col("tenant_id")
                .col("id")
                .unique(),
        );
    table
}

pub fn timestamp(name: &'static str) -> ColumnDef {
    let mut col = ColumnDef::new(name);
    col.timestamp_with_time_zone().not_null();
    col
}

/// A foreign key from `(tenant_id, column)` to `(tenant_id, id)` of `parent`,
/// so a reference cannot cross tenants even though RI checks bypass RLS.
pub fn same_tenant_fk(
    child: &'static str,
    column: &'static str,
    parent: &'static str,
    on_delete: ForeignKeyAction,
) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .name(format!("fk_{child}_{column}"))
        .from(child, ("tenant_id", column))
        .to(parent, ("tenant_id", "id"))
        .on_delete(on_delete)
        .to_owned()
}

/// `UNIQUE (tenant_id, <columns>)`.
pub fn tenant_unique(table: &'static str, columns: &[&'static str]) -> IndexCreateStatement {
    let mut index = Index::create();
    index
        .name(format!("uq_{table}_{}", columns.join("_")))
        .table(table)
        .col("tenant_id")
        .unique();
    for column in columns {
        index.col(*column);
    }
    index.to_owned()
}
