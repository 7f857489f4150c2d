//! Cocoon's HTTP surface: the pages, the self-service actions, the live
//! event stream, and the headers every response carries.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path, Query, State};
use axum::http::header::{
    ACCEPT, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, LOCATION, REFERRER_POLICY,
    SET_COOKIE, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware;
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use maud::Markup;
use mobius_api::portal::{PortalBranding, START_PATH};
use serde::Deserialize;
use uuid::Uuid;

use crate::live::{self, LiveItem};
use crate::pages::{self, Chrome, Section};
use crate::portal::{PortalClient, PortalError, SoftwareAction, error_chain};
use crate::session::{self, CsrfKey, NoSession, Session};
use crate::wording;

/// Everything but pages: nothing loads from elsewhere, nothing inline, no
/// framing, forms post only back here.
const CSP: &str = "default-src 'none'; img-src 'self'; style-src 'self'; script-src 'self'; \
connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const CSS: &str = include_str!("../static/cocoon.css");
const JS: &str = include_str!("../static/cocoon.js");

/// What the handlers share.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    portal: PortalClient,
    csrf: CsrfKey,
    /// Cookies get `Secure` when users reach Cocoon over https.
    secure_cookies: bool,
    poll: Duration,
}

impl AppState {
    pub fn new(portal: PortalClient, secure_cookies: bool, poll: Duration) -> AppState {
        AppState(Arc::new(Inner {
            portal,
            csrf: CsrfKey::random(),
            secure_cookies,
            poll,
        }))
    }

    /// A full HTML page with its own CSP nonce for the accent colour.
    fn page(
        &self,
        status: StatusCode,
        section: Option<Section>,
        branding: Option<&PortalBranding>,
        title: &str,
        body: Markup,
    ) -> Response {
        let nonce = hex::encode(rand::random::<[u8; 16]>());
        let chrome = Chrome {
            branding,
            current: section,
            nonce: &nonce,
        };
        let html = pages::layout(&chrome, title, body).into_string();
        let csp = CSP.replace(
            "style-src 'self'",
            &format!("style-src 'self' 'nonce-{nonce}'"),
        );
        (
            status,
            [
                (CONTENT_TYPE, "text/html; charset=utf-8".to_owned()),
                (CONTENT_SECURITY_POLICY, csp),
                (CACHE_CONTROL, "no-store".to_owned()),
            ],
            html,
        )
            .into_response()
    }

    /// The "link expired" page; also drops the cookie so the browser stops
    /// sending a token the server no longer honours.
    fn expired(&self) -> Response {
        let mut response = self.page(
            StatusCode::UNAUTHORIZED,
            None,
            None,
            "Link expired",
            pages::expired(),
        );
        if let Ok(value) = HeaderValue::from_str(&session::clear_cookie(self.0.secure_cookies)) {
            response.headers_mut().append(SET_COOKIE, value);
        }
        response
    }

    fn unreachable(&self) -> Response {
        self.page(
            StatusCode::BAD_GATEWAY,
            None,
            None,
            "Not available",
            pages::unreachable(),
        )
    }

    /// What a page shows when the server said no. The user never sees why
    /// beyond "expired" or "try again"; the cause goes to the log.
    fn fail(&self, error: PortalError) -> Response {
        match error {
            PortalError::Unauthorized => self.expired(),
            PortalError::NotFound
            | PortalError::Conflict
            | PortalError::Unreachable(_)
            | PortalError::Unexpected { .. } => {
                tracing::warn!(error = error_chain(&error), "portal API call failed");
                self.unreachable()
            }
        }
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(status))
        .route(START_PATH, get(start))
        .route("/policies", get(policies))
        .route("/software", get(software))
        .route("/software/events", get(software_events))
        .route("/software/{version_id}/{action}", post(software_action))
        .route("/activity", get(activity))
        .route("/logo", get(logo))
        .route("/static/cocoon.css", get(css))
        .route("/static/cocoon.js", get(js))
        .route("/healthz", get(|| async { "ok" }))
        // Browsers ask for it on every first visit; an empty answer keeps
        // a 404 out of their consoles (the header shows the tenant's logo).
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .fallback(not_found)
        .layer(middleware::map_response(security_headers))
        .with_state(state)
}

/// On every response. Pages set their own CSP (with a nonce) and cache
/// policy; everything else gets the strict defaults.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers
        .entry(CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(CSP));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // Tokens travel in URLs (/start?token=); never pass a URL on.
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers
        .entry(CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

#[derive(Deserialize)]
struct StartQuery {
    token: Option<String>,
}

/// Opens a session from the link the agent printed, then redirects so the
/// link token leaves the address bar and the history.
async fn start(State(app): State<AppState>, Query(query): Query<StartQuery>) -> Response {
    let Some(token) = query.token.as_deref().and_then(session::link_token) else {
        return app.expired();
    };
    let opened = match app.0.portal.open_session(token).await {
        Ok(opened) => opened,
        Err(error) => return app.fail(error),
    };
    let now = Utc::now();
    let expires_at = wording::parse_time(&opened.expires_at).unwrap_or_else(|| {
        tracing::warn!(expires_at = %opened.expires_at, "session expiry unreadable; assuming 1 hour");
        now + chrono::Duration::hours(1)
    });
    let cookie = session::session_cookie(&opened.token, expires_at, now, app.0.secure_cookies);
    let Ok(cookie) = HeaderValue::from_str(&cookie) else {
        tracing::warn!("the server's session token cannot go in a cookie");
        return app.unreachable();
    };
    let mut response = StatusCode::SEE_OTHER.into_response();
    let headers = response.headers_mut();
    headers.insert(LOCATION, HeaderValue::from_static("/"));
    headers.insert(SET_COOKIE, cookie);
    response
}

async fn status(State(app): State<AppState>, session: Result<Session, NoSession>) -> Response {
    let Ok(session) = session else {
        return app.expired();
    };
    let portal = &app.0.portal;
    match tokio::try_join!(
        portal.device(session.token()),
        portal.policies(session.token())
    ) {
        Ok((device, policies)) => {
            let body = pages::status(&device, pages::failing_count(&policies), Utc::now());
            app.page(
                StatusCode::OK,
                Some(Section::Status),
                Some(&device.branding),
                "Status",
                body,
            )
        }
        Err(error) => app.fail(error),
    }
}

async fn policies(State(app): State<AppState>, session: Result<Session, NoSession>) -> Response {
    let Ok(session) = session else {
        return app.expired();
    };
    let portal = &app.0.portal;
    match tokio::try_join!(
        portal.device(session.token()),
        portal.policies(session.token())
    ) {
        Ok((device, policies)) => app.page(
            StatusCode::OK,
            Some(Section::Policies),
            Some(&device.branding),
            "Policies",
            pages::policies(&policies, Utc::now()),
        ),
        Err(error) => app.fail(error),
    }
}

#[derive(Deserialize)]
struct SoftwareQuery {
    notice: Option<String>,
}

/// The messages `?notice=` may show. Only these fixed codes are accepted,
/// so a crafted link cannot put its own words on the page.
fn notice_text(code: &str) -> Option<&'static str> {
    match code {
        "requested" => Some("Your request was sent to the device. Its progress shows below."),
        "not-found" => {
            Some("That software is no longer offered to this device. The list below is up to date.")
        }
        "conflict" => Some(
            "That cannot be done right now: the software is busy or has changed state. \
             The list below shows where it stands.",
        ),
        _ => None,
    }
}

async fn software(
    State(app): State<AppState>,
    session: Result<Session, NoSession>,
    Query(query): Query<SoftwareQuery>,
) -> Response {
    let Ok(session) = session else {
        return app.expired();
    };
    let portal = &app.0.portal;
    match tokio::try_join!(
        portal.device(session.token()),
        portal.software(session.token())
    ) {
        Ok((device, list)) => {
            let csrf = app.0.csrf.token_for(&session);
            let notice = query.notice.as_deref().and_then(notice_text);
            app.page(
                StatusCode::OK,
                Some(Section::Software),
                Some(&device.branding),
                "Software",
                pages::software(&list.software, &csrf, notice),
            )
        }
        Err(error) => app.fail(error),
    }
}

#[derive(Deserialize)]
struct ActionForm {
    csrf: String,
}

fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/json"))
}

fn json_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(serde_json::json!({ "message": message })),
    )
        .into_response()
}

fn back_to_software(notice: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/software?notice={notice}")) {
        response.headers_mut().insert(LOCATION, location);
    }
    response
}

/// Install, retry or uninstall: a plain form post (303 back to the list)
/// or, from the page script, the same post answered with the item as JSON.
async fn software_action(
    State(app): State<AppState>,
    session: Result<Session, NoSession>,
    Path((version_id, action)): Path<(String, String)>,
    headers: HeaderMap,
    form: Result<Form<ActionForm>, FormRejection>,
) -> Response {
    let json = wants_json(&headers);
    let Ok(session) = session else {
        return if json {
            json_error(StatusCode::UNAUTHORIZED, "This portal link has expired.")
        } else {
            app.expired()
        };
    };
    let csrf_ok = form
        .as_ref()
        .is_ok_and(|Form(form)| app.0.csrf.verify(&session, &form.csrf));
    if !csrf_ok {
        return if json {
            json_error(
                StatusCode::FORBIDDEN,
                "That form was out of date, so nothing was changed. Reload the page and try again.",
            )
        } else {
            app.page(
                StatusCode::FORBIDDEN,
                None,
                None,
                "Form out of date",
                pages::forbidden(),
            )
        };
    }
    let (Ok(version_id), Some(action)) =
        (version_id.parse::<Uuid>(), SoftwareAction::parse(&action))
    else {
        return if json {
            json_error(
                StatusCode::NOT_FOUND,
                notice_text("not-found").unwrap_or_default(),
            )
        } else {
            back_to_software("not-found")
        };
    };
    let result = app
        .0
        .portal
        .software_action(session.token(), version_id, action)
        .await;
    match result {
        Ok(item) if json => axum::Json(LiveItem::new(&item)).into_response(),
        Ok(_) => back_to_software("requested"),
        Err(PortalError::NotFound) if json => json_error(
            StatusCode::NOT_FOUND,
            notice_text("not-found").unwrap_or_default(),
        ),
        Err(PortalError::NotFound) => back_to_software("not-found"),
        Err(PortalError::Conflict) if json => json_error(
            StatusCode::CONFLICT,
            notice_text("conflict").unwrap_or_default(),
        ),
        Err(PortalError::Conflict) => back_to_software("conflict"),
        Err(PortalError::Unauthorized) if json => {
            json_error(StatusCode::UNAUTHORIZED, "This portal link has expired.")
        }
        Err(error @ (PortalError::Unreachable(_) | PortalError::Unexpected { .. })) if json => {
            tracing::warn!(error = error_chain(&error), "software action failed");
            json_error(
                StatusCode::BAD_GATEWAY,
                "The portal cannot reach the Mobius server right now; try again in a minute.",
            )
        }
        Err(error) => app.fail(error),
    }
}

async fn software_events(
    State(app): State<AppState>,
    session: Result<Session, NoSession>,
) -> Response {
    let Ok(session) = session else {
        return app.expired();
    };
    let stream =
        live::software_events(app.0.portal.clone(), session.token().to_owned(), app.0.poll);
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response();
    // Reverse proxies (nginx) would otherwise hold events back in a buffer.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

async fn activity(State(app): State<AppState>, session: Result<Session, NoSession>) -> Response {
    let Ok(session) = session else {
        return app.expired();
    };
    let portal = &app.0.portal;
    match tokio::try_join!(
        portal.device(session.token()),
        portal.activity(session.token())
    ) {
        Ok((device, activity)) => app.page(
            StatusCode::OK,
            Some(Section::Activity),
            Some(&device.branding),
            "Activity",
            pages::activity(&activity, Utc::now()),
        ),
        Err(error) => app.fail(error),
    }
}

/// The tenant's logo, cached by the browser for a few minutes (it changes
/// rarely; the page asks for it on every view).
async fn logo(State(app): State<AppState>, session: Result<Session, NoSession>) -> Response {
    let Ok(session) = session else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match app.0.portal.logo(session.token()).await {
        Ok(logo) => (
            [
                (CONTENT_TYPE, logo.content_type),
                (CACHE_CONTROL, "private, max-age=300".to_owned()),
                // An SVG opened on its own runs no script and loads nothing.
                (
                    CONTENT_SECURITY_POLICY,
                    "default-src 'none'; style-src 'unsafe-inline'; sandbox".to_owned(),
                ),
            ],
            logo.bytes,
        )
            .into_response(),
        Err(PortalError::NotFound | PortalError::Unauthorized) => {
            StatusCode::NOT_FOUND.into_response()
        }
        Err(
            error @ (PortalError::Conflict
            | PortalError::Unreachable(_)
            | PortalError::Unexpected { .. }),
        ) => {
            tracing::warn!(error = error_chain(&error), "logo fetch failed");
            StatusCode::BAD_GATEWAY.into_response()
        }
    }
}

async fn css() -> Response {
    (
        [
            (CONTENT_TYPE, "text/css; charset=utf-8"),
            (CACHE_CONTROL, "public, max-age=300"),
        ],
        CSS,
    )
        .into_response()
}

async fn js() -> Response {
    (
        [
            (CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (CACHE_CONTROL, "public, max-age=300"),
        ],
        JS,
    )
        .into_response()
}

async fn not_found(State(app): State<AppState>) -> Response {
    app.page(
        StatusCode::NOT_FOUND,
        None,
        None,
        "Not found",
        pages::not_found(),
    )
}
