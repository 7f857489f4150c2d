//! One module per area of the API; each turns parsed arguments into
//! GraphQL operations and prints the result.

pub mod api_tokens;
pub mod audit;
pub mod backbone;
pub mod config;
pub mod devices;
mod enrollment_tokens;
pub mod graphql;
pub mod license;
pub mod plans;
pub mod policies;
pub mod portal;
pub mod queries;
pub mod session;
pub mod sites_and_teams;
pub mod software;
pub mod sso;
pub mod users;

use anyhow::Result;

use crate::cli::{Cli, Command, DEFAULT_SERVER, GlobalArgs};
use crate::client::{Auth, Client};
use crate::credentials::{CredentialStore, Credentials, Secret};
use crate::output::Output;

const NOT_LOGGED_IN: &str = "not logged in; run 'mobius login' or pass --token";

/// What every command needs: where the server is, who to be, how to print.
pub struct Context {
    server_flag: Option<String>,
    token: Option<Secret>,
    store: CredentialStore,
    pub output: Output,
}

impl Context {
    pub fn new(globals: GlobalArgs) -> Self {
        Context {
            server_flag: globals.server,
            // `MOBIUS_TOKEN=` (set but empty) means no token, not an empty one.
            token: globals.token.filter(|token| !token.expose().is_empty()),
            store: CredentialStore::new(globals.config_dir),
            output: Output::new(globals.output),
        }
    }

    pub fn store(&self) -> &CredentialStore {
        &self.store
    }

    /// A client acting with `--token` if given, else the saved login. The
    /// saved login is used only for the server it was made on, so pointing
    /// `--server` elsewhere never sends its tokens to another host.
    pub fn client(&self) -> Result<Client> {
        let saved = self.store.load();
        let server = self.server(saved.as_ref().ok().and_then(Option::as_ref));
        let auth = match (&self.token, saved) {
            (Some(token), _) => Auth::Token(token.clone()),
            (None, Ok(Some(credentials))) if same_server(&credentials.server, &server) => {
                Auth::Session {
                    credentials,
                    store: self.store.clone(),
                }
            }
            (None, Ok(Some(credentials))) => Auth::Anonymous {
                hint: format!(
                    "not logged in to {server} (the saved login is for {}); run 'mobius login --server {server}' or pass --token",
                    credentials.server
                ),
            },
            (None, Ok(None)) => Auth::Anonymous {
                hint: NOT_LOGGED_IN.to_owned(),
            },
            (None, Err(err)) => Auth::Anonymous {
                hint: format!("{err:#}"),
            },
        };
        Client::new(server, auth)
    }

    /// A client that sends no credentials, for `setup` and `login`.
    pub fn anonymous_client(&self) -> Result<Client> {
        // An unreadable saved login only loses its server as the default;
        // logging in replaces it anyway.
        let saved = self.store.load().ok().flatten();
        let server = self.server(saved.as_ref());
        Client::new(
            server,
            Auth::Anonymous {
                hint: NOT_LOGGED_IN.to_owned(),
            },
        )
    }

    /// A client for the saved login on the server it belongs to, whatever
    /// `--server` says; `None` when there is no saved login.
    pub fn saved_session_client(&self) -> Result<Option<Client>> {
        let Some(credentials) = self.store.load()? else {
            return Ok(None);
        };
        let server = credentials.server.clone();
        let auth = Auth::Session {
            credentials,
            store: self.store.clone(),
        };
        Ok(Some(Client::new(server, auth)?))
    }

    /// `--server` / `MOBIUS_SERVER`, else the saved login's, else the default.
    fn server(&self, saved: Option<&Credentials>) -> String {
        self.server_flag
            .clone()
            .or_else(|| {
                saved.map(|credentials| credentials.server.trim_end_matches('/').to_owned())
            })
            .unwrap_or_else(|| DEFAULT_SERVER.to_owned())
    }
}

fn same_server(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

pub async fn run(cli: Cli) -> Result<()> {
    let ctx = Context::new(cli.globals);
    match cli.command {
        Command::Setup(args) => session::setup(&ctx, args).await,
        Command::Login(args) if args.sso => sso::login(&ctx, args).await,
        Command::Login(args) => session::login(&ctx, args).await,
        Command::Sso(command) => sso::run(&ctx, command).await,
        Command::Logout => session::logout(&ctx).await,
        Command::Whoami => session::whoami(&ctx).await,
        Command::Sites(command) => {
            sites_and_teams::run(&ctx, &sites_and_teams::SITES, command).await
        }
        Command::Teams(command) => {
            sites_and_teams::run(&ctx, &sites_and_teams::TEAMS, command).await
        }
        Command::Users(command) => users::run(&ctx, command).await,
        Command::ApiTokens(command) => api_tokens::run(&ctx, command).await,
        Command::Devices(command) => devices::run(&ctx, command).await,
        Command::EnrollTokens(command) => enrollment_tokens::run(&ctx, command).await,
        Command::Audit(command) => audit::run(&ctx, command).await,
        Command::License(command) => license::run(&ctx, command).await,
        Command::Backbone(command) => backbone::run(&ctx, command).await,
        Command::Graphql(args) => graphql::run(&ctx, args).await,
        Command::Plans(command) => plans::run(&ctx, command).await,
        Command::Software(command) => software::run(&ctx, command).await,
        Command::Query(command) => queries::run(&ctx, command).await,
        Command::Policies(command) => policies::run(&ctx, command).await,
        Command::Config(command) => config::run(&ctx, command).await,
        Command::Portal(command) => portal::run(&ctx, command).await,
        Command::Run(args) => {
            let code = plans::run_command(&ctx, args).await?;
            use std::io::Write;
            let _ = std::io::stdout().flush();
            std::process::exit(code)
        }
    }
}
