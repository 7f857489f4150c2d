//! `POST /api/v1/mobius/billing/stripe/webhook`: Stripe's events change
//! tenants' plans.
//!
//! The signature is checked on the raw body before anything parses it
//! (bad or missing: 400, nothing changes). The event is then reduced to a
//! [`BillingChange`] and applied in one tenant transaction: exactly once
//! (the event id is stored; a redelivery answers 200 and changes nothing),
//! never backwards (older events than the plan reflects are recorded and
//! ignored), and all or nothing (any failure answers 500 so Stripe
//! retries, and the transaction is rolled back). Unknown event types and
//! customers are answered 200 and logged: they are not ours to act on.
//!
//! The event's object is read field by field rather than through
//! async-stripe's generated structs, because Stripe moved fields between
//! API versions (`current_period_end` onto subscription items,
//! `invoice.subscription` under `parent.subscription_details`) and a
//! strict parse would turn such an event into endless retries.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use mobius_core::Store;
use mobius_core::billing::{
    Applied, BillingChange, BillingEvent, PlanCatalog, PlanTerms, PriceError, SubscriptionStatus,
};
use secrecy::SecretString;
use serde_json::Value;
use stripe::EventType;

use super::PlanEntitlements;
use super::signature::{self, SignatureError};

pub const PATH: &str = "/api/v1/mobius/billing/stripe/webhook";

/// What the webhook handler needs.
#[derive(Clone)]
pub struct WebhookState {
    pub store: Store,
    pub catalog: Arc<PlanCatalog>,
    pub secrets: Arc<Vec<SecretString>>,
    pub tolerance_secs: u64,
    pub entitlements: Arc<PlanEntitlements>,
}

pub fn router(state: WebhookState) -> axum::Router {
    axum::Router::new()
        .route(PATH, axum::routing::post(receive))
        .with_state(state)
}

fn answer(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(serde_json::json!({ "error": { "code": code, "message": message } })),
    )
        .into_response()
}

async fn receive(State(state): State<WebhookState>, headers: HeaderMap, body: Bytes) -> Response {
    let header = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok());
    if let Err(err) = signature::verify(
        header,
        &body,
        &state.secrets,
        state.tolerance_secs,
        chrono::Utc::now().timestamp(),
    ) {
        tracing::warn!(reason = %err, "refused a Stripe webhook: bad signature");
        let message = match err {
            SignatureError::Missing => "missing Stripe-Signature header",
            SignatureError::Malformed | SignatureError::Expired | SignatureError::Mismatch => {
                "invalid Stripe-Signature"
            }
        };
        return answer(StatusCode::BAD_REQUEST, "BAD_USER_INPUT", message);
    }
    let event: Value = match serde_json::from_slice(&body) {
        Ok(event) => event,
        Err(err) => {
            // Signed by Stripe yet not JSON: nothing a retry would fix.
            tracing::error!(error = %err, "a signed Stripe webhook body is not JSON");
            return answer(
                StatusCode::BAD_REQUEST,
                "BAD_USER_INPUT",
                "body is not JSON",
            );
        }
    };
    let event_id = event["id"].as_str().unwrap_or_default().to_owned();
    let event_type = event["type"].as_str().unwrap_or_default().to_owned();
    match handle(&state, &event).await {
        Ok(outcome) => {
            tracing::info!(event_id, event_type, outcome, "Stripe webhook");
            (
                StatusCode::OK,
                axum::Json(serde_json::json!({ "received": true })),
            )
                .into_response()
        }
        Err(err) => {
            tracing::error!(event_id, event_type, error = %err, "Stripe webhook failed; Stripe will retry");
            answer(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL",
                "internal error",
            )
        }
    }
}

/// Why a verified event could not be applied (answered 500: retried).
#[derive(Debug, thiserror::Error)]
enum HandleError {
    #[error("event lacks {0}")]
    Shape(&'static str),
    #[error(transparent)]
    Price(#[from] PriceError),
    #[error(transparent)]
    Store(#[from] mobius_core::StoreError),
}

/// Applies one verified event; the text says what happened, for the log.
async fn handle(state: &WebhookState, event: &Value) -> Result<&'static str, HandleError> {
    let event_type: EventType = match serde_json::from_value(event["type"].clone()) {
        Ok(kind) => kind,
        Err(_) => return Ok("ignored: unknown event type"),
    };
    let id = str_at(event, "/id").ok_or(HandleError::Shape("id"))?;
    let created = time_at(event, "/created").ok_or(HandleError::Shape("created"))?;
    let object = &event["data"]["object"];
    let (change, claimed) = match event_type {
        EventType::CheckoutSessionCompleted => (
            BillingChange::CheckoutCompleted {
                customer_id: str_at(object, "/customer"),
                subscription_id: str_at(object, "/subscription"),
            },
            str_at(object, "/client_reference_id").and_then(|s| s.parse().ok()),
        ),
        EventType::CustomerSubscriptionCreated
        | EventType::CustomerSubscriptionUpdated
        | EventType::CustomerSubscriptionDeleted => {
            let status = str_at(object, "/status")
                .and_then(|s| SubscriptionStatus::parse(&s))
                .ok_or(HandleError::Shape("a known subscription status"))?;
            let status = if event_type == EventType::CustomerSubscriptionDeleted {
                SubscriptionStatus::Canceled
            } else {
                status
            };
            let terms = if matches!(
                status,
                SubscriptionStatus::Active
                    | SubscriptionStatus::Trialing
                    | SubscriptionStatus::PastDue
            ) {
                Some(subscription_terms(&state.catalog, object)?)
            } else {
                None
            };
            (
                BillingChange::Subscription {
                    customer_id: str_at(object, "/customer")
                        .ok_or(HandleError::Shape("customer"))?,
                    subscription_id: str_at(object, "/id").ok_or(HandleError::Shape("id"))?,
                    status,
                    terms,
                    current_period_end: time_at(object, "/current_period_end")
                        .or_else(|| time_at(object, "/items/data/0/current_period_end")),
                },
                str_at(object, "/metadata/mobius_tenant_id").and_then(|s| s.parse().ok()),
            )
        }
        EventType::InvoicePaid => (
            BillingChange::InvoicePaid {
                customer_id: str_at(object, "/customer").ok_or(HandleError::Shape("customer"))?,
                subscription_id: invoice_subscription(object),
                period_end: time_at(object, "/lines/data/0/period/end"),
            },
            None,
        ),
        EventType::InvoicePaymentFailed => (
            BillingChange::PaymentFailed {
                customer_id: str_at(object, "/customer").ok_or(HandleError::Shape("customer"))?,
                subscription_id: invoice_subscription(object),
            },
            None,
        ),
        EventType::CustomerDeleted => (
            BillingChange::CustomerDeleted {
                customer_id: str_at(object, "/id").ok_or(HandleError::Shape("id"))?,
            },
            None,
        ),
        _ => return Ok("ignored: event type not used"),
    };
    let customer = match &change {
        BillingChange::CheckoutCompleted { customer_id, .. } => customer_id.clone(),
        BillingChange::Subscription { customer_id, .. }
        | BillingChange::InvoicePaid { customer_id, .. }
        | BillingChange::PaymentFailed { customer_id, .. }
        | BillingChange::CustomerDeleted { customer_id } => Some(customer_id.clone()),
    };
    let Some(tenant) = state
        .store
        .billing_tenant(customer.as_deref(), claimed)
        .await?
    else {
        tracing::warn!(
            event_id = id,
            customer = customer.as_deref().unwrap_or("-"),
            "Stripe event for a customer no tenant has; ignored"
        );
        return Ok("ignored: unknown customer");
    };
    let billing_event = BillingEvent {
        id,
        event_type: event["type"].as_str().unwrap_or_default().to_owned(),
        created,
        change,
    };
    Ok(
        match state
            .store
            .apply_billing_event(&tenant, &billing_event, &state.catalog)
            .await?
        {
            Applied::Changed(plan) => {
                state.entitlements.update(&plan);
                "applied"
            }
            Applied::Duplicate => "duplicate: already applied",
            Applied::Stale => "stale: older than the plan, ignored",
        },
    )
}

/// The terms of a subscription's first item's price.
fn subscription_terms(catalog: &PlanCatalog, object: &Value) -> Result<PlanTerms, HandleError> {
    let item = &object["items"]["data"][0];
    let price_id = str_at(item, "/price/id")
        .or_else(|| str_at(item, "/plan/id"))
        .ok_or(HandleError::Shape("items.data[0].price.id"))?;
    let quantity = item["quantity"].as_u64();
    let metadata_limit = item["price"]["metadata"]["device_limit"]
        .as_str()
        .and_then(|s| s.parse().ok());
    Ok(catalog.terms_for(&price_id, quantity, metadata_limit)?)
}

/// An invoice's subscription, where older and newer API versions put it.
fn invoice_subscription(object: &Value) -> Option<String> {
    str_at(object, "/subscription")
        .or_else(|| str_at(object, "/parent/subscription_details/subscription"))
}

fn str_at(value: &Value, pointer: &str) -> Option<String> {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .map(str::to_owned)
}

fn time_at(value: &Value, pointer: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    value
        .pointer(pointer)
        .and_then(Value::as_i64)
        .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
}
