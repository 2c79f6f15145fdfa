"""The LitServe contender of ``s4g-bench serve --compare-litserve``: the same Localiser (one worker, one
thread, ``batch_size`` = max batch) behind LitServe's own dynamic batching, so that the two frameworks are
measured back to back under the same load. Benchmark-only: the product service is Ray Serve
(:mod:`s4g_engine.serve`). Run as ``python -m s4g_train.bench.serve_litserve MODEL INDEX PORT MAX_BATCH WAIT_MS``.
"""

import sys
from typing import Any

import litserve as ls
from fastapi import Request

# No ``from __future__ import annotations``: LitServe reads decode_request's annotation at run time to pass
# the parsed multipart form.


class LocaliseAPI(ls.LitAPI):
    """Multipart field ``image`` (one image per request) → top-5 candidates, like ``POST /v1/localise``."""

    def __init__(self, model: str, index: str, max_batch: int, wait_s: float) -> None:
        super().__init__(max_batch_size=max_batch, batch_timeout=wait_s, api_path="/v1/localise")
        self.model, self.index, self.mb = model, index, max_batch

    def setup(self, device: Any) -> None:
        from s4g_engine.localiser import Localiser

        self.loc = Localiser.from_dir(self.model, device="cpu", backend="onnxruntime", precision="fp32",
                                      batch_size=self.mb, threads=1, decode_threads=1)
        self.loc.load_index(self.index)

    def decode_request(self, request: Request) -> bytes:
        f = request["image"]
        return f.file.read() if hasattr(f, "file") else bytes(f)

    def batch(self, inputs: list[bytes]) -> list[bytes]:
        return inputs

    def predict(self, batch: list[bytes] | bytes) -> Any:
        single = isinstance(batch, bytes)  # max_batch_size=1: LitServe passes one item, unbatched
        images = [batch] if single else list(batch)
        res = self.loc.localise(images, k=5)
        out = [[{"rank": c["rank"], "id": c["id"], "lat": c["lat"], "lon": c["lon"], "score": c["score"]}
                for c in res.candidates(i)] for i in range(len(images))]
        return out[0] if single else out

    def unbatch(self, output: list[Any]) -> list[Any]:
        return list(output)

    def encode_response(self, output: list[dict[str, Any]]) -> dict[str, Any]:
        return {"k": 5, "results": [{"image": "upload", "candidates": output}]}


def main(argv: list[str]) -> None:
    model, index, port, mb, wait_ms = argv
    api = LocaliseAPI(model, index, int(mb), float(wait_ms) / 1000.0)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, healthcheck_path="/readyz")
    server.run(host="127.0.0.1", port=int(port), generate_client_file=False)


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
