//! Store errors with a closed kind callers can branch on.

/// What went wrong, as far as a caller needs to know to decide what to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// A UNIQUE constraint or index rejected the write.
    UniqueViolation,
    /// The database could not be reached or is busy; retrying may help.
    Unavailable,
    /// The database cannot write: its disk is full, or it is read-only or
    /// failing. Writes succeed again once space returns.
    Storage,
    /// A column did not hold the type the code expected.
    Decode,
    /// Anything else: a bug in a query or a broken database.
    Other,
}

/// Any error a store error can be caused by.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A store error: its kind, what was being done, and (when another library
/// failed) the error that caused it, kept as the source so a logged 500
/// shows the whole chain.
#[derive(Debug, thiserror::Error)]
#[error("store error ({kind:?}): {message}")]
pub struct StoreError {
    kind: StoreErrorKind,
    message: String,
    #[source]
    source: Option<BoxError>,
}

std::thread_local! {
    /// Whether a storage error was made on this thread since the last
    /// [`take_storage_failure`]: the engines run each transaction on a
    /// thread of their own and ask afterwards, so the handle learns that
    /// its database cannot write, whatever error type the transaction's
    /// closure turned the error into.
    static STORAGE_FAILED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

pub(crate) fn take_storage_failure() -> bool {
    STORAGE_FAILED.replace(false)
}

impl StoreError {
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        if kind == StoreErrorKind::Storage {
            STORAGE_FAILED.set(true);
        }
        StoreError {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// An error of `kind` while doing `message`, caused by `source`.
    pub fn caused_by(
        kind: StoreErrorKind,
        message: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        if kind == StoreErrorKind::Storage {
            STORAGE_FAILED.set(true);
        }
        StoreError {
            kind,
            message: message.into(),
            source: Some(source.into()),
        }
    }

    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    /// The same error for another caller whose closure shared the failed
    /// transaction (group commit): same kind and message, the cause as text.
    pub(crate) fn replay(&self) -> StoreError {
        StoreError {
            kind: self.kind,
            message: match &self.source {
                Some(source) => format!("{}: {}", self.message, report(source.as_ref())),
                None => self.message.clone(),
            },
            source: None,
        }
    }

    pub fn is_unique_violation(&self) -> bool {
        self.kind == StoreErrorKind::UniqueViolation
    }
}

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
            Some(ErrorCode::DiskFull | ErrorCode::ReadOnly | ErrorCode::SystemIoFailure) => {
                StoreErrorKind::Storage
            }
            _ => StoreErrorKind::Other,
        };
        StoreError::caused_by(kind, "SQLite failed", err)
    }
}

/// `err` and every error it was caused by, `: `-separated — what a log
/// line or a readiness reason shows of an error.
pub fn report(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_from_a_library_keeps_it_as_its_source() {
        let cause = std::io::Error::other("disk on fire");
        let e = StoreError::caused_by(StoreErrorKind::Unavailable, "opening the database", cause);
        assert_eq!(
            e.to_string(),
            "store error (Unavailable): opening the database"
        );
        let source = std::error::Error::source(&e).expect("a source");
        assert_eq!(source.to_string(), "disk on fire");
        assert!(std::error::Error::source(&StoreError::new(StoreErrorKind::Other, "x")).is_none());
        assert_eq!(
            report(&e),
            "store error (Unavailable): opening the database: disk on fire"
        );
    }
}
