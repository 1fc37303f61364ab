//! Announcements that came over their budget, set aside undecoded until their sender's budget
//! refills or a local caller looks their session up (ADR 0025).

use bytes::Bytes;
use musig2_proto::{Limits, SessionId, SignedAnnouncement};
use musig2_transport::PeerId;

use crate::pending::{PendingBuffer, PendingLimits, Refused};

/// What is known of a set-aside frame's session id: it is learnt (by decoding) only when a
/// local lookup needs it, and then remembered, so each frame is decoded at most once while
/// held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AsideId {
    Unread,
    Id(SessionId),
    Undecodable,
}

/// What a lookup found among the set-aside frames.
#[derive(Debug, Default)]
pub(crate) struct Found {
    /// Announcements of the session looked up, unverified, with the peer that sent each.
    pub(crate) candidates: Vec<(PeerId, SignedAnnouncement)>,
    /// Peers whose set-aside frame did not decode (taken out of the buffer).
    pub(crate) undecodable: Vec<PeerId>,
}

/// Raw announcement frames dropped over the announcement budget, bounded per peer and overall
/// and held for a limited time. Holding one costs no decoding and no signature check; a
/// peer can fill its share, never more.
pub(crate) struct SetAside {
    held: PendingBuffer<AsideId>,
}

impl SetAside {
    pub(crate) fn new(limits: PendingLimits) -> Self {
        SetAside {
            held: PendingBuffer::new(limits),
        }
    }

    pub(crate) fn push(&mut self, from: PeerId, frame: Bytes, now_ms: u64) -> Result<(), Refused> {
        self.held.push(from, AsideId::Unread, frame, now_ms)
    }

    /// Takes out the announcements of `session`, and the frames that turn out undecodable.
    /// Decodes only frames not decoded before; checks no signature.
    pub(crate) fn take(&mut self, session: &SessionId, now_ms: u64, limits: &Limits) -> Found {
        let taken = self.held.take_matching(now_ms, |_, id, frame| {
            if *id == AsideId::Unread {
                *id = match SignedAnnouncement::decode(frame, limits) {
                    Ok(a) => AsideId::Id(a.session_id()),
                    Err(_) => AsideId::Undecodable,
                };
            }
            matches!(id, AsideId::Id(s) if s == session) || *id == AsideId::Undecodable
        });
        let mut found = Found::default();
        for (from, id, frame) in taken {
            match (id, SignedAnnouncement::decode(&frame, limits)) {
                (AsideId::Id(_), Ok(a)) => found.candidates.push((from, a)),
                _ => found.undecodable.push(from),
            }
        }
        found
    }

    /// Takes out, oldest first, the frames `afford` accepts (given the sender and the frame's
    /// length; it is the announcement budget, which takes the bytes of each frame it accepts).
    pub(crate) fn take_affordable(
        &mut self,
        now_ms: u64,
        mut afford: impl FnMut(PeerId, usize) -> bool,
    ) -> Vec<(PeerId, Bytes)> {
        self.held
            .take_matching(now_ms, |from, _, frame| afford(from, frame.len()))
            .into_iter()
            .map(|(from, _, frame)| (from, frame))
            .collect()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.held.len() == 0
    }

    pub(crate) fn len(&self) -> usize {
        self.held.len()
    }

    pub(crate) fn bytes(&self) -> usize {
        self.held.bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pending::tests::peers;
    use musig2_proto::{Announcement, SignerIndex};
    use secp256k1::Keypair;

    fn limits() -> PendingLimits {
        PendingLimits {
            frames_per_peer: 2,
            bytes_per_peer: 4096,
            frames: 4,
            bytes: 8192,
            frame_bytes: 4096,
            lifetime_ms: 1000,
        }
    }

    fn announcement(now_ms: u64) -> (SessionId, Bytes) {
        let creator = Keypair::new(&mut rand::rng());
        let other = Keypair::new(&mut rand::rng());
        let signed = Announcement::new(
            vec![creator.public_key(), other.public_key()],
            b"set aside".to_vec(),
            SignerIndex::new(0).expect("index"),
            now_ms,
            now_ms + 600_000,
        )
        .sign(&creator, &Limits::default())
        .expect("sign");
        (signed.session_id(), Bytes::from(signed.to_frame_bytes()))
    }

    #[test]
    fn a_lookup_finds_its_announcement_and_nothing_else() {
        let p = peers(2);
        let mut aside = SetAside::new(limits());
        let (wanted, frame) = announcement(0);
        let (other, other_frame) = announcement(0);
        aside.push(p[0], frame, 0).unwrap();
        aside.push(p[1], other_frame, 0).unwrap();
        let found = aside.take(&wanted, 1, &Limits::default());
        assert_eq!(found.candidates.len(), 1);
        assert_eq!(found.candidates[0].0, p[0]);
        assert_eq!(found.candidates[0].1.session_id(), wanted);
        assert!(found.undecodable.is_empty());
        // Taken out; the other one stays for its own lookup, its id now known.
        assert_eq!(aside.len(), 1);
        assert!(
            aside
                .take(&wanted, 2, &Limits::default())
                .candidates
                .is_empty()
        );
        assert_eq!(
            aside.take(&other, 3, &Limits::default()).candidates.len(),
            1
        );
        assert_eq!((aside.len(), aside.bytes()), (0, 0));
    }

    #[test]
    fn junk_is_taken_out_and_named_at_the_first_lookup() {
        let p = peers(2);
        let mut aside = SetAside::new(limits());
        aside
            .push(p[1], Bytes::from_static(&[0, 0xff, 0xff]), 0)
            .unwrap();
        let (wanted, frame) = announcement(0);
        aside.push(p[0], frame, 0).unwrap();
        let found = aside.take(&wanted, 1, &Limits::default());
        assert_eq!(found.undecodable, vec![p[1]]);
        assert_eq!(found.candidates.len(), 1);
        assert_eq!(aside.len(), 0);
    }

    #[test]
    fn bounded_per_peer_overall_and_in_time() {
        let p = peers(4);
        let mut aside = SetAside::new(limits());
        for _ in 0..2 {
            aside.push(p[0], announcement(0).1, 0).unwrap();
        }
        assert_eq!(
            aside.push(p[0], announcement(0).1, 0),
            Err(Refused::PeerFull)
        );
        // A crowd fills the buffer; it never holds more than its bounds.
        for peer in &p[1..] {
            for _ in 0..2 {
                let _ = aside.push(*peer, announcement(0).1, 0);
                assert!(aside.len() <= 4 && aside.bytes() <= 8192);
            }
        }
        // Held for the lifetime, then gone (any pass over the buffer expires them).
        let held = aside.len();
        assert!(aside.take_affordable(1000, |_, _| false).is_empty());
        assert_eq!(aside.len(), held);
        assert!(aside.take_affordable(1001, |_, _| false).is_empty());
        assert_eq!((aside.len(), aside.bytes()), (0, 0));
    }
}
