//! The migration plan shared by every Durable Object.
//!
//! Each object's schema is a list of numbered SQL files (`migrations/<object>/0001_*.sql`), applied
//! in order on first use. A `_migrations(version)` table records what has been applied, so running
//! the runner twice is a no-op. Versions must be strictly increasing; a gap or a duplicate is a
//! build error caught by the tests of the adapter crate.

use crate::GatewayError;

/// One numbered migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    /// Version number (the file's numeric prefix).
    pub version: u32,
    /// File name, for error messages.
    pub name: &'static str,
    /// The SQL (may hold several statements).
    pub sql: &'static str,
}

/// The DDL creating the bookkeeping table. Idempotent.
pub const BOOKKEEPING_SQL: &str =
    "CREATE TABLE IF NOT EXISTS _migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)";

/// Checks that `all` is numbered 1, 2, 3, ... with no gaps or duplicates.
pub fn check_sequence(all: &[Migration]) -> Result<(), GatewayError> {
    for (i, m) in all.iter().enumerate() {
        if m.version as usize != i + 1 {
            return Err(GatewayError::Internal(format!(
                "migration {} has version {}, expected {}",
                m.name,
                m.version,
                i + 1
            )));
        }
    }
    Ok(())
}

/// The migrations still to apply, in order, given the versions already applied.
pub fn pending<'a>(
    all: &'a [Migration],
    applied: &[u32],
) -> Result<Vec<&'a Migration>, GatewayError> {
    check_sequence(all)?;
    if let Some(newest) = applied.iter().max() {
        if *newest as usize > all.len() {
            return Err(GatewayError::Internal(format!(
                "storage is at schema version {newest}, newer than this code ({}): refusing to run",
                all.len()
            )));
        }
    }
    Ok(all
        .iter()
        .filter(|m| !applied.contains(&m.version))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Migration; 2] = [
        Migration {
            version: 1,
            name: "0001_init.sql",
            sql: "CREATE TABLE a(x)",
        },
        Migration {
            version: 2,
            name: "0002_more.sql",
            sql: "CREATE TABLE b(x)",
        },
    ];

    #[test]
    fn applies_only_what_is_missing() {
        assert_eq!(pending(&ALL, &[]).unwrap().len(), 2);
        assert_eq!(pending(&ALL, &[1]).unwrap()[0].version, 2);
        assert!(
            pending(&ALL, &[1, 2]).unwrap().is_empty(),
            "second run is a no-op"
        );
    }

    #[test]
    fn refuses_storage_from_the_future_and_bad_numbering() {
        assert!(pending(&ALL, &[1, 2, 3]).is_err());
        let gap = [ALL[1]];
        assert!(pending(&gap, &[]).is_err());
    }
}
