"""Compositional training data: rule-based and LLM-written captions, and the audio scene composer.

- ``composition``: a caption split at its connectives into event segments, and rendered again.
- ``captions``: hard negatives by rule (order, sequence ↔ overlap, binding, attribute swaps) and paraphrases.
- ``lexicon``: the synonym / antonym / sound-verb lists those rules use, extendable by the user.
- ``llm``: the same jobs done by a causal LM, with a prompt template, validation and an on-disk cache.
- ``scenes``: scenes built from labeled single-event clips, with captions, positives, negatives and
  counterfactual audio.
- ``templates``: the scenes' caption templates, in a training pool and a held-out test pool.
- ``phrases``: how the scenes' captions name events and the attributes bound to them.
- ``waveform``: the scenes' loudness, trimming, cutting, repetition and FLAC encoding.
- ``benchmark``: held-out class pairs, training scenes without them, and the CompA-format benchmark.
"""

from clapkit.compose.captions import NEGATIVE_RULES, compare_compositions, hard_negatives, paraphrases
from clapkit.compose.composition import analyze
from clapkit.compose.lexicon import Lexicon
from clapkit.compose.scenes import ComposerConfig, EventClip, EventPhrase, Scene, SceneComposer
from clapkit.compose.templates import TEMPLATES

__all__ = [
    "NEGATIVE_RULES",
    "TEMPLATES",
    "ComposerConfig",
    "EventClip",
    "EventPhrase",
    "Lexicon",
    "Scene",
    "SceneComposer",
    "analyze",
    "compare_compositions",
    "hard_negatives",
    "paraphrases",
]
