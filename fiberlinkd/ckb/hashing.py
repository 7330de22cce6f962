"""CKB hashing primitives.

CKB uses BLAKE2b with a 32-byte digest and the personalisation ``ckb-default-hash`` for
transaction hashes, script hashes and the signing message ("ckbhash"). ``blake160`` is the
first 20 bytes of that hash and is how a secp256k1 public key becomes the ``args`` of the
standard secp256k1-blake160 lock.
"""

from __future__ import annotations

import hashlib

CKB_HASH_PERSONALIZATION = b"ckb-default-hash"
CKB_HASH_DIGEST_SIZE_BYTES = 32
BLAKE160_SIZE_BYTES = 20


def ckb_hash(data: bytes) -> bytes:
    """Return the 32-byte CKB hash (blake2b-256, person ``ckb-default-hash``) of ``data``."""
    return hashlib.blake2b(
        data, digest_size=CKB_HASH_DIGEST_SIZE_BYTES, person=CKB_HASH_PERSONALIZATION
    ).digest()


def new_ckb_hasher() -> hashlib.blake2b:
    """Return an incremental hasher with CKB's parameters (call ``update`` then ``digest``)."""
    return hashlib.blake2b(digest_size=CKB_HASH_DIGEST_SIZE_BYTES, person=CKB_HASH_PERSONALIZATION)


def blake160(data: bytes) -> bytes:
    """Return the first 20 bytes of ``ckb_hash(data)`` (e.g. a compressed pubkey's lock args)."""
    return ckb_hash(data)[:BLAKE160_SIZE_BYTES]
