//! sea-orm entities of the live-query area, private to it.

pub(crate) mod campaign {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "query_campaigns")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub tenant_id: Uuid,
        pub sql: String,
        pub status: String,
        pub timeout_ms: i64,
        pub ends_at: DateTimeUtc,
        pub finished_at: Option<DateTimeUtc>,
        pub targets: Json,
        pub actor_kind: String,
        pub actor_id: Option<Uuid>,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub(crate) mod campaign_device {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "query_campaign_devices")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub tenant_id: Uuid,
        pub campaign_id: Uuid,
        pub device_id: Uuid,
        pub status: String,
        pub error: Option<String>,
        pub rows: Option<Json>,
        pub row_count: i32,
        pub truncated: bool,
        pub duration_ms: Option<i64>,
        pub answered_at: Option<DateTimeUtc>,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
