//! The self-service portal's server side: the device endpoint that hands
//! an agent its hourly link token, and the device-scoped REST surface
//! `mobius-cocoon` reads (`/api/v1/mobius/portal/*`, see
//! `mobius_api::portal`). Cocoon holds no admin rights: every request here
//! is authenticated by a portal token and reaches one device.

pub mod device;
pub mod rest;

use crate::settings::Settings;

/// The portal settings both listeners need.
#[derive(Clone, Debug)]
pub struct PortalServices {
    /// Cocoon's public base URL, without a trailing slash; none: no portal.
    pub portal_url: Option<String>,
    /// The agent rotates its link on this period.
    pub link_ttl: chrono::Duration,
    /// How long a link outlives its rotation.
    pub link_overlap: chrono::Duration,
    pub session_ttl: chrono::Duration,
}

fn seconds(value: u64) -> chrono::Duration {
    chrono::Duration::seconds(i64::try_from(value).unwrap_or(i64::MAX / 1000))
}

impl PortalServices {
    pub fn from_settings(settings: &Settings) -> PortalServices {
        PortalServices {
            portal_url: settings
                .portal_url
                .as_deref()
                .map(|u| u.trim().trim_end_matches('/').to_owned())
                .filter(|u| !u.is_empty()),
            link_ttl: seconds(settings.portal_link_ttl_secs),
            link_overlap: seconds(settings.portal_link_overlap_secs),
            session_ttl: seconds(settings.portal_session_ttl_secs),
        }
    }
}
