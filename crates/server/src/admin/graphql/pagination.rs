//! Relay connections: `first`/`after` and `last`/`before` windows over
//! opaque cursors, `totalCount`, and building a connection from one page
//! of rows.

use std::future::Future;

use crate::admin::graphql::prelude::*;

/// Largest page a client may ask for.
pub const MAX_PAGE: i32 = 500;

pub const DEFAULT_PAGE: i32 = 50;

/// Cursors name positions below this; anything larger did not come from
/// this API (and would overflow the database's 64-bit offsets).
const MAX_POSITION: u64 = 1 << 48;

/// `totalCount` on every connection.
#[derive(SimpleObject)]
pub struct TotalCount {
    pub total_count: i64,
}

pub type Page<T> = Connection<String, T, TotalCount, EmptyFields>;

/// The window a connection's arguments ask for: positions after `after`
/// and before `before`, then the first `first` of those, then the last
/// `last` of what remains. Neither `first` nor `last` means the first
/// [`DEFAULT_PAGE`]; both are capped at [`MAX_PAGE`].
#[derive(Clone, Copy, Debug)]
pub struct Window {
    lower: u64,
    upper: Option<u64>,
    first: Option<u64>,
    last: Option<u64>,
}

impl Window {
    pub fn new(
        first: Option<i32>,
        after: Option<String>,
        last: Option<i32>,
        before: Option<String>,
    ) -> Result<Window> {
        let count = |value: Option<i32>, name: &str| match value {
            Some(n) if n < 0 => Err(errors::bad_input(name, "must not be negative")),
            Some(n) => Ok(Some(n.min(MAX_PAGE) as u64)),
            None => Ok(None),
        };
        let mut first = count(first, "first")?;
        let last = count(last, "last")?;
        if first.is_none() && last.is_none() {
            first = Some(DEFAULT_PAGE as u64);
        }
        let position = |cursor: Option<String>, name: &str| {
            cursor
                .map(|c| {
                    decode_cursor(&c)
                        .ok_or_else(|| errors::bad_input(name, "not a cursor from this API"))
                })
                .transpose()
        };
        Ok(Window {
            lower: position(after, "after")?.map_or(0, |p| p + 1),
            upper: position(before, "before")?,
            first,
            last,
        })
    }

    /// Whether the offset depends on the total (`last` counted from the
    /// end of an unbounded list).
    fn needs_total(&self) -> bool {
        self.last.is_some() && self.upper.is_none() && self.first.is_none()
    }

    /// Offset and limit of the rows to fetch.
    fn offset_limit(&self, total: Option<u64>) -> (u64, u64) {
        let start = self.lower;
        let mut end = self.upper.or(total).unwrap_or(u64::MAX).max(start);
        if let Some(first) = self.first {
            end = end.min(start.saturating_add(first));
        }
        let start = match self.last {
            Some(last) if end != u64::MAX => start.max(end.saturating_sub(last)),
            _ => start,
        };
        (start, (end - start).min(MAX_PAGE as u64))
    }
}

impl Window {
    /// Fetches the window's rows with `fetch(offset, limit)`, which returns
    /// a page and the total; answers the rows, the total and the offset.
    pub async fn fetch<R, F, Fut>(&self, fetch: F) -> Result<(Vec<R>, u64, u64)>
    where
        F: Fn(u64, u64) -> Fut,
        Fut: Future<Output = Result<(Vec<R>, u64), StoreError>>,
    {
        let total = match self.needs_total() {
            true => Some(fetch(0, 0).await.map_err(errors::store)?.1),
            false => None,
        };
        let (offset, limit) = self.offset_limit(total);
        let (rows, total) = fetch(offset, limit).await.map_err(errors::store)?;
        Ok((rows, total, offset))
    }
}

/// Fetches the window's rows (see [`Window::fetch`]) and builds the
/// connection.
pub async fn paged<R, T, F, Fut>(
    window: Window,
    fetch: F,
    to_node: impl Fn(R) -> T,
) -> Result<Page<T>>
where
    T: async_graphql::OutputType,
    F: Fn(u64, u64) -> Fut,
    Fut: Future<Output = Result<(Vec<R>, u64), StoreError>>,
{
    let (rows, total, offset) = window.fetch(fetch).await?;
    Ok(page(rows, total, offset, to_node))
}

pub(crate) fn encode_cursor(position: u64) -> String {
    URL_SAFE_NO_PAD.encode(format!("o:{position}"))
}

pub(crate) fn decode_cursor(cursor: &str) -> Option<u64> {
    let bytes = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    let position: u64 = String::from_utf8(bytes)
        .ok()?
        .strip_prefix("o:")?
        .parse()
        .ok()?;
    (position < MAX_POSITION).then_some(position)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn window(
        first: Option<i32>,
        after: Option<u64>,
        last: Option<i32>,
        before: Option<u64>,
    ) -> Window {
        Window::new(
            first,
            after.map(encode_cursor),
            last,
            before.map(encode_cursor),
        )
        .unwrap()
    }

    #[test]
    fn windows_follow_relay_semantics() {
        assert_eq!(window(None, None, None, None).offset_limit(None), (0, 50));
        assert_eq!(
            window(Some(10), Some(4), None, None).offset_limit(None),
            (5, 10)
        );
        assert_eq!(
            window(None, None, Some(3), Some(10)).offset_limit(None),
            (7, 3)
        );
        assert!(window(None, None, Some(3), None).needs_total());
        assert_eq!(
            window(None, None, Some(3), None).offset_limit(Some(20)),
            (17, 3)
        );
        assert_eq!(
            window(None, None, Some(30), None).offset_limit(Some(20)),
            (0, 20)
        );
        assert_eq!(
            window(Some(10), Some(1), None, Some(5)).offset_limit(None),
            (2, 3)
        );
        assert_eq!(
            window(Some(9999), None, None, None).offset_limit(None),
            (0, 500)
        );
    }

    #[test]
    fn oversized_and_foreign_cursors_are_refused() {
        let huge = URL_SAFE_NO_PAD.encode(format!("o:{}", i64::MAX));
        assert!(Window::new(None, Some(huge), None, None).is_err());
        assert!(Window::new(None, Some("nope".into()), None, None).is_err());
        assert!(Window::new(Some(-1), None, None, None).is_err());
    }
}
