"""Audio search: FAISS vectors (one per time window) with their metadata in a SQLite sidecar.

    import clapkit
    from clapkit.index import AudioIndex

    model = clapkit.load("my-model-dir")
    index = AudioIndex.for_model(model, source="my-model-dir")
    index.add_audio(["walk.flac", "street.wav"])           # long recordings → windows
    hits = index.search(text="a dog barking", k=5)[0]       # [Hit(id, score, path, start, end, …)]
    index.save("street.index")
    index = AudioIndex.load("street.index", model=model)     # refused if the model differs

Modules, one job each:

- ``layout``: FAISS layouts by name (``flat``, ``hnsw``, ``ivf-flat``, ``ivf-pq``), the ``auto`` choice from the
  number of vectors and a memory budget (``choose_index``), per-layout search parameters;
- ``records``: ``Entry`` (the metadata of one indexed window) and ``Hit`` (one search result);
- ``identity``: ``ModelInfo`` and the weights hash that tie an index to the model that made its vectors;
- ``sidecar``: the SQLite metadata store keyed by the FAISS id;
- ``store``: the folder format (``manifest.json``, ``index.faiss``, ``metadata.sqlite``);
- ``sources``: what gets indexed (audio files, folders, WebDataset shards) cut into time windows;
- ``audio_index``: ``AudioIndex`` itself (add, remove, search, tune, save, load);
- ``cli``: ``clapkit index build|info`` and ``clapkit search``.
"""

from __future__ import annotations

from clapkit.index.audio_index import AudioIndex
from clapkit.index.identity import ModelInfo, model_info
from clapkit.index.layout import INDEX_TYPES, IndexPlan, IndexPolicy, choose_index
from clapkit.index.records import Entry, Hit

__all__ = [
    "INDEX_TYPES",
    "AudioIndex",
    "Entry",
    "Hit",
    "IndexPlan",
    "IndexPolicy",
    "ModelInfo",
    "choose_index",
    "model_info",
]
