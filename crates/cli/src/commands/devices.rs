//! `devices list`, with the server-side filters.

use anyhow::Result;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::Context;
use crate::cli::{DeviceListArgs, DevicesCommand};
use crate::output::{Tabular, label, or_dash};
use crate::pagination::fetch_list;

const LIST: &str = "query Devices(
  $first: Int, $after: String, $siteId: ID, $teamId: ID,
  $status: DeviceStatus, $hostnameSearch: String, $osName: String, $orderBy: DeviceOrder
) {
  devices(
    first: $first, after: $after, siteId: $siteId, teamId: $teamId,
    status: $status, hostnameSearch: $hostnameSearch, osName: $osName, orderBy: $orderBy
  ) {
    nodes {
      id hostname status lastSeenAt createdAt
      site { id name }
      team { id name }
    }
    pageInfo { hasNextPage endCursor }
    totalCount
  }
}";

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    pub id: String,
    pub hostname: String,
    pub status: String,
    pub last_seen_at: Option<String>,
    pub site: Reference,
    pub team: Option<Reference>,
    pub created_at: String,
}

/// The site or team a device belongs to.
#[derive(Debug, Serialize, Deserialize)]
pub struct Reference {
    pub id: String,
    pub name: String,
}

impl Tabular for Device {
    fn columns() -> &'static [&'static str] {
        &[
            "ID",
            "HOSTNAME",
            "STATUS",
            "LAST SEEN",
            "SITE",
            "TEAM",
            "CREATED",
        ]
    }

    fn cells(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            self.hostname.clone(),
            label(&self.status),
            or_dash(self.last_seen_at.as_deref()),
            self.site.name.clone(),
            or_dash(self.team.as_ref().map(|team| team.name.as_str())),
            self.created_at.clone(),
        ]
    }
}

pub async fn run(ctx: &Context, command: DevicesCommand) -> Result<()> {
    match command {
        DevicesCommand::List(args) => {
            let mut client = ctx.client()?;
            let listing = fetch_list::<Device>(
                &mut client,
                "devices",
                LIST,
                filters(&args),
                args.list.limit,
            )
            .await?;
            ctx.output.list(&listing.rows)?;
            listing.note_truncation("devices");
            Ok(())
        }
        DevicesCommand::Revoke { id } => {
            let mut client = ctx.client()?;
            let revoked: Value = client
                .query("revokeDevice", REVOKE, json!({ "id": id }))
                .await?;
            ctx.output
                .confirmation(&format!("revoked device {id}\n"), &revoked)
        }
        DevicesCommand::Delete { id } => {
            let mut client = ctx.client()?;
            let _: Value = client
                .query("deleteDevice", DELETE, json!({ "id": id }))
                .await?;
            ctx.output
                .confirmation(&format!("deleted device {id}\n"), &json!({ "id": id }))
        }
    }
}

const REVOKE: &str =
    "mutation RevokeDevice($id: ID!) { revokeDevice(id: $id) { id hostname status revokedAt } }";
const DELETE: &str = "mutation DeleteDevice($id: ID!) { deleteDevice(id: $id) }";

/// Only the filters given are sent: an explicit null could mean "no site"
/// rather than "any site".
fn filters(args: &DeviceListArgs) -> Map<String, Value> {
    let mut filters = Map::new();
    let mut set = |key: &str, value: Option<&str>| {
        if let Some(value) = value {
            filters.insert(key.to_owned(), value.into());
        }
    };
    set("siteId", args.site_id.as_deref());
    set("teamId", args.team_id.as_deref());
    set("status", args.status.map(|status| status.as_graphql()));
    set("hostnameSearch", args.search.as_deref());
    set("osName", args.os_name.as_deref());
    set("orderBy", Some(args.order_by.as_graphql()));
    filters
}
