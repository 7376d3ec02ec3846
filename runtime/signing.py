"""Signed bundles: a detached ed25519 signature over the canonical manifest.

The manifest pins every bundled file by sha256 (graphs, .ort copies, tokenizer, reports), so
one signature over it authenticates the whole bundle: a graph swapped together with its
sha256 entry changes the manifest and breaks the signature.

    mmedge export keygen --out keys/release.key        # keys/release.key (private) + .pub
    mmedge export sign BUNDLE --key keys/release.key    # writes BUNDLE/manifest.sig
    Runtime.load(BUNDLE, trusted_keys=["keys/release.key.pub"])

``manifest.sig`` is JSON: ``{"algorithm": "ed25519", "key_id": <sha256 of the raw public key,
first 16 hex>, "signature": <base64 of 64 bytes>}``. The signed bytes are
``canonical(manifest)``: the parsed manifest.json re-serialised with sorted keys, no
whitespace and ASCII escapes, so reformatting the file keeps the signature valid while any
change of a value breaks it. Needs the optional extra ``mmedge[sign]`` (``cryptography``);
nothing imports it unless keys are used.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from runtime.atomic import write_bytes_atomic
from runtime.errors import BundleSignatureError

SIGNATURE_FILE = "manifest.sig"
ALGORITHM = "ed25519"
KeyLike = Any  # Ed25519PublicKey, 32 raw bytes, PEM bytes/str, or a path to a PEM (or raw 32-byte) file


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise BundleSignatureError("signed bundles need the 'cryptography' package: pip install 'mmedge[sign]'"
                                   ) from None
    return serialization, ed25519


def canonical(manifest: Any) -> bytes:
    """The bytes that are signed: sorted keys, no whitespace, ASCII only (floats as Python repr)."""
    try:
        return json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                          allow_nan=True).encode("ascii")
    except (TypeError, ValueError, RecursionError) as exc:
        raise BundleSignatureError(f"the manifest cannot be serialised canonically: {type(exc).__name__}") from None


def key_id(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()[:16]


def generate_key(out: Path) -> tuple[Path, Path]:
    """A new ed25519 key pair: ``out`` (PKCS#8 PEM, mode 0600) and ``out.pub`` (SubjectPublicKeyInfo PEM)."""
    serialization, ed25519 = _crypto()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never overwrite a key silently
    with os.fdopen(fd, "wb") as fh:
        fh.write(private)
    pub = out.with_name(out.name + ".pub")
    write_bytes_atomic(pub, public)
    return out, pub


def load_private_key(path: Path) -> Any:
    serialization, ed25519 = _crypto()
    data = Path(path).read_bytes()
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise BundleSignatureError(f"{path} is not an unencrypted PEM private key ({exc}); create one with "
                                   "`mmedge export keygen --out KEY` (the .pub file is the public half)") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise BundleSignatureError(f"{path} holds a {type(key).__name__}, not an ed25519 private key")
    return key


def load_public_key(key: KeyLike) -> Any:
    """A trusted key as an Ed25519PublicKey; raises BundleSignatureError naming what was wrong with it."""
    serialization, ed25519 = _crypto()
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    data: bytes
    if isinstance(key, (str, os.PathLike)) and not str(key).lstrip().startswith("-----BEGIN"):
        try:
            data = Path(key).read_bytes()
        except OSError as exc:
            raise BundleSignatureError(f"trusted key {str(key)!r} cannot be read: {exc}") from None
    elif isinstance(key, str):
        data = key.encode()
    elif isinstance(key, (bytes, bytearray)):
        data = bytes(key)
    else:
        raise BundleSignatureError(f"a trusted key must be a path, PEM text, 32 raw bytes or an Ed25519PublicKey, "
                                   f"got {type(key).__name__}")
    try:
        if len(data) == 32:
            return ed25519.Ed25519PublicKey.from_public_bytes(data)
        loaded = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise BundleSignatureError(f"trusted key is not an ed25519 public key (PEM or 32 raw bytes): {exc}") from None
    if not isinstance(loaded, ed25519.Ed25519PublicKey):
        raise BundleSignatureError(f"trusted key is a {type(loaded).__name__}, not an ed25519 public key")
    return loaded


def _raw(public: Any) -> bytes:
    serialization, _ = _crypto()
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def sign_bundle(bundle_dir: Path, private_key_path: Path) -> Path:
    """Write ``bundle_dir/manifest.sig`` over the bundle's current manifest.json (verified first)."""
    from runtime.manifest import MANIFEST_FILE, load_manifest

    bundle_dir = Path(bundle_dir)
    key = load_private_key(private_key_path)
    load_manifest(bundle_dir, verify=True)  # never sign a bundle that would not load
    data = json.loads((bundle_dir / MANIFEST_FILE).read_text())
    sig = key.sign(canonical(data))
    body = {"algorithm": ALGORITHM, "key_id": key_id(_raw(key.public_key())),
            "signature": base64.b64encode(sig).decode("ascii")}
    path = bundle_dir / SIGNATURE_FILE
    write_bytes_atomic(path, (json.dumps(body, indent=1) + "\n").encode())
    return path


def verify_manifest(bundle_dir: Path, manifest: Any, trusted_keys: Sequence[KeyLike] | Iterable[KeyLike]) -> str:
    """Check ``bundle_dir/manifest.sig`` against the parsed ``manifest``; returns the signing key's id.

    Raises BundleSignatureError when there is no (readable) signature, no trusted key, or no trusted
    key verifies the signature.
    """
    keys = [load_public_key(k) for k in trusted_keys]
    if not keys:
        raise BundleSignatureError("trusted_keys is empty, so no signature can be trusted; pass the public key(s) "
                                   "the bundle was signed with, or omit trusted_keys to load unsigned bundles",
                                   path=str(bundle_dir))
    path = Path(bundle_dir) / SIGNATURE_FILE
    if not path.is_file():
        raise BundleSignatureError(f"{bundle_dir} is not signed (no {SIGNATURE_FILE}); sign it with "
                                   "`mmedge export sign BUNDLE --key KEY`", path=str(path))
    try:
        body = json.loads(path.read_text())
        if not isinstance(body, dict) or body.get("algorithm") != ALGORITHM:
            raise ValueError(f"algorithm must be {ALGORITHM!r}")
        sig = base64.b64decode(str(body["signature"]), validate=True)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise BundleSignatureError(f"{path} is not a valid signature file ({type(exc).__name__}: {exc}); re-sign "
                                   "the bundle", path=str(path)) from None
    from cryptography.exceptions import InvalidSignature

    message = canonical(manifest)
    for public in keys:
        try:
            public.verify(sig, message)
            return key_id(_raw(public))
        except InvalidSignature:
            continue
    ids = [key_id(_raw(k)) for k in keys]
    raise BundleSignatureError(f"the signature of {bundle_dir} (key id {body.get('key_id')!r}) does not verify with "
                               f"any trusted key {ids}: the manifest was changed after signing, or it was signed by "
                               "a key you do not trust. Re-export and re-sign it", path=str(path))


