"""Step 8, **search**: an ``AudioIndex`` over the held-out clips, queried by text and by a training clip."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from clapkit.index import AudioIndex
from clapkit.model import ClapModel
from demo.data import Workspace

__all__ = ["search"]


def search(work: Workspace, model: ClapModel, source: str, log: Callable[[str], None]) -> dict[str, Any]:
    """An index over the held-out clips (embedded by the model itself), queried by text and by audio.

    Returns:
        Query → ``[(label, score, file name), …]`` of its hits (an audio query is shown as ``<audio: file>``).
    """
    cfg = work.config.search
    test = work.records("test")
    index = AudioIndex.for_model(model, source=source, index="flat")
    paths = [str(work.dataset_dir / r["audio"]) for r in test]
    entries = [{"labels": r["labels"], "captions": r["captions"][:1], "fields": {"class": r["class"]}} for r in test]
    index.add_audio(paths, entries, progress=work.progress)
    index.save(work.out / "index")
    shown: dict[str, Any] = {}
    for query in cfg.text_queries:
        hits = index.search(text=query, k=cfg.k)[0]
        shown[query] = [(h.labels[0], round(h.score, 3), Path(h.path).name) for h in hits]
    if cfg.audio_query_class:
        clip = next((r for r in work.records("train") if r["class"] == cfg.audio_query_class), None)
        if clip is None:
            raise ValueError(f"search.audio_query_class={cfg.audio_query_class!r}: no training clip of that class")
        hits = index.search(audio=str(work.dataset_dir / clip["audio"]), k=cfg.k)[0]
        shown[f"<audio: {clip['audio']}>"] = [(h.labels[0], round(h.score, 3), Path(h.path).name) for h in hits]
    log(f"AudioIndex over {len(index)} held-out clips ({index.key}), model {source}:")
    for query, hits in shown.items():
        log(f"  {query}")
        for rank, (label, score, name) in enumerate(hits, 1):
            log(f"    {rank}. {score:.3f}  {label:<26} {name}")
    return shown
