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
];

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
