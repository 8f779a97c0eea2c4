"""SDAR (dense and MoE) on transformers' own Qwen3 modules against the SDAR authors' code.

scripts/reference/sdar.py ran JetAstra/SDAR's modeling files and samplers (generate.py and the evaluation sampler
huggingface_bd3.py, whose confidences are the full softmax's) under transformers 4.52.4 on tiny checkpoints with
SDAR's config and kept what they computed under tests/fixtures/reference/sdar/. Here the checkpoints are rebuilt
from those fixtures (the hub file names beside them as decoys) and loaded without any remote code. Their prompts
are 3, 13, 16 and 22 tokens long: all but one not a multiple of the block.
"""

from __future__ import annotations

import json

import pytest
import torch
from real_checkpoints import build_sdar, load_figures, max_logit_delta

from tie_lite.engine.recipe import settings_for
from tie_lite.engine.tie import run_tie
from tie_lite.faces.cli import build_parser, main
from tie_lite.faces.options import decode_settings
from tie_lite.families import SDAR
from tie_lite.runtime.loading import load_member, load_status
from tie_lite.runtime.scheduler import Scheduler

FIG = load_figures("sdar")
MASK = FIG["mask_id"]


@pytest.fixture(scope="module", params=["dense", "moe"])
def sdar(request, tmp_path_factory):
    checkpoint = build_sdar(tmp_path_factory.mktemp("sdar"), request.param)
    return request.param, checkpoint, load_member(str(checkpoint.path))


def test_loads_natively_with_qwen3_layers_and_sdar_facts(sdar):
    variant, checkpoint, member = sdar
    assert load_status(str(checkpoint.path)) == "native" and member.family is SDAR
    assert (member.mask_id, member.eos_ids, member.shifted) == (151669, (151645, 151643), False)
    assert type(member.model.model.layers[0]).__module__.startswith("transformers.models.qwen3")  # theirs, not ours
    suffix = "" if variant == "dense" else "-moe"
    from real_checkpoints import reference_dir

    names = {r["name"] for r in json.loads((reference_dir("sdar") / f"tensors{suffix}.json").read_text())}
    if variant == "dense":  # every tensor of the checkpoint by its hub name, nothing else
        assert set(member.model.state_dict()) == names
    else:  # transformers' Qwen3-MoE fuses the hub's per-expert tensors on load (its own conversion)
        assert {n for n in names if ".experts." not in n} <= set(member.model.state_dict())
    assert not checkpoint.remote_code_marker.exists()


def test_fp32_logits_equal_the_authors_under_the_block_causal_mask(sdar):
    variant, _, member = sdar
    worst = 0.0
    with torch.no_grad():
        for canvas in FIG["canvases" if variant == "dense" else "canvases_moe"]:
            for key in ("block_causal_4", "block_causal_8"):
                figures = canvas[key]
                logits = member.model(torch.tensor([canvas["ids"]]), block_size=figures["block_size"]).logits[0]
                worst = max(worst, max_logit_delta(logits, figures["positions"], FIG["fixed_ids"]))
    print(f"fp32 max |dlogit| vs the authors' SDAR ({variant}): {worst:.3g}")
    assert worst < 1e-4


def _decoded_part(output: list[int]) -> list[int]:
    """What the authors' sampler decoded: its canvas after the prompt up to the blocks it never reached (it stops
    after the block where an end-of-text appears and leaves the rest masked)."""
    return output[: output.index(MASK)] if MASK in output else output


def _runs(variant: str, sampler: str) -> list[dict]:
    return FIG["generate" if variant == "dense" else "generate_moe"][sampler]


@pytest.mark.parametrize("cache", ["none", "dual"])
@pytest.mark.parametrize("sampler", ["bd3_eval_dynamic", "bd3_eval_static", "bd3_sharp"])
def test_threshold_decoding_is_token_identical_to_the_authors_sampler(sdar, monkeypatch, sampler, cache):
    """--unmask llada2 (every position above the threshold, at least the step's share of the block) is the
    authors' low-confidence remasking with a threshold; greedy; their forwards minus the one per block that only
    writes the finished block's keys and values (tie-lite keeps them from the block's last step)."""
    variant, _, member = sdar
    for run in _runs(variant, sampler):
        blocks = -(-(len(run["prompt"]) + run["gen_length"]) // run["block_length"])
        flags = ["--gen-length", str(run["gen_length"]), "--block-size", str(run["block_length"]),
                 "--threshold", str(run["threshold"]), "--cache", cache]
        args = build_parser("generate").parse_args(["generate", "hi", "--model", "x", *flags])
        settings = settings_for(member, decode_settings(args))
        monkeypatch.setattr(member, "prompt_ids", lambda messages, run=run: list(run["prompt"]))
        result = run_tie(Scheduler([member]), [{"role": "user", "content": "hi"}], settings)
        want = _decoded_part(run["output"])
        assert result.token_ids[: len(want)] == want, (len(run["prompt"]), sampler)
        assert blocks * run["block_length"] - len(run["prompt"]) == len(result.token_ids)


def test_the_recipe_is_the_authors_evaluation_sampler_through_the_cli(sdar, capsys):
    """`tie-lite generate --model FOLDER` with only --gen-length: blocks of the checkpoint's 4, threshold 0.95,
    greedy, the free layout, the exact block cache, and the early stop after an end-of-text."""
    _, checkpoint, _ = sdar
    capsys.readouterr()
    assert main(["generate", "hi", "--model", str(checkpoint.path), "--gen-length", "32", "--json"]) == 0
    ran = json.loads(capsys.readouterr().out)["member_settings"][checkpoint.path.name]
    assert (ran["block_size"], ran["unmask"], ran["threshold"], ran["temperature"], ran["layout"], ran["cache_exact"],
            ran["stop_at_eos"]) == (4, "llada2", 0.95, 0.0, "free", True, True)


def _config_folder(root, name: str):
    from real_checkpoints import reference_dir

    folder = root / name
    folder.mkdir()
    (folder / "config.json").write_text((reference_dir("sdar") / f"config-{name}.json").read_text())
    return str(folder)


def test_plan_fits_sdar_on_a_laptop_and_the_moe_on_a_small_gpu(tmp_path, capsys):
    """From the released configs alone: SDAR-1.7B + SDAR-4B stay resident in 16 GiB of laptop memory; SDAR-30B-A3B
    at 4-bit on a 12 GiB GPU keeps its routed experts (fused by transformers, so bitsandbytes leaves them in the
    compute dtype) in host memory."""
    small, mid, moe = (_config_folder(tmp_path, n) for n in ("1.7b-chat", "4b-chat", "30b-a3b-chat"))
    assert main(["plan", "--model", small, "--model", mid, "--device", "cpu", "--max-memory", "16GiB", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["strategy"] == "resident" and [m["placement"] for m in plan["members"]] == ["resident", "resident"]
    assert main(["plan", "--model", moe, "--quant", "4bit", "--device", "cuda", "--max-memory", "12GiB", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    (member,) = plan["members"]
    assert member["placement"] == "experts-on-host", member


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    from real_checkpoints import build_llada

    root = tmp_path_factory.mktemp("sdar-llada")
    return [str(build_sdar(root).path), str(build_llada(root).path)]


def test_an_sdar_and_llada_ensemble_runs_from_generate_and_eval(pair, capsys):
    """Two vocabularies (relays through text), each member on its own recipe (blocks of 4 from the sequence
    start; LLaDA's blocks of 32): rounds of whole blocks of each, scored and relayed."""
    models = [a for m in pair for a in ("--model", m)]
    capsys.readouterr()
    assert main(["generate", "What is 2+3?", *models, "--gen-length", "32", "--interval", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    names = out["members"]
    assert out["member_settings"][names[0]]["block_size"] == 4 and out["member_settings"][names[1]]["block_size"] == 32
    assert len(out["rounds"]) >= 1 and out["final_member"] in names
    assert main(["eval", "--task", "sum-product", "--n", "2", *models, "--gen-length", "32", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["settings"]["rounds"]) == set(names) and result["settings"]["rounds"][names[0]]["block_size"] == 4


def test_an_sdar_and_llada_ensemble_runs_from_the_server_and_the_chat(pair):
    from test_serve import served_and_chatted

    from tie_lite.runtime.session import LoadSettings

    names = [p.rsplit("/", 1)[1] for p in pair]
    ran, text = served_and_chatted(LoadSettings(models=tuple(pair)), 24, {"gen_length": 32})
    assert ran[names[0]]["block_size"] == 4 and ran[names[0]]["stop_at_eos"] is True
    assert ran[names[1]]["gen_length"] == 32  # the cap rounded to whole blocks of both (4 and 32)
    assert isinstance(text, str) and text.strip(), text


@pytest.mark.parametrize("quant", ["8bit", "4bit"])
def test_sdar_loads_quantized_and_decodes(pair, capsys, quant):
    """bitsandbytes on the CPU: the Qwen3 layers' linear weights quantized, the decode runs on its recipe."""
    capsys.readouterr()
    assert main(["generate", "What is 2+3?", "--model", pair[0], "--quant", quant, "--gen-length", "16", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["members"] == [pair[0].rsplit("/", 1)[1]] and len(out["token_ids"]) >= 16


def test_sdar_ensembles_with_dream_llada2_and_diffusion_gemma(pair, tmp_path_factory, capsys):
    """Four families, four decoders, each on its own recipe; relays through text (no two share a tokenizer)."""
    from diffusion_gemma_checkpoint import build_diffusion_gemma
    from real_checkpoints import build_dream, build_llada2

    root = tmp_path_factory.mktemp("sdar-four")
    others = [str(build_dream(root).path), str(build_llada2(root).path), str(build_diffusion_gemma(root))]
    capsys.readouterr()
    assert main(["generate", "What is 2+3?", *[a for m in [pair[0], *others] for a in ("--model", m)],
                 "--gen-length", "32", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    ran = out["member_settings"]
    assert len(out["members"]) == 4 and out["final_member"] in out["members"]
    assert ran[out["members"][0]]["block_size"] == 4 and ran[out["members"][1]]["schedule"] == "dream"
    assert ran[out["members"][2]]["unmask"] == "llada2" and ran[out["members"][3]]["sampler"].startswith("entropy")


def test_tie_lite_generate_as_a_user_runs_it_equals_the_authors_sampler(tmp_path):
    """`tie-lite generate "What is 2+3?" --model FOLDER --gen-length 32 --json` in a subprocess, no other flag: the
    prompt its chat template renders is the one the fixture's run was given, and the ids are the authors'
    evaluation sampler's at the recipe (blocks of 4, threshold 0.95, greedy) up to where it stopped."""
    import subprocess
    import sys

    run = FIG["cli_recipe"]
    folder = build_sdar(tmp_path).path
    member = load_member(str(folder))
    assert member.prompt_ids([{"role": "user", "content": "What is 2+3?"}]) == run["prompt"]
    assert len(run["prompt"]) % run["block_length"]
    done = subprocess.run([sys.executable, "-m", "tie_lite.faces.cli", "generate", "What is 2+3?", "--model", str(folder),
                           "--gen-length", str(run["gen_length"]), "--json"], capture_output=True, text=True,
                          timeout=600, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    want = _decoded_part(run["output"])
    assert out["token_ids"][: len(want)] == want
