//! Per-sender replay protection: a sliding window of seen sequence numbers.

use musig2_proto::{SeqNo, SignerIndex};

use crate::error::CoordinatorError;

/// The sequence numbers seen from one sender: the highest, and a bitmap of the `window` numbers
/// below it. Duplicates and numbers older than the window are refused; reordering inside the
/// window is accepted; a jump of more than `max_gap` past the highest is refused.
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    highest: u64,
    /// Bit `i` set: `highest - i` has been seen (bit 0 is `highest` itself).
    seen: u128,
    window: u64,
    max_gap: u64,
}

impl ReplayWindow {
    /// A window of `window` (at most 128) numbers, refusing jumps of more than `max_gap`.
    pub fn new(window: u64, max_gap: u64) -> Self {
        ReplayWindow {
            highest: 0,
            seen: 0,
            window: window.clamp(1, 128),
            max_gap,
        }
    }

    /// Checks `seq` without recording it.
    pub fn check(&self, signer: SignerIndex, seq: SeqNo) -> Result<(), CoordinatorError> {
        let s = seq.get();
        if s > self.highest {
            if s - self.highest > self.max_gap {
                return Err(CoordinatorError::SequenceGap {
                    signer,
                    seq,
                    max_gap: self.max_gap,
                });
            }
            return Ok(());
        }
        let age = self.highest - s;
        if age >= self.window {
            return Err(CoordinatorError::StaleSequence { signer, seq });
        }
        if self.seen & (1u128 << age) != 0 {
            return Err(CoordinatorError::Duplicate { signer, seq });
        }
        Ok(())
    }

    /// Records `seq` (call after [`ReplayWindow::check`] and after the message was accepted).
    pub fn record(&mut self, seq: SeqNo) {
        let s = seq.get();
        if s > self.highest {
            let shift = s - self.highest;
            self.seen = if shift >= 128 { 0 } else { self.seen << shift };
            self.seen |= 1;
            self.highest = s;
        } else {
            let age = self.highest - s;
            if age < 128 {
                self.seen |= 1u128 << age;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(n: u64) -> SeqNo {
        SeqNo::new(n).unwrap()
    }

    fn idx() -> SignerIndex {
        SignerIndex::new(3).unwrap()
    }

    fn accept(w: &mut ReplayWindow, n: u64) -> Result<(), CoordinatorError> {
        w.check(idx(), seq(n))?;
        w.record(seq(n));
        Ok(())
    }

    #[test]
    fn in_order_and_reordered_are_accepted_once() {
        let mut w = ReplayWindow::new(64, 100);
        for n in [1, 2, 5, 3, 4, 6] {
            accept(&mut w, n).unwrap();
        }
        for n in [1, 3, 6] {
            assert!(matches!(
                accept(&mut w, n),
                Err(CoordinatorError::Duplicate { .. })
            ));
        }
    }

    #[test]
    fn too_old_is_refused() {
        let mut w = ReplayWindow::new(8, 100);
        accept(&mut w, 20).unwrap();
        assert!(matches!(
            accept(&mut w, 12),
            Err(CoordinatorError::StaleSequence { .. })
        ));
        accept(&mut w, 13).unwrap();
    }

    #[test]
    fn large_gap_is_refused() {
        let mut w = ReplayWindow::new(64, 100);
        accept(&mut w, 1).unwrap();
        assert!(matches!(
            accept(&mut w, 102),
            Err(CoordinatorError::SequenceGap { max_gap: 100, .. })
        ));
        accept(&mut w, 101).unwrap();
    }

    #[test]
    fn window_shift_beyond_128_clears_bitmap() {
        let mut w = ReplayWindow::new(128, 1000);
        accept(&mut w, 1).unwrap();
        accept(&mut w, 500).unwrap();
        accept(&mut w, 499).unwrap();
        assert!(matches!(
            accept(&mut w, 1),
            Err(CoordinatorError::StaleSequence { .. })
        ));
    }
}
