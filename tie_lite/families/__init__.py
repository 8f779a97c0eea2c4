"""Model family adapters. Nothing outside this package hard-codes a family's mask id, EOS or shift."""

from ..errors import UserError
from .base import Family, chat_prompt_ids
from .diffusion_gemma import DIFFUSION_GEMMA
from .dream import DREAM
from .llada import LLADA
from .llada2 import LLADA2
from .remote import REMOTE
from .tiny import TINY

FAMILIES = (TINY, LLADA, DREAM, LLADA2, DIFFUSION_GEMMA)


# LLaDA-MoE-7B-A1B's released config says model_type "llada" like dense LLaDA; its expert fields tell it apart
LLADA_MOE_FIELDS = ("num_experts", "expert_intermediate_size", "moe_layer_freq")


def family_for(model_type: str | None, source: str = "", config: dict | None = None) -> Family:
    """The family of a checkpoint: a native one by model_type; else, for a checkpoint that ships its own code
    (auto_map) and names its mask token, the remote-code family. A LLaDA-MoE checkpoint (model_type "llada" or
    "lladamoe" with expert fields) is never taken for dense LLaDA."""
    if model_type in ("llada", "lladamoe") and (model_type == "lladamoe" or any(
            (config or {}).get(f) not in (None, 0, -1, []) for f in LLADA_MOE_FIELDS)):
        experts = (config or {}).get("num_experts")
        raise UserError(
            f"{source or 'model'} is LLaDA-MoE (model_type '{model_type}' with {experts} experts), which tie-lite "
            f"does not implement yet; it is not dense LLaDA and is not loaded as one. Supported mixture-of-experts "
            f"MDLMs: LLaDA2.x (model_type llada2_moe)"
        )
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    if config is not None and isinstance(config.get("auto_map"), dict) and "mask_token_id" in config:
        return REMOTE
    known = ", ".join(t for f in FAMILIES for t in f.model_types)
    raise UserError(
        f"{source or 'model'} has model_type '{str(model_type)[:40]}', which is not a diffusion family "
        f"tie-lite knows ({known}); pass a LLaDA, LLaDA2, Dream, DiffusionGemma or tie-tiny checkpoint"
    )


__all__ = ["DIFFUSION_GEMMA", "DREAM", "FAMILIES", "Family", "LLADA", "LLADA2", "REMOTE", "TINY", "chat_prompt_ids",
           "family_for"]
