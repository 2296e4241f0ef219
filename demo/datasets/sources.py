"""Resolve a class map's sources into clip jobs: matched package files (plain or inside Qt resource
archives, cut into segments) and notes rendered from a SoundFont, each with its labels, license and a key
of its content. Nothing is decoded here; a job's ``read`` decodes (or renders) its audio when called.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import soundfile as sf
import torch

from clapkit.audio import load_audio
from clapkit.tts import Synthesizer, Utterance, plan_utterances, speed_word
from demo.datasets.classmap import ClassMap, ClassSpec, PackageSpec, SourceSpec
from demo.datasets.curation import plan_segments
from demo.datasets.licenses import Dep5, parse_dep5
from demo.datasets.rcc import RccArchive
from demo.datasets.render import NoteRenderer, PatchRenderer, note_name, register

__all__ = ["Job", "Sources", "collect_jobs", "sha1_hex"]


#: Velocities below this are captioned "soft", the rest "loud".
SOFT_BELOW = 80


@dataclass
class Job:
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


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "clip"


def sha1_hex(data: bytes) -> str:
    """The SHA-1 of ``data`` in hex (content keys, fingerprints, stable picks)."""
    return hashlib.sha1(data).hexdigest()


class Sources:
    """Opens package files, Qt resource archives and SoundFonts once per build."""

    def __init__(self, cmap: ClassMap) -> None:
        self.cmap = cmap
        self._rcc: dict[Path, RccArchive] = {}
        self._dep5: dict[str, Dep5 | None] = {}
        self._renderers: dict[Path, NoteRenderer | PatchRenderer] = {}
        self._synthesizers: dict[str, Synthesizer] = {}
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

    def renderer(self, package: PackageSpec) -> NoteRenderer | PatchRenderer:
        path = package.instrument_file
        assert path is not None
        if path not in self._renderers:
            kind = PatchRenderer if package.patches else NoteRenderer
            self._renderers[path] = kind(path, self.cmap.process.sample_rate)
        return self._renderers[path]

    def synthesizer(self, program: str) -> Synthesizer:
        if program not in self._synthesizers:
            self._synthesizers[program] = Synthesizer(program)
        return self._synthesizers[program]

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


def _exists(package: PackageSpec, rcc: str | None, relative: str, opened: Sources) -> bool:
    if rcc is None:
        return (package.root / relative).is_file()
    archive = package.root / rcc
    return archive.is_file() and relative in opened.rcc(archive)


def _pick(paths: list[str], max_files: int | None) -> list[str]:
    if max_files is None or len(paths) <= max_files:
        return paths
    return sorted(sorted(paths, key=lambda p: sha1_hex(p.encode()))[:max_files])


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


def _file_jobs(cls: ClassSpec, src: SourceSpec, pkg: PackageSpec, opened: Sources, rate: int) -> Iterator[Job]:
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
            yield Job(
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
                content_key=sha1_hex(raw),
                read=read,
            )


def _render_captions(cmap: ClassMap, cls: ClassSpec, drums: bool, values: dict[str, Any]) -> list[str]:
    templates = cmap.render_captions.get("drums" if drums else "pitched", ())
    return [t.format(label=cls.label, **values) for t in templates]


def _render_jobs(cmap: ClassMap, cls: ClassSpec, src: SourceSpec, pkg: PackageSpec, opened: Sources) -> Iterator[Job]:
    """Jobs of a ``render`` source: one per key and velocity; both velocities of a key share a group."""
    spec = src.render
    sf2 = pkg.instrument_file
    assert spec is not None and sf2 is not None
    if not sf2.is_file():
        raise FileNotFoundError(
            f"classes.{cls.name}: {'patch configuration' if pkg.patches else 'SoundFont'} {sf2} not found"
        )
    renderer = opened.renderer(pkg)
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
            origin = f"{pkg.name}:{sf2.name}#{what},key={key},velocity={vel}"
            # A patch set's notes depend on the patch file the configuration maps, besides the configuration.
            patch = (
                renderer.patch(0 if spec.drums else spec.program, spec.bank, spec.drums, key) if pkg.patches else None
            )
            hashes = [opened.file_hash(sf2)] + (
                [opened.file_hash(patch)] if patch is not None and patch.is_file() else []
            )

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

            yield Job(
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
                license=opened.license(pkg, sf2.name),
                content_key=sha1_hex(json.dumps([*hashes, params], sort_keys=True).encode()),
                read=read,
            )


def _tts_jobs(cmap: ClassMap, cls: ClassSpec, src: SourceSpec, pkg: PackageSpec, opened: Sources) -> Iterator[Job]:
    """Jobs of a ``tts`` source: one per planned utterance; the renders of one voice share a group."""
    spec = src.tts
    assert spec is not None and pkg.synthesizer is not None
    synth = opened.synthesizer(pkg.synthesizer)
    pitches = spec.pitches or (None,)
    utterances = plan_utterances(spec.text, spec.voices, spec.rates, pitches, spec.max_renders)
    rate = cmap.process.sample_rate  # a class cannot override the rate
    templates = cmap.render_captions.get("speech", ())
    for utt in utterances:
        attributes = {"text": utt.text, "synthesizer": pkg.synthesizer, "voice": utt.voice}
        attributes |= {"speech_rate": utt.rate, "voice_pitch": utt.pitch, "speed": speed_word(utt.rate)}
        origin = f"{pkg.name}:{utt.voice}#text={utt.text!r},rate={utt.rate},pitch={utt.pitch}"

        def read(utt: Utterance = utt) -> torch.Tensor:
            return synth.render(utt, rate)

        yield Job(
            cls=cls,
            source=src,
            package=pkg,
            origin=origin,
            source_file=synth.path,
            name=f"{pkg.short}-{_slug(utt.text)}-{_slug(utt.tag)}",
            group=f"{pkg.name}:{utt.voice}:{_slug(utt.text)}",
            segment=None,
            captions=list(src.captions) + [t.format(label=cls.label, **attributes) for t in templates],
            attributes={**attributes, **src.attributes},
            license=opened.license(pkg, pkg.synthesizer),
            content_key=sha1_hex(json.dumps([synth.version(), asdict(utt)], sort_keys=True).encode()),
            read=read,
        )


def _unique_names(jobs: list[Job]) -> None:
    seen: dict[tuple[str, str], int] = defaultdict(int)
    for job in jobs:
        key = (job.cls.name, job.name)
        seen[key] += 1
        if seen[key] > 1:
            job.name = f"{job.name}-{sha1_hex(job.origin.encode())[:6]}"


def collect_jobs(
    cmap: ClassMap, opened: Sources, skip_missing: bool
) -> tuple[list[Job], list[str], list[dict[str, str]]]:
    """Every job of the class map; the packages not installed; the sources left out, with the reason.

    Raises:
        FileNotFoundError: a package is not installed and ``skip_missing`` is off.
    """
    missing = sorted(name for name, pkg in cmap.packages.items() if not pkg.installed())
    if missing and not skip_missing:
        # A patch set plays through TiMidity++, a package of its own that the patch package does not pull in.
        player = ["timidity"] if any(cmap.packages[n].patches for n in missing) and not shutil.which("timidity") else []
        raise FileNotFoundError(
            f"Debian packages not installed: {', '.join(missing + player)}; install them with "
            f"`apt-get install {' '.join(missing + player)}` (or `make venv`), or pass skip_missing=True"
        )
    jobs: list[Job] = []
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
                elif src.tts is not None:
                    jobs.extend(_tts_jobs(cmap, cls, src, pkg, opened))
                else:
                    jobs.extend(_file_jobs(cls, src, pkg, opened, rate))
            except (FileNotFoundError, ValueError, KeyError) as err:
                what = ", ".join(src.files) or (f"{pkg.name}: {src.tts.text!r}" if src.tts else pkg.name)
                skipped.append({"class": cls.name, "source": what, "reason": str(err)})
    _unique_names(jobs)
    return jobs, missing, skipped
