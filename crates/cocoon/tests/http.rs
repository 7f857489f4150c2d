//! Cocoon's HTTP behaviour that needs no Mobius server: what a browser
//! gets with no session, a bad form, or a server that cannot be reached.
//! (The full flow against the real server, agent and Chromium is the
//! workspace's end-to-end test, driving tests/peers/cocoon_browser.mjs.)

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use mobius_cocoon::portal::PortalClient;
use mobius_cocoon::{AppState, router};
use tower::ServiceExt;

/// A server URL nothing listens on: a port the OS gave us, then closed.
fn unreachable_server() -> url::Url {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    url::Url::parse(&format!("http://127.0.0.1:{port}")).unwrap()
}

fn app(secure: bool) -> axum::Router {
    let portal = PortalClient::new(&unreachable_server(), None).unwrap();
    router(AppState::new(portal, secure, Duration::from_millis(200)))
}

async fn call(request: Request<Body>) -> (Response<Body>, String) {
    let response = app(false).oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (
        Response::from_parts(parts, Body::empty()),
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

fn header(response: &Response<Body>, name: header::HeaderName) -> &str {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

#[tokio::test]
async fn every_response_carries_the_security_headers() {
    for path in [
        "/healthz",
        "/static/cocoon.css",
        "/static/cocoon.js",
        "/",
        "/nowhere",
    ] {
        let (response, _) = call(get(path)).await;
        assert_eq!(
            header(&response, header::X_CONTENT_TYPE_OPTIONS),
            "nosniff",
            "{path}"
        );
        assert_eq!(
            header(&response, header::REFERRER_POLICY),
            "no-referrer",
            "{path}"
        );
        let csp = header(&response, header::CONTENT_SECURITY_POLICY);
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "frame-ancestors 'none'",
            "form-action 'self'",
            "base-uri 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
    }
    let (health, body) = call(get("/healthz")).await;
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(body, "ok");
    let (css, _) = call(get("/static/cocoon.css")).await;
    assert!(header(&css, header::CONTENT_TYPE).starts_with("text/css"));
    let (js, _) = call(get("/static/cocoon.js")).await;
    assert!(header(&js, header::CONTENT_TYPE).starts_with("text/javascript"));
}

#[tokio::test]
async fn without_a_session_every_page_says_the_link_expired_and_what_to_do() {
    for request in [
        get("/"),
        get("/policies"),
        get("/software"),
        get("/activity"),
        get("/software/events"),
        get("/start"),
        get("/start?token=not-a-link-token"),
        Request::get("/")
            .header(header::COOKIE, "cocoon_session=garbled value")
            .body(Body::empty())
            .unwrap(),
    ] {
        let uri = request.uri().clone();
        let (response, body) = call(request).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{uri}");
        assert!(body.contains("This portal link has expired"), "{uri}");
        assert!(body.contains("<code>mobius-agent portal</code>"), "{uri}");
        let cookie = header(&response, header::SET_COOKIE);
        assert!(
            cookie.starts_with("cocoon_session=;") && cookie.contains("Max-Age=0"),
            "{uri}: {cookie}"
        );
        assert_eq!(header(&response, header::CACHE_CONTROL), "no-store");
        // The page's one inline style is allowed by its nonce, nothing else.
        let csp = header(&response, header::CONTENT_SECURITY_POLICY);
        let nonce = csp
            .split("'nonce-")
            .nth(1)
            .and_then(|s| s.split('\'').next())
            .unwrap();
        assert!(
            body.contains(&format!("<style nonce=\"{nonce}\">")),
            "{uri}"
        );
    }
}

#[tokio::test]
async fn a_form_without_the_right_csrf_token_changes_nothing() {
    let id = "00000000-0000-0000-0000-000000000001";
    for body in [
        "",
        "csrf=",
        "csrf=deadbeef",
        &format!("csrf={}", "0".repeat(64)),
    ] {
        let request = Request::post(format!("/software/{id}/install"))
            .header(header::COOKIE, "cocoon_session=mps_abc")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(body.to_owned()))
            .unwrap();
        // The server is unreachable: a 403 (not a 502) shows the check
        // ran before any call to it.
        let (response, page) = call(request).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{body:?}");
        assert!(page.contains("That form was out of date"));
    }
}

#[tokio::test]
async fn an_unreachable_server_gets_a_polite_502_without_internals() {
    for request in [
        get("/start?token=mpl_abc"),
        Request::get("/")
            .header(header::COOKIE, "cocoon_session=mps_abc")
            .body(Body::empty())
            .unwrap(),
    ] {
        let (response, body) = call(request).await;
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        assert!(body.contains(
            "The portal cannot reach the Mobius server right now; try again in a minute."
        ));
        assert!(
            !body.contains("127.0.0.1") && !body.contains("error"),
            "{body}"
        );
        assert!(header(&response, header::SET_COOKIE).is_empty());
    }
}

#[tokio::test]
async fn secure_public_url_makes_the_cleared_cookie_secure() {
    let response = app(true).oneshot(get("/")).await.unwrap();
    assert!(header(&response, header::SET_COOKIE).ends_with("; Secure"));
}
