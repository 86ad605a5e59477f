//! c2sp.org/tlog-cosignature, `cosignature/v1` with Ed25519.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};

use crate::note::{check_name, key_id, NoteSignature, SignedNote};
use crate::NoteError;

/// The signature type byte of an Ed25519 `cosignature/v1`.
pub const COSIGNATURE_V1_TYPE: u8 = 0x04;

/// Bytes of a cosignature line's signature after the key ID: a big-endian
/// `u64` timestamp and the Ed25519 signature.
const TIMESTAMPED_LEN: usize = 8 + 64;

/// An Ed25519 key that signs: a key file's, or one in a token.
pub trait Ed25519Signer: Send + Sync {
    /// The 32-byte public key (RFC 8032).
    fn public_key(&self) -> [u8; 32];
    /// An RFC 8032 signature over `message`.
    fn sign(&self, message: &[u8]) -> Result<[u8; 64], String>;
}

impl Ed25519Signer for SigningKey {
    fn public_key(&self) -> [u8; 32] {
        self.verifying_key().to_bytes()
    }

    fn sign(&self, message: &[u8]) -> Result<[u8; 64], String> {
        Ok(self
            .try_sign(message)
            .map_err(|e| e.to_string())?
            .to_bytes())
    }
}

/// The message a `cosignature/v1` signs: `cosignature/v1\n`, `time <t>\n`,
/// then the checkpoint's note text.
#[must_use]
pub fn cosigned_message(timestamp: u64, text: &str) -> Vec<u8> {
    format!("cosignature/v1\ntime {timestamp}\n{text}").into_bytes()
}

/// A witness that cosigns checkpoints under a name.
pub struct Cosigner {
    name: String,
    signer: Box<dyn Ed25519Signer>,
}

impl std::fmt::Debug for Cosigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cosigner")
            .field("name", &self.name)
            .field("key_id", &format_args!("{:08x}", self.key().key_id()))
            .finish_non_exhaustive()
    }
}

impl Cosigner {
    /// A cosigner named `name` (a schema-less URL, say) signing with `signer`.
    pub fn new(name: impl Into<String>, signer: Box<dyn Ed25519Signer>) -> Result<Self, NoteError> {
        let name = name.into();
        check_name(&name)?;
        Ok(Self { name, signer })
    }

    /// A cosigner whose key is the PKCS#8 PEM `pem` (RFC 8410).
    pub fn from_pkcs8_pem(name: impl Into<String>, pem: &str) -> Result<Self, NoteError> {
        use ed25519_dalek::pkcs8::DecodePrivateKey as _;
        let key = SigningKey::from_pkcs8_pem(pem).map_err(|_| NoteError::BadPrivateKey)?;
        Self::new(name, Box::new(key))
    }

    /// A new key from 32 random bytes, as PKCS#8 PEM for a key file.
    pub fn new_key_pem(seed: &[u8; 32]) -> Result<zeroize::Zeroizing<String>, NoteError> {
        use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
        use ed25519_dalek::pkcs8::EncodePrivateKey as _;
        SigningKey::from_bytes(seed)
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|_| NoteError::BadPrivateKey)
    }

    /// The verifier side of this cosigner.
    #[must_use]
    pub fn key(&self) -> CosignerKey {
        CosignerKey {
            name: self.name.clone(),
            public: self.signer.public_key(),
        }
    }

    /// Adds this cosigner's line to `note` for `timestamp` (POSIX seconds),
    /// replacing any earlier one of the same key. The new signature is
    /// checked before it is added.
    pub fn cosign(&self, note: &mut SignedNote, timestamp: u64) -> Result<(), NoteError> {
        if i64::try_from(timestamp).is_err() {
            return Err(NoteError::BadTimestamp(self.name.clone()));
        }
        let key = self.key();
        let sig = self
            .signer
            .sign(&cosigned_message(timestamp, &note.text))
            .map_err(NoteError::Signer)?;
        let mut signature = Vec::with_capacity(TIMESTAMPED_LEN);
        signature.extend_from_slice(&timestamp.to_be_bytes());
        signature.extend_from_slice(&sig);
        let line = NoteSignature {
            name: self.name.clone(),
            key_id: key.key_id(),
            signature,
        };
        key.verify_line(&note.text, &line)?;
        note.signatures
            .retain(|s| !(s.name == line.name && s.key_id == line.key_id));
        note.signatures.push(line);
        Ok(())
    }
}

/// A cosigner as a verifier knows it: its name and Ed25519 public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CosignerKey {
    name: String,
    public: [u8; 32],
}

impl CosignerKey {
    /// The key named `name` with the 32-byte public key `public`.
    pub fn new(name: impl Into<String>, public: [u8; 32]) -> Result<Self, NoteError> {
        let name = name.into();
        check_name(&name)?;
        VerifyingKey::from_bytes(&public)
            .map_err(|_| NoteError::BadVerifierKey("not an Ed25519 public key"))?;
        Ok(Self { name, public })
    }

    /// Parses the verifier key form `<name>+<key ID, 8 hex>+<base64(0x04 || key)>`.
    pub fn parse_vkey(vkey: &str) -> Result<Self, NoteError> {
        let vkey = vkey.trim_end_matches('\n');
        let mut parts = vkey.splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(NoteError::BadVerifierKey("it is not name+id+key"));
        };
        let raw = STANDARD
            .decode(key)
            .map_err(|_| NoteError::BadVerifierKey("the key is not base64"))?;
        let Some((&COSIGNATURE_V1_TYPE, public)) = raw.split_first() else {
            return Err(NoteError::BadVerifierKey(
                "the key is not of type 0x04 (Ed25519 cosignature/v1)",
            ));
        };
        let public: [u8; 32] = public
            .try_into()
            .map_err(|_| NoteError::BadVerifierKey("the key is not 32 bytes"))?;
        let k = Self::new(name, public)?;
        if id.len() != 8 || u32::from_str_radix(id, 16).ok() != Some(k.key_id()) {
            return Err(NoteError::BadVerifierKey(
                "the key ID does not match the name and key",
            ));
        }
        Ok(k)
    }

    /// The verifier key form [`CosignerKey::parse_vkey`] reads.
    #[must_use]
    pub fn to_vkey(&self) -> String {
        let mut raw = vec![COSIGNATURE_V1_TYPE];
        raw.extend_from_slice(&self.public);
        format!(
            "{}+{:08x}+{}",
            self.name,
            self.key_id(),
            STANDARD.encode(raw)
        )
    }

    /// The cosigner's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The public key.
    #[must_use]
    pub fn public_key(&self) -> [u8; 32] {
        self.public
    }

    /// SHA-256(name || 0x0A || 0x04 || public key)[:4].
    #[must_use]
    pub fn key_id(&self) -> u32 {
        key_id(&self.name, &[COSIGNATURE_V1_TYPE], &self.public)
    }

    /// Checks this cosigner's lines in `note`: there must be one at least,
    /// and every one must verify. Returns the latest timestamp.
    pub fn verify(&self, note: &SignedNote) -> Result<u64, NoteError> {
        let mut latest = None;
        for line in note.signatures_by(&self.name, self.key_id()) {
            let t = self.verify_line(&note.text, line)?;
            latest = latest.max(Some(t));
        }
        latest.ok_or_else(|| NoteError::NotCosigned(self.to_vkey()))
    }

    fn verify_line(&self, text: &str, line: &NoteSignature) -> Result<u64, NoteError> {
        let bad = || NoteError::BadCosignature(self.name.clone());
        let (t, sig) = line.signature.split_first_chunk::<8>().ok_or_else(bad)?;
        let sig: &[u8; 64] = sig.try_into().map_err(|_| bad())?;
        let timestamp = u64::from_be_bytes(*t);
        if i64::try_from(timestamp).is_err() {
            return Err(NoteError::BadTimestamp(self.name.clone()));
        }
        let key = VerifyingKey::from_bytes(&self.public).map_err(|_| bad())?;
        key.verify(
            &cosigned_message(timestamp, text),
            &Signature::from_bytes(sig),
        )
        .map_err(|_| bad())?;
        Ok(timestamp)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn note() -> SignedNote {
        SignedNote::parse(
            "example.com/log\n5\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n\u{2014} example.com/log AAAAAAA=\n"
                .as_bytes(),
        )
        .unwrap()
    }

    fn cosigner(seed: u8) -> Cosigner {
        let pem = Cosigner::new_key_pem(&[seed; 32]).unwrap();
        Cosigner::from_pkcs8_pem("witness.example/w1", &pem).unwrap()
    }

    #[test]
    fn a_cosignature_verifies_and_round_trips_through_text() {
        let c = cosigner(7);
        let mut n = note();
        c.cosign(&mut n, 1_679_315_147).unwrap();
        let text = n.to_text();
        let back = SignedNote::parse(text.as_bytes()).unwrap();
        assert_eq!(back, n);
        assert_eq!(c.key().verify(&back).unwrap(), 1_679_315_147);
        // Cosigning again replaces the line.
        c.cosign(&mut n, 1_679_315_148).unwrap();
        assert_eq!(n.signatures.len(), 2);
        assert_eq!(c.key().verify(&n).unwrap(), 1_679_315_148);
    }

    #[test]
    fn an_altered_text_or_another_key_is_refused() {
        let c = cosigner(7);
        let mut n = note();
        c.cosign(&mut n, 10).unwrap();
        let mut altered = n.clone();
        altered.text = altered.text.replace("\n5\n", "\n6\n");
        assert!(matches!(
            c.key().verify(&altered),
            Err(NoteError::BadCosignature(_))
        ));
        let other = cosigner(8).key();
        assert!(matches!(other.verify(&n), Err(NoteError::NotCosigned(_))));
        // A changed timestamp is part of the signed message.
        let mut retimed = n.clone();
        retimed.signatures[1].signature[7] ^= 1;
        assert!(c.key().verify(&retimed).is_err());
    }

    #[test]
    fn the_message_is_the_spec_layout() {
        assert_eq!(
            cosigned_message(1_679_315_147, "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"),
            b"cosignature/v1\ntime 1679315147\nexample.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
        );
    }

    #[test]
    fn verifier_keys_round_trip_and_bad_ones_are_refused() {
        let k = cosigner(9).key();
        let v = k.to_vkey();
        assert_eq!(CosignerKey::parse_vkey(&v).unwrap(), k);
        assert_eq!(CosignerKey::parse_vkey(&format!("{v}\n")).unwrap(), k);
        let (name, rest) = v.split_once('+').unwrap();
        let wrong_id = format!("{name}+00000000+{}", rest.split_once('+').unwrap().1);
        assert!(CosignerKey::parse_vkey(&wrong_id).is_err());
        assert!(CosignerKey::parse_vkey("name+00000000").is_err());
        let renamed = format!("other.example+{rest}");
        assert!(CosignerKey::parse_vkey(&renamed).is_err());
    }

    #[test]
    fn a_timestamp_above_i64_is_refused() {
        let mut n = note();
        assert!(matches!(
            cosigner(1).cosign(&mut n, u64::MAX),
            Err(NoteError::BadTimestamp(_))
        ));
    }
}
