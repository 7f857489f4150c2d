//! `license status`: the tier, device limit and expiry this server (OSS)
//! or this tenant's plan (cloud) grants, with any expiry warning.

use anyhow::Result;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::Context;
use crate::cli::LicenseCommand;
use crate::output::{Tabular, notice, or_dash};

const STATUS: &str = "query License {
  license {
    source tier state effectiveTier organization deviceLimit deviceCount
    expiresAt graceEndsAt daysLeft licenseId signedByTestKey
    features { name tier available }
    warning
  }
}";

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct License {
    pub source: String,
    pub tier: String,
    pub state: String,
    pub effective_tier: String,
    pub organization: Option<String>,
    pub device_limit: Option<i64>,
    pub device_count: i64,
    pub expires_at: Option<String>,
    pub grace_ends_at: Option<String>,
    pub days_left: Option<i64>,
    pub license_id: Option<String>,
    pub signed_by_test_key: bool,
    pub features: Vec<PremiumFeature>,
    pub warning: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PremiumFeature {
    pub name: String,
    pub tier: String,
    pub available: bool,
}

impl Tabular for License {
    fn columns() -> &'static [&'static str] {
        &[
            "STATE",
            "TIER",
            "IN FORCE",
            "ORGANIZATION",
            "DEVICES",
            "EXPIRES",
            "DAYS LEFT",
            "GRACE ENDS",
            "LICENSE ID",
            "SOURCE",
            "PREMIUM FEATURES",
        ]
    }

    fn cells(&self) -> Vec<String> {
        let limit = self
            .device_limit
            .map_or_else(|| "no limit".to_owned(), |l| l.to_string());
        let features = self
            .features
            .iter()
            .map(|f| {
                let mark = if f.available { "yes" } else { "no" };
                format!("{} ({}): {mark}", f.name, f.tier)
            })
            .collect::<Vec<_>>()
            .join(", ");
        let tier = if self.signed_by_test_key {
            format!("{} (TEST KEY)", self.tier)
        } else {
            self.tier.clone()
        };
        vec![
            self.state.clone(),
            tier,
            self.effective_tier.clone(),
            or_dash(self.organization.as_deref()),
            format!("{} of {limit}", self.device_count),
            or_dash(self.expires_at.as_deref()),
            or_dash(self.days_left.map(|d| d.to_string()).as_deref()),
            or_dash(self.grace_ends_at.as_deref()),
            or_dash(self.license_id.as_deref()),
            self.source.clone(),
            features,
        ]
    }
}

pub async fn run(ctx: &Context, command: LicenseCommand) -> Result<()> {
    match command {
        LicenseCommand::Status => {
            let mut client = ctx.client()?;
            let license: License = client.query("license", STATUS, json!({})).await?;
            ctx.output.item(&license)?;
            // On stderr, so `--output json` stays clean for jq.
            if let Some(warning) = &license.warning {
                notice(&format!("warning: {warning}"));
            }
            Ok(())
        }
    }
}
