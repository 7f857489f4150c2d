//! `mobius portal branding get|set`: how the self-service portal
//! (mobius-cocoon) looks to the tenant's end users.

use anyhow::{Context as _, Result, bail};
use base64::Engine;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::Context;

#[derive(Debug, Subcommand)]
pub enum PortalCommand {
    /// The portal's white-labeling: name, colour, logo, help contact
    #[command(subcommand)]
    Branding(BrandingCommand),
}

#[derive(Debug, Subcommand)]
pub enum BrandingCommand {
    /// Show the portal's branding
    Get,
    /// Change the portal's branding (options left out stay as they are;
    /// an empty value clears one)
    #[command(after_help = "Examples:\n  \
        mobius portal branding set --name \"Acme IT\" --color \"#0b5fff\" --logo acme.png\n  \
        mobius portal branding set --support \"IT desk, ext. 4357\"\n  \
        mobius portal branding set --clear-logo")]
    Set(SetArgs),
}

#[derive(Debug, Args)]
pub struct SetArgs {
    /// The name in the portal's header (default: the tenant's name)
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// The accent colour, #rrggbb
    #[arg(long, value_name = "COLOR")]
    pub color: Option<String>,
    /// A PNG, JPEG or WebP image of at most 256 KiB
    #[arg(long, value_name = "FILE", conflicts_with = "clear_logo")]
    pub logo: Option<std::path::PathBuf>,
    /// Remove the logo
    #[arg(long)]
    pub clear_logo: bool,
    /// Who end users should ask for help
    #[arg(long, value_name = "TEXT")]
    pub support: Option<String>,
}

const FIELDS: &str = "displayName accentColor supportContact hasLogo logoContentType logoBytes";

fn show(branding: &Value) {
    let text = |key: &str| branding[key].as_str().unwrap_or("(default)").to_owned();
    println!("Name:            {}", text("displayName"));
    println!("Accent colour:   {}", text("accentColor"));
    println!("Support contact: {}", text("supportContact"));
    match branding["logoContentType"].as_str() {
        Some(kind) => println!("Logo:            {kind}, {} bytes", branding["logoBytes"]),
        None => println!("Logo:            (none)"),
    }
}

pub async fn run(ctx: &Context, command: PortalCommand) -> Result<()> {
    let mut client = ctx.client()?;
    let PortalCommand::Branding(command) = command;
    let branding: Value = match command {
        BrandingCommand::Get => {
            client
                .query(
                    "portalBranding",
                    &format!("query {{ portalBranding {{ {FIELDS} }} }}"),
                    json!({}),
                )
                .await?
        }
        BrandingCommand::Set(args) => {
            if args.name.is_none()
                && args.color.is_none()
                && args.logo.is_none()
                && !args.clear_logo
                && args.support.is_none()
            {
                bail!("nothing to change: give --name, --color, --logo, --clear-logo or --support");
            }
            let logo = match &args.logo {
                Some(path) => {
                    let bytes = std::fs::read(path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    Some(base64::engine::general_purpose::STANDARD.encode(bytes))
                }
                None => None,
            };
            client
                .query(
                    "setPortalBranding",
                    &format!(
                        "mutation($i: SetPortalBrandingInput!) {{ setPortalBranding(input: $i) {{ {FIELDS} }} }}"
                    ),
                    json!({ "i": {
                        "displayName": args.name,
                        "accentColor": args.color,
                        "supportContact": args.support,
                        "logoBase64": logo,
                        "clearLogo": args.clear_logo,
                    } }),
                )
                .await?
        }
    };
    if ctx.output.is_json() {
        return ctx.output.raw_json(&branding);
    }
    show(&branding);
    Ok(())
}
