//! How the node shows what it knows to a person or a script: untrusted text escaped, times in
//! local time, aborts with reasons and names instead of debug text.

use musig2_coordinator::{AbortOrigin, Phase, SessionHealth};
use musig2_core::{KeyAggContext, Tweak};
use musig2_proto::{AbortReason, SignerIndex, VerifiedAnnouncement};
use musig2_transport::PeerId;
use secp256k1::PublicKey;
use serde_json::{Value, json};

use crate::{NodeError, Result};

/// Untrusted text made safe to print: every control, bidi, non-printing or invisible character
/// (and the backslash itself) is written as a visible escape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SafeText {
    /// The text with escapes (`\n`, `\r`, `\t`, `\\`, `\u{202e}`).
    pub text: String,
    /// Whether anything was escaped (then show the hex as well).
    pub escaped: bool,
}

/// Whether `c` must not reach a terminal as is: it moves the cursor, changes how the text around
/// it reads (bidi overrides, isolates, marks), is invisible, or is not assigned a glyph.
fn needs_escape(c: char) -> bool {
    let u = u32::from(c);
    c.is_control() // C0, DEL, C1 (ANSI escapes start with ESC or CSI)
        || matches!(u,
            0x00AD // soft hyphen
            | 0x034F // combining grapheme joiner
            | 0x061C // Arabic letter mark
            | 0x115F | 0x1160 | 0x3164 | 0xFFA0 // Hangul fillers
            | 0x17B4 | 0x17B5
            | 0x180B..=0x180F // Mongolian selectors and vowel separator
            | 0x200B..=0x200F // zero-width space/joiners, LRM, RLM
            | 0x2028..=0x202E // line/paragraph separators, bidi embeddings and overrides
            | 0x205F..=0x206F // word joiner, invisible operators, bidi isolates, deprecated
            | 0xFE00..=0xFE0F // variation selectors
            | 0xFEFF // byte order mark / zero-width no-break space
            | 0xFFF9..=0xFFFB // interlinear annotations
            | 0xE0000..=0xE0FFF // tags and variation selectors supplement
            | 0xE000..=0xF8FF // private use
            | 0xF0000..=0x10FFFF
        )
}

/// Escapes `text` for display (see [`SafeText`]).
pub fn escape_untrusted(text: &str) -> SafeText {
    let mut out = String::with_capacity(text.len());
    let mut escaped = false;
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\\' => out.push_str("\\\\"),
            c if needs_escape(c) => out.push_str(&format!("\\u{{{:04x}}}", u32::from(c))),
            c => {
                out.push(c);
                continue;
            }
        }
        escaped = true;
    }
    SafeText { text: out, escaped }
}

/// A message as shown: `text` (escaped; absent when not UTF-8), `escaped`, and `hex`.
pub fn message_json(message: &[u8]) -> Value {
    match std::str::from_utf8(message) {
        Ok(text) => {
            let safe = escape_untrusted(text);
            json!({
                "text": safe.text,
                "escaped": safe.escaped,
                "utf8": true,
                "bytes": message.len(),
                "hex": hex::encode(message),
            })
        }
        Err(_) => json!({
            "text": Value::Null,
            "escaped": false,
            "utf8": false,
            "bytes": message.len(),
            "hex": hex::encode(message),
        }),
    }
}

/// Milliseconds since the UNIX epoch as local time, e.g. `2026-12-02 10:15:00 +01:00`.
pub fn local_time(ms: u64) -> String {
    use chrono::TimeZone;
    match chrono::Local.timestamp_millis_opt(i64::try_from(ms).unwrap_or(i64::MAX)) {
        chrono::LocalResult::Single(t) | chrono::LocalResult::Ambiguous(t, _) => {
            t.format("%Y-%m-%d %H:%M:%S %:z").to_string()
        }
        chrono::LocalResult::None => format!("{ms} ms since 1970"),
    }
}

/// Milliseconds since the UNIX epoch as RFC 3339 UTC, e.g. `2026-12-02T09:15:00.123Z`.
pub fn utc_time(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(i64::try_from(ms).unwrap_or(i64::MAX))
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|| format!("{ms}"))
}

/// Now, in milliseconds since the UNIX epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A duration for people: `45s`, `2m 30s`, `1h 5m`.
pub fn duration_text(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 if s % 60 == 0 => format!("{}m", s / 60),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        _ if s % 3600 / 60 == 0 => format!("{}h", s / 3600),
        _ => format!("{}h {}m", s / 3600, s % 3600 / 60),
    }
}

/// A deadline: `{"at_ms", "local", "utc", "in"}`.
pub fn deadline_json(at_ms: u64, now: u64) -> Value {
    json!({
        "at_ms": at_ms,
        "local": local_time(at_ms),
        "utc": utc_time(at_ms),
        "left": if at_ms > now { duration_text(at_ms - now) } else { "passed".to_owned() },
    })
}

/// The stable name of an abort reason.
pub fn reason_name(reason: AbortReason) -> &'static str {
    match reason {
        AbortReason::Timeout => "timeout",
        AbortReason::Expired => "expired",
        AbortReason::InvalidNonce => "invalid_nonce",
        AbortReason::CommitmentMismatch => "commitment_mismatch",
        AbortReason::InvalidPartialSig => "invalid_partial_signature",
        AbortReason::InvalidAggregateNonce => "invalid_aggregate_nonce",
        AbortReason::Equivocation => "equivocation",
        AbortReason::FailoverExhausted => "failover_exhausted",
        AbortReason::Cancelled => "cancelled",
        AbortReason::Internal => "internal",
        AbortReason::Misrouted => "misrouted",
        AbortReason::Restarted => "restarted",
        AbortReason::InvalidClaim => "invalid_claim",
        #[allow(unreachable_patterns)]
        _ => "other",
    }
}

/// An abort reason in words.
pub fn reason_text(reason: AbortReason) -> &'static str {
    match reason {
        AbortReason::Timeout => "a phase deadline passed before every signer contributed",
        AbortReason::Expired => "the session expired",
        AbortReason::InvalidNonce => "a signer sent an invalid public nonce",
        AbortReason::CommitmentMismatch => "a nonce did not match its commitment",
        AbortReason::InvalidPartialSig => "a signer sent an invalid partial signature",
        AbortReason::InvalidAggregateNonce => "the aggregate nonce did not match the signed nonces",
        AbortReason::Equivocation => "a signer sent two different values for one contribution",
        AbortReason::FailoverExhausted => {
            "every coordinator candidate in the failover order missed its deadline"
        }
        AbortReason::Cancelled => "a signer's operator cancelled",
        AbortReason::Internal => "an internal error on the aborting node",
        AbortReason::Misrouted => {
            "the announcement lists, for the aborting signer's key, a peer that is not that signer's"
        }
        AbortReason::Restarted => {
            "a signer lost a nonce it had sent (crash or restore) and no attempt was left to start again"
        }
        AbortReason::InvalidClaim => {
            "a signer claimed the coordinator role out of turn (wrong position, past the bound, or too early)"
        }
        #[allow(unreachable_patterns)]
        _ => "unknown reason",
    }
}

/// Every phase name [`phase_name`] gives, in session order.
pub const PHASE_NAMES: [&str; 7] = [
    "created",
    "joined",
    "nonce_commit",
    "nonce",
    "partial_signature",
    "done",
    "aborted",
];

/// The stable name of a phase.
pub fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Created => "created",
        Phase::Joined => "joined",
        Phase::NonceCommit => "nonce_commit",
        Phase::Nonce => "nonce",
        Phase::PartialSig => "partial_signature",
        Phase::Done => "done",
        Phase::Aborted => "aborted",
        #[allow(unreachable_patterns)]
        _ => "other",
    }
}

/// Who signer `index` is: index, key, peer id (when announced) and whether it is this node.
pub fn signer_json(
    announcement: Option<&VerifiedAnnouncement>,
    index: SignerIndex,
    me: Option<&PublicKey>,
) -> Value {
    let info = announcement.and_then(|a| a.announcement().signers.get(index.as_usize()));
    json!({
        "index": index.get(),
        "public_key": info.map(|s| s.key.to_string()),
        "peer_id": info
            .and_then(|s| s.peer_id.as_ref())
            .and_then(|p| PeerId::from_bytes(p.as_bytes()).ok())
            .map(|p| p.to_string()),
        "this_node": info.is_some_and(|s| Some(&s.key) == me),
    })
}

/// A signer (as [`signer_json`] gives) in words: `signer #1 (key …, peer …) = THIS NODE`.
pub fn signer_words(signer: &Value) -> String {
    let mut words = format!("signer #{}", signer["index"]);
    if let Some(key) = signer["public_key"].as_str() {
        words.push_str(&format!(" (key {key}"));
        if let Some(peer) = signer["peer_id"].as_str() {
            words.push_str(&format!(", peer {peer}"));
        }
        words.push(')');
    }
    if signer["this_node"] == true {
        words.push_str(" = THIS NODE");
    }
    words
}

/// An abort as JSON: reason (name and words), blamed signers and who said so.
pub fn abort_json(
    announcement: Option<&VerifiedAnnouncement>,
    reason: AbortReason,
    blamed: &[SignerIndex],
    origin: AbortOrigin,
    me: Option<&PublicKey>,
) -> Value {
    let blamed: Vec<Value> = blamed
        .iter()
        .map(|&i| signer_json(announcement, i, me))
        .collect();
    let origin = match origin {
        AbortOrigin::Local => json!({ "kind": "local", "text": "this node's own finding" }),
        AbortOrigin::Remote(signer) => json!({
            "kind": "remote",
            "text": "another signer's signed claim (not verified by this node)",
            "signer": signer_json(announcement, signer, me),
        }),
    };
    json!({
        "reason": reason_name(reason),
        "reason_text": reason_text(reason),
        "blamed": blamed,
        "origin": origin,
    })
}

/// An abort (as [`abort_json`] gives) in one sentence.
pub fn abort_words(abort: &Value) -> String {
    let blamed = abort["blamed"]
        .as_array()
        .map_or_else(Vec::new, |b| b.iter().map(signer_words).collect::<Vec<_>>());
    let blamed = if blamed.is_empty() {
        "nobody blamed".to_owned()
    } else {
        format!("blamed: {}", blamed.join("; "))
    };
    let origin = match abort["origin"]["kind"].as_str() {
        Some("remote") => format!(
            "claimed by {}, not verified by this node",
            signer_words(&abort["origin"]["signer"])
        ),
        _ => "this node's own finding".to_owned(),
    };
    format!(
        "{} ({}); {blamed}; {origin}",
        abort["reason"].as_str().unwrap_or("?"),
        abort["reason_text"].as_str().unwrap_or("?"),
    )
}

/// One session's progress as JSON.
pub fn health_json(
    health: &SessionHealth,
    announcement: Option<&VerifiedAnnouncement>,
    me: Option<&PublicKey>,
) -> Value {
    json!({
        "session": health.session.to_string(),
        "phase": phase_name(health.phase),
        "signer": health.signer.get(),
        "signers": health.signers,
        "age_ms": health.age_ms,
        "holdouts": health.holdouts.iter().map(|&s| signer_json(announcement, s, me)).collect::<Vec<_>>(),
        "joined": health.joined,
        "all_joined": health.all_joined,
        "commitments": health.commitments,
        "nonces": health.nonces,
        "partial_signatures": health.partial_signatures,
        "coordinator": health.coordinator.get(),
        "attempt": health.attempt.get(),
        "rejected_messages": health.rejected_messages,
    })
}

/// One line of progress for a person waiting on a session (from a `status` reply): phase, joins
/// seen, who is holding it up, and the time left (to the join deadline while joining, else to
/// the expiry).
pub fn progress_line(status: &Value) -> String {
    let holdouts: Vec<String> = status["holdouts"]
        .as_array()
        .map(|h| {
            h.iter()
                .map(|x| {
                    let key = x["public_key"].as_str().unwrap_or("");
                    let mine = if x["this_node"] == true {
                        " (this node)"
                    } else {
                        ""
                    };
                    format!("#{} {}{mine}", x["index"], key.get(..10).unwrap_or(key))
                })
                .collect()
        })
        .unwrap_or_default();
    let phase = status["phase"].as_str().unwrap_or("?");
    let attempt = match status["attempt"].as_u64() {
        Some(a) if a > 0 => format!(" (attempt {a}, after a signer restarted)"),
        _ => String::new(),
    };
    let (deadline, what) = if matches!(phase, "created" | "joined") {
        (&status["join_deadline"], "to join")
    } else {
        (&status["expires"], "until expiry")
    };
    // A star member sees few joins (ADR 0019); once it knows all are in, it says so.
    let joins = if status["all_joined"] == true {
        "all joined".to_owned()
    } else {
        format!("joins seen {}/{}", status["joined"], status["signers"])
    };
    format!(
        "phase {phase}{attempt}, {joins}, waiting for {}, {} left {what}",
        if holdouts.is_empty() {
            "nobody".to_owned()
        } else {
            holdouts.join(", ")
        },
        deadline["left"].as_str().unwrap_or("?"),
    )
}

/// Tweak and Taproot details of a session: the tweaks in order, the key before the last tweak
/// (the Taproot internal key when the last tweak is a Taproot one), whether the last tweak is
/// the BIP341 key-path tweak, and whether it matches `merkle_root` when one is given.
fn tweaks_json(
    keys: &[PublicKey],
    tweaks: &[Tweak],
    merkle_root: Option<&[u8; 32]>,
) -> Result<Value> {
    let ctx = KeyAggContext::new(keys).map_err(|e| NodeError::invalid("signers", e))?;
    let untweaked = ctx.x_only_key();
    let Some((last, before)) = tweaks.split_last() else {
        return Ok(json!({
            "tweaks": [],
            "untweaked_key": untweaked.to_string(),
            "taproot": false,
        }));
    };
    let internal = ctx
        .with_tweaks(before)
        .map_err(|e| NodeError::invalid("tweaks", e))?
        .x_only_key();
    let is = |root: Option<&[u8; 32]>| Tweak::taproot(&internal, root).is_ok_and(|t| t == *last);
    let key_path_only = is(None);
    let root_matches = merkle_root.map(|root| is(Some(root)));
    let taproot = key_path_only || root_matches == Some(true);
    Ok(json!({
        "tweaks": tweaks.iter().map(|t| json!({
            "value": hex::encode(t.value()),
            "x_only": t.is_x_only(),
        })).collect::<Vec<_>>(),
        "untweaked_key": untweaked.to_string(),
        "taproot": taproot,
        "taproot_internal_key": internal.to_string(),
        "taproot_key_path_only": key_path_only,
        "taproot_merkle_root": merkle_root.map(hex::encode),
        "taproot_merkle_root_matches": root_matches,
        "taproot_note": if taproot { Value::Null } else if last.is_x_only() {
            json!("the last tweak is x-only but not the key-path Taproot tweak: it may commit to a script tree; check with --taproot-merkle-root")
        } else {
            Value::Null
        },
    }))
}

/// What a session would sign, for a person to read before joining: the message (escaped), the
/// signers, the key the signature will be under, tweaks and Taproot details, rules and deadlines.
pub fn announcement_json(
    verified: &VerifiedAnnouncement,
    me: Option<&PublicKey>,
    merkle_root: Option<&[u8; 32]>,
) -> Result<Value> {
    let announcement = verified.announcement();
    let keys = verified.signer_keys();
    let untweaked =
        KeyAggContext::new(&keys).map_err(|e| NodeError::invalid("announcement signers", e))?;
    let messages = announcement
        .messages
        .iter()
        .map(|m| {
            let tweaks = musig2_coordinator::message_tweaks(m)
                .map_err(|e| NodeError::invalid("announcement tweaks", e))?;
            let aggregate = untweaked
                .clone()
                .with_tweaks(&tweaks)
                .map_err(|e| NodeError::invalid("announcement tweaks", e))?;
            Ok(json!({
                "message": message_json(&m.message),
                "output_key": aggregate.x_only_key().to_string(),
                "tweak_details": tweaks_json(&keys, &tweaks, merkle_root)?,
            }))
        })
        .collect::<Result<Vec<Value>>>()?;
    let policy = &announcement.policy;
    let t = &policy.timeouts;
    let now = now_ms();
    let join_end = announcement.created_at_ms.saturating_add(t.join_ms);
    let first = messages.first().cloned().unwrap_or(Value::Null);
    Ok(json!({
        "session": verified.session_id().to_string(),
        // The first message at the top level: the whole session when it signs one.
        "message": first["message"],
        "output_key": first["output_key"],
        "aggregate_key": first["output_key"],
        "tweak_details": first["tweak_details"],
        "messages": messages,
        "document_digest": announcement.document_digest.map(hex::encode),
        "creator": signer_json(Some(verified), announcement.creator, me),
        "signers": (0..announcement.signers.len())
            .filter_map(|i| SignerIndex::try_from(i).ok())
            .map(|i| signer_json(Some(verified), i, me))
            .collect::<Vec<_>>(),
        "topology": format!("{:?}", policy.topology).to_lowercase(),
        "nonce_commitment": policy.nonce_commitment,
        "election": match policy.election {
            musig2_proto::ElectionMethod::Lexicographic => "lexicographic",
            musig2_proto::ElectionMethod::HashBased => "hash_based",
            musig2_proto::ElectionMethod::FirstSigner => "first_signer",
            musig2_proto::ElectionMethod::LastSigner => "last_signer",
            #[allow(unreachable_patterns)]
            _ => "other",
        },
        "created": {
            "at_ms": announcement.created_at_ms,
            "local": local_time(announcement.created_at_ms),
            "utc": utc_time(announcement.created_at_ms),
        },
        "join_deadline": deadline_json(join_end, now),
        "expires": deadline_json(announcement.expires_at_ms, now),
        "timeouts_ms": {
            "join": t.join_ms,
            "nonce": t.nonce_ms,
            "partial_signature": t.partial_sig_ms,
            "broadcast": t.broadcast_ms,
            "rounds": t.session_ms,
        },
    }))
}

/// A session's signatures, one per message, as JSON: `signatures` always, and `signature`
/// (the first) for the single-message sessions most callers make.
pub fn signatures_json(value: &mut Value, signatures: &[secp256k1::schnorr::Signature]) {
    value["signatures"] = json!(signatures.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    if let Some(first) = signatures.first() {
        value["signature"] = json!(first.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spoofing_characters_are_escaped_visibly() {
        let spoof = escape_untrusted("pay 100 BTC to Mallory\rpay 1 BTC to Carol");
        assert_eq!(spoof.text, "pay 100 BTC to Mallory\\rpay 1 BTC to Carol");
        assert!(spoof.escaped);
        let ansi = escape_untrusted("\u{1b}[2Kok\u{9b}31m");
        assert_eq!(ansi.text, "\\u{001b}[2Kok\\u{009b}31m");
        let bidi = escape_untrusted("pay \u{202e}lorac\u{202c} 1 BTC\u{200b}\u{2066}");
        assert_eq!(
            bidi.text,
            "pay \\u{202e}lorac\\u{202c} 1 BTC\\u{200b}\\u{2066}"
        );
        assert_eq!(escape_untrusted("a\\u{1b}").text, "a\\\\u{1b}");
        let plain = escape_untrusted("pay 1 BTC to Carol — café ✓");
        assert_eq!(plain.text, "pay 1 BTC to Carol — café ✓");
        assert!(!plain.escaped);
        let bytes = message_json(&[0xff, 0x00]);
        assert_eq!(bytes["text"], Value::Null);
        assert_eq!(bytes["hex"], "ff00");
    }

    #[test]
    fn progress_names_phase_holdouts_and_time_left() {
        let status = json!({
            "phase": "joined",
            "joined": 2,
            "signers": 3,
            "holdouts": [{"index": 2, "public_key": "02abcdef0123456789", "this_node": false}],
            "join_deadline": {"left": "4m 10s"},
            "expires": {"left": "14m"},
        });
        assert_eq!(
            progress_line(&status),
            "phase joined, joins seen 2/3, waiting for #2 02abcdef01, 4m 10s left to join"
        );
        let mut later = status.clone();
        later["phase"] = json!("nonce");
        later["holdouts"] = json!([]);
        assert_eq!(
            progress_line(&later),
            "phase nonce, joins seen 2/3, waiting for nobody, 14m left until expiry"
        );
        later["all_joined"] = json!(true);
        later["joined"] = json!(1);
        assert_eq!(
            progress_line(&later),
            "phase nonce, all joined, waiting for nobody, 14m left until expiry"
        );
        later["attempt"] = json!(1);
        assert!(
            progress_line(&later).starts_with("phase nonce (attempt 1, after a signer restarted)"),
            "{}",
            progress_line(&later)
        );
        for phase in PHASE_NAMES {
            assert!(!phase.contains(' '));
        }
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(duration_text(45_000), "45s");
        assert_eq!(duration_text(120_000), "2m");
        assert_eq!(duration_text(150_000), "2m 30s");
        assert_eq!(duration_text(3_900_000), "1h 5m");
        assert!(utc_time(0).starts_with("1970-01-01T00:00:00"));
    }
}
