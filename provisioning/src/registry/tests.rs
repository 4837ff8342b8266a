//! The SQLite registry on a real database file: the registry's semantics (the cases both
//! backends run, tests/common/registry_cases.rs), then what only SQLite has: a write lock
//! held by another connection.

use super::*;
use crate::error::Conflict;

#[path = "../../tests/common/registry_cases.rs"]
mod cases;

use cases::{reservation, Backend};

/// A registry file in a temporary directory, opened afresh by each `open`.
struct Sqlite {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn sqlite() -> Sqlite {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.sqlite3");
    Sqlite { _dir: dir, path }
}

impl Backend for Sqlite {
    type Reg = SqliteRegistry;

    fn open(&self) -> SqliteRegistry {
        SqliteRegistry::open(&self.path).unwrap()
    }

    fn duplicate_serial(&self, err: &Error) -> bool {
        matches!(err, Error::Registry { path, .. } if *path == self.path)
    }
}

#[test]
fn the_sqlite_registry_keeps_the_registry_semantics() {
    cases::run_all(|_| sqlite());
}

#[test]
fn a_write_lock_held_elsewhere_is_reported_as_busy() {
    let db = sqlite();
    let mut reg = db.open();
    let holder = Connection::open(&db.path).unwrap();
    holder.busy_timeout(std::time::Duration::ZERO).unwrap();
    reg.conn
        .busy_timeout(std::time::Duration::from_millis(50))
        .unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let err = reg
        .reserve(&[reservation("01", DeviceId::Next)])
        .unwrap_err();
    assert!(
        matches!(err, Error::Busy(crate::error::Busy::Registry { ref path }) if *path == db.path),
        "{err}"
    );
    holder.execute_batch("ROLLBACK").unwrap();
    reg.reserve(&[reservation("01", DeviceId::Next)]).unwrap();
}
