"""Known models: the shipped tiny members (in models/) and hub families, with their decoding defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tie_lite.engine.tie import unique_names


def models_dir() -> Path:
    """Where the shipped checkpoints live (the repository's models/, or $TIE_LITE_MODELS)."""
    return Path(os.environ.get("TIE_LITE_MODELS", Path(__file__).resolve().parents[2] / "models"))


@dataclass(frozen=True)
class Entry:
    name: str
    source: str  # a folder under models/ or a hub id
    shipped: bool
    about: str


ENTRIES = {
    e.name: e
    for e in (
        Entry("tiny-sp", "tiny-sp", True, "shipped; SentencePiece-style BPE, LLaDA-style logits, practises the additions"),
        Entry("tiny-bpe", "tiny-bpe", True, "shipped; byte-level BPE, Dream-style shifted logits, practises the products"),
        Entry("llada-8b-instruct", "GSAI-ML/LLaDA-8B-Instruct", False, "LLaDA family; native, verified against the authors' code"),
        Entry("llada-1.5", "GSAI-ML/LLaDA-1.5", False, "LLaDA family; native, verified against the authors' code"),
        Entry("dream-7b-instruct", "Dream-org/Dream-v0-Instruct-7B", False, "Dream family; native, verified against the authors' code"),
        Entry("diffucoder-7b-instruct", "apple/DiffuCoder-7B-Instruct", False, "Dream family; native, verified against the authors' code"),
        Entry("llada2.0-mini", "inclusionAI/LLaDA2.0-mini", False, "LLaDA2 family (MoE, 16B total, 1.4B active); native, verified against the authors' code"),
        Entry("llada2.1-mini", "inclusionAI/LLaDA2.1-mini", False, "LLaDA2 family (MoE, 16B total, 1.4B active, token editing); native, verified against the authors' code"),
        Entry("llada-moe-7b-a1b-instruct", "inclusionAI/LLaDA-MoE-7B-A1B-Instruct", False, "LLaDA-MoE family (MoE, 7.4B total, 1.7B active); native, verified against the authors' code"),
        Entry("llada-moe-7b-a1b-base", "inclusionAI/LLaDA-MoE-7B-A1B-Base", False, "LLaDA-MoE family (MoE, 7.4B total, 1.7B active, base model); native, verified against the authors' code"),
        Entry("sdar-1.7b-chat", "JetLM/SDAR-1.7B-Chat", False, "SDAR family (block diffusion from Qwen3, laptop CPU size); native, verified against the authors' code"),
        Entry("sdar-4b-chat", "JetLM/SDAR-4B-Chat", False, "SDAR family (block diffusion from Qwen3); native, verified against the authors' code"),
        Entry("sdar-8b-chat", "JetLM/SDAR-8B-Chat", False, "SDAR family (block diffusion from Qwen3); native, verified against the authors' code"),
        Entry("sdar-30b-a3b-chat", "JetLM/SDAR-30B-A3B-Chat", False, "SDAR family (MoE, 30.5B total, 3.3B active); native, verified against the authors' code"),
        Entry("trado-4b-instruct", "Gen-Verse/TraDo-4B-Instruct", False, "SDAR family (TraDo: SDAR's architecture, RL-trained for math and code); native"),
        Entry("trado-8b-instruct", "Gen-Verse/TraDo-8B-Instruct", False, "SDAR family (TraDo: SDAR's architecture, RL-trained for math and code); native"),
        Entry("fast-dllm-v2-7b", "Efficient-Large-Model/Fast_dLLM_v2_7B", False, "Fast-dLLM v2 family (Qwen2.5-7B-Instruct converted to block diffusion); native, verified against the authors' code"),
        Entry("llada2.0-flash", "inclusionAI/LLaDA2.0-flash", False, "LLaDA2 family (MoE, 100B total); native, verified against the authors' code"),
    )
}

DEFAULT_ENSEMBLE = ("tiny-sp", "tiny-bpe")


def resolve(spec: str) -> tuple[str, str]:
    """(display name, loadable source) for a registry name, a local folder or a hub id."""
    entry = ENTRIES.get(spec)
    if entry is not None:
        source = str(models_dir() / entry.source) if entry.shipped else entry.source
        return entry.name, source
    path = Path(spec).expanduser()
    if path.exists():
        return path.resolve().name, str(path.resolve())
    return spec, spec


def member_names(specs) -> list[str]:
    """The names members will have once loaded, from their specs, without loading anything."""
    return unique_names([resolve(s)[0] for s in specs])
