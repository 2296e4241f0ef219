"""The reviewed class map of a dataset built from installed files: packages, classes and their sources.

A class map is a JSON file (see ``resources/debian_sounds.json``)::

    {"name": ..., "process": {ProcessConfig fields}, "test_fraction": 0.25, "min_clips": 3,
     "render_captions": {"pitched": [templates], "drums": [templates]},
     "packages": {name: {"root": dir, "short": tag, "license": fallback, "copyright": DEP-5 file,
                         "dep5_map": [[installed prefix, upstream prefix]], "soundfont": file,
                         "patches": TiMidity++ configuration file, "synthesizer": program,
                         "shares_samples_with": package, "held_out": false}},
     "classes": {name: {"label": text, "kind": "event" | "instrument" | "speech", "captions": [...],
                        "note": review note, "sources": [source, ...], "excluded": [exclusion, ...],
                        "cross_source_package": package | false,
                        "process": {ProcessConfig fields overridden for this class}}},
     "rejected": [{"class": ..., "reason": ...}]}

A source takes files from one package: ``{"package", "files": [glob, ...]}`` (paths under the
package root, or members of ``"rcc"`` for Qt resource files), with optional ``segments`` (hand-cut
``[start, end]`` seconds), ``chunk_seconds``, ``captions``, ``attributes``, ``group`` (clips that
share a group share a split), ``split`` (fixed ``"train"`` / ``"test"``), ``max_files`` and ``note``;
or renders notes: ``{"package", "render": {"program", "keys", "velocities", "drums", ...}}`` (from the package's
``"soundfont"`` with tinysoundfont, or from its ``"patches"``, GUS patches mapped by a TiMidity++ configuration,
with ``timidity``);
or speaks a text: ``{"package", "tts": {"text", "voices", "rates", "pitches", "max_renders"}}`` (the
package names its ``"synthesizer"``, ``espeak-ng`` or ``flite``; see :mod:`clapkit.tts`).
A class may override processing settings with ``"process": {...}`` (e.g. a lower ``min_seconds``
for single spoken words).
An exclusion ``{"package", ["rcc"], "file", "reason"}`` removes a file from the class's globs and
records why it was left out.

``cross_source_package`` decides which package of a class with clips from several packages is held out as
the cross-source split (see ``curation.assign_source_splits``): left out, the builder chooses one; a package
name pins that one; ``false`` (or ``null``) holds out none. A package whose recordings are partly another's
(``"shares_samples_with"``: one SoundFont built from another's samples) is not a source of its own: the two are
one source for the split, held out together, so the cross split never hears audio the class trained on.
A package with ``"held_out": false`` is never chosen as the held-out package: its clips only add a source
to train (and test in-source) on, so adding it leaves the cross split of the other packages as it was.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clapkit.config import from_mapping
from clapkit.tts import PITCH_RANGES, SYNTHESIZERS
from demo.datasets.curation import ProcessConfig

__all__ = ["ClassMap", "ClassSpec", "Exclusion", "PackageSpec", "RenderSpec", "SourceSpec", "TtsSpec", "load_class_map"]

KINDS = ("event", "instrument", "speech")
SPLITS = ("train", "test")


@dataclass(frozen=True)
class PackageSpec:
    """Where a Debian package's files are and under which license they come; ``shares_samples_with``: the package
    whose recordings it reuses (one source with it in the cross split); ``held_out``: whether the split may hold
    it out (False: it only ever trains or tests in-source); ``patches``: a TiMidity++ configuration of GUS
    patches under ``root`` to render notes from (as ``soundfont``, played with ``timidity``)."""

    name: str
    root: Path
    short: str
    license: str
    copyright: Path | None = None
    dep5_map: tuple[tuple[str, str], ...] = ()
    soundfont: str | None = None
    synthesizer: str | None = None
    shares_samples_with: str | None = None
    patches: str | None = None
    held_out: bool = True

    @property
    def instrument_file(self) -> Path | None:
        """The SoundFont or patch configuration notes are rendered from, ``None`` if the package renders none."""
        name = self.soundfont or self.patches
        return self.root / name if name else None

    @property
    def source(self) -> str:
        """The source this package's clips belong to in the cross split: the package whose samples it shares,
        or itself."""
        return self.shares_samples_with or self.name

    def installed(self) -> bool:
        """Whether the package is there: its root, its SoundFont or patch configuration (and ``timidity`` to play
        patches), its synthesizer program."""
        if not self.root.exists():
            return False
        if self.instrument_file is not None and not self.instrument_file.is_file():
            return False
        if self.patches is not None and shutil.which("timidity") is None:
            return False
        return self.synthesizer is None or shutil.which(self.synthesizer) is not None

    def upstream_path(self, relative: str) -> str:
        """Map an installed relative path to its path in the DEP-5 copyright file."""
        for installed, upstream in self.dep5_map:
            if relative.startswith(installed):
                return upstream + relative[len(installed) :]
        return relative


@dataclass(frozen=True)
class RenderSpec:
    """Notes rendered from a SoundFont: every key at every velocity, ``hits`` times ``interval_seconds`` apart."""

    program: int
    keys: tuple[int, ...]
    velocities: tuple[int, ...]
    bank: int = 0
    drums: bool = False
    hold_seconds: float = 1.0
    release_seconds: float = 1.0
    hits: int = 1
    interval_seconds: float = 0.25


@dataclass(frozen=True)
class TtsSpec:
    """A text spoken by a synthesizer: up to ``max_renders`` of the voice × rate × pitch combinations.

    ``rates`` are speed factors (1.0 = the program's normal speed); ``pitches`` are in the program's
    own unit (espeak-ng 0-99, flite F0 in Hz), empty for the voices' own pitch.
    """

    text: str
    voices: tuple[str, ...]
    rates: tuple[float, ...] = (1.0,)
    pitches: tuple[int, ...] = ()
    max_renders: int | None = None


@dataclass(frozen=True)
class SourceSpec:
    """One entry of a class's ``sources`` list."""

    package: str
    files: tuple[str, ...] = ()
    rcc: str | None = None
    render: RenderSpec | None = None
    tts: TtsSpec | None = None
    segments: tuple[tuple[float, float], ...] = ()
    chunk_seconds: float | None = None
    captions: tuple[str, ...] = ()
    attributes: Mapping[str, Any] = field(default_factory=dict)
    group: str | None = None
    split: str | None = None
    max_files: int | None = None
    note: str = ""


@dataclass(frozen=True)
class Exclusion:
    """A file deliberately left out of a class, with the reason found in review."""

    package: str
    file: str
    reason: str
    rcc: str | None = None


@dataclass(frozen=True)
class ClassSpec:
    name: str
    label: str
    kind: str
    captions: tuple[str, ...]
    sources: tuple[SourceSpec, ...]
    note: str = ""
    excluded: tuple[Exclusion, ...] = ()
    #: Which package is held out as the cross-source split: True = chosen by the builder, a name = that one,
    #: False = none.
    cross_source: str | bool = True
    process: ProcessConfig | None = None  # None: the class map's


@dataclass(frozen=True)
class ClassMap:
    name: str
    process: ProcessConfig
    test_fraction: float
    min_clips: int
    packages: Mapping[str, PackageSpec]
    classes: Mapping[str, ClassSpec]
    render_captions: Mapping[str, tuple[str, ...]]
    rejected: tuple[Mapping[str, Any], ...] = ()
    path: Path | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)


def _need(obj: Mapping[str, Any], key: str, where: str, kind: type | tuple[type, ...]) -> Any:
    if key not in obj:
        raise ValueError(f"{where}: missing {key!r}")
    value = obj[key]
    if not isinstance(value, kind):
        raise ValueError(f"{where}: {key!r} must be {getattr(kind, '__name__', kind)}, got {type(value).__name__}")
    return value


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError(f"{where}: must be a list of non-empty strings")
    return tuple(v.strip() for v in value)


def _check_keys(obj: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; valid: {sorted(allowed)}")


def _package(name: str, raw: Mapping[str, Any], base: Path) -> PackageSpec:
    where = f"packages.{name}"
    _check_keys(
        raw,
        {"root", "short", "license", "copyright", "dep5_map", "soundfont", "synthesizer", "note"}
        | {"shares_samples_with", "patches", "held_out"},
        where,
    )
    shares = raw.get("shares_samples_with")
    if shares is not None and (not isinstance(shares, str) or shares == name):
        raise ValueError(f"{where}: shares_samples_with must name another package, got {shares!r}")
    if raw.get("soundfont") and raw.get("patches"):
        raise ValueError(f"{where}: give 'soundfont' or 'patches', not both")
    held_out = raw.get("held_out", True)
    if not isinstance(held_out, bool):
        raise ValueError(f"{where}: held_out must be true or false, got {held_out!r}")
    copyright_path = raw.get("copyright")
    synthesizer = raw.get("synthesizer")
    if synthesizer is not None and synthesizer not in SYNTHESIZERS:
        raise ValueError(f"{where}: synthesizer {synthesizer!r} must be one of {SYNTHESIZERS}")
    return PackageSpec(
        name=name,
        root=(base / _need(raw, "root", where, str)).resolve(),
        short=_need(raw, "short", where, str),
        license=_need(raw, "license", where, str),
        copyright=(base / copyright_path) if copyright_path else None,
        dep5_map=tuple((str(a), str(b)) for a, b in raw.get("dep5_map", [])),
        soundfont=raw.get("soundfont"),
        synthesizer=synthesizer,
        shares_samples_with=shares,
        patches=raw.get("patches"),
        held_out=held_out,
    )


def _render(raw: Mapping[str, Any], where: str) -> RenderSpec:
    fields = {
        "program",
        "keys",
        "velocities",
        "bank",
        "drums",
        "hold_seconds",
        "release_seconds",
        "hits",
        "interval_seconds",
    }
    _check_keys(raw, fields, where)
    keys = _need(raw, "keys", where, list)
    velocities = _need(raw, "velocities", where, list)
    if not keys or not velocities:
        raise ValueError(f"{where}: keys and velocities must not be empty")
    return RenderSpec(
        program=int(raw.get("program", 0)),
        keys=tuple(int(k) for k in keys),
        velocities=tuple(int(v) for v in velocities),
        bank=int(raw.get("bank", 0)),
        drums=bool(raw.get("drums", False)),
        hold_seconds=float(raw.get("hold_seconds", 1.0)),
        release_seconds=float(raw.get("release_seconds", 1.0)),
        hits=int(raw.get("hits", 1)),
        interval_seconds=float(raw.get("interval_seconds", 0.25)),
    )


def _numbers(raw: Mapping[str, Any], key: str, where: str, default: list[float]) -> tuple[float, ...]:
    values = raw.get(key, default)
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{where}.{key}: must be a list of numbers, got {values!r}")
    return tuple(values)


def _tts(raw: Mapping[str, Any], where: str, synthesizer: str) -> TtsSpec:
    _check_keys(raw, {"text", "voices", "rates", "pitches", "max_renders"}, where)
    text = _need(raw, "text", where, str).strip()
    if not text:
        raise ValueError(f"{where}: 'text' must not be empty")
    voices = _strings(_need(raw, "voices", where, list), f"{where}.voices")
    if not voices or len(set(voices)) != len(voices):
        raise ValueError(f"{where}.voices: give at least one voice, each once")
    rates = tuple(float(r) for r in _numbers(raw, "rates", where, [1.0]))
    if not rates or not all(0.25 <= r <= 4.0 for r in rates):
        raise ValueError(f"{where}.rates: {list(rates)} must be speed factors in 0.25-4.0")
    pitches = tuple(int(p) for p in _numbers(raw, "pitches", where, []))
    low, high = PITCH_RANGES[synthesizer]
    if not all(low <= p <= high for p in pitches):
        raise ValueError(f"{where}.pitches: {list(pitches)} outside {synthesizer}'s range {low}-{high}")
    max_renders = raw.get("max_renders")
    if max_renders is not None and (not isinstance(max_renders, int) or max_renders < 1):
        raise ValueError(f"{where}.max_renders: {max_renders!r} must be a positive integer")
    return TtsSpec(text, voices, rates, pitches, max_renders)


def _source(raw: Mapping[str, Any], where: str, packages: Mapping[str, PackageSpec]) -> SourceSpec:
    allowed = {"package", "files", "rcc", "render", "tts", "segments", "chunk_seconds", "captions", "attributes"}
    _check_keys(raw, allowed | {"group", "split", "max_files", "note"}, where)
    package = _need(raw, "package", where, str)
    if package not in packages:
        raise ValueError(f"{where}: unknown package {package!r}; declared: {sorted(packages)}")
    if sum(key in raw for key in ("files", "render", "tts")) != 1:
        raise ValueError(f"{where}: give exactly one of 'files' (globs), 'render' (notes) or 'tts' (speech)")
    render = _render(raw["render"], f"{where}.render") if "render" in raw else None
    if render is not None and packages[package].instrument_file is None:
        raise ValueError(f"{where}: package {package!r} has no 'soundfont' or 'patches' to render from")
    synthesizer = packages[package].synthesizer
    if "tts" in raw and synthesizer is None:
        raise ValueError(f"{where}: package {package!r} has no 'synthesizer' to speak with")
    tts = _tts(_need(raw, "tts", where, dict), f"{where}.tts", synthesizer) if "tts" in raw else None
    split = raw.get("split")
    if split is not None and split not in SPLITS:
        raise ValueError(f"{where}: split {split!r} must be one of {SPLITS}")
    segments = tuple((float(a), float(b)) for a, b in raw.get("segments", []))
    return SourceSpec(
        package=package,
        files=_strings(raw["files"], f"{where}.files") if "files" in raw else (),
        rcc=raw.get("rcc"),
        render=render,
        tts=tts,
        segments=segments,
        chunk_seconds=raw.get("chunk_seconds"),
        captions=_strings(raw.get("captions", []), f"{where}.captions"),
        attributes=dict(raw.get("attributes", {})),
        group=raw.get("group"),
        split=split,
        max_files=raw.get("max_files"),
        note=raw.get("note", ""),
    )


def _class(
    name: str, raw: Mapping[str, Any], packages: Mapping[str, PackageSpec], process: Mapping[str, Any]
) -> ClassSpec:
    where = f"classes.{name}"
    _check_keys(
        raw, {"label", "kind", "captions", "sources", "note", "excluded", "cross_source_package", "process"}, where
    )
    kind = raw.get("kind", "event")
    if kind not in KINDS:
        raise ValueError(f"{where}: kind {kind!r} must be one of {KINDS}")
    sources = _need(raw, "sources", where, list)
    if not sources:
        raise ValueError(f"{where}: no sources")
    excluded = []
    for i, ex in enumerate(raw.get("excluded", [])):
        ew = f"{where}.excluded[{i}]"
        _check_keys(ex, {"package", "rcc", "file", "reason"}, ew)
        package, file, reason = (_need(ex, key, ew, str) for key in ("package", "file", "reason"))
        excluded.append(Exclusion(package, file, reason, ex.get("rcc")))
    captions = _strings(_need(raw, "captions", where, list), f"{where}.captions")
    if not captions:
        raise ValueError(f"{where}.captions: give at least one caption phrasing")
    specs = tuple(_source(s, f"{where}.sources[{i}]", packages) for i, s in enumerate(sources))
    return ClassSpec(
        name=name,
        label=_need(raw, "label", where, str),
        kind=kind,
        captions=captions,
        sources=specs,
        note=raw.get("note", ""),
        excluded=tuple(excluded),
        cross_source=_cross_source(raw, where, specs),
        process=_class_process(raw, process, where),
    )


def _cross_source(raw: Mapping[str, Any], where: str, sources: tuple[SourceSpec, ...]) -> str | bool:
    """The class's ``cross_source_package``: absent → True (automatic), false / null → False, or a package of its
    sources."""
    if "cross_source_package" not in raw:
        return True
    value = raw["cross_source_package"]
    if value is None or value is False:
        return False
    names = sorted({s.package for s in sources})
    if not isinstance(value, str):
        raise ValueError(f"{where}: cross_source_package must be a package name or false, got {value!r}")
    if value not in names:
        raise ValueError(
            f"{where}: cross_source_package {value!r} is not a package of the class's sources; its packages: {names}"
        )
    if len(names) < 2:
        raise ValueError(
            f"{where}: cross_source_package {value!r} names the class's only package; a cross-source split "
            "needs clips from another package to train and test on (remove the key)"
        )
    return value


def _class_process(raw: Mapping[str, Any], process: Mapping[str, Any], where: str) -> ProcessConfig | None:
    """A class's own processing settings over the class map's; ``None`` when it has none."""
    if "process" not in raw:
        return None
    own = _need(raw, "process", where, dict)
    if "sample_rate" in own:
        raise ValueError(f"{where}.process: 'sample_rate' is the class map's, not a class's")
    return from_mapping(ProcessConfig, {**process, **own}, f"{where}.process")


def load_class_map(source: str | Path | Mapping[str, Any]) -> ClassMap:
    """Read and validate a class map (a JSON path or an already-parsed mapping).

    Relative package roots and copyright paths are relative to the JSON file's folder (absolute
    ones, such as ``/usr/share/...``, are used as they are).

    Raises:
        FileNotFoundError: the JSON file does not exist.
        ValueError: a malformed entry; the message names it (``classes.dog.sources[2]: ...``).
    """
    path = None
    if isinstance(source, Mapping):
        raw, base = source, Path.cwd()
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such class map")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from err
        base = path.parent
    _check_keys(
        raw,
        {"name", "description", "process", "test_fraction", "min_clips", "render_captions", "packages", "classes"}
        | {"rejected"},
        str(path or "class map"),
    )
    packages = {n: _package(n, p, base) for n, p in _need(raw, "packages", "class map", dict).items()}
    for package in packages.values():
        shares = package.shares_samples_with
        if shares is not None and (shares not in packages or packages[shares].shares_samples_with is not None):
            raise ValueError(
                f"packages.{package.name}: shares_samples_with {shares!r} must be a package of the class map that "
                "shares with none itself"
            )
    process = _need(raw, "process", "class map", dict) if "process" in raw else {}
    classes = {n: _class(n, c, packages, process) for n, c in _need(raw, "classes", "class map", dict).items()}
    captions = raw.get("render_captions", {})
    return ClassMap(
        name=raw.get("name", path.stem if path else "dataset"),
        process=from_mapping(ProcessConfig, process, f"{path or 'class map'}: process"),
        test_fraction=float(raw.get("test_fraction", 0.25)),
        min_clips=int(raw.get("min_clips", 3)),
        packages=packages,
        classes=classes,
        render_captions={k: _strings(v, f"render_captions.{k}") for k, v in captions.items()},
        rejected=tuple(raw.get("rejected", [])),
        path=path,
        raw=raw,
    )
