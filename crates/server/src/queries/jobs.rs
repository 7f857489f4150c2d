//! The scheduler's query jobs (each runs once per period across replicas):
//!
//! - `policy-schedule`: pushes every due policy to the online applicable
//!   devices (through the bus, so each replica pushes to its own streams)
//!   and moves it to its next run time.
//! - `live-query-maintenance`: ends campaigns whose timeout passed while
//!   the replica that started them was gone, and deletes campaigns older
//!   than `live_query_retention_hours` with their answers.
//! - `webhook-delivery`: posts due policy webhook deliveries, signed, and
//!   records each attempt (retries back off exponentially).

use std::time::Duration;

use mobius_core::StoreResult;
use mobius_core::db::SystemTask;
use mobius_core::policies::webhooks::{Attempt, SIGNATURE_HEADER, signature};

use super::QueryServices;

/// Deliveries attempted per tenant per run, so one slow receiver cannot
/// hold the job for long.
const DELIVERIES_PER_RUN: u64 = 20;
/// How long a receiver has to answer.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn run_due_policies(services: &QueryServices) -> StoreResult<String> {
    let due = services.store.take_due_policies().await?;
    for policy in &due {
        services.dispatch_policy(policy.tenant_id, policy.id).await;
    }
    Ok(format!("pushed={}", due.len()))
}

pub async fn maintain_live_queries(services: &QueryServices) -> StoreResult<String> {
    let cutoff = chrono::Utc::now() - chrono::Duration::hours(i64::from(services.retention_hours));
    let (ended, deleted) = services.store.maintain_live_queries(cutoff).await?;
    let count = ended.len();
    for (campaign, changed) in ended {
        services.announce_ended(campaign, changed).await;
    }
    Ok(format!("ended={count} deleted={deleted}"))
}

/// The client webhooks are posted with: no redirects (a receiver must not
/// bounce the server to another address), a short timeout.
pub fn webhook_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(DELIVERY_TIMEOUT)
        .user_agent(concat!("mobius-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default()
}

pub async fn deliver_webhooks(
    services: &QueryServices,
    client: &reqwest::Client,
) -> StoreResult<String> {
    let mut delivered = 0;
    let mut failed = 0;
    for tenant in services.store.billing_tenant_ids().await? {
        let task = SystemTask::new("webhook delivery", tenant);
        let scope = services.store.begin(&task).await?;
        let due = scope.webhooks().due(DELIVERIES_PER_RUN).await?;
        if due.is_empty() {
            continue;
        }
        let target = scope.webhooks().target(services.sealer.as_ref()).await?;
        scope.commit().await?;
        for delivery in due {
            let attempt = match &target {
                None => Attempt {
                    delivered: false,
                    response_status: None,
                    error: Some("no webhook is set".into()),
                },
                Some((url, secret)) => {
                    let parsed = url::Url::parse(url).ok();
                    if parsed
                        .as_ref()
                        .is_none_or(|u| super::names_this_server(u, &services.own_addresses))
                    {
                        Attempt {
                            delivered: false,
                            response_status: None,
                            error: Some("the webhook URL names this server; refused".into()),
                        }
                    } else {
                        post(client, url, secret, &delivery.body).await
                    }
                }
            };
            if attempt.delivered {
                delivered += 1;
            } else {
                failed += 1;
            }
            let scope = services.store.begin(&task).await?;
            scope.webhooks().attempted(delivery.id, &attempt).await?;
            scope.commit().await?;
        }
    }
    Ok(format!("delivered={delivered} failed={failed}"))
}

async fn post(client: &reqwest::Client, url: &str, secret: &[u8], body: &str) -> Attempt {
    let timestamp = chrono::Utc::now().timestamp();
    let sent = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, signature(secret, timestamp, body))
        .body(body.to_owned())
        .send()
        .await;
    match sent {
        Ok(response) => {
            let status = response.status();
            Attempt {
                delivered: status.is_success(),
                response_status: Some(status.as_u16()),
                error: (!status.is_success()).then(|| format!("the receiver answered {status}")),
            }
        }
        Err(err) => Attempt {
            delivered: false,
            response_status: None,
            error: Some(if err.is_timeout() {
                "the receiver did not answer in time".to_owned()
            } else if err.is_connect() {
                "could not connect to the receiver".to_owned()
            } else {
                "the request to the receiver failed".to_owned()
            }),
        },
    }
}
