"""Build a labeled clip dataset from a class map: resolve sources → process → de-duplicate → split → write.

Output folder::

    clips/<class>/<name>.flac   mono 16-bit FLAC at the class map's rate, trimmed, loudness-normalised
    metadata.jsonl              one record per clip (``audio``, ``class``, ``labels``, ``split``,
                                ``captions``, ``source_package``, ``source_file``, ``duration`` …);
                                readable by ``clapkit shards write --from``
    train.jsonl, test.jsonl,    the records of each split: train, the in-source test (other recordings of the
    cross.jsonl                 packages the class trains on) and cross-source (a package the class never trains on)
    index.csv                   the same, flat: path,class,label,kind,split,source_package,source_file,…
    summary.json                counts per class and split, each class's held-out package (or why none),
                                skipped sources with reasons, duplicates
    class_map.json              the class map the folder was built from

Every file is written under a temporary name and renamed. A rebuild reuses each clip whose
fingerprint (source bytes, segment, processing settings) is unchanged and deletes clips that are
no longer produced, so a second build only re-reads the sources.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from clapkit.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from clapkit.progress import progress_bar
from demo.datasets.classmap import ClassMap, load_class_map
from demo.datasets.curation import ProcessConfig, assign_source_splits, find_duplicates, process_clip, signature
from demo.datasets.sources import Job, Sources, collect_jobs, sha1_hex

__all__ = [
    "SPLITS",
    "BuildResult",
    "ClipRecord",
    "build_dataset",
    "check_class_map",
    "class_map_fingerprint",
    "format_summary",
]

log = logging.getLogger(__name__)

#: Bump when processing changes in a way the settings do not capture (invalidates reused clips).
PROCESS_VERSION = 1
#: Bump when the split rules change (the same class map then gives other splits).
SPLIT_VERSION = 2
#: The splits a build writes, each to ``<split>.jsonl``: training, in-source test, cross-source test.
SPLITS = ("train", "test", "cross")
METADATA_NAME = "metadata.jsonl"
INDEX_NAME = "index.csv"
SUMMARY_NAME = "summary.json"
CLASS_MAP_NAME = "class_map.json"
CLIPS_DIR = "clips"


@dataclass
class ClipRecord:
    """One written clip; ``to_json`` gives its metadata.jsonl line."""

    audio: str
    cls: str
    label: str
    kind: str
    split: str
    captions: list[str]
    duration: float
    sample_rate: int
    source: str
    source_package: str
    source_file: str
    segment: list[float] | None
    group: str
    license: str
    attributes: dict[str, Any]
    stats: dict[str, float]
    fingerprint: str

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["class"] = out.pop("cls")
        out["labels"] = [out.pop("label")]
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ClipRecord:
        raw = dict(raw)
        raw["cls"] = raw.pop("class")
        raw["label"] = raw.pop("labels")[0]
        return cls(**raw)


@dataclass
class BuildResult:
    """What a build produced.

    Attributes:
        out_dir: The dataset folder.
        records: Written clips, in class-map order.
        skipped: ``{"source", "class", "reason"}`` for sources and clips left out while building.
        duplicates: ``{"kept", "dropped", "correlation"}`` for near-identical clips removed.
        dropped_classes: Classes left out because too few clips or recordings remained.
        missing_packages: Packages whose files were not found.
        reused: Clips taken unchanged from a previous build.
        seconds: Wall time of the build.
        cross_sources: ``class → {"package": held-out package or None, "reason": why}`` for each kept class.
    """

    out_dir: Path
    records: list[ClipRecord]
    skipped: list[dict[str, str]]
    duplicates: list[dict[str, Any]]
    dropped_classes: list[dict[str, str]]
    missing_packages: list[str]
    reused: int
    seconds: float
    cross_sources: dict[str, dict[str, str | None]] = field(default_factory=dict)

    def counts(self) -> dict[str, dict[str, int]]:
        """``class → {"train": n, "test": n, "cross": n}``."""
        out: dict[str, dict[str, int]] = {}
        for rec in self.records:
            out.setdefault(rec.cls, dict.fromkeys(SPLITS, 0))[rec.split] += 1
        return out


def class_map_fingerprint(class_map: str | Path | ClassMap) -> str:
    """A short hash of what decides a build's clips and splits: the class map and the builder's rule versions."""
    cmap = class_map if isinstance(class_map, ClassMap) else load_class_map(class_map)
    payload = [PROCESS_VERSION, SPLIT_VERSION, dict(cmap.raw)]
    return sha1_hex(json.dumps(payload, sort_keys=True, default=str).encode())[:16]


def _fingerprint(job: Job, cfg: ProcessConfig) -> str:
    payload = [PROCESS_VERSION, asdict(cfg), job.content_key, job.segment, job.origin]
    return sha1_hex(json.dumps(payload, sort_keys=True).encode())[:16]


def _captions(job: Job) -> list[str]:
    out: list[str] = []
    for text in job.captions + list(job.cls.captions):
        if text not in out:
            out.append(text)
    return out


def _encode(wave: torch.Tensor, rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave.numpy().astype(np.float32), rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def _load_previous(out_dir: Path) -> dict[str, ClipRecord]:
    path = out_dir / METADATA_NAME
    if not path.is_file():
        return {}
    previous = {}
    for line in path.read_text().splitlines():
        try:
            rec = ClipRecord.from_json(json.loads(line))
        except (ValueError, KeyError, TypeError):
            continue  # an unreadable line only costs a re-encode
        previous[rec.audio] = rec
    return previous


def check_class_map(class_map: str | Path | ClassMap, *, skip_missing: bool = False) -> dict[str, Any]:
    """Resolve every source of a class map without decoding audio.

    Returns:
        ``{"planned": {class: clips before trimming and de-duplication}, "missing_packages": [...],
        "problems": [{"class", "source", "reason"}]}`` (globs that match nothing, exclusions that name
        no file, unreadable archives, the same audio claimed by two classes).
    """
    cmap = class_map if isinstance(class_map, ClassMap) else load_class_map(class_map)
    jobs, missing, problems = collect_jobs(cmap, Sources(cmap), skip_missing)
    planned = {name: 0 for name in cmap.classes}
    for job in jobs:
        planned[job.cls.name] += 1
    return {"planned": planned, "missing_packages": missing, "problems": problems + _shared_audio(jobs)}


def _shared_audio(jobs: list[Job]) -> list[dict[str, str]]:
    """Audio (the same bytes and segment, under any path) that several classes claim: labels must be exclusive."""
    claims: dict[tuple[str, Any], dict[str, str]] = defaultdict(dict)
    for job in jobs:
        claims[(job.content_key, job.segment)].setdefault(job.cls.name, job.origin)
    problems = []
    for by_class in claims.values():
        if len(by_class) > 1:
            names = sorted(by_class)
            where = "; ".join(f"{name}: {by_class[name]}" for name in names)
            reason = f"the same audio is in classes {', '.join(names)} ({where}); a clip takes one label"
            problems.append({"class": names[0], "source": by_class[names[0]], "reason": reason})
    return problems


def build_dataset(
    out_dir: str | Path,
    class_map: str | Path | ClassMap,
    *,
    force: bool = False,
    skip_missing: bool = False,
    progress: bool = True,
) -> BuildResult:
    """Build (or update) a clip dataset described by a class map.

    Args:
        out_dir: Dataset folder (created).
        class_map: A :class:`ClassMap` or the path of its JSON file.
        force: Re-encode every clip even when an identical one exists.
        skip_missing: Build from the installed packages only instead of raising for missing ones.
        progress: Show a progress bar.

    Returns:
        The :class:`BuildResult`; the same numbers are in ``summary.json``.

    Raises:
        FileNotFoundError: a package of the class map is not installed (unless ``skip_missing``).
        ValueError: a malformed class map.
    """
    start = time.perf_counter()
    cmap = class_map if isinstance(class_map, ClassMap) else load_class_map(class_map)
    cfg = cmap.process
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    previous = {} if force else _load_previous(out)
    opened = Sources(cmap)
    jobs, missing, skipped = collect_jobs(cmap, opened, skip_missing)

    made: list[tuple[Job, ClipRecord]] = []
    reused = 0
    for job in progress_bar(jobs, desc=f"building {cmap.name}", unit="clip", disable=not progress):
        try:
            record, was_reused = _make_clip(job, out, job.cls.process or cfg, previous)
        except _Unusable as err:
            skipped.append({"class": job.cls.name, "source": job.origin, "reason": str(err)})
            continue
        reused += was_reused
        made.append((job, record))

    duplicates = _drop_duplicates(out, made, cfg.sample_rate)
    made = [(j, r) for j, r in made if r.audio not in {d["dropped"] for d in duplicates}]
    records, dropped, cross_sources = _split(cmap, made)

    _remove_stale_clips(out, {r.audio for r in records})
    _write_outputs(out, cmap, records)
    result = BuildResult(
        out_dir=out,
        records=records,
        skipped=skipped,
        duplicates=duplicates,
        dropped_classes=dropped,
        missing_packages=missing,
        reused=reused,
        seconds=round(time.perf_counter() - start, 2),
        cross_sources=cross_sources,
    )
    atomic_write_json(out / SUMMARY_NAME, _summary(cmap, result))
    return result


class _Unusable(Exception):
    """A source that cannot become a clip; the build skips it and reports the reason."""


def _make_clip(job: Job, out: Path, cfg: ProcessConfig, previous: dict[str, ClipRecord]) -> tuple[ClipRecord, bool]:
    """The record of one job's clip, reusing the previous build's file when its fingerprint is unchanged.

    Returns:
        The record and whether the clip was reused.

    Raises:
        _Unusable: the source could not be made into a clip (silent, too short, undecodable).
    """
    rel = f"{CLIPS_DIR}/{job.cls.name}/{job.name}.flac"
    fp = _fingerprint(job, cfg)
    old = previous.get(rel)
    reused = old is not None and old.fingerprint == fp and (out / rel).is_file()
    if reused:
        duration, stats = old.duration, old.stats
    else:
        try:
            wave = job.read()
            if job.segment is not None:
                a, b = (round(t * cfg.sample_rate) for t in job.segment)
                wave = wave[a:b]
            clip, stats = process_clip(wave, cfg)
        except ValueError as err:
            raise _Unusable(str(err)) from err
        atomic_write_bytes(out / rel, _encode(clip, cfg.sample_rate))
        duration = round(clip.shape[-1] / cfg.sample_rate, 3)
    # Labels and captions always come from the current class map, only the audio is reused.
    record = ClipRecord(
        audio=rel,
        cls=job.cls.name,
        label=job.cls.label,
        kind=job.cls.kind,
        split="",
        captions=_captions(job),
        duration=duration,
        sample_rate=cfg.sample_rate,
        source=job.origin,
        source_package=job.package.name,
        source_file=job.source_file,
        segment=list(job.segment) if job.segment is not None else None,
        group=job.group,
        license=job.license,
        attributes=job.attributes,
        stats=stats,
        fingerprint=fp,
    )
    return record, reused


def _remove_stale_clips(out: Path, keep: set[str]) -> None:
    """Delete clips of earlier builds that this build did not make, and the class folders left empty."""
    for path in (out / CLIPS_DIR).rglob("*.flac"):
        if path.relative_to(out).as_posix() not in keep:
            path.unlink()
    for folder in (out / CLIPS_DIR).iterdir() if (out / CLIPS_DIR).is_dir() else ():
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def _drop_duplicates(out: Path, made: list[tuple[Job, ClipRecord]], rate: int) -> list[dict[str, Any]]:
    """Near-identical clips within a class from different recordings: keep the first listed."""
    by_class: dict[str, list[tuple[str, float, torch.Tensor, str]]] = defaultdict(list)
    for job, rec in made:
        if job.source.render is not None or job.source.tts is not None:
            continue  # renders differ by construction (key, velocity, program; voice, rate, pitch)
        wave, _ = sf.read(out / rec.audio, dtype="float32")
        by_class[rec.cls].append((rec.audio, rec.duration, signature(torch.from_numpy(wave), rate), rec.group))
    found = []
    for items in by_class.values():
        group = {key: g for key, _, _, g in items}
        pairs = find_duplicates([(k, s, sig) for k, s, sig, _ in items])
        found.extend({"kept": a, "dropped": b, "correlation": r} for a, b, r in pairs if group[a] != group[b])
    return found


def _split(
    cmap: ClassMap, made: list[tuple[Job, ClipRecord]]
) -> tuple[list[ClipRecord], list[dict[str, str]], dict[str, dict[str, str | None]]]:
    """Each class's train/test/cross splits (``assign_source_splits``); the records, dropped classes and held-out
    package per class."""
    by_class: dict[str, list[tuple[Job, ClipRecord]]] = defaultdict(list)
    for job, rec in made:
        by_class[rec.cls].append((job, rec))
    records: list[ClipRecord] = []
    dropped: list[dict[str, str]] = []
    cross: dict[str, dict[str, str | None]] = {}
    for name, spec in cmap.classes.items():
        items = by_class.get(name, [])
        if len(items) < cmap.min_clips:
            dropped.append({"class": name, "reason": f"{len(items)} clips, fewer than min_clips={cmap.min_clips}"})
            continue
        fixed = {job.group: job.source.split for job, _ in items if job.source.split}
        # Packages that share samples are one source: held out together (PackageSpec.source).
        hold_out = spec.cross_source
        if isinstance(hold_out, str):
            hold_out = cmap.packages[hold_out].source
        try:
            splits, package, reason = assign_source_splits(
                [cmap.packages[r.source_package].source for _, r in items],
                [r.group for _, r in items],
                cmap.test_fraction,
                salt=name,
                min_clips=cmap.min_clips,
                fixed=fixed,
                hold_out=hold_out,
                never={pkg.source for pkg in cmap.packages.values() if not pkg.held_out},
            )
        except ValueError as err:
            dropped.append({"class": name, "reason": str(err)})
            continue
        # The packages held out with ``package`` because they share its samples (none when nothing is held out).
        shared = {r.source_package for _, r in items if cmap.packages[r.source_package].shares_samples_with}
        sharing = sorted(p for p in shared if cmap.packages[p].shares_samples_with == package)
        if sharing:
            reason += f"; with {', '.join(sharing)}, which shares its samples"
        cross[name] = {"package": package, "reason": reason}
        for _, rec in items:
            rec.split = splits[rec.group]
            records.append(rec)
    return records, dropped, cross


def _write_outputs(out: Path, cmap: ClassMap, records: list[ClipRecord]) -> None:
    lines = {r.audio: json.dumps(r.to_json(), ensure_ascii=False) for r in records}
    atomic_write_text(out / METADATA_NAME, "".join(f"{line}\n" for line in lines.values()))
    for split in SPLITS:
        chosen = "".join(f"{lines[r.audio]}\n" for r in records if r.split == split)
        atomic_write_text(out / f"{split}.jsonl", chosen)
    buf = io.StringIO()
    writer = csv.writer(buf)
    columns = ["path", "class", "label", "kind", "split", "duration", "source_package", "source_file", "group"]
    writer.writerow([*columns, "license", "captions"])
    for r in records:
        row = [r.audio, r.cls, r.label, r.kind, r.split, r.duration, r.source_package, r.source_file, r.group]
        writer.writerow([*row, r.license, " | ".join(r.captions)])
    atomic_write_text(out / INDEX_NAME, buf.getvalue())
    atomic_write_json(out / CLASS_MAP_NAME, dict(cmap.raw))


def _summary(cmap: ClassMap, result: BuildResult) -> dict[str, Any]:
    counts = result.counts()
    classes = {}
    for name, spec in cmap.classes.items():
        if name in counts:
            packages = sorted({r.source_package for r in result.records if r.cls == name})
            held_out = result.cross_sources.get(name, {"package": None, "reason": ""})
            classes[name] = {
                "label": spec.label,
                "kind": spec.kind,
                **counts[name],
                "packages": packages,
                "cross_source_package": held_out["package"],
                "cross_source_reason": held_out["reason"],
            }
    return {
        "name": cmap.name,
        "clips": len(result.records),
        **{split: sum(c[split] for c in counts.values()) for split in SPLITS},
        "cross_source_classes": sum(1 for c in classes.values() if c["cross_source_package"]),
        "classes": classes,
        "kinds": {k: sum(1 for c in classes.values() if c["kind"] == k) for k in ("event", "instrument", "speech")},
        "hours": round(sum(r.duration for r in result.records) / 3600, 3),
        "reused": result.reused,
        "seconds": result.seconds,
        "missing_packages": result.missing_packages,
        "dropped_classes": result.dropped_classes,
        "duplicates": result.duplicates,
        "skipped": result.skipped,
        "reviewed_exclusions": sum(len(c.excluded) for c in cmap.classes.values()),
        # Transient sounds reach the peak ceiling before the loudness target; they stay quieter.
        "peak_limited": sum(
            1 for r in result.records if r.stats["gain_db"] < cmap.process.target_lufs - r.stats["loudness_lufs"] - 0.01
        ),
    }


def format_summary(result: BuildResult) -> str:
    """A plain-text table: one row per class with its train/test/cross clip counts and held-out package, then
    totals and problems."""
    counts = result.counts()
    kinds = {r.cls: r.kind for r in result.records}
    width = max([len(c) for c in counts] + [5])
    lines = [f"{'class':{width}s}  {'kind':10s} " + " ".join(f"{s:>5s}" for s in (*SPLITS, "total")) + "  held out"]
    for name, c in counts.items():
        held_out = result.cross_sources.get(name, {}).get("package") or "-"
        cells = " ".join(f"{n:5d}" for n in (*c.values(), sum(c.values())))
        lines.append(f"{name:{width}s}  {kinds[name]:10s} {cells}  {held_out}")
    totals = [sum(c[split] for c in counts.values()) for split in SPLITS]
    by_kind = defaultdict(int)
    for name in counts:
        by_kind[kinds[name]] += 1
    lines.append(f"{'total':{width}s}  {'':10s} " + " ".join(f"{n:5d}" for n in (*totals, sum(totals))))
    n_cross = sum(1 for c in result.cross_sources.values() if c["package"])
    lines.append(
        f"{len(counts)} classes ({', '.join(f'{n} {k}' for k, n in sorted(by_kind.items()))}), "
        f"{n_cross} with a held-out package (cross split); {result.reused} clips reused; {result.seconds:.1f} s"
    )
    if result.missing_packages:
        lines.append(f"missing packages: {', '.join(result.missing_packages)}")
    for d in result.dropped_classes:
        lines.append(f"dropped class {d['class']}: {d['reason']}")
    for d in result.duplicates:
        lines.append(f"duplicate: {d['dropped']} ≈ {d['kept']} (r={d['correlation']})")
    if result.skipped:
        lines.append(f"{len(result.skipped)} sources/clips skipped (reasons in summary.json)")
    return "\n".join(lines)
