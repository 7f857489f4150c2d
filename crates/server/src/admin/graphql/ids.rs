//! IDs as clients see them.

use crate::admin::graphql::prelude::*;

/// Parses a client-supplied ID. A malformed id cannot name anything, so it
/// is "not found", like an id of another tenant.
pub fn parse_id(id: &ID, what: &str) -> Result<Uuid> {
    id.parse::<Uuid>().map_err(|_| errors::not_found(what))
}
