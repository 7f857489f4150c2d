//! The repository shape shared by sites and teams: rows named uniquely per
//! tenant, created, listed, renamed and deleted with an audit event each.

/// Generates the repository for a table with `(tenant_id, name)` unique:
/// create, list, get, rename and delete, each audited.
macro_rules! named_repository {
    ($repo:ident, $entity:ident, $model:ty, $kind:literal, $used_by:literal) => {
        #[doc = concat!("The tenant's ", $kind, "s.")]
        pub struct $repo<'s> {
            scope: &'s TenantScope,
        }

        impl<'s> $repo<'s> {
            pub(crate) fn new(scope: &'s TenantScope) -> Self {
                $repo { scope }
            }

            pub async fn create(&self, actor: &Actor, name: &str) -> StoreResult<$model> {
                let name = valid_name("name", name)?;
                let now = chrono::Utc::now();
                let row = $entity::ActiveModel {
                    id: Set(Uuid::now_v7()),
                    tenant_id: Set(self.scope.tenant_id()),
                    name: Set(name),
                    created_at: Set(now),
                    updated_at: Set(now),
                }
                .insert(self.scope.connection())
                .await
                .map_err(conflict_on($kind, "name"))?;
                self.scope
                    .audit()
                    .record(
                        actor,
                        AuditRecord::new(concat!($kind, ".created"), $kind, Some(row.id))
                            .with_details(serde_json::json!({ "name": row.name })),
                    )
                    .await?;
                Ok(row)
            }

            /// All of the tenant's rows, by name.
            pub async fn list(&self) -> StoreResult<Vec<$model>> {
                Ok($entity::Entity::find()
                    .filter($entity::Column::TenantId.eq(self.scope.tenant_id()))
                    .order_by_asc($entity::Column::Name)
                    .all(self.scope.connection())
                    .await?)
            }

            /// A page by name, and the total count.
            pub async fn page(&self, offset: u64, limit: u64) -> StoreResult<(Vec<$model>, u64)> {
                let query = $entity::Entity::find()
                    .filter($entity::Column::TenantId.eq(self.scope.tenant_id()));
                let total = query.clone().count(self.scope.connection()).await?;
                let rows = query
                    .order_by_asc($entity::Column::Name)
                    .offset(offset)
                    .limit(limit)
                    .all(self.scope.connection())
                    .await?;
                Ok((rows, total))
            }

            /// The rows with these ids (missing or foreign ids are skipped):
            /// one query for a whole page's worth of references.
            pub async fn by_ids(&self, ids: &[Uuid]) -> StoreResult<Vec<$model>> {
                Ok($entity::Entity::find()
                    .filter($entity::Column::TenantId.eq(self.scope.tenant_id()))
                    .filter($entity::Column::Id.is_in(ids.iter().copied()))
                    .all(self.scope.connection())
                    .await?)
            }

            pub async fn get(&self, id: Uuid) -> StoreResult<$model> {
                $entity::Entity::find_by_id(id)
                    .filter($entity::Column::TenantId.eq(self.scope.tenant_id()))
                    .one(self.scope.connection())
                    .await?
                    .ok_or(StoreError::NotFound { entity: $kind })
            }

            pub async fn rename(&self, actor: &Actor, id: Uuid, name: &str) -> StoreResult<$model> {
                let name = valid_name("name", name)?;
                let old = self.get(id).await?;
                let old_name = old.name.clone();
                let mut row = old.into_active_model();
                row.name = Set(name);
                row.updated_at = Set(chrono::Utc::now());
                let row = row
                    .update(self.scope.connection())
                    .await
                    .map_err(conflict_on($kind, "name"))?;
                self.scope
                    .audit()
                    .record(
                        actor,
                        AuditRecord::new(concat!($kind, ".renamed"), $kind, Some(id))
                            .with_details(serde_json::json!({ "from": old_name, "to": row.name })),
                    )
                    .await?;
                Ok(row)
            }

            pub async fn delete(&self, actor: &Actor, id: Uuid) -> StoreResult<()> {
                let row = self.get(id).await?;
                $entity::Entity::delete_by_id(id)
                    .exec(self.scope.connection())
                    .await
                    .map_err(in_use_by($kind, $used_by))?;
                self.scope
                    .audit()
                    .record(
                        actor,
                        AuditRecord::new(concat!($kind, ".deleted"), $kind, Some(id))
                            .with_details(serde_json::json!({ "name": row.name })),
                    )
                    .await?;
                Ok(())
            }
        }
    };
}

pub(crate) use named_repository;
