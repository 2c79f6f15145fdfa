"""Typed façade over the compiled core ``s4g_engine._core`` (CPU) and ``s4g_engine._core_cuda`` (GPU).

Every public function validates its arguments at this boundary (shapes, dtypes, NaN/Inf, id ranges) and
raises ``ValueError`` saying what was expected, what came and how to fix it; non-contiguous inputs are
accepted (copied only when the kernel needs it). Inputs that expose ``__cuda_array_interface__`` (CuPy
arrays, torch CUDA tensors) run on the GPU and return device arrays of the same library; everything else
is converted with ``np.asarray`` and runs on the CPU (OpenMP, GIL released).

Conventions
-----------
* Polar transform: SAFA convention of docs/METHOD.md §9 — row 0 is the far field, row H−1 the camera; column 0
  faces south, W/4 west, W/2 north, 3W/4 east. Bilinear sampling, zero outside the tile.
* Scores are exact inner products in float32, every one reported in the same canonical order (fused
  multiply-add per element, depth chunks of 256), on the CPU and on the GPU alike. Ranking order: higher
  score first; ties go to the lower reference index. ``k`` larger than the number of candidates pads
  with index −1 and score −inf (like faiss).
* How it is fast and still exact: a fast product (bfloat16 ``vdpbf16ps`` on AVX512-BF16 CPUs, packed
  float32 elsewhere) filters the candidates, a proven error bound decides which ones can still matter,
  and those are rescored canonically (csrc/cpu/search.cpp). The SIMD level is chosen at run time by
  CPUID; the environment variable ``S4G_SIMD=avx512bf16|avx512|avx2|generic`` forces one.
* Memory: top-k and ranks stream over the references in blocks — O(Q·k + one block), never a Q×N matrix.
* Indexing is 64-bit throughout (10M × 1024 references do not overflow).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from s4g_engine import _core, _cublas

log = logging.getLogger(__name__)

__all__ = [
    "polar_transform",
    "inverse_polar",
    "topk_similarity",
    "positive_ranks",
    "build_info",
    "set_num_threads",
    "get_num_threads",
]

_MAX_TILE = 46340  # A*A must fit the int32 pixel index of the cached sampling map


# ---------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------
def _is_cuda(x: Any) -> bool:
    return hasattr(x, "__cuda_array_interface__")


def _cuda_module() -> Any:
    """The CUDA core, or a clear error when it is not built or no GPU is present."""
    try:
        from s4g_engine import _core_cuda  # type: ignore[attr-defined]
    except ImportError as e:  # pragma: no cover - depends on the build
        raise RuntimeError(
            "a CUDA array was passed but s4g_engine._core_cuda is not available "
            f"({e}); rebuild with nvcc on PATH (CMake option S4G_CUDA=ON) or pass NumPy arrays"
        ) from e
    if _core_cuda.device_count() < 1:
        raise RuntimeError("a CUDA array was passed but no CUDA device is visible to s4g_engine._core_cuda")
    _cublas.ensure(_core_cuda)  # the tensor-core filter of the GPU search, when cuBLAS is found
    return _core_cuda


def _int(name: str, v: Any, *, lo: int = 1) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise ValueError(f"{name} must be an int >= {lo}, got {v!r} ({type(v).__name__})")
    if int(v) < lo:
        raise ValueError(f"{name} must be >= {lo}, got {v}")
    return int(v)


def _check_finite(name: str, a: np.ndarray) -> None:
    if a.size == 0 or a.dtype.kind != "f":
        return
    if a.dtype in (np.float32, np.float16) and a.ndim >= 1:
        rows = a if a.ndim == 2 and (a.shape[1] <= 1 or a.strides[1] == a.itemsize) else None
        bad = _core.count_nonfinite(rows if rows is not None else np.ascontiguousarray(a))
    else:
        bad = int(a.size - np.count_nonzero(np.isfinite(a)))
    if bad:
        raise ValueError(f"{name} contains {bad} NaN/Inf value(s); clean or filter the input first")


def _float_matrix(name: str, x: Any, *, allow_half: bool) -> np.ndarray:
    """2-D float32 (or float16 when allowed) array with contiguous rows."""
    a = np.asarray(x)
    if a.ndim != 2:
        hint = " (one vector? use x.reshape(1, -1))" if a.ndim == 1 else ""
        raise ValueError(f"{name}: expected a 2-D array (rows, dim), got shape {a.shape}{hint}")
    if a.dtype.kind not in "f":
        raise ValueError(f"{name}: expected a float32{'/float16' if allow_half else ''} array, got dtype {a.dtype}")
    if a.dtype == np.float16 and not allow_half:
        a = a.astype(np.float32)
    elif a.dtype not in (np.float32, np.float16):
        log.debug("%s: converting %s to float32", name, a.dtype)
        a = a.astype(np.float32)
    if a.shape[0] and (a.shape[1] > 1 and a.strides[1] != a.itemsize or a.strides[0] < 0 or a.strides[0] % a.itemsize):
        a = np.ascontiguousarray(a)
    return a


def _ids(name: str, x: Any, q: int, n: int, *, pad_ok: bool) -> np.ndarray:
    """(Q, m) int64 ids in [0, N) (−1 = padding when pad_ok)."""
    a = np.asarray(x)
    if a.size == 0 and a.ndim <= 1 and q == 0:
        return np.zeros((0, 0), np.int64)
    if a.ndim == 1:
        a = a.reshape(-1, 1)
    if a.ndim != 2 or a.shape[0] != q:
        raise ValueError(f"{name}: expected shape (Q, m) with Q = {q} (−1 padded), got shape {np.shape(x)}")
    if a.size and a.dtype.kind not in "iu":
        raise ValueError(f"{name}: expected integer ids, got dtype {a.dtype}")
    a = np.ascontiguousarray(a, dtype=np.int64)
    if a.size:
        lo, hi = int(a.min()), int(a.max())
        if lo < (-1 if pad_ok else 0) or hi >= n:
            rng = f"[-1, {n})" if pad_ok else f"[0, {n})"
            raise ValueError(f"{name}: ids must lie in {rng} (N = {n} references), got min {lo}, max {hi}")
    return a


def _check_pair(queries: np.ndarray, refs: np.ndarray) -> None:
    if queries.shape[1] != refs.shape[1]:
        raise ValueError(
            f"queries and refs must have the same dimension: queries {queries.shape}, refs {refs.shape}"
        )
    if queries.shape[1] == 0:
        raise ValueError("queries/refs: the embedding dimension must be >= 1")


# ---------------------------------------------------------------------------------------------------
# polar transform
# ---------------------------------------------------------------------------------------------------
def _per_channel(name: str, v: Any, c: int, default: float) -> np.ndarray:
    if v is None:
        return np.full(c, default, np.float64)
    a = np.asarray(v, dtype=np.float64).reshape(-1)
    if a.size == 1:
        a = np.full(c, a[0])
    if a.size != c:
        raise ValueError(f"{name}: expected {c} per-channel values (or one), got {a.size}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: values must be finite, got {a.tolist()}")
    return a



def _norm_coeffs(mean: Any, std: Any, c: int, uint8: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``(scale, bias)`` float32 so that out = x·scale + bias = (x/unit − mean)/std (unit 255 for
    uint8 input, 1 for float); identity when neither mean nor std is given. Shared by the CPU and CUDA paths."""
    m = _per_channel("mean", mean, c, 0.0)
    s = _per_channel("std", std, c, 1.0)
    if np.any(s <= 0):
        raise ValueError(f"std must be > 0 per channel, got {s.tolist()}")
    if mean is None and std is None:
        return np.ones(c, np.float32), np.zeros(c, np.float32)
    unit = 255.0 if uint8 else 1.0
    return (1.0 / (unit * s)).astype(np.float32), (-m / s).astype(np.float32)

def polar_transform(
    aerial: Any,
    height: int,
    width: int,
    *,
    mean: Sequence[float] | np.ndarray | None = None,
    std: Sequence[float] | np.ndarray | None = None,
) -> Any:
    """Polar transform of square aerial tiles (docs/METHOD.md §9, SAFA convention).

    Args:
        aerial: uint8 or float32 ``(A, A, C)`` or ``(B, A, A, C)`` (north up). Other float dtypes are
            converted to float32. A CUDA array runs on the GPU.
        height, width: polar output size ``H × W``.
        mean, std: optional per-channel normalisation fused into the sampling: uint8 input gives
            ``(x/255 − mean)/std``, float input ``(x − mean)/std``. Without them the sampled values are
            returned as they are (0..255 for uint8). Samples outside the tile are 0 before normalising.

    Returns:
        float32 ``(H, W, C)`` or ``(B, H, W, C)``: row 0 = far field, row H−1 = camera; column 0 faces
        south, W/4 west, W/2 north, 3W/4 east.
    """
    height = _int("height", height)
    width = _int("width", width)
    if _is_cuda(aerial):
        return _cuda_polar_transform(aerial, height, width, mean, std)
    a = np.asarray(aerial)
    if a.ndim not in (3, 4):
        raise ValueError(f"aerial: expected (A, A, C) or (B, A, A, C), got shape {a.shape}"
                         + (" (grayscale? add a channel axis: x[..., None])" if a.ndim == 2 else ""))
    if a.dtype != np.uint8 and a.dtype.kind != "f":
        raise ValueError(f"aerial: expected uint8 or float32, got dtype {a.dtype}")
    single = a.ndim == 3
    if single:
        a = a[None]
    b, h, w, c = a.shape
    if h != w:
        raise ValueError(f"aerial: expected square tiles (A, A, C), got {h}×{w} (crop or resize to a square)")
    if h < 1 or c < 1:
        raise ValueError(f"aerial: expected a non-empty tile, got shape {a.shape[1:]}")
    if h > _MAX_TILE:
        raise ValueError(f"aerial: tiles larger than {_MAX_TILE}² pixels are not supported, got {h}")
    if a.dtype.kind == "f" and a.dtype != np.float32:
        a = a.astype(np.float32)
    a = np.ascontiguousarray(a)
    if a.dtype == np.float32:
        _check_finite("aerial", a.reshape(-1, c))
    scale, bias = _norm_coeffs(mean, std, c, a.dtype == np.uint8)
    from s4g_engine.limits import check_elements  # LimitError before allocating a huge output

    check_elements(b * height * width * c, "polar_transform output")
    out = _core.polar_transform(a, height, width, scale, bias)
    return out[0] if single else out


def inverse_polar(polar: Any, size: int | tuple[int, int], *, fill: float = float("nan")) -> Any:
    """Inverse polar transform (docs/METHOD.md §9): a polar map back onto the ``size × size`` aerial tile.

    Args:
        polar: ``(Hp, Wp)`` or ``(Hp, Wp, C)`` map in the SAFA convention (e.g. an activation map of the
            polar aerial input or of a north-aligned panorama); converted to float32.
        size: side ``A`` of the aerial tile (an int, or ``(A, A)``).
        fill: value outside the inscribed circle ``r < (A/2)(Hp−1)/Hp`` where the map holds no value.

    Returns:
        float32 ``(A, A)`` or ``(A, A, C)``; bilinear in rows, wrapping around in columns.
    """
    if isinstance(size, (tuple, list)):
        if len(size) != 2 or size[0] != size[1]:
            raise ValueError(f"size: expected an int or a square (A, A), got {size!r}")
        size = size[0]
    size = _int("size", size)
    fill = float(fill)
    if _is_cuda(polar):
        return _cuda_inverse_polar(polar, size, fill)
    p = np.asarray(polar)
    if p.ndim not in (2, 3):
        raise ValueError(f"polar: expected (Hp, Wp) or (Hp, Wp, C), got shape {p.shape}")
    if p.dtype.kind not in "fiu" or p.dtype == np.bool_:
        raise ValueError(f"polar: expected a real-valued array, got dtype {p.dtype}")
    if p.shape[0] < 1 or p.shape[1] < 1 or (p.ndim == 3 and p.shape[2] < 1):
        raise ValueError(f"polar: expected a non-empty map, got shape {p.shape}")
    flat = p.ndim == 2
    p = np.ascontiguousarray(p[..., None] if flat else p, dtype=np.float32)
    _check_finite("polar", p.reshape(-1, p.shape[-1]))
    from s4g_engine.limits import check_elements  # LimitError before allocating a huge output

    check_elements(size * size * p.shape[-1], "inverse_polar output")
    out = _core.inverse_polar(p, size, fill)
    return out[..., 0] if flat else out


# ---------------------------------------------------------------------------------------------------
# exact search
# ---------------------------------------------------------------------------------------------------
def topk_similarity(queries: Any, refs: Any, k: int, *, exclude: Any = None) -> tuple[Any, Any]:
    """Exact top-k references by inner product, streaming (never a Q×N matrix).

    Args:
        queries: float32 ``(Q, d)`` (float16/float64 are converted).
        refs: float32 or float16 ``(N, d)``; rows must be contiguous to avoid a copy (row slices are fine).
        k: number of results per query (``k > N`` pads with index −1 and score −inf, up to the limit
            ``max_k``; beyond it, or when ``Q·k`` exceeds ``max_topk_results``: ``LimitError``, see
            :mod:`s4g_engine.limits`).
        exclude: optional int ``(Q, m)`` reference ids to skip per query, −1 padded (e.g. a query's own
            positive and semi-positives when mining hard negatives); a 1-D ``(Q,)`` means one id each.

    Returns:
        ``(scores, indices)``: float32 ``(Q, k)`` best first, int64 ``(Q, k)``; ties → lower index.
    """
    k = _int("k", k)
    if _is_cuda(queries) or _is_cuda(refs):
        return _cuda_topk_similarity(queries, refs, k, exclude)
    q = _float_matrix("queries", queries, allow_half=False)
    r = _float_matrix("refs", refs, allow_half=True)
    _check_pair(q, r)
    from s4g_engine.limits import check_k  # LimitError for a k that would allocate Q·k beyond the limits

    check_k(k, r.shape[0], q.shape[0])
    _check_finite("queries", q)
    _check_finite("refs", r)
    ex = None if exclude is None else _ids("exclude", exclude, q.shape[0], r.shape[0], pad_ok=True)
    if ex is not None and ex.shape[1] == 0:
        ex = None
    return _core.topk_similarity(q, r, k, ex)


def positive_ranks(queries: Any, refs: Any, positive: Any, *, ignore: Any = None) -> Any:
    """Rank of each query's true reference: ``#{r ∉ ignore[i] : s(i, r) > s(i, positive[i])}`` (docs/METHOD.md §7).

    Strictly greater (ties favour the query); streaming, O(Q + N·d) memory. The positive's score is
    computed in exactly the order of all other scores, so it never counts against itself.

    Args:
        queries: float32 ``(Q, d)``; refs: float32 or float16 ``(N, d)``.
        positive: int ``(Q,)`` in ``[0, N)``.
        ignore: optional int ``(Q, m)`` ids not counted (VIGOR semi-positives), −1 padded.

    Returns:
        int64 ``(Q,)``; ``R@k = mean(rank < k)``.
    """
    if _is_cuda(queries) or _is_cuda(refs):
        return _cuda_positive_ranks(queries, refs, positive, ignore)
    q = _float_matrix("queries", queries, allow_half=False)
    r = _float_matrix("refs", refs, allow_half=True)
    _check_pair(q, r)
    pos = np.asarray(positive)
    if pos.ndim != 1 or pos.shape[0] != q.shape[0]:
        raise ValueError(f"positive: expected shape (Q,) with Q = {q.shape[0]}, got shape {pos.shape}")
    if pos.size and pos.dtype.kind not in "iu":
        raise ValueError(f"positive: expected integer ids, got dtype {pos.dtype}")
    pos = np.ascontiguousarray(pos, dtype=np.int64)
    if pos.size and (pos.min() < 0 or pos.max() >= r.shape[0]):
        raise ValueError(f"positive: ids must lie in [0, {r.shape[0]}), got min {pos.min()}, max {pos.max()}")
    _check_finite("queries", q)
    _check_finite("refs", r)
    ig = None if ignore is None else _ids("ignore", ignore, q.shape[0], r.shape[0], pad_ok=True)
    if ig is not None and ig.shape[1] == 0:
        ig = None
    return _core.positive_ranks(q, r, pos, ig)


# ---------------------------------------------------------------------------------------------------
# CUDA dispatch: device arrays (``__cuda_array_interface__``) → s4g_engine._core_cuda, results on device
# ---------------------------------------------------------------------------------------------------
def _cai(name: str, x: Any) -> tuple[int, tuple[int, ...], str, tuple[int, ...] | None]:
    try:
        d = x.__cuda_array_interface__
    except (AttributeError, RuntimeError) as e:  # torch: tensors that require grad refuse the interface
        raise ValueError(f"{name}: cannot read the CUDA array interface ({e}); pass x.detach()") from e
    strides = d.get("strides")
    return int(d["data"][0] or 0), tuple(int(v) for v in d["shape"]), str(d["typestr"]), (
        None if strides is None else tuple(int(v) for v in strides))


def _cuda_matrix(name: str, x: Any, *, allow_half: bool) -> tuple[int, int, int, int, bool]:
    """(pointer, rows, cols, row stride in elements, is_float16) of a 2-D device matrix."""
    if not _is_cuda(x):
        raise ValueError(f"{name}: expected a CUDA array like the other inputs, got {type(x).__name__} "
                         "(move all arrays to the same device)")
    ptr, shape, ts, strides = _cai(name, x)
    ok = ("<f4", "<f2") if allow_half else ("<f4",)
    if len(shape) != 2:
        raise ValueError(f"{name}: expected a 2-D array (rows, dim), got shape {shape}")
    if ts not in ok:
        raise ValueError(f"{name}: expected {' or '.join(ok)} (float32{'/float16' if allow_half else ''}), "
                         f"got typestr {ts}; convert on the device first")
    item = int(ts[2:])
    ld = shape[1]
    if strides is not None:
        if shape[1] > 1 and strides[1] != item or strides[0] < 0 or strides[0] % item:
            raise ValueError(f"{name}: rows must be contiguous on the device (call .contiguous() / "
                             "cupy.ascontiguousarray)")
        ld = strides[0] // item if shape[0] > 1 else shape[1]
    return ptr, shape[0], shape[1], ld, ts == "<f2"


def _cuda_host_ids(cu: Any, name: str, x: Any, q: int, n: int, *, pad_ok: bool) -> np.ndarray:
    if _is_cuda(x):
        ptr, shape, ts, strides = _cai(name, x)
        if ts[1] not in "iu" or strides is not None and strides != tuple(
                int(np.prod(shape[i + 1:])) * int(ts[2:]) for i in range(len(shape))):
            raise ValueError(f"{name}: expected a C-contiguous integer device array, got typestr {ts}")
        nbytes = int(np.prod(shape)) * int(ts[2:])
        x = np.frombuffer(cu.to_host(ptr, nbytes), dtype=np.dtype(ts)).reshape(shape)
    return _ids(name, x, q, n, pad_ok=pad_ok)


def _wrap(like: Any, buf: Any) -> Any:
    """Give a result back as an array of the caller's library (torch/CuPy), on the same device.

    The library is already imported by the caller (its array came in), so ``sys.modules`` is enough —
    s4g_engine never imports torch itself."""
    root = type(like).__module__.split(".")[0]
    mod = sys.modules.get(root)
    if root == "torch" and mod is not None:
        return mod.as_tensor(buf, device=like.device)
    if root == "cupy" and mod is not None:
        return mod.asarray(buf)
    return buf  # any other producer: our DeviceArray (exposes __cuda_array_interface__)


def _cuda_search_inputs(cu: Any, queries: Any, refs: Any) -> tuple:
    qp, nq, dq, ldq, _ = _cuda_matrix("queries", queries, allow_half=False)
    rp, n, dr, ldr, half = _cuda_matrix("refs", refs, allow_half=True)
    if dq != dr or dq == 0:
        raise ValueError(f"queries and refs must have the same dimension >= 1: queries ({nq}, {dq}), refs ({n}, {dr})")
    for name, p, rows, ld, h in (("queries", qp, nq, ldq, False), ("refs", rp, n, ldr, half)):
        if rows and cu.count_nonfinite(p, rows, dq, ld, h):
            raise ValueError(f"{name} contains NaN/Inf value(s); clean or filter the input first")
    return qp, nq, ldq, rp, half, n, ldr, dq


def _cuda_topk_similarity(queries: Any, refs: Any, k: int, exclude: Any) -> tuple[Any, Any]:
    cu = _cuda_module()
    args = _cuda_search_inputs(cu, queries, refs)
    nq, n = args[1], args[5]
    ex = None if exclude is None else _cuda_host_ids(cu, "exclude", exclude, nq, n, pad_ok=True)
    s, i = cu.topk_similarity(*args, k, ex if ex is not None and ex.shape[1] else None)
    return _wrap(queries, s), _wrap(queries, i)


def _cuda_positive_ranks(queries: Any, refs: Any, positive: Any, ignore: Any) -> Any:
    cu = _cuda_module()
    args = _cuda_search_inputs(cu, queries, refs)
    nq, n = args[1], args[5]
    pos = _cuda_host_ids(cu, "positive", positive, nq, n, pad_ok=False)
    if pos.shape[1] != 1:
        raise ValueError(f"positive: expected shape (Q,), got {pos.shape}")
    ig = None if ignore is None else _cuda_host_ids(cu, "ignore", ignore, nq, n, pad_ok=True)
    out = cu.positive_ranks(*args, np.ascontiguousarray(pos[:, 0]), ig if ig is not None and ig.shape[1] else None)
    return _wrap(queries, out)


def _cuda_polar_transform(aerial: Any, height: int, width: int, mean: Any, std: Any) -> Any:
    cu = _cuda_module()
    ptr, shape, ts, strides = _cai("aerial", aerial)
    if len(shape) not in (3, 4):
        raise ValueError(f"aerial: expected (A, A, C) or (B, A, A, C), got shape {shape}")
    if ts not in ("|u1", "<u1", "<f4"):
        raise ValueError(f"aerial: expected uint8 or float32 on the device, got typestr {ts}")
    single = len(shape) == 3
    b, a, w, c = (1, *shape) if single else shape
    item = int(ts[2:])
    if strides is not None and strides != (a * a * c * item, a * c * item, c * item, item)[4 - len(shape):]:
        raise ValueError("aerial: expected a C-contiguous device array (call .contiguous() / cupy.ascontiguousarray)")
    if a != w or a < 1 or c < 1 or a > _MAX_TILE:
        raise ValueError(f"aerial: expected square non-empty tiles (A, A, C) with A <= {_MAX_TILE}, got {shape}")
    u8 = ts != "<f4"
    if not u8 and b and cu.count_nonfinite(ptr, b * a * a, c, c, False):
        raise ValueError("aerial contains NaN/Inf value(s)")
    scale, bias = _norm_coeffs(mean, std, c, u8)
    out = cu.polar_transform(ptr, b, a, c, u8, height, width, scale, bias)
    out = _wrap(aerial, out)
    return out[0] if single else out


def _cuda_inverse_polar(polar: Any, size: int, fill: float) -> Any:
    cu = _cuda_module()
    ptr, shape, ts, strides = _cai("polar", polar)
    if len(shape) not in (2, 3) or ts != "<f4" or min(shape) < 1:
        raise ValueError(f"polar: expected a non-empty float32 (Hp, Wp[, C]) device array, got {shape} {ts}")
    h, w = shape[:2]
    c = shape[2] if len(shape) == 3 else 1
    if strides is not None and strides != (w * c * 4, c * 4, 4)[: len(shape)]:
        raise ValueError("polar: expected a C-contiguous device array")
    if cu.count_nonfinite(ptr, h * w, c, c, False):
        raise ValueError("polar contains NaN/Inf value(s)")
    out = _wrap(polar, cu.inverse_polar(ptr, h, w, c, size, fill))
    return out[..., 0] if len(shape) == 2 else out


# ---------------------------------------------------------------------------------------------------
# build facts and threads
# ---------------------------------------------------------------------------------------------------
def build_info() -> dict[str, Any]:
    """Build facts: ``compiler``, ``openmp`` {version, threads, procs}, ``simd`` {active, compiled,
    available, filter}, ``blas`` (None: own kernels), ``cuda`` {compiled, archs, module, devices, cublas (the
    library the GPU search filters with, '' = canonical kernels only)}."""
    info = dict(_core.build_info())
    cuda = dict(info.get("cuda", {}))
    try:
        from s4g_engine import _core_cuda  # type: ignore[attr-defined]

        cuda["module"] = True
        cuda["devices"] = _core_cuda.devices()
        cuda["cublas"] = _cublas.ensure(_core_cuda) if cuda["devices"] else None
    except ImportError as e:
        cuda["module"] = False
        cuda["devices"] = []
        cuda["error"] = str(e)
    info["cuda"] = cuda
    return info


def set_num_threads(n: int | None) -> None:
    """Threads used by the CPU kernels (OpenMP); ``None``/0 restores the default."""
    _core.set_num_threads(0 if n is None else _int("n", n, lo=0))


def get_num_threads() -> int:
    """Threads the CPU kernels use."""
    return int(_core.get_num_threads())

