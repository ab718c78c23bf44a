//! Store errors with a closed kind callers can branch on.

use std::fmt;

/// What went wrong, as far as a caller needs to know to decide what to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// A UNIQUE constraint or index rejected the write.
    UniqueViolation,
    /// The database could not be reached or is busy; retrying may help.
    Unavailable,
    /// A column did not hold the type the code expected.
    Decode,
    /// Anything else: a bug in a query or a broken database.
    Other,
}

#[derive(Debug)]
pub struct StoreError {
    kind: StoreErrorKind,
    message: String,
}

impl StoreError {
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        StoreError {
            kind,
            message: message.into(),
        }
    }

    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    pub fn is_unique_violation(&self) -> bool {
        self.kind == StoreErrorKind::UniqueViolation
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "store error ({:?}): {}", self.kind, self.message)
    }
}

impl std::error::Error for StoreError {}

impl From<rusqlite::Error> for StoreError {
    fn from(err: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode;
        let kind = match err.sqlite_error_code() {
            Some(ErrorCode::ConstraintViolation) => match &err {
                rusqlite::Error::SqliteFailure(e, _)
                    if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                        || e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY =>
                {
                    StoreErrorKind::UniqueViolation
                }
                _ => StoreErrorKind::Other,
            },
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked | ErrorCode::CannotOpen) => {
                StoreErrorKind::Unavailable
            }
            _ => StoreErrorKind::Other,
        };
        StoreError::new(kind, err.to_string())
    }
}
