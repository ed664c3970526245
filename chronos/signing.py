"""Job authenticity: ed25519 signatures over (namespace, job id, spec), checked before a job runs.

Why: a worker credential may write job records (it must, to record outcomes), so a record's
spec proves nothing about who asked for the job. Submitters and the scheduler hold a signing
key that workers do not; workers, the rescuer, the stager and the orphan repair verify a job's
signature against the trusted public keys before they run or republish it. See docs/security.md,
"Job authenticity", for the argument and its limits.

Cost: one ed25519 signature per submit batch, not per job. The leaves of a batch (one per job:
a 16-byte BLAKE2b digest of the namespace, the job id and the spec's msgpack bytes) form a
Merkle tree whose root is signed; each job carries its sibling path (16 bytes per level). A
verifier recomputes the root from the job's leaf and path (a few hashes) and checks the root's
signature once, caching roots it has verified, so a worker pays one ed25519 verify per batch.

Key format: ``ed25519:<urlsafe base64 of the 32-byte key>``; the private key file holds the
32-byte seed the same way. ``chronos admin init --signing-keys DIR`` writes a pair.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import msgspec
import nacl.bindings as sodium
import nacl.exceptions

from .errors import ConfigError
from .models import JobAuth, JobRecord, JobSpec

log = logging.getLogger(__name__)

_PREFIX = "ed25519:"
_DOMAIN = b"chronos/job-batch/v1\x00"  # what a signature is over: never valid for another purpose
_NODE = 16  # bytes per tree node: second preimages cost 2**128; collisions need the signer's help
_MAX_BATCH = 1024  # leaves per signed tree (a path of at most 10 nodes, 160 bytes per job)
_encoder = msgspec.msgpack.Encoder()


class SignatureError(Exception):
    """A job's spec is not vouched for by a trusted key; the message says why (one line)."""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def parse_key(text: str, what: str = "key") -> bytes:
    """32 raw bytes from ``ed25519:<base64>``; ConfigError naming ``what`` otherwise."""
    text = text.strip()
    if not text.startswith(_PREFIX):
        raise ConfigError(f"{what}: expected 'ed25519:<base64>', got {text[:20]!r}")
    try:
        raw = _unb64(text[len(_PREFIX):])
    except (ValueError, TypeError):
        raise ConfigError(f"{what}: not valid base64") from None
    if len(raw) != 32:
        raise ConfigError(f"{what}: an ed25519 key is 32 bytes, got {len(raw)}")
    return raw


def format_key(raw: bytes) -> str:
    return _PREFIX + _b64(raw)


def key_id(public: bytes) -> str:
    return hashlib.blake2b(public, digest_size=6).hexdigest()


def generate_keypair() -> tuple[str, str]:
    """(private seed, public key), both formatted ``ed25519:...``."""
    seed = os.urandom(32)
    public, _ = sodium.crypto_sign_seed_keypair(seed)
    return format_key(seed), format_key(public)


def write_keypair(directory: str | Path) -> tuple[Path, str]:
    """Write ``signing.key`` (mode 0600) in ``directory``; return its path and the public key."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    seed, public = generate_keypair()
    path = d / "signing.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(seed + "\n")
    (d / "signing.pub").write_text(public + "\n")
    return path, public


def spec_bytes(spec: JobSpec) -> bytes:
    """The canonical bytes of a spec: its msgpack encoding (field order fixed, dicts in their order,
    which decoding keeps), so a verifier re-encoding a decoded spec gets the signed bytes back."""
    return _encoder.encode(spec)


def _leaf(namespace: str, job_id: str, spec: JobSpec) -> bytes:
    h = hashlib.blake2b(b"\x00", digest_size=_NODE)
    h.update(namespace.encode())
    h.update(b"\x00")
    h.update(job_id.encode())
    h.update(b"\x00")
    h.update(spec_bytes(spec))
    return h.digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.blake2b(b"\x01" + left + right, digest_size=_NODE).digest()


def _root_message(namespace: str, root: bytes) -> bytes:
    return _DOMAIN + namespace.encode() + b"\x00" + root


class Signer:
    """Signs jobs with one private key (held by submitters and the scheduler, never by workers)."""

    def __init__(self, seed: bytes, namespace: str) -> None:
        self.public, self._secret = sodium.crypto_sign_seed_keypair(seed)
        self.kid = key_id(self.public)
        self.namespace = namespace

    def sign(self, records: Sequence[JobRecord]) -> list[JobAuth]:
        """One JobAuth per record (same order), from one signature per ``_MAX_BATCH`` records."""
        out: list[JobAuth] = []
        for start in range(0, len(records), _MAX_BATCH):
            out.extend(self._sign_tree([_leaf(self.namespace, r.id, r.spec) for r in records[start:start + _MAX_BATCH]]))
        return out

    def sign_records(self, records: Sequence[JobRecord]) -> None:
        """Set ``auth`` on each record in place (records are mutable until written)."""
        for rec, auth in zip(records, self.sign(records)):
            rec.auth = auth

    def _sign_tree(self, leaves: list[bytes]) -> list[JobAuth]:
        n = len(leaves)
        if n == 1:
            sig = sodium.crypto_sign(_root_message(self.namespace, leaves[0]), self._secret)[:64]
            return [JobAuth(kid=self.kid, sig=sig)]
        size = 1 << (n - 1).bit_length()
        level = leaves + [bytes(_NODE)] * (size - n)  # zero leaves pad to a power of two
        levels = [level]
        while len(level) > 1:
            level = [_node(level[i], level[i + 1]) for i in range(0, len(level), 2)]
            levels.append(level)
        sig = sodium.crypto_sign(_root_message(self.namespace, level[0]), self._secret)[:64]
        out = []
        for i in range(n):
            path, j = [], i
            for lvl in levels[:-1]:
                path.append(lvl[j ^ 1])
                j >>= 1
            out.append(JobAuth(kid=self.kid, sig=sig, path=b"".join(path), index=i))
        return out


class Verifier:
    """Checks jobs against the trusted public keys; remembers roots it has verified."""

    def __init__(self, public_keys: Sequence[bytes], namespace: str, cache_size: int = 4096) -> None:
        self.keys = {key_id(k): k for k in public_keys}
        self.namespace = namespace
        self._verified: OrderedDict[tuple[str, bytes, bytes], None] = OrderedDict()
        self._cache_size = cache_size

    def verify(self, record: JobRecord) -> None:
        """Return if ``record.spec`` was signed for ``record.id`` by a trusted key; else SignatureError."""
        auth = record.auth
        if auth is None:
            raise SignatureError("unsigned job: no submitter signature")
        public = self.keys.get(auth.kid)
        if public is None:
            raise SignatureError(f"signed by an unknown key {auth.kid!r}")
        path = auth.path
        if len(path) % _NODE or len(path) > _NODE * 16 or not 0 <= auth.index < (1 << (len(path) // _NODE)):
            raise SignatureError("malformed signature path")
        node, j = _leaf(self.namespace, record.id, record.spec), auth.index
        for k in range(0, len(path), _NODE):
            sib = path[k:k + _NODE]
            node = _node(sib, node) if j & 1 else _node(node, sib)
            j >>= 1
        key = (auth.kid, node, auth.sig)
        if key in self._verified:
            self._verified.move_to_end(key)
            return
        try:
            sodium.crypto_sign_open(auth.sig + _root_message(self.namespace, node), public)
        except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
            raise SignatureError("bad signature: the spec or job id differs from what was signed") from None
        self._verified[key] = None
        if len(self._verified) > self._cache_size:
            self._verified.popitem(last=False)


class Authenticity:
    """What one process may do, from its settings: sign (holds the private key), verify (has
    trusted keys), both, or neither (signing off: every job is trusted, as before signing)."""

    def __init__(self, signer: Signer | None, verifier: Verifier | None) -> None:
        self.signer = signer
        self.verifier = verifier

    @property
    def enforced(self) -> bool:
        return self.verifier is not None

    def sign_records(self, records: Sequence[JobRecord]) -> None:
        if self.signer is not None:
            self.signer.sign_records([r for r in records if r.auth is None])

    def check(self, record: JobRecord) -> str | None:
        """None if the job may run (or signing is off); else a one-line reason for refusing it."""
        if self.verifier is None:
            return None
        try:
            self.verifier.verify(record)
        except SignatureError as exc:
            return f"refused: {exc}"
        return None


_cache: dict[tuple[str, str | None, tuple[str, ...]], Authenticity] = {}


def from_settings(settings: object) -> Authenticity:
    """Build (once per distinct setting) the signer and verifier the settings describe.

    ``security.signing_key_file``: the private key (submitters, the scheduler). ``security.trusted_keys``:
    public keys jobs must be signed with; when empty, the signing key's own public key is trusted if
    one is set, and otherwise signing is off (nothing is signed or checked).
    """
    sec = getattr(settings, "security", None)
    namespace = getattr(settings, "namespace", "chronos")
    key_file = getattr(sec, "signing_key_file", None) if sec is not None else None
    trusted = tuple(getattr(sec, "trusted_keys", ()) or ()) if sec is not None else ()
    cache_key = (namespace, key_file, trusted)
    found = _cache.get(cache_key)
    if found is not None:
        return found
    signer = None
    if key_file:
        try:
            text = Path(key_file).read_text()
        except OSError as exc:
            raise ConfigError(f"security.signing_key_file: cannot read {key_file}: {exc.strerror or exc}") from None
        signer = Signer(parse_key(text, "security.signing_key_file"), namespace)
    keys = [parse_key(k, "security.trusted_keys") for k in trusted]
    if not keys and signer is not None:
        keys = [signer.public]
    verifier = Verifier(keys, namespace) if keys else None
    auth = _cache[cache_key] = Authenticity(signer, verifier)
    if verifier is None:
        log.debug("job signing is off (no security.trusted_keys or security.signing_key_file)")
    return auth
