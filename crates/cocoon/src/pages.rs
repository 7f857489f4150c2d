//! The portal's pages, rendered on the server with maud (every `(value)`
//! is HTML-escaped). Pure functions of the server's answers and the clock,
//! so they are tested without a server.

use chrono::{DateTime, SecondsFormat, Utc};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use mobius_api::portal::{
    PortalActivity, PortalBranding, PortalDevice, PortalPolicies, PortalPolicy, PortalSoftware,
};

use crate::branding::Palette;
use crate::wording;

/// The portal's sections, in navigation order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    Status,
    Policies,
    Software,
    Activity,
}

impl Section {
    const ALL: [Section; 4] = [
        Section::Status,
        Section::Policies,
        Section::Software,
        Section::Activity,
    ];

    fn href(self) -> &'static str {
        match self {
            Section::Status => "/",
            Section::Policies => "/policies",
            Section::Software => "/software",
            Section::Activity => "/activity",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Section::Status => "Status",
            Section::Policies => "Policies",
            Section::Software => "Software",
            Section::Activity => "Activity",
        }
    }
}

/// What every page around the content needs.
pub struct Chrome<'a> {
    /// None on pages shown without a session (expired, errors).
    pub branding: Option<&'a PortalBranding>,
    /// The highlighted section; none hides the navigation.
    pub current: Option<Section>,
    /// The CSP nonce of the one inline `<style>` (the accent colour).
    pub nonce: &'a str,
}

const PORTAL_NAME: &str = "Device portal";

pub fn layout(chrome: &Chrome, title: &str, body: Markup) -> Markup {
    let brand_name = chrome
        .branding
        .map(|b| b.name.trim())
        .filter(|name| !name.is_empty());
    let has_logo = chrome.branding.is_some_and(|b| b.has_logo);
    let palette = Palette::for_accent(chrome.branding.and_then(|b| b.accent_color.as_deref()));
    let support = chrome
        .branding
        .and_then(|b| b.support_contact.as_deref())
        .map(str::trim)
        .filter(|s| !s.is_empty());
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · " (brand_name.unwrap_or(PORTAL_NAME)) }
                link rel="stylesheet" href="/static/cocoon.css";
                // The palette is built from a validated #rrggbb only.
                style nonce=(chrome.nonce) { (PreEscaped(palette.css())) }
                script src="/static/cocoon.js" defer {}
            }
            body {
                a class="skip-link" href="#main" { "Skip to main content" }
                header class="site-header" {
                    div class="brand" {
                        @if let (true, Some(name)) = (has_logo, brand_name) {
                            img class="logo" src="/logo" alt=(name) height="40";
                            span class="brand-name" aria-hidden="true" { (name) }
                        } @else {
                            span class="brand-name" { (brand_name.unwrap_or(PORTAL_NAME)) }
                        }
                    }
                    @if brand_name.is_some() {
                        span class="portal-name" { (PORTAL_NAME) }
                    }
                }
                @if let Some(current) = chrome.current {
                    nav class="site-nav" aria-label="Portal sections" {
                        ul {
                            @for section in Section::ALL {
                                li {
                                    @if section == current {
                                        a href=(section.href()) aria-current="page" { (section.title()) }
                                    } @else {
                                        a href=(section.href()) { (section.title()) }
                                    }
                                }
                            }
                        }
                    }
                }
                main id="main" tabindex="-1" { (body) }
                footer class="site-footer" {
                    @if let Some(support) = support {
                        p { "Need help? Contact " (support) "." }
                    } @else {
                        p { "Need help? Contact your IT team." }
                    }
                }
            }
        }
    }
}

/// A time as "2 minutes ago" with the exact time machine-readable and on
/// hover; the raw text when the server sent something unparsable.
fn time(raw: &str, now: DateTime<Utc>) -> Markup {
    match wording::parse_time(raw) {
        Some(t) => html! {
            time datetime=(t.to_rfc3339_opts(SecondsFormat::Secs, true)) title=(wording::exact(t)) { (wording::relative(t, now)) }
        },
        None => html! { (raw) },
    }
}

pub fn failing_count(policies: &PortalPolicies) -> usize {
    policies
        .policies
        .iter()
        .filter(|p| p.passing == Some(false))
        .count()
}

fn failing_summary(count: usize) -> String {
    match count {
        0 => "No failing policies".to_owned(),
        1 => "1 failing policy".to_owned(),
        n => format!("{n} failing policies"),
    }
}

pub fn status(device: &PortalDevice, failing: usize, now: DateTime<Utc>) -> Markup {
    let os = [device.os_name.as_deref(), device.os_version.as_deref()]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
    html! {
        p class="eyebrow" { "This device" }
        h1 { (device.hostname) }
        dl class="facts" {
            div {
                dt { "Connection" }
                dd {
                    @if device.online {
                        span class="badge ok" { span aria-hidden="true" { "● " } span { "Online" } }
                    } @else {
                        span class="badge off" { span aria-hidden="true" { "○ " } span { "Offline" } }
                    }
                }
            }
            div {
                dt { "Last seen" }
                dd {
                    @match &device.last_seen_at {
                        Some(at) => {
                            (time(at, now))
                            @if let Some(t) = wording::parse_time(at) {
                                " " span class="exact" { "(" (wording::exact(t)) ")" }
                            }
                        }
                        None => "Never",
                    }
                }
            }
            div {
                dt { "Operating system" }
                dd { @if os.is_empty() { "Unknown" } @else { (os) } }
            }
            div {
                dt { "Agent version" }
                dd { (device.agent_version.as_deref().unwrap_or("Unknown")) }
            }
        }
        p class={ "summary " @if failing > 0 { "attention" } } {
            a href="/policies" { (failing_summary(failing)) }
            @if failing == 1 { " — see how to fix it." }
            @if failing > 1 { " — see how to fix them." }
        }
        h2 { "Disks" }
        @if device.disks.is_empty() {
            p { "The device has not reported its disks yet." }
        } @else {
            ul class="disks" {
                @for disk in &device.disks {
                    @let used = disk.total_bytes.saturating_sub(disk.available_bytes);
                    @let percent = wording::percent(used, disk.total_bytes);
                    li {
                        span class="mount" { (disk.mount_point) }
                        meter min="0" max=(disk.total_bytes) value=(used)
                            low=(disk.total_bytes / 100 * 80) high=(disk.total_bytes / 100 * 90)
                            optimum="0"
                            aria-label={ "Space used on " (disk.mount_point) } {
                            (percent) "%"
                        }
                        span class="usage" {
                            (wording::bytes(used)) " of " (wording::bytes(disk.total_bytes)) " used (" (percent) "%)"
                        }
                    }
                }
            }
        }
        p class="fine-print" {
            "This portal session ends "
            (time(&device.session_expires_at, now))
            @if let Some(t) = wording::parse_time(&device.session_expires_at) {
                " (" (wording::exact(t)) ")"
            }
            ". After that, open a new link from your device."
        }
    }
}

fn policy_status(policy: &PortalPolicy) -> (&'static str, &'static str, &'static str) {
    match policy.passing {
        Some(false) => ("Failing", "bad", "✗ "),
        Some(true) => ("Passing", "ok", "✓ "),
        None => ("Not checked yet", "off", "? "),
    }
}

pub fn policies(list: &PortalPolicies, now: DateTime<Utc>) -> Markup {
    // The server already sorts; sorting again (stable) keeps "failing
    // first" true here whatever a future server does.
    let mut sorted: Vec<&PortalPolicy> = list.policies.iter().collect();
    sorted.sort_by_key(|p| match p.passing {
        Some(false) => 0,
        None => 1,
        Some(true) => 2,
    });
    let failing = failing_count(list);
    html! {
        h1 { "Policies" }
        @if sorted.is_empty() {
            p { "No policies apply to this device." }
        } @else {
            p class={ "summary " @if failing > 0 { "attention" } } {
                (failing_summary(failing)) " of " (sorted.len()) "."
                @if failing > 0 { " Each failing policy says how to fix it." }
            }
            ul class="cards policies" {
                @for policy in sorted {
                    @let (label, class, icon) = policy_status(policy);
                    li class="card policy" data-status=(label) {
                        h2 { (policy.name) }
                        p class="policy-status" {
                            span class={ "badge " (class) } { span aria-hidden="true" { (icon) } span { (label) } }
                            @if let Some(at) = &policy.checked_at {
                                " " span class="checked" { "checked " (time(at, now)) }
                            }
                        }
                        @if !policy.description.trim().is_empty() {
                            p class="description" { (policy.description) }
                        }
                        @if policy.passing != Some(true) && !policy.resolution.trim().is_empty() {
                            h3 { "How to fix" }
                            p class="resolution" { (policy.resolution) }
                        }
                    }
                }
            }
        }
    }
}

/// One software row; the live script replaces the same parts from the
/// `software` event, so the two must keep these class names.
pub fn software_row(item: &PortalSoftware, csrf: &str) -> Markup {
    let status = item.install.as_ref().map(|i| i.status);
    let failed = matches!(status, Some(mobius_api::software::InstallStatus::Failed));
    let progress = wording::progress(item.install.as_ref());
    // The live script ignores answers older than this (milliseconds, as
    // JavaScript's Date.parse gives them).
    let updated_ms = item
        .install
        .as_ref()
        .and_then(|i| wording::parse_time(&i.updated_at))
        .map_or(0, |t| t.timestamp_millis());
    html! {
        li class="card title" id={ "sw-" (item.version_id) } data-version-id=(item.version_id)
            data-updated=(updated_ms) {
            h2 { (item.name) }
            p class="meta" { "Version " (item.version) " · " (wording::bytes(item.size_bytes)) }
            p class="status-line" {
                span class="status-caption" { "Status: " }
                span class={ "status-text" @if failed { " failed" } }
                    data-status=(status.map(|s| s.as_str()).unwrap_or("NONE")) {
                    (wording::status_text(item.install.as_ref()))
                }
            }
            div class="progress-slot" {
                @if let Some(p) = progress {
                    @if let (Some(value), Some(max)) = (p.value, p.max) {
                        progress value=(value) max=(max) aria-label={ (item.name) " progress" } {
                            (wording::percent(value, max)) "%"
                        }
                    } @else {
                        progress aria-label={ (item.name) " progress" } { "Working" }
                    }
                }
            }
            div class="actions" {
                @for action in &item.actions {
                    @if let Some(label) = wording::action_label(action, &item.name) {
                        form method="post" action={ "/software/" (item.version_id) "/" (action) } {
                            input type="hidden" name="csrf" value=(csrf);
                            button type="submit" class={ "button " (action) } { (label) }
                        }
                    }
                }
            }
        }
    }
}

pub fn software(list: &[PortalSoftware], csrf: &str, notice: Option<&str>) -> Markup {
    html! {
        h1 { "Software" }
        p { "Apps your IT team offers for this device." }
        p class="refresh" {
            a href="/software" { "Refresh" } " to see the latest status."
        }
        div id="notice" class="notice" role="status" hidden[notice.is_none()] {
            @if let Some(notice) = notice { (notice) }
        }
        div id="live" class="visually-hidden" aria-live="polite" {}
        @if list.is_empty() {
            p { "No software is offered to this device yet." }
        } @else {
            ul id="software" class="cards software" data-csrf=(csrf) {
                @for item in list { (software_row(item, csrf)) }
            }
        }
    }
}

pub fn activity(activity: &PortalActivity, now: DateTime<Utc>) -> Markup {
    html! {
        h1 { "Activity" }
        @if activity.events.is_empty() {
            p { "Nothing has happened on this device yet." }
        } @else {
            ol class="activity" {
                @for event in &activity.events {
                    li {
                        span class="when" { (time(&event.at, now)) }
                        " "
                        span class="what" { (event.summary) }
                    }
                }
            }
        }
    }
}

pub fn expired() -> Markup {
    html! {
        h1 { "This portal link has expired" }
        p {
            "Links to this portal last a short time. To open it again, run "
            code { "mobius-agent portal" }
            " on your device, then open the new link it prints."
        }
        p { "If that does not work, contact your IT team." }
    }
}

pub fn unreachable() -> Markup {
    html! {
        h1 { "The portal is not available right now" }
        p { "The portal cannot reach the Mobius server right now; try again in a minute." }
        p { a href="/" { "Try again" } }
    }
}

pub fn forbidden() -> Markup {
    html! {
        h1 { "That form was out of date" }
        p { "Nothing was changed. Open the page again and repeat what you were doing." }
        p { a href="/software" { "Back to Software" } }
    }
}

pub fn not_found() -> Markup {
    html! {
        h1 { "Page not found" }
        p { "There is no such page in this portal." }
        p { a href="/" { "Go to the device status" } }
    }
}

#[cfg(test)]
mod tests {
    use mobius_api::portal::{PortalDisk, PortalEvent, PortalInstall};
    use mobius_api::software::InstallStatus;
    use uuid::Uuid;

    use super::*;

    fn now() -> DateTime<Utc> {
        wording::parse_time("2026-12-01T12:00:00Z").unwrap()
    }

    fn chrome<'a>(branding: Option<&'a PortalBranding>) -> Chrome<'a> {
        Chrome {
            branding,
            current: Some(Section::Software),
            nonce: "n0nce",
        }
    }

    #[test]
    fn server_text_is_escaped_everywhere() {
        let evil = "<script>alert(1)</script>";
        let branding = PortalBranding {
            name: evil.into(),
            accent_color: Some("red;}</style><script>".into()),
            has_logo: true,
            support_contact: Some(evil.into()),
        };
        let item = PortalSoftware {
            version_id: Uuid::nil(),
            name: evil.into(),
            version: evil.into(),
            installer_kind: "pkg".into(),
            size_bytes: 1,
            install: Some(PortalInstall {
                action: "install".into(),
                status: InstallStatus::Failed,
                bytes_downloaded: 0,
                bytes_total: 0,
                reason: Some(evil.into()),
                updated_at: "2026-12-01T11:00:00Z".into(),
            }),
            actions: vec!["retry".into()],
        };
        let html = layout(
            &chrome(Some(&branding)),
            evil,
            software(&[item], "tok", Some(evil)),
        )
        .into_string();
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(!html.contains("red;}"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("Failed: &lt;script&gt;"));
        assert!(html.contains("Retry &lt;script&gt;"));
        assert!(html.contains(
            r#"<img class="logo" src="/logo" alt="&lt;script&gt;alert(1)&lt;/script&gt;""#
        ));
    }

    #[test]
    fn layout_has_landmarks_and_marks_the_current_section() {
        let html = layout(&chrome(None), "Software", html! { "x" }).into_string();
        assert!(html.starts_with("<!DOCTYPE html><html lang=\"en\">"));
        for needle in [
            r#"<meta name="viewport""#,
            r##"<a class="skip-link" href="#main">"##,
            "<header",
            r#"<nav class="site-nav" aria-label="Portal sections">"#,
            r#"<a href="/software" aria-current="page">Software</a>"#,
            r#"<a href="/policies">Policies</a>"#,
            r#"<main id="main" tabindex="-1">"#,
            "<footer",
            r#"<style nonce="n0nce">:root{--accent:#1f4e79;--on-accent:#ffffff;}</style>"#,
        ] {
            assert!(html.contains(needle), "missing {needle} in {html}");
        }
        // The skip link comes before anything else focusable.
        let skip = html.find("skip-link").unwrap();
        assert!(html.find("<a ").unwrap() >= skip - 10);
    }

    #[test]
    fn status_page_says_online_and_counts_failing_policies() {
        let device = PortalDevice {
            id: Uuid::nil(),
            hostname: "alice-mbp".into(),
            online: false,
            last_seen_at: Some("2026-12-01T11:58:00Z".into()),
            os_name: Some("macOS".into()),
            os_version: Some("15.1".into()),
            agent_version: Some("0.1.0".into()),
            disks: vec![PortalDisk {
                mount_point: "/".into(),
                total_bytes: 256_000_000_000,
                available_bytes: 200_000_000_000,
            }],
            session_expires_at: "2026-12-01T19:00:00Z".into(),
            branding: PortalBranding::default(),
        };
        let html = status(&device, 2, now()).into_string();
        assert!(html.contains("<h1>alice-mbp</h1>"));
        assert!(html.contains("Offline"));
        assert!(html.contains(r#"<time datetime="2026-12-01T11:58:00Z" title="2026-12-01 11:58 UTC">2 minutes ago</time>"#), "{html}");
        assert!(html.contains("macOS 15.1"));
        assert!(html.contains(r#"<a href="/policies">2 failing policies</a>"#));
        assert!(html.contains("56.0 GB of 256 GB used (21%)"));
        assert!(html.contains("in 7 hours"));
    }

    #[test]
    fn failing_policies_come_first_with_how_to_fix() {
        let policy = |name: &str, passing| PortalPolicy {
            id: Uuid::new_v4(),
            name: name.into(),
            description: format!("{name} description"),
            resolution: format!("{name} fix"),
            passing,
            checked_at: None,
        };
        let list = PortalPolicies {
            policies: vec![
                policy("Passing one", Some(true)),
                policy("Unknown one", None),
                policy("Failing one", Some(false)),
            ],
        };
        let html = policies(&list, now()).into_string();
        let at = |s: &str| html.find(s).unwrap();
        assert!(at("Failing one") < at("Unknown one") && at("Unknown one") < at("Passing one"));
        assert!(html.contains("Failing one fix"));
        assert!(html.contains("Not checked yet"));
        assert!(!html.contains("Passing one fix"));
        assert!(html.contains("1 failing policy of 3."));
    }

    #[test]
    fn software_row_has_progress_buttons_as_forms_and_its_timestamp() {
        let item = PortalSoftware {
            version_id: Uuid::from_u128(7),
            name: "Firefox".into(),
            version: "128.0".into(),
            installer_kind: "pkg".into(),
            size_bytes: 2_600_000,
            install: Some(PortalInstall {
                action: "install".into(),
                status: InstallStatus::Downloading,
                bytes_downloaded: 1_170_000,
                bytes_total: 2_600_000,
                reason: None,
                updated_at: "2026-12-01T10:00:00Z".into(),
            }),
            actions: vec!["uninstall".into(), "explode".into()],
        };
        let html = software_row(&item, "c5rf").into_string();
        let id = "00000000-0000-0000-0000-000000000007";
        assert!(html.contains(&format!(r#"id="sw-{id}""#)));
        assert!(html.contains(r#"data-updated="1796119200000""#), "{html}");
        assert!(
            html.contains(r#"data-status="DOWNLOADING">Downloading 45% (1.2 MB of 2.6 MB)</span>"#)
        );
        assert!(html.contains(r#"<progress value="1170000" max="2600000" aria-label="Firefox progress">45%</progress>"#));
        assert!(html.contains(&format!(r#"<form method="post" action="/software/{id}/uninstall"><input type="hidden" name="csrf" value="c5rf"><button type="submit" class="button uninstall">Uninstall Firefox</button></form>"#)), "{html}");
        // An action this portal does not know is not offered.
        assert!(!html.contains("explode"));
    }

    #[test]
    fn activity_lists_events() {
        let html = activity(
            &PortalActivity {
                events: vec![PortalEvent {
                    at: "2026-12-01T09:00:00Z".into(),
                    action: "software.install_status".into(),
                    summary: "Firefox 128.0: Installed".into(),
                }],
            },
            now(),
        )
        .into_string();
        assert!(html.contains("3 hours ago"));
        assert!(html.contains("Firefox 128.0: Installed"));
    }

    #[test]
    fn expired_page_says_what_to_do() {
        let html = expired().into_string();
        assert!(html.contains("This portal link has expired"));
        assert!(html.contains("<code>mobius-agent portal</code>"));
        assert!(html.contains("contact your IT team"));
    }
}
