"""Model family adapters. Nothing outside this package hard-codes a family's mask id, EOS or shift."""

from ..errors import UserError
from .base import Family, chat_prompt_ids
from .diffusion_gemma import DIFFUSION_GEMMA
from .dream import DREAM
from .llada import LLADA
from .remote import REMOTE
from .tiny import TINY

FAMILIES = (TINY, LLADA, DREAM, DIFFUSION_GEMMA)


def family_for(model_type: str | None, source: str = "", config: dict | None = None) -> Family:
    """The family of a checkpoint: a native one by model_type; else, for a checkpoint that ships its own code
    (auto_map) and names its mask token, the remote-code family."""
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    if config is not None and isinstance(config.get("auto_map"), dict) and "mask_token_id" in config:
        return REMOTE
    known = ", ".join(t for f in FAMILIES for t in f.model_types)
    raise UserError(
        f"{source or 'model'} has model_type '{str(model_type)[:40]}', which is not a diffusion family "
        f"tie-lite knows ({known}); pass a LLaDA, Dream, DiffusionGemma or tie-tiny checkpoint"
    )


__all__ = ["DIFFUSION_GEMMA", "DREAM", "FAMILIES", "Family", "LLADA", "REMOTE", "TINY", "chat_prompt_ids", "family_for"]
