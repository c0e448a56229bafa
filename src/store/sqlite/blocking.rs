//! Running a blocking SQLite call off the async runtime: the connection
//! moves into a `spawn_blocking` task and comes back with the answer. A
//! call that outlives its limit is interrupted (`sqlite3_interrupt`), which
//! rolls its transaction back; if it finished anyway, its answer counts.

use crate::store::StoreError;
use rusqlite::{Connection, ErrorCode};
use std::time::Duration;

/// Run `work` on `conn` on the blocking pool, for at most `limit`.
///
/// Returns the connection unless the call failed (then the caller opens a
/// fresh one next time: cheap, and no state of a failed call survives) or
/// the task died.
pub async fn run<T, F>(
    mut conn: Connection,
    limit: Duration,
    what: &'static str,
    work: F,
) -> (Option<Connection>, Result<T, StoreError>)
where
    T: Send + 'static,
    F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
{
    let interrupt = conn.get_interrupt_handle();
    let mut task = tokio::task::spawn_blocking(move || {
        let result = work(&mut conn);
        (conn, result)
    });
    let (joined, timed_out) = match tokio::time::timeout(limit, &mut task).await {
        Ok(joined) => (joined, false),
        Err(_) => {
            interrupt.interrupt();
            (task.await, true)
        }
    };
    match joined {
        Ok((conn, Ok(value))) => (Some(conn), Ok(value)),
        Ok((_, Err(e))) if timed_out && interrupted(&e) => (None, Err(StoreError::Timeout { what, after: limit })),
        Ok((_, Err(e))) => (None, Err(e)),
        Err(e) => (None, Err(StoreError::Worker { what, message: e.to_string() })),
    }
}

/// Whether SQLite stopped the call because it was interrupted.
fn interrupted(e: &StoreError) -> bool {
    match e {
        StoreError::Sqlite { source, .. } => source.sqlite_error_code() == Some(ErrorCode::OperationInterrupted),
        _ => false,
    }
}

/// Open a connection on the blocking pool.
pub async fn open<F>(what: &'static str, open: F) -> Result<Connection, StoreError>
where
    F: FnOnce() -> Result<Connection, StoreError> + Send + 'static,
{
    tokio::task::spawn_blocking(open).await.map_err(|e| StoreError::Worker { what, message: e.to_string() })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn a_call_past_its_limit_is_interrupted() {
        let conn = Connection::open_in_memory().unwrap();
        let endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c";
        let (back, result) = run(conn, Duration::from_millis(50), "endless query", move |c| {
            c.query_row(endless, [], |r| r.get::<_, i64>(0)).map_err(|e| StoreError::sqlite("count", e))
        })
        .await;
        assert!(back.is_none());
        let e = result.unwrap_err();
        assert!(matches!(e, StoreError::Timeout { .. }) && e.is_retryable(), "{e}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_connection_comes_back_after_a_call() {
        let conn = Connection::open_in_memory().unwrap();
        let (back, result) = run(conn, Duration::from_secs(5), "select", |c| {
            c.query_row("SELECT 41 + 1", [], |r| r.get::<_, i64>(0)).map_err(|e| StoreError::sqlite("select", e))
        })
        .await;
        assert_eq!(result.unwrap(), 42);
        assert!(back.is_some());
    }
}
