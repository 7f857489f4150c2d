//! The Mobius server's portal API, as Cocoon calls it: every call carries
//! one device's bearer token and nothing else, so Cocoon can never see or
//! do more than that device's user may.

use std::time::Duration;

use mobius_api::portal::{
    ACTIVITY_PATH, DEVICE_PATH, LOGO_PATH, POLICIES_PATH, PortalActivity, PortalDevice,
    PortalPolicies, PortalSession, PortalSoftware, PortalSoftwareList, SESSION_PATH, SOFTWARE_PATH,
};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use uuid::Uuid;

/// How the server answered, in the terms the pages act on. No HTTP status
/// leaks past this module.
#[derive(Debug, thiserror::Error)]
pub enum PortalError {
    /// Unknown, expired or revoked token: the user needs a new link.
    #[error("the server refused the token")]
    Unauthorized,
    /// Not a self-service title offered to this device (or no logo).
    #[error("not found")]
    NotFound,
    /// The install's state does not allow that action now.
    #[error("the action conflicts with the install's state")]
    Conflict,
    #[error("cannot reach the server: {0}")]
    Unreachable(#[source] reqwest::Error),
    #[error("unexpected answer {status}: {body}")]
    Unexpected { status: u16, body: String },
}

/// The error and its causes on one line (`reqwest` keeps the useful part,
/// such as "invalid peer certificate: UnknownIssuer", in the sources).
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A self-service action the portal offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SoftwareAction {
    Install,
    Retry,
    Uninstall,
}

impl SoftwareAction {
    pub fn parse(text: &str) -> Option<SoftwareAction> {
        match text {
            "install" => Some(SoftwareAction::Install),
            "retry" => Some(SoftwareAction::Retry),
            "uninstall" => Some(SoftwareAction::Uninstall),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SoftwareAction::Install => "install",
            SoftwareAction::Retry => "retry",
            SoftwareAction::Uninstall => "uninstall",
        }
    }
}

/// The tenant's logo image.
pub struct Logo {
    pub content_type: String,
    pub bytes: Vec<u8>,
}

/// Logos larger than this are not passed on (a header image needs far less).
const MAX_LOGO_BYTES: usize = 2 * 1024 * 1024;

#[derive(Clone)]
pub struct PortalClient {
    http: reqwest::Client,
    /// The server's base URL without a trailing slash.
    base: String,
}

impl PortalClient {
    /// `ca_pem`: trust only these CAs for an https server; the platform's
    /// roots otherwise.
    pub fn new(base: &url::Url, ca_pem: Option<&[u8]>) -> anyhow::Result<PortalClient> {
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("mobius-cocoon/", env!("CARGO_PKG_VERSION")))
            // A bearer token must never follow a redirect to another host.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(20));
        if let Some(pem) = ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)?;
            anyhow::ensure!(!certs.is_empty(), "the --server-ca file has no certificate");
            builder = builder.tls_certs_only(certs);
        }
        Ok(PortalClient {
            http: builder.build()?,
            base: base.as_str().trim_end_matches('/').to_owned(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        token: &str,
    ) -> Result<reqwest::Response, PortalError> {
        let response = request
            .bearer_auth(token)
            .send()
            .await
            .map_err(PortalError::Unreachable)?;
        match response.status() {
            status if status.is_success() => Ok(response),
            StatusCode::UNAUTHORIZED => Err(PortalError::Unauthorized),
            StatusCode::NOT_FOUND => Err(PortalError::NotFound),
            StatusCode::CONFLICT => Err(PortalError::Conflict),
            status => {
                let mut body = response.text().await.unwrap_or_default();
                body.truncate(500);
                Err(PortalError::Unexpected {
                    status: status.as_u16(),
                    body,
                })
            }
        }
    }

    async fn json<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        token: &str,
    ) -> Result<T, PortalError> {
        let response = self.send(request, token).await?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(PortalError::Unreachable)?;
        serde_json::from_slice(&bytes).map_err(|error| PortalError::Unexpected {
            status,
            body: format!("unreadable body: {error}"),
        })
    }

    /// Trades a link token for a session token.
    pub async fn open_session(&self, link_token: &str) -> Result<PortalSession, PortalError> {
        self.json(self.http.post(self.url(SESSION_PATH)), link_token)
            .await
    }

    pub async fn device(&self, session: &str) -> Result<PortalDevice, PortalError> {
        self.json(self.http.get(self.url(DEVICE_PATH)), session)
            .await
    }

    pub async fn policies(&self, session: &str) -> Result<PortalPolicies, PortalError> {
        self.json(self.http.get(self.url(POLICIES_PATH)), session)
            .await
    }

    pub async fn software(&self, session: &str) -> Result<PortalSoftwareList, PortalError> {
        self.json(self.http.get(self.url(SOFTWARE_PATH)), session)
            .await
    }

    pub async fn software_action(
        &self,
        session: &str,
        version_id: Uuid,
        action: SoftwareAction,
    ) -> Result<PortalSoftware, PortalError> {
        let url = self.url(&format!("{SOFTWARE_PATH}/{version_id}/{}", action.as_str()));
        self.json(self.http.post(url), session).await
    }

    pub async fn activity(&self, session: &str) -> Result<PortalActivity, PortalError> {
        self.json(self.http.get(self.url(ACTIVITY_PATH)), session)
            .await
    }

    /// The logo, if the tenant has one that is an image.
    pub async fn logo(&self, session: &str) -> Result<Logo, PortalError> {
        let response = self
            .send(self.http.get(self.url(LOGO_PATH)), session)
            .await?;
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        // Only images are served from our origin: an HTML "logo" could
        // otherwise run script under Cocoon's name. (SVG is let through;
        // its response gets a sandboxing CSP, see `routes::logo`.)
        if !content_type.starts_with("image/") {
            return Err(PortalError::NotFound);
        }
        let bytes = response.bytes().await.map_err(PortalError::Unreachable)?;
        if bytes.len() > MAX_LOGO_BYTES {
            return Err(PortalError::NotFound);
        }
        Ok(Logo {
            content_type,
            bytes: bytes.to_vec(),
        })
    }
}
