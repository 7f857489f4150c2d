//! The browser's hold on a device session: the session token in an
//! HttpOnly cookie, and the CSRF token derived from it.

use axum::extract::FromRequestParts;
use axum::http::header::COOKIE;
use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use mobius_api::portal::{LINK_TOKEN_PREFIX, SESSION_TOKEN_PREFIX};
use sha2::Sha256;

pub const COOKIE_NAME: &str = "cocoon_session";

/// The longest token we pass on; real ones are far shorter. Bounds what a
/// hostile cookie or link can make us forward.
const MAX_TOKEN_LEN: usize = 512;

/// A token shaped like the server's: the prefix, then URL-safe characters.
/// Anything else is refused before it reaches a header.
fn well_formed(token: &str, prefix: &str) -> bool {
    token.len() <= MAX_TOKEN_LEN
        && token.len() > prefix.len()
        && token.starts_with(prefix)
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'~'))
}

/// A link token from `/start?token=`, checked for shape only: the server
/// decides whether it is valid.
pub fn link_token(raw: &str) -> Option<&str> {
    well_formed(raw, LINK_TOKEN_PREFIX).then_some(raw)
}

/// A request that carries a session cookie. Handlers that reach device
/// data take this, so one that forgot to check for a session does not
/// compile; whether the server still honours the token is learnt on the
/// first call (a 401 becomes the "link expired" page).
#[derive(Clone, Debug)]
pub struct Session {
    token: String,
}

impl Session {
    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn from_cookie_header(header: &str) -> Option<Session> {
        header
            .split(';')
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, _)| *name == COOKIE_NAME)
            .map(|(_, value)| value.trim_matches('"'))
            .filter(|value| well_formed(value, SESSION_TOKEN_PREFIX))
            .map(|value| Session {
                token: value.to_owned(),
            })
    }
}

/// The request had no usable session cookie. Handlers take
/// `Result<Session, NoSession>` and answer with the "link expired" page;
/// this bare 401 is only the fallback axum requires.
#[derive(Debug)]
pub struct NoSession;

impl axum::response::IntoResponse for NoSession {
    fn into_response(self) -> axum::response::Response {
        axum::http::StatusCode::UNAUTHORIZED.into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Session {
    type Rejection = NoSession;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .find_map(Session::from_cookie_header)
            .ok_or(NoSession)
    }
}

/// `Set-Cookie` for a new session. HttpOnly keeps the token from page
/// scripts; SameSite=Strict keeps other sites' forms and links from
/// sending it; Max-Age ends it with the server's session so a stale cookie
/// does not linger; Secure whenever users reach Cocoon over https.
pub fn session_cookie(
    token: &str,
    expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
    secure: bool,
) -> String {
    let max_age = (expires_at - now).num_seconds().max(0);
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE_NAME}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}{secure}")
}

/// `Set-Cookie` that removes the session cookie.
pub fn clear_cookie(secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE_NAME}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{secure}")
}

/// Signs CSRF tokens. The key is random per process: a restart only makes
/// open forms fail once with "reload the page", and there is no secret to
/// configure or leak. The SameSite=Strict cookie already stops cross-site
/// posts in current browsers; the token is the second lock for older ones.
///
/// The key is one SHA-256 block (64 bytes), so HMAC takes it as it is and
/// its construction cannot fail.
pub struct CsrfKey([u8; 64]);

impl CsrfKey {
    pub fn random() -> CsrfKey {
        CsrfKey(rand::random())
    }

    fn mac(&self, session: &Session) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new(&self.0.into());
        mac.update(session.token.as_bytes());
        mac
    }

    /// HMAC-SHA256(key, session token), hex: the hidden field of every form.
    pub fn token_for(&self, session: &Session) -> String {
        hex::encode(self.mac(session).finalize().into_bytes())
    }

    /// Constant-time check of a form's token.
    pub fn verify(&self, session: &Session, token: &str) -> bool {
        let Ok(given) = hex::decode(token) else {
            return false;
        };
        self.mac(session).verify_slice(&given).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wording::parse_time;

    #[test]
    fn cookie_lasts_as_long_as_the_session() {
        let now = parse_time("2026-12-01T10:00:00Z").unwrap();
        let ends = parse_time("2026-12-01T18:00:00Z").unwrap();
        assert_eq!(
            session_cookie("mps_abc", ends, now, false),
            "cocoon_session=mps_abc; HttpOnly; SameSite=Strict; Path=/; Max-Age=28800"
        );
        assert_eq!(
            session_cookie("mps_abc", now, ends, true),
            "cocoon_session=mps_abc; HttpOnly; SameSite=Strict; Path=/; Max-Age=0; Secure"
        );
        assert!(clear_cookie(false).contains("Max-Age=0"));
    }

    #[test]
    fn only_well_formed_session_cookies_count() {
        let found = Session::from_cookie_header("theme=dark; cocoon_session=mps_Ab-9_x; other=1");
        assert_eq!(found.map(|s| s.token), Some("mps_Ab-9_x".to_owned()));
        for bad in [
            "",
            "cocoon_session=",
            "cocoon_session=mpl_linktoken",
            "cocoon_session=mps_",
            "cocoon_session=mps_a\u{7f}b",
            "cocoon_session=mps_a b",
            "xcocoon_session=mps_abc",
        ] {
            assert!(Session::from_cookie_header(bad).is_none(), "{bad:?}");
        }
        let long = format!("cocoon_session=mps_{}", "a".repeat(600));
        assert!(Session::from_cookie_header(&long).is_none());
        assert_eq!(link_token("mpl_xyz"), Some("mpl_xyz"));
        assert_eq!(link_token("mps_xyz"), None);
        assert_eq!(link_token("mpl_x\r\nX-Evil: 1"), None);
    }

    #[test]
    fn csrf_token_belongs_to_one_session_and_one_process() {
        let key = CsrfKey::random();
        let alice = Session {
            token: "mps_alice".into(),
        };
        let bob = Session {
            token: "mps_bob".into(),
        };
        let token = key.token_for(&alice);
        assert_eq!(token.len(), 64);
        assert!(key.verify(&alice, &token));
        assert!(!key.verify(&bob, &token));
        assert!(!key.verify(&alice, "not hex"));
        assert!(!key.verify(&alice, &token[..62]));
        assert!(!CsrfKey::random().verify(&alice, &token));
    }
}
