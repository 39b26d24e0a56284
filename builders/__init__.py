"""Builders of the course's artifacts: the instructor's side, never part of a student release.

``helpers/`` ships with every release, so it must not paraphrase any graded function. The code that
trains the default model (a warm-up + cosine schedule, padding and a shifted cross-entropy: notebook
02's lessons) and writes checkpoints (the safetensors layout that notebook 01's ``read_safetensors``
parses) would do exactly that, so it lives here:

* :mod:`builders.default_model` -- trains the default model (the ``"default_model"`` artifact);
* :mod:`builders.checkpoint` -- writes a model as ``model.safetensors`` + ``config.json``.

``helpers`` registers the artifacts and loads them; it imports this package only inside a build
(``helpers.default_model.builder``), never at import time, and nothing here is imported by a
notebook. Artifacts are built in the course's source tree and shipped beside each notebook by
``python -m autograder release`` (with ``artifacts/sources.json``, the digests of this code, so
that a release computes the same artifact keys without it).
"""
