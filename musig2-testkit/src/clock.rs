//! Protocol time that follows tokio's clock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Milliseconds since the UNIX epoch, read once from the system clock and then advanced with
/// tokio's clock, so a paused test clock moves protocol time too (the nodes keep time the
/// same way, so the adversary's timestamps stay within their skew bound).
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    base_ms: u64,
    start: Instant,
}

impl WallClock {
    /// A clock that reads the system time now.
    pub fn new() -> Self {
        let base = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        WallClock {
            base_ms: u64::try_from(base.as_millis()).unwrap_or(u64::MAX),
            start: Instant::now(),
        }
    }

    /// The current protocol time.
    pub fn now_ms(&self) -> u64 {
        let elapsed = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.base_ms.saturating_add(elapsed)
    }
}

impl Default for WallClock {
    fn default() -> Self {
        Self::new()
    }
}
