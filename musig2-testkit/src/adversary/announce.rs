//! Forged announcements: the creator's signed announcement with its content changed and the
//! creator's signature kept (see [`Behaviour::ForgeAnnouncement`](super::Behaviour)).

use musig2_coordinator::dht_key;
use musig2_proto::SignedAnnouncement;

use super::{Actor, PeerId};

/// How long the forged DHT records live.
const RECORD_TTL: std::time::Duration = std::time::Duration::from_secs(600);

/// `frame` with the first occurrence of `needle` replaced by `with` (same length), or `None`
/// when `needle` does not occur or the lengths differ.
fn replace_once(frame: &[u8], needle: &[u8], with: &[u8]) -> Option<Vec<u8>> {
    if needle.is_empty() || needle.len() != with.len() {
        return None;
    }
    let pos = frame.windows(needle.len()).position(|w| w == needle)?;
    let mut out = frame.to_vec();
    out[pos..pos + with.len()].copy_from_slice(with);
    Some(out)
}

impl Actor {
    /// The tampered announcements, still well-formed frames, with their recomputed session ids.
    fn forged_announcements(&self) -> Vec<(SignedAnnouncement, Vec<u8>)> {
        let (Some(original), Some(s)) = (&self.announcement, &self.session) else {
            return Vec::new();
        };
        let frame = original.to_frame_bytes();
        let message = &original.announcement().messages[0].message;
        let ours: Vec<u8> = b"pay the adversary "
            .iter()
            .copied()
            .cycle()
            .take(message.len())
            .collect();
        let mut variants = vec![replace_once(&frame, message, &ours)];
        // Another signer's peer id swapped for ours: its messages would be routed to us.
        let me = self.transport.local_peer_id().to_bytes();
        let victim = s
            .others()
            .into_iter()
            .find(|&i| i != original.announcement().creator)
            .and_then(|i| s.peers.get(i.as_usize()).copied().flatten())
            .map(|p: PeerId| p.to_bytes());
        if let Some(victim) = victim {
            variants.push(replace_once(&frame, &victim, &me));
        }
        variants
            .into_iter()
            .flatten()
            .filter_map(|bytes| {
                let decoded = SignedAnnouncement::decode(&bytes, &self.limits).ok()?;
                Some((decoded, bytes))
            })
            .collect()
    }

    /// Sends every forged announcement to `peers` and stores it in the DHT under its own session
    /// id and under the real session's.
    pub(super) async fn forge_announcements(&mut self, peers: &[PeerId]) {
        let Some(real) = self.session.as_ref().map(|s| s.id) else {
            return;
        };
        for (forged, bytes) in self.forged_announcements() {
            let id = forged.session_id();
            self.log.forged_sessions.push(id);
            self.send_all(peers, &bytes).await;
            for key in [dht_key(&id), dht_key(&real)] {
                if let Err(e) = self.transport.dht_put(key, bytes.clone(), RECORD_TTL).await {
                    tracing::debug!(error = %e, "forged DHT put failed");
                }
            }
        }
    }
}
