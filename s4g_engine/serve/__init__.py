"""``s4g-serve``: the localisation service over HTTP (the ``serve`` extra), on Ray Serve.

``s4g-serve --model DIR --index FILE|URI --port N [--max-batch 16] [--max-wait-ms 5] [--replicas 1]``

Endpoints: ``POST /v1/localise`` (multipart images, ``k``; ``?format=geojson``), ``GET /healthz``, ``/readyz``,
``/v1/gallery`` (coordinates of the gallery, for the map), ``/v1/tiles/{id}`` (a tile thumbnail when
``--tiles DIR`` is given) and the page at ``/``. Dynamic batching is Ray Serve's ``@serve.batch``: images of
concurrent requests are encoded and searched together, up to ``max_batch`` images or ``max_wait_ms``.
Limits (request bytes, image bytes and pixels, k) come from :mod:`s4g_engine.limits` and the checks of
:mod:`s4g_engine.imagecheck`, before any pixel is decoded; a refused request gets a 4xx JSON answer
``{"error": ..., "detail": ...}`` that says what was wrong.

The pieces: :mod:`.config` (settings), :mod:`.handlers` (request parsing, limits and answers; no Ray),
:mod:`.app` (the Ray Serve deployment), :mod:`.cli` (the command line, graceful shutdown).
"""
