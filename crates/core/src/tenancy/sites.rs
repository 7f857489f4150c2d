//! Sites: where devices live. Every tenant has at least the default one.

use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, IntoActiveModel, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, Set, prelude::Uuid,
};

use super::named::named_repository;
use crate::audit::{Actor, AuditRecord};
use crate::db::entities::site;
use crate::db::{StoreError, StoreResult, TenantScope, conflict_on, in_use_by, valid_name};

pub type Site = site::Model;

named_repository!(Sites, site, Site, "site", "devices");

impl TenantScope {
    pub fn sites(&self) -> Sites<'_> {
        Sites::new(self)
    }
}
