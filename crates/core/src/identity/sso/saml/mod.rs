//! SAML 2.0 single sign-on (a premium feature; the cloud edition has the
//! protocol engine). This module keeps what is not XML: each tenant's IdP
//! configuration, the AuthnRequests in flight (so `InResponseTo` is
//! checked against a request this server sent, once), and turning a
//! verified assertion into a signed-in user through the same provisioning
//! as OIDC. The XML itself (metadata, AuthnRequest, signature checks) is
//! behind [`SamlProtocol`], implemented by an edition: the OSS binary has
//! none and never links an XML-signature library.

mod entities;

use chrono::{DateTime, Utc};
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter, Set};
use uuid::Uuid;

use self::entities::{saml_config, saml_request};
use super::config::{invalid, read_group_roles, valid_domains};
use super::provisioning::Provisioning;
use super::{GroupRole, Sso, SsoError, SsoOutcome, SsoResult, VerifiedIdentity};
use crate::audit::{Actor, AuditRecord};
use crate::authz::Role;
use crate::crypto::secrets;
use crate::db::{Backend, FoundTenant, StoreError, StoreResult};
use crate::identity::{Identity, RequestMeta};

/// An AuthnRequest is answered within ten minutes or not at all (as an
/// OIDC login state): time to sign in and pass MFA at the IdP.
pub const SAML_REQUEST_SECONDS: i64 = 600;

/// How long an assertion id is remembered when the assertion names no
/// expiry of its own (samael refuses assertions without a bearer
/// confirmation's `NotOnOrAfter`, so this is a backstop).
const REPLAY_FALLBACK_HOURS: i64 = 24;

/// The SAML attributes tried for the email address when the tenant names
/// none: the common LDAP, Azure/Entra and plain names.
const EMAIL_ATTRIBUTES: &[&str] = &[
    "email",
    "mail",
    "urn:oid:0.9.2342.19200300.100.1.3",
    "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/emailaddress",
];

const NAME_ID_EMAIL: &str = "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress";

/// This server as a SAML service provider for one tenant.
#[derive(Clone, Debug)]
pub struct ServiceProviderUrls {
    /// The SP entity id: the metadata URL (what the IdP is configured with
    /// and what assertions must name as their audience).
    pub entity_id: String,
    /// The Assertion Consumer Service (HTTP-POST binding): responses must
    /// name it as `Destination` and as the bearer confirmation's
    /// `Recipient`.
    pub acs_url: String,
}

/// What an IdP's metadata says, as the protocol engine read it.
#[derive(Clone, Debug)]
pub struct IdpMetadata {
    pub entity_id: String,
    /// The HTTP-Redirect SingleSignOnService location.
    pub sso_url: String,
    /// The signing certificates (DER). Responses must be signed by one.
    pub signing_certs_der: Vec<Vec<u8>>,
}

/// An AuthnRequest ready to send through the browser (HTTP-Redirect).
#[derive(Clone, Debug)]
pub struct AuthnRequest {
    /// The request's `ID`, which the response's `InResponseTo` must echo.
    pub request_id: String,
    /// The IdP URL with `SAMLRequest` and `RelayState`.
    pub redirect_url: String,
}

/// Which response the ACS accepts.
#[derive(Clone, Copy, Debug)]
pub enum Expected<'a> {
    /// SP-initiated: `InResponseTo` must be this request's id.
    Request(&'a str),
    /// IdP-initiated (only where the tenant turned it on): no request.
    Unsolicited,
}

/// An assertion whose signature verified, read from the signed element
/// only (never from siblings an attacker could add around it).
#[derive(Clone, Debug)]
pub struct VerifiedAssertion {
    /// The assertion's `ID`: the replay-cache key.
    pub id: String,
    pub issuer: String,
    pub name_id: Option<String>,
    pub name_id_format: Option<String>,
    /// Attribute name → values.
    pub attributes: Vec<(String, Vec<String>)>,
    /// The earliest `NotOnOrAfter` in the assertion: until then its id is
    /// remembered.
    pub expires_at: Option<DateTime<Utc>>,
}

/// The SAML protocol engine an edition provides (cloud: samael with
/// xmlsec). Errors are messages safe to show the person signing in.
pub trait SamlProtocol: Send + Sync {
    /// A short name for `config` output and logs.
    fn describe(&self) -> String;

    /// Reads IdP metadata; refuses metadata without a signing certificate
    /// or an HTTP-Redirect SingleSignOnService.
    fn parse_idp_metadata(&self, xml: &str) -> Result<IdpMetadata, String>;

    /// This SP's metadata XML.
    fn sp_metadata(&self, sp: &ServiceProviderUrls) -> Result<String, String>;

    /// A new AuthnRequest to the IdP `idp_metadata_xml` describes.
    fn authn_request(
        &self,
        sp: &ServiceProviderUrls,
        idp_metadata_xml: &str,
        relay_state: &str,
    ) -> Result<AuthnRequest, String>;

    /// Verifies a base64 `SAMLResponse` (HTTP-POST binding): signature by
    /// a certificate of the IdP metadata, then issuer, audience,
    /// destination, recipient, validity window and `InResponseTo`.
    fn verify_response(
        &self,
        sp: &ServiceProviderUrls,
        idp_metadata_xml: &str,
        saml_response: &str,
        expected: Expected<'_>,
    ) -> Result<VerifiedAssertion, SsoError>;
}

/// A tenant's SAML configuration as the API shows it.
#[derive(Clone, Debug)]
pub struct SamlConfig {
    pub tenant_id: Uuid,
    pub idp_entity_id: String,
    pub idp_sso_url: String,
    pub idp_metadata_xml: String,
    pub idp_metadata_url: Option<String>,
    /// SHA-256 (hex) of each IdP signing certificate.
    pub idp_cert_fingerprints: Vec<String>,
    pub email_attribute: Option<String>,
    pub name_attribute: Option<String>,
    pub groups_attribute: Option<String>,
    pub group_roles: Vec<GroupRole>,
    pub allowed_email_domains: Vec<String>,
    pub jit_enabled: bool,
    pub default_role: Role,
    /// Accept responses no request of ours asked for (off by default:
    /// they cannot be bound to a browser, so a stolen response signs in
    /// whoever posts it first).
    pub allow_idp_initiated: bool,
    pub enabled: bool,
    pub updated_at: DateTime<Utc>,
}

impl SamlConfig {
    fn from_row(row: saml_config::Model) -> StoreResult<SamlConfig> {
        let strings = |value: serde_json::Value, what: &'static str| {
            serde_json::from_value::<Vec<String>>(value).map_err(StoreError::internal(what))
        };
        Ok(SamlConfig {
            tenant_id: row.tenant_id,
            idp_entity_id: row.idp_entity_id,
            idp_sso_url: row.idp_sso_url,
            idp_metadata_xml: row.idp_metadata_xml,
            idp_metadata_url: row.idp_metadata_url,
            idp_cert_fingerprints: strings(
                row.idp_cert_fingerprints,
                "reading SAML certificate fingerprints",
            )?,
            email_attribute: row.email_attribute,
            name_attribute: row.name_attribute,
            groups_attribute: row.groups_attribute,
            group_roles: read_group_roles(row.group_roles)?,
            allowed_email_domains: strings(row.allowed_email_domains, "reading SAML domains")?,
            jit_enabled: row.jit_enabled,
            default_role: row.default_role,
            allow_idp_initiated: row.allow_idp_initiated,
            enabled: row.enabled,
            updated_at: row.updated_at,
        })
    }

    fn provisioning(&self) -> Provisioning<'_> {
        Provisioning {
            protocol: "saml",
            allowed_email_domains: &self.allowed_email_domains,
            group_roles: &self.group_roles,
            jit_enabled: self.jit_enabled,
            default_role: self.default_role,
        }
    }

    /// The identity a verified assertion names: NameID as the subject,
    /// the email from the configured attribute (or a common one, or an
    /// emailAddress NameID), groups from the groups attribute. The IdP is
    /// the tenant's own and signed the assertion, so its email counts as
    /// verified.
    pub fn identity(&self, assertion: &VerifiedAssertion) -> SsoResult<VerifiedIdentity> {
        let values = |name: &str| {
            assertion
                .attributes
                .iter()
                .filter(|(n, _)| n == name)
                .flat_map(|(_, v)| v.iter().cloned())
                .collect::<Vec<_>>()
        };
        let first = |name: &str| values(name).into_iter().find(|v| !v.trim().is_empty());
        let subject = assertion
            .name_id
            .clone()
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| SsoError::InvalidAssertion("the assertion has no NameID".into()))?;
        let email = match &self.email_attribute {
            Some(attribute) => first(attribute),
            None => EMAIL_ATTRIBUTES.iter().find_map(|a| first(a)),
        }
        .or_else(|| {
            (assertion.name_id_format.as_deref() == Some(NAME_ID_EMAIL)).then(|| subject.clone())
        });
        Ok(VerifiedIdentity {
            issuer: assertion.issuer.clone(),
            subject,
            email,
            email_verified: true,
            name: self.name_attribute.as_deref().and_then(first),
            groups: self
                .groups_attribute
                .as_deref()
                .map(values)
                .unwrap_or_default(),
        })
    }
}

/// What an owner or admin sets. The metadata is XML; when it came from a
/// URL, the server fetched it and `idp_metadata_url` says where from.
#[derive(Clone, Debug)]
pub struct SamlConfigInput {
    pub idp_metadata_xml: String,
    pub idp_metadata_url: Option<String>,
    pub email_attribute: Option<String>,
    pub name_attribute: Option<String>,
    pub groups_attribute: Option<String>,
    pub group_roles: Vec<GroupRole>,
    pub allowed_email_domains: Vec<String>,
    pub jit_enabled: bool,
    pub default_role: Role,
    pub allow_idp_initiated: bool,
    pub enabled: bool,
}

/// A consumed AuthnRequest record, for the ACS.
#[derive(Clone, Debug)]
pub struct TakenSamlRequest {
    pub request_id: String,
    pub redirect_to: String,
}

fn attribute_name(value: Option<String>) -> Option<String> {
    value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

impl Sso<'_> {
    /// The tenant's SAML configuration, if one was set.
    pub async fn saml_config(&self) -> StoreResult<Option<SamlConfig>> {
        saml_config::Entity::find()
            .filter(saml_config::Column::TenantId.eq(self.scope.tenant_id()))
            .one(self.scope.connection())
            .await?
            .map(SamlConfig::from_row)
            .transpose()
    }

    /// Creates or replaces the SAML configuration after `protocol` read the
    /// metadata (which must name a signing certificate); audited as
    /// `sso.saml_configured` with the certificates' fingerprints.
    pub async fn put_saml_config(
        &self,
        actor: &Actor,
        input: SamlConfigInput,
        protocol: &dyn SamlProtocol,
    ) -> StoreResult<SamlConfig> {
        use sha2::Digest;
        let tenant_id = self.scope.tenant_id();
        if input.idp_metadata_xml.len() > 512 * 1024 {
            return Err(invalid("metadata", "IdP metadata is limited to 512 KiB"));
        }
        let idp = protocol
            .parse_idp_metadata(&input.idp_metadata_xml)
            .map_err(|reason| invalid("metadata", reason))?;
        if idp.signing_certs_der.is_empty() {
            return Err(invalid(
                "metadata",
                "the IdP metadata names no signing certificate",
            ));
        }
        if input.default_role == Role::Owner {
            return Err(invalid(
                "defaultRole",
                "owner cannot be granted by single sign-on",
            ));
        }
        let fingerprints: Vec<String> = idp
            .signing_certs_der
            .iter()
            .map(|der| hex::encode(sha2::Sha256::digest(der)))
            .collect();
        let domains = valid_domains(&input.allowed_email_domains)?;
        let group_roles = self.valid_group_roles(&input.group_roles).await?;
        let now = Utc::now();
        let existing = saml_config::Entity::find()
            .filter(saml_config::Column::TenantId.eq(tenant_id))
            .one(self.scope.connection())
            .await?;
        let is_new = existing.is_none();
        let mut row = match existing {
            Some(row) => row.into_active_model(),
            None => saml_config::ActiveModel {
                id: Set(Uuid::now_v7()),
                tenant_id: Set(tenant_id),
                created_at: Set(now),
                ..Default::default()
            },
        };
        row.idp_entity_id = Set(idp.entity_id.clone());
        row.idp_sso_url = Set(idp.sso_url.clone());
        row.idp_metadata_xml = Set(input.idp_metadata_xml);
        row.idp_metadata_url = Set(input.idp_metadata_url);
        row.idp_cert_fingerprints = Set(serde_json::json!(fingerprints));
        row.email_attribute = Set(attribute_name(input.email_attribute));
        row.name_attribute = Set(attribute_name(input.name_attribute));
        row.groups_attribute = Set(attribute_name(input.groups_attribute));
        row.group_roles = Set(group_roles);
        row.allowed_email_domains = Set(serde_json::json!(domains));
        row.jit_enabled = Set(input.jit_enabled);
        row.default_role = Set(input.default_role);
        row.allow_idp_initiated = Set(input.allow_idp_initiated);
        row.enabled = Set(input.enabled);
        row.updated_at = Set(now);
        let saved = if is_new {
            row.insert(self.scope.connection()).await?
        } else {
            row.update(self.scope.connection()).await?
        };
        let config = SamlConfig::from_row(saved)?;
        self.scope
            .audit()
            .record(
                actor,
                AuditRecord::new("sso.saml_configured", "tenant", Some(tenant_id)).with_details(
                    serde_json::json!({
                        "idp_entity_id": config.idp_entity_id,
                        "idp_metadata_url": config.idp_metadata_url,
                        "idp_cert_fingerprints": config.idp_cert_fingerprints,
                        "allowed_email_domains": config.allowed_email_domains,
                        "jit_enabled": config.jit_enabled,
                        "default_role": config.default_role.as_str(),
                        "allow_idp_initiated": config.allow_idp_initiated,
                        "enabled": config.enabled,
                    }),
                ),
            )
            .await?;
        Ok(config)
    }

    /// Records an AuthnRequest sent with `relay_state` (kept only as its
    /// hash). Expired records of the tenant go as new ones come.
    pub async fn record_saml_request(
        &self,
        relay_state: &str,
        request_id: &str,
        redirect_to: &str,
    ) -> StoreResult<()> {
        let now = Utc::now();
        saml_request::Entity::delete_many()
            .filter(saml_request::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(saml_request::Column::ExpiresAt.lt(now - chrono::Duration::hours(1)))
            .exec(self.scope.connection())
            .await?;
        saml_request::ActiveModel {
            id: Set(Uuid::now_v7()),
            tenant_id: Set(self.scope.tenant_id()),
            relay_state_hash: Set(secrets::sha256(relay_state).to_vec()),
            request_id: Set(request_id.to_owned()),
            redirect_to: Set(redirect_to.to_owned()),
            expires_at: Set(now + chrono::Duration::seconds(SAML_REQUEST_SECONDS)),
            consumed_at: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(self.scope.connection())
        .await?;
        Ok(())
    }

    /// Consumes the request `relay_state` names: `None` when no live,
    /// unconsumed request has it (an unsolicited response, or a replay of
    /// one already answered).
    pub async fn take_saml_request(
        &self,
        relay_state: &str,
    ) -> StoreResult<Option<TakenSamlRequest>> {
        use sea_orm::QuerySelect;
        let mut query = saml_request::Entity::find()
            .filter(saml_request::Column::TenantId.eq(self.scope.tenant_id()))
            .filter(saml_request::Column::RelayStateHash.eq(secrets::sha256(relay_state).to_vec()));
        if self.scope.backend() == Backend::Postgres {
            query = query.lock_exclusive();
        }
        let Some(row) = query.one(self.scope.connection()).await? else {
            return Ok(None);
        };
        let now = Utc::now();
        if row.consumed_at.is_some() || row.expires_at <= now {
            return Ok(None);
        }
        let taken = TakenSamlRequest {
            request_id: row.request_id.clone(),
            redirect_to: row.redirect_to.clone(),
        };
        let mut active = row.into_active_model();
        active.consumed_at = Set(Some(now));
        active.updated_at = Set(now);
        active.update(self.scope.connection()).await?;
        Ok(Some(taken))
    }
}

/// The replay-cache key of an assertion: its IdP and id (ids are unique
/// per issuer, not globally).
fn replay_key(assertion: &VerifiedAssertion) -> [u8; 32] {
    secrets::sha256(&format!("saml\0{}\0{}", assertion.issuer, assertion.id))
}

impl Identity {
    /// Consumes the AuthnRequest `relay_state` names, in its own
    /// transaction, so a failed verification still burns it.
    pub async fn take_saml_request(
        &self,
        tenant: &FoundTenant,
        relay_state: &str,
    ) -> SsoResult<Option<TakenSamlRequest>> {
        let scope = self.store.begin(tenant).await?;
        let taken = scope.sso().take_saml_request(relay_state).await?;
        scope.commit().await?;
        Ok(taken)
    }

    /// Signs in the person a verified assertion names: the assertion id is
    /// remembered until the assertion expires (a second use is
    /// [`SsoError::Replayed`]), then the same provisioning and session as
    /// an OIDC sign-in.
    pub async fn complete_saml(
        &self,
        tenant: &FoundTenant,
        assertion: &VerifiedAssertion,
        redirect_to: String,
        meta: &RequestMeta,
    ) -> SsoResult<SsoOutcome> {
        let scope = self.store.begin(tenant).await?;
        let config = scope
            .sso()
            .saml_config()
            .await?
            .filter(|c| c.enabled)
            .ok_or(SsoError::NotConfigured)?;
        let expires_at = assertion
            .expires_at
            .unwrap_or_else(|| Utc::now() + chrono::Duration::hours(REPLAY_FALLBACK_HOURS));
        // Remembered past the clock skew the verifier allows.
        scope
            .sso()
            .remember_once(
                replay_key(assertion),
                expires_at + chrono::Duration::minutes(5),
            )
            .await?;
        let identity = config.identity(assertion)?;
        let user = self
            .sign_in_identity(&scope, &config.provisioning(), &identity, false, meta)
            .await?;
        let session = self.start_session(&scope, user, meta).await?;
        scope.commit().await?;
        Ok(SsoOutcome::Session {
            session,
            redirect_to,
        })
    }
}
