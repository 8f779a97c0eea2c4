"""The project's own Dream (tie_lite/models/dream.py) against the Dream authors' code.

scripts/reference/dream.py ran the authors' modeling_dream.py / generation_utils.py / tokenization_dream.py
(the Dream-org/Dream-v0-Instruct-7B hub files) under transformers 4.46 on a tiny checkpoint with the real
config and kept what they computed under tests/fixtures/reference/dream/. Here the same checkpoint is rebuilt
from those fixtures, in the hub's layout (sharded safetensors + index, config.json with its auto_map, the
hub's tokenizer_config.json over a small vocabulary), and loaded without any remote code.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from real_checkpoints import build_dream, load_figures, reference_dir

from tie_lite.engine.events import StepFrame
from tie_lite.engine.sampler import DecodeSettings, dream_transfer_count
from tie_lite.engine.tie import run_tie
from tie_lite.errors import UserError
from tie_lite.families import DREAM
from tie_lite.models.dream import DreamConfig, DreamModel
from tie_lite.runtime.loading import load_member, load_status
from tie_lite.runtime.scheduler import Scheduler

REF = reference_dir("dream")
FIG = load_figures("dream")
MASK, EOS, IM_END = 151666, 151643, 151645


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """The checkpoint rebuilt in the hub layout, with decoy remote code beside it."""
    return build_dream(tmp_path_factory.mktemp("dream-real-config")).path


@pytest.fixture(scope="module")
def member(folder):
    return load_member(str(folder))


def _figure_rows():
    for canvas in FIG["canvases"]:
        yield canvas["ids"], None, None, 0, canvas["positions"]
    padded = FIG["padded"]
    yield padded["batch"], padded["attention_mask"], padded["position_ids"], padded["row"], padded["positions"]


def _max_delta(model: torch.nn.Module, top1_agreement: list | None = None) -> float:
    """Largest |our logit - the authors'| over every recorded position (top-5 values and the fixed ids)."""
    worst = 0.0
    device = next(model.parameters()).device
    with torch.no_grad():
        for ids, attn, pos, row, positions in _figure_rows():
            ids = torch.tensor(ids if attn is not None else [ids], device=device)
            kwargs = {}
            if attn is not None:
                kwargs = dict(attention_mask=torch.tensor(attn), position_ids=torch.tensor(pos))
            logits = model(ids, **kwargs).logits[row].float()
            for fig in positions:
                got = logits[fig["position"]]
                want_ids = fig["top5_ids"] + FIG["fixed_ids"]
                want = torch.tensor(fig["top5_logits"] + fig["fixed_logits"])
                worst = max(worst, float((got[want_ids] - want).abs().max()))
                if top1_agreement is not None:
                    top1_agreement.append(int(got.argmax()) == fig["top5_ids"][0])
    return worst


def test_state_dict_names_and_shapes_are_the_hub_checkpoint_s(folder):
    table = {r["name"]: r["shape"] for r in json.loads((REF / "tensors.json").read_text())}
    model = DreamModel(DreamConfig.from_pretrained(str(folder)))
    ours = {name: list(t.shape) for name, t in model.state_dict().items()}
    assert ours == table
    assert not any("inv_freq" in name for name, _ in model.named_buffers())  # nothing for a meta init to lose


def test_fp32_logits_equal_the_authors(member):
    assert type(member.model) is DreamModel and member.model.dtype == torch.float32
    agree: list[bool] = []
    delta = _max_delta(member.model, agree)
    print(f"fp32 max |dlogit| vs the authors' model: {delta:.3g}")
    assert delta < 1e-4 and all(agree)
    # the recorded top-5 ids are the same ids, in the same order
    with torch.no_grad():
        for canvas in FIG["canvases"]:
            logits = member.model(torch.tensor([canvas["ids"]])).logits[0]
            for fig in canvas["positions"]:
                assert logits[fig["position"]].topk(5).indices.tolist() == fig["top5_ids"]


def test_rotary_frequencies_are_computed_after_from_pretrained(member):
    """transformers 5 builds the model on the meta device; the frequencies must still be the real ones."""
    config = member.model.config
    cos, sin = member.model.rotary(torch.arange(6)[None], torch.float32)
    dim = config.hidden_size // config.num_attention_heads
    freqs = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2).double() / dim))
    angles = torch.arange(6).double()[:, None] * freqs[None]
    assert torch.allclose(cos[0, 0, :, : dim // 2].double(), angles.cos(), atol=1e-6)
    assert torch.allclose(sin[0, 0, :, dim // 2 :].double(), angles.sin(), atol=1e-6)
    assert config.rope_theta == 1e6 and config.rms_norm_eps == 1e-6 and config.num_key_value_heads == 2


def _engine_ids(member, run: dict, alg: str, monkeypatch) -> tuple[list[int], list[int]]:
    """One Dream member, free layout, temperature 0, the "dream" schedule, through the TIE loop."""
    monkeypatch.setattr(member, "prompt_ids", lambda messages: list(run["prompt"]))
    settings = DecodeSettings(gen_length=run["max_new_tokens"], steps=run["steps"], eps=run["eps"], unmask=alg,
                              schedule="dream", answer_length=None, temperature=0.0)
    frames: list = []
    run_tie(Scheduler([member]), [{"role": "user", "content": "hi"}], settings,
            on_event=lambda e: frames.append((e.trajectory.ids.clone(), e.trajectory)) if isinstance(e, StepFrame) else None)
    ids = frames[-1][1].ids
    prompt_len = len(run["prompt"])
    before = torch.tensor(run["prompt"] + [MASK] * run["max_new_tokens"])
    counts = []
    for after, _ in frames:
        counts.append(int(((before == MASK) & (after != MASK)).sum()))
        before = after
    return ids[prompt_len:].tolist(), counts


@pytest.mark.parametrize("index", range(len(FIG["generate"])),
                         ids=[f"{r['alg']}-{r['max_new_tokens']}-{r['steps']}" for r in FIG["generate"]])
def test_greedy_decoding_is_token_identical_to_diffusion_generate(member, monkeypatch, index):
    run = FIG["generate"][index]
    ours, counts = _engine_ids(member, run, run["alg"], monkeypatch)
    matched = sum(a == b for a, b in zip(ours, run["output"]))
    print(f"{run['alg']} ({run['max_new_tokens']}, {run['steps']}): {matched}/{len(run['output'])} ids match")
    assert ours == run["output"]
    assert counts == [c for c in run["transfers_per_step"] if c]  # its steps that commit nothing are skipped


@pytest.mark.parametrize("steps,eps", [(32, 1e-3), (16, 1e-3), (8, 1e-3), (7, 0.05), (64, 1e-3), (5, 0.5)])
@pytest.mark.parametrize("masked", [1, 24, 32, 100])
def test_dream_schedule_transfer_counts_follow_its_formula(masked, steps, eps):
    """diffusion_generate: timesteps = torch.linspace(1, eps, steps + 1); at step i it commits
    int(n * (1 - s / t)) of the n masks left (float32), and at the last step all of them."""
    timesteps = torch.linspace(1, eps, steps + 1)
    left, expected, ours = masked, [], []
    for i in range(steps):
        n = torch.tensor(left, dtype=torch.int64)
        count = int((n / 1) * (1 - timesteps[i + 1] / timesteps[i])) if i < steps - 1 else left
        expected.append(count)
        ours.append(dream_transfer_count(left, i, steps, eps))
        left -= count
    assert ours == expected and left == 0
    for run in FIG["generate"]:
        if (run["max_new_tokens"], run["steps"], run["eps"]) == (masked, steps, eps):
            assert run["transfers_per_step"] == expected


def test_dream_schedule_settings_are_checked():
    DecodeSettings(gen_length=24, block_size=16, steps=7, schedule="dream", unmask="entropy").validate()
    bad = [dict(schedule="dreams"), dict(schedule="dream", unmask="threshold"), dict(schedule="dream", eps=0.0),
           dict(schedule="dream", eps=float("nan")), dict(temperature=float("inf")), dict(temperature=float("nan")),
           dict(threshold=float("nan")), dict(schedule="dream", temperature=float("inf"))]
    for kwargs in bad:
        with pytest.raises(UserError) as err:
            DecodeSettings(answer_length=None, **kwargs).validate()
        assert "\n" not in str(err.value)
    assert DecodeSettings(gen_length=24, block_size=8, schedule="dream").steps_per_block == 24


def test_loads_natively_with_the_hub_tokenizer(folder, member):
    assert load_status(str(folder)) == "native"
    assert member.family is DREAM and not DREAM.trust_remote_code
    assert (member.mask_id, member.eos_ids, member.shifted) == (MASK, (EOS, IM_END), True)
    assert not (folder.parent / "remote-code-ran").exists()
    tok = member.tokenizer
    ref = FIG["tokenizer"]
    assert {k: getattr(tok, f"{k}_token_id") for k in ref["special_ids"]} == ref["special_ids"]
    assert len(tok) == ref["len"]
    for row in ref["texts"]:
        assert tok.encode(row["text"], add_special_tokens=False) == row["ids"], row["text"]
        assert tok.decode(row["ids"]) == row["decoded"]
    for chat in ref["chats"]:
        assert member.prompt_ids(chat["messages"]) == chat["ids"]
    ids = member.prompt_ids([{"role": "user", "content": "hi"}])
    assert ids[0] == 151644 and ids.count(151644) == 3 and ids.count(IM_END) == 2  # ChatML at the real ids


def test_bf16_and_fp16_stay_close(folder):
    for dtype, tol in (("bfloat16", 0.25), ("float16", 0.05)):
        model = load_member(str(folder), dtype=dtype).model
        assert model.dtype == getattr(torch, dtype)
        agree: list[bool] = []
        delta = _max_delta(model, agree)
        print(f"{dtype} max |dlogit| vs the authors' fp32: {delta:.3g}, top-1 agrees at {sum(agree)}/{len(agree)}")
        assert delta < tol


def _dequantized_copy(quantized: torch.nn.Module, folder: Path) -> DreamModel:
    """An fp32 DreamModel holding the 4-bit model's weights as bitsandbytes dequantizes them."""
    import bitsandbytes.functional as bnbf

    plain = DreamModel.from_pretrained(str(folder)).eval()
    weights = {f"{name}.weight": bnbf.dequantize_4bit(mod.weight.data, mod.weight.quant_state).float()
               for name, mod in quantized.named_modules() if type(mod).__name__ == "Linear4bit"}
    with torch.no_grad():
        for name, param in plain.named_parameters():
            if name in weights:
                param.copy_(weights[name])
    return plain


@pytest.mark.parametrize("quant,tol", [("8bit", 0.5), ("4bit", 3.0)])
def test_bitsandbytes_loads_and_stays_close(folder, quant, tol):
    pytest.importorskip("bitsandbytes")
    model = load_member(str(folder), quant=quant).model
    assert type(model.lm_head) is torch.nn.Linear  # bitsandbytes keeps the output head unquantized
    quantized = type(model.model.layers[0].self_attn.q_proj).__name__
    assert quantized == {"8bit": "Linear8bitLt", "4bit": "Linear4bit"}[quant]
    # (before any forward: bitsandbytes repacks 4-bit weights for its CPU kernel on the first one)
    dequantized = _dequantized_copy(model, folder) if quant == "4bit" else None
    agree: list[bool] = []
    delta = _max_delta(model, agree)
    print(f"{quant}: max |dlogit| vs the authors' fp32 {delta:.3g}, top-1 agrees at {sum(agree)}/{len(agree)}")
    assert math.isfinite(delta) and delta < tol
    if quant == "4bit":  # NF4 moves these random weights a lot; the quantized forward itself must be right
        x = torch.tensor([FIG["canvases"][1]["ids"]])
        with torch.no_grad():
            own = (model(x).logits - dequantized(x).logits).abs().max().item()
        print(f"4bit: max |dlogit| vs the same weights dequantized, in fp32: {own:.3g}")
        assert own < 0.1


def test_tied_embeddings_and_unsupported_configs(tmp_path):
    small = dict(vocab_size=96, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                 num_key_value_heads=1, pad_token_id=0, mask_token_id=95)
    model = DreamModel(DreamConfig(tie_word_embeddings=True, **small))
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    model.save_pretrained(tmp_path / "tied")
    loaded = DreamModel.from_pretrained(str(tmp_path / "tied"))
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)
    for bad in (dict(rope_scaling={"type": "linear", "factor": 2.0}), dict(rope_scaling={"rope_type": "yarn"}),
                dict(use_sliding_window=True), dict(use_mrope=True), dict(num_key_value_heads=3)):
        with pytest.raises(ValueError):
            DreamConfig(**{**small, **bad})
    assert DreamConfig(rope_scaling={"rope_type": "default"}, **small).rope_scaling is None
