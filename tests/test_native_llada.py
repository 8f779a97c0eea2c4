"""The project's own LLaDA (tie_lite/models/llada.py) against the LLaDA authors' code.

scripts/reference/llada.py ran the authors' modeling_llada.py / configuration_llada.py and generate.py under
transformers 4.46 on tiny checkpoints with the real GSAI-ML/LLaDA-8B-Instruct config (and variants of it) and
kept what they computed under tests/fixtures/reference/llada/. Here the same checkpoints are rebuilt from those
fixtures in the hub's layout (sharded safetensors + index, config.json with its auto_map, the remote-code file
names beside them) and loaded without any remote code.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from real_checkpoints import LLADA_SPECIALS, build_llada, load_figures, reference_dir

import tie_lite.engine.sampler as sampler
from safetensors import safe_open

from tie_lite.engine.events import StepFrame
from tie_lite.engine.sampler import DecodeSettings
from tie_lite.engine.tie import run_tie
from tie_lite.families import LLADA
from tie_lite.models.llada import LLaDAConfig, LLaDAModelLM
from tie_lite.runtime.loading import load_member, load_status
from tie_lite.runtime.scheduler import Scheduler

REF = reference_dir("llada")
FIG = load_figures("llada")
FAST = load_figures("fast-dllm")  # scripts/reference/fast_dllm.py: Fast-dLLM's samplers on a saturating checkpoint
MASK, EOS, EOT = 126336, 126081, 126348
CHECKPOINTS = {"instruct": ("config.json", "tensors.json"),
               **{name: (v["config"], v["tensors"]) for name, v in FIG["variants"].items()}}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """The instruct checkpoint and its recorded variants, rebuilt in the hub layout with decoy remote code."""
    root = tmp_path_factory.mktemp("llada-real-config")
    return {name: build_llada(root, name).path for name in CHECKPOINTS}


@pytest.fixture(scope="module")
def member(folders):
    return load_member(str(folders["instruct"]))


def _max_delta(model: torch.nn.Module, rows: list[dict], agree: list | None = None) -> float:
    """Largest |our logit - the authors'| over the recorded positions (top-5 values and the fixed ids)."""
    worst = 0.0
    device = next(model.parameters()).device
    with torch.no_grad():
        for canvas in rows:
            logits = model(torch.tensor([canvas["ids"]], device=device)).logits[0].float()
            for fig in canvas["positions"]:
                got = logits[fig["position"]]
                want = torch.tensor(fig["top5_logits"] + fig["fixed_logits"])
                worst = max(worst, float((got[fig["top5_ids"] + FIG["fixed_ids"]] - want).abs().max()))
                if agree is not None:
                    agree.append(int(got.argmax()) == fig["top5_ids"][0])
    return worst


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_state_dict_names_and_shapes_are_the_hub_checkpoint_s(folders, name):
    table = {r["name"]: r["shape"] for r in json.loads((REF / CHECKPOINTS[name][1]).read_text())}
    with torch.device("meta"):
        model = LLaDAModelLM(LLaDAConfig.from_pretrained(str(folders[name])))
    tied = set(model.all_tied_weights_keys)  # the output head when weight_tying: not in the checkpoint
    ours = {k: list(t.shape) for k, t in model.state_dict().items() if k not in tied}
    assert ours == table
    assert (name == "tied") == (tied == {"model.transformer.ff_out.weight"})
    assert not list(model.buffers())  # nothing for a meta-device init to lose


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_fp32_logits_equal_the_authors(folders, member, name):
    model = member.model if name == "instruct" else load_member(str(folders[name])).model
    assert type(model) is LLaDAModelLM and model.dtype == torch.float32
    rows = FIG["canvases"] if name == "instruct" else FIG["variants"][name]["canvases"]
    agree: list[bool] = []
    delta = _max_delta(model, rows, agree)
    print(f"{name}: fp32 max |dlogit| vs the authors' model {delta:.3g} over {len(agree)} positions")
    assert delta < 1e-4 and all(agree)
    with torch.no_grad():  # the top-5 ids, in the same order
        for canvas in rows:
            logits = model(torch.tensor([canvas["ids"]])).logits[0]
            for fig in canvas["positions"]:
                assert logits[fig["position"]].topk(5).indices.tolist() == fig["top5_ids"]


def test_padded_batch_logits_equal_the_authors(member):
    padded = FIG["padded"]
    with torch.no_grad():
        logits = member.model(torch.tensor(padded["batch"]), attention_mask=torch.tensor(padded["attention_mask"])).logits
    row = logits[padded["row"]]
    for fig in padded["positions"]:
        want = torch.tensor(fig["top5_logits"] + fig["fixed_logits"])
        assert float((row[fig["position"]][fig["top5_ids"] + FIG["fixed_ids"]] - want).abs().max()) < 1e-4


def _engine(member, run: dict, monkeypatch, **settings) -> tuple[list[int], list[int], int]:
    """One LLaDA member on the raw prompt ids, free layout, greedy low-confidence (or `settings`), through the
    TIE loop."""
    monkeypatch.setattr(member, "prompt_ids", lambda messages: list(run["prompt"]))
    settings = DecodeSettings(**{**dict(gen_length=run["gen_length"], block_size=run["block_length"],
                                        steps=run["steps"], unmask="low_confidence", answer_length=None,
                                        temperature=0.0), **settings})
    frames: list = []
    result = run_tie(Scheduler([member]), [{"role": "user", "content": "hi"}], settings,
                     on_event=lambda e: frames.append(e.trajectory.ids.clone()) if isinstance(e, StepFrame) else None)
    before = torch.tensor(run["prompt"] + [MASK] * run["gen_length"])
    counts = []
    for after in frames:
        counts.append(int(((before == MASK) & (after != MASK)).sum()))
        before = after
    assert result.token_ids == frames[-1][len(run["prompt"]):].tolist()  # what --json and the API report
    return result.token_ids, counts, result.steps


GREEDY = [("instruct", r) for r in FIG["generate"] + FIG["generate_short_prompt"]] + \
         [("gqa", r) for r in FIG["variants"]["gqa"]["generate"]]


@pytest.mark.parametrize("name,run", GREEDY, ids=[f"{n}-{r['gen_length']}-{r['block_length']}-{r['steps']}-p{len(r['prompt'])}"
                                                 for n, r in GREEDY])
def test_greedy_decoding_is_token_identical_to_generate(folders, member, monkeypatch, name, run):
    m = member if name == "instruct" else load_member(str(folders[name]))
    ours, counts, forwards = _engine(m, run, monkeypatch)
    matched = sum(a == b for a, b in zip(ours, run["output"]))
    print(f"{name} gen {run['gen_length']} block {run['block_length']} steps {run['steps']}: "
          f"{matched}/{len(run['output'])} ids match, {forwards} forwards (generate: {run['forwards']})")
    assert ours == run["output"]
    assert counts == [c for c in run["transfers_per_step"] if c]  # generate()'s steps that commit nothing are skipped
    assert forwards == sum(1 for c in run["transfers_per_step"] if c)


@pytest.fixture(scope="module")
def saturating_folder(tmp_path_factory) -> Path:
    """The instruct checkpoint with sharper attention and a 40x output head (Fast-dLLM's fixture): predictions
    that vary by position and float32 confidences that are often exactly 1.0."""
    root = tmp_path_factory.mktemp("llada-saturating")
    return build_llada(root, name="tiny-llada-saturating", gains=FAST["checkpoint"]["gains"]).path


@pytest.fixture(scope="module")
def saturating(saturating_folder):
    return load_member(str(saturating_folder))


def test_saturating_checkpoint_logits_equal_fast_dllm_s(saturating):
    agree: list[bool] = []
    delta = _max_delta(saturating.model, FAST["canvases"], agree)
    print(f"saturating: fp32 max |dlogit| vs Fast-dLLM's model {delta:.3g} over {len(agree)} positions")
    assert delta < 1e-3 and all(agree)  # logits of tens here: 1e-3 is a few float32 steps


def _fast_settings(run: dict) -> dict:
    if run["threshold"] is None:
        return dict(cache=run["cache"])
    return dict(cache=run["cache"], unmask="threshold", threshold=run["threshold"])


@pytest.mark.parametrize("run", FAST["runs"], ids=[f"{r['cache']}-steps{r['steps']}-threshold{r['threshold']}"
                                                   for r in FAST["runs"]])
def test_decoding_is_token_identical_to_fast_dllm_where_confidences_saturate(saturating, monkeypatch, run):
    """Fast-dLLM's generate / generate_with_prefix_cache / generate_with_dual_cache, by steps or by threshold,
    against tie-lite's --cache none / prefix / dual: the same ids and the same number of forwards, on a
    checkpoint where several candidates are often exactly 1.0 in float32 (tie-lite ranks in float64, as
    Fast-dLLM does)."""
    ours, counts, forwards = _engine(saturating, run, monkeypatch, **_fast_settings(run))
    matched = sum(a == b for a, b in zip(ours, run["output"]))
    print(f"{run['sampler']} steps {run['steps']} threshold {run['threshold']}: {matched}/{len(ours)} ids match, "
          f"{forwards} forwards (Fast-dLLM: {run['forwards']}); {run['distinct_ids']} distinct ids, "
          f"{sum(run['saturated_fp32_per_step'])} candidates at float32 confidence 1.0")
    assert ours == run["output"]
    assert counts == run["committed_per_step"] and forwards == run["forwards"]


def test_float32_ranking_would_depart_from_fast_dllm(saturating, monkeypatch):
    """Why the ranking is float64: ranked in float32 (ties leftmost), the same decode commits other positions
    where confidences saturate."""
    run = next(r for r in FAST["runs"] if r["cache"] == "none" and r["threshold"] is None and r["fp32_ranking_differs_at"])
    exact = sampler.commit_confidence
    monkeypatch.setattr(sampler, "commit_confidence",
                        lambda policy, logits, *a, **k: exact(policy, logits.float().softmax(-1).log(), *a, **k).float())
    ours, _, _ = _engine(saturating, run, monkeypatch)
    assert ours != run["output"]


def test_generate_json_carries_the_token_ids(saturating_folder, saturating, capsys):
    """`tie-lite generate --json` reports the final response's generated ids, and with --member-token-ids each
    member's: the canvas after the prompt, id for id, from which each response's text is read."""
    from tie_lite.faces.cli import main

    folder = str(saturating_folder)
    args = ["generate", "What is 2+3?", "--model", folder, "--model", folder, "--free", "--gen-length", "32",
            "--block-size", "16", "--json", "--member-token-ids"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    ids = out["response_token_ids"]
    assert sorted(ids) == sorted(out["responses"]) and out["token_ids"] == ids[out["final_member"]]
    tok = saturating.tokenizer
    for name, member_ids in ids.items():
        assert len(member_ids) == 32 and MASK not in member_ids
        assert tok.decode(member_ids, skip_special_tokens=True).strip() == out["responses"][name]
    assert main(args[:-1]) == 0 and "response_token_ids" not in json.loads(capsys.readouterr().out)
    assert main([a for a in args if a != "--json"]) == 2
    assert "--member-token-ids" in capsys.readouterr().err


def test_loads_natively_through_load_member(folders, member):
    folder = folders["instruct"]
    assert load_status(str(folder)) == "native"
    assert member.family is LLADA and not LLADA.trust_remote_code
    assert (member.mask_id, member.eos_ids, member.shifted) == (MASK, (EOS, EOT), False)
    assert member.max_length == 4096
    assert not (folder.parent / "remote-code-ran").exists()
    config = member.model.config
    assert (config.rope_theta, config.rms_norm_eps, config.block_type, config.weight_tying) == (5e5, 1e-5, "llama", False)
    ids = member.prompt_ids([{"role": "user", "content": "hi"}])
    assert ids[0] == LLADA_SPECIALS["<|startoftext|>"] and ids[-1] == LLADA_SPECIALS["<|end_header_id|>"]
    from transformers import AutoModelForCausalLM

    assert type(AutoModelForCausalLM.from_pretrained(str(folder))) is LLaDAModelLM  # the hub's auto_map names it too
    assert not (folder.parent / "remote-code-ran").exists()


def test_bf16_and_fp16_stay_close(folders):
    for dtype, tol in (("bfloat16", 0.25), ("float16", 0.05)):
        model = load_member(str(folders["instruct"]), dtype=dtype).model
        assert model.dtype == getattr(torch, dtype)
        agree: list[bool] = []
        delta = _max_delta(model, FIG["canvases"], agree)
        print(f"{dtype}: max |dlogit| vs the authors' fp32 {delta:.3g}, top-1 agrees at {sum(agree)}/{len(agree)}")
        assert delta < tol and sum(agree) >= len(agree) - 2
        if dtype == "bfloat16":  # the authors' model run in bfloat16 itself
            same = _max_delta(model, FIG["canvases_bf16"])
            print(f"bfloat16: max |dlogit| vs the authors' bfloat16 {same:.3g}")
            assert same < 0.05
    model = load_member(str(folders["biased"]), dtype="bfloat16").model  # rope_full_precision false
    assert _max_delta(model, FIG["variants"]["biased"]["canvases_bf16"]) < 0.05


def _reference_loop(model, run: dict) -> list[int]:
    """generate()'s rule written out independently of the engine (as tests/test_sampler.py does): per block an
    even split of its masks over its steps, x0 = argmax of the logits, confidence = softmax in the *model's*
    dtype at x0, torch.topk over the masked positions of the current block."""
    prompt, gen, block = run["prompt"], run["gen_length"], run["block_length"]
    x = torch.tensor([prompt + [MASK] * gen])
    start, per_block = len(prompt), run["steps"] // (gen // block)
    for b in range(gen // block):
        lo, hi = start + b * block, start + (b + 1) * block
        n = int((x[0, lo:hi] == MASK).sum())
        for count in [n // per_block + (1 if i < n % per_block else 0) for i in range(per_block)]:
            with torch.no_grad():
                logits = model(x).logits[0]
            x0 = logits.argmax(-1)
            conf = torch.softmax(logits, -1).gather(-1, x0[:, None])[:, 0]
            allowed = torch.zeros_like(x[0], dtype=torch.bool)
            allowed[lo:hi] = x[0, lo:hi] == MASK
            conf = torch.where(allowed, conf, torch.tensor(-math.inf, dtype=conf.dtype))
            chosen = torch.topk(conf, k=count).indices
            x[0, chosen] = x0[chosen]
    return x[0, start:].tolist()


def test_bf16_greedy_against_the_authors_bf16(folders, monkeypatch):
    """In bfloat16, generate() ranks by a bfloat16 softmax (126k-way probabilities of ~1e-5 tie often in 8 bits
    of mantissa, and torch.topk orders the ties), tie-lite's engine by a float32 one: not token for token the
    same. Ranking as generate() does reproduces the authors' bf16 outputs with our bf16 model."""
    m = load_member(str(folders["instruct"]), dtype="bfloat16")
    exact = _max_delta(m.model, FIG["canvases_bf16"]) == 0.0  # bf16 kernels can round differently on other CPUs
    for run in FIG["generate_bf16"]:
        ours, _, _ = _engine(m, run, monkeypatch)
        reference = _reference_loop(m.model, run)
        matched = sum(a == b for a, b in zip(ours, run["output"]))
        print(f"bf16 gen {run['gen_length']} block {run['block_length']} steps {run['steps']}: engine {matched}/"
              f"{len(run['output'])} ids match the authors' bf16 generate(); bf16-ranked loop "
              f"{sum(a == b for a, b in zip(reference, run['output']))}/{len(run['output'])}")
        assert len(ours) == len(run["output"]) and MASK not in ours
        if exact:
            assert reference == run["output"]


def _dequantized_copy(quantized: torch.nn.Module, folder: Path) -> LLaDAModelLM:
    """An fp32 LLaDAModelLM holding the 4-bit model's weights as bitsandbytes dequantizes them."""
    import bitsandbytes.functional as bnbf

    plain = LLaDAModelLM.from_pretrained(str(folder)).eval()
    weights = {f"{name}.weight": bnbf.dequantize_4bit(mod.weight.data, mod.weight.quant_state).float()
               for name, mod in quantized.named_modules() if type(mod).__name__ == "Linear4bit"}
    assert len(weights) == 7 * plain.config.n_layers
    with torch.no_grad():
        for name, param in plain.named_parameters():
            if name in weights:
                param.copy_(weights[name])
    return plain


@pytest.mark.parametrize("quant,tol", [("8bit", 0.5), ("4bit", 3.0)])
def test_bitsandbytes_loads_and_stays_close(folders, quant, tol):
    pytest.importorskip("bitsandbytes")
    model = load_member(str(folders["instruct"]), quant=quant).model
    tr = model.model.transformer
    assert type(tr.ff_out) is torch.nn.Linear and type(tr.wte) is torch.nn.Embedding  # the head stays unquantized
    assert tr.ff_out.weight.dtype == torch.float32
    assert type(tr.blocks[0].q_proj).__name__ == {"8bit": "Linear8bitLt", "4bit": "Linear4bit"}[quant]
    # (before any forward: bitsandbytes repacks 4-bit weights for its CPU kernel on the first one)
    dequantized = _dequantized_copy(model, folders["instruct"]) if quant == "4bit" else None
    agree: list[bool] = []
    delta = _max_delta(model, FIG["canvases"], agree)
    print(f"{quant}: max |dlogit| vs the authors' fp32 {delta:.3g}, top-1 agrees at {sum(agree)}/{len(agree)}")
    assert math.isfinite(delta) and delta < tol
    if quant == "8bit":
        assert sum(agree) >= 0.8 * len(agree)
    else:  # NF4 moves these random weights (top-1 leads of ~0.05) a lot; the quantized forward itself must be right
        x = torch.tensor([c["ids"] for c in FIG["canvases"][:2]])
        with torch.no_grad():
            got, want = model(x).logits, dequantized(x).logits
        own = (got - want).abs().max().item()
        same = (got.argmax(-1) == want.argmax(-1)).float().mean().item()
        print(f"4bit: vs the same weights dequantized, in fp32: max |dlogit| {own:.3g}, argmax agrees at {same:.0%}")
        assert own < 0.1 and same >= 0.85


def test_tied_checkpoint_saves_and_loads_as_the_authors_lay_it_out(folders, tmp_path):
    model = LLaDAModelLM.from_pretrained(str(folders["tied"]))
    tr = model.model.transformer
    assert tr.ff_out.weight.data_ptr() == tr.wte.weight.data_ptr() and tr.ff_out.bias is None
    model.save_pretrained(tmp_path / "resaved")
    names = set()
    for f in (tmp_path / "resaved").glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            names |= set(st.keys())
    table = {r["name"] for r in json.loads((REF / CHECKPOINTS["tied"][1]).read_text())}
    assert names == table and "model.transformer.ff_out.weight" not in names
    again = LLaDAModelLM.from_pretrained(str(tmp_path / "resaved"))
    assert again.model.transformer.ff_out.weight.data_ptr() == again.model.transformer.wte.weight.data_ptr()
    x = torch.tensor([FIG["canvases"][1]["ids"]])
    with torch.no_grad():
        assert torch.equal(again(x).logits, model(x).logits)
    saved = json.loads((tmp_path / "resaved" / "config.json").read_text())
    assert saved["weight_tying"] is True and saved["model_type"] == "llada" and "d_model" in saved


def test_unsupported_configs_raise_value_error():
    small = dict(d_model=64, n_heads=4, n_kv_heads=4, n_layers=1, mlp_hidden_size=128, vocab_size=256, embedding_size=256)
    LLaDAConfig(**small)
    for bad in (dict(block_type="sequential"), dict(alibi=True, rope=False), dict(rope=False),
                dict(layer_norm_type="default"), dict(attention_layer_norm=True), dict(block_group_size=2),
                dict(activation_type="swiglu"), dict(n_kv_heads=3), dict(n_kv_heads=2, multi_query_attention=True),
                dict(embedding_size=128), dict(layer_norm_with_affine=False)):
        with pytest.raises(ValueError):
            LLaDAConfig(**{**small, **bad})
    assert LLaDAConfig(**{**small, "n_kv_heads": None, "multi_query_attention": True}).num_key_value_heads == 1
