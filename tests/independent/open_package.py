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
import sys
from collections.abc import Mapping

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap
from pycose import headers
from pycose.algorithms import A256GCM, A256KW, EcdhEsA256KW, Es256
from pycose.keys import CoseKey
from pycose.messages import EncMessage, Sign1Message

MAGIC = "flashgate-job"
MANIFEST_CONTENT_TYPE = "application/vnd.flashgate.manifest+cbor"
PROFILE = "cose-ecdh-es-a256kw"
KDF_OTHER = b"flashgate job key v1"
CHUNK_SIZE = 64 * 1024
TAG_COSE_SIGN1 = 18
TAG_COSE_ENCRYPT = 96


class Refused(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Refused(what)


# --- A minimal CBOR walker, only to find where each item starts and ends. ---


def head(buf, pos):
    """Returns (major, argument, position after the head)."""
    check(pos < len(buf), "unexpected end of the package")
    ib = buf[pos]
    major, info = ib >> 5, ib & 0x1F
    pos += 1
    if info < 24:
        return major, info, pos
    check(info <= 27, "indefinite lengths or reserved values in the package")
    n = 1 << (info - 24)
    check(pos + n <= len(buf), "unexpected end of the package")
    return major, int.from_bytes(buf[pos:pos + n], "big"), pos + n


def skip(buf, pos):
    """Returns the position after the data item starting at pos."""
    major, arg, pos = head(buf, pos)
    if major in (0, 1, 7):
        return pos
    if major in (2, 3):
        check(pos + arg <= len(buf), "a string runs past the end")
        return pos + arg
    if major == 4:
        for _ in range(arg):
            pos = skip(buf, pos)
        return pos
    if major == 5:
        for _ in range(2 * arg):
            pos = skip(buf, pos)
        return pos
    return skip(buf, pos)  # tag: the tagged item follows


def image_element_spans(buf):
    """Byte spans of the image elements in the outer array."""
    major, n, pos = head(buf, 0)
    check(major == 4 and n == 5, "the outer array does not have five entries")
    for _ in range(4):
        pos = skip(buf, pos)
    major, count, pos = head(buf, pos)
    check(major == 4, "the images entry is not an array")
    spans = []
    for _ in range(count):
        end = skip(buf, pos)
        spans.append((pos, end))
        pos = end
    check(pos == len(buf), "data after the end of the package")
    return spans


# --- COSE decoding. ---


def thaw(value):
    """cbor2 6 decodes the contents of tags as tuples and frozen dicts, which
    pycose 1.1 (written for cbor2 5) cannot take; give it lists and dicts."""
    if isinstance(value, cbor2.CBORTag):
        return cbor2.CBORTag(value.tag, thaw(value.value))
    if isinstance(value, (list, tuple)):
        return [thaw(v) for v in value]
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    return value


def cose_decode(cls, data, tag, what):
    """pycose's `cls.decode`, but robust to the cbor2 version."""
    obj = cbor2.loads(data)
    check(isinstance(obj, cbor2.CBORTag) and obj.tag == tag, f"{what} is not a COSE object with tag {tag}")
    return cls.from_cose_obj(thaw(obj.value), True)


# --- Keys. ---


def sec1(public_key):
    return public_key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def kid_of(public_key):
    """flashgate's key id: first 16 bytes of SHA-256 over the SEC1 point."""
    return hashlib.sha256(sec1(public_key)).digest()[:16]


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
    with open(package_path, "rb") as f:
        buf = f.read()
    with open(ka_path, "rb") as f:
        ka_pem = f.read()
    with open(oem_pub_path, "rb") as f:
        oem_pem = f.read()
    with open(fw_path, "rb") as f:
        expected_fw = f.read()

    ka_private = serialization.load_pem_private_key(ka_pem, password=None)
    check(isinstance(ka_private.curve, ec.SECP256R1), "the appliance key is not P-256")
    ka_cose_key = CoseKey.from_pem_private_key(ka_pem.decode())
    oem_public = serialization.load_pem_public_key(oem_pem)
    oem_cose_key = CoseKey.from_pem_public_key(oem_pem.decode())

    # Outer structure.
    outer = cbor2.loads(buf)
    check(isinstance(outer, list) and len(outer) == 5, "not a five-entry array")
    magic, version, manifest_sign1, secrets, images = outer
    check(magic == MAGIC, "not a flashgate job package")
    check(version == 1, f"format version {version}")
    check(isinstance(secrets, list) and len(secrets) == 2, "the secrets entry is not two objects")
    master_obj, ca_obj = secrets
    spans = image_element_spans(buf)
    check(len(spans) == len(images), "image count differs between walkers")
    print(f"package: {len(buf)} bytes, {len(images)} image(s)")

    # Manifest signature (pycose, ES256, OEM key).
    sign1 = cose_decode(Sign1Message, manifest_sign1, TAG_COSE_SIGN1, "the manifest")
    check(sign1.get_attr(headers.Algorithm) == Es256, "the manifest is not signed with ES256")
    check(sign1.get_attr(headers.ContentType) == MANIFEST_CONTENT_TYPE, "the signed object is not a manifest")
    check(sign1.get_attr(headers.KID) == kid_of(oem_public), "the manifest kid is not the OEM signing key")
    sign1.key = oem_cose_key
    check(sign1.verify_signature(), "the manifest signature does not verify")
    print("manifest signature: ES256, verified with the OEM signing key")

    manifest = cbor2.loads(sign1.payload)
    check(cbor2.dumps(manifest, canonical=True) == sign1.payload, "the manifest is not canonical CBOR")
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
    for i, (entry, element, (start, end)) in enumerate(zip(entries, images, spans)):
        raw = buf[start:end]
        check(cbor2.loads(raw) == element, f"image {i}: walker disagrees with cbor2")
        check(cbor2.dumps(element, canonical=True) == raw, f"image {i}: not canonical CBOR")
        check(hashlib.sha256(raw).digest() == entry[6], f"image {i}: object digest")
        header, chunks = element
        check(entry[4] == CHUNK_SIZE, f"image {i}: chunk size {entry[4]}")
        check(entry[5] == len(chunks), f"image {i}: chunk count")

        hdr_msg, cek = open_recipient(header, ka_cose_key, ka_private, f"image {i}")
        body = cbor2.loads(header)
        check(body.tag == TAG_COSE_ENCRYPT, f"image {i}: not a COSE_Encrypt")
        body_protected, body_unprotected, ciphertext, _ = body.value
        check(ciphertext is None, f"image {i}: the ciphertext is not detached")
        base_iv = body_unprotected[5]
        check(len(base_iv) == 12, f"image {i}: IV is not 12 bytes")
        check(hdr_msg.get_attr(headers.IV) == base_iv, f"image {i}: pycose reads another IV")

        gcm = AESGCM(cek)
        plain = bytearray()
        for index, chunk in enumerate(chunks):
            last = index + 1 == len(chunks)
            nonce = base_iv[:8] + bytes(a ^ b for a, b in zip(base_iv[8:], index.to_bytes(4, "big")))
            ext = index.to_bytes(4, "big") + bytes([1 if last else 0])
            aad = cbor2.dumps(["Encrypt", body_protected, ext])
            try:
                part = gcm.decrypt(nonce, chunk, aad)
            except InvalidTag:
                raise Refused(f"image {i}: chunk {index} fails its AES-GCM tag") from None
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
    try:
        sys.exit(main(sys.argv))
    except Refused as e:
        print(f"REFUSED: {e}", file=sys.stderr)
        sys.exit(1)
    except Exception as e:  # a failed tag, unwrap or signature check
        print(f"REFUSED: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
