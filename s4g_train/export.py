"""``s4g-export``: a checkpoint → a self-describing model bundle folder for the torch-free engine.

``s4g-export CHECKPOINT --out models/NAME [--fp16] [--weights fp16] [--with-features]
[--tensorrt [--int8 --calib-split ...]] [--cpu-int8 --calib-dataset D --calib-root R] [--opset 17]`` writes

* ``ground.onnx``, ``aerial.onnx`` — one graph per view: input ``image`` float32 ``(B, 3, H, W)`` with a dynamic
  batch axis and the view's fixed size; output ``embedding`` float32 ``(B, D)``, L2-normalised inside the graph;
  with ``--with-features`` also ``features`` ``(B, C, h, w)`` (the last feature map, for s4g-viz). Each is a
  single self-contained file (no ``.onnx.data``).
* ``*.fp16.onnx`` (``--fp16``) — computes in float16 (for GPUs), float32 in and out.
* ``*.int8.onnx`` (``--cpu-int8``) — static int8 for CPUs, calibrated on the training split, kept only at
  cosine ≥ 0.999 (:mod:`s4g_train.cpu_int8`); the engine uses it only where it measures fastest.
* ``config.json`` — the data contract per view (:class:`s4g_engine.preprocess.DataContract`: input size,
  mean/std, interpolation, JPEG draft decoding, RGB, NCHW, polar), embed dim, backbone, sha256 per file, model
  fingerprint, parity figures and provenance (checkpoint, dataset, command, metrics). The contract is the
  training run's (:func:`s4g_train.data.checkpoint_contract`), so the engine preprocesses as training did.
* ``tensorrt/<gpu>-sm<cc>-trt<version>/<view>.engine`` (``<view>.int8.engine`` with ``--int8``; ``--tensorrt``) —
  see :mod:`s4g_train.tensorrt_build`.

Every graph is checked against the eager model on random inputs (batch 1 and 3) and the export fails if the
cosine drops below 0.9999 (fp32) / 0.999 (fp16). The folder is assembled in a temporary directory beside
``--out`` and renamed into place, so a failed export never leaves a half-written bundle.
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import logging
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from s4g_engine.bundle import BUNDLE_FORMAT, BUNDLE_VERSION, model_fingerprint, sha256_file
from s4g_engine.console import cli_main
from s4g_engine.fileio import atomic_write_text, publish_folder
from s4g_engine.logs import setup_logging
from s4g_engine.preprocess import DataContract
from s4g_train.data import checkpoint_contract
from s4g_train.model import S4GModel
from s4g_train.parsers import MIN_OPSET, export_parser  # noqa: F401  (MIN_OPSET: re-exported)

log = logging.getLogger(__name__)

PARITY_FP32 = 0.9999
PARITY_FP16 = 0.999


class ExportError(RuntimeError):
    """The exported graph does not reproduce the eager model (or could not be exported)."""


class EmbedGraph(nn.Module):
    """What goes into the ONNX graph: backbone → pooled features → L2-normalise (+ optional feature map).

    ``half``: run the backbone in float16 (input cast inside the graph; outputs are float32).
    """

    def __init__(self, model: S4GModel, *, half: bool = False, with_features: bool = False) -> None:
        super().__init__()
        self.backbone = model.model
        self.half = half
        self.with_features = with_features

    def forward(self, image: torch.Tensor) -> Any:
        x = image.half() if self.half else image
        if self.with_features:
            feats = self.backbone.forward_features(x)
            pooled = self.backbone.forward_head(feats, pre_logits=True)
            emb = F.normalize(pooled.float(), dim=-1)
            return emb, feats.float()
        return F.normalize(self.backbone(x).float(), dim=-1)


def bundle_fingerprint(embed_dim: int, shas: Sequence[str]) -> str:
    """The model identity an index is tied to (one rule, shared with the engine that re-derives it on load)."""
    return model_fingerprint(embed_dim, list(shas))


def _export_onnx(module: nn.Module, dummy: torch.Tensor, path: Path, opset: int, outputs: list[str]) -> None:
    """One single-file ONNX graph with a dynamic batch axis.

    We use the TorchScript-based exporter (``dynamo=False``): it writes the weights into the one file and is
    proven on timm ConvNeXt; the dynamo exporter is the fallback (told to embed its weights).
    """
    axes = {"image": {0: "batch"}, **{o: {0: "batch"} for o in outputs}}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (dummy,), str(path), input_names=["image"], output_names=outputs,
                              dynamic_axes=axes, opset_version=opset, do_constant_folding=True, dynamo=False)
    except Exception as exc:  # noqa: BLE001 - fall back to the other exporter, report both if it fails too
        log.warning("TorchScript exporter failed (%s); trying the dynamo exporter", exc)
        batch = torch.export.Dim("batch", min=1, max=4096)
        prog = torch.onnx.export(module, (dummy,), None, input_names=["image"], output_names=outputs,
                                 dynamic_shapes=({0: batch},), opset_version=opset, dynamo=True)
        prog.save(str(path), external_data=False)


def _fp16_weights(path: Path) -> None:
    """Store the float32 initializers of ``path`` as float16 + a ``Cast`` back to float32 (halves the file).

    Compute stays float32 (ONNX Runtime folds the casts at load time), so speed is unchanged; only weight
    rounding changes the output. Hand-written because onnxconverter-common is not a dependency.
    """
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.load(str(path))
    g = m.graph
    new_inits, casts = [], []
    for init in g.initializer:
        if init.data_type == onnx.TensorProto.FLOAT and int(np.prod(init.dims)) >= 1024:
            arr = numpy_helper.to_array(init).astype(np.float16)
            new_inits.append(numpy_helper.from_array(arr, init.name + "__fp16"))
            casts.append(helper.make_node("Cast", [init.name + "__fp16"], [init.name], to=onnx.TensorProto.FLOAT,
                                          name=init.name + "__cast"))
        else:
            new_inits.append(init)
    del g.initializer[:]
    g.initializer.extend(new_inits)
    nodes = list(g.node)
    del g.node[:]
    g.node.extend(casts + nodes)
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


def _ort_session(path: Path) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def parity(model: S4GModel, path: Path, size: tuple[int, int], *, threshold: float, with_features: bool,
           seed: int = 0) -> dict[str, float]:
    """Compare the ONNX graph with the eager fp32 model on random inputs (batch 1 and 3).

    Returns ``{"min_cosine", "max_abs_features"}``; raises :class:`ExportError` below ``threshold``.
    """
    sess = _ort_session(path)
    g = torch.Generator().manual_seed(seed)
    worst, feat_err = 1.0, 0.0
    for b in (1, 3):
        x = torch.randn(b, 3, size[0], size[1], generator=g)
        with torch.no_grad():
            ref = model.embed(x).double().numpy()
            ref_f = model.forward_features(x).double().numpy() if with_features else None
        outs = sess.run(None, {"image": x.numpy()})
        emb = outs[0].astype(np.float64)
        if emb.shape != ref.shape:
            raise ExportError(f"{path.name}: ONNX output {emb.shape} ≠ eager {ref.shape} at batch {b}")
        cos = (emb * ref).sum(1) / (np.linalg.norm(emb, axis=1) * np.linalg.norm(ref, axis=1))
        worst = min(worst, float(cos.min()))
        if ref_f is not None:
            scale = float(np.abs(ref_f).max()) or 1.0
            feat_err = max(feat_err, float(np.abs(outs[1] - ref_f).max()) / scale)
    if not worst >= threshold:
        raise ExportError(f"{path.name}: ONNX embedding cosine vs eager is {worst:.6f} < {threshold} — the export "
                          "is not faithful (try another --opset, or fp32 weights)")
    return {"min_cosine": worst, "max_rel_features": feat_err}


def _export_view(model: S4GModel, half_model: S4GModel | None, view: str, spec: Any, tmp: Path, *, opset: int,
                 outputs: list[str], weights: str, with_features: bool,
                 int8_batches: list[np.ndarray] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The graphs of one view in ``tmp`` (fp32, optional int8 and fp16), each checked against the eager model;
    returns (the view's config.json entry, its parity figures)."""
    vcfg = {**spec.to_config(), "input_name": "image"}
    size = spec.input_size
    dummy = torch.randn(2, 3, *size)
    f32 = tmp / f"{view}.onnx"
    log.info("exporting %s view %s → %s", view, size, f32.name)
    _export_onnx(EmbedGraph(model, with_features=with_features).eval(), dummy, f32, opset, outputs)
    int8 = None
    if int8_batches is not None:  # quantised from the float32 weights
        from s4g_train.cpu_int8 import quantize_view

        int8 = quantize_view(model, f32, tmp / f"{view}.int8.onnx", int8_batches)
    if weights == "fp16":
        _fp16_weights(f32)
    par: dict[str, Any] = {"fp32": parity(model, f32, size, threshold=PARITY_FP32, with_features=with_features)}
    vfiles: dict[str, Any] = {"fp32": f32.name}
    if int8 is not None:
        par["int8"] = int8
        if int8["kept"]:
            vfiles["int8"] = f"{view}.int8.onnx"
    if half_model is not None:
        f16 = tmp / f"{view}.fp16.onnx"
        _export_onnx(EmbedGraph(half_model, half=True, with_features=with_features).eval(), dummy, f16,
                     opset, outputs)
        par["fp16"] = parity(model, f16, size, threshold=PARITY_FP16, with_features=with_features)
        vfiles["fp16"] = f16.name
    vcfg["files"] = vfiles
    vcfg["outputs"] = outputs
    return vcfg, par


def export_bundle(model: S4GModel, out: str | os.PathLike[str], *, fp16: bool = False, weights: str = "fp32",
                  with_features: bool = False, opset: int = MIN_OPSET, contract: DataContract | None = None,
                  provenance: dict[str, Any] | None = None, tensorrt: dict[str, Any] | None = None,
                  name: str | None = None, cpu_int8: dict[str, list[np.ndarray]] | None = None) -> dict[str, Any]:
    """Export ``model`` to the bundle folder ``out`` (atomically replaced); returns the config.json dict.

    ``contract``: the data contract recorded per view (default: the model's sizes and backbone mean/std with
    the defaults of :func:`s4g_train.data.checkpoint_contract`); its input sizes must be the model's.
    ``weights="fp16"`` stores the fp32 graphs' weights as float16 (half the size, fp32 compute).
    ``tensorrt``: keyword arguments for :func:`s4g_train.tensorrt_build.build_engines` (None = no engines).
    ``cpu_int8``: view → preprocessed batches of TRAINING images; adds ``<view>.int8.onnx`` (static int8 for
    CPUs, :mod:`s4g_train.cpu_int8`) where its cosine to the eager model on held-out ones reaches 0.999.
    """
    if opset < MIN_OPSET:
        raise ValueError(f"opset must be ≥ {MIN_OPSET} (LayerNormalization), got {opset}")
    if weights not in ("fp32", "fp16"):
        raise ValueError(f"weights must be 'fp32' or 'fp16', got {weights!r}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    contract = contract or checkpoint_contract(model, None)
    sizes = {"ground": tuple(model.cfg.ground_size), "aerial": tuple(model.cfg.aerial_size)}
    if any(contract[v].input_size != sizes[v] for v in sizes) or contract.aerial.polar != model.cfg.polar_aerial:
        raise ValueError(f"the data contract ({contract.ground.input_size}, {contract.aerial.input_size}, polar "
                         f"{contract.aerial.polar}) does not match the model ({sizes['ground']}, {sizes['aerial']}, "
                         f"polar {model.cfg.polar_aerial})")
    model = model.float().eval()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        outputs = ["embedding", "features"] if with_features else ["embedding"]
        views: dict[str, Any] = {}
        files: dict[str, Any] = {}
        par: dict[str, Any] = {}
        half_model = copy.deepcopy(model).half().eval() if fp16 else None
        for view in ("ground", "aerial"):
            views[view], par[view] = _export_view(model, half_model, view, contract[view], tmp, opset=opset,
                                                  outputs=outputs, weights=weights, with_features=with_features,
                                                  int8_batches=(cpu_int8 or {}).get(view))
        if tensorrt is not None:
            from s4g_train import tensorrt_build

            for view, rels in tensorrt_build.build_engines(tmp, views, **tensorrt).items():
                views[view]["files"]["tensorrt"] = rels
        for f in sorted(tmp.rglob("*")):
            if f.is_file():
                files[f.relative_to(tmp).as_posix()] = {"sha256": sha256_file(f), "bytes": f.stat().st_size}
        fp = bundle_fingerprint(model.embed_dim, [files[views[v]["files"]["fp32"]]["sha256"] for v in views])
        import onnx
        import timm

        config = {
            "format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "name": name or out.name,
            "backbone": model.cfg.backbone, "embed_dim": model.embed_dim, "opset": opset,
            "weights_precision": weights, "views": views, "files": files, "fingerprint": fp, "parity": par,
            "model_config": model.cfg.to_dict(), "logit_scale": float(model.scale().detach()),
            "provenance": {**(provenance or {}), "exported_at": _dt.datetime.now(_dt.timezone.utc).isoformat(
                timespec="seconds"), "versions": {"torch": torch.__version__, "timm": timm.__version__,
                                                  "onnx": onnx.__version__}},
        }
        config = json.loads(json.dumps(config, default=str))  # tuples → lists, paths → str: what readers see
        atomic_write_text(tmp / "config.json", json.dumps(config, indent=2) + "\n")
        _swap_into_place(tmp, out, produced={p.relative_to(tmp).parts[0] for p in tmp.iterdir()})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("bundle %s written (fingerprint %s…)", out, config["fingerprint"][:12])
    return config


def _swap_into_place(tmp: Path, out: Path, produced: set[str]) -> None:
    """Rename the finished temp folder to ``out``; keep hand-written extras (MODEL_CARD.md, …) of an old bundle."""
    if out.exists():
        if not out.is_dir():
            raise FileExistsError(f"--out {out} exists and is not a directory")
        for extra in out.iterdir():
            if extra.name not in produced and extra.is_file():
                shutil.copy2(extra, tmp / extra.name)
                log.warning("kept %s from the previous bundle — check that it still describes this model", extra.name)
    # One atomic step (s4g_engine.fileio.publish_folder): kill -9 at any moment leaves the old bundle or the new.
    publish_folder(tmp, out)


def load_for_export(checkpoint: str, backbone: str | None = None, allow_partial: bool = False, *,
                    ground_size: Sequence[int] | None = None, aerial_size: Sequence[int] | None = None,
                    dataset: str | None = None) -> tuple[S4GModel, dict[str, Any]]:
    """Our checkpoints and the reference format, through the trainer's :func:`s4g_train.checkpoint.load_model`.

    Reference checkpoints store no input sizes: they come from ``ground_size`` / ``aerial_size`` ``(H, W)``,
    else the paper's for ``dataset``; they end up in config.json's per-view ``input_size``.
    """
    from s4g_train.checkpoint import load_model

    return load_model(checkpoint, backbone=backbone, allow_partial=allow_partial, ground_size=ground_size,
                      aerial_size=aerial_size, dataset=dataset)


def _provenance(checkpoint: str, info: dict[str, Any], argv: Sequence[str]) -> dict[str, Any]:
    cfg = info.get("config") or {}
    data = cfg.get("data", {}) if isinstance(cfg, dict) else {}
    return {
        "checkpoint": os.path.basename(checkpoint), "checkpoint_sha256": sha256_file(Path(checkpoint)),
        "checkpoint_format": info.get("format"), "epoch": info.get("epoch"), "metrics": info.get("metrics", {}),
        "dataset": {k: data.get(k) for k in ("dataset", "synthetic", "synth", "train_split", "eval_split")
                    if k in data},
        "train_command": cfg.get("command") if isinstance(cfg, dict) else None,
        "train_config": cfg if isinstance(cfg, dict) else None,
        "export_command": "s4g-export " + " ".join(argv),
    }


def build_parser() -> argparse.ArgumentParser:
    """The ``s4g-export`` parser (torch-free, in :mod:`s4g_train.parsers`, so that ``--help`` is instant)."""
    return export_parser()


@cli_main("s4g-export")  # user errors: one line + exit 2 (--debug: traceback)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not Path(args.checkpoint).is_file():
        print(f"s4g-export: checkpoint {args.checkpoint!r} does not exist", file=sys.stderr)
        return 2
    trt_kwargs = None
    if args.tensorrt or args.int8:
        from s4g_train import tensorrt_build

        try:
            tensorrt_build.require_tensorrt()
        except RuntimeError as exc:
            print(f"s4g-export: {exc}", file=sys.stderr)
            return 2
        trt_kwargs = {"int8": args.int8, "max_batch": args.max_batch, "calib_dataset": args.calib_dataset,
                      "calib_root": args.calib_root, "calib_split": args.calib_split,
                      "calib_images": args.calib_images}
    try:
        model, info = load_for_export(args.checkpoint, args.backbone, args.allow_partial,
                                      ground_size=args.ground_size, aerial_size=args.aerial_size,
                                      dataset=args.dataset)
        contract = checkpoint_contract(model, info.get("config"), interpolation=args.interpolation)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"s4g-export: error: cannot load {args.checkpoint}: {exc}", file=sys.stderr)
        return 2
    cpu_int8 = None
    if args.cpu_int8:
        from s4g_train.cpu_int8 import training_batches

        if not (args.calib_dataset and args.calib_root):
            print("s4g-export: --cpu-int8 needs training images: --calib-dataset NAME --calib-root DIR "
                  "[--calib-split train]", file=sys.stderr)
            return 2
        try:
            cpu_int8 = {v: training_batches(v, contract[v].to_config(), dataset=args.calib_dataset,
                                            root=args.calib_root, split=args.calib_split, count=args.calib_images)
                        for v in ("ground", "aerial")}
        except (ValueError, FileNotFoundError) as exc:
            print(f"s4g-export: --cpu-int8: {exc}", file=sys.stderr)
            return 2
    prov = _provenance(args.checkpoint, info, argv)
    prov["input_sizes_from"] = info.get("input_sizes_from")
    if args.train_command:
        prov["train_command"] = args.train_command
    try:
        config = export_bundle(model, args.out, fp16=args.fp16, weights=args.weights,
                               with_features=args.with_features, opset=args.opset, contract=contract,
                               provenance=prov, tensorrt=trt_kwargs, cpu_int8=cpu_int8)
    except (ExportError, ValueError) as exc:
        print(f"s4g-export: {exc}", file=sys.stderr)
        return 1
    for view, p in config["parity"].items():
        print(f"{view}: " + ", ".join(f"{k} cosine {v['min_cosine']:.7f}" for k, v in p.items()))
    total = sum(f["bytes"] for f in config["files"].values())
    print(f"wrote {args.out} ({len(config['files'])} files, {total / 1e6:.1f} MB), "
          f"fingerprint {config['fingerprint'][:16]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
