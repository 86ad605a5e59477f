//! The job package parser on hostile bytes. Invariants: it never panics, and
//! every package it accepts re-encodes to exactly the bytes it was given
//! (so a signature over stored bytes means one thing only); the same holds
//! for the manifest and every `COSE_Encrypt` inside.
#![no_main]

use flashgate::package::{EncryptObject, Manifest, UnverifiedPackage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(pkg) = UnverifiedPackage::parse(data) else {
        return;
    };
    assert_eq!(
        pkg.encode(),
        data,
        "accepted package does not re-encode to its bytes"
    );
    let (_, master, ca, images) = pkg.parts();
    for obj in [master, ca]
        .into_iter()
        .chain(images.iter().map(|i| i.header))
    {
        if let Ok(parsed) = EncryptObject::parse(obj, "object") {
            assert_eq!(
                parsed.encode(),
                obj,
                "accepted COSE_Encrypt does not re-encode"
            );
        }
    }
    if let Ok((manifest, _kid)) = pkg.manifest_unverified() {
        let bytes = manifest.encode();
        assert_eq!(Manifest::decode(&bytes).ok().as_ref(), Some(&manifest));
    }
    // Nothing verifies without a trusted key.
    assert!(pkg.verify(&[]).is_err());
});
