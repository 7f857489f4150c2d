//! Errors as the user sees them: one line, `mobius: <message> (CODE)`.
//!
//! Whatever the server refused with (a GraphQL `errors[]` entry or an HTTP
//! error body) becomes an [`ApiError`], so every command reports failures
//! the same way and `main` only has to pick the exit code.

use std::fmt;

use serde_json::Value;

/// The `extensions.code` the server uses for a missing or expired login.
pub const UNAUTHENTICATED: &str = "UNAUTHENTICATED";
const BAD_USER_INPUT: &str = "BAD_USER_INPUT";
const RATE_LIMITED: &str = "RATE_LIMITED";

/// One error the server reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerError {
    pub message: String,
    /// One of the API's stable codes (`NOT_FOUND`, `CONFLICT`, ...), when given.
    pub code: Option<String>,
    /// The input field a BAD_USER_INPUT or CONFLICT is about.
    pub field: Option<String>,
}

/// Why a request to the API failed.
#[derive(Debug)]
pub enum ApiError {
    /// The server answered and refused.
    Rejected {
        errors: Vec<ServerError>,
        /// Seconds to wait before trying again, from `Retry-After` or the
        /// error's extensions.
        retry_after: Option<u64>,
    },
    /// No answer at all: connection refused, DNS, TLS, timeout.
    Unreachable { server: String, reason: String },
    /// An answer that is neither GraphQL nor the API's error body, e.g. a
    /// proxy's HTML page.
    Unexpected { status: u16, detail: String },
}

impl ApiError {
    /// A refusal decided locally, worded the way the server would word it.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        ApiError::Rejected {
            errors: vec![ServerError {
                message: message.into(),
                code: Some(UNAUTHENTICATED.to_owned()),
                field: None,
            }],
            retry_after: None,
        }
    }

    /// Whether the server said the credentials are missing, expired or
    /// revoked: the one case where refreshing the session can help.
    pub fn is_unauthenticated(&self) -> bool {
        match self {
            ApiError::Rejected { errors, .. } => errors
                .iter()
                .any(|error| error.code.as_deref() == Some(UNAUTHENTICATED)),
            ApiError::Unreachable { .. } | ApiError::Unexpected { .. } => false,
        }
    }

    /// Builds the error for a GraphQL answer's `errors` array.
    pub fn from_graphql_errors(errors: &[Value], retry_after_header: Option<u64>) -> Self {
        let mut retry_after = retry_after_header;
        let errors = errors
            .iter()
            .map(|error| {
                let extensions = error.get("extensions");
                let text = |value: Option<&Value>| value.and_then(Value::as_str).map(str::to_owned);
                if retry_after.is_none() {
                    retry_after = extensions.and_then(retry_after_extension);
                }
                ServerError {
                    message: text(error.get("message")).unwrap_or_else(|| {
                        "the server reported an error without a message".to_owned()
                    }),
                    code: text(extensions.and_then(|ext| ext.get("code")))
                        .map(|code| code.to_ascii_uppercase()),
                    field: text(extensions.and_then(|ext| ext.get("field"))),
                }
            })
            .collect();
        ApiError::Rejected {
            errors,
            retry_after,
        }
    }
}

/// Servers may put the wait in the error's extensions, as a number or a
/// numeric string, under either spelling.
fn retry_after_extension(extensions: &Value) -> Option<u64> {
    let value = extensions
        .get("retryAfter")
        .or_else(|| extensions.get("retry_after"))?;
    value
        .as_u64()
        .or_else(|| value.as_str().and_then(|text| text.trim().parse().ok()))
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::Rejected {
                errors,
                retry_after,
            } => {
                if errors.is_empty() {
                    return f.write_str("the server refused the request without saying why");
                }
                for (index, error) in errors.iter().enumerate() {
                    if index > 0 {
                        f.write_str("; ")?;
                    }
                    write_server_error(f, error, *retry_after)?;
                }
                Ok(())
            }
            ApiError::Unreachable { server, reason } => {
                write!(f, "cannot reach the server at {server}: {reason}")
            }
            ApiError::Unexpected { status, detail } => {
                write!(
                    f,
                    "unexpected answer from the server (HTTP {status}): {detail}"
                )
            }
        }
    }
}

fn write_server_error(
    f: &mut fmt::Formatter<'_>,
    error: &ServerError,
    retry_after: Option<u64>,
) -> fmt::Result {
    let code = error.code.as_deref();
    // Validation messages are often about "this value"; naming the field
    // says which one. Conflict messages already name it ("a site with this
    // name already exists").
    match (&error.field, code) {
        (Some(field), Some(BAD_USER_INPUT)) => write!(f, "{field}: {}", error.message)?,
        _ => f.write_str(&error.message)?,
    }
    if code == Some(RATE_LIMITED)
        && let Some(seconds) = retry_after
    {
        write!(f, "; retry after {seconds} seconds")?;
    }
    if let Some(code) = code {
        write!(f, " ({code})")?;
    }
    Ok(())
}

impl std::error::Error for ApiError {}

/// A mistake in how the command was invoked that clap cannot see, such as a
/// missing password. Exits with 2, like clap's own usage errors.
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn line(error: &ApiError) -> String {
        format!("mobius: {error}")
    }

    #[test]
    fn a_graphql_error_becomes_one_line_with_its_code() {
        let response = json!({
            "data": null,
            "errors": [{
                "message": "a site with this name already exists",
                "locations": [{"line": 1, "column": 12}],
                "path": ["createSite"],
                "extensions": {"code": "CONFLICT", "field": "name"}
            }]
        });
        let error =
            ApiError::from_graphql_errors(response["errors"].as_array().expect("array"), None);
        assert_eq!(
            line(&error),
            "mobius: a site with this name already exists (CONFLICT)"
        );
        assert!(!error.is_unauthenticated());
    }

    #[test]
    fn bad_input_names_the_field() {
        let errors = [json!({
            "message": "must not be empty",
            "extensions": {"code": "BAD_USER_INPUT", "field": "name"}
        })];
        let error = ApiError::from_graphql_errors(&errors, None);
        assert_eq!(
            line(&error),
            "mobius: name: must not be empty (BAD_USER_INPUT)"
        );
    }

    #[test]
    fn rate_limits_say_how_long_to_wait() {
        let errors =
            [json!({"message": "too many requests", "extensions": {"code": "RATE_LIMITED"}})];
        let error = ApiError::from_graphql_errors(&errors, Some(30));
        assert_eq!(
            line(&error),
            "mobius: too many requests; retry after 30 seconds (RATE_LIMITED)"
        );

        let errors = [
            json!({"message": "slow down", "extensions": {"code": "RATE_LIMITED", "retryAfter": "5"}}),
        ];
        let error = ApiError::from_graphql_errors(&errors, None);
        assert_eq!(
            line(&error),
            "mobius: slow down; retry after 5 seconds (RATE_LIMITED)"
        );
    }

    #[test]
    fn several_errors_share_the_line_and_odd_ones_still_render() {
        let errors = [
            json!({"message": "first", "extensions": {"code": "not_found"}}),
            json!({"message": "second"}),
            json!({"extensions": {"code": "INTERNAL"}}),
        ];
        let error = ApiError::from_graphql_errors(&errors, None);
        assert_eq!(
            line(&error),
            "mobius: first (NOT_FOUND); second; the server reported an error without a message (INTERNAL)"
        );
    }

    #[test]
    fn unauthenticated_is_recognised_and_worded_like_the_server() {
        let error = ApiError::unauthenticated("not logged in; run 'mobius login' or pass --token");
        assert!(error.is_unauthenticated());
        assert_eq!(
            line(&error),
            "mobius: not logged in; run 'mobius login' or pass --token (UNAUTHENTICATED)"
        );
    }

    #[test]
    fn transport_failures_name_the_server() {
        let error = ApiError::Unreachable {
            server: "http://127.0.0.1:9".to_owned(),
            reason: "Connection refused (os error 111)".to_owned(),
        };
        assert_eq!(
            line(&error),
            "mobius: cannot reach the server at http://127.0.0.1:9: Connection refused (os error 111)"
        );
    }
}
