//! `software upload|list|install`: the software catalog over the REST
//! surface `/api/v1/mobius/software/*`. The installer is streamed from the
//! file (never read whole into memory) with its SHA-256, computed first,
//! so the server refuses it if a byte changed on the way.

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use super::Context;
use crate::output::{Tabular, or_dash};

const SOFTWARE: &str = "/api/v1/mobius/software";

#[derive(Debug, Subcommand)]
pub enum SoftwareCommand {
    /// Upload an installer as a new version in the catalog
    Upload(UploadArgs),
    /// List the catalog's versions
    List,
    /// Install (or with --uninstall, uninstall) a version on devices, sites or teams
    Install(InstallArgs),
    /// Which devices report which packages (from their deb and rpm databases)
    #[command(
        after_help = "Examples:\n  mobius software inventory --name openssl\n  \
                            mobius software inventory --output json | jq 'group_by(.name)'"
    )]
    Inventory(InventoryArgs),
}

#[derive(Debug, Args)]
pub struct InventoryArgs {
    /// Only this package name (exact); omitted: every package of every device
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
}

#[derive(Debug, Args)]
pub struct UploadArgs {
    /// The installer file
    pub file: PathBuf,
    #[arg(long)]
    pub name: String,
    #[arg(long = "version")]
    pub version: String,
    /// deb, rpm, sh or tarball
    #[arg(long)]
    pub kind: String,
    /// linux, darwin or windows
    #[arg(long, default_value = "linux")]
    pub platform: String,
    /// Shell run to install ($INSTALLER_PATH is the file); required for sh and tarball
    #[arg(long)]
    pub install_script: Option<String>,
    #[arg(long)]
    pub uninstall_script: Option<String>,
    #[arg(long)]
    pub post_install_script: Option<String>,
    /// SQL over the host tables; the install runs only if it answers a row
    #[arg(long)]
    pub condition: Option<String>,
    /// End users may install it themselves
    #[arg(long)]
    pub self_service: bool,
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// The version's ID
    pub id: String,
    #[arg(long = "device")]
    pub devices: Vec<String>,
    #[arg(long = "site")]
    pub sites: Vec<String>,
    #[arg(long = "team")]
    pub teams: Vec<String>,
    /// Uninstall instead (the version needs an uninstall script)
    #[arg(long)]
    pub uninstall: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct VersionRow {
    pub id: String,
    pub name: String,
    pub version: String,
    pub platform: String,
    pub installer_kind: String,
    pub size_bytes: u64,
    pub sha256: String,
    pub self_service: bool,
    pub created_at: String,
}

impl Tabular for VersionRow {
    fn columns() -> &'static [&'static str] {
        &[
            "ID",
            "NAME",
            "VERSION",
            "PLATFORM",
            "KIND",
            "BYTES",
            "SHA-256",
            "SELF-SERVICE",
            "CREATED",
        ]
    }

    fn cells(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            self.name.clone(),
            self.version.clone(),
            self.platform.clone(),
            self.installer_kind.clone(),
            self.size_bytes.to_string(),
            self.sha256.clone(),
            if self.self_service { "yes" } else { "no" }.into(),
            self.created_at.clone(),
        ]
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct InstallRow {
    pub id: String,
    pub device_id: String,
    pub request_id: String,
    pub action: String,
    pub status: String,
    #[serde(default)]
    pub reason: Option<String>,
}

impl Tabular for InstallRow {
    fn columns() -> &'static [&'static str] {
        &["ID", "DEVICE", "REQUEST", "ACTION", "STATUS", "REASON"]
    }

    fn cells(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            self.device_id.clone(),
            self.request_id.clone(),
            self.action.clone(),
            self.status.clone(),
            or_dash(self.reason.as_deref()),
        ]
    }
}

/// One package a device reports.
#[derive(Debug, Serialize, Deserialize)]
pub struct PackageRow {
    pub device_id: String,
    pub source: String,
    pub name: String,
    pub version: String,
    pub reported_at: String,
}

impl Tabular for PackageRow {
    fn columns() -> &'static [&'static str] {
        &["DEVICE", "SOURCE", "NAME", "VERSION", "REPORTED"]
    }

    fn cells(&self) -> Vec<String> {
        vec![
            self.device_id.clone(),
            self.source.clone(),
            self.name.clone(),
            self.version.clone(),
            self.reported_at.clone(),
        ]
    }
}

pub async fn run(ctx: &Context, command: SoftwareCommand) -> Result<()> {
    let mut client = ctx.client()?;
    let token = client.bearer().await?;
    let base = format!("{}{SOFTWARE}", client.server().trim_end_matches('/'));
    // Uploads take as long as they take; the other calls are quick.
    let http = reqwest::Client::builder()
        .user_agent(concat!("mobius-cli/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(std::time::Duration::from_secs(10))
        .build()?;
    match command {
        SoftwareCommand::Upload(args) => {
            let sha256 = file_sha256(&args.file).await?;
            let metadata = json!({
                "name": args.name,
                "version": args.version,
                "platform": args.platform,
                "installer_kind": args.kind,
                "sha256": sha256,
                "install_script": args.install_script,
                "uninstall_script": args.uninstall_script,
                "post_install_script": args.post_install_script,
                "pre_install_condition": args.condition,
                "self_service": args.self_service,
            });
            let file_name = args
                .file
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("installer")
                .replace(['"', '\r', '\n'], "_");
            let boundary = format!("mobius-{:032x}", rand::random::<u128>());
            let head = format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"\r\nContent-Type: application/json\r\n\r\n{metadata}\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"installer\"; filename=\"{file_name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            );
            let tail = format!("\r\n--{boundary}--\r\n");
            let file = tokio::fs::File::open(&args.file)
                .await
                .with_context(|| format!("cannot open {}", args.file.display()))?;
            let chunks = futures_util::stream::unfold(file, |mut file| async move {
                let mut buf = vec![0u8; 256 * 1024];
                match file.read(&mut buf).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        Some((Ok::<_, std::io::Error>(buf), file))
                    }
                    Err(err) => Some((Err(err), file)),
                }
            });
            let body = futures_util::stream::once(async move { Ok(head.into_bytes()) })
                .chain(chunks)
                .chain(futures_util::stream::once(
                    async move { Ok(tail.into_bytes()) },
                ));
            let response = http
                .post(&base)
                .bearer_auth(&token)
                .header(
                    "content-type",
                    format!("multipart/form-data; boundary={boundary}"),
                )
                .body(reqwest::Body::wrap_stream(body))
                .send()
                .await
                .with_context(|| format!("cannot reach {base}"))?;
            let version: VersionRow = answer(response).await?;
            ctx.output.item(&version)
        }
        SoftwareCommand::List => {
            let response = http.get(&base).bearer_auth(&token).send().await?;
            let listed: Value = answer(response).await?;
            let rows: Vec<VersionRow> = serde_json::from_value(listed["versions"].clone())?;
            ctx.output.list(&rows)
        }
        SoftwareCommand::Install(args) => {
            if args.devices.is_empty() && args.sites.is_empty() && args.teams.is_empty() {
                bail!("name at least one --device, --site or --team");
            }
            let action = if args.uninstall {
                "uninstall"
            } else {
                "install"
            };
            let response = http
                .post(format!("{base}/{}/{action}", args.id))
                .bearer_auth(&token)
                .json(&json!({
                    "device_ids": args.devices,
                    "site_ids": args.sites,
                    "team_ids": args.teams,
                }))
                .send()
                .await?;
            let requested: Value = answer(response).await?;
            let rows: Vec<InstallRow> = serde_json::from_value(requested["installs"].clone())?;
            ctx.output.list(&rows)
        }
        SoftwareCommand::Inventory(args) => {
            let mut url = url::Url::parse(&format!("{base}/inventory"))?;
            if let Some(name) = &args.name {
                url.query_pairs_mut().append_pair("name", name);
            }
            let listed: Value = answer(http.get(url).bearer_auth(&token).send().await?).await?;
            let rows: Vec<PackageRow> = serde_json::from_value(listed["packages"].clone())?;
            if rows.is_empty() && !ctx.output.is_json() {
                crate::output::notice(match &args.name {
                    Some(_) => "no device reports a package of that name",
                    None => "no device has reported its packages yet",
                });
                return Ok(());
            }
            ctx.output.list(&rows)
        }
    }
}

/// The body of a 2xx answer, or the server's error (code and message).
async fn answer<T: serde::de::DeserializeOwned>(response: reqwest::Response) -> Result<T> {
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if status.is_success() {
        return Ok(serde_json::from_value(body)?);
    }
    let code = body["error"]["code"].as_str().unwrap_or("ERROR");
    let message = body["error"]["message"]
        .as_str()
        .map_or_else(|| format!("HTTP {}", status.as_u16()), str::to_owned);
    bail!("{message} ({code})")
}

async fn file_sha256(path: &PathBuf) -> Result<String> {
    let mut file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}
