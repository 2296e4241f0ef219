"""Audio search at scale, run from a checkout: ``python -m retrieval embed|build|serve``.

A thin app over ``clapkit.index``: resumable batch embedding (``embed``), index building (``build``) and
an HTTP service with a web page (``serve``).
"""
