//! `graphql`: any document, for what the other commands do not cover.

use std::io::Read;

use anyhow::{Context as _, Result};
use serde_json::Value;

use super::Context;
use crate::cli::GraphqlArgs;
use crate::error::UsageError;

pub async fn run(ctx: &Context, args: GraphqlArgs) -> Result<()> {
    let document = if args.query == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the query from standard input")?;
        text
    } else {
        args.query
    };
    if document.trim().is_empty() {
        return Err(UsageError("the query is empty".to_owned()).into());
    }

    let mut client = ctx.client()?;
    let variables = Value::Object(args.variables.unwrap_or_default());
    let data = client.run_document(&document, variables).await?;
    ctx.output.raw_json(&data)
}
