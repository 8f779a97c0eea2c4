"""Model family adapters. Nothing outside this package hard-codes a family's mask id, EOS or shift."""

from ..errors import UserError
from .base import Family, chat_prompt_ids
from .diffusion_gemma import DIFFUSION_GEMMA
from .dream import DREAM
from .fast_dllm_v2 import FAST_DLLM_V2
from .llada import LLADA
from .llada2 import LLADA2
from .llada_moe import LLADA_MOE, is_llada_moe
from .remote import REMOTE
from .sdar import SDAR
from .tiny import TINY

FAMILIES = (TINY, LLADA, DREAM, LLADA2, LLADA_MOE, DIFFUSION_GEMMA, SDAR, FAST_DLLM_V2)


def family_for(model_type: str | None, source: str = "", config: dict | None = None) -> Family:
    """The family of a checkpoint: a native one by model_type; else, for a checkpoint that ships its own code
    (auto_map) and names its mask token, the remote-code family. A LLaDA-MoE checkpoint (model_type "lladamoe",
    or "llada" with expert fields, as released) is never taken for dense LLaDA."""
    if is_llada_moe(model_type, config):
        return LLADA_MOE
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    if config is not None and isinstance(config.get("auto_map"), dict) and "mask_token_id" in config:
        return REMOTE
    known = ", ".join(t for f in FAMILIES for t in f.model_types)
    raise UserError(
        f"{source or 'model'} has model_type '{str(model_type)[:40]}', which is not a diffusion family "
        f"tie-lite knows ({known}); pass a LLaDA, LLaDA2, LLaDA-MoE, Dream, DiffusionGemma, SDAR, Fast-dLLM v2 or "
        f"tie-tiny checkpoint"
    )


__all__ = ["DIFFUSION_GEMMA", "DREAM", "FAST_DLLM_V2", "FAMILIES", "Family", "LLADA", "LLADA2", "LLADA_MOE", "REMOTE", "SDAR", "TINY",
           "chat_prompt_ids",
           "family_for"]
