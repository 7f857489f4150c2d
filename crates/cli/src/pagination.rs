//! Reading a whole list through the API's cursor connections: pages of at
//! most [`MAX_PAGE_SIZE`], following `pageInfo.endCursor`, until `--limit`
//! rows or the end.

use anyhow::Result;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::client::Client;
use crate::output;

/// The server caps `first` at 500; asking for more would only be trimmed.
pub const MAX_PAGE_SIZE: u32 = 500;

/// One page of a connection. List documents select
/// `nodes { ... } pageInfo { hasNextPage endCursor } totalCount`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    pub nodes: Vec<T>,
    pub page_info: PageInfo,
    #[serde(default)]
    pub total_count: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PageInfo {
    pub has_next_page: bool,
    pub end_cursor: Option<String>,
}

/// The rows of a list, and whether `--limit` cut it short.
#[derive(Debug)]
pub struct Listing<T> {
    pub rows: Vec<T>,
    pub total_count: Option<u64>,
    pub truncated: bool,
}

impl<T> Listing<T> {
    /// Tells the user (on stderr) when there is more than was shown.
    pub fn note_truncation(&self, plural_noun: &str) {
        if !self.truncated {
            return;
        }
        let shown = self.rows.len();
        let of_total = match self.total_count {
            Some(total) => format!(" of {total}"),
            None => String::new(),
        };
        output::notice(&format!(
            "showing the first {shown}{of_total} {plural_noun}; pass --limit to see more"
        ));
    }
}

/// Fetches the list at `data[field]`, passing `filters` plus `first` and
/// `after` to `document`, which must declare `$first: Int, $after: String`.
pub async fn fetch_list<T: DeserializeOwned>(
    client: &mut Client,
    field: &str,
    document: &str,
    filters: Map<String, Value>,
    limit: u32,
) -> Result<Listing<T>> {
    collect_pages(limit, async |first, after| {
        let mut variables = filters.clone();
        variables.insert("first".to_owned(), first.into());
        if let Some(after) = after {
            variables.insert("after".to_owned(), after.into());
        }
        client
            .query(field, document, Value::Object(variables))
            .await
    })
    .await
}

/// The paging loop, apart from HTTP so it can be tested: `fetch_page` is
/// called with `first` and the cursor to continue after.
pub async fn collect_pages<T>(
    limit: u32,
    mut fetch_page: impl AsyncFnMut(u32, Option<String>) -> Result<Page<T>>,
) -> Result<Listing<T>> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut rows = Vec::new();
    let mut after = None;
    let mut total_count = None;
    loop {
        let remaining = limit - rows.len();
        let first = u32::try_from(remaining)
            .unwrap_or(u32::MAX)
            .min(MAX_PAGE_SIZE);
        let page = fetch_page(first, after.clone()).await?;
        total_count = page.total_count.or(total_count);

        let received = page.nodes.len();
        rows.extend(page.nodes.into_iter().take(remaining));
        let more_on_server = page.page_info.has_next_page || received > remaining;
        if rows.len() >= limit {
            return Ok(Listing {
                rows,
                total_count,
                truncated: more_on_server,
            });
        }

        // Stop rather than loop forever if the server says there is more
        // but gives no way, or no new way, to get it.
        let next = page
            .page_info
            .end_cursor
            .filter(|cursor| Some(cursor) != after.as_ref());
        match next {
            Some(cursor) if page.page_info.has_next_page && received > 0 => after = Some(cursor),
            _ => {
                return Ok(Listing {
                    rows,
                    total_count,
                    truncated: false,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake connection over `0..total`, with cursors that are the index
    /// of the last row sent.
    struct FakeConnection {
        total: u32,
        requests: Vec<(u32, Option<String>)>,
    }

    impl FakeConnection {
        fn new(total: u32) -> Self {
            FakeConnection {
                total,
                requests: Vec::new(),
            }
        }

        fn page(&mut self, first: u32, after: Option<String>) -> Result<Page<u32>> {
            self.requests.push((first, after.clone()));
            let start = after.map_or(0, |cursor| cursor.parse::<u32>().expect("cursor") + 1);
            let end = (start + first.min(MAX_PAGE_SIZE)).min(self.total);
            Ok(Page {
                nodes: (start..end).collect(),
                page_info: PageInfo {
                    has_next_page: end < self.total,
                    end_cursor: (end > start).then(|| (end - 1).to_string()),
                },
                total_count: Some(u64::from(self.total)),
            })
        }
    }

    fn run<T>(future: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(future)
    }

    #[test]
    fn follows_cursors_until_the_limit() {
        let mut fake = FakeConnection::new(1200);
        let listing = run(collect_pages(1100, async |first, after| {
            fake.page(first, after)
        }))
        .expect("list");
        assert_eq!(listing.rows.len(), 1100);
        assert_eq!(listing.rows[1099], 1099);
        assert!(listing.truncated);
        assert_eq!(listing.total_count, Some(1200));
        assert_eq!(
            fake.requests,
            [
                (500, None),
                (500, Some("499".to_owned())),
                (100, Some("999".to_owned())),
            ]
        );
    }

    #[test]
    fn stops_at_the_end_without_claiming_truncation() {
        let mut fake = FakeConnection::new(120);
        let listing = run(collect_pages(100, async |first, after| {
            fake.page(first, after)
        }))
        .expect("list");
        assert_eq!(listing.rows.len(), 100);
        assert!(listing.truncated);

        let mut fake = FakeConnection::new(100);
        let listing = run(collect_pages(100, async |first, after| {
            fake.page(first, after)
        }))
        .expect("list");
        assert_eq!(listing.rows.len(), 100);
        assert!(!listing.truncated);

        let mut fake = FakeConnection::new(0);
        let listing = run(collect_pages(100, async |first, after| {
            fake.page(first, after)
        }))
        .expect("list");
        assert!(listing.rows.is_empty());
        assert!(!listing.truncated);
        assert_eq!(fake.requests.len(), 1);
    }

    #[test]
    fn a_server_that_ignores_first_is_trimmed_to_the_limit() {
        let listing = run(collect_pages(2, async |_, _| {
            Ok(Page {
                nodes: vec![1, 2, 3],
                page_info: PageInfo {
                    has_next_page: false,
                    end_cursor: None,
                },
                total_count: None,
            })
        }))
        .expect("list");
        assert_eq!(listing.rows, [1, 2]);
        assert!(listing.truncated);
    }

    #[test]
    fn a_repeated_cursor_ends_the_loop() {
        let mut calls = 0;
        let listing = run(collect_pages(1000, async |_, _| {
            calls += 1;
            Ok(Page {
                nodes: vec![calls],
                page_info: PageInfo {
                    has_next_page: true,
                    end_cursor: Some("same".to_owned()),
                },
                total_count: None,
            })
        }))
        .expect("list");
        assert_eq!(listing.rows, [1, 2]);
    }
}
