//! The backbone's metrics, on its own `/metrics` (apex host): requests by
//! outcome, bytes each way, the time the backbone adds before a request
//! enters its tunnel, the time to the service's response head, and
//! parked connections.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

pub struct BackboneMetrics {
    registry: Registry,
    pub requests: Family<OutcomeLabels, Counter>,
    pub bytes_to_service: Counter,
    pub bytes_to_client: Counter,
    /// Arrival to hand-off into the tunnel: what the backbone adds on the
    /// way in (identity checks, header rewriting).
    pub added_latency: Histogram,
    /// Arrival to the service's response head, through the tunnel.
    pub response_latency: Histogram,
    pub parked: Gauge,
}

impl Default for BackboneMetrics {
    fn default() -> Self {
        BackboneMetrics::new()
    }
}

impl BackboneMetrics {
    pub fn new() -> BackboneMetrics {
        let mut registry = Registry::with_prefix("mobius_backbone");
        let requests = Family::<OutcomeLabels, Counter>::default();
        let bytes_to_service = Counter::default();
        let bytes_to_client = Counter::default();
        // 20 µs to ~20 s.
        let added_latency = Histogram::new(exponential_buckets(0.00002, 2.0, 20));
        let response_latency = Histogram::new(exponential_buckets(0.00002, 2.0, 20));
        let parked = Gauge::default();
        registry.register(
            "requests",
            "Requests to services, by outcome",
            requests.clone(),
        );
        registry.register(
            "bytes_to_service",
            "Request body bytes forwarded",
            bytes_to_service.clone(),
        );
        registry.register(
            "bytes_to_client",
            "Response body bytes forwarded",
            bytes_to_client.clone(),
        );
        registry.register(
            "added_latency_seconds",
            "Time from arrival to hand-off into the tunnel",
            added_latency.clone(),
        );
        registry.register(
            "response_head_seconds",
            "Time from arrival to the service's response head",
            response_latency.clone(),
        );
        registry.register(
            "parked_connections",
            "Tunnel connections parked on this node",
            parked.clone(),
        );
        BackboneMetrics {
            registry,
            requests,
            bytes_to_service,
            bytes_to_client,
            added_latency,
            response_latency,
            parked,
        }
    }

    pub fn count(&self, outcome: &'static str) {
        self.requests
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
