"""Model bundles: read and validate ``config.json``, keep every read inside the bundle, verify every file.

A bundle is a folder written by ``s4g-export``: the view graphs (``ground.onnx``, ``aerial.onnx``, optional
``*.fp16.onnx`` and TensorRT engines) and ``config.json``, which carries the data contract of each view, the
``sha256`` (and size) of every file under ``files`` and the model ``fingerprint``. A bundle may come from
the internet, so :func:`read_bundle_config` trusts nothing in it:

* every path in ``files`` and in ``views.<view>.files`` must be relative, without ``..``, and must resolve
  (symlinks followed) inside the bundle folder — otherwise :class:`FormatError`, before any file is opened;
* every model file the engine may load must be listed in ``files``, so that it is verified (size, then
  sha256) before it is used;
* the fingerprint an index is tied to is *derived from the weights*: :func:`model_fingerprint` over the
  embedding size and the sha256 of the two fp32 view graphs, computed from the files' bytes. A
  ``config.json`` whose ``fingerprint`` disagrees with its weights is refused, so an index built with other
  weights can never be accepted by a bundle whose files were swapped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from s4g_engine.errors import CorruptFileError, FileAccessError, FormatError, MissingFileError, NotAFileError
from s4g_engine.limits import check_bytes

log = logging.getLogger(__name__)

__all__ = ["BUNDLE_FORMAT", "BUNDLE_VERSION", "VIEWS", "read_bundle_config", "validate_config", "bundle_path",
           "model_fingerprint", "config_fingerprint", "sha256_file", "view_model_files", "open_view_encoder"]

BUNDLE_FORMAT = "s4g-bundle"
BUNDLE_VERSION = 1
VIEWS = ("ground", "aerial")
CONFIG = "config.json"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MAX_EMBED_DIM = 1 << 16
_REEXPORT = "re-export the bundle with `s4g-export CHECKPOINT --out DIR`"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def model_fingerprint(embed_dim: int, fp32_sha256: list[str] | tuple[str, ...]) -> str:
    """The model identity an index is tied to: sha256 over the embedding size and the sha256 of the fp32
    graphs of the views (ground, aerial) — what the model computes, not a name."""
    return hashlib.sha256((f"s4g|{int(embed_dim)}|" + "|".join(fp32_sha256)).encode()).hexdigest()


def config_fingerprint(cfg: Mapping[str, Any]) -> str:
    """:func:`model_fingerprint` of a validated config (from its listed sha256, verified by
    :func:`read_bundle_config`)."""
    files = cfg["files"]
    return model_fingerprint(int(cfg["embed_dim"]),
                             [files[_norm(cfg["views"][v]["files"]["fp32"], "")]["sha256"] for v in VIEWS])


def _norm(rel: Any, where: str) -> str:
    """A bundle-relative POSIX path, validated lexically: no absolute path, drive, backslash or ``..``."""
    if not isinstance(rel, str) or not rel.strip():
        raise FormatError(f"{where}: expected a relative file name inside the bundle, got {rel!r}; {_REEXPORT}")
    if "\\" in rel or "\0" in rel or (len(rel) > 1 and rel[1] == ":") or rel.startswith("/") or os.path.isabs(rel):
        raise FormatError(f"{where}: {rel!r} is not a relative POSIX path inside the bundle (absolute paths, "
                          f"drives and backslashes are refused: a bundle may only name its own files); {_REEXPORT}")
    parts = PurePosixPath(rel).parts
    if ".." in parts:
        raise FormatError(f"{where}: {rel!r} climbs out of the bundle ('..'); a bundle may only name files inside "
                          f"its folder; {_REEXPORT}")
    return PurePosixPath(*[p for p in parts if p != "."]).as_posix()


def bundle_path(root: Path, rel: str, where: str) -> Path:
    """``root/rel`` after checking that it resolves (symlinks followed) inside ``root``."""
    rel = _norm(rel, where)
    base = root.resolve()
    full = (base / rel).resolve()
    if full != base and base not in full.parents:
        raise FormatError(f"{where}: {rel!r} resolves to {str(full)!r}, outside the bundle {str(base)!r} (a symlink "
                          f"out of the folder?); refusing to read it; {_REEXPORT}")
    return base / rel


def _check_view_files(cfg: Mapping[str, Any], view: str, listed: set[str], where: str) -> None:
    vcfg = cfg["views"][view]
    vf = vcfg.get("files")
    w = f"{where}: views.{view}.files"
    if not isinstance(vf, Mapping):
        raise FormatError(f"{w}: expected an object like {{\"fp32\": \"{view}.onnx\"}}, got {vf!r}; {_REEXPORT}")
    if "fp32" not in vf:
        raise FormatError(f"{w}: expected an 'fp32' entry (the view's ONNX graph), got keys {sorted(vf)}; {_REEXPORT}")
    names: list[tuple[str, Any]] = []
    for key, value in vf.items():  # fp32, fp16, int8, ... and tensorrt {machine key: engine}
        if isinstance(value, Mapping):
            names.extend((f"{w}.{key}.{k}", v) for k, v in value.items())
        elif value is not None:
            names.append((f"{w}.{key}", value))
    for w_name, rel in names:
        if _norm(rel, w_name) not in listed:
            raise FormatError(f"{w_name}: model file {rel!r} is not listed under 'files' in config.json, so it "
                              f"cannot be verified; every file the engine loads must be listed with its sha256; "
                              f"{_REEXPORT}")


def validate_config(cfg: Any, where: str = CONFIG) -> dict[str, Any]:
    """Check the structure of a parsed ``config.json`` (types, paths, view files); returns it.

    Raises :class:`FormatError` naming the field, what was expected and what came. Reads no file.
    """
    if not isinstance(cfg, dict):
        raise FormatError(f"{where}: expected a JSON object, got {type(cfg).__name__}; {_REEXPORT}")
    if cfg.get("format") != BUNDLE_FORMAT or cfg.get("version") != BUNDLE_VERSION:
        raise FormatError(f"{where}: expected format {BUNDLE_FORMAT!r} version {BUNDLE_VERSION}, got "
                          f"{cfg.get('format')!r} version {cfg.get('version')!r}; {_REEXPORT}")
    for key in ("views", "files", "fingerprint", "embed_dim"):
        if key not in cfg:
            raise FormatError(f"{where}: missing key {key!r}; {_REEXPORT}")
    dim = cfg["embed_dim"]
    if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= _MAX_EMBED_DIM:
        raise FormatError(f"{where}: embed_dim must be an integer in [1, {_MAX_EMBED_DIM}], got {dim!r}")
    if not isinstance(cfg["fingerprint"], str) or not cfg["fingerprint"]:
        raise FormatError(f"{where}: fingerprint must be a non-empty string, got {cfg['fingerprint']!r}")
    files = cfg["files"]
    if not isinstance(files, dict):
        raise FormatError(f"{where}: 'files' must be an object {{relative path: {{\"sha256\": ..., \"bytes\": ...}}}}, "
                          f"got {type(files).__name__}; {_REEXPORT}")
    norm: dict[str, Any] = {}
    for rel, meta in files.items():
        key = _norm(rel, f"{where}: files")
        if not isinstance(meta, Mapping) or not isinstance(meta.get("sha256"), str) \
                or not _SHA256.fullmatch(meta["sha256"]):
            raise FormatError(f"{where}: files[{rel!r}] must be an object with a 64-hex-digit 'sha256', got {meta!r}")
        size = meta.get("bytes")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
            raise FormatError(f"{where}: files[{rel!r}].bytes must be a non-negative integer, got {size!r}")
        norm[key] = meta
    cfg["files"] = norm
    views = cfg["views"]
    if not isinstance(views, dict) or any(not isinstance(views.get(v), dict) for v in VIEWS):
        got = sorted(views) if isinstance(views, dict) else type(views).__name__
        raise FormatError(f"{where}: expected 'views' with objects 'ground' and 'aerial', got {got}; {_REEXPORT}")
    for v in VIEWS:
        _check_view_files(cfg, v, set(norm), where)
    from s4g_engine.preprocess import DataContract

    DataContract.from_config(views)  # FormatError for a bad contract (sizes, mean/std, polar, ...)
    return cfg


def _read_config(root: Path) -> dict[str, Any]:
    cfg_path = root / CONFIG
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a folder"
        raise MissingFileError(f"model bundle {str(root)!r} {what}; expected a folder written by `s4g-export` "
                               f"(config.json + the view graphs)")
    if not cfg_path.is_file():
        raise MissingFileError(f"{str(root)!r} is not a model bundle: expected {cfg_path} (create one with "
                               "`s4g-export CHECKPOINT --out DIR`)")
    check_bytes(cfg_path.stat().st_size, str(cfg_path), field="max_text_bytes")
    try:
        text = cfg_path.read_bytes().decode("utf-8-sig")
        cfg = json.loads(text)
    except PermissionError as exc:
        raise FileAccessError(f"cannot read {cfg_path}: {exc.strerror}; check its permissions") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise FormatError(f"{cfg_path}: expected UTF-8 JSON, got a parse error ({exc}); {_REEXPORT}") from exc
    return validate_config(cfg, str(cfg_path))


def _verify_file(root: Path, rel: str, meta: Mapping[str, Any]) -> None:
    f = bundle_path(root, rel, f"{root / CONFIG}: files")
    if not f.exists():
        raise MissingFileError(f"bundle {str(root)!r}: file {rel!r} listed in config.json is missing; copy the "
                               "whole folder or re-export it")
    if not f.is_file():
        raise NotAFileError(f"bundle {str(root)!r}: {rel!r} listed in config.json is not a regular file; "
                            f"{_REEXPORT}")
    size = f.stat().st_size
    if meta.get("bytes") is not None and size != meta["bytes"]:
        raise CorruptFileError(f"bundle {str(root)!r}: {rel} has {size:,} bytes, config.json expects "
                               f"{meta['bytes']:,} — the file is truncated or was replaced; {_REEXPORT}")
    try:
        digest = sha256_file(f)
    except PermissionError as exc:
        raise FileAccessError(f"bundle {str(root)!r}: cannot read {rel}: {exc.strerror}; check permissions") from exc
    if digest != meta["sha256"]:
        raise CorruptFileError(f"bundle {str(root)!r}: {rel} has sha256 {digest[:16]}…, config.json expects "
                               f"{meta['sha256'][:16]}… — the file is corrupt or was replaced; {_REEXPORT}")


def read_bundle_config(path: str | os.PathLike[str], *, verify: bool = True) -> dict[str, Any]:
    """Read and validate ``config.json`` of the bundle at ``path``; with ``verify`` (the default) check every
    listed file (inside the bundle, size, sha256) and that ``fingerprint`` is the one its weights give.

    ``verify=False`` reads config.json alone (for its provenance); nothing else is opened.
    """
    root = Path(path)
    cfg = _read_config(root)
    if verify:
        for rel, meta in cfg["files"].items():
            _verify_file(root, rel, meta)
        derived = config_fingerprint(cfg)
        if cfg["fingerprint"] != derived:
            raise CorruptFileError(f"bundle {str(root)!r}: config.json says fingerprint {cfg['fingerprint'][:16]}…, "
                                   f"but its fp32 graphs give {derived[:16]}… — the weights were changed without "
                                   f"re-exporting (indexes are tied to the weights); {_REEXPORT}")
    return cfg


def view_model_files(root: Path, cfg: Mapping[str, Any], view: str) -> dict[str, Any]:
    """``views.<view>.files`` with every path turned into a checked :class:`Path` inside ``root``
    (``fp32``; optional ``fp16``, ``int8``, ...; ``tensorrt`` {machine key: path})."""
    where = f"{root / CONFIG}: views.{view}.files"
    out: dict[str, Any] = {}
    for key, value in cfg["views"][view]["files"].items():
        if isinstance(value, Mapping):
            out[key] = {k: bundle_path(root, v, where) for k, v in value.items()}
        elif value:
            out[key] = bundle_path(root, value, where)
    return out


def _static_dims(shape: Any) -> list[int | None]:
    return [d if isinstance(d, int) and not isinstance(d, bool) and d > 0 else None for d in (shape or [])]


def _check_encoder_io(enc: Any, view: str, path: Path, spec: Any, embed_dim: int) -> None:
    """Compare an ONNX Runtime session's declared input/output shapes with config.json (when they are static),
    so that a disagreeing bundle fails when it is loaded, not at the first ``localise``."""
    session = getattr(enc, "session", None)
    if session is None:  # other backends (TensorRT) check their shapes themselves
        return
    h, w = spec.input_size
    got_in = _static_dims(session.get_inputs()[0].shape)
    want_in = [None, 3, h, w]
    if len(got_in) != 4 or any(g is not None and g != e for g, e in zip(got_in, want_in, strict=True)):
        raise FormatError(f"{path}: the {view} graph takes input {session.get_inputs()[0].shape}, but config.json's "
                          f"data contract says (batch, 3, {h}, {w}); the bundle is inconsistent — {_REEXPORT}")
    outs = {o.name: _static_dims(o.shape) for o in session.get_outputs()}
    emb = outs.get("embedding")
    if emb is not None and (len(emb) != 2 or emb[1] not in (None, embed_dim)):
        raise FormatError(f"{path}: the {view} graph's 'embedding' output has shape {emb}, but config.json says "
                          f"embed_dim {embed_dim}; the bundle is inconsistent — {_REEXPORT}")


def open_view_encoder(root: Path, view: str, files: list[Path], spec: Any, embed_dim: int, *, backend: str,
                      device: str, threads: int | None) -> Any:
    """The encoder of one view (:func:`s4g_engine.encoders.make_encoder`), its failures turned into errors
    that name the bundle file, and its input/output shapes checked against config.json."""
    from s4g_engine.encoders import make_encoder
    from s4g_engine.errors import DependencyError, InputError, S4GError

    names = ", ".join(f.name for f in files)
    try:
        enc = make_encoder(files, backend=backend, device=device, threads=threads)
    except S4GError:
        raise
    except FileNotFoundError as exc:
        raise MissingFileError(f"bundle {str(root)!r}: {view} model ({names}): {exc}; {_REEXPORT}") from exc
    except Exception as exc:
        text = " ".join(str(exc).split())[:300]
        if type(exc).__module__.startswith("onnxruntime") or isinstance(exc, ValueError):
            raise CorruptFileError(f"bundle {str(root)!r}: cannot load the {view} model ({names}): "
                                   f"{type(exc).__name__}: {text}; expected an ONNX graph written by s4g-export — "
                                   f"{_REEXPORT}") from exc
        if isinstance(exc, RuntimeError) and isinstance(exc.__cause__, ImportError):
            raise DependencyError(text) from exc
        if isinstance(exc, RuntimeError):  # e.g. device='cuda' without ONNX Runtime's CUDA provider
            raise InputError(f"cannot run the {view} model ({names}) as asked: {text}") from exc
        raise  # anything else is a bug, not a bad file: keep its traceback
    _check_encoder_io(enc, view, getattr(enc, "path", files[-1]), spec, embed_dim)
    return enc
