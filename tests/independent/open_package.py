#!/usr/bin/env python3
"""Opens a flashgate job package (standard profile, cose-ecdh-es-a256kw)
without any flashgate code: cbor2 for the CBOR, pycose for COSE_Sign1 and
COSE_Encrypt, and `cryptography` for the chunked AES-256-GCM firmware.

usage: open_package.py PACKAGE KA_KEY_PEM OEM_SIGNING_PUB_PEM EXPECTED_FIRMWARE

KA_KEY_PEM is the appliance key-agreement private key (PKCS#8 PEM) and
OEM_SIGNING_PUB_PEM the OEM job-signing public key (SubjectPublicKeyInfo
PEM). Prints what it checked and "OK" at the end; exits non-zero on the first
thing that does not hold. Secret values are never printed.

The package layout:
  ["flashgate-job", 1, manifest: bstr, [master: bstr, ca_key: bstr],
   [* [image_header: bstr, [+ chunk: bstr]]]]
"""

import hashlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cbor2  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.hazmat.primitives.kdf.hkdf import HKDF  # noqa: E402
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap  # noqa: E402
from pycose import headers  # noqa: E402
from pycose.algorithms import A256GCM, A256KW, EcdhEsA256KW, Es256  # noqa: E402
from pycose.keys import CoseKey  # noqa: E402
from pycose.messages import EncMessage, Sign1Message  # noqa: E402

from flashgate_package import (  # noqa: E402
    CHUNK_SIZE,
    MANIFEST_CONTENT_TYPE,
    TAG_COSE_ENCRYPT,
    TAG_COSE_SIGN1,
    check,
    check_image_element,
    cose_decode,
    decrypt_chunks,
    kid_of_ec as kid_of,
    load_oem_key,
    open_outer,
    read_file,
    run,
    sec1,
    verify_manifest,
)

PROFILE = "cose-ecdh-es-a256kw"
KDF_OTHER = b"flashgate job key v1"


def documented_kdf_context(recipient_protected):
    """COSE_KDF_Context per RFC 9053 5.2 with flashgate's parameters:
    [A256KW, [nil,nil,nil], [nil,nil,nil], [256, protected, other]]."""
    return cbor2.dumps(
        [-5, [None, None, None], [None, None, None], [256, recipient_protected, KDF_OTHER]]
    )


def open_recipient(enc_bytes, ka_cose_key, ka_private, what):
    """Decodes a COSE_Encrypt with pycose, opens its one ECDH-ES + A256KW
    recipient with pycose and returns (message, recipient, CEK). The KEK is
    also derived with `cryptography` from the documented context, to show
    pycose derived exactly that."""
    msg = cose_decode(EncMessage, enc_bytes, TAG_COSE_ENCRYPT, what)
    check(msg.get_attr(headers.Algorithm) == A256GCM, f"{what}: content is not A256GCM")
    check(len(msg.recipients) == 1, f"{what}: not exactly one recipient")
    rcpt = msg.recipients[0]
    check(rcpt.get_attr(headers.Algorithm) == EcdhEsA256KW, f"{what}: recipient is not ECDH-ES + A256KW")
    check(rcpt.get_attr(headers.KID) == kid_of(ka_private.public_key()), f"{what}: recipient kid is not the appliance key")
    rcpt.key = ka_cose_key
    rcpt.local_attrs = {headers.SuppPubOther: KDF_OTHER}

    # The context pycose builds must be the documented one, byte for byte.
    raw_recipient = cbor2.loads(enc_bytes).value[3][0]
    recipient_protected = raw_recipient[0]
    check(
        rcpt.get_kdf_context(A256KW).encode() == documented_kdf_context(recipient_protected),
        f"{what}: pycose's KDF context differs from the documented one",
    )

    cek = rcpt.compute_cek(msg.get_attr(headers.Algorithm), "decrypt").k
    check(len(cek) == 32, f"{what}: the CEK is not 32 bytes")

    # Cross-check with `cryptography` alone.
    eph = raw_recipient[1][-1]
    eph_pub = ec.EllipticCurvePublicKey.from_encoded_point(
        ec.SECP256R1(), b"\x04" + eph[-2] + eph[-3]
    )
    z = ka_private.exchange(ec.ECDH(), eph_pub)
    kek = HKDF(hashes.SHA256(), 32, None, documented_kdf_context(recipient_protected)).derive(z)
    check(aes_key_unwrap(kek, raw_recipient[2]) == cek, f"{what}: CEK differs between pycose and cryptography")
    return msg, cek


def main(argv):
    if len(argv) != 5:
        print(__doc__, file=sys.stderr)
        return 2
    package_path, ka_path, oem_pub_path, fw_path = argv[1:]
    buf = read_file(package_path)
    ka_pem = read_file(ka_path)
    oem_pem = read_file(oem_pub_path)
    expected_fw = read_file(fw_path)

    ka_private = serialization.load_pem_private_key(ka_pem, password=None)
    check(isinstance(ka_private.curve, ec.SECP256R1), "the appliance key is not P-256")
    ka_cose_key = CoseKey.from_pem_private_key(ka_pem.decode())
    oem_public, oem_cose_key = load_oem_key(oem_pem)

    manifest_sign1, master_obj, ca_obj, images, spans = open_outer(buf)

    # Manifest signature (pycose, ES256, OEM key).
    sign1 = cose_decode(Sign1Message, manifest_sign1, TAG_COSE_SIGN1, "the manifest")
    check(sign1.get_attr(headers.Algorithm) == Es256, "the manifest is not signed with ES256")
    check(sign1.get_attr(headers.ContentType) == MANIFEST_CONTENT_TYPE, "the signed object is not a manifest")
    check(sign1.get_attr(headers.KID) == kid_of(oem_public), "the manifest kid is not the OEM signing key")
    manifest = verify_manifest(sign1, oem_cose_key)
    print("manifest signature: ES256, verified with the OEM signing key")

    check(manifest[1] == 1, "manifest version")
    check(manifest[7] == PROFILE, f"profile {manifest[7]!r}, expected {PROFILE}")
    check(manifest[5] == kid_of(ka_private.public_key()), "the manifest names another recipient key")
    print(f"manifest: job {manifest[2].hex()}, appliance {manifest[4]}, profile {manifest[7]}")

    # Secrets: digests, then open both fully with pycose.
    check(hashlib.sha256(master_obj).digest() == manifest[10], "device-master digest")
    check(hashlib.sha256(ca_obj).digest() == manifest[11], "job-CA-key digest")
    msg, _ = open_recipient(master_obj, ka_cose_key, ka_private, "device master")
    master = msg.decrypt(msg.recipients[0])
    check(len(master) == 32, "the device master is not 32 bytes")
    print(f"device master: opened with pycose (A256GCM), {len(master)} bytes")
    msg, _ = open_recipient(ca_obj, ka_cose_key, ka_private, "job CA key")
    ca_der = msg.decrypt(msg.recipients[0])
    ca_key = serialization.load_der_private_key(ca_der, password=None)
    job_ca_cert = x509.load_der_x509_certificate(manifest[12])
    oem_root = x509.load_der_x509_certificate(manifest[13])
    check(sec1(ca_key.public_key()) == sec1(job_ca_cert.public_key()), "the job CA key does not match its certificate")
    job_ca_cert.verify_directly_issued_by(oem_root)
    print("job CA key: opened with pycose, matches the job CA certificate issued by the OEM root")

    # Images.
    entries = manifest[9]
    check(len(entries) == len(images), "image count differs from the manifest")
    firmware = []
    for i, (entry, element, span) in enumerate(zip(entries, images, spans)):
        check_image_element(buf, span, entry, element, f"image {i}")
        header, chunks = element

        hdr_msg, cek = open_recipient(header, ka_cose_key, ka_private, f"image {i}")
        body = cbor2.loads(header)
        check(body.tag == TAG_COSE_ENCRYPT, f"image {i}: not a COSE_Encrypt")
        body_protected, body_unprotected, ciphertext, _ = body.value
        check(ciphertext is None, f"image {i}: the ciphertext is not detached")
        base_iv = body_unprotected[5]
        check(len(base_iv) == 12, f"image {i}: IV is not 12 bytes")
        check(hdr_msg.get_attr(headers.IV) == base_iv, f"image {i}: pycose reads another IV")

        plain = bytearray()
        for index, last, part in decrypt_chunks(cek, base_iv, body_protected, chunks, f"image {i}"):
            check(len(part) == CHUNK_SIZE or last, f"image {i}: chunk {index} is short")
            plain += part
        check(len(plain) == entry[2], f"image {i}: size")
        check(hashlib.sha256(plain).digest() == entry[3], f"image {i}: plaintext digest")
        print(f"image {i}: 0x{entry[1]:08x}, {len(plain)} bytes in {len(chunks)} chunks, digest matches the manifest")
        firmware.append(bytes(plain))

    check(firmware[0] == expected_fw, "image 0 differs from the expected firmware")
    print("image 0 equals the expected firmware")
    print("OK")
    return 0


if __name__ == "__main__":
    run(main)
