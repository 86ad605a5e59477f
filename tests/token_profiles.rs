//! What each token can run, probed from its mechanism list: SoftHSM 2.6
//! runs only the compatibility profile (no HKDF), Kryoptic the standard one;
//! asking a token for a profile it cannot run names the missing mechanism.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use flashgate::hsm::{PinSource, Profile, Token, TokenConfig};

#[test]
fn profiles_are_probed_and_a_missing_mechanism_is_named() {
    for kind in common::both() {
        let dir = tempfile::tempdir().unwrap();
        let pin = dir.path().join("pin");
        std::fs::write(&pin, "probe-pin-1234\n").unwrap();
        let (k, v) = common::init_token(kind, &dir.path().join("token"), "probe", &pin);
        // Each module is loaded once in this process, after its variable is set.
        std::env::set_var(k, v);
        let token = Token::open(&TokenConfig {
            module: kind.module(),
            label: "probe".to_owned(),
            pin: PinSource::File(pin),
        })
        .unwrap();
        let profiles = token.mechanisms().supported_profiles();
        match kind {
            common::Kind::SoftHsm => {
                assert_eq!(profiles, vec![Profile::P11v2EcdhAesKdf]);
                let err = token
                    .require(Profile::CoseEcdhEsA256kw)
                    .unwrap_err()
                    .to_string();
                assert!(
                    err.contains("CKM_HKDF_DERIVE") && err.contains("cose-ecdh-es-a256kw"),
                    "{err}"
                );
            }
            common::Kind::Kryoptic => {
                assert!(
                    profiles.contains(&Profile::CoseEcdhEsA256kw),
                    "{profiles:?}"
                );
                assert_eq!(profiles[0], Profile::CoseEcdhEsA256kw, "strongest first");
                token.require(Profile::CoseEcdhEsA256kw).unwrap();
            }
        }
    }
}
