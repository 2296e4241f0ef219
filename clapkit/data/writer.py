"""Write training shards: audio files + captions → tar shards of ``<key>.flac`` + ``<key>.json`` and a manifest.

A record with a ``counterfactual_audio`` file also gets a ``<key>.counterfactual.flac`` member, encoded like
the main audio (see :mod:`clapkit.data.schema`).

Encoding (decode → mono → resample → FLAC) runs in a process pool; webdataset's ``ShardWriter``
cuts the shards by size and count. The write is resumable: the manifest is rewritten after every
finished shard, a rerun with the same inputs and settings skips the finished shards and rewrites
the one that was interrupted. Shards are written as ``*.tar.partial`` and renamed when complete.
Inputs that cannot be used (unreadable audio, empty captions, bad lines) are skipped and listed in
``report.json``; so are records whose counterfactual audio cannot be used.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import io
import json
import logging
import os
import re
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import webdataset as wds

from clapkit.audio import load_audio
from clapkit.data.inputs import InputRecord
from clapkit.data.schema import (
    COUNTERFACTUAL_FIELD,
    COUNTERFACTUAL_PREFIX,
    EXTRA_AUDIO_FIELD,
    MANIFEST_NAME,
    REPORT_NAME,
    Manifest,
    SampleMeta,
    ShardInfo,
    load_manifest,
)
from clapkit.io import atomic_write_json
from clapkit.progress import progress_bar
from clapkit.units import parse_bytes

__all__ = ["WriterConfig", "parse_size", "shard_key", "write_shards"]

log = logging.getLogger(__name__)

SHARD_PATTERN = "shard-%06d.tar"
PARTIAL_SUFFIX = ".partial"
_SHARD_NAME = re.compile(r"^shard-\d{6}\.tar(\.partial)?$")
_SUBTYPES = {16: "PCM_16", 24: "PCM_24"}


@dataclass
class WriterConfig:
    """How shards are written.

    Attributes:
        shard_size: Bytes after which a shard is closed (it may exceed this by one sample).
            256 MB ≈ 500 ten-second clips at 48 kHz (≈ 0.5 MB of 16-bit FLAC each).
        max_count: Samples per shard at most.
        sample_rate: Hz of the stored audio (mono); ``None`` keeps each file's own rate. Storing at the
            training rate means the reader never resamples.
        bits: FLAC sample depth, 16 or 24.
        compression: FLAC compression on libsndfile's 0-1 scale (FLAC levels 0-8). Level 0 decodes ~15 %
            faster than the default level 5 for ~2 % more bytes; shards are decoded every epoch, written once.
        workers: Encoding processes; ``0`` encodes in this process.
        require_captions: Reject samples without a caption (turn off for samples that carry other
            annotations, e.g. a ``conversation``).
        counterfactual_audio: Store each record's ``counterfactual_audio`` file as its ``counterfactual.flac``
            member (at the sample rate of its main audio); ``False`` keeps only the file name in the metadata.
    """

    shard_size: int = 256_000_000
    max_count: int = 100_000
    sample_rate: int | None = 48_000
    bits: int = 16
    compression: float = 0.0
    workers: int = 0
    require_captions: bool = True
    counterfactual_audio: bool = True

    def __post_init__(self) -> None:
        if self.bits not in _SUBTYPES:
            raise ValueError(f"bits={self.bits}: FLAC shards store 16 or 24 bits")
        if self.shard_size <= 0 or self.max_count <= 0:
            raise ValueError(f"shard_size ({self.shard_size}) and max_count ({self.max_count}) must be positive")
        if not 0.0 <= self.compression <= 1.0:
            raise ValueError(f"compression={self.compression}: give a FLAC compression between 0.0 and 1.0")
        if self.sample_rate is not None and self.sample_rate <= 0:
            raise ValueError(f"sample_rate={self.sample_rate}: give a rate in Hz, or None to keep each file's rate")


def parse_size(text: str | int) -> int:
    """A shard size in bytes: ``"256MB"`` → 256_000_000, ``"1GiB"`` → 2^30 (``clapkit.units.parse_bytes``).

    Raises:
        ValueError: not a size; the message names the text and the valid forms.
    """
    return parse_bytes(text, "shard size")


def shard_key(index: int) -> str:
    """The sample key of input record ``index`` (no dots: webdataset splits keys at the first dot)."""
    return f"{index:09d}"


# ---------------------------------------------------------------------------------------------------- encoding


def _init_worker() -> None:
    # One thread per encoding process: the pool is the parallelism (and libgomp is not fork-safe with a team).
    import torch

    torch.set_num_threads(1)


def _flac(wave: np.ndarray, rate: int, config: WriterConfig) -> bytes:
    buf = io.BytesIO()
    # libsndfile wraps out-of-range floats around when converting to integers: clip first.
    sf.write(
        buf,
        np.clip(wave, -1.0, 1.0),
        rate,
        format="FLAC",
        subtype=_SUBTYPES[config.bits],
        compression_level=config.compression,
    )
    return buf.getvalue()


def encode_record(record: InputRecord, config: WriterConfig) -> dict[str, bytes]:
    """Decode, validate and encode one record.

    Returns:
        The sample's members by extension: ``flac`` and ``json``, ``counterfactual.flac`` when the record
        names counterfactual audio (and ``config.counterfactual_audio`` is on), and ``1.flac``, ``2.flac`` … for
        the files of its ``extra_audio`` (the further clips of a multi-clip conversation).

    Raises:
        ValueError: unreadable audio (or counterfactual audio) or invalid metadata; the message names the input.
    """
    if record.error:
        raise ValueError(record.error)
    meta = SampleMeta.from_dict(record.fields, record.origin)
    if config.require_captions and not meta.captions:
        raise ValueError(f"{record.origin}: no caption; add one (or a .txt/.json sidecar, or a label folder)")
    rate = config.sample_rate
    if rate is None:
        try:
            rate = sf.info(record.audio).samplerate
        except (sf.LibsndfileError, RuntimeError, OSError) as err:
            raise ValueError(f"{record.audio}: cannot read audio ({err})") from err
    wave = load_audio(record.audio, rate).numpy()  # [T] mono float32
    members = {"flac": _flac(wave, rate, config)}
    counterfactual = meta.extra.get(COUNTERFACTUAL_FIELD)
    if counterfactual is not None and config.counterfactual_audio:
        try:
            other = load_audio(counterfactual, rate).numpy()  # [T'] mono float32
        except ValueError as err:
            raise ValueError(f"{record.origin or record.audio}: counterfactual audio: {err}") from err
        members[COUNTERFACTUAL_PREFIX + "flac"] = _flac(other, rate, config)
    for number, extra in enumerate(meta.extra.get(EXTRA_AUDIO_FIELD) or [], start=1):
        try:
            more = load_audio(extra, rate).numpy()  # [T''] mono float32
        except ValueError as err:
            raise ValueError(f"{record.origin or record.audio}: extra audio {number}: {err}") from err
        members[f"{number}.flac"] = _flac(more, rate, config)
    meta.duration = round(len(wave) / rate, 6)
    meta.source = meta.source or record.audio
    members["json"] = meta.to_json_bytes()
    return members


def _encode_task(record: InputRecord, config: WriterConfig) -> dict[str, bytes] | str:
    try:
        return encode_record(record, config)
    except ValueError as err:
        return str(err)


def _encoded(
    records: Sequence[InputRecord], start: int, config: WriterConfig
) -> Iterator[tuple[int, dict[str, bytes] | str]]:
    """(index, the sample's members or the reason it was skipped), in input order, encoded in parallel."""
    if config.workers <= 0:
        for index in range(start, len(records)):
            yield index, _encode_task(records[index], config)
        return
    window = config.workers * 4  # bounded look-ahead: memory stays flat on millions of inputs
    with cf.ProcessPoolExecutor(config.workers, initializer=_init_worker) as pool:
        pending: deque[tuple[int, cf.Future]] = deque()
        index = start
        try:
            while index < len(records) or pending:
                while index < len(records) and len(pending) < window:
                    pending.append((index, pool.submit(_encode_task, records[index], config)))
                    index += 1
                i, future = pending.popleft()
                yield i, future.result()
        finally:
            for _, future in pending:
                future.cancel()


# ---------------------------------------------------------------------------------------------------- resume


def _fingerprint(records: Sequence[InputRecord], config: WriterConfig) -> str:
    settings = asdict(config)
    settings.pop("workers")  # the number of processes does not change the output
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for r in records:
        h.update(json.dumps([r.audio, r.fields, r.error], sort_keys=True, default=str).encode())
    return h.hexdigest()


def _finished_shards(out: Path, manifest: Manifest) -> list[ShardInfo]:
    """The manifest's shards up to the first one missing or changed on disk."""
    done = []
    for shard in manifest.shards:
        path = out / shard.name
        if not path.is_file() or path.stat().st_size != shard.bytes:
            log.warning("%s: missing or changed; rewriting from this shard on", path)
            break
        done.append(shard)
    return done


def _remove_shards(out: Path) -> None:
    for path in out.iterdir():
        if _SHARD_NAME.match(path.name):
            path.unlink()
    for name in (MANIFEST_NAME, REPORT_NAME):
        (out / name).unlink(missing_ok=True)


def _prepare(out: Path, fingerprint: str, overwrite: bool) -> tuple[list[ShardInfo], list[dict[str, Any]]]:
    """Finished shards and report entries to keep from an earlier run into ``out``."""
    if overwrite:
        _remove_shards(out)
        return [], []
    if not (out / MANIFEST_NAME).exists():
        if any(_SHARD_NAME.match(p.name) for p in out.iterdir()):
            raise ValueError(f"{out}: holds shards but no {MANIFEST_NAME}; choose another --out or pass --overwrite")
        return [], []
    manifest = load_manifest(out)
    if manifest.fingerprint != fingerprint:
        raise ValueError(
            f"{out}: holds shards written from other inputs or settings; choose another --out or pass --overwrite"
        )
    done = _finished_shards(out, manifest)
    resume_at = done[-1].end_index if done else 0
    report_path = out / REPORT_NAME
    report = json.loads(report_path.read_text())["skipped"] if report_path.exists() else []
    return done, [e for e in report if e["index"] < resume_at]


# ---------------------------------------------------------------------------------------------------- writing


class _Run:
    """State of one write: the shard list, the report, and the ``ShardWriter`` callback."""

    def __init__(
        self, out: Path, manifest: Manifest, skipped: list[dict[str, Any]], records: Sequence[InputRecord]
    ) -> None:
        self.out, self.manifest, self.skipped, self.records = out, manifest, skipped, records
        self.first_index = manifest.shards[-1].end_index if manifest.shards else 0
        self.next_index = self.first_index
        self.count = 0
        self.aborted = False

    def skip(self, index: int, reason: str) -> None:
        record = self.records[index]
        self.skipped.append({"index": index, "origin": record.origin, "audio": record.audio, "reason": reason})
        log.info("skipped %s", reason)

    def finish_shard(self, partial: str) -> None:
        """``ShardWriter`` ``post`` hook: rename the finished shard into place and record it."""
        path = Path(partial)
        if self.aborted or self.count == 0:
            if self.count == 0:
                path.unlink(missing_ok=True)
            return
        _fsync(path)
        final = path.with_name(path.name.removesuffix(PARTIAL_SUFFIX))
        os.replace(path, final)
        info = ShardInfo(final.name, self.count, final.stat().st_size, self.first_index, self.next_index)
        self.manifest.shards.append(info)
        self.first_index, self.count = self.next_index, 0
        self.save()

    def save(self) -> None:
        self.manifest.skipped = len(self.skipped)
        atomic_write_json(self.out / REPORT_NAME, {"skipped": self.skipped})
        atomic_write_json(self.out / MANIFEST_NAME, self.manifest.to_dict())


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_shards(
    records: Sequence[InputRecord],
    out_dir: str | Path,
    config: WriterConfig | None = None,
    *,
    source: str = "",
    overwrite: bool = False,
    progress: bool = True,
) -> Manifest:
    """Encode ``records`` into tar shards under ``out_dir``, resuming an earlier interrupted write.

    Args:
        records: Inputs, e.g. from :func:`clapkit.data.inputs.read_inputs`; their order fixes the keys.
        out_dir: Shard folder (created). It also receives ``manifest.json`` and ``report.json``.
        config: Shard size, audio format and parallelism.
        source: What the records came from, stored in the manifest.
        overwrite: Delete shards already in ``out_dir`` instead of resuming.
        progress: Show a progress bar.

    Returns:
        The final manifest.

    Raises:
        ValueError: ``out_dir`` holds shards from other inputs or settings (and ``overwrite`` is off).
    """
    config = config or WriterConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = _fingerprint(records, config)
    done, skipped = _prepare(out, fingerprint, overwrite)
    manifest = Manifest(
        shards=done,
        num_inputs=len(records),
        sample_rate=config.sample_rate,
        bits=config.bits,
        fingerprint=fingerprint,
        source=source,
    )
    run = _Run(out, manifest, skipped, records)
    for path in out.glob("*" + PARTIAL_SUFFIX):  # an interrupted shard is rewritten from its first sample
        path.unlink()
    writer: wds.ShardWriter | None = None
    bar = progress_bar(total=len(records), initial=run.first_index, unit="file", desc="shards", disable=not progress)
    try:
        for index, result in _encoded(records, run.first_index, config):
            run.next_index = index  # a shard closed by this write ends before this record
            if isinstance(result, str):
                run.skip(index, result)
            else:
                if writer is None:
                    writer = wds.ShardWriter(
                        str(out / (SHARD_PATTERN + PARTIAL_SUFFIX)),
                        maxcount=config.max_count,
                        maxsize=config.shard_size,
                        post=run.finish_shard,
                        start_shard=len(run.manifest.shards),
                        verbose=0,
                        user="clapkit",
                        group="clapkit",
                        mtime=0,  # reproducible bytes: a resumed shard equals an uninterrupted one
                    )
                writer.write({"__key__": shard_key(index), **result})
                run.count += 1
            bar.update(1)
            bar.set_postfix(shards=len(run.manifest.shards), skipped=len(run.skipped), refresh=False)
        run.next_index = len(records)
        if writer is not None:
            writer.close()
    except BaseException:
        run.aborted = True  # keep the partial shard out of the manifest
        if writer is not None:
            writer.close()
        raise
    finally:
        bar.close()
    run.manifest.complete = True
    run.save()
    return run.manifest
