"""Content hashes: the identity of files, teachers and datasets.

Invariant: a hash depends on content and order only, never on paths, mtimes or file modes, so the
same data hashed on two machines gives the same digest (RELIABILITY.md: "identity, not position").
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_files(root: Path, relative_names: Iterable[str]) -> str:
    """One digest over several files: their relative names and contents, in sorted name order."""
    digest = hashlib.sha256()
    for name in sorted(relative_names):
        digest.update(name.encode() + b"\0" + sha256_file(root / name).encode() + b"\n")
    return digest.hexdigest()


def _update_field(digest: hashlib._Hash, value: str | None) -> None:
    # A length prefix keeps ("ab", "c") and ("a", "bc") apart; None is distinct from "".
    if value is None:
        digest.update(b"\xff")
        return
    encoded = value.encode("utf-8", errors="surrogatepass")
    digest.update(len(encoded).to_bytes(8, "little") + encoded)


def row_digests(texts: Sequence[str], pairs: Sequence[str | None] | None,
                labels: Sequence[str | None]) -> list[bytes]:
    """A digest per row of (text, text pair, label name): used to count which rows changed."""
    out = []
    for index, text in enumerate(texts):
        digest = hashlib.blake2b(digest_size=16)
        _update_field(digest, text)
        _update_field(digest, pairs[index] if pairs is not None else None)
        _update_field(digest, labels[index])
        out.append(digest.digest())
    return out


def fingerprint_rows(digests: Iterable[bytes]) -> str:
    """The fingerprint of a split: a hash of its row digests in order."""
    digest = hashlib.sha256()
    for row in digests:
        digest.update(row)
    return digest.hexdigest()
