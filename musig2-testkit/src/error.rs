//! The crate's error type.

use musig2_coordinator::CoordinatorError;

/// Why a scenario could not be set up or run (not how the session ended: that is the
/// [`Report`](crate::Report)).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestkitError {
    /// The scenario's parameters make no sense (too few signers, adversary out of range...).
    #[error("invalid scenario: {0}")]
    InvalidScenario(String),
    /// An honest node refused a request (e.g. creating the session).
    #[error(transparent)]
    Coordinator(#[from] CoordinatorError),
    /// A protocol value could not be built.
    #[error(transparent)]
    Proto(#[from] musig2_proto::ProtoError),
    /// A MuSig2 computation failed.
    #[error(transparent)]
    Core(#[from] musig2_core::Error),
}

/// Result alias of this crate.
pub type Result<T, E = TestkitError> = std::result::Result<T, E>;
