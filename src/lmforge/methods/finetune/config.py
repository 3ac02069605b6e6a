"""Options of full fine-tuning (every weight trained; Devlin et al. 2019, section 4)."""

from dataclasses import dataclass

from lmforge.config import option


@dataclass
class FinetuneConfig:
    freeze_embeddings: bool = option(False, "keep the input embeddings frozen (saves memory, rarely hurts)")
