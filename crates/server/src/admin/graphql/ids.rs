//! IDs as clients see them: opaque global IDs (Relay's convention) that
//! carry the object's type, so one `node(id:)` can find anything and an ID
//! of one type is never accepted where another is expected.
//!
//! The encoding is base64url of `<Type>:<uuid>`; clients must treat it as
//! opaque.

/// async-graphql's ID type, for callers outside the schema (tests).
pub use async_graphql::ID as Id;

use crate::admin::graphql::prelude::*;

/// The global ID of the object of GraphQL type `type_name` with row id `id`.
pub fn global_id(type_name: &str, id: Uuid) -> ID {
    ID(URL_SAFE_NO_PAD.encode(format!("{type_name}:{id}")))
}

/// The type name and row id in a global ID, if it is one.
pub fn decode_global_id(id: &ID) -> Option<(String, Uuid)> {
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(id.as_str()).ok()?).ok()?;
    let (type_name, uuid) = text.split_once(':')?;
    Some((type_name.to_owned(), uuid.parse().ok()?))
}

/// Parses a client-supplied ID of type `type_name`. A malformed id, or an
/// id of another type, cannot name the object, so it is "not found", like
/// an id of another tenant.
pub fn parse_id(id: &ID, type_name: &str) -> Result<Uuid> {
    match decode_global_id(id) {
        Some((found, uuid)) if found == type_name => Ok(uuid),
        _ => Err(errors::not_found(&describe(type_name))),
    }
}

/// The GraphQL type an audit actor or target kind refers to, for the
/// global IDs in audit events.
pub fn type_of_kind(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "tenant" => "Tenant",
        "site" => "Site",
        "team" => "Team",
        "user" => "User",
        "api_token" => "ApiToken",
        "device" => "Device",
        "enrollment_token" => "EnrollmentToken",
        "invitation" => "Invitation",
        "certificate_authority" => "CertificateAuthority",
        "osquery_enroll_secret" => "OsqueryEnrollSecret",
        _ => return None,
    })
}

/// `EnrollmentToken` → `enrollment token`, for messages.
fn describe(type_name: &str) -> String {
    let mut words = String::new();
    for (i, c) in type_name.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            words.push(' ');
        }
        words.push(c.to_ascii_lowercase());
    }
    words.replace("api token", "API token")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_ids_round_trip_and_keep_their_type() {
        let uuid = Uuid::now_v7();
        let id = global_id("Site", uuid);
        assert_eq!(parse_id(&id, "Site").unwrap(), uuid);
        assert!(parse_id(&id, "Team").is_err());
        assert!(parse_id(&ID(uuid.to_string()), "Site").is_err());
        assert!(parse_id(&ID("???".into()), "Site").is_err());
        assert_eq!(describe("EnrollmentToken"), "enrollment token");
        assert_eq!(describe("ApiToken"), "API token");
    }
}
