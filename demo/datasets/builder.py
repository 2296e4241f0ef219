"""Build a labeled clip dataset from a class map: resolve sources → process → de-duplicate → split → write.

Output folder::

    clips/<class>/<name>.flac   mono 16-bit FLAC at the class map's rate, trimmed, loudness-normalised
    metadata.jsonl              one record per clip (``audio``, ``class``, ``labels``, ``split``,
                                ``captions``, ``source_package``, ``source_file``, ``duration`` …);
                                readable by ``clapkit shards write --from``
    train.jsonl, test.jsonl     the records of each split
    index.csv                   the same, flat: path,class,label,kind,split,source_package,source_file,…
    summary.json                counts per class and split, skipped sources with reasons, duplicates
    class_map.json              the class map the folder was built from

Every file is written under a temporary name and renamed. A rebuild reuses each clip whose
fingerprint (source bytes, segment, processing settings) is unchanged and deletes clips that are
no longer produced, so a second build only re-reads the sources.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from clapkit.audio import load_audio
from clapkit.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from demo.datasets.classmap import ClassMap, ClassSpec, PackageSpec, SourceSpec, load_class_map
from demo.datasets.curation import (
    ProcessConfig,
    assign_splits,
    find_duplicates,
    plan_segments,
    process_clip,
    signature,
)
from demo.datasets.licenses import Dep5, parse_dep5
from demo.datasets.rcc import RccArchive
from demo.datasets.render import NoteRenderer, note_name, register

__all__ = ["BuildResult", "ClipRecord", "build_dataset", "check_class_map", "format_summary"]

log = logging.getLogger(__name__)

#: Bump when processing changes in a way the settings do not capture (invalidates reused clips).
PROCESS_VERSION = 1
METADATA_NAME = "metadata.jsonl"
INDEX_NAME = "index.csv"
SUMMARY_NAME = "summary.json"
CLASS_MAP_NAME = "class_map.json"
CLIPS_DIR = "clips"
#: Velocities below this are captioned "soft", the rest "loud".
SOFT_BELOW = 80


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
class _Job:
    """One clip to make: where its audio comes from and how it is labeled."""

    cls: ClassSpec
    source: SourceSpec
    package: PackageSpec
    origin: str  # package:path, shown to users
    source_file: str
    name: str
    group: str
    segment: tuple[float, float] | None
    captions: list[str]
    attributes: dict[str, Any]
    license: str
    content_key: str
    read: Callable[[], torch.Tensor] = field(repr=False)


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
    """

    out_dir: Path
    records: list[ClipRecord]
    skipped: list[dict[str, str]]
    duplicates: list[dict[str, Any]]
    dropped_classes: list[dict[str, str]]
    missing_packages: list[str]
    reused: int
    seconds: float

    def counts(self) -> dict[str, dict[str, int]]:
        """``class → {"train": n, "test": n}``."""
        out: dict[str, dict[str, int]] = {}
        for rec in self.records:
            out.setdefault(rec.cls, {"train": 0, "test": 0})[rec.split] += 1
        return out


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "clip"


def _sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


class _Sources:
    """Opens package files, Qt resource archives and SoundFonts once per build."""

    def __init__(self, cmap: ClassMap) -> None:
        self.cmap = cmap
        self._rcc: dict[Path, RccArchive] = {}
        self._dep5: dict[str, Dep5 | None] = {}
        self._renderers: dict[Path, NoteRenderer] = {}
        self._hashes: dict[Path, str] = {}

    def rcc(self, path: Path) -> RccArchive:
        if path not in self._rcc:
            self._rcc[path] = RccArchive(path)
        return self._rcc[path]

    def license(self, package: PackageSpec, relative: str) -> str:
        if package.name not in self._dep5:
            cp = package.copyright
            self._dep5[package.name] = parse_dep5(cp) if cp is not None and cp.is_file() else None
        dep5 = self._dep5[package.name]
        found = dep5.license(package.upstream_path(relative)) if dep5 is not None else None
        return found or package.license

    def renderer(self, path: Path) -> NoteRenderer:
        if path not in self._renderers:
            self._renderers[path] = NoteRenderer(path, self.cmap.process.sample_rate)
        return self._renderers[path]

    def file_hash(self, path: Path) -> str:
        if path not in self._hashes:
            h = hashlib.sha1()
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    h.update(block)
            self._hashes[path] = h.hexdigest()
        return self._hashes[path]


def _excluded(cls: ClassSpec, package: str, rcc: str | None, relative: str) -> bool:
    return any(ex.package == package and ex.rcc == rcc and ex.file == relative for ex in cls.excluded)


def _exists(package: PackageSpec, rcc: str | None, relative: str, opened: _Sources) -> bool:
    if rcc is None:
        return (package.root / relative).is_file()
    archive = package.root / rcc
    return archive.is_file() and relative in opened.rcc(archive)


def _pick(paths: list[str], max_files: int | None) -> list[str]:
    if max_files is None or len(paths) <= max_files:
        return paths
    return sorted(sorted(paths, key=lambda p: _sha1(p.encode()))[:max_files])


def _decode_once(raw: bytes, name: str, rate: int, uses: int) -> Callable[[], torch.Tensor]:
    """A reader that decodes ``raw`` on first use and forgets it after ``uses`` reads (one per segment)."""
    cache: dict[str, torch.Tensor] = {}
    left = [uses]

    def read() -> torch.Tensor:
        wave = cache.get("wave")
        if wave is None:
            wave = load_audio(raw, rate, name=name)
        left[0] -= 1
        if left[0] > 0:
            cache["wave"] = wave
        else:
            cache.clear()
        return wave

    return read


def _file_jobs(cls: ClassSpec, src: SourceSpec, pkg: PackageSpec, opened: _Sources, rate: int) -> Iterator[_Job]:
    """Jobs of a ``files`` source: one per matched file and segment."""
    if src.rcc is not None:
        archive_path = pkg.root / src.rcc
        archive = opened.rcc(archive_path)
        matched = sorted({m for pattern in src.files for m in archive.glob(pattern)})
        matched = [m for m in matched if not _excluded(cls, pkg.name, src.rcc, m)]
        where = f"{src.rcc}:"
    else:
        matched = sorted({str(p.relative_to(pkg.root)) for pattern in src.files for p in pkg.root.glob(pattern)})
        matched = [m for m in matched if not _excluded(cls, pkg.name, None, m)]
        where = ""
    if not matched:
        raise FileNotFoundError(f"classes.{cls.name}: {pkg.name} has no {where}{' '.join(src.files)} under {pkg.root}")
    for relative in _pick(matched, src.max_files):
        if src.rcc is not None:
            raw = archive.read(relative)
            source_file = f"{archive_path}:/{relative}"
        else:
            raw = (pkg.root / relative).read_bytes()
            source_file = str(pkg.root / relative)
        origin = f"{pkg.name}:{where}{relative}"
        try:
            segments = plan_segments(sf.info(io.BytesIO(raw)).duration, src.segments, src.chunk_seconds)
        except (sf.LibsndfileError, RuntimeError):
            segments = [None]  # unreadable: decoding reports it, and the clip is skipped and counted
        read = _decode_once(raw, origin, rate, len(segments))
        stem = _slug(Path(relative).stem)
        for k, seg in enumerate(segments):
            suffix = f"-s{k + 1}" if seg is not None else ""
            yield _Job(
                cls=cls,
                source=src,
                package=pkg,
                origin=origin,
                source_file=source_file,
                name=f"{pkg.short}-{stem}{suffix}",
                group=f"{pkg.name}:{src.group}" if src.group else origin,
                segment=seg,
                captions=list(src.captions),
                attributes=dict(src.attributes),
                license=opened.license(pkg, relative),
                content_key=_sha1(raw),
                read=read,
            )


def _render_captions(cmap: ClassMap, cls: ClassSpec, drums: bool, values: dict[str, Any]) -> list[str]:
    templates = cmap.render_captions.get("drums" if drums else "pitched", ())
    return [t.format(label=cls.label, **values) for t in templates]


def _render_jobs(cmap: ClassMap, cls: ClassSpec, src: SourceSpec, pkg: PackageSpec, opened: _Sources) -> Iterator[_Job]:
    """Jobs of a ``render`` source: one per key and velocity; both velocities of a key share a group."""
    spec = src.render
    assert spec is not None and pkg.soundfont is not None
    sf2 = pkg.root / pkg.soundfont
    if not sf2.is_file():
        raise FileNotFoundError(f"classes.{cls.name}: SoundFont {sf2} not found")
    renderer = opened.renderer(sf2)
    preset = renderer.preset_name(spec.program, spec.bank, spec.drums) or "?"
    for key in spec.keys:
        for vel in spec.velocities:
            dynamics = "soft" if vel < SOFT_BELOW else "loud"
            if spec.drums:
                attributes = {"drum_key": key, "preset": preset, "velocity": vel, "dynamics": dynamics}
                attributes["hits"] = spec.hits
                tag, group_tag = f"drum{key:03d}-v{vel:03d}", f"drum{key}"
            else:
                attributes = {"program": spec.program, "preset": preset, "key": key, "pitch": note_name(key)}
                attributes |= {"register": register(key), "velocity": vel, "dynamics": dynamics}
                tag, group_tag = f"p{spec.program:03d}-{_slug(note_name(key))}-v{vel:03d}", f"p{spec.program}-k{key}"
            params = {**asdict(spec), "key": key, "velocity": vel}
            what = "drums" if spec.drums else f"program={spec.program}"
            origin = f"{pkg.name}:{pkg.soundfont}#{what},key={key},velocity={vel}"

            def read(key: int = key, vel: int = vel) -> torch.Tensor:
                audio = renderer.render(
                    key,
                    vel,
                    program=spec.program,
                    bank=spec.bank,
                    drums=spec.drums,
                    hold_seconds=spec.hold_seconds,
                    release_seconds=spec.release_seconds,
                    hits=spec.hits,
                    interval_seconds=spec.interval_seconds,
                )
                return torch.from_numpy(audio)

            yield _Job(
                cls=cls,
                source=src,
                package=pkg,
                origin=origin,
                source_file=str(sf2),
                name=f"{pkg.short}-{tag}",
                group=f"{pkg.name}:{group_tag}",
                segment=None,
                captions=list(src.captions) + _render_captions(cmap, cls, spec.drums, attributes),
                attributes={**attributes, **src.attributes},
                license=opened.license(pkg, pkg.soundfont),
                content_key=_sha1(json.dumps([opened.file_hash(sf2), params], sort_keys=True).encode()),
                read=read,
            )


def _fingerprint(job: _Job, cfg: ProcessConfig) -> str:
    payload = [PROCESS_VERSION, asdict(cfg), job.content_key, job.segment, job.origin]
    return _sha1(json.dumps(payload, sort_keys=True).encode())[:16]


def _unique_names(jobs: list[_Job]) -> None:
    seen: dict[tuple[str, str], int] = defaultdict(int)
    for job in jobs:
        key = (job.cls.name, job.name)
        seen[key] += 1
        if seen[key] > 1:
            job.name = f"{job.name}-{_sha1(job.origin.encode())[:6]}"


def _captions(job: _Job) -> list[str]:
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


def _collect(
    cmap: ClassMap, opened: _Sources, skip_missing: bool
) -> tuple[list[_Job], list[str], list[dict[str, str]]]:
    missing = sorted(name for name, pkg in cmap.packages.items() if not pkg.root.exists())
    if missing and not skip_missing:
        raise FileNotFoundError(
            f"Debian packages not installed: {', '.join(missing)}; install them with "
            f"`apt-get install {' '.join(missing)}` (or `make venv`), or pass skip_missing=True"
        )
    jobs: list[_Job] = []
    skipped: list[dict[str, str]] = []
    rate = cmap.process.sample_rate
    for cls in cmap.classes.values():
        for ex in cls.excluded:
            if ex.package not in missing and not _exists(cmap.packages[ex.package], ex.rcc, ex.file, opened):
                where = f"{ex.rcc}:{ex.file}" if ex.rcc else ex.file
                reason = "excluded file not found; fix the class map"
                skipped.append({"class": cls.name, "source": where, "reason": reason})
        for src in cls.sources:
            pkg = cmap.packages[src.package]
            if pkg.name in missing:
                continue
            try:
                if src.render is not None:
                    jobs.extend(_render_jobs(cmap, cls, src, pkg, opened))
                else:
                    jobs.extend(_file_jobs(cls, src, pkg, opened, rate))
            except (FileNotFoundError, ValueError, KeyError) as err:
                skipped.append({"class": cls.name, "source": ", ".join(src.files) or pkg.name, "reason": str(err)})
    _unique_names(jobs)
    return jobs, missing, skipped


def check_class_map(class_map: str | Path | ClassMap, *, skip_missing: bool = False) -> dict[str, Any]:
    """Resolve every source of a class map without decoding audio.

    Returns:
        ``{"planned": {class: clips before trimming and de-duplication}, "missing_packages": [...],
        "problems": [{"class", "source", "reason"}]}`` (globs that match nothing, exclusions that name
        no file, unreadable archives).
    """
    cmap = class_map if isinstance(class_map, ClassMap) else load_class_map(class_map)
    jobs, missing, problems = _collect(cmap, _Sources(cmap), skip_missing)
    planned = {name: 0 for name in cmap.classes}
    for job in jobs:
        planned[job.cls.name] += 1
    return {"planned": planned, "missing_packages": missing, "problems": problems}


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
    from tqdm.auto import tqdm

    start = time.perf_counter()
    cmap = class_map if isinstance(class_map, ClassMap) else load_class_map(class_map)
    cfg = cmap.process
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    previous = {} if force else _load_previous(out)
    opened = _Sources(cmap)
    jobs, missing, skipped = _collect(cmap, opened, skip_missing)

    made: list[tuple[_Job, ClipRecord]] = []
    reused = 0
    for job in tqdm(jobs, desc=f"building {cmap.name}", unit="clip", disable=not progress):
        rel = f"{CLIPS_DIR}/{job.cls.name}/{job.name}.flac"
        fp = _fingerprint(job, cfg)
        old = previous.get(rel)
        if old is not None and old.fingerprint == fp and (out / rel).is_file():
            duration, stats = old.duration, old.stats
            reused += 1
        else:
            try:
                wave = job.read()
                if job.segment is not None:
                    a, b = (round(t * cfg.sample_rate) for t in job.segment)
                    wave = wave[a:b]
                clip, stats = process_clip(wave, cfg)
            except ValueError as err:
                skipped.append({"class": job.cls.name, "source": job.origin, "reason": str(err)})
                continue
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
        made.append((job, record))

    duplicates = _drop_duplicates(out, made, cfg.sample_rate)
    made = [(j, r) for j, r in made if r.audio not in {d["dropped"] for d in duplicates}]
    records, dropped = _split(cmap, made)

    keep = {r.audio for r in records}
    for path in (out / CLIPS_DIR).rglob("*.flac"):
        if path.relative_to(out).as_posix() not in keep:
            path.unlink()
    for folder in (out / CLIPS_DIR).iterdir() if (out / CLIPS_DIR).is_dir() else ():
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
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
    )
    atomic_write_json(out / SUMMARY_NAME, _summary(cmap, result))
    return result


def _drop_duplicates(out: Path, made: list[tuple[_Job, ClipRecord]], rate: int) -> list[dict[str, Any]]:
    """Near-identical clips within a class from different recordings: keep the first listed."""
    by_class: dict[str, list[tuple[str, float, torch.Tensor, str]]] = defaultdict(list)
    for job, rec in made:
        if job.source.render is not None:
            continue  # rendered notes differ by construction (key, velocity, program)
        wave, _ = sf.read(out / rec.audio, dtype="float32")
        by_class[rec.cls].append((rec.audio, rec.duration, signature(torch.from_numpy(wave), rate), rec.group))
    found = []
    for items in by_class.values():
        group = {key: g for key, _, _, g in items}
        pairs = find_duplicates([(k, s, sig) for k, s, sig, _ in items])
        found.extend({"kept": a, "dropped": b, "correlation": r} for a, b, r in pairs if group[a] != group[b])
    return found


def _split(cmap: ClassMap, made: list[tuple[_Job, ClipRecord]]) -> tuple[list[ClipRecord], list[dict[str, str]]]:
    by_class: dict[str, list[tuple[_Job, ClipRecord]]] = defaultdict(list)
    for job, rec in made:
        by_class[rec.cls].append((job, rec))
    records: list[ClipRecord] = []
    dropped: list[dict[str, str]] = []
    for name in cmap.classes:
        items = by_class.get(name, [])
        if len(items) < cmap.min_clips:
            dropped.append({"class": name, "reason": f"{len(items)} clips, fewer than min_clips={cmap.min_clips}"})
            continue
        fixed = {job.group: job.source.split for job, _ in items if job.source.split}
        try:
            splits = assign_splits([r.group for _, r in items], cmap.test_fraction, salt=name, fixed=fixed)
        except ValueError as err:
            dropped.append({"class": name, "reason": str(err)})
            continue
        for _, rec in items:
            rec.split = splits[rec.group]
            records.append(rec)
    return records, dropped


def _write_outputs(out: Path, cmap: ClassMap, records: list[ClipRecord]) -> None:
    lines = {r.audio: json.dumps(r.to_json(), ensure_ascii=False) for r in records}
    atomic_write_text(out / METADATA_NAME, "".join(f"{line}\n" for line in lines.values()))
    for split in ("train", "test"):
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
            classes[name] = {"label": spec.label, "kind": spec.kind, **counts[name], "packages": packages}
    return {
        "name": cmap.name,
        "clips": len(result.records),
        "train": sum(c["train"] for c in counts.values()),
        "test": sum(c["test"] for c in counts.values()),
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
    """A plain-text table: one row per class with its train/test clip counts, then totals and problems."""
    counts = result.counts()
    kinds = {r.cls: r.kind for r in result.records}
    width = max([len(c) for c in counts] + [5])
    lines = [f"{'class':{width}s}  {'kind':10s} {'train':>5s} {'test':>5s} {'total':>5s}"]
    for name, c in counts.items():
        lines.append(f"{name:{width}s}  {kinds[name]:10s} {c['train']:5d} {c['test']:5d} {c['train'] + c['test']:5d}")
    n_train = sum(c["train"] for c in counts.values())
    n_test = sum(c["test"] for c in counts.values())
    by_kind = defaultdict(int)
    for name in counts:
        by_kind[kinds[name]] += 1
    lines.append(f"{'total':{width}s}  {'':10s} {n_train:5d} {n_test:5d} {n_train + n_test:5d}")
    lines.append(
        f"{len(counts)} classes ({', '.join(f'{n} {k}' for k, n in sorted(by_kind.items()))}); "
        f"{result.reused} clips reused; {result.seconds:.1f} s"
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
