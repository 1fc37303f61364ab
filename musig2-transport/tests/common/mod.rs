//! Helpers shared by the transport's integration tests.

use std::future::Future;
use std::time::Duration;

use musig2_transport::PeerEvent;
use tokio::sync::broadcast::{self, error::RecvError};

/// Generous bound for anything that should happen; the tests wait for conditions, not times.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Awaits `fut`, failing the test if it takes longer than [`PATIENCE`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within {PATIENCE:?}"))
}

/// Waits (within [`PATIENCE`]) until `events` yields `expected`, skipping other events.
pub async fn wait_for_event(events: &mut broadcast::Receiver<PeerEvent>, expected: PeerEvent) {
    within(&format!("{expected:?}"), async {
        loop {
            match events.recv().await {
                Ok(event) if event == expected => break,
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => panic!("event stream closed before {expected:?}"),
            }
        }
    })
    .await;
}
