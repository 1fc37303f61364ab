//! A PSBT as one signing session: every input this node signs becomes one message of a
//! multi-message session, and the announcement carries the PSBT's digest so every signer can
//! check it is being asked to sign the transaction it reviewed.
//!
//! The check compares [`SessionTerms`]: what a session signs (signers, messages with their
//! tweaks, document digest), taken either from a verified announcement or from `session show`'s
//! JSON, against what the PSBT asks for. A signer that checks before joining can not be made to
//! sign an input it was not shown.

use ::bitcoin::Psbt;
use musig2_bitcoin::{PlanEntry, psbt_digest, signing_plan};
use musig2_coordinator::SessionRequest;
use musig2_core::Tweak;
use musig2_proto::{Limits, MessageToSign, Policy, VerifiedAnnouncement};
use secp256k1::PublicKey;
use serde_json::Value;

use crate::{NodeError, Result};

/// What a session signs: its signers in key-aggregation order, its messages with their tweaks
/// in order, and the digest of the document they come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionTerms {
    /// The signers, in key-aggregation order.
    pub signers: Vec<PublicKey>,
    /// Each message and the tweaks of its key.
    pub messages: Vec<(Vec<u8>, Vec<Tweak>)>,
    /// The digest of the document the messages come from (a PSBT's, for PSBT sessions).
    pub document_digest: Option<[u8; 32]>,
}

impl SessionTerms {
    /// The terms of a verified announcement.
    pub fn of_announcement(announcement: &VerifiedAnnouncement) -> Result<SessionTerms> {
        let a = announcement.announcement();
        let messages = a
            .messages
            .iter()
            .map(|m| {
                let tweaks = musig2_coordinator::message_tweaks(m)
                    .map_err(|e| NodeError::invalid("announcement tweaks", e))?;
                Ok((m.message.clone(), tweaks))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(SessionTerms {
            signers: announcement.signer_keys(),
            messages,
            document_digest: a.document_digest,
        })
    }

    /// The terms in `session show --json`'s output (the daemon's `show` reply).
    pub fn of_show_json(show: &Value) -> Result<SessionTerms> {
        let bad = |reason: &str| NodeError::invalid("session show reply", reason.to_owned());
        let signers = show["signers"]
            .as_array()
            .ok_or_else(|| bad("no signers"))?
            .iter()
            .map(|s| {
                s["public_key"]
                    .as_str()
                    .and_then(|k| k.parse::<PublicKey>().ok())
                    .ok_or_else(|| bad("a signer without a key"))
            })
            .collect::<Result<Vec<_>>>()?;
        let messages = show["messages"]
            .as_array()
            .ok_or_else(|| bad("no messages"))?
            .iter()
            .map(|m| {
                let message = m["message"]["hex"]
                    .as_str()
                    .and_then(|h| hex::decode(h).ok())
                    .ok_or_else(|| bad("a message without hex"))?;
                let tweaks = m["tweak_details"]["tweaks"]
                    .as_array()
                    .ok_or_else(|| bad("a message without tweaks"))?
                    .iter()
                    .map(|t| {
                        let mut value = [0u8; 32];
                        hex::decode_to_slice(t["value"].as_str().unwrap_or_default(), &mut value)
                            .map_err(|_| bad("a tweak without a value"))?;
                        Tweak::new(value, t["x_only"] == true).map_err(|_| bad("an invalid tweak"))
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok((message, tweaks))
            })
            .collect::<Result<Vec<_>>>()?;
        let document_digest = match &show["document_digest"] {
            Value::Null => None,
            v => {
                let mut digest = [0u8; 32];
                hex::decode_to_slice(v.as_str().unwrap_or_default(), &mut digest)
                    .map_err(|_| bad("a document digest that is not 32 bytes"))?;
                Some(digest)
            }
        };
        Ok(SessionTerms {
            signers,
            messages,
            document_digest,
        })
    }
}

/// One session for a PSBT: the plan entries of every input `our_key` signs (in input order;
/// entry `i` is the session's message `i`) and the session's terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PsbtSession {
    /// What is signed for each input, in the session's message order.
    pub entries: Vec<PlanEntry>,
    /// The session terms the PSBT asks for.
    pub terms: SessionTerms,
}

impl PsbtSession {
    /// The session for every input of `psbt` that `our_key` signs. Refused when it signs none,
    /// when the inputs belong to more than one signer set (one session has one set: sign them
    /// in a session per set), or when there are more than `limits.max_messages` of them.
    pub fn new(psbt: &Psbt, our_key: &PublicKey, limits: &Limits) -> Result<PsbtSession> {
        // The network only names addresses in the approval view; messages do not depend on it.
        let plan = signing_plan(psbt, our_key, ::bitcoin::Network::Bitcoin)?;
        let Some(first) = plan.entries.first() else {
            return Err(NodeError::invalid(
                "psbt",
                format!("key {our_key} signs no input of this PSBT"),
            ));
        };
        let signers = first.signers.clone();
        if let Some(other) = plan.entries.iter().find(|e| e.signers != signers) {
            return Err(NodeError::invalid(
                "psbt",
                format!(
                    "inputs {} and {} have different signer sets; a session signs for one set \
                     (split the PSBT, one session per set)",
                    first.input_index, other.input_index
                ),
            ));
        }
        if plan.entries.len() > limits.max_messages {
            return Err(NodeError::invalid(
                "psbt",
                format!(
                    "{} inputs to sign; a session signs at most {} messages",
                    plan.entries.len(),
                    limits.max_messages
                ),
            ));
        }
        let messages = plan
            .entries
            .iter()
            .map(|e| (e.message.to_vec(), e.tweaks.clone()))
            .collect();
        Ok(PsbtSession {
            terms: SessionTerms {
                signers,
                messages,
                document_digest: Some(psbt_digest(psbt)),
            },
            entries: plan.entries,
        })
    }

    /// The session's messages as the wire carries them.
    pub fn messages(&self) -> Result<Vec<MessageToSign>> {
        self.terms
            .messages
            .iter()
            .map(|(message, tweaks)| {
                Ok(MessageToSign {
                    message: message.clone(),
                    tweaks: tweaks
                        .iter()
                        .map(|t| musig2_proto::Tweak::new(t.value(), t.is_x_only()))
                        .collect::<std::result::Result<_, _>>()
                        .map_err(|e| NodeError::invalid("tweaks", e))?,
                })
            })
            .collect()
    }

    /// A request to create this session under `policy`, announced directly to `peers` (one
    /// per signer, or empty: the others look it up in the DHT).
    pub fn request(
        &self,
        peers: Vec<Option<musig2_transport::PeerId>>,
        policy: Policy,
    ) -> Result<SessionRequest> {
        Ok(SessionRequest {
            signers: self.terms.signers.clone(),
            peers,
            messages: self.messages()?,
            document_digest: self.terms.document_digest,
            policy,
        })
    }

    /// Refuses a session whose terms are not this PSBT's, saying what differs: the signers,
    /// the number of messages, a message or its tweaks (naming the input), or the digest.
    pub fn check(&self, session: &SessionTerms) -> Result<()> {
        let refuse = |what: String| {
            Err(NodeError::Rejected(format!(
                "the session does not sign this PSBT: {what}"
            )))
        };
        if session.signers != self.terms.signers {
            return refuse("its signers are not the PSBT's participants".to_owned());
        }
        if session.document_digest != self.terms.document_digest {
            return refuse(match session.document_digest {
                Some(d) => format!(
                    "it names document digest {}, the PSBT's is {}",
                    hex::encode(d),
                    self.terms
                        .document_digest
                        .map(hex::encode)
                        .unwrap_or_default()
                ),
                None => "it names no document digest".to_owned(),
            });
        }
        if session.messages.len() != self.terms.messages.len() {
            return refuse(format!(
                "it signs {} messages, the PSBT has {} inputs for this key",
                session.messages.len(),
                self.terms.messages.len()
            ));
        }
        for ((got, want), entry) in session
            .messages
            .iter()
            .zip(&self.terms.messages)
            .zip(&self.entries)
        {
            if got.0 != want.0 {
                return refuse(format!(
                    "its message for input {} is not the input's sighash",
                    entry.input_index
                ));
            }
            if got.1 != want.1 {
                return refuse(format!(
                    "its key tweaks for input {} are not the input's",
                    entry.input_index
                ));
            }
        }
        Ok(())
    }
}
