"""The project's own LLaDA-MoE (tie_lite/models/llada_moe.py) against the LLaDA-MoE authors' code.

scripts/reference/llada_moe.py ran the authors' modeling_lladamoe.py (as the dllm library carries it) under
transformers 4.57 on a tiny checkpoint with the LLaDA-MoE-7B-A1B config, and LLaDA's generate() (the sampler the
model card runs) with the LLaDA-MoE mask id, and kept what they computed under
tests/fixtures/reference/llada_moe/. Here the checkpoint is rebuilt from those fixtures in the hub's layout
(sharded safetensors, config.json saying model_type "llada" as released, the remote-code file names beside them
as decoys) and loaded without any remote code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from real_checkpoints import build_llada_moe, load_figures, reference_dir

from tie_lite.engine.events import StepFrame
from tie_lite.engine.sampler import DecodeSettings
from tie_lite.engine.tie import run_tie
from tie_lite.families import LLADA, LLADA_MOE, family_for
from tie_lite.models.cache import CanvasCache
from tie_lite.models.llada_moe import LLaDAMoEModelLM
from tie_lite.runtime.loading import load_member, load_status
from tie_lite.runtime.scheduler import Scheduler

REF = reference_dir("llada_moe")
FIG = load_figures("llada_moe")
MASK, EOS, ROLE_END = 156895, 156892, 156900
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_llada_moe(tmp_path_factory.mktemp("llada-moe-real-config"))


@pytest.fixture(scope="module")
def member(checkpoint):
    return load_member(str(checkpoint.path))


@pytest.fixture(scope="module")
def variant(tmp_path_factory):
    return build_llada_moe(tmp_path_factory.mktemp("llada-moe-variant"), name="tiny-llada-moe-variant",
                           variant="variant")


def test_the_released_config_is_llada_moe_never_dense_llada():
    released = json.loads((REF / "config.json").read_text())
    assert released["model_type"] == "llada"
    assert family_for("llada", config=released) is LLADA_MOE
    assert family_for("lladamoe", config=dict(released, model_type="lladamoe")) is LLADA_MOE
    dense = json.loads((reference_dir("llada") / "config.json").read_text())
    assert family_for("llada", config=dense) is LLADA


def test_loads_in_a_process_that_knows_dense_llada(checkpoint):
    """With dense LLaDA's classes registered (an ensemble with LLaDA-8B, or any earlier LLaDA load), the released
    model_type "llada" must not reach transformers' Auto classes, which would build dense LLaDA's config."""
    code = ("import sys, tie_lite.models.llada; from tie_lite.runtime.loading import load_member; "
            "m = load_member(sys.argv[1]); print(type(m.model).__name__)")
    done = subprocess.run([sys.executable, "-c", code, str(checkpoint.path)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0 and done.stdout.strip() == "LLaDAMoEModelLM", done.stderr[-500:]


@pytest.mark.parametrize("model_type", ["llada", "lladamoe"])
def test_loads_natively_by_the_hub_parameter_names(checkpoint, member, tmp_path, model_type):
    if model_type != "llada":  # the name the dllm library asks users to write into config.json
        config = dict(json.loads((REF / "config.json").read_text()), model_type=model_type)
        checkpoint = build_llada_moe(tmp_path, name="tiny-lladamoe", config=config)
        member = load_member(str(checkpoint.path))
    assert load_status(str(checkpoint.path)) == "native"
    assert member.family is LLADA_MOE and not LLADA_MOE.trust_remote_code
    assert type(member.model) is LLaDAMoEModelLM and member.model.dtype == torch.float32
    assert (member.mask_id, member.eos_ids, member.shifted) == (MASK, (EOS, ROLE_END), False)
    table = {r["name"]: r["shape"] for r in json.loads((REF / "tensors.json").read_text())}
    assert {k: list(t.shape) for k, t in member.model.state_dict().items()} == table
    assert not checkpoint.remote_code_marker.exists()  # the checkpoint's own modeling file never ran


def _max_delta(model, canvases: list[dict]) -> float:
    worst = 0.0
    with torch.no_grad():
        for canvas in canvases:
            logits = model(torch.tensor([canvas["ids"]])).logits[0].float()
            for fig in canvas["positions"]:
                got = logits[fig["position"]]
                assert got.topk(5).indices.tolist() == fig["top5_ids"]
                want = torch.tensor(fig["top5_logits"] + fig["fixed_logits"])
                worst = max(worst, float((got[fig["top5_ids"] + FIG["fixed_ids"]] - want).abs().max()))
    return worst


def test_fp32_logits_equal_the_authors(member):
    delta = _max_delta(member.model, FIG["canvases"])
    print(f"fp32 max |dlogit| vs the authors' LLaDA-MoE: {delta:.3g}")
    assert delta < 1e-4


def test_variant_logits_equal_the_authors(variant):
    """Expert bias, a shared expert, a dense first layer, grouped-query attention, q/k/v/o biases, half-rotary
    heads and qkv clipping: what the authors' code implements and the released checkpoint does not use."""
    member = load_member(str(variant.path))
    table = {r["name"]: r["shape"] for r in json.loads((REF / "tensors-variant.json").read_text())}
    assert {k: list(t.shape) for k, t in member.model.state_dict().items()} == table
    delta = _max_delta(member.model, FIG["variant"]["canvases"])
    print(f"fp32 max |dlogit| vs the authors' LLaDA-MoE (variant): {delta:.3g}")
    assert delta < 1e-4


def _engine(member, run: dict, monkeypatch, cache: str = "none"):
    """One LLaDA-MoE member on the raw prompt ids, free layout, greedy low-confidence, through the TIE loop: the
    final ids, and how many tokens each forward committed."""
    monkeypatch.setattr(member, "prompt_ids", lambda messages: list(run["prompt"]))
    settings = DecodeSettings(gen_length=run["gen_length"], block_size=run["block_length"], steps=run["steps"],
                              unmask="low_confidence", answer_length=None, temperature=0.0, cache=cache)
    frames: list = []
    result = run_tie(Scheduler([member]), [{"role": "user", "content": "hi"}], settings,
                     on_event=lambda e: frames.append(e.trajectory.ids.clone()) if isinstance(e, StepFrame) else None)
    before = torch.tensor(run["prompt"] + [MASK] * run["gen_length"])
    counts = []
    for after in frames:
        counts.append(int(((before == MASK) & (after != MASK)).sum()))
        before = after
    return result.token_ids, counts


RUNS = FIG["generate"]


@pytest.mark.parametrize("run", RUNS, ids=[f"p{len(r['prompt'])}-{r['gen_length']}-{r['block_length']}-{r['steps']}"
                                           for r in RUNS])
def test_greedy_decoding_is_token_identical_to_generate(member, monkeypatch, run):
    ours, counts = _engine(member, run, monkeypatch)
    assert ours == run["output"]
    assert counts == [c for c in run["transfers_per_step"] if c]


def test_the_reference_runs_are_not_degenerate():
    """Each greedy run the tests compare commits several different tokens, none of them the mask."""
    for run in RUNS:
        assert len(set(run["output"])) >= 3 and MASK not in run["output"]


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_cached_forward_of_an_unchanged_canvas_equals_the_full_forward(member, cache):
    """The block cache (Fast-dLLM style: approximate for a bidirectional model once the canvas changes) is
    exact on the canvas it was stored from: recomputing some positions over it gives the full forward's logits."""
    model = member.model
    ids = torch.tensor([FIG["canvases"][1]["ids"]])
    with torch.no_grad():
        full = model(ids, store_cache=True)
        query = torch.arange(13, ids.shape[1]) if cache == "prefix" else torch.arange(16, 24)
        part = model(ids[:, query], position_ids=query[None], canvas_cache=CanvasCache(full.canvas_cache.keys,
                                                                                        full.canvas_cache.values))
    assert float((part.logits[0] - full.logits[0, query]).abs().max()) < 1e-5


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_cached_decoding_runs_and_commits_every_position(member, monkeypatch, cache):
    run = RUNS[0]
    ours, counts = _engine(member, run, monkeypatch, cache=cache)
    assert len(ours) == run["gen_length"] and MASK not in ours and sum(counts) == run["gen_length"]


def test_bf16_logits_equal_the_authors_bf16(checkpoint):
    """In bfloat16 the router's logits, the experts' weights and their sum run in bfloat16, as the authors' do."""
    bf16 = load_member(str(checkpoint.path), dtype="bfloat16")
    assert bf16.model.dtype == torch.bfloat16
    delta = _max_delta(bf16.model, FIG["canvases_bf16"])
    print(f"bf16 max |dlogit| vs the authors' LLaDA-MoE in bf16: {delta:.3g}")
    assert delta < 1e-4


@pytest.mark.parametrize("quant", ["4bit", "8bit"])
def test_quantized_members_keep_the_router_and_decode(checkpoint, quant):
    member = load_member(str(checkpoint.path), quant=quant)
    expert = member.model.model.layers[0].mlp.experts[0].down_proj
    assert type(expert).__name__ == ("Linear4bit" if quant == "4bit" else "Linear8bitLt")
    assert member.model.model.layers[0].mlp.gate.weight.dtype == torch.float32  # the router is not quantized
    settings = DecodeSettings(gen_length=16, block_size=8, steps=16, unmask="low_confidence", answer_length=None)
    result = run_tie(Scheduler([member]), [{"role": "user", "content": "hi"}], settings)
    assert result.text is not None and result.steps == 16


# --- bad input: one line, exit 2 -------------------------------------------------------------------------


def _cli(*args) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "tie_lite.faces.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("case,change,says", [
    ("router", {"moe_router_score_function": "sigmoid"}, "moe_router_score_function 'sigmoid'"),
    ("scaling", {"routed_scaling_factor": 2.5}, "routed_scaling_factor 2.5"),
    ("experts-count", {"num_experts": 4}, "says num_experts 4, but the weights of layer 0 hold 8"),
    # the authors' attention is 16 wide (hidden_size / heads); transformers' RoPE would rotate 32: their forward fails
    ("head-dim", {"head_dim": 32}, "has head_dim 32, so its rotary embedding spans 32 dimensions, more than its heads"),
])
def test_bad_checkpoints_get_one_line_and_exit_2(tmp_path, case, change, says):
    config = dict(json.loads((REF / "config.json").read_text()), **change)
    folder = build_llada_moe(tmp_path, name=case, config=config).path
    proc = _cli("generate", "hi", "--model", str(folder))
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert says in lines[0] and "Traceback" not in proc.stderr


# --- memory: total and active parameters, experts on the host ----------------------------------------------


def released_config(root: Path) -> Path:
    """LLaDA-MoE-7B-A1B's config.json alone (no weights), as the reference script records it: the plan reads it."""
    folder = root / "LLaDA-MoE-7B-A1B-Instruct"
    folder.mkdir()
    (folder / "config.json").write_text((REF / "config-7b.json").read_text())
    return folder


def test_config_weight_table_is_the_model_s():
    for config_file in ("config.json", "config-variant.json"):
        config = json.loads((REF / config_file).read_text())
        with torch.device("meta"):
            model = LLaDAMoEModelLM(LLaDAMoEModelLM.config_class(**{k: v for k, v in config.items() if k != "model_type"}))
        want = {k: tuple(t.shape) for k, t in model.state_dict().items()}
        assert {k: v[1] for k, v in LLADA_MOE.config_tensors(config).items()} == want


def test_plan_counts_total_and_active_parameters_and_places_experts_on_the_host(tmp_path):
    from tie_lite.runtime.plan import build_plan, render
    from tie_lite.runtime.sizes import estimate_member

    folder = released_config(tmp_path)
    est = estimate_member(str(folder), quant="4bit", device="cuda")
    assert round(est.total_params / 1e9, 2) == 7.36 and round(est.active_params / 1e9, 2) == 1.72
    assert est.moe_layers == 16 and 0 < est.expert_bytes < est.weight_bytes
    plan, estimates = build_plan([str(folder)], quant="4bit", device="cuda", max_memory="3GiB", gen_length=256)
    assert plan.placement == ["experts-on-host"] and plan.device_bytes(0) < plan.capacity_bytes
    text = render(plan, estimates, 320, 1)
    assert "7.36B (1.72B)" in text and "routed experts in host memory" in text
    plan, _ = build_plan([str(folder)], quant="4bit", device="cuda", max_memory="8GiB", gen_length=256)
    assert plan.placement == ["resident"]


def test_experts_on_host_load_computes_the_same_logits(checkpoint, member):
    """The experts-on-host load (routed experts left in host memory, the rest on the device; here both are the
    CPU, so only the bookkeeping and the routing across devices are exercised: on a GPU it is not yet measured)."""
    from tie_lite.runtime.loading import load_member_experts_on_host

    hosted = load_member_experts_on_host(str(checkpoint.path), device="cpu")
    ids = torch.tensor([FIG["canvases"][1]["ids"]])
    with torch.no_grad():
        assert torch.equal(hosted.model(ids).logits, member.model(ids).logits)


# --- every field the authors' config class takes ---------------------------------------------------------------
# configuration_lladamoe.py keeps any key; of those its keywords do not name, two matter: head_dim, read by
# transformers' default RoPE (which the authors' rotary embedding calls), and rotary_dim, read by no code of theirs.


@pytest.mark.parametrize("keys", [{}, {"head_dim": 128, "rotary_dim": 128}], ids=["as-recorded", "head-and-rotary-dim"])
def test_plan_reads_the_released_config_with_every_key(tmp_path, capsys, keys):
    """`tie-lite plan` on LLaDA-MoE-7B-A1B's config.json alone, with head_dim and rotary_dim as a config may carry them
    (each once ended in an internal error: read-only properties of the config class)."""
    from tie_lite.faces.cli import main

    folder = released_config(tmp_path)
    (folder / "config.json").write_text(json.dumps({**json.loads((REF / "config-7b.json").read_text()), **keys}))
    capsys.readouterr()
    assert main(["plan", "--model", str(folder), "--json"]) == 0
    member = json.loads(capsys.readouterr().out)["members"][0]
    assert member["loads"] == "native" and round(member["total_params"] / 1e9, 2) == 7.36


def _token_ids(capsys, folder: Path) -> list[int]:
    from tie_lite.faces.cli import main

    capsys.readouterr()
    assert main(["generate", "What is (23+41)*7?", "--model", str(folder), "--gen-length", "32", "--block-size", "8",
                 "--json"]) == 0
    return json.loads(capsys.readouterr().out)["token_ids"]


def test_redundant_head_dim_and_rotary_dim_decode_the_same_ids(checkpoint, tmp_path, capsys):
    """The tiny checkpoint (every key of the authors' config class, as their save_pretrained wrote it) with head_dim
    16 and rotary_dim 16 added, what it has without them: `tie-lite generate --json` exits 0 with the same ids."""
    want = _token_ids(capsys, checkpoint.path)
    assert want and any(t != EOS for t in want)
    config = dict(json.loads((REF / "config.json").read_text()), head_dim=16, rotary_dim=16)
    assert _token_ids(capsys, build_llada_moe(tmp_path, name="head-and-rotary-dim", config=config).path) == want
    ignored = dict(config, rotary_dim=8)  # no code of the authors' reads rotary_dim: 16 dimensions still rotate
    assert _token_ids(capsys, build_llada_moe(tmp_path, name="rotary-dim-ignored", config=ignored).path) == want


def test_head_dim_is_the_width_the_rotary_embedding_reads(member, tmp_path):
    """In the authors' code each head is hidden_size / heads wide (16 here) whatever head_dim says, and transformers'
    default RoPE rotates int(head_dim x partial_rotary_factor) of its dimensions: head_dim 8 with the whole rotary
    factor rotates what the factor 0.5 rotates without it, 8 of 16 (so tie-lite matched the authors' model under
    transformers 4.57 on such a config, logit for logit, when this was written)."""
    config = json.loads((REF / "config.json").read_text())
    narrow = load_member(str(build_llada_moe(tmp_path, name="head-dim-8", config=dict(config, head_dim=8)).path))
    half = load_member(str(build_llada_moe(tmp_path, name="half-rotary",
                                           config=dict(config, partial_rotary_factor=0.5)).path))
    assert narrow.model.config.rotated_dims == half.model.config.rotated_dims == 8
    ids = torch.tensor([FIG["canvases"][1]["ids"]])
    with torch.no_grad():
        logits = [m.model(ids).logits for m in (narrow, half, member)]
    assert torch.equal(logits[0], logits[1]) and not torch.equal(logits[0], logits[2])


def test_models_lists_the_family_and_its_checkpoints(capsys):
    from tie_lite.faces.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "inclusionAI/LLaDA-MoE-7B-A1B-Instruct" in out
    assert any(line.split()[:1] == ["llada-moe"] and "lladamoe" in line and "--unmask low_confidence" in line
               for line in out.splitlines())


# --- an ensemble with the shipped pair, from the command line ----------------------------------------------


def test_cli_ensembles_llada_moe_with_the_shipped_pair(checkpoint, capsys):
    from tie_lite.faces.cli import main

    capsys.readouterr()
    argv = ["generate", "What is (23+41)*7?", "--model", str(checkpoint.path), "--model", "tiny-sp", "--model",
            "tiny-bpe", "--gen-length", "32", "--block-size", "8", "--interval", "8", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["members"] == [checkpoint.path.name, "tiny-sp", "tiny-bpe"]
    assert len(out["rounds"]) >= 2 and set(out["rounds"][0]["scores"]) == set(out["members"])
    assert set(out["responses"]) == set(out["members"]) and out["text"] == out["responses"][out["final_member"]]
    assert not checkpoint.remote_code_marker.exists()
