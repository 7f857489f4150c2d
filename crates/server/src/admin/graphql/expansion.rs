//! A bound on how large a query becomes once its fragments are expanded,
//! checked right after parsing and before validation.
//!
//! async-graphql's own limits do not bound it: `limit_recursive_depth` and
//! `limit_directives` look at the document as written, and the depth and
//! complexity rules run during validation, whose visitor walks every
//! fragment spread into its definition. So 25 fragments that each spread
//! the next twice (1 KB of text) make validation visit 2^25 selections: an
//! unauthenticated request ran 38 s and took the server to 6.6 GB before
//! any limit answered (async-graphql's recursive-depth check, run as part
//! of parsing, also walks every spread). Here each fragment's expanded size is computed once
//! and reused, so the check is linear in the document's length.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextParseQuery};
use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};
use async_graphql::{ErrorExtensionValues, Name, ServerError, ServerResult, Variables};

use crate::http::errors::ErrorCode;

/// Most selections an operation may hold with its fragments expanded.
/// GraphiQL's introspection query holds a few hundred; a 500-device page
/// with its sites and teams well under a hundred.
pub const MAX_EXPANDED_SELECTIONS: u64 = 10_000;

/// Refuses documents whose expanded size exceeds [`MAX_EXPANDED_SELECTIONS`].
pub struct ExpansionLimit;

impl ExtensionFactory for ExpansionLimit {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(ExpansionLimit)
    }
}

#[async_trait::async_trait]
impl Extension for ExpansionLimit {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        // Parsed here first because the chain's own parse step also runs
        // async-graphql's recursive-depth check, which walks every spread
        // into its fragment without memoising: 10 s on the bomb above.
        // A document that does not parse is left to that step to report.
        let too_large = async_graphql::parser::parse_query(query)
            .is_ok_and(|document| expanded_size(&document) > MAX_EXPANDED_SELECTIONS);
        if too_large {
            let mut error = ServerError::new(
                format!(
                    "query too large: more than {MAX_EXPANDED_SELECTIONS} selections once its \
                     fragments are expanded"
                ),
                None,
            );
            let mut extensions = ErrorExtensionValues::default();
            extensions.set("code", ErrorCode::BadUserInput.as_str());
            error.extensions = Some(extensions);
            return Err(error);
        }
        next.run(ctx, query, variables).await
    }
}

/// The number of selections of all operations with every fragment spread
/// replaced by its fragment, saturating.
pub fn expanded_size(document: &ExecutableDocument) -> u64 {
    let mut sizes = FragmentSizes {
        document,
        known: HashMap::new(),
    };
    document
        .operations
        .iter()
        .map(|(_, op)| sizes.selection_set(&op.node.selection_set.node))
        .fold(0, u64::saturating_add)
}

struct FragmentSizes<'a> {
    document: &'a ExecutableDocument,
    /// `None` while a fragment is being measured: a spread that meets it
    /// is a cycle, counted as 0 here and refused by validation.
    known: HashMap<&'a Name, Option<u64>>,
}

impl<'a> FragmentSizes<'a> {
    fn selection_set(&mut self, set: &'a SelectionSet) -> u64 {
        set.items
            .iter()
            .map(|item| match &item.node {
                Selection::Field(field) => {
                    1u64.saturating_add(self.selection_set(&field.node.selection_set.node))
                }
                Selection::InlineFragment(inline) => {
                    self.selection_set(&inline.node.selection_set.node)
                }
                Selection::FragmentSpread(spread) => self.fragment(&spread.node.fragment_name.node),
            })
            .fold(0, u64::saturating_add)
    }

    fn fragment(&mut self, name: &'a Name) -> u64 {
        if let Some(known) = self.known.get(name) {
            return known.unwrap_or(0);
        }
        // An unknown fragment is validation's to report.
        let Some(fragment) = self.document.fragments.get(name) else {
            return 0;
        };
        self.known.insert(name, None);
        let size = self.selection_set(&fragment.node.selection_set.node);
        self.known.insert(name, Some(size));
        size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bomb(levels: usize) -> String {
        let mut query = String::from("query { ...F0 }");
        for i in 0..levels - 1 {
            query.push_str(&format!(
                " fragment F{i} on Query {{ ...F{n} ...F{n} }}",
                n = i + 1
            ));
        }
        query.push_str(&format!(
            " fragment F{} on Query {{ viewer {{ kind }} }}",
            levels - 1
        ));
        query
    }

    #[test]
    fn fragments_count_once_per_spread_and_are_measured_once() {
        let doc = async_graphql::parser::parse_query(bomb(3)).unwrap();
        // F2 = 2 (viewer, kind); F1 = 2 * F2; F0 = 2 * F1.
        assert_eq!(expanded_size(&doc), 8);
        let doc = async_graphql::parser::parse_query(bomb(25)).unwrap();
        assert_eq!(expanded_size(&doc), 2 << 24);
    }

    #[test]
    fn cycles_terminate() {
        let doc = async_graphql::parser::parse_query(
            "query { ...A } fragment A on Query { ...B } fragment B on Query { ...A viewer { kind } }",
        )
        .unwrap();
        assert_eq!(expanded_size(&doc), 2);
    }
}
