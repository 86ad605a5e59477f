#!/usr/bin/env python3
"""Opens a flashgate job package of an RSA-OAEP key-transport profile
(cose-rsaes-oaep-sha256, COSE alg -41, or cose-rsaes-oaep-sha1, alg -40)
without any flashgate code: cbor2 for the CBOR, pycose for the manifest
COSE_Sign1 and the image COSE_Encrypt headers (RSA-OAEP recipient carrying
the image CEK), and `cryptography` for the chunked AES-256-GCM firmware and
for the two secrets, which are themselves the OAEP plaintext of a
COSE_Encrypt with an empty body and the private content algorithm -65539.

usage: open_rsa_package.py PACKAGE PROFILE IMAGE_KEY_PEM MASTER_KEY_PEM
                           CA_KEY_PEM OEM_SIGNING_PUB_PEM FIRMWARE...

PROFILE is the profile the package must name. The three KEY_PEMs are the
appliance's RSA transport private keys of the roles image, master and ca
(PKCS#8 PEM); OEM_SIGNING_PUB_PEM is the OEM job-signing public key
(SubjectPublicKeyInfo PEM); one FIRMWARE file per image, in manifest order,
holds the expected plaintext. Prints what it checked and "OK" at the end;
exits non-zero with "REFUSED: ..." on the first thing that does not hold.
Secret values are never printed, only their SHA-256.

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
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa  # noqa: E402
from pycose import headers  # noqa: E402
from pycose.algorithms import A256GCM, Es256, RsaesOaepSha1, RsaesOaepSha256  # noqa: E402
from pycose.keys import CoseKey, RSAKey  # noqa: E402
from pycose.messages import EncMessage, Sign1Message  # noqa: E402
from pycose.messages.recipient import KeyWrap  # noqa: E402

from flashgate_package import (  # noqa: E402
    CHUNK_SIZE,
    MANIFEST_CONTENT_TYPE,
    TAG_COSE_ENCRYPT,
    TAG_COSE_SIGN1,
    Refused,
    check,
    check_image_element,
    cose_decode,
    decrypt_chunks,
    kid_of_ec,
    load_oem_key,
    open_outer,
    read_file,
    run,
    sec1,
    thaw,
    verify_manifest,
)

TRANSPORT_BITS = 3072
OAEP_CIPHERTEXT_LEN = TRANSPORT_BITS // 8
ALG_SECRET_IN_RECIPIENT = -65539
IMAGE_BODY_PROTECTED = bytes.fromhex("a10103")  # {1: 3}, A256GCM
SECRET_BODY_PROTECTED = bytes.fromhex("a1013a00010002")  # {1: -65539}

# profile name -> (COSE alg, pycose algorithm, hash name, hash class,
#                  recipient protected header bytes)
PROFILES = {
    "cose-rsaes-oaep-sha256": (-41, RsaesOaepSha256, "SHA-256", hashes.SHA256, bytes.fromhex("a1013828")),
    "cose-rsaes-oaep-sha1": (-40, RsaesOaepSha1, "SHA-1", hashes.SHA1, bytes.fromhex("a1013827")),
}
ROLES = ("image", "master", "ca")


# --- COSE decoding. ---


def raw_encrypt(data, what):
    """The four entries of a COSE_Encrypt, read with cbor2 alone, checked to
    be in deterministic encoding."""
    obj = cbor2.loads(data)
    check(isinstance(obj, cbor2.CBORTag) and obj.tag == TAG_COSE_ENCRYPT, f"{what}: not a COSE_Encrypt (tag 96)")
    check(cbor2.dumps(obj, canonical=True) == data, f"{what}: not in deterministic encoding")
    body = thaw(obj.value)
    check(isinstance(body, list) and len(body) == 4, f"{what}: a COSE_Encrypt has four entries")
    check(isinstance(body[3], list) and len(body[3]) == 1, f"{what}: not exactly one recipient")
    return body


# --- Keys. ---


def kid_of_transport(public_key):
    """Key id of a transport key: first 16 bytes of SHA-256 over its SPKI DER."""
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).digest()[:16]


class Transport:
    """One role's RSA transport private key, for cryptography and for pycose."""

    def __init__(self, role, pem):
        self.role = role
        self.private = serialization.load_pem_private_key(pem, password=None)
        check(isinstance(self.private, rsa.RSAPrivateKey), f"the {role} key is not an RSA key")
        check(self.private.key_size == TRANSPORT_BITS, f"the {role} key is not RSA-{TRANSPORT_BITS}")
        check(self.private.public_key().public_numbers().e == 65537, f"the {role} key's exponent is not 65537")
        self.kid = kid_of_transport(self.private.public_key())
        self.cose_key = CoseKey.from_pem_private_key(pem.decode())
        check(isinstance(self.cose_key, RSAKey), f"pycose does not read the {role} key as RSA")


def check_oaep_recipient(raw, profile, key, what):
    """The recipient array [protected, {4: kid}, ciphertext], as FORMATS.md
    §3.4 and §3.5.3 lay it out; returns the ciphertext."""
    alg, _, _, _, protected = PROFILES[profile]
    check(isinstance(raw, list) and len(raw) == 3, f"{what}: a recipient has three entries")
    r_protected, r_unprotected, ciphertext = raw
    check(r_protected == protected, f"{what}: recipient protected header {r_protected.hex()}, expected {protected.hex()} (alg {alg})")
    check(isinstance(r_unprotected, dict) and list(r_unprotected) == [4], f"{what}: the recipient header must hold exactly the kid")
    check(r_unprotected[4] == key.kid, f"{what}: recipient kid is not the transport key of the role {key.role}")
    check(isinstance(ciphertext, bytes) and len(ciphertext) == OAEP_CIPHERTEXT_LEN, f"{what}: the OAEP ciphertext is not {OAEP_CIPHERTEXT_LEN} bytes")
    return ciphertext


def oaep_decrypt(profile, key, ciphertext, what):
    """RSAES-OAEP (RFC 8017 7.1.2) with `cryptography`: the hash and MGF1 hash
    of the profile, empty label."""
    hash_cls = PROFILES[profile][3]
    pad = padding.OAEP(mgf=padding.MGF1(hash_cls()), algorithm=hash_cls(), label=None)
    try:
        return key.private.decrypt(ciphertext, pad)
    except ValueError:
        raise Refused(f"{what}: RSAES-OAEP decryption failed (not for this key, or altered)") from None


def pycose_unwrap(profile, key, raw_recipient, what):
    """The same OAEP step with pycose's own recipient class (KeyWrap, which
    pycose uses for -40/-41/-42), built from the recipient array alone."""
    rcpt = KeyWrap.from_cose_obj(thaw(raw_recipient), True, context="Enc_Recipient")
    check(rcpt.get_attr(headers.Algorithm) == PROFILES[profile][1], f"{what}: pycose reads another recipient algorithm")
    check(rcpt.get_attr(headers.KID) == key.kid, f"{what}: pycose reads another kid")
    rcpt.key = key.cose_key
    try:
        return rcpt.decrypt(A256GCM)  # the target algorithm is not used by OAEP
    except ValueError:
        raise Refused(f"{what}: RSAES-OAEP decryption failed in pycose (not for this key, or altered)") from None


def open_secret(obj, profile, key, what):
    """A Secret_Encrypt_oaep: body {1: -65539}, {}, h'', one OAEP recipient
    whose plaintext is the secret. pycose does not know -65539, so the body
    is read with cbor2 and the OAEP done with `cryptography`; pycose's
    recipient class must give the same bytes."""
    body = raw_encrypt(obj, what)
    protected, unprotected, ciphertext, recipients = body
    check(protected == SECRET_BODY_PROTECTED, f"{what}: body protected header {protected.hex()}, expected {SECRET_BODY_PROTECTED.hex()} (alg {ALG_SECRET_IN_RECIPIENT})")
    check(unprotected == {}, f"{what}: the body's unprotected header is not empty")
    check(ciphertext == b"", f"{what}: the body ciphertext is not the empty byte string")
    ct = check_oaep_recipient(recipients[0], profile, key, what)
    secret = oaep_decrypt(profile, key, ct, what)
    check(pycose_unwrap(profile, key, recipients[0], what) == secret, f"{what}: pycose and cryptography disagree")
    return secret


def main(argv):
    if len(argv) < 8:
        print(__doc__, file=sys.stderr)
        return 2
    package_path, profile = argv[1], argv[2]
    key_paths = argv[3:6]
    oem_pub_path = argv[6]
    fw_paths = argv[7:]
    check(profile in PROFILES, f"{profile!r} is not an RSA-OAEP profile")
    alg, pycose_alg, hash_name, _, _ = PROFILES[profile]
    oaep_name = f"RSAES-OAEP (alg {alg}, {hash_name})"

    buf = read_file(package_path)
    keys = {role: Transport(role, read_file(path)) for role, path in zip(ROLES, key_paths)}
    oem_pem = read_file(oem_pub_path)
    expected_fw = [read_file(path) for path in fw_paths]
    oem_public, oem_cose_key = load_oem_key(oem_pem)

    manifest_sign1, master_obj, ca_obj, images, spans = open_outer(buf)

    # Manifest signature (pycose, ES256, OEM key).
    sign1 = cose_decode(Sign1Message, manifest_sign1, TAG_COSE_SIGN1, "the manifest")
    check(
        sign1.phdr_encoded == cbor2.dumps({1: -7, 3: MANIFEST_CONTENT_TYPE, 4: kid_of_ec(oem_public)}),
        "the manifest's protected header is not {1: ES256, 3: content type, 4: kid(OEM signing key)}",
    )
    check(sign1.get_attr(headers.Algorithm) == Es256, "the manifest is not signed with ES256")
    manifest = verify_manifest(sign1, oem_cose_key)
    print("manifest signature: ES256, verified with pycose against the OEM signing key")

    check(list(manifest) == list(range(1, 14)), "the manifest keys are not exactly 1..13 in order")
    check(manifest[1] == 1, "manifest version")
    check(manifest[7] == profile, f"profile {manifest[7]!r}, expected {profile}")
    print(f"manifest: job {manifest[2].hex()}, appliance {manifest[4]}, profile {manifest[7]}")

    # Every digest before any decryption.
    check(hashlib.sha256(master_obj).digest() == manifest[10], "device-master digest: SHA-256 of secrets[0] differs from manifest field 10")
    check(hashlib.sha256(ca_obj).digest() == manifest[11], "job-CA-key digest: SHA-256 of secrets[1] differs from manifest field 11")
    entries = manifest[9]
    check(len(entries) == len(images), "image count differs from the manifest")
    check(len(expected_fw) == len(images), f"{len(expected_fw)} expected firmware file(s) for {len(images)} image(s)")
    for i, (entry, element, span) in enumerate(zip(entries, images, spans)):
        check_image_element(buf, span, entry, element, f"image {i}")
        check(entry[5] == -(-entry[2] // CHUNK_SIZE), f"image {i}: chunk count is not ceil(size / 65536)")

    # Secrets: OAEP with `cryptography`, cross-checked with pycose's recipient.
    master = open_secret(master_obj, profile, keys["master"], "device master")
    check(len(master) == 32, "the device master is not 32 bytes")
    print(f"device master: {oaep_name} with the master key, {len(master)} bytes, SHA-256 {hashlib.sha256(master).hexdigest()}")

    ca_der = open_secret(ca_obj, profile, keys["ca"], "job CA key")
    ca_key = serialization.load_der_private_key(ca_der, password=None)
    check(isinstance(ca_key, ec.EllipticCurvePrivateKey) and isinstance(ca_key.curve, ec.SECP256R1), "the job CA key is not a P-256 key")
    job_ca_cert = x509.load_der_x509_certificate(manifest[12])
    oem_root = x509.load_der_x509_certificate(manifest[13])
    ca_point = sec1(ca_key.public_key())
    check(ca_point == sec1(job_ca_cert.public_key()), "the job CA key does not match the job CA certificate in the manifest")
    job_ca_cert.verify_directly_issued_by(oem_root)
    print(f"job CA key: {oaep_name} with the ca key, P-256 PKCS#8, public key {ca_point.hex()} equals the job CA certificate's and the OEM root issued it")

    # Images: pycose opens the header and its RSA-OAEP recipient.
    for i, (entry, element, fw) in enumerate(zip(entries, images, expected_fw)):
        header, chunks = element
        what = f"image {i}"
        body = raw_encrypt(header, what)
        body_protected, body_unprotected, ciphertext, recipients = body
        check(body_protected == IMAGE_BODY_PROTECTED, f"{what}: body protected header is not {{1: A256GCM}}")
        check(list(body_unprotected) == [5] and len(body_unprotected[5]) == 12, f"{what}: the unprotected header must hold exactly a 12-byte IV")
        check(ciphertext is None, f"{what}: the ciphertext is not detached")
        ct = check_oaep_recipient(recipients[0], profile, keys["image"], what)

        msg = cose_decode(EncMessage, header, TAG_COSE_ENCRYPT, what)
        check(msg.get_attr(headers.Algorithm) == A256GCM, f"{what}: pycose reads a content algorithm other than A256GCM")
        check(len(msg.recipients) == 1, f"{what}: pycose sees {len(msg.recipients)} recipients")
        rcpt = msg.recipients[0]
        check(isinstance(rcpt, KeyWrap), f"{what}: pycose does not read the recipient as key transport")
        check(rcpt.get_attr(headers.Algorithm) == pycose_alg, f"{what}: pycose reads recipient algorithm {rcpt.get_attr(headers.Algorithm)}")
        check(rcpt.get_attr(headers.KID) == keys["image"].kid, f"{what}: pycose reads another kid")
        rcpt.key = keys["image"].cose_key
        try:
            cek = rcpt.compute_cek(A256GCM, "decrypt").k
        except ValueError:
            raise Refused(f"{what}: RSAES-OAEP decryption failed in pycose (not for this key, or altered)") from None
        check(len(cek) == 32, f"{what}: the CEK is not 32 bytes")
        check(oaep_decrypt(profile, keys["image"], ct, what) == cek, f"{what}: CEK differs between pycose and cryptography")
        base_iv = msg.get_attr(headers.IV)
        check(base_iv == body_unprotected[5], f"{what}: pycose reads another IV")
        check(msg.phdr_encoded == body_protected, f"{what}: pycose re-encodes the protected header differently")
        print(f"{what}: recipient {oaep_name} with the image key, CEK by pycose equals CEK by cryptography")

        plain = bytearray()
        for index, last, part in decrypt_chunks(cek, base_iv, body_protected, chunks, what):
            check(len(part) > 0 and (len(part) == CHUNK_SIZE or last), f"{what}: chunk {index} has {len(part)} bytes")
            plain += part
        check(len(plain) == entry[2], f"{what}: size")
        digest = hashlib.sha256(plain).digest()
        check(digest == entry[3], f"{what}: plaintext digest differs from the manifest")
        check(bytes(plain) == fw, f"{what} differs from the expected firmware")
        print(f"{what}: 0x{entry[1]:08x}, {len(plain)} bytes in {len(chunks)} chunks, SHA-256 {digest.hex()} matches the manifest and the expected firmware")

    print("OK")
    return 0


if __name__ == "__main__":
    run(main)
