//! How the command line fails: one line a person can act on, and an exit
//! code a script can branch on. A backtrace is printed only for a bug
//! (`RUST_BACKTRACE` set and an internal error), never for a mistake in the
//! input, the configuration or the environment.

use std::process::ExitCode;

use crate::{config::ConfigError, domain};

/// The exit codes, as `--help` lists them.
pub const EXIT_CODES: &str = "\
Exit codes:
  0  done
  1  another failure (for an internal error, a bug, RUST_BACKTRACE=1 adds a backtrace)
  2  bad arguments or input (a malformed email, a too-short password, an unknown action)
  3  not found (no such user, key or session)
  4  conflict (the email is taken; the account is not in a state for this)
  5  configuration error (a setting, the configuration file, the MFA key)
  6  the database cannot be reached or used";

/// What kind of failure, and so which exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A failure nothing more specific describes (a start-up step, an I/O
    /// error): one line, no backtrace.
    Failed,
    /// An internal error: a bug. The only kind printed with its backtrace.
    Bug,
    /// Bad arguments or input.
    Input,
    /// No such thing.
    NotFound,
    /// A clash with the current state.
    Conflict,
    /// The configuration cannot be used.
    Config,
    /// The database does not answer.
    Database,
}

impl Kind {
    /// The process exit code.
    #[must_use]
    pub fn code(self) -> u8 {
        match self {
            Kind::Failed | Kind::Bug => 1,
            Kind::Input => 2,
            Kind::NotFound => 3,
            Kind::Conflict => 4,
            Kind::Config => 5,
            Kind::Database => 6,
        }
    }
}

/// A failure the person at the terminal can act on (anything but a bug).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct UserError {
    /// What to print.
    pub message: String,
    /// Which exit code.
    pub kind: Kind,
}

impl UserError {
    /// Bad input, said in `message`.
    pub fn input(message: impl Into<String>) -> Self {
        Self { message: message.into(), kind: Kind::Input }
    }
}

/// The kind of `err`: the first cause in its chain that says.
#[must_use]
pub fn classify(err: &anyhow::Error) -> Kind {
    for cause in err.chain() {
        if let Some(user) = cause.downcast_ref::<UserError>() {
            return user.kind;
        }
        if cause.downcast_ref::<ConfigError>().is_some() {
            return Kind::Config;
        }
        if let Some(domain) = cause.downcast_ref::<domain::Error>() {
            return match domain {
                domain::Error::InvalidArgument { .. }
                | domain::Error::Unauthenticated(_)
                | domain::Error::Forbidden { .. } => Kind::Input,
                domain::Error::NotFound(_) => Kind::NotFound,
                domain::Error::AlreadyExists(_) | domain::Error::FailedPrecondition(_) => Kind::Conflict,
                domain::Error::Unavailable(_)
                | domain::Error::Overloaded { .. }
                | domain::Error::RateLimited { .. } => Kind::Database,
                domain::Error::Internal(_) => Kind::Bug,
            };
        }
        if cause.downcast_ref::<sea_orm::DbErr>().is_some()
            || cause.downcast_ref::<crate::store::ConnectError>().is_some()
        {
            return Kind::Database;
        }
    }
    Kind::Failed
}

/// Prints `err` on standard error and returns its exit code: one line for
/// a person's mistake, the chain and (when enabled) the backtrace for a bug.
#[must_use]
pub fn report(err: &anyhow::Error) -> ExitCode {
    let kind = classify(err);
    if kind == Kind::Bug {
        eprintln!("error: {err:?}");
    } else {
        eprintln!("error: {err:#}");
    }
    ExitCode::from(kind.code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_errors_map_to_their_exit_codes() {
        let cases = [
            (domain::Error::invalid("email", "bad"), Kind::Input),
            (domain::Error::NotFound("user"), Kind::NotFound),
            (domain::Error::AlreadyExists("user"), Kind::Conflict),
            (domain::Error::Internal("oops".into()), Kind::Bug),
        ];
        for (err, kind) in cases {
            let err = anyhow::Error::new(err).context("doing it");
            assert_eq!(classify(&err), kind);
        }
        assert_eq!(classify(&anyhow::Error::new(ConfigError::from_message("x"))), Kind::Config);
        assert_eq!(classify(&anyhow::anyhow!("who knows")), Kind::Failed);
    }
}
