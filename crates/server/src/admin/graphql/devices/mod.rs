//! Devices in the admin API: listing and reading devices, revoking and
//! deleting them, rotating the tenant CA.

mod mutation;
mod query;
mod support;
pub mod types;

pub use mutation::DeviceMutation;
pub use query::DeviceQuery;
pub(crate) use support::{device_node, heartbeat_interval, prefetch_sites_and_teams, reload};
