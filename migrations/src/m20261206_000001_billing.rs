//! Billing (cloud): each tenant's plan as its Stripe subscription last set
//! it, the Stripe event ids already applied (exactly-once delivery), and
//! the daily device counts metered billing and the operator read.
//!
//! Four narrow lookups cross tenants (Postgres only): which tenant a
//! Stripe customer id belongs to, whether a tenant id named by a checkout
//! session exists, the plans changed since a time (for every server's
//! entitlement cache; plans are not secret), and the tenants and usage
//! rows the usage recorder and exporter walk.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

use crate::tables::{isolate, owner_lookup, tenant_table, tenant_unique, timestamp};

const BILLING_TABLES: &[&str] = &[
    "billing_plans",
    "billing_stripe_events",
    "billing_usage_days",
];

const LOOKUP_FUNCTIONS: &str = r#"
-- The tenant whose plan carries this Stripe customer id.
CREATE FUNCTION mobius_billing_customer_tenant(p_customer text) RETURNS uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT tenant_id FROM billing_plans WHERE stripe_customer_id = p_customer LIMIT 1
$$;

-- The id itself if such a tenant exists (a checkout session's
-- client_reference_id names one).
CREATE FUNCTION mobius_billing_tenant_exists(p_tenant uuid) RETURNS uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT id FROM tenants WHERE id = p_tenant
$$;

-- Plans written after p_since, for the entitlement cache of every server.
CREATE FUNCTION mobius_billing_plans_since(p_since timestamptz)
RETURNS TABLE (tenant_id uuid, tier text, device_limit bigint, features text,
               status text, grace_until timestamptz, updated_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT tenant_id, tier, device_limit, features, status, grace_until, updated_at
    FROM billing_plans WHERE updated_at > p_since
$$;

-- Every tenant id, for the daily usage recorder and `reseal`.
CREATE FUNCTION mobius_billing_tenants() RETURNS SETOF uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT id FROM tenants ORDER BY id
$$;

-- Daily usage of every tenant between two days (inclusive), for the
-- operator's export (counts only).
CREATE FUNCTION mobius_billing_usage(p_from date, p_to date)
RETURNS TABLE (tenant_id uuid, tenant_slug text, day date, devices bigint, active_devices bigint)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT u.tenant_id, t.slug, u.day, u.devices, u.active_devices
    FROM billing_usage_days u JOIN tenants t ON t.id = u.tenant_id
    WHERE u.day BETWEEN p_from AND p_to ORDER BY u.day, t.slug
$$;

REVOKE ALL ON FUNCTION mobius_billing_customer_tenant(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION mobius_billing_tenant_exists(uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION mobius_billing_plans_since(timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION mobius_billing_tenants() FROM PUBLIC;
REVOKE ALL ON FUNCTION mobius_billing_usage(date, date) FROM PUBLIC;
"#;

const DROP_FUNCTIONS: &str = r#"
DROP FUNCTION IF EXISTS mobius_billing_customer_tenant(text);
DROP FUNCTION IF EXISTS mobius_billing_tenant_exists(uuid);
DROP FUNCTION IF EXISTS mobius_billing_plans_since(timestamptz);
DROP FUNCTION IF EXISTS mobius_billing_tenants();
DROP FUNCTION IF EXISTS mobius_billing_usage(date, date);
"#;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                tenant_table("billing_plans")
                    // What the tenant pays for, resolved from the price id
                    // through the configured price mapping when written.
                    .col(ColumnDef::new("tier").string().not_null())
                    // NULL: no limit.
                    .col(ColumnDef::new("device_limit").big_integer().null())
                    // JSON array of feature names.
                    .col(ColumnDef::new("features").text().not_null())
                    // Stripe's subscription status (active, trialing,
                    // past_due, canceled, ...), or `none` before any.
                    .col(ColumnDef::new("status").string().not_null())
                    .col(ColumnDef::new("stripe_customer_id").string().null())
                    .col(ColumnDef::new("stripe_subscription_id").string().null())
                    .col(
                        ColumnDef::new("current_period_end")
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    // Past due: the plan holds until then, then the free
                    // plan's limits apply.
                    .col(
                        ColumnDef::new("grace_until")
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    // `created` of the newest Stripe event applied to the
                    // subscription state: older ones never move it back.
                    .col(
                        ColumnDef::new("state_event_at")
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("uq_billing_plans_tenant_id")
                    .table("billing_plans")
                    .col("tenant_id")
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("uq_billing_plans_stripe_customer_id")
                    .table("billing_plans")
                    .col("stripe_customer_id")
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_billing_plans_updated_at")
                    .table("billing_plans")
                    .col("updated_at")
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                tenant_table("billing_stripe_events")
                    .col(ColumnDef::new("event_id").string().not_null())
                    .col(ColumnDef::new("event_type").string().not_null())
                    .col(timestamp("event_created_at"))
                    .to_owned(),
            )
            .await?;
        // Globally unique, so a redelivered event is refused even if it
        // were ever presented in another tenant's scope.
        manager
            .create_index(
                Index::create()
                    .name("uq_billing_stripe_events_event_id")
                    .table("billing_stripe_events")
                    .col("event_id")
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                tenant_table("billing_usage_days")
                    .col(ColumnDef::new("day").date().not_null())
                    // Devices enrolled (the highest count seen that day).
                    .col(ColumnDef::new("devices").big_integer().not_null())
                    // Devices that checked in that day.
                    .col(ColumnDef::new("active_devices").big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(tenant_unique("billing_usage_days", &["day"]))
            .await?;

        if manager.get_database_backend() == DbBackend::Postgres {
            let mut sql = String::new();
            for table in BILLING_TABLES {
                sql.push_str(&isolate(table, "tenant_id"));
            }
            sql.push_str(&owner_lookup("billing_plans"));
            sql.push_str(&owner_lookup("billing_usage_days"));
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
        for table in [
            "billing_usage_days",
            "billing_stripe_events",
            "billing_plans",
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}
