"""s4g-bench hygiene: every results JSON names the machine and the load; loaded runs are marked noisy."""

from __future__ import annotations

import json

import pytest

from s4g_train.bench import hygiene


@pytest.mark.parametrize("before,after,threads,noisy", [(0.3, 2.4, 2, False), (0.3, 2.6, 2, True),
                                                        (3.0, 1.0, 2, True), (None, None, 1, False)])
def test_noisy_flag(monkeypatch, capsys, before, after, threads, noisy) -> None:
    loads = iter([before, after])
    monkeypatch.setattr(hygiene, "load_1min", lambda: next(loads))
    guard = hygiene.RunGuard.start(threads)
    res: dict = {"machine": {"onnxruntime": "x"}}
    assert guard.finish(res) is noisy
    assert res["noisy"] is noisy
    m = res["machine"]
    assert m["onnxruntime"] == "x" and m["threads"] == threads
    assert m["load_avg_1min_before"] == before and m["load_avg_1min_after"] == after
    assert {"cpu_model", "simd_flags", "cpus", "platform"} <= set(m)
    assert ("NOISY RUN" in capsys.readouterr().out) is noisy


def test_simd_flags_are_known_names() -> None:
    flags = hygiene.simd_flags()
    assert set(flags) <= set(hygiene.SIMD_FLAGS) and isinstance(hygiene.cpu_model(), str)


def test_write_results_is_json(tmp_path) -> None:
    out = tmp_path / "sub" / "r.json"
    hygiene.write_results(out, {"a": 1, "noisy": False})
    assert json.loads(out.read_text()) == {"a": 1, "noisy": False}
