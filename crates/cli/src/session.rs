//! Sessions: the operations that create, refresh and end one, and how their
//! answer becomes the saved [`Credentials`].

use serde::Deserialize;

use crate::commands::users::User;
use crate::credentials::{Credentials, Secret};

/// The fields every operation that hands out a session selects.
macro_rules! auth_payload_fragment {
    () => {
        "fragment SessionFields on AuthPayload {
           accessToken accessTokenExpiresAt refreshToken
           user { id email displayName role createdAt }
         }"
    };
}

pub const SETUP: &str = concat!(
    "mutation Setup($input: SetupInput!) { setup(input: $input) { ...SessionFields } }\n",
    auth_payload_fragment!()
);

/// `useCookie` stays false: a CLI has no cookie jar, it needs the refresh
/// token in the answer.
pub const LOGIN: &str = concat!(
    "mutation Login($input: LoginInput!) { login(input: $input) { ...SessionFields } }\n",
    auth_payload_fragment!()
);

pub const REFRESH: &str = concat!(
    "mutation Refresh($refreshToken: String) { refreshSession(refreshToken: $refreshToken) { ...SessionFields } }\n",
    auth_payload_fragment!()
);

pub const LOGOUT: &str =
    "mutation Logout($refreshToken: String) { logout(refreshToken: $refreshToken) }";

/// The answer of `setup`, `login` and `refreshSession`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthPayload {
    pub access_token: Secret,
    pub access_token_expires_at: String,
    pub refresh_token: Option<Secret>,
    pub user: User,
}

impl AuthPayload {
    /// The credentials to save for a new session on `server`.
    pub fn new_credentials(&self, server: &str) -> Credentials {
        Credentials {
            server: server.to_owned(),
            access_token: self.access_token.clone(),
            access_token_expires_at: self.access_token_expires_at.clone(),
            refresh_token: self.refresh_token.clone(),
            email: self.user.email.clone(),
        }
    }

    /// Takes over the rotated tokens of a refresh. The old refresh token is
    /// dead once the server has answered, so it is replaced even by null.
    pub fn update(&self, credentials: &mut Credentials) {
        let server = std::mem::take(&mut credentials.server);
        *credentials = self.new_credentials(&server);
    }
}
