//! Domain errors and the one place they become binder statuses.
//!
//! Handlers return `Result<T, Error>`; [`into_status`] at the binder
//! boundary maps each error to the AIDL `ErrorCode` (service-specific) or a
//! standard exception, and logs it.

use std::fmt;

use rsbinder::{ExceptionCode, Status};

use crate::aidl::vendor::dmabuf::ErrorCode::ErrorCode;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    UnknownHeap,
    InvalidSize,
    InvalidName,
    InvalidFlags,
    QuotaExceeded,
    NoMemory,
    NoSuchProcess,
    /// The reply would not fit in one binder transaction.
    ReportTooLarge,
    /// A paged call named a snapshot that expired or is not the caller's.
    StaleSnapshot,
    /// EX_SECURITY: the caller may not do this.
    Permission,
    /// EX_ILLEGAL_ARGUMENT: malformed input with no domain code.
    IllegalArgument,
    /// EX_UNSUPPORTED_OPERATION.
    Unsupported,
    /// EX_ILLEGAL_STATE: a kernel or service failure that is not the caller's fault.
    Internal,
}

/// An error with a message that says what was wrong and what is allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    pub kind: Kind,
    pub message: String,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(kind: Kind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
        }
    }

    /// The AIDL error code for service-specific errors.
    pub fn code(&self) -> Option<ErrorCode> {
        Some(match self.kind {
            Kind::UnknownHeap => ErrorCode::UNKNOWN_HEAP,
            Kind::InvalidSize => ErrorCode::INVALID_SIZE,
            Kind::InvalidName => ErrorCode::INVALID_NAME,
            Kind::InvalidFlags => ErrorCode::INVALID_FLAGS,
            Kind::QuotaExceeded => ErrorCode::QUOTA_EXCEEDED,
            Kind::NoMemory => ErrorCode::NO_MEMORY,
            Kind::NoSuchProcess => ErrorCode::NO_SUCH_PROCESS,
            Kind::ReportTooLarge => ErrorCode::REPORT_TOO_LARGE,
            Kind::StaleSnapshot => ErrorCode::STALE_SNAPSHOT,
            Kind::Permission | Kind::IllegalArgument | Kind::Unsupported | Kind::Internal => {
                return None
            }
        })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// Maps a handler's error to the status the client sees, and logs it with
/// the caller so refusals are visible in logcat / stderr.
pub fn into_status(e: Error, method: &str, caller_uid: u32, caller_pid: i32) -> Status {
    if e.kind == Kind::Internal {
        log::error!(
            "{method} from uid {caller_uid} pid {caller_pid}: {}",
            e.message
        );
    } else {
        log::info!(
            "{method} from uid {caller_uid} pid {caller_pid} refused: {}",
            e.message
        );
    }
    match e.code() {
        Some(code) => Status::new_service_specific_error(code.0, Some(e.message)),
        None => {
            let ex = match e.kind {
                Kind::Permission => ExceptionCode::Security,
                Kind::IllegalArgument => ExceptionCode::IllegalArgument,
                Kind::Unsupported => ExceptionCode::UnsupportedOperation,
                _ => ExceptionCode::IllegalState,
            };
            Status::from((ex, e.message.as_str()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_specific_codes_and_exceptions() {
        let s = into_status(Error::new(Kind::QuotaExceeded, "over"), "allocate", 1, 2);
        assert_eq!(s.exception_code(), ExceptionCode::ServiceSpecific);
        assert_eq!(s.service_specific_error(), ErrorCode::QUOTA_EXCEEDED.0);
        assert_eq!(s.message(), Some("over"));
        let s = into_status(Error::new(Kind::Permission, "no"), "getMemoryReport", 1, 2);
        assert_eq!(s.exception_code(), ExceptionCode::Security);
        let s = into_status(
            Error::new(Kind::IllegalArgument, "pid"),
            "getProcessMemory",
            1,
            2,
        );
        assert_eq!(s.exception_code(), ExceptionCode::IllegalArgument);
    }
}
