"""Model family adapters. Nothing outside this package hard-codes a family's mask id, EOS or shift."""

from ..errors import UserError
from .base import Family, chat_prompt_ids
from .dream import DREAM
from .llada import LLADA
from .tiny import TINY

FAMILIES = (TINY, LLADA, DREAM)


def family_for(model_type: str | None, source: str = "") -> Family:
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    known = ", ".join(t for f in FAMILIES for t in f.model_types)
    raise UserError(
        f"{source or 'model'} has model_type '{model_type}', which is not a masked diffusion family tie-lite "
        f"knows ({known}); pass a LLaDA, Dream or tie-tiny checkpoint"
    )


__all__ = ["DREAM", "FAMILIES", "Family", "LLADA", "TINY", "chat_prompt_ids", "family_for"]
