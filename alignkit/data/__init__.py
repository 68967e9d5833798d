"""Data for alignkit: record schemas, the seeded synthetic task world, its gold judges, real-dataset loaders.

See DESIGN.md, "The synthetic task world": prompts come from :func:`make_prompts`, responses are scored by
the gold judge :func:`gold_reward` (and :func:`score_attributes` for the HelpSteer attributes), and the
loaders turn HH-RLHF, HelpSteer2 and UltraFeedback into the same record schemas.
"""

from alignkit.data.attributes import complexity, coherence, make_attribute_records, score_attributes, task_score
from alignkit.data.judges import (
    arithmetic_correct,
    arithmetic_format,
    gold_reward,
    integers,
    mentions,
    profanity,
    refusal,
    repetition,
    sentiment,
    verbosity,
    word_count,
    words,
)
from alignkit.data.loaders import DataSourceError, load_helpsteer2, load_hh_rlhf, load_ultrafeedback
from alignkit.data.schemas import (
    ATTRIBUTES,
    RECORD_KINDS,
    SchemaError,
    validate_attribute,
    validate_preference,
    validate_records,
    validate_sft,
)
from alignkit.data.world import (
    FAMILIES,
    SPLITS,
    TEST_FRACTION,
    item_key,
    make_preference_records,
    make_prompts,
    make_sft_records,
    split_items,
    split_of,
    world_table,
)

__all__ = [
    "ATTRIBUTES", "FAMILIES", "SPLITS", "TEST_FRACTION", "RECORD_KINDS", "DataSourceError", "SchemaError",
    "arithmetic_correct", "arithmetic_format", "coherence", "complexity", "gold_reward", "integers", "item_key",
    "load_helpsteer2", "load_hh_rlhf", "load_ultrafeedback", "make_attribute_records", "make_preference_records",
    "make_prompts", "make_sft_records", "mentions", "profanity", "refusal", "repetition", "score_attributes",
    "sentiment", "split_items", "split_of", "task_score", "validate_attribute", "validate_preference", "validate_records",
    "validate_sft", "verbosity", "word_count", "words", "world_table",
]
