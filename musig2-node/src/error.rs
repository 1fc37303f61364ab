use std::path::PathBuf;

use musig2_coordinator::CoordinatorError;
use musig2_transport::TransportError;

/// What can go wrong in the node binary and its library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// A file or socket could not be read, written or created.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done ("cannot read", "cannot bind", ...).
        what: &'static str,
        /// The file or socket.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A key file holds something that is not a key.
    #[error("key file {path}: {reason}")]
    BadKey {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A command-line or control-request argument is not valid.
    #[error("invalid {what}: {reason}")]
    InvalidArgument {
        /// Which argument.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The control socket answered with an error, or not in the protocol.
    #[error("control: {0}")]
    Control(String),
    /// The signing node refused or failed.
    #[error(transparent)]
    Coordinator(#[from] CoordinatorError),
    /// The network layer failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// Something did not finish in time.
    #[error("{0} did not finish in time")]
    Timeout(&'static str),
}

impl NodeError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            what,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid(what: &'static str, reason: impl std::fmt::Display) -> Self {
        Self::InvalidArgument {
            what,
            reason: reason.to_string(),
        }
    }

    /// A short machine-readable name of the error's kind (for JSON output).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Io { .. } => "io",
            Self::BadKey { .. } => "bad_key",
            Self::InvalidArgument { .. } => "invalid_argument",
            Self::Control(_) => "control",
            Self::Coordinator(_) => "coordinator",
            Self::Transport(_) => "transport",
            Self::Timeout(_) => "timeout",
        }
    }
}

/// Result with [`NodeError`].
pub type Result<T, E = NodeError> = std::result::Result<T, E>;
