//! Signing plans: which inputs of a PSBT a signer can sign for with MuSig2, with the exact key
//! aggregation tweaks, the BIP341 message, and what the user is asked to approve.

use std::collections::BTreeMap;

use bitcoin::bip32::{ChildNumber, KeySource};
use bitcoin::hashes::Hash;
use bitcoin::psbt::{Input, Psbt};
use bitcoin::script::Instruction;
use bitcoin::secp256k1::Secp256k1;
use bitcoin::sighash::{Prevouts, SighashCache};
use bitcoin::taproot::{ControlBlock, LeafVersion, TapLeafHash};
use bitcoin::{Address, Amount, Network, OutPoint, ScriptBuf, TapSighashType, TxOut};
use musig2_core::secp256k1::{PublicKey, XOnlyPublicKey};
use musig2_core::{AggregateXpub, KeyAggContext, Tweak};

use crate::bip373::{ContributionKey, ParticipantPubkeys, input_participants, output_participants};
use crate::convert::{from_btc_xonly, to_btc_xonly};
use crate::error::{Error, Location, Result};

/// How an input is spent by the aggregate key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpendPath {
    /// Key path; the output key *is* the aggregate key (no Taproot tweak).
    OutputKey,
    /// Key path; the internal key is the aggregate key, or derived from it along
    /// `derivation` (BIP328; empty when it is the aggregate itself).
    InternalKey {
        /// Unhardened BIP32 steps from the aggregate's synthetic xpub.
        derivation: Vec<u32>,
    },
    /// Script path; a leaf script holds the aggregate key (or a key derived from it).
    ScriptLeaf {
        /// Unhardened BIP32 steps from the aggregate's synthetic xpub (empty if none).
        derivation: Vec<u32>,
        /// The leaf script.
        script: ScriptBuf,
        /// Its control block.
        control_block: ControlBlock,
    },
}

/// One input to sign: everything a k-message signing session needs for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanEntry {
    /// Index of the input in the PSBT.
    pub input_index: usize,
    /// The BIP341 sighash: the 32-byte message to sign.
    pub message: [u8; 32],
    /// The signers' keys, in KeyAgg order (as listed in `PSBT_IN_MUSIG2_PARTICIPANT_PUBKEYS`).
    pub signers: Vec<PublicKey>,
    /// Tweaks to apply to the key aggregation, in order: BIP32 unhardened steps as plain tweaks,
    /// then the BIP341 Taproot tweak (key path only).
    pub tweaks: Vec<Tweak>,
    /// The leaf hash on the script path, `None` on the key path.
    pub leaf_hash: Option<[u8; 32]>,
    /// The sighash type the message commits to.
    pub sighash_type: TapSighashType,
    /// The untweaked aggregate key (the key data of the participant-pubkeys field).
    pub aggregate_key: PublicKey,
    /// The plain key after all tweaks: BIP373's key data for nonces and partial signatures.
    pub signing_key: PublicKey,
    /// The x-only key the final signature verifies under.
    pub verify_key: XOnlyPublicKey,
    /// How the input is spent.
    pub path: SpendPath,
}

impl PlanEntry {
    /// The key-aggregation context to sign with: KeyAgg over [`signers`](Self::signers), then
    /// [`tweaks`](Self::tweaks).
    pub fn key_agg(&self) -> Result<KeyAggContext> {
        Ok(KeyAggContext::new(&self.signers)?.with_tweaks(&self.tweaks)?)
    }

    /// The BIP373 key data for `participant`'s nonce or partial signature on this entry.
    pub fn contribution_key(&self, participant: &PublicKey) -> ContributionKey {
        ContributionKey {
            participant: *participant,
            signing_key: self.signing_key,
            leaf_hash: self.leaf_hash.map(TapLeafHash::from_byte_array),
        }
    }
}

/// An input as shown to the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputSummary {
    /// Index in the PSBT.
    pub index: usize,
    /// The output it spends.
    pub previous_output: OutPoint,
    /// Amount spent, if the PSBT says.
    pub amount: Option<Amount>,
    /// Address spent from, if the script has one.
    pub address: Option<Address>,
    /// Whether we sign this input.
    pub signed_by_us: bool,
}

/// An output as shown to the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputSummary {
    /// Index in the transaction.
    pub index: usize,
    /// Amount.
    pub amount: Amount,
    /// Address, if the script has one.
    pub address: Option<Address>,
    /// The script.
    pub script_pubkey: ScriptBuf,
    /// Change: `PSBT_OUT_MUSIG2_PARTICIPANT_PUBKEYS` names a signer set with our key, and the
    /// script was checked to pay to that aggregate (directly, via its internal key, or via a key
    /// derived from it).
    pub change: bool,
}

/// What the user approves before signing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    /// Every input.
    pub inputs: Vec<InputSummary>,
    /// Every output.
    pub outputs: Vec<OutputSummary>,
    /// Inputs minus outputs, if every input amount is known.
    pub fee: Option<Amount>,
    /// Sum of outputs that are not change.
    pub sent: Amount,
}

/// Every input a signer can sign, and what to approve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningPlan {
    /// One entry per input we sign, in input order.
    pub entries: Vec<PlanEntry>,
    /// Inputs whose participant-pubkeys field lists our key but whose script matched no
    /// aggregate (or derived) key: nothing is signed for them. Worth a warning.
    pub unmatched: Vec<usize>,
    /// What the user is asked to approve.
    pub approval: Approval,
}

fn utxo(psbt: &Psbt, i: usize) -> Option<&TxOut> {
    let input = psbt.inputs.get(i)?;
    if let Some(w) = &input.witness_utxo {
        return Some(w);
    }
    let vout = psbt.unsigned_tx.input.get(i)?.previous_output.vout;
    input.non_witness_utxo.as_ref()?.output.get(vout as usize)
}

fn p2tr_key(spk: &ScriptBuf) -> Option<XOnlyPublicKey> {
    spk.is_p2tr()
        .then(|| XOnlyPublicKey::from_byte_array(spk.as_bytes()[2..34].try_into().ok()?).ok())
        .flatten()
}

/// The unhardened path from `aggregate`'s synthetic xpub to `key`, if `origins` records one
/// (by the xpub's fingerprint) and it really leads there; `Some(vec![])` if `key` is the
/// aggregate itself.
fn derivation_to(
    aggregate: &PublicKey,
    key: &XOnlyPublicKey,
    origins: &BTreeMap<bitcoin::secp256k1::XOnlyPublicKey, (Vec<TapLeafHash>, KeySource)>,
) -> Option<(Vec<u32>, Vec<Tweak>, PublicKey)> {
    if aggregate.x_only_public_key().0 == *key {
        return Some((Vec::new(), Vec::new(), *aggregate));
    }
    let xpub = AggregateXpub::new(*aggregate);
    let (_, (fingerprint, path)) = origins.get(&to_btc_xonly(key))?;
    if fingerprint.to_bytes() != xpub.fingerprint() {
        return None;
    }
    let steps = path
        .into_iter()
        .map(|c| match c {
            ChildNumber::Normal { index } => Some(*index),
            ChildNumber::Hardened { .. } => None,
        })
        .collect::<Option<Vec<u32>>>()?;
    let (node, tweaks) = xpub.derive_path(&steps).ok()?;
    (node.public_key().x_only_public_key().0 == *key).then_some((steps, tweaks, node.public_key()))
}

/// The 32-byte keys pushed by a leaf script.
fn leaf_keys(script: &ScriptBuf) -> Vec<XOnlyPublicKey> {
    script
        .instructions()
        .filter_map(|i| match i {
            Ok(Instruction::PushBytes(b)) if b.len() == 32 => {
                XOnlyPublicKey::from_byte_array(b.as_bytes().try_into().ok()?).ok()
            }
            _ => None,
        })
        .collect()
}

/// A spend path found for one signer set, before the sighash.
struct Found {
    path: SpendPath,
    tweaks: Vec<Tweak>,
    signing_key: PublicKey,
    verify_key: XOnlyPublicKey,
    leaf_hash: Option<TapLeafHash>,
}

/// Finds how `set` can spend an input paying to `output_key`; key path first.
fn find_path(
    input: &Input,
    set: &ParticipantPubkeys,
    ctx: &KeyAggContext,
    output_key: &XOnlyPublicKey,
) -> Result<Option<Found>> {
    let agg = set.aggregate;
    if agg.x_only_public_key().0 == *output_key {
        return Ok(Some(Found {
            path: SpendPath::OutputKey,
            tweaks: Vec::new(),
            signing_key: agg,
            verify_key: *output_key,
            leaf_hash: None,
        }));
    }
    if let Some(internal) = input.tap_internal_key.as_ref().map(from_btc_xonly) {
        if let Some((derivation, mut tweaks, _)) =
            derivation_to(&agg, &internal, &input.tap_key_origins)
        {
            let root = input.tap_merkle_root.map(|r| r.to_byte_array());
            tweaks.push(Tweak::taproot(&internal, root.as_ref())?);
            let tweaked = ctx.clone().with_tweaks(&tweaks)?;
            if tweaked.x_only_key() == *output_key {
                return Ok(Some(Found {
                    path: SpendPath::InternalKey { derivation },
                    tweaks,
                    signing_key: tweaked.aggregate_key(),
                    verify_key: *output_key,
                    leaf_hash: None,
                }));
            }
        }
    }
    let secp = Secp256k1::verification_only();
    let btc_output_key = to_btc_xonly(output_key);
    // Shortest control block first, so the cheapest proof of a leaf wins.
    let mut leaves: Vec<_> = input.tap_scripts.iter().collect();
    leaves.sort_by_key(|(cb, _)| cb.merkle_branch.len());
    for (control_block, (script, version)) in leaves {
        if *version != LeafVersion::TapScript
            || !control_block.verify_taproot_commitment(&secp, btc_output_key, script)
        {
            continue;
        }
        let leaf_hash = TapLeafHash::from_script(script, *version);
        for key in leaf_keys(script) {
            if let Some((derivation, tweaks, derived)) =
                derivation_to(&agg, &key, &input.tap_key_origins)
            {
                return Ok(Some(Found {
                    path: SpendPath::ScriptLeaf {
                        derivation,
                        script: script.clone(),
                        control_block: control_block.clone(),
                    },
                    tweaks,
                    signing_key: derived,
                    verify_key: key,
                    leaf_hash: Some(leaf_hash),
                }));
            }
        }
    }
    Ok(None)
}

/// KeyAgg over a participant-pubkeys field, checked against its aggregate key.
fn checked_key_agg(set: &ParticipantPubkeys, location: Location) -> Result<KeyAggContext> {
    let ctx = KeyAggContext::new(&set.participants)?;
    if ctx.aggregate_key() != set.aggregate {
        return Err(Error::AggregateMismatch { location });
    }
    Ok(ctx)
}

/// The BIP341 sighash of input `index` (key path if `leaf_hash` is `None`).
fn sighash(
    psbt: &Psbt,
    index: usize,
    leaf_hash: Option<TapLeafHash>,
    sighash_type: TapSighashType,
) -> Result<[u8; 32]> {
    let all: Option<Vec<TxOut>> = (0..psbt.inputs.len())
        .map(|i| utxo(psbt, i).cloned())
        .collect();
    let own = utxo(psbt, index)
        .cloned()
        .ok_or(Error::MissingUtxo(index))?;
    let anyone_can_pay = matches!(
        sighash_type,
        TapSighashType::AllPlusAnyoneCanPay
            | TapSighashType::NonePlusAnyoneCanPay
            | TapSighashType::SinglePlusAnyoneCanPay
    );
    let prevouts = match &all {
        Some(all) => Prevouts::All(all),
        None if anyone_can_pay => Prevouts::One(index, own),
        None => {
            let missing = (0..psbt.inputs.len()).find(|i| utxo(psbt, *i).is_none());
            return Err(Error::MissingUtxo(missing.unwrap_or(index)));
        }
    };
    let mut cache = SighashCache::new(&psbt.unsigned_tx);
    let hash = match leaf_hash {
        None => cache.taproot_key_spend_signature_hash(index, &prevouts, sighash_type),
        Some(leaf) => {
            cache.taproot_script_spend_signature_hash(index, &prevouts, leaf, sighash_type)
        }
    };
    hash.map(|h| h.to_byte_array()).map_err(|e| Error::Sighash {
        input: index,
        reason: e.to_string(),
    })
}

/// What planning one input gave.
enum InputPlan {
    /// No participant-pubkeys field (of interest) on the input.
    NotMusig,
    /// Participant fields, but no spend path for them.
    Unmatched,
    /// An entry to sign.
    Entry(Box<PlanEntry>),
}

/// Plans input `index` for the first signer set in `sets` that can spend it.
fn plan_input(psbt: &Psbt, index: usize, sets: &[ParticipantPubkeys]) -> Result<InputPlan> {
    if sets.is_empty() {
        return Ok(InputPlan::NotMusig);
    }
    let input = &psbt.inputs[index];
    let location = Location::Input(index);
    let Some(output_key) = utxo(psbt, index).and_then(|u| p2tr_key(&u.script_pubkey)) else {
        return Ok(InputPlan::Unmatched);
    };
    let mut found = None;
    for set in sets {
        let ctx = checked_key_agg(set, location)?;
        if let Some(f) = find_path(input, set, &ctx, &output_key)? {
            found = Some((set, f));
            break;
        }
    }
    let Some((set, f)) = found else {
        return Ok(InputPlan::Unmatched);
    };
    let sighash_type = input
        .taproot_hash_ty()
        .map_err(|_| Error::InvalidSighashType {
            input: index,
            value: input.sighash_type.map_or(0, |t| t.to_u32()),
        })?;
    let message = sighash(psbt, index, f.leaf_hash, sighash_type)?;
    Ok(InputPlan::Entry(Box::new(PlanEntry {
        input_index: index,
        message,
        signers: set.participants.clone(),
        tweaks: f.tweaks,
        leaf_hash: f.leaf_hash.map(|h| h.to_byte_array()),
        sighash_type,
        aggregate_key: set.aggregate,
        signing_key: f.signing_key,
        verify_key: f.verify_key,
        path: f.path,
    })))
}

/// The signing plan for `our_key` over `psbt`: every input whose
/// `PSBT_IN_MUSIG2_PARTICIPANT_PUBKEYS` lists our key and whose Taproot output is spendable by
/// that aggregate (as output key, internal key, internal key derived by BIP328, or a key in a
/// leaf script, derived or not); the approval summary uses `network` for addresses.
pub fn signing_plan(psbt: &Psbt, our_key: &PublicKey, network: Network) -> Result<SigningPlan> {
    crate::bip373::validate(psbt)?;
    let mut entries = Vec::new();
    let mut unmatched = Vec::new();
    for (index, input) in psbt.inputs.iter().enumerate() {
        let sets: Vec<_> = input_participants(input, index)?
            .into_iter()
            .filter(|s| s.participants.contains(our_key))
            .collect();
        match plan_input(psbt, index, &sets)? {
            InputPlan::NotMusig => {}
            InputPlan::Unmatched => unmatched.push(index),
            InputPlan::Entry(entry) => entries.push(*entry),
        }
    }
    let approval = approval(psbt, our_key, network, &entries)?;
    Ok(SigningPlan {
        entries,
        unmatched,
        approval,
    })
}

/// The plan entries of every input that some signer set listed in its
/// `PSBT_IN_MUSIG2_PARTICIPANT_PUBKEYS` can spend, whoever we are: what a BIP373 finalizer
/// (who need not be a signer) aggregates. Inputs with participant fields but no matching spend
/// path are left out (as [`SigningPlan::unmatched`] would list them).
pub fn finalizer_entries(psbt: &Psbt) -> Result<Vec<PlanEntry>> {
    crate::bip373::validate(psbt)?;
    let mut entries = Vec::new();
    for (index, input) in psbt.inputs.iter().enumerate() {
        let sets = input_participants(input, index)?;
        if let InputPlan::Entry(entry) = plan_input(psbt, index, &sets)? {
            entries.push(*entry);
        }
    }
    Ok(entries)
}

/// Whether output `index` pays to an aggregate of a signer set with our key, as
/// `PSBT_OUT_MUSIG2_PARTICIPANT_PUBKEYS` claims.
fn is_change(psbt: &Psbt, index: usize, our_key: &PublicKey) -> Result<bool> {
    let output = &psbt.outputs[index];
    let Some(output_key) = p2tr_key(&psbt.unsigned_tx.output[index].script_pubkey) else {
        return Ok(false);
    };
    for set in output_participants(output, index)? {
        if !set.participants.contains(our_key) {
            continue;
        }
        let ctx = checked_key_agg(&set, Location::Output(index))?;
        if set.aggregate.x_only_public_key().0 == output_key {
            return Ok(true);
        }
        let Some(internal) = output.tap_internal_key.as_ref().map(from_btc_xonly) else {
            continue;
        };
        let Some((_, mut tweaks, _)) =
            derivation_to(&set.aggregate, &internal, &output.tap_key_origins)
        else {
            continue;
        };
        let root = output
            .tap_tree
            .as_ref()
            .map(|t| t.root_hash().to_byte_array());
        tweaks.push(Tweak::taproot(&internal, root.as_ref())?);
        if ctx.with_tweaks(&tweaks)?.x_only_key() == output_key {
            return Ok(true);
        }
    }
    Ok(false)
}

fn approval(
    psbt: &Psbt,
    our_key: &PublicKey,
    network: Network,
    entries: &[PlanEntry],
) -> Result<Approval> {
    let inputs: Vec<InputSummary> = psbt
        .unsigned_tx
        .input
        .iter()
        .enumerate()
        .map(|(index, txin)| {
            let spent = utxo(psbt, index);
            InputSummary {
                index,
                previous_output: txin.previous_output,
                amount: spent.map(|u| u.value),
                address: spent.and_then(|u| Address::from_script(&u.script_pubkey, network).ok()),
                signed_by_us: entries.iter().any(|e| e.input_index == index),
            }
        })
        .collect();
    let outputs = psbt
        .unsigned_tx
        .output
        .iter()
        .enumerate()
        .map(|(index, out)| {
            Ok(OutputSummary {
                index,
                amount: out.value,
                address: Address::from_script(&out.script_pubkey, network).ok(),
                script_pubkey: out.script_pubkey.clone(),
                change: is_change(psbt, index, our_key)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let total_in = inputs
        .iter()
        .map(|i| i.amount)
        .try_fold(Amount::ZERO, |acc, a| acc.checked_add(a?));
    let total_out = outputs
        .iter()
        .try_fold(Amount::ZERO, |acc, o| acc.checked_add(o.amount))
        .ok_or(Error::NegativeFee)?;
    let fee = match total_in {
        Some(total_in) => Some(total_in.checked_sub(total_out).ok_or(Error::NegativeFee)?),
        None => None,
    };
    let sent = outputs
        .iter()
        .filter(|o| !o.change)
        .try_fold(Amount::ZERO, |acc, o| acc.checked_add(o.amount))
        .ok_or(Error::NegativeFee)?;
    Ok(Approval {
        inputs,
        outputs,
        fee,
        sent,
    })
}
