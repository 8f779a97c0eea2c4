"""Fast-dLLM v2 on transformers' own Qwen2 modules against its authors' code.

scripts/reference/fast_dllm_v2.py ran the hub folder's modeling.py (generate()) and NVlabs Fast-dLLM's
v2/generation_functions.py (batch_sample) under transformers 4.53.1 on a tiny checkpoint with the released
Fast_dLLM_v2_7B config and kept what they computed under tests/fixtures/reference/fast_dllm_v2/. Here the checkpoint
is rebuilt from those fixtures (the hub file names beside it as decoys) and loaded without any remote code. Its
prompts are 13, 45 and 64 tokens long: two of them not a multiple of the block.
"""

from __future__ import annotations

import json

import pytest
import torch
from real_checkpoints import build_fast_dllm_v2, load_figures, max_logit_delta

from tie_lite.engine.recipe import settings_for
from tie_lite.engine.tie import run_tie
from tie_lite.faces.cli import build_parser, main
from tie_lite.faces.options import decode_settings
from tie_lite.families import FAST_DLLM_V2
from tie_lite.runtime.loading import load_member, load_status
from tie_lite.runtime.scheduler import Scheduler

FIG = load_figures("fast_dllm_v2")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_fast_dllm_v2(tmp_path_factory.mktemp("fast-dllm-v2"))


@pytest.fixture(scope="module")
def member(checkpoint):
    return load_member(str(checkpoint.path))


def test_loads_natively_with_qwen2_layers(checkpoint, member):
    assert load_status(str(checkpoint.path)) == "native" and member.family is FAST_DLLM_V2
    assert (member.mask_id, member.eos_ids, member.shifted) == (151665, (151645,), True)
    assert type(member.model.model.layers[0]).__module__.startswith("transformers.models.qwen2")
    assert not checkpoint.remote_code_marker.exists()


@pytest.mark.parametrize("block", [32, 16])
def test_fp32_logits_equal_the_authors_under_the_block_causal_mask(member, block):
    worst = 0.0
    with torch.no_grad():
        for canvas in FIG["canvases"]:
            positions = canvas["positions"] if block == 32 else canvas["block_size_16"]["positions"]
            logits = member.model(torch.tensor([canvas["ids"]]), block_size=block).logits[0]  # raw: output i at i
            worst = max(worst, max_logit_delta(logits, positions, FIG["fixed_ids"]))
    print(f"fp32 max |dlogit| vs the authors' Fast-dLLM v2 (block {block}): {worst:.3g}")
    assert worst < 1e-4


def _until_stop(ids: list[int], stop: int) -> list[int]:
    return ids[: ids.index(stop) + 1] if stop in ids else ids


@pytest.mark.parametrize("cache", ["none", "dual"])
@pytest.mark.parametrize("key", ["generate_defaults", "generate_chatbot", "generate_block16", "batch_sample_eval",
                                 "generate_chatbot_stop"])
def test_sub_block_decoding_is_token_identical_to_the_authors(member, monkeypatch, key, cache):
    """--unmask fast_dllm_v2: a block's first position alone, then sub-blocks left to right, every position above
    the threshold (strictly) and at least one a step. The authors' canvas ends with the token after its last
    block; tie-lite's runs to the end of the block that holds it, and is compared over theirs (up to its stop)."""
    for run in FIG[key]:
        block = run["block_size"]
        flags = ["--gen-length", str(run["max_new_tokens"] + block), "--block-size", str(block), "--sub-block",
                 str(run["small_block_size"]), "--threshold", str(run["threshold"]), "--cache", cache]
        args = build_parser("generate").parse_args(["generate", "hi", "--model", "x", *flags])
        settings = settings_for(member, decode_settings(args))
        monkeypatch.setattr(member, "prompt_ids", lambda messages, run=run: list(run["prompt"]))
        result = run_tie(Scheduler([member]), [{"role": "user", "content": "hi"}], settings)
        want = _until_stop(run["output"], run["stop_token"])
        assert result.token_ids[: len(want)] == want, (key, len(run["prompt"]))


def test_the_recipe_through_the_cli(checkpoint, capsys):
    capsys.readouterr()
    assert main(["generate", "hi", "--model", str(checkpoint.path), "--gen-length", "32", "--json"]) == 0
    ran = json.loads(capsys.readouterr().out)["member_settings"][checkpoint.path.name]
    assert (ran["block_size"], ran["unmask"], ran["sub_block"], ran["threshold"], ran["layout"], ran["cache_exact"]) == (
        32, "fast_dllm_v2", 8, 0.9, "free", True)


def test_tie_lite_generate_as_a_user_runs_it_equals_the_authors_generate(checkpoint, member):
    """`tie-lite generate "What is 2+3?" --model FOLDER --gen-length 96 --json` in a subprocess (the canvas past the
    authors' 64 new tokens and the one after them), no other flag: the prompt its chat template renders is the one
    the fixture's run was given, and the ids are the model card's generate()'s."""
    import subprocess
    import sys

    run = FIG["cli_recipe"]
    assert member.prompt_ids([{"role": "user", "content": "What is 2+3?"}]) == run["prompt"]
    assert (run["block_size"], run["small_block_size"], run["threshold"]) == (32, 8, 0.9)  # the recipe's
    done = subprocess.run([sys.executable, "-m", "tie_lite.faces.cli", "generate", "What is 2+3?", "--model",
                           str(checkpoint.path), "--gen-length", "96", "--json"], capture_output=True, text=True,
                          timeout=600, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    want = _until_stop(run["output"], run["stop_token"])
    assert json.loads(done.stdout)["token_ids"][: len(want)] == want
