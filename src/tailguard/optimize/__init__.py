"""``tailguard optimize``: faster variants of a model version, measured side by side.

* ``optimize.data``: the validation rows (Parquet or ``.npz``) in the model's input order;
* ``optimize.graph``: ONNX candidates (ONNX Runtime offline optimisation, int8 dynamic and
  static quantisation, float16);
* ``optimize.boosters``: LightGBM candidates (compiled trees, the first k trees, a distilled
  student);
* ``optimize.candidates``: the ``Candidate`` record and the scratch directory they live in;
* ``optimize.measure``: accuracy against the labels and latency at batch 1 and 64;
* ``optimize.report``: the verdict per candidate (the declared loss threshold), table and JSON;
* ``optimize.write``: a chosen candidate as the repository's next version;
* ``optimize.pipeline`` and ``optimize.commands``: the run and the command line;
* ``optimize.problems``: ``OptimizeError``.

The submodules are imported by name; this package imports nothing eagerly.
"""

from __future__ import annotations

__all__: list[str] = []
