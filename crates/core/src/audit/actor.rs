//! Actors: who made a change, and from where.

use sea_orm::prelude::Uuid;

/// Who made a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActorKind {
    /// The server itself (bootstrap, background jobs).
    System,
    User,
    ApiToken,
    Device,
}

impl ActorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::System => "system",
            ActorKind::User => "user",
            ActorKind::ApiToken => "api_token",
            ActorKind::Device => "device",
        }
    }
}

/// The author of a change and where the request came from.
#[derive(Clone, Debug)]
pub struct Actor {
    pub kind: ActorKind,
    pub id: Option<Uuid>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

impl Actor {
    pub fn system() -> Actor {
        Actor {
            kind: ActorKind::System,
            id: None,
            ip: None,
            user_agent: None,
        }
    }
}
