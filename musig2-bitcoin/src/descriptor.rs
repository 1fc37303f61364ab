//! BIP390 `musig()` descriptors on top of `miniscript`.
//!
//! `miniscript` does not know `musig()`. Every `musig(...)` expression is checked against the
//! BIP390 rules here and then rewritten into a key `miniscript` understands: the aggregate key
//! as hex when `musig()` has no derivation of its own, or its BIP328 synthetic xpub followed by
//! the same derivation (`xpub.../0/*`) when it has. The rest of the descriptor (the `tr()` tree,
//! other keys, ranges) is `miniscript`'s business. `rawtr()`, which `miniscript` does not parse,
//! is handled here: its script is `OP_1 <x-only key>`, no tweak.

use std::str::FromStr;

use bitcoin::key::TweakedPublicKey;
use bitcoin::secp256k1::{Secp256k1, Verification};
use bitcoin::{Address, Network, ScriptBuf};
use miniscript::Descriptor;
use miniscript::descriptor::checksum::{Engine, verify_checksum};
use miniscript::descriptor::{DescriptorPublicKey, DescriptorSecretKey, SinglePubKey};
use musig2_core::secp256k1::PublicKey;
use musig2_core::{AggregateXpub, KeyAggContext};

use crate::convert::{from_btc_pubkey, to_btc_pubkey};
use crate::error::{Bip390Rule, Error, Result};

/// One derivation step after `musig()`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Normal(u32),
    Multi(Vec<u32>),
}

/// A parsed `musig(KEY,...)/STEPS[/*]` expression.
#[derive(Debug, Clone)]
struct MusigExpr {
    participants: Vec<DescriptorPublicKey>,
    steps: Vec<Step>,
    wildcard: bool,
}

#[derive(Debug, Clone)]
enum Segment {
    Text(String),
    Musig(MusigExpr),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Top {
    Tr,
    RawTr,
    /// A descriptor with no `musig()` at all, passed through to `miniscript` as is.
    Other,
}

/// A descriptor that may contain BIP390 `musig()` expressions.
///
/// ```
/// use musig2_bitcoin::MusigDescriptor;
/// let d: MusigDescriptor = "tr(musig(02f9308a019258c31049344f85f89d5229b531c845836f99b08601f113bce036f9,\
///     03dff1d77f2a671c5f36183726db2341be58feae1da2deced843240f7b502ba659,\
///     023590a94e768f8e1815c2f24b4d80a8e3149316c3518ce7b7ad338368d038ca66))".parse()?;
/// assert_eq!(
///     d.script_pubkey(0)?.to_hex_string(),
///     "512079e6c3e628c9bfbce91de6b7fb28e2aec7713d377cf260ab599dcbc40e542312"
/// );
/// # Ok::<(), musig2_bitcoin::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct MusigDescriptor {
    text: String,
    top: Top,
    segments: Vec<Segment>,
}

fn rule(r: Bip390Rule) -> Error {
    Error::Bip390(r)
}

fn parse_key(s: &str) -> std::result::Result<DescriptorPublicKey, String> {
    if let Ok(sk) = DescriptorSecretKey::from_str(s) {
        return sk
            .to_public(&Secp256k1::signing_only())
            .map_err(|e| e.to_string());
    }
    DescriptorPublicKey::from_str(s).map_err(|e| e.to_string())
}

fn parse_participant(index: usize, s: &str) -> Result<DescriptorPublicKey> {
    let invalid = |reason: String| rule(Bip390Rule::InvalidParticipant { index, reason });
    let key = parse_key(s.trim()).map_err(invalid)?;
    if let DescriptorPublicKey::Single(single) = &key {
        match single.key {
            SinglePubKey::XOnly(_) => {
                return Err(invalid("x-only keys cannot be aggregated".into()));
            }
            SinglePubKey::FullKey(pk) if !pk.compressed => {
                return Err(invalid("uncompressed keys cannot be aggregated".into()));
            }
            SinglePubKey::FullKey(_) => {}
        }
    }
    Ok(key)
}

/// Parses one derivation element after `musig()`; `None` for the wildcard.
fn parse_step(tok: &str) -> Result<Option<Step>> {
    let hardened = |t: &str| t.ends_with('h') || t.ends_with('H') || t.ends_with('\'');
    let num = |t: &str| -> Result<u32> {
        if hardened(t) {
            return Err(rule(Bip390Rule::HardenedStep));
        }
        t.parse::<u32>()
            .ok()
            .filter(|n| *n < 0x8000_0000)
            .ok_or_else(|| rule(Bip390Rule::MalformedDerivation(tok.to_string())))
    };
    if tok == "*" {
        return Ok(None);
    }
    if tok.starts_with('*') {
        return Err(rule(if hardened(tok) && tok.len() == 2 {
            Bip390Rule::HardenedWildcard
        } else {
            Bip390Rule::MalformedDerivation(tok.to_string())
        }));
    }
    if let Some(inner) = tok.strip_prefix('<').and_then(|t| t.strip_suffix('>')) {
        let items = inner.split(';').map(num).collect::<Result<Vec<_>>>()?;
        if items.len() < 2 {
            return Err(rule(Bip390Rule::MalformedDerivation(tok.to_string())));
        }
        return Ok(Some(Step::Multi(items)));
    }
    Ok(Some(Step::Normal(num(tok)?)))
}

impl MusigExpr {
    fn has_derivation(&self) -> bool {
        self.wildcard || !self.steps.is_empty()
    }

    fn multipath_len(&self) -> Option<usize> {
        self.steps.iter().find_map(|s| match s {
            Step::Multi(v) => Some(v.len()),
            Step::Normal(_) => None,
        })
    }

    fn check_rules(&self) -> Result<()> {
        if self.participants.is_empty() {
            return Err(rule(Bip390Rule::NoParticipants));
        }
        if self
            .steps
            .iter()
            .filter(|s| matches!(s, Step::Multi(_)))
            .count()
            > 1
        {
            return Err(rule(Bip390Rule::MalformedDerivation(
                "two multipath steps".into(),
            )));
        }
        let ranged = self
            .participants
            .iter()
            .any(DescriptorPublicKey::has_wildcard);
        let multipath = self
            .participants
            .iter()
            .any(DescriptorPublicKey::is_multipath);
        if self.has_derivation() {
            if ranged {
                return Err(rule(if self.wildcard {
                    Bip390Rule::RangedParticipantsInRangedMusig
                } else {
                    Bip390Rule::ParticipantChildDerivation
                }));
            }
            if multipath && self.multipath_len().is_some() {
                return Err(rule(Bip390Rule::MultipathParticipantsInMultipathMusig));
            }
            if self
                .participants
                .iter()
                .any(|p| matches!(p, DescriptorPublicKey::Single(_)))
            {
                return Err(rule(Bip390Rule::DerivationNeedsXpubs));
            }
        }
        let mut lens = self
            .participants
            .iter()
            .filter(|p| p.is_multipath())
            .map(|p| p.clone().into_single_keys().len())
            .chain(self.multipath_len());
        if let Some(first) = lens.next() {
            if lens.any(|l| l != first) {
                return Err(rule(Bip390Rule::MultipathLengthMismatch));
            }
        }
        Ok(())
    }

    fn branches(&self) -> usize {
        self.participants
            .iter()
            .filter(|p| p.is_multipath())
            .map(|p| p.clone().into_single_keys().len())
            .chain(self.multipath_len())
            .max()
            .unwrap_or(1)
    }

    fn is_ranged(&self) -> bool {
        self.wildcard
            || self
                .participants
                .iter()
                .any(DescriptorPublicKey::has_wildcard)
    }

    /// The participants' keys at `(branch, index)`, in the order written.
    fn participant_keys<C: Verification>(
        &self,
        secp: &Secp256k1<C>,
        branch: usize,
        index: u32,
    ) -> Result<Vec<PublicKey>> {
        self.participants
            .iter()
            .map(|p| {
                let definite = pick_branch(p.clone(), branch)?
                    .at_derivation_index(index)
                    .map_err(|e| Error::Descriptor(e.to_string()))?;
                Ok(from_btc_pubkey(&definite.derive_public_key(secp).inner))
            })
            .collect()
    }

    /// The key expression `miniscript` sees in place of this `musig()`.
    fn render<C: Verification>(
        &self,
        secp: &Secp256k1<C>,
        branch: usize,
        index: u32,
    ) -> Result<String> {
        let mut keys = self.participant_keys(secp, branch, index)?;
        // BIP390: KeyAgg over the participants' keys after KeySort.
        musig2_core::key_sort(&mut keys);
        let aggregate = KeyAggContext::new(&keys)?.aggregate_key();
        if !self.has_derivation() {
            return Ok(hex_encode(&aggregate.x_only_public_key().0.to_byte_array()));
        }
        let mut s = AggregateXpub::new(aggregate).to_base58();
        for step in &self.steps {
            let n = match step {
                Step::Normal(n) => *n,
                Step::Multi(v) => *v
                    .get(branch)
                    .ok_or(Error::DescriptorArgument("a branch in range"))?,
            };
            s.push('/');
            s.push_str(&n.to_string());
        }
        if self.wildcard {
            s.push_str("/*");
        }
        Ok(s)
    }
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Finds the `)` closing the `(` at `open`.
fn closing_paren(s: &str, open: usize) -> Result<usize> {
    let mut depth = 0usize;
    for (i, c) in s[open..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return Ok(open + i);
                }
            }
            _ => {}
        }
    }
    Err(rule(Bip390Rule::Syntax("unbalanced parentheses".into())))
}

fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' | '[' | '<' => depth += 1,
            ')' | ']' | '>' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

impl FromStr for MusigDescriptor {
    type Err = Error;

    fn from_str(s: &str) -> Result<MusigDescriptor> {
        let text = verify_checksum(s).map_err(|e| Error::Descriptor(e.to_string()))?;
        let top_name = text.split('(').next().unwrap_or_default().trim();
        let has_musig = text.contains("musig(");
        let top = match (top_name, has_musig) {
            ("tr", _) => Top::Tr,
            ("rawtr", _) => Top::RawTr,
            (_, false) => Top::Other,
            (other, true) => {
                return Err(rule(Bip390Rule::OnlyInTaproot {
                    context: other.to_string(),
                }));
            }
        };
        let mut segments = Vec::new();
        let mut rest = text;
        while let Some(pos) = rest.find("musig(") {
            segments.push(Segment::Text(rest[..pos].to_string()));
            let open = pos + "musig".len();
            let close = closing_paren(rest, open)?;
            let inner = &rest[open + 1..close];
            if inner.contains("musig(") {
                return Err(rule(Bip390Rule::Nested));
            }
            let participants = if inner.trim().is_empty() {
                Vec::new()
            } else {
                split_top_level(inner)
                    .into_iter()
                    .enumerate()
                    .map(|(i, p)| parse_participant(i, p))
                    .collect::<Result<Vec<_>>>()?
            };
            // Derivation after the closing parenthesis, up to the next `,` or `)`.
            let after = &rest[close + 1..];
            let end = after.find([',', ')']).unwrap_or(after.len());
            let suffix = &after[..end];
            let (mut steps, mut wildcard) = (Vec::new(), false);
            if !suffix.is_empty() {
                let Some(path) = suffix.strip_prefix('/') else {
                    return Err(rule(Bip390Rule::MalformedDerivation(suffix.to_string())));
                };
                let toks: Vec<&str> = path.split('/').collect();
                for (i, tok) in toks.iter().enumerate() {
                    match parse_step(tok)? {
                        Some(step) => steps.push(step),
                        None if i + 1 == toks.len() => wildcard = true,
                        None => {
                            return Err(rule(Bip390Rule::MalformedDerivation(suffix.to_string())));
                        }
                    }
                }
            }
            let expr = MusigExpr {
                participants,
                steps,
                wildcard,
            };
            expr.check_rules()?;
            segments.push(Segment::Musig(expr));
            rest = &after[end..];
        }
        segments.push(Segment::Text(rest.to_string()));
        let desc = MusigDescriptor {
            text: text.to_string(),
            top,
            segments,
        };
        // Let miniscript check everything else once, at the first index and branch.
        desc.render_checked(0, 0)?;
        Ok(desc)
    }
}

/// What a descriptor resolves to at one index and branch.
enum Resolved {
    Miniscript(Box<Descriptor<miniscript::DefiniteDescriptorKey>>),
    RawTr(bitcoin::secp256k1::XOnlyPublicKey),
}

impl MusigDescriptor {
    /// The descriptor text as given, without checksum.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The text with `musig()` rewritten for `miniscript`, at `(branch, index)`.
    fn render<C: Verification>(
        &self,
        secp: &Secp256k1<C>,
        branch: usize,
        index: u32,
    ) -> Result<String> {
        let mut out = String::new();
        for seg in &self.segments {
            match seg {
                Segment::Text(t) => out.push_str(t),
                Segment::Musig(m) => out.push_str(&m.render(secp, branch, index)?),
            }
        }
        Ok(out)
    }

    fn render_checked(&self, branch: usize, index: u32) -> Result<Resolved> {
        let secp = Secp256k1::verification_only();
        let text = self.render(&secp, branch, index)?;
        let err = |e: miniscript::Error| Error::Descriptor(e.to_string());
        match self.top {
            Top::RawTr => {
                let inner = text
                    .trim()
                    .strip_prefix("rawtr(")
                    .and_then(|t| t.strip_suffix(')'))
                    .ok_or_else(|| rule(Bip390Rule::Syntax("rawtr(KEY) expected".into())))?;
                let key = parse_key(inner).map_err(Error::Descriptor)?;
                let key = pick_branch(key, branch)?;
                let definite = key
                    .at_derivation_index(index)
                    .map_err(|e| Error::Descriptor(e.to_string()))?;
                let pk = definite.derive_public_key(&secp);
                Ok(Resolved::RawTr(pk.inner.x_only_public_key().0))
            }
            Top::Tr | Top::Other => {
                let (desc, _) =
                    Descriptor::parse_descriptor(&Secp256k1::signing_only(), &text).map_err(err)?;
                let desc = if desc.is_multipath() {
                    desc.into_single_descriptors()
                        .map_err(err)?
                        .into_iter()
                        .nth(branch)
                        .ok_or(Error::DescriptorArgument("a branch in range"))?
                } else {
                    desc
                };
                let definite = desc
                    .at_derivation_index(index)
                    .map_err(|e| Error::Descriptor(e.to_string()))?;
                Ok(Resolved::Miniscript(Box::new(definite)))
            }
        }
    }

    /// Whether the descriptor has a `*` anywhere (in `musig()`, its participants or other keys).
    pub fn is_ranged(&self) -> bool {
        self.text.contains('*')
            || self
                .segments
                .iter()
                .any(|s| matches!(s, Segment::Musig(m) if m.is_ranged()))
    }

    /// How many branches a multipath descriptor has (1 if it is not multipath).
    pub fn branches(&self) -> usize {
        let musig = self
            .segments
            .iter()
            .filter_map(|s| match s {
                Segment::Musig(m) => Some(m.branches()),
                Segment::Text(_) => None,
            })
            .max()
            .unwrap_or(1);
        let secp = Secp256k1::verification_only();
        let other = self
            .render(&secp, 0, 0)
            .ok()
            .and_then(|t| Descriptor::parse_descriptor(&Secp256k1::signing_only(), &t).ok())
            .filter(|(d, _)| d.is_multipath())
            .and_then(|(d, _)| d.into_single_descriptors().ok())
            .map_or(1, |v| v.len());
        musig.max(other)
    }

    /// The scriptPubKey at `index` (ignored if the descriptor is not ranged), first branch.
    pub fn script_pubkey(&self, index: u32) -> Result<ScriptBuf> {
        self.script_pubkey_at(0, index)
    }

    /// The scriptPubKey at `index` of multipath branch `branch`.
    pub fn script_pubkey_at(&self, branch: usize, index: u32) -> Result<ScriptBuf> {
        Ok(match self.render_checked(branch, index)? {
            Resolved::Miniscript(d) => d.script_pubkey(),
            Resolved::RawTr(x) => {
                ScriptBuf::new_p2tr_tweaked(TweakedPublicKey::dangerous_assume_tweaked(x))
            }
        })
    }

    /// The address at `index` of branch `branch` on `network`.
    pub fn address_at(&self, branch: usize, index: u32, network: Network) -> Result<Address> {
        match self.render_checked(branch, index)? {
            Resolved::Miniscript(d) => d
                .address(network)
                .map_err(|e| Error::Descriptor(e.to_string())),
            Resolved::RawTr(x) => Ok(Address::p2tr_tweaked(
                TweakedPublicKey::dangerous_assume_tweaked(x),
                network,
            )),
        }
    }

    /// The descriptor with its checksum (`...#xxxxxxxx`).
    pub fn with_checksum(&self) -> String {
        with_checksum(&self.text)
    }
}

fn pick_branch(key: DescriptorPublicKey, branch: usize) -> Result<DescriptorPublicKey> {
    if key.is_multipath() {
        key.into_single_keys()
            .into_iter()
            .nth(branch)
            .ok_or(Error::DescriptorArgument("a branch in range"))
    } else {
        Ok(key)
    }
}

/// `desc#checksum` (BIP380 descriptor checksum).
pub fn with_checksum(desc: &str) -> String {
    let mut engine = Engine::new();
    match engine.input(desc) {
        Ok(()) => format!("{desc}#{}", engine.checksum()),
        Err(_) => desc.to_string(),
    }
}

/// The receive (`/0/*`) and change (`/1/*`) descriptors of a signer set, for a watch-only
/// wallet (e.g. Bitcoin Core's `importdescriptors`, with [`MusigDescriptor::with_checksum`]):
/// `tr(musig(X1,...,Xn)/0/*)` and `tr(musig(X1,...,Xn)/1/*)`.
///
/// BIP390 lets `musig()` have derivation only when every participant is an xpub, so each plain
/// key `Ki` is written as the depth-0 extended key `Xi` whose key is `Ki` (chain code: BIP328's;
/// it is never used, as nothing is derived from a participant). `Xi` evaluates to `Ki`, so the
/// aggregate is KeyAgg(KeySort(K1..Kn)) (BIP390 sorts, so the order given does not matter).
/// `network` picks `xpub` or `tpub` version bytes.
pub fn signer_set_descriptors(
    keys: &[PublicKey],
    network: bitcoin::NetworkKind,
) -> Result<[MusigDescriptor; 2]> {
    let list: Vec<String> = keys
        .iter()
        .map(|k| {
            bitcoin::bip32::Xpub {
                network,
                depth: 0,
                parent_fingerprint: Default::default(),
                child_number: bitcoin::bip32::ChildNumber::Normal { index: 0 },
                public_key: to_btc_pubkey(k),
                chain_code: bitcoin::bip32::ChainCode::from(musig2_core::BIP328_CHAIN_CODE),
            }
            .to_string()
        })
        .collect();
    let list = list.join(",");
    let make = |branch: u32| format!("tr(musig({list})/{branch}/*)").parse::<MusigDescriptor>();
    Ok([make(0)?, make(1)?])
}
