"""``debian-sounds``: sound events, instrument notes and speech from Debian packages.

The sources are game and education packages whose audio nobody on this project recorded
(tuxpaint-stamps-default, minetest-data, gcompris-qt-data, sonic-pi-samples, scorched3d-data,
lincity-ng-data, btanks-data, heroes-sound-effects, hedgewars-data, wesnoth-1.16-data, freeciv-data,
megaglest-data), three General MIDI SoundFonts rendered note by note (fluid-soundfont-gm,
timgm6mb-soundfont, and csound-soundfont, one source with it in the cross split), the freepats GUS patches
rendered with TiMidity++ (a fourth instrument source, never held out), Asterisk's
recorded English telephone prompts (asterisk-core-sounds-en-wav) and
words spoken by the espeak-ng and flite synthesizers. Which files make which class, and which files
were left out and why, is the reviewed class map ``resources/debian_sounds.json``; see docs/data.md.
"""

from __future__ import annotations

from pathlib import Path

from demo.datasets.builder import BuildResult, build_dataset
from demo.datasets.classmap import ClassMap
from demo.datasets.registry import CLASS_MAPS, DATASETS

__all__ = ["APT_PACKAGES", "DEFAULT_CLASS_MAP", "build"]

DEFAULT_CLASS_MAP = CLASS_MAPS.register("debian-sounds")(Path(__file__).with_name("resources") / "debian_sounds.json")
#: The Debian packages the default class map reads.
APT_PACKAGES = (
    "tuxpaint-stamps-default",
    "minetest-data",
    "gcompris-qt-data",
    "sonic-pi-samples",
    "fluid-soundfont-gm",
    "scorched3d-data",
    "lincity-ng-data",
    "btanks-data",
    "heroes-sound-effects",
    "hedgewars-data",
    "wesnoth-1.16-data",
    "freeciv-data",
    "megaglest-data",
    "timgm6mb-soundfont",
    "csound-soundfont",
    "freepats",
    "espeak-ng",
    "flite",
    "asterisk-core-sounds-en-wav",
)


@DATASETS.register("debian-sounds")
def build(
    out_dir: str | Path,
    *,
    class_map: str | Path | ClassMap = DEFAULT_CLASS_MAP,
    force: bool = False,
    skip_missing: bool = False,
    progress: bool = True,
) -> BuildResult:
    """Build the debian-sounds clip dataset into ``out_dir``.

    Args:
        out_dir: Dataset folder (``clips/<class>/*.flac``, ``metadata.jsonl``, ``index.csv``, ``summary.json``).
        class_map: The class map; the reviewed one shipped with clapkit by default.
        force: Re-encode every clip even if an identical one is already there.
        skip_missing: Build from whichever of the packages are installed instead of raising.
        progress: Show a progress bar.

    Raises:
        FileNotFoundError: a package is not installed (the message gives the apt-get command).
    """
    return build_dataset(out_dir, class_map, force=force, skip_missing=skip_missing, progress=progress)
