"""Shard reader throughput vs LAION-CLAP's own per-file loading (issue: compositional data, shards).

The same 10 s clips, in the same run:

* ``clapkit reader, 2 workers``: :class:`clapkit.data.reader.ShardReader` over shards written by
  ``clapkit shards write`` (48 kHz 16-bit FLAC), training mode (shuffle buffer, random crop, caption
  sampling, collation), a DataLoader with 2 persistent workers (as in training: they start once, in the
  warm-up pass, outside the timing).
* ``clapkit reader, in process``: the same with no workers (the per-core cost).
* ``laion-clap, source files``: the clips as a user holds them (44.1 kHz WAV), loaded one by one the way
  ``laion_clap.hook.CLAP_Module.get_audio_embedding_from_filelist`` does: ``librosa.load(f, sr=48000)``,
  the int16 round trip, ``laion_clap.training.data.get_audio_features`` (``rand_trunc``, ``repeatpad``).
* ``laion-clap, 48 kHz FLAC files``: the same code over the exact FLAC bytes stored in the shards, one file
  each (no resampling): decoder against the same decoder.
* ``soundfile decode only (floor)``: nothing but decoding those FLAC bytes, held in memory, with soundfile into
  one reused float32 buffer — the part of every row that no loader can avoid.

Besides wall-clock samples/s, each row reports CPU milliseconds per sample (this process and its
DataLoader workers): on a shared machine the wall clock depends on what else runs, the CPU cost does not.
A second table repeats the comparison for 60 s recordings cut to 10 s clips, where the reader decodes
only the clip's window.

Target: the 2-worker reader ≥ 2× LAION-CLAP's per-file loading. Run:
``HF_HUB_OFFLINE=1 python -m benchmarks.bench_reader [--clips 128] [--long-clips 32] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # laion_clap fetches tokenizers at import otherwise

import numpy as np
import soundfile as sf
import torch
import webdataset as wds

from benchmarks.common import machine
from clapkit.data.inputs import InputRecord
from clapkit.data.reader import ReaderConfig, ShardReader
from clapkit.data.writer import WriterConfig, write_shards

SOURCE_RATE = 44_100  # Hz, the clips as stored by the user
RATE = 48_000  # Hz, the model's rate (LAION-CLAP's front end)
CLIP_SECONDS = 10.0
LONG_SECONDS = 60.0


def make_clip(seed: int, seconds: float) -> np.ndarray:
    """Tones under a slow envelope plus a little noise: compresses like real audio, not like white noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(SOURCE_RATE * seconds)) / SOURCE_RATE
    freqs = rng.uniform(100, 4000, 4)
    wave = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 6.3)) for f in freqs) / 4
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.1, 1.0) * t)
    return (0.4 * wave * envelope + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


def prepare(folder: Path, n: int, seconds: float) -> tuple[list[str], list[str], Path, float]:
    """Source WAVs, shards written from them, the shard FLACs as single files, and the writer's files/s."""
    wavs = []
    for i in range(n):
        path = folder / "wav" / f"clip{i:04d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, make_clip(i, seconds), SOURCE_RATE)
        wavs.append(str(path))
    fields = [{"captions": [f"clip {i}", f"sound {i}"], "negatives": ["silence"]} for i in range(n)]
    records = [InputRecord(p, f) for p, f in zip(wavs, fields)]
    shards = folder / "shards"
    start = time.perf_counter()
    write_shards(records, shards, WriterConfig(sample_rate=RATE, workers=2, max_count=32), progress=False)
    write_rate = n / (time.perf_counter() - start)
    flacs = []
    urls = sorted(str(p) for p in shards.glob("*.tar"))
    for sample in wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples()):
        path = folder / "flac" / f"{sample['__key__']}.flac"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(sample["flac"])
        flacs.append(str(path))
    return wavs, flacs, shards, write_rate


def laion_loader(paths: list[str]) -> Callable[[], int]:
    """LAION-CLAP's per-file loading, as in ``CLAP_Module.get_audio_embedding_from_filelist`` (minus the model)."""
    import librosa
    from laion_clap.training.data import float32_to_int16, get_audio_features, int16_to_float32

    audio_cfg = {"sample_rate": RATE, "window_size": 1024, "hop_size": 480, "mel_bins": 64, "fmin": 50, "fmax": 14000}

    def run() -> int:
        for f in paths:
            wave, _ = librosa.load(f, sr=RATE)
            wave = torch.from_numpy(int16_to_float32(float32_to_int16(wave))).float()
            out = get_audio_features({}, wave, int(RATE * CLIP_SECONDS), "rand_trunc", "repeatpad", audio_cfg)
            assert out["waveform"].shape[-1] == int(RATE * CLIP_SECONDS)
        return len(paths)

    return run


def decode_floor(paths: list[str]) -> Callable[[], int]:
    """Decode the FLAC bytes (read into memory once) one by one into a reused buffer: the cost of the decoder alone."""
    blobs = [Path(p).read_bytes() for p in paths]
    buf = np.empty(int(RATE * CLIP_SECONDS), dtype=np.float32)

    def run() -> int:
        for blob in blobs:
            with sf.SoundFile(io.BytesIO(blob)) as f:
                f.read(min(f.frames, len(buf)), dtype="float32", out=buf[: min(f.frames, len(buf))])
        return len(blobs)

    return run


def _register(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: leave the worker's pid where :func:`_cpu_seconds` finds it."""
    Path(tempfile.gettempdir(), f"bench_reader_worker_{os.getppid()}_{worker_id}").write_text(str(os.getpid()))


def clapkit_loader(shards: Path, workers: int, batch_size: int) -> tuple[Callable[[], int], ShardReader]:
    """One training pass per call; with workers, persistent ones (started by the warm-up pass, as in training)."""
    config = ReaderConfig(sample_rate=RATE, clip_seconds=CLIP_SECONDS, batch_size=batch_size, train=True)
    reader = ShardReader(shards, config)
    extra = {"persistent_workers": True, "worker_init_fn": _register} if workers else {}
    loader = reader.loader(num_workers=workers, **extra)

    def run() -> int:
        count = 0
        for batch in loader:
            assert batch["audio"].shape[-1] == config.clip_samples
            count += len(batch["keys"])
        return count

    return run, reader


def _cpu_seconds() -> float:
    """CPU time of this process, its finished children and its live DataLoader workers."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    total = me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime
    for pid_file in Path(tempfile.gettempdir()).glob(f"bench_reader_worker_{os.getpid()}_*"):
        try:
            fields = Path(f"/proc/{pid_file.read_text()}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ValueError):
            continue  # the worker has exited: its time is in RUSAGE_CHILDREN
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    return total


def measure(fns: dict[str, Callable[[], int]], n: int, repeats: int) -> dict[str, tuple[float, float]]:
    """Median (samples/s, CPU ms per sample) of each contender, run in turn so machine noise hits all alike."""
    for name, fn in fns.items():  # warm-up (file cache, imports) and a completeness check
        assert fn() == n, f"{name} did not load every clip"
    walls: dict[str, list[float]] = {k: [] for k in fns}
    cpus: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            cpu, start = _cpu_seconds(), time.perf_counter()
            fn()
            walls[name].append(time.perf_counter() - start)
            cpus[name].append(_cpu_seconds() - cpu)
    return {k: (n / statistics.median(walls[k]), 1000 * statistics.median(cpus[k]) / n) for k in fns}


def table(title: str, results: dict[str, tuple[float, float]], flac_key: str, wav_key: str) -> None:
    flac, wav = results[flac_key][0], results[wav_key][0]
    print(f"\n{title}\n")
    print("| loader | samples/s | CPU ms / sample | × laion-clap (same FLAC) | × laion-clap (source WAV) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, (rate, cpu_ms) in results.items():
        print(f"| {name} | {rate:.1f} | {cpu_ms:.1f} | {rate / flac:.2f}× | {rate / wav:.2f}× |")


def run_case(folder: Path, n: int, seconds: float, batch_size: int, repeats: int) -> tuple[dict, float]:
    wavs, flacs, shards, write_rate = prepare(folder, n, seconds)
    ours2, reader = clapkit_loader(shards, 2, batch_size)
    ours0, _ = clapkit_loader(shards, 0, batch_size)
    fns = {
        "clapkit reader, 2 workers": ours2,
        "clapkit reader, in process": ours0,
        "laion-clap, source files (44.1 kHz WAV)": laion_loader(wavs),
        "laion-clap, 48 kHz FLAC files": laion_loader(flacs),
        "soundfile decode only (floor)": decode_floor(flacs),
    }
    results = measure(fns, n, repeats)
    assert reader.stats.skipped == 0 and reader.stats.as_dict()["shard_errors"] == 0
    for pid_file in Path(tempfile.gettempdir()).glob(f"bench_reader_worker_{os.getpid()}_*"):
        pid_file.unlink()
    return results, write_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=128, help="number of 10 s clips")
    parser.add_argument("--long-clips", type=int, default=32, help="number of 60 s recordings (0: skip)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per contender (median)")
    args = parser.parse_args()
    # Every contender decodes one clip at a time: intra-op threads would only fight over the cores
    # (DataLoader workers run with one thread each anyway).
    torch.set_num_threads(1)
    flac_key, wav_key = "laion-clap, 48 kHz FLAC files", "laion-clap, source files (44.1 kHz WAV)"
    with tempfile.TemporaryDirectory() as tmp:
        results, write_rate = run_case(Path(tmp) / "short", args.clips, CLIP_SECONDS, args.batch_size, args.repeats)
        long_results = None
        if args.long_clips:
            long_results, _ = run_case(Path(tmp) / "long", args.long_clips, LONG_SECONDS, args.batch_size, args.repeats)
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.2f} at the end")
    table(f"{args.clips} clips of {CLIP_SECONDS:g} s → 10 s clips", results, flac_key, wav_key)
    if long_results:
        table(f"{args.long_clips} recordings of {LONG_SECONDS:g} s → 10 s clips", long_results, flac_key, wav_key)
    print(f"\nshard writer (2 processes, 44.1 kHz WAV → 48 kHz FLAC, 10 s clips): {write_rate:.1f} files/s")


if __name__ == "__main__":
    main()
