"""Biomedical instruction data: LLaVA-Med ingestion, stage-1 alignment pairs, LLM-synthesised conversations."""

from .alignment import BRIEF_DESCRIPTION_INSTRUCTIONS, alignment_pairs
from .card import dataset_card, load_dataset_dir, push_to_hub, save_dataset
from .cli import add_data_commands
from .llava_med import from_llava_med
from .prompts import FEW_SHOT_EXAMPLES, SYSTEM_PROMPT, synthesis_messages
from .records import DataReport, DataValidationError, read_records
from .synthesis import (
    ChatEndpoint,
    LocalGenerator,
    Reply,
    SynthesisError,
    SynthesisResult,
    assign_generator,
    parse_conversation,
    parse_generator_spec,
    synthesize,
)

__all__ = [
    "BRIEF_DESCRIPTION_INSTRUCTIONS",
    "ChatEndpoint",
    "DataReport",
    "DataValidationError",
    "FEW_SHOT_EXAMPLES",
    "LocalGenerator",
    "Reply",
    "SYSTEM_PROMPT",
    "SynthesisError",
    "SynthesisResult",
    "add_data_commands",
    "alignment_pairs",
    "assign_generator",
    "dataset_card",
    "from_llava_med",
    "load_dataset_dir",
    "parse_conversation",
    "parse_generator_spec",
    "push_to_hub",
    "read_records",
    "save_dataset",
    "synthesis_messages",
    "synthesize",
]
