//! Live install progress: Cocoon polls the server for the device's
//! software and pushes what changed to the browser as Server-Sent Events.
//! Polling (every `--poll-ms`) costs one small GET per open software page
//! per interval; it stops when the page closes (the stream is dropped).

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::Event;
use futures_util::{Stream, StreamExt};
use mobius_api::portal::PortalSoftware;
use serde::Serialize;
use uuid::Uuid;

use crate::portal::{PortalClient, PortalError};
use crate::wording::{self, Progress};

/// A software item as the live script gets it: the server's item plus the
/// words and bar the page shows, so the script says exactly what the
/// server-rendered row says.
#[derive(Debug, Serialize)]
pub struct LiveItem<'a> {
    #[serde(flatten)]
    pub item: &'a PortalSoftware,
    pub display: Display,
}

#[derive(Debug, Serialize)]
pub struct Display {
    /// `INSTALLED`, … or `NONE` when never installed.
    pub status: &'static str,
    pub status_text: String,
    pub failed: bool,
    pub progress: Option<Progress>,
    pub buttons: Vec<Button>,
}

#[derive(Debug, Serialize)]
pub struct Button {
    pub action: String,
    pub label: String,
}

impl<'a> LiveItem<'a> {
    pub fn new(item: &'a PortalSoftware) -> LiveItem<'a> {
        let install = item.install.as_ref();
        let status = install.map(|i| i.status);
        LiveItem {
            item,
            display: Display {
                status: status.map(|s| s.as_str()).unwrap_or("NONE"),
                status_text: wording::status_text(install),
                failed: matches!(status, Some(mobius_api::software::InstallStatus::Failed)),
                progress: wording::progress(install),
                buttons: item
                    .actions
                    .iter()
                    .filter_map(|action| {
                        wording::action_label(action, &item.name).map(|label| Button {
                            action: action.clone(),
                            label,
                        })
                    })
                    .collect(),
            },
        }
    }
}

/// What was last sent for each item, to send only what changed.
#[derive(Default)]
pub struct Changes {
    seen: HashMap<Uuid, PortalSoftware>,
}

impl Changes {
    /// The items that differ from the last call (all of them the first
    /// time), remembering the new state.
    pub fn update(&mut self, items: Vec<PortalSoftware>) -> Vec<PortalSoftware> {
        let mut changed = Vec::new();
        for item in items {
            if self.seen.get(&item.version_id) != Some(&item) {
                self.seen.insert(item.version_id, item.clone());
                changed.push(item);
            }
        }
        changed
    }
}

fn software_event(item: &PortalSoftware) -> Event {
    let data = serde_json::to_string(&LiveItem::new(item)).unwrap_or_else(|_| "{}".to_owned());
    Event::default().event("software").data(data)
}

enum Poll {
    Running {
        client: PortalClient,
        session: String,
        changes: Changes,
        first: bool,
    },
    Done,
}

/// The event stream for one open software page: all items at once, then
/// each change; `expired` and the end when the server refuses the session.
/// A server that cannot be reached is retried at the same cadence (the
/// page keeps its last state).
pub fn software_events(
    client: PortalClient,
    session: String,
    every: Duration,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let start = Poll::Running {
        client,
        session,
        changes: Changes::default(),
        first: true,
    };
    futures_util::stream::unfold(start, move |state| async move {
        let Poll::Running {
            client,
            session,
            mut changes,
            first,
        } = state
        else {
            return None;
        };
        let mut first = first;
        loop {
            if !first {
                tokio::time::sleep(every).await;
            }
            first = false;
            match client.software(&session).await {
                Ok(list) => {
                    let changed = changes.update(list.software);
                    if changed.is_empty() {
                        continue;
                    }
                    let events: Vec<_> = changed.iter().map(software_event).collect();
                    let next = Poll::Running {
                        client,
                        session,
                        changes,
                        first: false,
                    };
                    return Some((events, next));
                }
                Err(PortalError::Unauthorized) => {
                    let expired = Event::default().event("expired").data("expired");
                    return Some((vec![expired], Poll::Done));
                }
                Err(error) => {
                    tracing::warn!(
                        error = crate::portal::error_chain(&error),
                        "live software poll failed; retrying"
                    );
                }
            }
        }
    })
    .flat_map(|events| futures_util::stream::iter(events.into_iter().map(Ok)))
}

#[cfg(test)]
mod tests {
    use mobius_api::portal::PortalInstall;
    use mobius_api::software::InstallStatus;

    use super::*;

    fn item(id: u128, status: Option<InstallStatus>, done: u64) -> PortalSoftware {
        PortalSoftware {
            version_id: Uuid::from_u128(id),
            name: "Firefox".into(),
            version: "128.0".into(),
            installer_kind: "pkg".into(),
            size_bytes: 2_600_000,
            install: status.map(|status| PortalInstall {
                action: "install".into(),
                status,
                bytes_downloaded: done,
                bytes_total: 2_600_000,
                reason: None,
                updated_at: "2026-12-01T10:00:00Z".into(),
            }),
            actions: if status.is_none() {
                vec!["install".into()]
            } else {
                vec![]
            },
        }
    }

    #[test]
    fn sends_everything_once_then_only_changes() {
        let mut changes = Changes::default();
        assert_eq!(
            changes
                .update(vec![item(1, None, 0), item(2, None, 0)])
                .len(),
            2
        );
        assert!(
            changes
                .update(vec![item(1, None, 0), item(2, None, 0)])
                .is_empty()
        );
        let moved = changes.update(vec![
            item(1, Some(InstallStatus::Downloading), 100),
            item(2, None, 0),
        ]);
        assert_eq!(moved, vec![item(1, Some(InstallStatus::Downloading), 100)]);
        // Progress within a status is a change too.
        assert_eq!(
            changes
                .update(vec![item(1, Some(InstallStatus::Downloading), 200)])
                .len(),
            1
        );
    }

    #[test]
    fn live_item_carries_the_words_the_page_shows() {
        let downloading = item(1, Some(InstallStatus::Downloading), 1_170_000);
        let json = serde_json::to_value(LiveItem::new(&downloading)).unwrap();
        assert_eq!(json["name"], "Firefox");
        assert_eq!(json["display"]["status"], "DOWNLOADING");
        assert_eq!(
            json["display"]["status_text"],
            "Downloading 45% (1.2 MB of 2.6 MB)"
        );
        assert_eq!(json["display"]["progress"]["max"], 2_600_000);
        let fresh = item(2, None, 0);
        let json = serde_json::to_value(LiveItem::new(&fresh)).unwrap();
        assert_eq!(json["display"]["buttons"][0]["label"], "Install Firefox");
        assert_eq!(json["display"]["status_text"], "Not installed");
    }
}
