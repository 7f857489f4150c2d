//! The command line as clap sees it: every flag, every environment variable
//! the CLI reads through clap, and the help text. Nothing here talks to the
//! server.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::credentials::Secret;

/// The server used when neither `--server`, `MOBIUS_SERVER` nor a saved
/// login names one: where `mobius-server serve` listens by default.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

const EXAMPLES: &str = "\
Examples:
  # Create the first owner of a new server (the code is printed by the server)
  mobius --server https://mobius.example.com setup --code 123456 \\
      --email owner@example.com --display-name 'Ada Owner'

  # Sign in, then look around
  mobius login --email owner@example.com
  mobius whoami
  mobius devices list --status offline --order-by last-seen --limit 20

  # Script with an API token and jq
  export MOBIUS_TOKEN=mob_pat_...
  mobius sites list --output json | jq -r '.[].name'

  # Anything the commands do not cover
  mobius graphql 'query { tenant { name slug } }'";

/// Manage a Mobius server: sites, teams, users, API tokens, devices and the
/// audit log.
#[derive(Debug, Parser)]
#[command(
    name = "mobius",
    version,
    long_about = "Manage a Mobius server: sites, teams, users, API tokens, devices and the \
                  audit log.\n\n\
                  Talks only to the server's public GraphQL API. Sign in once with `mobius \
                  login` (the session is saved and refreshed automatically), or pass an API \
                  token with --token / MOBIUS_TOKEN.",
    after_long_help = EXAMPLES
)]
pub struct Cli {
    #[command(flatten, next_help_heading = "Global options")]
    pub globals: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// Options accepted by every command.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// The server's base URL [default: the server saved at login, else http://127.0.0.1:8080]
    #[arg(long, global = true, env = "MOBIUS_SERVER", value_name = "URL", value_parser = parse_server_url)]
    pub server: Option<String>,

    /// An access token or API token (mob_pat_...) to use instead of the saved login.
    /// Prefer MOBIUS_TOKEN: command-line arguments are visible to other users.
    #[arg(
        long,
        global = true,
        env = "MOBIUS_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<Secret>,

    /// How to print results: a table for people, JSON for scripts
    #[arg(
        long,
        short = 'o',
        global = true,
        value_enum,
        value_name = "FORMAT",
        default_value_t = OutputFormat::Table
    )]
    pub output: OutputFormat,

    /// Where the saved login lives [default: <config dir>/mobius, e.g. ~/.config/mobius]
    #[arg(long, global = true, env = "MOBIUS_CONFIG_DIR", value_name = "DIR")]
    pub config_dir: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns
    Table,
    /// JSON on stdout and nothing else: an array for lists, an object otherwise
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the first owner of a new server and sign in as them
    #[command(
        long_about = "Create the first owner of a new server and sign in as them.\n\n\
                      The one-time setup code is printed by the server when it starts on an \
                      empty store. The password is read from standard input with \
                      --password-stdin, else from MOBIUS_PASSWORD, else asked for on the \
                      terminal."
    )]
    Setup(SetupArgs),

    /// Sign in and save the session for later commands
    #[command(long_about = "Sign in and save the session for later commands.\n\n\
                      The session is saved to <config dir>/mobius/credentials.json (mode \
                      0600) and refreshed automatically when the access token expires. The \
                      password is read from standard input with --password-stdin, else from \
                      MOBIUS_PASSWORD, else asked for on the terminal.")]
    Login(LoginArgs),

    /// End the saved session on the server and delete it locally
    Logout,

    /// Show who the current credentials belong to
    Whoami,

    /// Manage sites
    #[command(subcommand)]
    Sites(NamedResourceCommand),

    /// Manage teams
    #[command(subcommand)]
    Teams(NamedResourceCommand),

    /// Manage users and invitations
    #[command(subcommand)]
    Users(UsersCommand),

    /// Manage API tokens for scripts and automation
    #[command(subcommand, name = "api-tokens")]
    ApiTokens(ApiTokensCommand),

    /// List enrolled devices
    #[command(subcommand)]
    Devices(DevicesCommand),

    /// Manage enrollment tokens, which agents use once to enroll
    #[command(
        subcommand,
        name = "enroll-tokens",
        after_help = "Example:\n  mobius enroll-tokens create --site-id <SITE> --max-uses 10 --ttl-minutes 60\n  \
                      mobius-agent enroll --server https://mobius.example:8443 --token <TOKEN>"
    )]
    EnrollTokens(EnrollTokensCommand),

    /// Read the audit log
    #[command(subcommand)]
    Audit(AuditCommand),

    /// Show or set the tenant's single sign-on (OIDC) configuration
    #[command(subcommand)]
    Sso(SsoCommand),
    /// Show the license: tier, device limit, expiry and premium features
    #[command(subcommand)]
    License(LicenseCommand),
    /// Apply, list, follow and cancel plans (work run by agents)
    #[command(subcommand)]
    Plans(crate::commands::plans::PlansCommand),
    /// Upload, list and install software (installers in the catalog)
    #[command(subcommand)]
    Software(crate::commands::software::SoftwareCommand),

    /// Run a command on devices and stream its output; exits with the remote exit status
    Run(crate::commands::plans::RunArgs),
    /// Live queries: run SQL on devices now and stream their rows
    #[command(subcommand)]
    Query(crate::commands::queries::QueryCommand),
    /// Policies: SQL checks devices pass or fail, with counts
    #[command(subcommand)]
    Policies(crate::commands::policies::PoliciesCommand),
    /// Agent options: the global layer and team overrides (osquery options,
    /// schedule, packs, Mobius agent settings), as YAML
    #[command(subcommand)]
    Config(crate::commands::config::ConfigCommand),
    /// The self-service portal (mobius-cocoon) end users open from their
    /// device: its branding
    #[command(subcommand)]
    Portal(crate::commands::portal::PortalCommand),
    /// Backbone service tokens (reverse tunnels to services on devices)
    #[command(subcommand)]
    Backbone(crate::commands::backbone::BackboneCommand),

    /// Run any GraphQL query or mutation and print its data as JSON
    #[command(
        after_help = "Example:\n  mobius graphql 'query($n: Int) { sites(first: $n) { nodes { id name } } }' \
                      --variables '{\"n\": 5}'"
    )]
    Graphql(GraphqlArgs),
}

#[derive(Debug, Subcommand)]
pub enum LicenseCommand {
    /// Show the license in force: state (valid, expiring, grace, expired,
    /// free), tier, organization, devices used of the limit, expiry and days
    /// left, and which premium features are available
    #[command(
        long_about = "Show the license in force: state (valid, expiring, grace, expired, free), \
                      tier, organization, devices used of the limit, expiry and days left, and \
                      which premium features are available.\n\n\
                      A warning is printed on stderr from 30 days before expiry. Needs a role \
                      that may manage the tenant (owner or admin). The license itself is set on \
                      the server (setting `license_key` or the file license.key in its data \
                      directory), not with this command.",
        after_help = "Example:\n  mobius license status\n  mobius license status --output json | jq .daysLeft"
    )]
    Status,
}

#[derive(Debug, Args)]
pub struct SetupArgs {
    /// The one-time setup code the server printed at start-up
    #[arg(long)]
    pub code: String,

    /// The owner's email address, used to sign in
    #[arg(long)]
    pub email: String,

    /// The owner's name as others will see it
    #[arg(long)]
    pub display_name: String,

    /// Read the password from the first line of standard input
    #[arg(long)]
    pub password_stdin: bool,
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The email address to sign in with
    #[arg(long, required_unless_present = "sso", conflicts_with = "sso")]
    pub email: Option<String>,

    /// The tenant's slug, on servers that host more than one (with --sso:
    /// the tenant whose identity provider to use; default `default`)
    #[arg(long, value_name = "SLUG")]
    pub tenant: Option<String>,

    /// Read the password from the first line of standard input
    #[arg(long, conflicts_with = "sso")]
    pub password_stdin: bool,

    /// Sign in through the tenant's identity provider (OIDC) in a browser.
    /// The CLI listens on 127.0.0.1 for the browser to come back, then
    /// exchanges a one-time code for a session.
    #[arg(long)]
    pub sso: bool,

    /// With --sso: print the sign-in URL instead of opening a browser
    #[arg(long, requires = "sso")]
    pub no_browser: bool,
}

/// `mobius sso`: the tenant's single sign-on configuration (owners only).
#[derive(Debug, Subcommand)]
pub enum SsoCommand {
    /// Show the configuration (the client secret is never shown)
    Get,
    /// Replace the configuration
    #[command(after_help = "Example:\n  \
        printf '%s' \"$CLIENT_SECRET\" | mobius sso set \\\n    \
        --issuer-url https://keycloak.example.com/realms/acme --client-id mobius \\\n    \
        --client-secret-stdin --allowed-domain acme.com --groups-claim groups \\\n    \
        --group-role mobius-admins=admin --jit --default-role observer")]
    Set(Box<SsoSetArgs>),
    /// SAML single sign-on (cloud edition, premium)
    #[command(subcommand)]
    Saml(SamlCommand),
}

/// `mobius sso saml`: the tenant's SAML IdP configuration (owners only).
#[derive(Debug, Subcommand)]
pub enum SamlCommand {
    /// Show the configuration and the URLs to give the IdP
    Get,
    /// Replace the configuration
    #[command(after_help = "Example:\n  \
        mobius sso saml set --metadata-url https://idp.example.com/saml/metadata \\\n    \
        --groups-attribute groups --group-role mobius-admins=admin --jit \\\n    \
        --allowed-domain acme.com")]
    Set(Box<SamlSetArgs>),
}

#[derive(Debug, Args)]
pub struct SamlSetArgs {
    /// The IdP metadata XML file
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "metadata_url",
        required_unless_present = "metadata_url"
    )]
    pub metadata: Option<std::path::PathBuf>,
    /// An https URL the server fetches the IdP metadata from (once, now)
    #[arg(long, value_name = "URL")]
    pub metadata_url: Option<String>,
    /// The attribute with the email (default: common names, then the NameID)
    #[arg(long, value_name = "NAME")]
    pub email_attribute: Option<String>,
    /// The attribute with the display name
    #[arg(long, value_name = "NAME")]
    pub name_attribute: Option<String>,
    /// The attribute listing the person's groups
    #[arg(long, value_name = "NAME")]
    pub groups_attribute: Option<String>,
    /// GROUP=ROLE: members of GROUP get ROLE (repeat)
    #[arg(long = "group-role", value_name = "GROUP=ROLE")]
    pub group_roles: Vec<String>,
    /// GROUP=TEAM_ID:TEAM_ROLE: members of GROUP join the team (repeat)
    #[arg(long = "group-team-role", value_name = "GROUP=TEAM_ID:ROLE")]
    pub group_team_roles: Vec<String>,
    /// An email domain allowed to sign in (repeat; none: any)
    #[arg(long = "allowed-domain", value_name = "DOMAIN")]
    pub allowed_domains: Vec<String>,
    /// Create people on their first sign-in
    #[arg(long)]
    pub jit: bool,
    /// The role of people no group matches
    #[arg(long, default_value = "observer")]
    pub default_role: String,
    /// Accept IdP-initiated sign-ins (unsolicited responses)
    #[arg(long)]
    pub allow_idp_initiated: bool,
    /// Store the configuration but turn SAML sign-in off
    #[arg(long)]
    pub disabled: bool,
}

#[derive(Debug, Args)]
pub struct SsoSetArgs {
    /// The identity provider's issuer URL (https)
    #[arg(long, value_name = "URL")]
    pub issuer_url: String,
    /// The client id registered at the identity provider
    #[arg(long)]
    pub client_id: String,
    /// Read the client secret from standard input (kept if omitted)
    #[arg(long)]
    pub client_secret_stdin: bool,
    /// A scope besides `openid` (repeat; default: email profile)
    #[arg(long = "scope", value_name = "SCOPE")]
    pub scopes: Vec<String>,
    /// An email domain allowed to sign in (repeat; none: any)
    #[arg(long = "allowed-domain", value_name = "DOMAIN")]
    pub allowed_domains: Vec<String>,
    /// The ID-token claim listing the person's groups
    #[arg(long, value_name = "CLAIM")]
    pub groups_claim: Option<String>,
    /// GROUP=ROLE: members of GROUP get ROLE (repeat)
    #[arg(long = "group-role", value_name = "GROUP=ROLE")]
    pub group_roles: Vec<String>,
    /// GROUP=TEAM_ID:TEAM_ROLE: members of GROUP join the team (repeat)
    #[arg(long = "group-team-role", value_name = "GROUP=TEAM_ID:ROLE")]
    pub group_team_roles: Vec<String>,
    /// Create people on their first sign-in
    #[arg(long)]
    pub jit: bool,
    /// The role of people no group matches
    #[arg(long, default_value = "observer")]
    pub default_role: String,
    /// Refuse password login except for break-glass owners
    #[arg(long)]
    pub sso_required: bool,
    /// An owner's user id that may still use a password (repeat)
    #[arg(long = "break-glass", value_name = "USER_ID")]
    pub break_glass: Vec<String>,
    /// An origin a browser sign-in may return to (repeat)
    #[arg(long = "redirect-origin", value_name = "ORIGIN")]
    pub redirect_origins: Vec<String>,
    /// Store the configuration but turn single sign-on off
    #[arg(long)]
    pub disabled: bool,
}

/// Sites and teams are both plain named collections, so they share their
/// subcommands.
#[derive(Debug, Subcommand)]
pub enum NamedResourceCommand {
    /// List them
    List(ListArgs),
    /// Create one
    Create {
        /// The new name, unique in the tenant
        name: String,
    },
    /// Delete one
    Delete {
        /// Its ID
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// List users
    List(ListArgs),
    /// Invite someone by email; prints the invitation code to send them
    Invite {
        /// Their email address
        email: String,
        /// The role they will have
        #[arg(long, value_enum, ignore_case = true)]
        role: Role,
    },
    /// Remove a user from the tenant
    Delete {
        /// The user's ID
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ApiTokensCommand {
    /// List API tokens, including revoked and expired ones
    List(ListArgs),
    /// Create a token; it is printed once and cannot be shown again
    Create(CreateApiTokenArgs),
    /// Revoke a token (it stays listed, with its revocation time)
    Delete {
        /// The token's ID (not the token itself)
        id: String,
    },
}

#[derive(Debug, Args)]
pub struct CreateApiTokenArgs {
    /// A name that says what the token is for
    pub name: String,

    /// The role the token acts with
    #[arg(long, value_enum, ignore_case = true)]
    pub role: Role,

    /// Limit the token to one team's devices
    #[arg(long, value_name = "ID")]
    pub team_id: Option<String>,

    /// Days until the token expires [default: the server's]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub expires_in_days: Option<u32>,
}

#[derive(Debug, Subcommand)]
pub enum DevicesCommand {
    /// List devices, optionally filtered
    List(DeviceListArgs),
    /// Revoke a device: its agent is refused within seconds and stops
    Revoke {
        /// The device's ID
        id: String,
    },
    /// Delete a device (its certificate is refused from then on)
    Delete {
        /// The device's ID
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum EnrollTokensCommand {
    /// List enrollment tokens (without their secrets)
    List(ListArgs),
    /// Create a token; it is printed once and cannot be shown again
    Create(CreateEnrollTokenArgs),
    /// Revoke a token so no further agent can use it
    Revoke {
        /// The token's ID (not the token itself)
        id: String,
    },
}

#[derive(Debug, Args)]
pub struct CreateEnrollTokenArgs {
    /// The site enrolled devices join
    #[arg(long, value_name = "ID")]
    pub site_id: String,

    /// A name that says what the token is for
    #[arg(long, default_value = "enrollment token")]
    pub name: String,

    /// Minutes until the token expires (at most a week)
    #[arg(long, value_name = "MINUTES", default_value_t = 15, value_parser = clap::value_parser!(u32).range(1..=10080))]
    pub ttl_minutes: u32,

    /// How many agents may enroll with it
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100000))]
    pub max_uses: u32,

    /// Only agents connecting from this address or CIDR network (repeatable)
    #[arg(long = "allowed-ip", value_name = "IP_OR_CIDR")]
    pub allowed_ips: Vec<String>,
}

#[derive(Debug, Args)]
pub struct DeviceListArgs {
    /// Only devices reporting this OS name (as in `devices list`)
    #[arg(long = "os", value_name = "NAME")]
    pub os_name: Option<String>,

    /// Only devices in this site
    #[arg(long, value_name = "ID")]
    pub site_id: Option<String>,

    /// Only devices in this team
    #[arg(long, value_name = "ID")]
    pub team_id: Option<String>,

    /// Only devices with this status
    #[arg(long, value_enum, ignore_case = true)]
    pub status: Option<DeviceStatus>,

    /// Only devices whose hostname contains this text
    #[arg(long, value_name = "HOSTNAME")]
    pub search: Option<String>,

    /// Sort order
    #[arg(long, value_enum, ignore_case = true, default_value_t = DeviceOrder::Hostname)]
    pub order_by: DeviceOrder,

    #[command(flatten)]
    pub list: ListArgs,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List audit events
    List(ListArgs),
}

#[derive(Clone, Copy, Debug, Args)]
pub struct ListArgs {
    /// Show at most this many rows
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
}

#[derive(Debug, Args)]
pub struct GraphqlArgs {
    /// The query or mutation text; `-` reads it from standard input
    pub query: String,

    /// Variables as a JSON object
    #[arg(long, value_name = "JSON", value_parser = parse_variables)]
    pub variables: Option<serde_json::Map<String, serde_json::Value>>,
}

/// A role, as `--role` accepts it (any case).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Role {
    Owner,
    Admin,
    Maintainer,
    Observer,
    Gitops,
}

impl Role {
    /// The GraphQL enum value.
    pub fn as_graphql(self) -> &'static str {
        match self {
            Role::Owner => "OWNER",
            Role::Admin => "ADMIN",
            Role::Maintainer => "MAINTAINER",
            Role::Observer => "OBSERVER",
            Role::Gitops => "GITOPS",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeviceStatus {
    Online,
    Offline,
    NeverSeen,
    Revoked,
}

impl DeviceStatus {
    /// The GraphQL enum value.
    pub fn as_graphql(self) -> &'static str {
        match self {
            DeviceStatus::Online => "ONLINE",
            DeviceStatus::Offline => "OFFLINE",
            DeviceStatus::NeverSeen => "NEVER_SEEN",
            DeviceStatus::Revoked => "REVOKED",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeviceOrder {
    Hostname,
    LastSeen,
}

impl DeviceOrder {
    /// The GraphQL enum value.
    pub fn as_graphql(self) -> &'static str {
        match self {
            DeviceOrder::Hostname => "HOSTNAME",
            DeviceOrder::LastSeen => "LAST_SEEN",
        }
    }
}

/// Accepts only absolute http(s) URLs, so a typo like `localhost:8080` is a
/// usage error rather than a confusing transport error later. A trailing
/// slash is dropped, so saved and given servers compare equal.
fn parse_server_url(value: &str) -> Result<String, String> {
    let trimmed = value.trim().trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("http://")
        .or_else(|| trimmed.strip_prefix("https://"));
    match rest {
        Some(host) if !host.is_empty() => Ok(trimmed.to_owned()),
        _ => Err(format!(
            "'{value}' is not a server URL; expected e.g. http://127.0.0.1:8080"
        )),
    }
}

fn parse_variables(value: &str) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    match serde_json::from_str(value) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err("variables must be a JSON object, e.g. '{\"first\": 10}'".to_owned()),
        Err(err) => Err(format!("not valid JSON: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn roles_parse_in_any_case() {
        for (text, role) in [
            ("owner", Role::Owner),
            ("ADMIN", Role::Admin),
            ("Maintainer", Role::Maintainer),
            ("observer", Role::Observer),
            ("GitOps", Role::Gitops),
        ] {
            let cli =
                Cli::try_parse_from(["mobius", "users", "invite", "a@example.com", "--role", text])
                    .unwrap_or_else(|err| panic!("{text}: {err}"));
            match cli.command {
                Command::Users(UsersCommand::Invite { role: parsed, .. }) => {
                    assert_eq!(parsed, role)
                }
                other => panic!("parsed as {other:?}"),
            }
        }
        assert_eq!(Role::Gitops.as_graphql(), "GITOPS");
    }

    #[test]
    fn an_unknown_role_is_a_usage_error() {
        let err = Cli::try_parse_from([
            "mobius",
            "users",
            "invite",
            "a@example.com",
            "--role",
            "root",
        ])
        .expect_err("root is not a role");
        assert_eq!(err.exit_code(), 2);
        assert!(
            err.to_string().contains("owner"),
            "lists the choices: {err}"
        );
    }

    #[test]
    fn device_filters_map_to_graphql_values() {
        let cli = Cli::try_parse_from([
            "mobius",
            "devices",
            "list",
            "--status",
            "never-seen",
            "--order-by",
            "last-seen",
            "--limit",
            "7",
        ])
        .expect("valid");
        let Command::Devices(DevicesCommand::List(args)) = cli.command else {
            panic!("not devices list");
        };
        assert_eq!(
            args.status.map(DeviceStatus::as_graphql),
            Some("NEVER_SEEN")
        );
        assert_eq!(args.order_by.as_graphql(), "LAST_SEEN");
        assert_eq!(args.list.limit, 7);
    }

    #[test]
    fn server_urls_must_be_http() {
        assert_eq!(
            parse_server_url("https://mobius.example.com/").as_deref(),
            Ok("https://mobius.example.com")
        );
        assert!(parse_server_url("localhost:8080").is_err());
        assert!(parse_server_url("http://").is_err());
    }

    #[test]
    fn variables_must_be_an_object() {
        assert!(parse_variables(r#"{"first": 3}"#).is_ok());
        assert!(parse_variables("[1]").is_err());
        assert!(parse_variables("{").is_err());
        let err = Cli::try_parse_from([
            "mobius",
            "graphql",
            "query { viewer { kind } }",
            "--variables",
            "nope",
        ])
        .expect_err("bad JSON");
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn a_zero_limit_is_a_usage_error() {
        assert!(Cli::try_parse_from(["mobius", "sites", "list", "--limit", "0"]).is_err());
    }
}
