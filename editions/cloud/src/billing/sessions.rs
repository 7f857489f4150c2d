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
// Not yet called from an admin endpoint (the SPA's "subscribe" and
// "manage billing" buttons arrive with the sign-up work); the requests it
// builds are checked by the tests below.
#[allow(dead_code)]
pub struct Sessions {
    client: stripe::Client,
    success_url: String,
    cancel_url: String,
    return_url: String,
}

#[allow(dead_code)]
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Answers one HTTP request with `body` and returns what was asked.
    async fn capture_one(listener: tokio::net::TcpListener, body: &'static str) -> String {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        let mut buffer = [0u8; 8192];
        loop {
            let n = socket.read(&mut buffer).await.unwrap();
            request.extend_from_slice(&buffer[..n]);
            let text = String::from_utf8_lossy(&request).to_string();
            if let Some((head, rest)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if rest.len() >= length {
                    break;
                }
            }
            if n == 0 {
                break;
            }
        }
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        socket.write_all(answer.as_bytes()).await.unwrap();
        String::from_utf8_lossy(&request).to_string()
    }

    fn decoded(request: &str) -> String {
        let body = request.split_once("\r\n\r\n").unwrap().1;
        body.replace("%5B", "[")
            .replace("%5D", "]")
            .replace("%3A", ":")
            .replace("%2F", "/")
    }

    #[tokio::test]
    async fn checkout_names_the_tenant_twice_and_the_price() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/", listener.local_addr().unwrap());
        let server = tokio::spawn(capture_one(
            listener,
            r#"{"id":"cs_test_1","object":"checkout.session","url":"https://checkout.stripe.com/c/pay/cs_test_1"}"#,
        ));
        let sessions = Sessions::new(
            "sk_test_123",
            Some(&base),
            "https://app.example/ok",
            "https://app.example/no",
            "https://app.example/billing",
        );
        let tenant = Uuid::nil();
        // The answer may not parse as a full session; the request is what
        // is checked here.
        let _ = sessions.checkout(tenant, "price_team_monthly").await;
        let request = server.await.unwrap();
        assert!(
            request.starts_with("POST /v1/checkout/sessions "),
            "{request}"
        );
        assert!(
            request
                .to_ascii_lowercase()
                .contains("authorization: bearer sk_test_123"),
            "{request}"
        );
        let body = decoded(&request);
        for expected in [
            "mode=subscription",
            "client_reference_id=00000000-0000-0000-0000-000000000000",
            "line_items[0][price]=price_team_monthly",
            "line_items[0][quantity]=1",
            "subscription_data[metadata][mobius_tenant_id]=00000000-0000-0000-0000-000000000000",
            "success_url=https://app.example/ok",
            "cancel_url=https://app.example/no",
        ] {
            assert!(body.contains(expected), "{expected} not in {body}");
        }
    }

    #[tokio::test]
    async fn the_portal_session_names_the_customer_and_the_way_back() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/", listener.local_addr().unwrap());
        let server = tokio::spawn(capture_one(
            listener,
            r#"{"id":"bps_1","object":"billing_portal.session","url":"https://billing.stripe.com/p/session/x"}"#,
        ));
        let sessions = Sessions::new(
            "sk_test_123",
            Some(&base),
            "https://app.example/ok",
            "https://app.example/no",
            "https://app.example/billing",
        );
        let _ = sessions.portal("cus_alpha").await;
        let request = server.await.unwrap();
        assert!(
            request.starts_with("POST /v1/billing_portal/sessions "),
            "{request}"
        );
        let body = decoded(&request);
        assert!(body.contains("customer=cus_alpha"), "{body}");
        assert!(
            body.contains("return_url=https://app.example/billing"),
            "{body}"
        );
    }
}
