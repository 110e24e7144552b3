//! Statements on a connection: sqlx's SQL text (`$n` parameters) run as direct calls, and
//! rusqlite's errors as sqlx's.
//!
//! It owns binding, stepping and the error conversion; it does not choose the connection or the
//! transaction (`writer`, `handle`).

use std::borrow::Cow;

use sqlx::error::{DatabaseError, ErrorKind};

/// Binds `values` to `statement`'s parameters the way sqlx binds them, so that the SQL text sqlx
/// runs runs here unchanged: value *n* goes to `$n` or `?n` wherever it appears (whatever order
/// they first appear in), or else to the *n*-th parameter (a plain `?`). Every parameter must
/// get a value.
pub fn bind_numbered(
    statement: &mut rusqlite::Statement<'_>,
    values: &[&dyn rusqlite::ToSql],
) -> rusqlite::Result<()> {
    if statement.parameter_count() != values.len() {
        return Err(rusqlite::Error::InvalidParameterCount(
            values.len(),
            statement.parameter_count(),
        ));
    }
    for index in 1..=values.len() {
        // `$n` and `?n` name value n; a plain `?` (no name) takes the value of its position.
        let number = statement
            .parameter_name(index)
            .and_then(|name| name.strip_prefix(['$', '?']))
            .map_or(Ok(index), str::parse::<usize>)
            .map_err(|_| rusqlite::Error::InvalidParameterName(format!("parameter {index}")))?;
        let value = values
            .get(number.wrapping_sub(1))
            .ok_or(rusqlite::Error::InvalidParameterCount(number, values.len()))?;
        statement.raw_bind_parameter(index, value)?;
    }
    Ok(())
}

/// Runs one statement (`$n` parameters, [`bind_numbered`]), prepared once per connection
/// ([`direct`](crate::direct)); returns the rows it changed.
pub fn execute(
    db: &rusqlite::Connection,
    sql: &str,
    values: &[&dyn rusqlite::ToSql],
) -> rusqlite::Result<usize> {
    let mut statement = db.prepare_cached(sql)?;
    bind_numbered(&mut statement, values)?;
    statement.raw_execute()
}

/// Runs one query (`$n` parameters, [`bind_numbered`]) and maps every row with `row`.
pub fn query<T>(
    db: &rusqlite::Connection,
    sql: &str,
    values: &[&dyn rusqlite::ToSql],
    row: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Vec<T>> {
    query_at_most(db, sql, values, usize::MAX, row)
}

/// [`query`] for at most `max` rows: it stops stepping the statement there.
///
/// Use it instead of a `LIMIT $n`: SQLite prepares a statement whose `LIMIT` is a bound
/// parameter again every time it runs (its planner uses the value, so binding one expires the
/// plan), which made parsing the largest cost of the relay's read (`perf`; the statement's
/// `StatementStatus::RePrepare` counts one per run). Without `LIMIT`, in an order an index gives
/// (no sort), SQLite produces rows only as they are stepped, and a read stopped here costs what
/// a limited one does.
pub fn query_at_most<T>(
    db: &rusqlite::Connection,
    sql: &str,
    values: &[&dyn rusqlite::ToSql],
    max: usize,
    mut row: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Vec<T>> {
    let mut statement = db.prepare_cached(sql)?;
    bind_numbered(&mut statement, values)?;
    let mut rows = statement.raw_query();
    let mut out = Vec::new();
    while out.len() < max
        && let Some(next) = rows.next()?
    {
        out.push(row(next)?);
    }
    Ok(out)
}

/// [`query`] for at most one row.
pub fn query_optional<T>(
    db: &rusqlite::Connection,
    sql: &str,
    values: &[&dyn rusqlite::ToSql],
    row: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Option<T>> {
    let mut statement = db.prepare_cached(sql)?;
    bind_numbered(&mut statement, values)?;
    let mut rows = statement.raw_query();
    rows.next()?.map(row).transpose()
}

/// A rusqlite error as an sqlx one, keeping SQLite's code and its kind (a unique violation stays
/// one), so callers handle both alike.
pub fn sqlx_error(error: rusqlite::Error) -> sqlx::Error {
    sqlx::Error::Database(Box::new(DirectError(error)))
}

/// An error of a direct SQLite call ([`direct`](crate::direct)), carried as an sqlx database error.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct DirectError(pub rusqlite::Error);

impl DatabaseError for DirectError {
    fn message(&self) -> &str {
        match &self.0 {
            rusqlite::Error::SqliteFailure(_, Some(message)) => message,
            rusqlite::Error::SqliteFailure(failure, None) => {
                rusqlite::ffi::code_to_str(failure.extended_code)
            }
            _ => "direct SQLite call failed",
        }
    }

    fn code(&self) -> Option<Cow<'_, str>> {
        self.0
            .sqlite_error()
            .map(|failure| Cow::Owned(failure.extended_code.to_string()))
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> ErrorKind {
        use rusqlite::ffi;
        match self.0.sqlite_error().map(|failure| failure.extended_code) {
            Some(ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY) => {
                ErrorKind::UniqueViolation
            }
            Some(ffi::SQLITE_CONSTRAINT_FOREIGNKEY) => ErrorKind::ForeignKeyViolation,
            Some(ffi::SQLITE_CONSTRAINT_NOTNULL) => ErrorKind::NotNullViolation,
            Some(ffi::SQLITE_CONSTRAINT_CHECK) => ErrorKind::CheckViolation,
            _ => ErrorKind::Other,
        }
    }
}
