//! The errors that pick an exit code other than 1. Everything else is an
//! `anyhow::Error` printed on one line and exits 1.

/// Exit code 2: the command line was wrong in a way clap cannot check
/// (a malformed token or URL).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Exit code 3: the server will not talk to this identity again, so
/// restarting cannot help; an operator must enroll the host anew. The
/// systemd unit's `RestartPreventExitStatus=3` relies on this code.
#[derive(Debug, thiserror::Error)]
pub enum NeedsReenrollment {
    #[error(
        "this device was revoked by an administrator; re-enroll with a new token to manage it again"
    )]
    Revoked,
    #[error(
        "the server no longer accepts this device's certificate ({reason}); re-enroll with a new token"
    )]
    CertificateRejected { reason: String },
    #[error("the stored identity is unusable ({reason}); re-enroll with a new token")]
    Inconsistent { reason: String },
}

pub const EXIT_USAGE: u8 = 2;
pub const EXIT_REENROLL: u8 = 3;
