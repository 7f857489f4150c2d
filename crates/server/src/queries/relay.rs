//! Acting on the query topics of the cluster bus (see the module table in
//! [`super`]). Runs on every replica, on the embedded store too (where the
//! bus is in-process): policy pushes are handled for local messages as
//! well, since the replica that scheduled a run holds streams like any
//! other; the rest skip local messages, which were acted on before
//! publishing.

use mobius_api::plans::WorkFrame;
use mobius_core::db::SystemTask;
use mobius_core::queries::{CampaignStatus, DeviceQueryStatus};
use mobius_core::{StoreError, Uuid};
use tokio::sync::broadcast::error::RecvError;

use super::{QueryEvent, QueryServices, topics};
use crate::cluster::BusMessage;
use crate::cluster::bus;

pub async fn run(services: QueryServices) {
    let bus = services.bus.clone();
    let mut live_push = bus.subscribe(topics::LIVE_PUSH);
    let mut policy_push = bus.subscribe(topics::POLICY_PUSH);
    let mut live_result = bus.subscribe(topics::LIVE_RESULT);
    let mut live_ended = bus.subscribe(topics::LIVE_ENDED);
    loop {
        tokio::select! {
            message = live_push.recv() => {
                if let Some(message) = received(message, false) {
                    push_live(&services, &message).await;
                }
            }
            message = policy_push.recv() => {
                if let Some(message) = received(message, true) {
                    push_policy(&services, &message).await;
                }
            }
            message = live_result.recv() => {
                if let Some(message) = received(message, false) {
                    relay_result(&services, &message).await;
                }
            }
            message = live_ended.recv() => {
                if let Some(message) = received(message, false) {
                    relay_ended(&services, &message).await;
                }
            }
        }
    }
}

fn received(message: Result<BusMessage, RecvError>, with_local: bool) -> Option<BusMessage> {
    match message {
        Ok(message) if with_local || !message.local => Some(message),
        Ok(_) => None,
        Err(RecvError::Lagged(missed)) => {
            tracing::warn!(missed, "query bus subscriber lagged");
            None
        }
        Err(RecvError::Closed) => None,
    }
}

fn two_ids(message: &BusMessage) -> Option<(Uuid, Uuid, Option<Uuid>)> {
    let ids = bus::ids(&message.payload);
    Some((*ids.first()?, *ids.get(1)?, ids.get(2).copied()))
}

async fn push_live(services: &QueryServices, message: &BusMessage) {
    let Some((tenant, campaign_id, _)) = two_ids(message) else {
        return;
    };
    let found = async {
        let scope = services
            .store
            .begin(&SystemTask::new("live query push", tenant))
            .await?;
        let campaign = scope.queries().get(campaign_id).await?;
        let devices = scope.queries().devices_of(campaign_id).await?;
        scope.commit().await?;
        Ok::<_, StoreError>((campaign, devices))
    }
    .await;
    match found {
        Ok((campaign, devices)) => {
            if CampaignStatus::of(&campaign) != CampaignStatus::Running {
                return;
            }
            let frame = WorkFrame::Query(mobius_core::queries::request_of(&campaign));
            let pending = devices
                .iter()
                .filter(|d| DeviceQueryStatus::of(d) == DeviceQueryStatus::Pending)
                .map(|d| d.device_id);
            for device in services.notifier.held_among(pending) {
                services.notifier.push(device, &frame);
            }
        }
        Err(err) => tracing::warn!(error = %err, "could not read a live query to push"),
    }
}

async fn push_policy(services: &QueryServices, message: &BusMessage) {
    let Some((tenant, policy_id, _)) = two_ids(message) else {
        return;
    };
    let found = async {
        let scope = services
            .store
            .begin(&SystemTask::new("policy push", tenant))
            .await?;
        let policy = scope.policies().get(policy_id).await?;
        let devices = scope.policies().applicable_devices(&policy).await?;
        scope.commit().await?;
        Ok::<_, StoreError>((policy, devices))
    }
    .await;
    match found {
        Ok((policy, devices)) => {
            let frame = WorkFrame::Query(mobius_core::policies::request_of(&policy));
            for device in services.notifier.held_among(devices.iter().map(|d| d.id)) {
                services.notifier.push(device, &frame);
            }
        }
        Err(StoreError::NotFound { .. }) => {}
        Err(err) => tracing::warn!(error = %err, "could not read a policy to push"),
    }
}

async fn relay_result(services: &QueryServices, message: &BusMessage) {
    let Some((tenant, campaign_id, Some(device_id))) = two_ids(message) else {
        return;
    };
    let found = async {
        let scope = services
            .store
            .begin(&SystemTask::new("live query relay", tenant))
            .await?;
        let row = scope.queries().device_row(campaign_id, device_id).await?;
        scope.commit().await?;
        Ok::<_, StoreError>(row)
    }
    .await;
    match found {
        Ok(Some(row)) => services.events.publish(QueryEvent::Device(Box::new(row))),
        Ok(None) => {}
        Err(err) => tracing::warn!(error = %err, "could not read a relayed live query answer"),
    }
}

async fn relay_ended(services: &QueryServices, message: &BusMessage) {
    let Some((tenant, campaign_id, _)) = two_ids(message) else {
        return;
    };
    let found = async {
        let scope = services
            .store
            .begin(&SystemTask::new("live query relay", tenant))
            .await?;
        let campaign = scope.queries().get(campaign_id).await?;
        let devices = scope.queries().devices_of(campaign_id).await?;
        scope.commit().await?;
        Ok::<_, StoreError>((campaign, devices))
    }
    .await;
    match found {
        Ok((campaign, devices)) => {
            // The rows the end changed are the ERROR ones without an
            // answer time; subscribers drop what they already have.
            let changed = devices
                .into_iter()
                .filter(|d| {
                    DeviceQueryStatus::of(d) == DeviceQueryStatus::Error && d.answered_at.is_none()
                })
                .collect();
            services.events.publish(QueryEvent::Ended {
                campaign: Box::new(campaign),
                changed,
            });
        }
        Err(StoreError::NotFound { .. }) => {}
        Err(err) => tracing::warn!(error = %err, "could not read a relayed live query end"),
    }
}
