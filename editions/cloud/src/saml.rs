//! The SAML protocol engine of the cloud edition: samael with its `xmlsec`
//! feature (libxmlsec1). Signatures are verified with the certificates of
//! the tenant's stored IdP metadata only (a certificate embedded in the
//! response's KeyInfo is never trusted), and samael then parses only what
//! the verified signatures cover: elements outside a signed subtree are
//! dropped before the assertion is read, which defeats XML signature
//! wrapping. On top of that a response must carry exactly one assertion
//! and no DTD, so a wrapped response is refused outright rather than
//! silently reduced.

use base64::Engine;
use chrono::{DateTime, Utc};
use mobius_core::identity::sso::SsoError;
use mobius_core::identity::sso::saml::{
    AuthnRequest, Expected, IdpMetadata, SamlProtocol, ServiceProviderUrls, VerifiedAssertion,
};
use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use samael::crypto::{AllowedSignatureAlgorithm, ReduceMode};
use samael::metadata::{EntityDescriptor, HTTP_REDIRECT_BINDING};
use samael::service_provider::{Error as SpError, ServiceProvider};
use samael::traits::ToXml;

const SAML_ASSERTION_NS: &[u8] = b"urn:oasis:names:tc:SAML:2.0:assertion";

/// A response larger than this is refused before parsing (an IdP's
/// response with a few dozen attributes is a few KiB).
const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// The clock skew allowed on NotBefore/NotOnOrAfter: IdP and SP clocks
/// drift a little; more would stretch every assertion's life.
const CLOCK_SKEW_SECONDS: i64 = 60;

/// How old a response or assertion (its IssueInstant) may be: a browser
/// posts it within seconds of the IdP making it.
const MAX_ISSUE_DELAY_SECONDS: i64 = 180;

/// Only these signature methods are accepted: no SHA-1, no algorithm
/// substitution.
const ALLOWED_ALGORITHMS: &[AllowedSignatureAlgorithm] = &[
    AllowedSignatureAlgorithm::RsaSha256,
    AllowedSignatureAlgorithm::RsaSha384,
    AllowedSignatureAlgorithm::RsaSha512,
    AllowedSignatureAlgorithm::EcdsaSha256,
    AllowedSignatureAlgorithm::EcdsaSha384,
    AllowedSignatureAlgorithm::EcdsaSha512,
];

pub struct SamaelProtocol;

fn idp_descriptor(xml: &str) -> Result<EntityDescriptor, String> {
    if has_doctype(xml) {
        return Err("IdP metadata must not contain a DTD".into());
    }
    xml.parse::<EntityDescriptor>()
        .map_err(|_| "not SAML metadata (an EntityDescriptor with an IDPSSODescriptor)".to_owned())
}

fn has_doctype(xml: &str) -> bool {
    let mut reader = quick_xml::Reader::from_str(xml);
    loop {
        match reader.read_event() {
            Ok(Event::DocType(_)) => return true,
            Ok(Event::Eof) | Err(_) => return false,
            Ok(_) => {}
        }
    }
}

/// Counts SAML `Assertion` and `EncryptedAssertion` elements anywhere in
/// the response (namespace-aware), refusing DTDs and malformed XML.
fn count_assertions(xml: &str) -> Result<usize, String> {
    let mut reader = quick_xml::NsReader::from_str(xml);
    let mut count = 0;
    loop {
        match reader.read_resolved_event() {
            Ok((ns, Event::Start(e) | Event::Empty(e))) => {
                let local = e.local_name();
                if matches!(ns, ResolveResult::Bound(n) if n.as_ref() == SAML_ASSERTION_NS)
                    && matches!(local.as_ref(), b"Assertion" | b"EncryptedAssertion")
                {
                    count += 1;
                }
            }
            Ok((_, Event::DocType(_))) => {
                return Err("a SAML response must not contain a DTD".into());
            }
            Ok((_, Event::Eof)) => return Ok(count),
            Ok(_) => {}
            Err(_) => return Err("the SAML response is not well-formed XML".into()),
        }
    }
}

fn service_provider(sp: &ServiceProviderUrls, idp: EntityDescriptor) -> ServiceProvider {
    ServiceProvider {
        entity_id: Some(sp.entity_id.clone()),
        metadata_url: Some(sp.entity_id.clone()),
        acs_url: Some(sp.acs_url.clone()),
        // No single logout: samael needs a location to build metadata;
        // `sp_metadata` removes the endpoint again.
        slo_url: Some(sp.acs_url.clone()),
        idp_metadata: idp,
        max_issue_delay: chrono::Duration::seconds(MAX_ISSUE_DELAY_SECONDS),
        max_clock_skew: chrono::Duration::seconds(CLOCK_SKEW_SECONDS),
        allowed_signature_algorithms: Some(ALLOWED_ALGORITHMS.to_vec()),
        ..ServiceProvider::default()
    }
}

/// What a refusal says: enough for an admin reading the audit log to fix
/// the IdP side, nothing from inside the XML library.
fn refusal(err: &SpError) -> String {
    match err {
        SpError::FailedToValidateSignature => {
            "the response is not signed by the IdP's configured certificate (unsigned, signed by another key, or altered)".into()
        }
        SpError::AssertionConditionAudienceRestrictionFailed { requirement } => {
            format!("the assertion is for another audience (expected {requirement})")
        }
        SpError::DestinationValidationError { .. } => {
            "the response's Destination is not this tenant's ACS URL".into()
        }
        SpError::AssertionRecipientMismatch { .. } => {
            "the assertion's Recipient is not this tenant's ACS URL".into()
        }
        SpError::AssertionExpired { .. }
        | SpError::ResponseExpired { .. }
        | SpError::AssertionConditionExpired { .. }
        | SpError::AssertionSubjectConfirmationExpired { .. } => "the assertion has expired".into(),
        SpError::AssertionConditionExpiredBefore { .. }
        | SpError::AssertionSubjectConfirmationExpiredBefore { .. } => {
            "the assertion is not valid yet (NotBefore is in the future)".into()
        }
        SpError::AssertionInResponseToInvalid { .. } | SpError::ResponseInResponseToInvalid { .. } => {
            "the response does not answer the sign-in this server started (InResponseTo)".into()
        }
        SpError::AssertionIssuerMismatch { .. } | SpError::ResponseIssuerMismatch { .. } => {
            "the issuer is not the configured IdP".into()
        }
        SpError::ResponseBadStatusCode { code } => {
            format!("the IdP did not sign the person in (status {code})")
        }
        SpError::AssertionBearerSubjectConfirmationMissing
        | SpError::AssertionSubjectConfirmationMissing => {
            "the assertion has no bearer subject confirmation".into()
        }
        SpError::EncryptedAssertionsNotYetSupported
        | SpError::MissingPrivateKeySP
        | SpError::MissingEncryptedKeyInfo
        | SpError::MissingEncryptedValueInfo
        | SpError::EncryptedAssertionKeyMethodUnsupported { .. }
        | SpError::EncryptedAssertionValueMethodUnsupported { .. }
        | SpError::EncryptedAssertionInvalid
        | SpError::FailedToDecryptAssertion => {
            "encrypted assertions are not supported: turn assertion encryption off at the IdP".into()
        }
        _ => "the SAML response could not be read".into(),
    }
}

/// The earliest NotOnOrAfter of the assertion (conditions, bearer
/// confirmations): how long its id must be remembered.
fn expiry(assertion: &samael::schema::Assertion) -> Option<DateTime<Utc>> {
    let conditions = assertion
        .conditions
        .as_ref()
        .and_then(|c| c.not_on_or_after);
    let confirmations = assertion
        .subject
        .as_ref()
        .and_then(|s| s.subject_confirmations.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.subject_confirmation_data.as_ref()?.not_on_or_after);
    conditions.into_iter().chain(confirmations).max()
}

impl SamlProtocol for SamaelProtocol {
    fn describe(&self) -> String {
        "samael (xmlsec)".into()
    }

    fn parse_idp_metadata(&self, xml: &str) -> Result<IdpMetadata, String> {
        let descriptor = idp_descriptor(xml)?;
        let entity_id = descriptor
            .entity_id
            .clone()
            .filter(|e| !e.trim().is_empty())
            .ok_or("the metadata has no entityID")?;
        if descriptor
            .idp_sso_descriptors
            .as_ref()
            .is_none_or(|d| d.is_empty())
        {
            return Err("the metadata has no IDPSSODescriptor (is it an SP's metadata?)".into());
        }
        let sp = ServiceProvider {
            idp_metadata: descriptor,
            ..ServiceProvider::default()
        };
        let sso_url = sp
            .sso_binding_location(HTTP_REDIRECT_BINDING)
            .ok_or("the IdP has no SingleSignOnService with the HTTP-Redirect binding")?;
        url::Url::parse(&sso_url)
            .ok()
            .filter(|u| matches!(u.scheme(), "https" | "http"))
            .ok_or("the IdP's SingleSignOnService location is not an http(s) URL")?;
        let certs = sp
            .idp_signing_certs()
            .map_err(|_| {
                "a signing certificate in the metadata is not valid base64 DER".to_owned()
            })?
            .unwrap_or_default();
        Ok(IdpMetadata {
            entity_id,
            sso_url,
            signing_certs_der: certs.iter().map(|c| c.der_data().to_vec()).collect(),
        })
    }

    fn sp_metadata(&self, sp: &ServiceProviderUrls) -> Result<String, String> {
        let mut metadata = service_provider(sp, EntityDescriptor::default())
            .metadata()
            .map_err(|e| format!("building SP metadata: {e}"))?;
        // No single logout: advertise none (samael insists on a URL to
        // build the document, so the placeholder is taken out again).
        for descriptor in metadata.sp_sso_descriptors.iter_mut().flatten() {
            descriptor.single_logout_services = None;
        }
        metadata
            .to_string()
            .map_err(|e| format!("writing SP metadata: {e:?}"))
    }

    fn authn_request(
        &self,
        sp: &ServiceProviderUrls,
        idp_metadata_xml: &str,
        relay_state: &str,
    ) -> Result<AuthnRequest, String> {
        let provider = service_provider(sp, idp_descriptor(idp_metadata_xml)?);
        let sso_url = provider
            .sso_binding_location(HTTP_REDIRECT_BINDING)
            .ok_or("the IdP has no HTTP-Redirect SingleSignOnService")?;
        let mut request = provider
            .make_authentication_request(&sso_url)
            .map_err(|e| format!("building the AuthnRequest: {e}"))?;
        // samael's ids carry 32 random bits; an id must not be guessable
        // (an XML ID starts with a letter or underscore).
        request.id = format!("_{}", uuid::Uuid::new_v4().simple());
        let url = request
            .redirect(relay_state)
            .map_err(|e| format!("encoding the AuthnRequest: {e}"))?
            .ok_or("the AuthnRequest has no destination")?;
        Ok(AuthnRequest {
            request_id: request.id,
            redirect_url: url.to_string(),
        })
    }

    fn verify_response(
        &self,
        sp: &ServiceProviderUrls,
        idp_metadata_xml: &str,
        saml_response: &str,
        expected: Expected<'_>,
    ) -> Result<VerifiedAssertion, SsoError> {
        let invalid = SsoError::InvalidAssertion;
        if saml_response.len() > MAX_RESPONSE_BYTES * 4 / 3 + 4 {
            return Err(invalid("the SAML response is too large".into()));
        }
        let compact: String = saml_response.split_whitespace().collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(compact)
            .map_err(|_| invalid("SAMLResponse is not base64".into()))?;
        let xml = String::from_utf8(bytes)
            .map_err(|_| invalid("the SAML response is not UTF-8 XML".into()))?;
        match count_assertions(&xml).map_err(invalid)? {
            1 => {}
            0 => return Err(invalid("the response carries no assertion".into())),
            n => {
                return Err(invalid(format!(
                    "the response carries {n} assertions; exactly one is accepted (a second one is the mark of XML signature wrapping)"
                )));
            }
        }
        let idp = idp_descriptor(idp_metadata_xml).map_err(|_| {
            invalid("the stored IdP metadata is unreadable; configure SAML again".into())
        })?;
        let mut provider = service_provider(sp, idp);
        // Without certificates samael would skip verification: the
        // configuration refuses such metadata, and this refuses it again.
        if provider
            .idp_signing_certs()
            .ok()
            .flatten()
            .is_none_or(|c| c.is_empty())
        {
            return Err(invalid(
                "the IdP metadata names no signing certificate".into(),
            ));
        }
        let ids;
        let possible: Option<&[&str]> = match expected {
            Expected::Request(id) => {
                ids = [id];
                Some(&ids)
            }
            Expected::Unsolicited => {
                provider.allow_idp_initiated = true;
                None
            }
        };
        let assertion = provider
            .parse_xml_response_with_mode(&xml, possible, ReduceMode::ValidateAndMarkNoAncestors)
            .map_err(|e| invalid(refusal(&e)))?;
        let name_id = assertion.subject.as_ref().and_then(|s| s.name_id.as_ref());
        let attributes = assertion
            .attribute_statements
            .iter()
            .flatten()
            .flat_map(|s| s.attributes.iter())
            .filter_map(|a| {
                let name = a.name.clone().or_else(|| a.friendly_name.clone())?;
                let values = a.values.iter().filter_map(|v| v.value.clone()).collect();
                Some((name, values))
            })
            .collect();
        Ok(VerifiedAssertion {
            id: assertion.id.clone(),
            issuer: assertion.issuer.value.clone().unwrap_or_default(),
            name_id: name_id.map(|n| n.value.clone()),
            name_id_format: name_id.and_then(|n| n.format.clone()),
            attributes,
            expires_at: expiry(&assertion),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "urn:oasis:names:tc:SAML:2.0:assertion";

    #[test]
    fn assertions_are_counted_wherever_they_hide_and_by_namespace() {
        let one = format!(r#"<p:Response xmlns:p="p"><a:Assertion xmlns:a="{A}"/></p:Response>"#);
        assert_eq!(count_assertions(&one), Ok(1));
        // Wrapped inside an unsigned element, with another prefix.
        let nested = format!(
            r#"<p:Response xmlns:p="p"><x:Assertion xmlns:x="{A}"><x:Advice><y:Assertion xmlns:y="{A}"/></x:Advice></x:Assertion></p:Response>"#
        );
        assert_eq!(count_assertions(&nested), Ok(2));
        // An element named Assertion in another namespace is not one.
        let other = format!(
            r#"<p:Response xmlns:p="p"><a:Assertion xmlns:a="{A}"/><Assertion xmlns="urn:other"/></p:Response>"#
        );
        assert_eq!(count_assertions(&other), Ok(1));
        let encrypted = format!(r#"<r><a:EncryptedAssertion xmlns:a="{A}"/></r>"#);
        assert_eq!(count_assertions(&encrypted), Ok(1));
    }

    #[test]
    fn dtds_and_broken_xml_are_refused() {
        let laughs = r#"<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><r>&b;</r>"#;
        assert!(count_assertions(laughs).unwrap_err().contains("DTD"));
        assert!(has_doctype(laughs));
        assert!(idp_descriptor(laughs).unwrap_err().contains("DTD"));
        assert!(count_assertions("<r><unclosed></r>").is_err());
    }

    #[test]
    fn sp_metadata_names_the_entity_id_and_acs_and_no_logout() {
        let sp = ServiceProviderUrls {
            entity_id: "https://m.example/api/v1/mobius/sso/acme/saml/metadata".into(),
            acs_url: "https://m.example/api/v1/mobius/sso/acme/saml/acs".into(),
        };
        let xml = SamaelProtocol.sp_metadata(&sp).unwrap();
        assert!(
            xml.contains(&format!("entityID=\"{}\"", sp.entity_id)),
            "{xml}"
        );
        assert!(
            xml.contains(&format!("Location=\"{}\"", sp.acs_url)),
            "{xml}"
        );
        assert!(!xml.contains("SingleLogoutService"), "{xml}");
    }

    #[test]
    fn metadata_without_an_idp_descriptor_is_refused_with_a_reason() {
        let sp_only = r#"<md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" entityID="https://sp.example"><md:SPSSODescriptor protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol"><md:AssertionConsumerService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST" Location="https://sp.example/acs" index="0"/></md:SPSSODescriptor></md:EntityDescriptor>"#;
        let err = SamaelProtocol.parse_idp_metadata(sp_only).unwrap_err();
        assert!(err.contains("IDPSSODescriptor"), "{err}");
        assert!(SamaelProtocol.parse_idp_metadata("not xml").is_err());
    }
}
