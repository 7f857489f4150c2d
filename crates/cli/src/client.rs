//! The GraphQL client: one POST to `{server}/api/graphql` per operation,
//! the bearer token, and the refresh of a saved session.
//!
//! Refreshing happens here, not in the commands, so every command gets it:
//! a saved access token that has expired (or that the server calls
//! UNAUTHENTICATED) is replaced once through `refreshSession`, the rotated
//! tokens are saved at once (the old refresh token no longer works), and the
//! request is retried once. A token given with `--token` is never
//! refreshed: it may be an API token, which cannot be, and it is not ours
//! to replace.

use std::time::{Duration, SystemTime};

use anyhow::{Context as _, Result, anyhow};
use reqwest::header::RETRY_AFTER;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::credentials::{CredentialStore, Credentials, Secret};
use crate::error::{ApiError, ServerError};
use crate::session::{self, AuthPayload};

/// Long enough for a slow list page, short enough that a hung server does
/// not hang a script forever.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

const SESSION_EXPIRED: &str = "your session has expired; run 'mobius login' again";

/// What the client sends as `Authorization`.
#[derive(Debug)]
pub enum Auth {
    /// `--token` / `MOBIUS_TOKEN`: sent as given, never refreshed.
    Token(Secret),
    /// The saved login, refreshed as needed and saved back to `store`.
    Session {
        credentials: Credentials,
        store: CredentialStore,
    },
    /// No credentials; `hint` says why and what to do, for operations that
    /// need them.
    Anonymous { hint: String },
}

pub struct Client {
    http: reqwest::Client,
    server: String,
    auth: Auth,
}

impl Client {
    pub fn new(server: String, auth: Auth) -> Result<Self> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("mobius-cli/", env!("CARGO_PKG_VERSION")))
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .context("cannot set up the HTTP client")?;
        Ok(Client { http, server, auth })
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    /// The bearer token for a REST call (refreshing a saved session that
    /// has expired), for the few surfaces that are REST (software uploads).
    pub async fn bearer(&mut self) -> Result<String> {
        match &self.auth {
            Auth::Token(token) => Ok(token.expose().to_owned()),
            Auth::Anonymous { hint } => Err(ApiError::unauthenticated(hint.clone()).into()),
            Auth::Session { .. } => {
                if self.saved_access_token_expired() {
                    self.refresh_session().await?;
                }
                Ok(self.saved_access_token().unwrap_or_default().to_owned())
            }
        }
    }

    /// Runs an operation that needs credentials and returns `data[field]`.
    pub async fn query<T: DeserializeOwned>(
        &mut self,
        field: &str,
        document: &str,
        variables: Value,
    ) -> Result<T> {
        let data = self.execute(document, &variables, true).await?;
        take_field(data, field)
    }

    /// Runs an operation without credentials (setup, login) and returns
    /// `data[field]`. Nothing saved is sent, so logging in to one server
    /// never shows it a token from another.
    pub async fn query_anonymously<T: DeserializeOwned>(
        &self,
        field: &str,
        document: &str,
        variables: Value,
    ) -> Result<T> {
        let data = self.post(document, &variables, None).await?;
        take_field(data, field)
    }

    /// Runs any document with whatever credentials there are (none is
    /// allowed: `setup` and `login` need none) and returns the whole `data`.
    pub async fn run_document(&mut self, document: &str, variables: Value) -> Result<Value> {
        self.execute(document, &variables, false).await
    }

    /// Revokes the saved session's refresh token on the server. The access
    /// token is refreshed first if needed, since the server may want a
    /// valid one on the call; the refresh token sent is then the rotated one.
    pub async fn end_session(&mut self) -> Result<bool> {
        let mut refreshed = false;
        if self.saved_access_token_expired() {
            self.refresh_session().await?;
            refreshed = true;
        }
        match self.post_logout().await {
            Err(err) if err.is_unauthenticated() && !refreshed => {
                self.refresh_session().await?;
                Ok(self.post_logout().await?)
            }
            other => Ok(other?),
        }
    }

    async fn post_logout(&self) -> Result<bool, ApiError> {
        let Auth::Session { credentials, .. } = &self.auth else {
            return Ok(false);
        };
        let variables = json!({
            "refreshToken": credentials.refresh_token.as_ref().map(Secret::expose),
        });
        let data = self
            .post(
                session::LOGOUT,
                &variables,
                Some(credentials.access_token.expose()),
            )
            .await?;
        Ok(data.get("logout").and_then(Value::as_bool).unwrap_or(false))
    }

    async fn execute(
        &mut self,
        document: &str,
        variables: &Value,
        needs_login: bool,
    ) -> Result<Value> {
        match &self.auth {
            Auth::Token(token) => Ok(self.post(document, variables, Some(token.expose())).await?),
            Auth::Anonymous { hint } => {
                if needs_login {
                    return Err(ApiError::unauthenticated(hint.clone()).into());
                }
                Ok(self.post(document, variables, None).await?)
            }
            Auth::Session { .. } => {
                let mut refreshed = false;
                if self.saved_access_token_expired() {
                    self.refresh_session().await?;
                    refreshed = true;
                }
                match self
                    .post(document, variables, self.saved_access_token())
                    .await
                {
                    Err(err) if err.is_unauthenticated() && !refreshed => {
                        self.refresh_session().await?;
                        Ok(self
                            .post(document, variables, self.saved_access_token())
                            .await?)
                    }
                    other => Ok(other?),
                }
            }
        }
    }

    fn saved_access_token(&self) -> Option<&str> {
        match &self.auth {
            Auth::Session { credentials, .. } => Some(credentials.access_token.expose()),
            Auth::Token(_) | Auth::Anonymous { .. } => None,
        }
    }

    fn saved_access_token_expired(&self) -> bool {
        match &self.auth {
            Auth::Session { credentials, .. } => {
                credentials.access_token_expired(SystemTime::now())
            }
            Auth::Token(_) | Auth::Anonymous { .. } => false,
        }
    }

    /// Exchanges the saved refresh token for new tokens and saves them.
    async fn refresh_session(&mut self) -> Result<()> {
        let refresh_token = match &self.auth {
            Auth::Session { credentials, .. } => credentials.refresh_token.clone(),
            Auth::Token(_) | Auth::Anonymous { .. } => return Ok(()),
        };
        let Some(refresh_token) = refresh_token else {
            return Err(ApiError::unauthenticated(SESSION_EXPIRED).into());
        };
        let variables = json!({ "refreshToken": refresh_token.expose() });
        let data = match self.post(session::REFRESH, &variables, None).await {
            Ok(data) => data,
            Err(err) if err.is_unauthenticated() => {
                if self.adopt_newer_saved_session(&refresh_token) {
                    return Ok(());
                }
                return Err(ApiError::unauthenticated(SESSION_EXPIRED).into());
            }
            Err(err) => return Err(anyhow!(err).context("cannot refresh the session")),
        };
        let payload: AuthPayload = take_field(data, "refreshSession")?;
        if let Auth::Session { credentials, store } = &mut self.auth {
            payload.update(credentials);
            store.save(credentials).context(
                "the session was refreshed but could not be saved; run 'mobius login' again",
            )?;
        }
        Ok(())
    }

    /// Another `mobius` running at the same time may have refreshed first,
    /// which rotated the refresh token this one just tried. If the file now
    /// holds a different session for the same server, that one is used.
    fn adopt_newer_saved_session(&mut self, tried: &Secret) -> bool {
        let Auth::Session { credentials, store } = &mut self.auth else {
            return false;
        };
        match store.load() {
            Ok(Some(saved))
                if saved.server == credentials.server
                    && saved.refresh_token.as_ref() != Some(tried) =>
            {
                *credentials = saved;
                true
            }
            _ => false,
        }
    }

    /// One HTTP round trip; the answer's `data`, or why there is none.
    async fn post(
        &self,
        document: &str,
        variables: &Value,
        bearer: Option<&str>,
    ) -> Result<Value, ApiError> {
        let mut request = self
            .http
            .post(format!("{}/api/graphql", self.server))
            .json(&json!({ "query": document, "variables": variables }));
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|err| self.unreachable(&err))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse().ok());
        let body = response
            .bytes()
            .await
            .map_err(|err| self.unreachable(&err))?;
        interpret_answer(status, retry_after, &body)
    }

    fn unreachable(&self, err: &reqwest::Error) -> ApiError {
        let reason = if err.is_timeout() {
            "timed out".to_owned()
        } else {
            // reqwest's own message is a generic "error sending request";
            // the innermost cause ("Connection refused", "dns error: ...")
            // is the useful part.
            let mut cause: &dyn std::error::Error = err;
            while let Some(next) = cause.source() {
                cause = next;
            }
            cause.to_string()
        };
        ApiError::Unreachable {
            server: self.server.clone(),
            reason,
        }
    }
}

/// Reads an HTTP answer: a GraphQL response (any status), the API's own
/// error body `{"error": {...}}`, or something else entirely.
fn interpret_answer(status: u16, retry_after: Option<u64>, body: &[u8]) -> Result<Value, ApiError> {
    let success = (200..300).contains(&status);
    if let Ok(Value::Object(mut answer)) = serde_json::from_slice::<Value>(body) {
        if let Some(Value::Array(errors)) = answer.get("errors")
            && !errors.is_empty()
        {
            return Err(ApiError::from_graphql_errors(errors, retry_after));
        }
        if let Some(error) = answer.get("error").filter(|error| error.is_object()) {
            let text = |key: &str| error.get(key).and_then(Value::as_str).map(str::to_owned);
            return Err(ApiError::Rejected {
                errors: vec![ServerError {
                    message: text("message")
                        .unwrap_or_else(|| format!("the server answered HTTP {status}")),
                    code: text("code").map(|code| code.to_ascii_uppercase()),
                    field: text("field"),
                }],
                retry_after,
            });
        }
        if success && let Some(data @ Value::Object(_)) = answer.remove("data") {
            return Ok(data);
        }
    }

    let code = match status {
        401 => Some("UNAUTHENTICATED"),
        403 => Some("FORBIDDEN"),
        429 => Some("RATE_LIMITED"),
        _ => None,
    };
    if let Some(code) = code {
        return Err(ApiError::Rejected {
            errors: vec![ServerError {
                message: format!("the server answered HTTP {status}"),
                code: Some(code.to_owned()),
                field: None,
            }],
            retry_after,
        });
    }
    let detail = match status {
        404 | 405 => "no GraphQL API here; is this a Mobius server?".to_owned(),
        _ if body.is_empty() => "empty body".to_owned(),
        _ => snippet(body),
    };
    Err(ApiError::Unexpected { status, detail })
}

/// The start of a body, on one line, for an error message.
fn snippet(body: &[u8]) -> String {
    const MAX_CHARS: usize = 200;
    let text = String::from_utf8_lossy(body);
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > MAX_CHARS {
        let cut: String = one_line.chars().take(MAX_CHARS).collect();
        format!("{cut}...")
    } else {
        one_line
    }
}

fn take_field<T: DeserializeOwned>(mut data: Value, field: &str) -> Result<T> {
    let value = data.get_mut(field).map(Value::take).ok_or_else(|| {
        anyhow!("the server's answer has no `{field}`; is it a matching Mobius version?")
    })?;
    serde_json::from_value(value).with_context(|| {
        format!("the server's answer to `{field}` is not what this mobius understands; is it a matching version?")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(result: Result<Value, ApiError>) -> String {
        match result {
            Ok(data) => panic!("expected an error, got {data}"),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn data_is_returned_from_a_clean_answer() {
        let data =
            interpret_answer(200, None, br#"{"data": {"deleteSite": "abc"}}"#).expect("data");
        let id: String = take_field(data, "deleteSite").expect("field");
        assert_eq!(id, "abc");
    }

    #[test]
    fn graphql_errors_win_over_partial_data() {
        let body = br#"{"data": null, "errors": [{"message": "site not found", "extensions": {"code": "NOT_FOUND"}}]}"#;
        assert_eq!(
            rendered(interpret_answer(200, None, body)),
            "site not found (NOT_FOUND)"
        );
    }

    #[test]
    fn http_error_bodies_and_retry_after_are_read() {
        let body = br#"{"error": {"code": "RATE_LIMITED", "message": "too many requests"}}"#;
        assert_eq!(
            rendered(interpret_answer(429, Some(12), body)),
            "too many requests; retry after 12 seconds (RATE_LIMITED)"
        );
        let bare = interpret_answer(429, Some(3), b"slow down");
        assert_eq!(
            rendered(bare),
            "the server answered HTTP 429; retry after 3 seconds (RATE_LIMITED)"
        );
    }

    #[test]
    fn an_http_401_counts_as_unauthenticated() {
        let err = interpret_answer(401, None, b"").expect_err("401");
        assert!(err.is_unauthenticated());
    }

    #[test]
    fn foreign_answers_are_described() {
        assert_eq!(
            rendered(interpret_answer(404, None, b"<html>Not Found</html>")),
            "unexpected answer from the server (HTTP 404): no GraphQL API here; is this a Mobius server?"
        );
        assert_eq!(
            rendered(interpret_answer(
                502,
                None,
                b"<html>\n  Bad   gateway\n</html>"
            )),
            "unexpected answer from the server (HTTP 502): <html> Bad gateway </html>"
        );
    }

    #[test]
    fn a_missing_field_is_an_error_not_a_panic() {
        let err = take_field::<String>(json!({"other": 1}), "deleteSite").expect_err("missing");
        assert!(err.to_string().contains("deleteSite"), "{err}");
        let err =
            take_field::<String>(json!({"deleteSite": 5}), "deleteSite").expect_err("wrong type");
        assert!(err.to_string().contains("deleteSite"), "{err}");
    }
}
