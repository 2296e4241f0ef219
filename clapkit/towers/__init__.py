"""Encoder towers, one file per family, registered by name in ``AUDIO_TOWERS`` / ``TEXT_TOWERS``."""

from clapkit.towers import aisfx, clip_text, hf_text, htsat, vit  # noqa: F401  (registers the towers)
from clapkit.towers.base import AUDIO_TOWERS, TEXT_TOWERS, AudioTower, TextTower, TowerOutput
from clapkit.towers.head import SequenceHead

__all__ = ["AUDIO_TOWERS", "TEXT_TOWERS", "AudioTower", "SequenceHead", "TextTower", "TowerOutput"]
