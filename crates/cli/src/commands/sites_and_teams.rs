//! `sites` and `teams`: two collections of named things with the same
//! shape and the same three operations, described once by [`Collection`].

use anyhow::Result;
use serde::{Deserialize, Serialize};
use serde_json::{Map, json};

use super::Context;
use crate::cli::NamedResourceCommand;
use crate::output::Tabular;
use crate::pagination::fetch_list;

/// The GraphQL names for one collection.
pub struct Collection {
    singular: &'static str,
    plural: &'static str,
    list_field: &'static str,
    list_document: &'static str,
    create_field: &'static str,
    create_document: &'static str,
    delete_field: &'static str,
    delete_document: &'static str,
}

pub const SITES: Collection = Collection {
    singular: "site",
    plural: "sites",
    list_field: "sites",
    list_document: "query Sites($first: Int, $after: String) {
      sites(first: $first, after: $after) {
        nodes { id name createdAt updatedAt }
        pageInfo { hasNextPage endCursor }
        totalCount
      }
    }",
    create_field: "createSite",
    create_document: "mutation CreateSite($input: SiteInput!) {
      createSite(input: $input) { id name createdAt updatedAt }
    }",
    delete_field: "deleteSite",
    delete_document: "mutation DeleteSite($id: ID!) { deleteSite(id: $id) }",
};

pub const TEAMS: Collection = Collection {
    singular: "team",
    plural: "teams",
    list_field: "teams",
    list_document: "query Teams($first: Int, $after: String) {
      teams(first: $first, after: $after) {
        nodes { id name createdAt updatedAt }
        pageInfo { hasNextPage endCursor }
        totalCount
      }
    }",
    create_field: "createTeam",
    create_document: "mutation CreateTeam($input: TeamInput!) {
      createTeam(input: $input) { id name createdAt updatedAt }
    }",
    delete_field: "deleteTeam",
    delete_document: "mutation DeleteTeam($id: ID!) { deleteTeam(id: $id) }",
};

/// A site or a team.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Named {
    pub id: String,
    pub name: String,
    pub created_at: String,
    pub updated_at: String,
}

impl Tabular for Named {
    fn columns() -> &'static [&'static str] {
        &["ID", "NAME", "CREATED", "UPDATED"]
    }

    fn cells(&self) -> Vec<String> {
        vec![
            self.id.clone(),
            self.name.clone(),
            self.created_at.clone(),
            self.updated_at.clone(),
        ]
    }
}

pub async fn run(
    ctx: &Context,
    collection: &Collection,
    command: NamedResourceCommand,
) -> Result<()> {
    let mut client = ctx.client()?;
    match command {
        NamedResourceCommand::List(args) => {
            let listing = fetch_list::<Named>(
                &mut client,
                collection.list_field,
                collection.list_document,
                Map::new(),
                args.limit,
            )
            .await?;
            ctx.output.list(&listing.rows)?;
            listing.note_truncation(collection.plural);
            Ok(())
        }
        NamedResourceCommand::Create { name } => {
            let created: Named = client
                .query(
                    collection.create_field,
                    collection.create_document,
                    json!({ "input": { "name": name } }),
                )
                .await?;
            ctx.output.item(&created)
        }
        NamedResourceCommand::Delete { id } => {
            let deleted: String = client
                .query(
                    collection.delete_field,
                    collection.delete_document,
                    json!({ "id": id }),
                )
                .await?;
            ctx.output.confirmation(
                &format!("deleted {} {deleted}", collection.singular),
                &json!({ "id": deleted }),
            )
        }
    }
}
