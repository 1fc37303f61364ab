//! A node's two keys, kept in one directory: the secp256k1 signing key it contributes to MuSig2
//! sessions (`signing.key`) and the ed25519 libp2p identity it is reached under
//! (`identity.key`). Both are 64 hex digits, created new and owner-only (mode 0600 on Unix).

use std::io::Write;
use std::path::{Path, PathBuf};

use musig2_transport::{KeySource, Libp2pTransport, PeerId, create_owner_only_file};
use secp256k1::{Keypair, PublicKey, SecretKey};
use serde::Serialize;
use zeroize::Zeroizing;

use crate::{NodeError, Result};

/// File name of the signing key inside a node directory.
pub const SIGNING_KEY_FILE: &str = "signing.key";
/// File name of the libp2p identity inside a node directory.
pub const IDENTITY_KEY_FILE: &str = "identity.key";

/// The public side of a node's keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeyInfo {
    /// The signing key, compressed, hex (what other signers list in a session).
    pub public_key: String,
    /// The libp2p peer id.
    pub peer_id: String,
}

/// Creates `dir` if needed and writes a fresh signing key and identity into it. Refuses to
/// replace keys that exist: a signing key that disappears takes its share of every aggregate
/// key with it.
pub fn generate(dir: &Path) -> Result<KeyInfo> {
    create_private_dir(dir)?;
    let signing_path = dir.join(SIGNING_KEY_FILE);
    let identity_path = dir.join(IDENTITY_KEY_FILE);
    for path in [&signing_path, &identity_path] {
        if path.exists() {
            return Err(NodeError::io(
                "will not overwrite",
                path.as_path(),
                std::io::ErrorKind::AlreadyExists.into(),
            ));
        }
    }
    let keypair = Keypair::new(&mut rand::rng());
    let secret = Zeroizing::new(hex::encode(keypair.to_secret_bytes()));
    let mut file = create_owner_only_file(&signing_path)
        .map_err(|e| NodeError::io("cannot create", &signing_path, e))?;
    file.write_all(secret.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| NodeError::io("cannot write", &signing_path, e))?;
    let peer_id = Libp2pTransport::write_key_file(&identity_path)?;
    Ok(KeyInfo {
        public_key: keypair.public_key().to_string(),
        peer_id: peer_id.to_string(),
    })
}

/// Creates `dir` (and missing parents) owner-only (0700 on Unix); an existing directory is left
/// as it is.
fn create_private_dir(dir: &Path) -> Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .map_err(|e| NodeError::io("cannot create", dir, e))
}

/// A node's keys, loaded.
pub struct NodeKeys {
    /// The signing key.
    pub signing: Keypair,
    /// Where the libp2p identity comes from.
    pub identity: KeySource,
    /// The peer id of that identity.
    pub peer_id: PeerId,
}

impl std::fmt::Debug for NodeKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeKeys")
            .field("public_key", &self.signing.public_key())
            .field("peer_id", &self.peer_id)
            .finish_non_exhaustive()
    }
}

impl NodeKeys {
    /// Loads the keys of the node directory `dir` (see [`generate`]).
    pub fn load(dir: &Path) -> Result<Self> {
        let signing_path = dir.join(SIGNING_KEY_FILE);
        let signing = load_signing_key(&signing_path)?;
        let identity_path = dir.join(IDENTITY_KEY_FILE);
        let peer_id = identity_peer_id(&identity_path)?;
        Ok(Self {
            signing,
            identity: KeySource::Ed25519File(identity_path),
            peer_id,
        })
    }

    /// The public side.
    pub fn info(&self) -> KeyInfo {
        KeyInfo {
            public_key: self.signing.public_key().to_string(),
            peer_id: self.peer_id.to_string(),
        }
    }

    /// The signing public key.
    pub fn public_key(&self) -> PublicKey {
        self.signing.public_key()
    }
}

/// The signing public key of node directory `dir`, from `signing.key` alone: no identity
/// file or running node is needed (e.g. to see which PSBT inputs this node signs).
pub fn load_public_key(dir: &Path) -> Result<PublicKey> {
    Ok(load_signing_key(&dir.join(SIGNING_KEY_FILE))?.public_key())
}

fn read_hex_secret(path: &Path) -> Result<Zeroizing<[u8; 32]>> {
    let bad = |reason: &str| NodeError::BadKey {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    // A key file is 64 hex digits; anything much longer is not one, so do not read it all.
    let metadata = std::fs::metadata(path).map_err(|e| NodeError::io("cannot read", path, e))?;
    if metadata.len() > 1024 {
        return Err(bad("too large to be a key"));
    }
    let raw = Zeroizing::new(
        std::fs::read_to_string(path).map_err(|e| NodeError::io("cannot read", path, e))?,
    );
    let mut secret = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(raw.trim(), secret.as_mut()).map_err(|_| bad("expected 64 hex digits"))?;
    Ok(secret)
}

fn load_signing_key(path: &Path) -> Result<Keypair> {
    let secret = read_hex_secret(path)?;
    let secret = SecretKey::from_secret_bytes(*secret).map_err(|_| NodeError::BadKey {
        path: path.to_owned(),
        reason: "not a valid secp256k1 secret key".to_owned(),
    })?;
    Ok(Keypair::from_secret_key(&secret))
}

fn identity_peer_id(path: &Path) -> Result<PeerId> {
    KeySource::Ed25519File(path.to_owned())
        .peer_id()
        .map_err(|e| match e {
            musig2_transport::TransportError::Config(reason) => NodeError::BadKey {
                path: path.to_owned(),
                reason,
            },
            other => NodeError::Transport(other),
        })
}

/// The default control socket of a node directory.
pub fn default_control_socket(dir: &Path) -> PathBuf {
    dir.join("control.sock")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("musig2-node-keys-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn generated_keys_load_back_and_are_never_overwritten() {
        let dir = temp_dir("roundtrip");
        let info = generate(&dir).expect("generate");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&dir).expect("dir").permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "the node directory is owner-only");
        }
        let keys = NodeKeys::load(&dir).expect("load");
        assert_eq!(keys.info(), info);
        #[cfg(unix)]
        for file in [SIGNING_KEY_FILE, IDENTITY_KEY_FILE] {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(file))
                .expect("metadata")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file} is owner-only");
        }
        let again = generate(&dir).expect_err("keys exist");
        assert!(matches!(again, NodeError::Io { .. }), "{again}");
        assert_eq!(NodeKeys::load(&dir).expect("still loads").info(), info);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_key_files_are_typed_errors() {
        let dir = temp_dir("bad");
        generate(&dir).expect("generate");
        let signing = dir.join(SIGNING_KEY_FILE);
        for (content, reason) in [
            (b"not hex".to_vec(), "expected 64 hex digits"),
            (vec![b'0'; 64], "not a valid secp256k1 secret key"),
            (vec![b'a'; 4096], "too large to be a key"),
        ] {
            std::fs::write(&signing, content).expect("write");
            match NodeKeys::load(&dir) {
                Err(NodeError::BadKey { path, reason: got }) => {
                    assert_eq!(path, signing);
                    assert_eq!(got, reason);
                }
                other => panic!("expected a bad key error, got {other:?}"),
            }
        }
        std::fs::remove_file(&signing).expect("remove");
        assert!(matches!(NodeKeys::load(&dir), Err(NodeError::Io { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
