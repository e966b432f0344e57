"""The allowed values of the retrieval options, importable without numpy or torch (the command line and the
settings classes read them)."""

INDEX_TYPES = ("exact", "hnsw", "ivfpq")  # exact search, or a faiss approximate index (ann.py)
BACKENDS = ("torch", "faiss")  # of exact search (search.py)
NUDGE_VARIANTS = ("n", "m")  # NUDGE-N (unit norm) and NUDGE-M (bounded move) (nudge.py)
