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
    /// No node answers on the control socket.
    #[error("no node answers on {path}: {source} (is `musig2-node run` running?)")]
    Unreachable {
        /// The control socket.
        path: PathBuf,
        /// Why the connection failed.
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
    /// The control socket answered with something that is not the protocol.
    #[error("control: {0}")]
    Control(String),
    /// The node answered the request with an error of this [`kind`](ErrorKind).
    #[error("{message}")]
    Remote {
        /// The error's kind, as the node reported it.
        kind: ErrorKind,
        /// The node's message.
        message: String,
    },
    /// The signing node refused or failed.
    #[error(transparent)]
    Coordinator(#[from] CoordinatorError),
    /// The network layer failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// Something did not finish in time.
    #[error("{0} did not finish in time")]
    Timeout(&'static str),
    /// A session (or other named thing) is not known.
    #[error("{0}")]
    NotFound(String),
    /// The node refused the request as it stands (e.g. the session has finished).
    #[error("{0}")]
    Rejected(String),
    /// The session was aborted; the message says why, who is blamed and on whose word.
    #[error("{0}")]
    Aborted(String),
    /// A file given as a PSBT is none of binary, base64 or hex PSBT.
    #[error("{path}: not a PSBT: {reason}")]
    NotAPsbt {
        /// The file (`-` for stdin).
        path: PathBuf,
        /// What was found instead.
        reason: String,
    },
    /// A PSBT or descriptor was refused by `musig2-bitcoin`: a malformed BIP373 field (named),
    /// a BIP390 rule, a missing or invalid contribution (participants named), ...
    #[error(transparent)]
    Bitcoin(#[from] musig2_bitcoin::Error),
    /// Final signatures were given for a different number of plan entries.
    #[error("{signatures} signatures for {entries} plan entries")]
    SignatureCount {
        /// Plan entries.
        entries: usize,
        /// Signatures given.
        signatures: usize,
    },
}

/// The stable kinds of errors, as scripts see them (`{"error":{"kind":…}}`) and as exit codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// Bad command line or request (exit 2).
    Usage,
    /// No node answers on the control socket (exit 3).
    Unreachable,
    /// The session (or other thing named) is not known (exit 4).
    NotFound,
    /// Something did not finish in time (exit 5).
    Timeout,
    /// The session was aborted (exit 6).
    Aborted,
    /// The node refused the request: finished session, not a signer, too many sessions, … (exit
    /// 7).
    Rejected,
    /// A file could not be read or written, or a key file is bad (exit 1).
    Io,
    /// The network failed (exit 1).
    Network,
    /// Anything else, including kinds this version does not know (exit 1).
    #[serde(other)]
    Internal,
}

impl ErrorKind {
    /// The process exit code of this kind (see the README).
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Usage => 2,
            Self::Unreachable => 3,
            Self::NotFound => 4,
            Self::Timeout => 5,
            Self::Aborted => 6,
            Self::Rejected => 7,
            Self::Io | Self::Network | Self::Internal => 1,
        }
    }

    /// The name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Usage => "usage",
            Self::Unreachable => "unreachable",
            Self::NotFound => "not_found",
            Self::Timeout => "timeout",
            Self::Aborted => "aborted",
            Self::Rejected => "rejected",
            Self::Io => "io",
            Self::Network => "network",
            Self::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn coordinator_kind(error: &CoordinatorError) -> ErrorKind {
    match error {
        CoordinatorError::UnknownSession(_) => ErrorKind::NotFound,
        CoordinatorError::Aborted { .. } => ErrorKind::Aborted,
        CoordinatorError::SessionFinished(_)
        | CoordinatorError::SessionExists(_)
        | CoordinatorError::NotASigner(_)
        | CoordinatorError::TooManySessions(_)
        | CoordinatorError::TooManySessionsFromCreator { .. }
        | CoordinatorError::PolicyOutOfBounds { .. }
        | CoordinatorError::Misrouted { .. } => ErrorKind::Rejected,
        CoordinatorError::InvalidRequest(_)
        | CoordinatorError::Proto(_)
        | CoordinatorError::Core(_) => ErrorKind::Usage,
        CoordinatorError::Transport(e) => transport_kind(e),
        _ => ErrorKind::Internal,
    }
}

fn transport_kind(error: &TransportError) -> ErrorKind {
    match error {
        TransportError::NotFound => ErrorKind::NotFound,
        TransportError::Timeout { .. } => ErrorKind::Timeout,
        TransportError::Config(_) => ErrorKind::Usage,
        _ => ErrorKind::Network,
    }
}

impl NodeError {
    /// An I/O error doing `what` on `path`.
    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            what,
            path: path.into(),
            source,
        }
    }

    /// An invalid argument `what`, and why.
    pub fn invalid(what: &'static str, reason: impl std::fmt::Display) -> Self {
        Self::InvalidArgument {
            what,
            reason: reason.to_string(),
        }
    }

    /// The error's stable kind (for JSON output and the exit code).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Io { .. } | Self::BadKey { .. } => ErrorKind::Io,
            Self::Unreachable { .. } => ErrorKind::Unreachable,
            Self::InvalidArgument { .. } => ErrorKind::Usage,
            Self::Control(_) => ErrorKind::Internal,
            Self::Remote { kind, .. } => *kind,
            Self::Coordinator(e) => coordinator_kind(e),
            Self::Transport(e) => transport_kind(e),
            Self::Timeout(_) => ErrorKind::Timeout,
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::Rejected(_) => ErrorKind::Rejected,
            Self::Aborted(_) => ErrorKind::Aborted,
            // Everything musig2-bitcoin refuses is about the PSBT or descriptor given.
            Self::NotAPsbt { .. } | Self::Bitcoin(_) | Self::SignatureCount { .. } => {
                ErrorKind::Usage
            }
        }
    }

    /// Machine-readable details of the error, for `{"error": {"details": …}}`: where in a
    /// PSBT a fault is and who caused it.
    pub fn details(&self) -> Option<serde_json::Value> {
        use musig2_bitcoin::Error as B;
        let keys = |keys: &[secp256k1::PublicKey]| {
            keys.iter().map(ToString::to_string).collect::<Vec<_>>()
        };
        let Self::Bitcoin(error) = self else {
            return None;
        };
        Some(match error {
            B::Bip373 {
                location, field, ..
            } => {
                serde_json::json!({ "location": location.to_string(), "field": field.to_string() })
            }
            B::MissingContributions {
                input,
                field,
                participants,
            } => serde_json::json!({
                "input": input, "field": field.to_string(), "missing": keys(participants),
            }),
            B::InvalidPartialSigs {
                input,
                participants,
            } => serde_json::json!({ "input": input, "culprits": keys(participants) }),
            B::InvalidSignature(input)
            | B::MissingUtxo(input)
            | B::Finalize { input, .. }
            | B::Sighash { input, .. }
            | B::InvalidSighashType { input, .. } => serde_json::json!({ "input": input }),
            _ => return None,
        })
    }

    /// The process exit code (see [`ErrorKind::exit_code`]).
    pub fn exit_code(&self) -> u8 {
        self.kind().exit_code()
    }
}

/// Result with [`NodeError`].
pub type Result<T, E = NodeError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use musig2_proto::SessionId;

    #[test]
    fn kinds_have_distinct_exit_codes_and_stable_names() {
        let kinds = [
            ErrorKind::Usage,
            ErrorKind::Unreachable,
            ErrorKind::NotFound,
            ErrorKind::Timeout,
            ErrorKind::Aborted,
            ErrorKind::Rejected,
        ];
        let mut codes: Vec<u8> = kinds.iter().map(|k| k.exit_code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes, vec![2, 3, 4, 5, 6, 7]);
        for kind in kinds {
            let json = serde_json::to_value(kind).expect("encode");
            assert_eq!(json, kind.as_str());
            assert_eq!(
                serde_json::from_value::<ErrorKind>(json).expect("decode"),
                kind
            );
        }
        let unknown = NodeError::from(CoordinatorError::UnknownSession(SessionId::from_bytes(
            [0; 32],
        )));
        assert_eq!(unknown.kind(), ErrorKind::NotFound);
        assert_eq!(NodeError::Timeout("x").exit_code(), 5);
        // A newer node's kind still parses.
        assert_eq!(
            serde_json::from_str::<ErrorKind>(r#""some_new_kind""#).expect("decode"),
            ErrorKind::Internal
        );
    }
}
