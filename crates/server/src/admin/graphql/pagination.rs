//! Relay connections: `first`/`after` windows over opaque cursors,
//! `totalCount`, and building a connection from one page of rows.

use crate::admin::graphql::prelude::*;

/// Largest page a client may ask for.
pub const MAX_PAGE: i32 = 500;

pub const DEFAULT_PAGE: i32 = 50;

/// `totalCount` on every connection.
#[derive(SimpleObject)]
pub struct TotalCount {
    pub total_count: i64,
}

pub type Page<T> = Connection<String, T, TotalCount, EmptyFields>;

/// Decodes `first`/`after` into an offset and limit. Cursors are opaque
/// offsets; `first` is capped at [`MAX_PAGE`].
pub fn page_window(first: Option<i32>, after: Option<&str>) -> Result<(u64, u64)> {
    let first = first.unwrap_or(DEFAULT_PAGE);
    if first < 0 {
        return Err(errors::bad_input("first", "must not be negative"));
    }
    let offset = match after {
        None => 0,
        Some(cursor) => {
            decode_cursor(cursor)
                .ok_or_else(|| errors::bad_input("after", "not a cursor from this API"))?
                + 1
        }
    };
    Ok((offset, first.min(MAX_PAGE) as u64))
}

pub(crate) fn encode_cursor(position: u64) -> String {
    URL_SAFE_NO_PAD.encode(format!("o:{position}"))
}

pub(crate) fn decode_cursor(cursor: &str) -> Option<u64> {
    let bytes = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    String::from_utf8(bytes)
        .ok()?
        .strip_prefix("o:")?
        .parse()
        .ok()
}

/// Builds a connection from one page of rows.
pub fn page<T: async_graphql::OutputType, R>(
    rows: Vec<R>,
    total: u64,
    offset: u64,
    to_node: impl Fn(R) -> T,
) -> Page<T> {
    let count = rows.len() as u64;
    let mut connection = Connection::with_additional_fields(
        offset > 0,
        offset + count < total,
        TotalCount {
            total_count: total as i64,
        },
    );
    connection.edges.extend(
        rows.into_iter()
            .enumerate()
            .map(|(i, row)| Edge::new(encode_cursor(offset + i as u64), to_node(row))),
    );
    connection
}
