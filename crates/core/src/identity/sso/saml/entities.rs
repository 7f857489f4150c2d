//! The SAML tables (see migration `m20261211_000001_saml`).

pub(crate) mod saml_config {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "saml_configs")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub tenant_id: Uuid,
        pub idp_entity_id: String,
        pub idp_sso_url: String,
        pub idp_metadata_xml: String,
        pub idp_metadata_url: Option<String>,
        pub idp_cert_fingerprints: Json,
        pub email_attribute: Option<String>,
        pub name_attribute: Option<String>,
        pub groups_attribute: Option<String>,
        pub group_roles: Json,
        pub allowed_email_domains: Json,
        pub jit_enabled: bool,
        pub default_role: crate::authz::Role,
        pub allow_idp_initiated: bool,
        pub enabled: bool,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub(crate) mod saml_request {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "saml_requests")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub tenant_id: Uuid,
        pub relay_state_hash: Vec<u8>,
        pub request_id: String,
        pub redirect_to: String,
        pub expires_at: DateTimeUtc,
        pub consumed_at: Option<DateTimeUtc>,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
