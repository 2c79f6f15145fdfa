"""The argument parsers of ``s4g-train``, ``s4g-eval``, ``s4g-ablate`` and ``s4g-export``, without torch.

The command lines import torch and timm (several seconds) only to run; their parsers live here so that
``--help`` answers at once (:mod:`s4g_train.cli`) and each module's ``main`` uses the same parser. This module
imports argparse, the engine's light shell (:mod:`s4g_engine.console`) and the names of the resize filters.
"""

from __future__ import annotations

import argparse

from s4g_engine.console import add_debug_flag
from s4g_engine.preprocess import INTERPOLATIONS

__all__ = ["train_parser", "eval_parser", "ablate_parser", "export_parser", "MIN_OPSET", "BACKBONE", "AMP_MODES",
           "DEVICES"]

#: The lowest ONNX opset ``s4g-export`` writes.
MIN_OPSET = 17
#: ``--interpolation``/``data.interpolation`` value meaning "the backbone's own resize filter".
BACKBONE = "backbone"
#: ``train.amp`` / ``--amp`` values (their meaning: :func:`s4g_train.device.pick_amp`); defined here, torch-free,
#: so the parsers and the config share one list.
AMP_MODES = ("auto", "off", "bf16", "fp16")
#: ``train.device`` values (:func:`s4g_train.device.pick_device`).
DEVICES = ("auto", "cpu", "cuda")


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="s4g-train", description="Train Sample4Geo. Override any config field with --set section.field=value "
        "or --section.field value (e.g. --set optim.lr=3e-4 --train.epochs 10).")
    p.add_argument("--preset", help="preset name in s4g_train/presets (cvusa, cvact, vigor-same, vigor-cross, "
                                    "university, synthetic)")
    p.add_argument("--config", help="a YAML config file (applied after the preset)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from checkpoints/last.pt")
    p.add_argument("--init", metavar="CKPT", help="fine-tune: start from the weights of CKPT (our .pt or a "
                   "published Sample4Geo .pth); fresh optimiser and schedule (= --train.init CKPT)")
    p.add_argument("--backbone", help="timm backbone of a reference --init checkpoint (default: inferred)")
    p.add_argument("--allow-partial", action="store_true", help="--init: copy only the matching tensors")
    p.add_argument("--run-dir", help="run folder (default: <train.runs_dir>/<train.name>)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("-v", "--verbose", action="store_true")
    add_debug_flag(p)
    return p


def eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="s4g-eval", description="Evaluate a checkpoint on a dataset split.")
    p.add_argument("checkpoint", help="our checkpoint (runs/<name>/checkpoints/best.pt) or a reference .pth")
    p.add_argument("--dataset", help="cvusa | cvact | vigor-same | vigor-cross | university-d2s | university-s2d "
                                     "(default: the checkpoint's training dataset)")
    p.add_argument("--root", help="dataset root (default: the checkpoint's)")
    p.add_argument("--split", default=None, help="train | val | test (default: the checkpoint's eval split)")
    p.add_argument("--backbone", default=None, help="timm backbone (only for reference-format checkpoints)")
    p.add_argument("--allow-partial", action="store_true",
                   help="load a checkpoint with missing/unexpected keys (named in the log); default strict")
    p.add_argument("--ground-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="ground input size for reference checkpoints (default: the paper's for --dataset)")
    p.add_argument("--aerial-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="aerial input size for reference checkpoints (default: the paper's for --dataset)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-queries", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", default="auto", choices=AMP_MODES)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--out", default=None,
                   help="write metrics JSON here (default: <checkpoint>.eval-<dataset>-<split>.json)")
    p.add_argument("--save-embeddings", metavar="DIR", default=None,
                   help="write query_emb.npy, ref_emb.npy, positive.npy (+ semi_positives.npy) to DIR")
    add_debug_flag(p)
    return p


def ablate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="s4g-ablate", description="Run supplementary tables 1–4 on a preset over "
                                "several seeds. Shared overrides: --set section.field=value (applied to every run).")
    p.add_argument("--preset", default="synthetic")
    p.add_argument("--config", default=None)
    p.add_argument("--tables", default="1,2,3,4", help="comma-separated subset of 1,2,3,4")
    p.add_argument("--out", default="runs/ablate", help="folder for the runs and ablation.json")
    p.add_argument("--seeds", type=int, default=3, help="runs per cell (train.seed, train.seed+1, …); finished "
                   "runs are reused, so raising it later trains only the new seeds (default 3)")
    p.add_argument("--k-values", default=None, help="table 1: comma-separated k values (default: the paper's "
                   "16,32,64,128 of K=128 at batch 128, scaled to the batch size; see table1_k)")
    p.add_argument("--K", type=int, default=None, help="table 1: neighbour pool size (default: the batch size, "
                   "as the paper's K=128 at batch 128)")
    add_debug_flag(p)
    return p


def export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="s4g-export", description="a checkpoint → a self-describing model bundle "
                                "folder for the torch-free engine")
    p.add_argument("checkpoint", help="an s4g checkpoint (runs/NAME/checkpoints/best.pt) or a reference Sample4Geo one")
    p.add_argument("--out", required=True, help="bundle folder to (re)write, e.g. models/NAME")
    p.add_argument("--backbone", default=None, help="timm backbone (only for reference-format checkpoints)")
    p.add_argument("--allow-partial", action="store_true", help="load checkpoints with missing/unexpected keys")
    p.add_argument("--dataset", default=None,
                   help="reference checkpoints: take the paper's input sizes for this dataset (cvusa, cvact, "
                        "vigor-same, vigor-cross, university-d2s, university-s2d)")
    p.add_argument("--ground-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="reference checkpoints: ground input size (overrides --dataset's)")
    p.add_argument("--aerial-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="reference checkpoints: aerial input size (overrides --dataset's)")
    p.add_argument("--fp16", action="store_true", help="also write *.fp16.onnx (float16 compute, for GPUs)")
    p.add_argument("--weights", choices=("fp32", "fp16"), default="fp32",
                   help="storage of the main graphs' weights (fp16 halves the files; compute stays fp32)")
    p.add_argument("--with-features", action="store_true", help="add the 'features' output (last feature map)")
    p.add_argument("--opset", type=int, default=MIN_OPSET, help=f"ONNX opset (≥ {MIN_OPSET})")
    p.add_argument("--interpolation", default=None, choices=[*INTERPOLATIONS, BACKBONE],
                   help="resize filter recorded in the bundle's data contract (default: the checkpoint's training "
                        "config data.interpolation; bilinear for checkpoints without one, e.g. reference ones, and "
                        "for runs from before that field, which all trained with bilinear). Only override it to "
                        "serve a model differently from how it was trained")
    p.add_argument("--tensorrt", action="store_true", help="also build TensorRT engines (needs TensorRT + a GPU)")
    p.add_argument("--int8", action="store_true", help="TensorRT INT8 with calibration (implies --tensorrt)")
    p.add_argument("--cpu-int8", action="store_true",
                   help="also write <view>.int8.onnx (static int8 for CPUs with VNNI/AMX, calibrated on the training "
                        "split; kept only at cosine >= 0.999; used where it is the fastest, see s4g_engine.backends)")
    p.add_argument("--calib-dataset", default=None, help="dataset name for INT8 calibration images")
    p.add_argument("--calib-root", default=None, help="dataset root for INT8 calibration images")
    p.add_argument("--calib-split", default="train", help="split the calibration images come from")
    p.add_argument("--calib-images", type=int, default=512, help="number of calibration images per view")
    p.add_argument("--max-batch", type=int, default=64, help="TensorRT optimisation profile: batch 1…max")
    p.add_argument("--train-command", default=None,
                   help="the training command line, recorded in the provenance (when the checkpoint lacks it)")
    p.add_argument("-v", "--verbose", action="store_true")
    add_debug_flag(p)
    return p
