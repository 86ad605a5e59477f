"""What the independent openers of flashgate job packages share, written
without any flashgate code: a minimal CBOR walker, COSE decoding with pycose
robust to the cbor2 version, the outer package structure, the manifest
signature check, and the chunked AES-256-GCM firmware decryption.

The package layout:
  ["flashgate-job", 1, manifest: bstr, [master: bstr, ca_key: bstr],
   [* [image_header: bstr, [+ chunk: bstr]]]]
"""

import hashlib
import sys
from collections.abc import Mapping

import cbor2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pycose.keys import CoseKey

MAGIC = "flashgate-job"
MANIFEST_CONTENT_TYPE = "application/vnd.flashgate.manifest+cbor"
CHUNK_SIZE = 64 * 1024
TAG_COSE_SIGN1 = 18
TAG_COSE_ENCRYPT = 96
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


class Refused(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Refused(what)


# --- A minimal CBOR walker, only to find where each image element starts and ends. ---


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


def kid_of_ec(public_key):
    """flashgate's key id of an EC key: first 16 bytes of SHA-256 over the SEC1 point."""
    return hashlib.sha256(sec1(public_key)).digest()[:16]


def read_file(path):
    with open(path, "rb") as f:
        return f.read()


def load_oem_key(pem):
    """The OEM job-signing public key (SubjectPublicKeyInfo PEM), for
    `cryptography` and for pycose."""
    return serialization.load_pem_public_key(pem), CoseKey.from_pem_public_key(pem.decode())


# --- The package. ---


def open_outer(buf):
    """The outer structure, checked and walked twice (cbor2 and the walker
    above); returns (manifest_sign1, master_obj, ca_obj, images, spans)."""
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
    return manifest_sign1, master_obj, ca_obj, images, spans


def verify_manifest(sign1, oem_cose_key):
    """Verifies the manifest signature with the OEM key; returns the manifest
    map, checked to be canonical CBOR."""
    sign1.key = oem_cose_key
    # FORMATS.md §3.3: only the low-S form is valid.
    check(len(sign1.signature) == 64, "the manifest signature is not 64 bytes")
    s = int.from_bytes(sign1.signature[32:], "big")
    check(s <= P256_ORDER // 2, "the manifest signature is not low-S")
    check(sign1.verify_signature(), "the manifest signature does not verify")
    manifest = cbor2.loads(sign1.payload)
    check(cbor2.dumps(manifest, canonical=True) == sign1.payload, "the manifest is not canonical CBOR")
    return manifest


def check_image_element(buf, span, entry, element, what):
    """An image element against its manifest entry: both walkers agree, it is
    canonical, its digest and its chunk layout are the manifest's."""
    start, end = span
    raw = buf[start:end]
    check(cbor2.loads(raw) == element, f"{what}: walker disagrees with cbor2")
    check(cbor2.dumps(element, canonical=True) == raw, f"{what}: not canonical CBOR")
    check(hashlib.sha256(raw).digest() == entry[6], f"{what}: object digest")
    check(entry[4] == CHUNK_SIZE, f"{what}: chunk size {entry[4]}")
    check(entry[5] == len(element[1]), f"{what}: chunk count")


def decrypt_chunks(cek, base_iv, body_protected, chunks, what):
    """Yields (index, last, plaintext) of each AES-256-GCM chunk: nonce is the
    base IV with the chunk index XORed into its last four bytes, AAD the
    Enc_structure over the body protected header and index || last flag."""
    gcm = AESGCM(cek)
    for index, chunk in enumerate(chunks):
        last = index + 1 == len(chunks)
        nonce = base_iv[:8] + bytes(a ^ b for a, b in zip(base_iv[8:], index.to_bytes(4, "big")))
        ext = index.to_bytes(4, "big") + bytes([1 if last else 0])
        aad = cbor2.dumps(["Encrypt", body_protected, ext])
        try:
            part = gcm.decrypt(nonce, chunk, aad)
        except InvalidTag:
            raise Refused(f"{what}: chunk {index} fails its AES-GCM tag") from None
        yield index, last, part


def run(main):
    """Runs `main(sys.argv)` and exits with its status; a refusal, or any
    other failure (a failed tag, unwrap or signature check, a malformed
    structure), prints "REFUSED: ..." and exits 1."""
    try:
        sys.exit(main(sys.argv))
    except Refused as e:
        print(f"REFUSED: {e}", file=sys.stderr)
        sys.exit(1)
    except Exception as e:
        print(f"REFUSED: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
