"""DiffusionGemma as an ensemble member (issue 35): loaded through transformers' own classes, decoded one
denoising step at a time token-identical to the model's own generate(), and ensembled with TIE over its
uniform-noise canvas, alone and with masked members (relays through text on canvas boundaries)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffusion_gemma_checkpoint import build_diffusion_gemma
from tie_lite.engine.events import Relay, StepFrame
from tie_lite.engine.layout import TextState
from tie_lite.engine.process import run
from tie_lite.engine.sampler import DecodeSettings
from tie_lite.engine.tie import TieSettings, run_tie, start_trajectory
from tie_lite.engine.uniform import UniformTrajectory
from tie_lite.runtime.loading import load_member
from tie_lite.runtime.scheduler import Scheduler

ROOT = Path(__file__).resolve().parents[1]
QUESTION = [{"role": "user", "content": "What is 2+3?"}]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("diffusion-gemma")
    return {
        "a": build_diffusion_gemma(root, "dg-a", seed=0),
        # flatter predictions: no end-of-text in the first canvases, so rounds follow one another and relay
        "b": build_diffusion_gemma(root, "dg-b", seed=1, sharp=20.0),
        # random weights never give a stable argmax nor the released mean entropy below 0.005 (a trained model's
        # do): with stability 0 and a threshold inside this model's range of mean entropies (about 10.1 to 10.4
        # nats), the stable-and-confident rule ends some canvases before the last step
        "stops": build_diffusion_gemma(root, "dg-stops", seed=0, sharp=20.0, stability_threshold=0,
                                       confidence_threshold=10.25),
    }


@pytest.fixture(scope="module")
def member_a(folders):
    return load_member(str(folders["a"]))


def decode_alone(member, seed: int, gen_length: int = 32) -> UniformTrajectory:
    settings = DecodeSettings(gen_length=gen_length, answer_length=None, seed=seed)
    traj = start_trajectory(member, QUESTION, settings, watch=True)
    run(traj.advance(settings, traj.layout.num_blocks))
    return traj


def reference_generate(member, prompt_ids: list[int], seed: int, gen_length: int = 32) -> list[int]:
    """The model's own generate(), default cache and generation config, seeded the same way."""
    torch.manual_seed(seed)
    return member.model.generate(torch.tensor([prompt_ids]), max_new_tokens=gen_length).sequences[0].tolist()


def test_one_member_is_token_identical_to_generate(member_a):
    """Same seed, same sampler settings (the checkpoint's generation config): the same sequence, id for id,
    padding after the end-of-text included; one run ends inside its first canvas, another spans two."""
    assert member_a.family.name == "diffusion-gemma" and member_a.denoising.canvas_length == 16
    canvases = set()
    for seed in (0, 2):
        traj = decode_alone(member_a, seed)
        assert traj.sequence().tolist() == reference_generate(member_a, traj.prompt_ids, seed)
        canvases.add(traj.generated.numel() // member_a.denoising.canvas_length)
        assert traj.finished  # an end-of-text was written: the padding path ran
    assert canvases == {1, 2}


def test_adaptive_stopping_is_token_identical(folders):
    """With a confidence threshold loose enough for the stable-and-confident rule to end canvases early,
    tie-lite stops where generate() stops."""
    member = load_member(str(folders["stops"]))
    traj = decode_alone(member, seed=0, gen_length=48)
    assert traj.sequence().tolist() == reference_generate(member, traj.prompt_ids, 0, gen_length=48)
    canvases = traj.generated.numel() // member.denoising.canvas_length
    assert traj.forwards < canvases * member.denoising.max_denoising_steps  # some canvas stopped early


def test_global_random_state_is_left_alone(member_a):
    """A trajectory draws from its own generator: decoding does not move torch's global one."""
    torch.manual_seed(123)
    before = torch.get_rng_state()
    decode_alone(member_a, seed=0, gen_length=16)
    assert torch.equal(before, torch.get_rng_state())


def cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "tie_lite.faces.cli", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=timeout)


def test_cli_generate_with_one_member_prints_what_generate_writes(folders, member_a, generate_new_ids):
    done = cli("generate", "What is 2+3?", "--model", str(folders["a"]), "--free", "--gen-length", "32", "--seed", "1",
               "--json", "--member-token-ids")
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout)
    ids = generate_new_ids("What is 2+3?", 1, 32)
    assert len(ids) == 16 and ids.index(1) < 15  # the answer ends inside the first canvas: padding follows
    new = ids[: ids.index(1)]  # up to the end-of-text
    assert out["text"] == member_a.tokenizer.decode(new, skip_special_tokens=True).strip() != ""
    assert out["members"] == ["dg-a"] and out["answer"] is None
    assert out["token_ids"] == ids and out["response_token_ids"] == {"dg-a": ids}  # id for id, padding included


# --- token_ids: generate()'s new ids, id for id ------------------------------------------------------------------

LONG_PROMPT = "Write a long story about cats and dogs please."
# (prompt, seed, gen_length) -> how many canvases generate() writes for member "a": the answer ends inside the first
# canvas, in the second, or in the third (all three shorter or longer than the prompt, whose length tie-lite once cut
# off these ids)
TOKEN_ID_CASES = {("What is 2+3?", 0, 32): 1, ("What is 2+3?", 2, 32): 2, ("hi", 2, 48): 3, (LONG_PROMPT, 0, 48): 2}


@pytest.fixture(scope="module")
def generate_new_ids(member_a):
    """transformers' own generate() (torch.manual_seed(seed) first) for member "a": the ids after the prompt."""
    seen = {}

    def new_ids(prompt: str, seed: int, gen_length: int) -> list[int]:
        if (prompt, seed, gen_length) not in seen:
            ids = member_a.prompt_ids([{"role": "user", "content": prompt}])
            seen[prompt, seed, gen_length] = reference_generate(member_a, ids, seed, gen_length)[len(ids):]
        return seen[prompt, seed, gen_length]

    return new_ids


def test_token_ids_are_generate_s_new_ids(member_a, generate_new_ids):
    """A uniform-noise member's token_ids (and its response_token_ids) are the ids generate() writes after the
    prompt: every canvas, the padding after the end-of-text included, whether the answer ends inside the first
    canvas (no longer []) or several canvases on (no longer short of the prompt's length)."""
    for (prompt, seed, gen_length), canvases in TOKEN_ID_CASES.items():
        messages = [{"role": "user", "content": prompt}]
        result = run_tie(Scheduler([member_a]), messages, DecodeSettings(gen_length=gen_length, answer_length=None,
                                                                          seed=seed), TieSettings())
        ids = generate_new_ids(prompt, seed, gen_length)
        assert len(ids) == canvases * member_a.denoising.canvas_length and 1 in ids
        assert result.token_ids == ids and result.response_token_ids == {"dg-a": ids}
        written = ids[: ids.index(1)]
        assert result.text == member_a.tokenizer.decode(written, skip_special_tokens=True).strip()
        assert all(t == 0 for t in ids[ids.index(1) + 1:])  # generate()'s padding, kept as it writes it


def test_prompts_file_carries_generate_s_new_ids(folders, generate_new_ids, tmp_path):
    """`generate --prompts FILE --member-token-ids`: each line's token_ids and response_token_ids are generate()'s
    new ids for that prompt (one ending inside its first canvas, one spanning two)."""
    lines = tmp_path / "prompts.jsonl"
    lines.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("What is 2+3?", LONG_PROMPT)))
    done = cli("generate", "--prompts", str(lines), "--model", str(folders["a"]), "--free", "--gen-length", "48",
               "--seed", "0", "--member-token-ids")
    assert done.returncode == 0, done.stderr[-2000:]
    out = [json.loads(line) for line in done.stdout.splitlines()]
    assert [o["prompt"] for o in out] == ["What is 2+3?", LONG_PROMPT]
    for o, canvases in zip(out, (1, 2)):
        ids = generate_new_ids(o["prompt"], 0, 48)
        assert len(ids) == canvases * 16
        assert o["token_ids"] == ids and o["response_token_ids"] == {"dg-a": ids}


def test_the_server_trace_carries_generate_s_new_ids(folders, generate_new_ids):
    """The server's `tie` trace: token_ids and (asked for) response_token_ids are generate()'s new ids."""
    openai = pytest.importorskip("openai")
    from test_serve import KEY, start_server

    from tie_lite.runtime.session import LoadSettings

    _, url, stop = start_server(load=LoadSettings(models=(str(folders["a"]),)))
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
        reply = client.chat.completions.create(
            model="dg-a", messages=[{"role": "user", "content": "hi"}],
            extra_body={"gen_length": 48, "seed": 2, "free": True, "member_token_ids": True})
    finally:
        stop()
    trace, ids = reply.model_extra["tie"], generate_new_ids("hi", 2, 48)
    assert len(ids) == 48 and trace["token_ids"] == ids and trace["response_token_ids"] == {"dg-a": ids}


def linked_copy(src: Path, dst: Path, skip: tuple[str, ...]) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        if f.name not in skip:
            (dst / f.name).symlink_to(f)
    return dst


def test_bad_checkpoints_get_one_line(folders, tmp_path):
    no_generation = linked_copy(folders["a"], tmp_path / "no-generation-config", ("generation_config.json",))
    done = cli("generate", "hi", "--model", str(no_generation), "--free")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "no generation_config.json" in done.stderr
    done = cli("plan", "--model", str(no_generation))  # the plan still prints, and says the member cannot load
    assert done.returncode == 0 and "cannot load" in done.stdout and "no generation_config.json" in done.stdout

    long_canvas = linked_copy(folders["a"], tmp_path / "long-canvas", ("config.json",))
    config = json.loads((folders["a"] / "config.json").read_text())
    config["canvas_length"] = 1024  # the model has 512 positions
    (long_canvas / "config.json").write_text(json.dumps(config))
    for command in ("generate", "plan"):
        done = cli(command, *(["hi"] if command == "generate" else []), "--model", str(long_canvas))
        line = done.stderr.strip() if command == "generate" else done.stdout + done.stderr
        assert "canvas_length 1024 is longer than the model's 512 positions" in line, line
        if command == "generate":
            assert done.returncode == 2 and len(line.splitlines()) == 1


def test_tie_between_two_members_relays_whole_canvases(folders):
    """Two DiffusionGemma members: every relay lands on a canvas boundary and gives every member the leader's
    sequence id for id (one tokenizer)."""
    member_a, member_b = load_member(str(folders["stops"])), load_member(str(folders["b"]))
    seen, relays = {}, []

    def on_event(event):
        if isinstance(event, StepFrame):
            seen[event.member] = event.trajectory
        if isinstance(event, Relay):
            sequences = {tuple(t.generated.tolist()) for t in seen.values()}
            relays.append(len(next(iter(sequences))))
            assert len(sequences) == 1  # everyone holds the leader's sequence

    settings = DecodeSettings(gen_length=48, answer_length=None, seed=2)
    for score in ("tcc", "verify"):
        relays.clear()
        result = run_tie(Scheduler([member_a, member_b]), QUESTION, settings, TieSettings(interval=16, score=score),
                         on_event=on_event)
        assert relays and all(n % member_a.denoising.canvas_length == 0 for n in relays)
        assert set(result.responses) == {"dg-stops", "dg-b"} and result.final_member in result.responses
        assert all(set(r["scores"]) == {"dg-stops", "dg-b"} for r in result.rounds)


def test_text_relays_to_and_from_a_masked_member(member_a):
    """Relay through text: a masked member's worked answer lands on a DiffusionGemma canvas boundary in this
    member's tokens (marker and end-of-text included, provenance carried), and a masked member adopts it back
    as the same text state."""
    settings = DecodeSettings(gen_length=64, answer_length=8, seed=0)
    masked = start_trajectory(load_member("tiny-sp"), QUESTION, settings, watch=True)
    masked.index = 1
    masked.ids = masked.layout.write_state(masked.member.tokenizer, masked.prompt_ids, TextState("2+3=5", True, "5", True))
    masked.committed_by = torch.where(masked.ids == masked.layout.mask_id, -1, 1)
    masked.committed_by[: masked.layout.prompt_len] = -1

    traj = start_trajectory(member_a, QUESTION, settings, watch=True)
    traj.adopt(masked)
    assert traj.finished and traj.generated[-1].item() in member_a.denoising.eos_ids
    assert member_a.tokenizer.decode(traj.generated[:-1]) == "2+3=5\nAnswer: 5"
    assert traj.text() == "2+3=5\nAnswer: 5" and traj.layout.parse_answer(traj.text()) == "5"
    assert traj.committed_by[:5].tolist() == [1] * 5  # the masked member wrote "2+3=5"

    back = start_trajectory(masked.member, QUESTION, settings, watch=True)
    back.adopt(traj)
    assert back.state() == masked.state()

    partway = start_trajectory(member_a, QUESTION, settings, watch=True)
    half = start_trajectory(masked.member, QUESTION, settings, watch=True)
    half.ids = half.layout.write_state(half.member.tokenizer, half.prompt_ids, TextState("2+3", False))
    partway.adopt(half)
    assert not partway.done and member_a.tokenizer.decode(partway.generated) == "2+3"
    run(partway.advance(settings, 1))  # the next canvas follows the relayed text
    assert partway.generated[:3].tolist() == member_a.tokenizer.encode("2+3", add_special_tokens=False)
    assert partway.generated.numel() == 3 + member_a.denoising.canvas_length


def test_mixed_ensemble_with_the_shipped_pair_from_the_cli(folders):
    """`tie-lite generate` with a DiffusionGemma member beside the shipped pair (three tokenizers): every round
    scores every member, relays go through text, and the answer is read from the chosen response."""
    for score in ("verify", "tcc"):
        done = cli("generate", "What is (23+41)*7?", "--model", str(folders["a"]), "--model", "tiny-sp", "--model",
                   "tiny-bpe", "--gen-length", "32", "--score", score, "--json")
        assert done.returncode == 0, done.stderr[-2000:]
        out = json.loads(done.stdout)
        assert out["members"] == ["dg-a", "tiny-sp", "tiny-bpe"]
        assert all(set(r["scores"]) == {"dg-a", "tiny-sp", "tiny-bpe"} for r in out["rounds"])
        assert out["final_member"] in out["responses"] and out["text"] == out["responses"][out["final_member"]]


def test_plan_of_the_released_configuration_counts_its_experts():
    """`tie-lite plan` on the released configuration (no weights here): every routed expert counts in memory,
    so the bfloat16 weights come to the released checkpoint's size (about 52 GB), not the 4B active."""
    done = cli("plan", "--model", str(ROOT / "tests" / "fixtures" / "diffusion_gemma"), "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    member = json.loads(done.stdout)["members"][0]
    assert member["loads"] == "native" and 49e9 < member["weight_bytes"] < 54e9


# --- memory: what 4/8-bit quantizes, and the released model under 16 and 24 GiB --------------------------------

RELEASED = json.loads((ROOT / "tests" / "fixtures" / "diffusion_gemma" / "config.json").read_text())["text_config"]


def test_the_estimate_quantizes_what_bitsandbytes_quantizes(folders):
    """At 4 and 8 bits the load quantizes exactly the weights the estimate counts as quantized (the vision tower's
    and the self-conditioning's linear layers: not the tied text layers, not the 3-D experts), and the estimate
    comes to the measured footprint."""
    import bitsandbytes as bnb

    from tie_lite.runtime.checkpoint import checkpoint_tensors
    from tie_lite.runtime.sizes import estimate_member

    family = load_member(str(folders["a"])).family
    predicted = {name for name, (_, shape) in checkpoint_tensors(str(folders["a"])).items()
                 if family.quantized_weight(name, shape)}
    for quant in ("4bit", "8bit"):
        member = load_member(str(folders["a"]), quant=quant)
        quantized = {f"{name}.weight" for name, module in member.model.named_modules()
                     if isinstance(module, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))}
        assert quantized == predicted and any("self_conditioning" in n for n in quantized)
        experts = member.model.model.decoder.layers[0].experts
        assert type(experts.gate_up_proj) is torch.nn.Parameter and experts.gate_up_proj.dim() == 3
        estimate = estimate_member(str(folders["a"]), quant=quant)
        assert abs(estimate.weight_bytes - member.footprint_bytes) < 0.01 * member.footprint_bytes


def test_the_config_alone_gives_the_checkpoint_s_sizes(folders, tmp_path):
    """The weight table built from config.json alone (the released model's plan) holds what the checkpoint holds:
    the same parameters, experts and bytes at every quantization (each weight the encoder and decoder share once)."""
    from tie_lite.runtime.sizes import estimate_member

    config_only = tmp_path / "config-only"
    config_only.mkdir()
    (config_only / "config.json").write_text((folders["a"] / "config.json").read_text())
    for quant in ("none", "4bit"):
        exact, from_config = (estimate_member(str(f), quant=quant) for f in (folders["a"], config_only))
        assert exact.exact and not from_config.exact
        for field in ("total_params", "active_params", "weight_bytes", "expert_bytes", "moe_layers"):
            assert getattr(from_config, field) == getattr(exact, field), field
        assert exact.moe_layers == 2 and exact.step_positions == 16


@pytest.mark.parametrize("budget", ["16GiB", "24GiB"])
def test_plan_of_the_released_model_at_4bit_keeps_its_experts_on_the_host(budget):
    """`tie-lite plan` for a GPU of 16 or 24 GiB (none needed here): the routed experts, which bitsandbytes leaves
    in bfloat16, stay in host memory; the rest fits on the device with the working memory; the activations that
    cross per denoising step are each MoE layer's input and output over the 256-position canvas."""
    done = cli("plan", "--model", str(ROOT / "tests" / "fixtures" / "diffusion_gemma"), "--quant", "4bit",
               "--device", "cuda", "--max-memory", budget, "--gen-length", "256", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    plan = json.loads(done.stdout)
    member = plan["members"][0]
    assert member["placement"] == "experts-on-host" and plan["strategy"] == "resident"
    layers, experts, hidden, width = (RELEASED[k] for k in ("num_hidden_layers", "num_experts", "hidden_size",
                                                              "moe_intermediate_size"))
    assert member["expert_bytes"] == layers * experts * 3 * width * hidden * 2  # gate, up and down in bfloat16
    on_device = member["weight_bytes"] - member["expert_bytes"]
    assert on_device + plan["working_bytes"] <= plan["budget_bytes"] < member["weight_bytes"]
    assert member["host_step_bytes"] == 2 * layers * 256 * hidden * 2  # in and out, bfloat16, per MoE layer
    assert round(member["active_params"] / 1e9, 2) == 4.25 and round(member["total_params"] / 1e9, 1) == 25.7


def test_plan_of_the_released_model_is_resident_where_it_fits():
    from tie_lite.runtime.plan import build_plan

    plan, _ = build_plan([str(ROOT / "tests" / "fixtures" / "diffusion_gemma")], quant="4bit", device="cuda",
                         max_memory="64GiB", gen_length=256)
    assert plan.placement == ["resident"] and plan.host_step_bytes == 0


def test_experts_on_the_host_decode_what_resident_members_decode(folders, monkeypatch):
    """The experts-on-host placement on a tiny checkpoint: planned as beside a GPU under a budget that holds all
    but its routed experts, loaded with them kept apart (their modules run where their weights are), it decodes
    the same tokens as the member loaded whole."""
    from tie_lite.runtime import session
    from tie_lite.runtime.plan import needs_for
    from tie_lite.runtime.scheduler import EXPERTS_ON_HOST, make_plan
    from tie_lite.runtime.sizes import estimate_member

    model = str(folders["a"])
    settings = DecodeSettings(gen_length=32, answer_length=None, seed=3)
    resident = session.Ensemble(session.LoadSettings(models=(model,))).run(QUESTION, settings, TieSettings())

    estimate = estimate_member(model)
    working = needs_for([estimate], session.PLAN_TOKENS, 1)[0].working_bytes
    budget = working + estimate.weight_bytes - estimate.expert_bytes // 2  # all but half the experts fit
    as_beside_a_gpu = lambda needs, budget, **kw: make_plan(needs, budget, **{**kw, "device": "cuda"})  # noqa: E731
    monkeypatch.setattr(session, "make_plan", as_beside_a_gpu)
    hosted = session.Ensemble(session.LoadSettings(models=(model,), max_memory=str(budget)))
    assert hosted.plan.placement == [EXPERTS_ON_HOST]
    layers = hosted.members[0].model.model.decoder.layers
    assert all(layer.experts._forward_pre_hooks and not layer.mlp._forward_pre_hooks for layer in layers)
    assert hosted.scheduler.sizes == [hosted.members[0].footprint_bytes - estimate.expert_bytes]  # on the device
    result = hosted.run(QUESTION, settings, TieSettings())
    assert result.token_ids == resident.token_ids and result.text == resident.text


# --- the server and the chat: a DiffusionGemma member beside the shipped pair ----------------------------------

MIXED_QUESTION = "What is (23+41)*7?"


def test_the_canvas_view_tells_accepted_from_re_noised_positions(member_a):
    """Mid-canvas, the chat's canvases view shows the positions a DiffusionGemma member has accepted on its colour
    and the ones it has not (random tokens, re-noised each step) as their current tokens struck through, never
    as masks; a masked member's card still shows its masks."""
    from tie_lite.faces.chat.app import Progress, canvases_html

    settings = DecodeSettings(gen_length=32, answer_length=None, seed=0)
    traj = start_trajectory(member_a, QUESTION, settings, watch=True)
    snapshots = []  # (pieces, accepted tokens, tokens not accepted) after each step of the first canvas

    def on_step(t):
        snapshots.append((t.pieces(), t.canvas[t.accepted].tolist(), t.canvas[~t.accepted].tolist()))

    run(traj.advance(settings, 1, on_step))
    pieces, accepted, waiting = next(s for s in snapshots if s[1] and s[2])  # part of the canvas accepted

    masked = start_trajectory(load_member("tiny-sp"), QUESTION, settings, watch=True)
    view = canvases_html(Progress(canvases={"dg-a": pieces, "tiny-sp": masked.pieces()}), ["dg-a", "tiny-sp"])
    card, masked_card = view.split('data-member="tiny-sp"', 1)
    tok = member_a.tokenizer
    assert card.count('class="tie-noise"') == len(waiting) and 'class="tie-mask"' not in card
    assert card.count('class="tie-token" data-member="dg-a"') == len(accepted)
    for t in waiting:
        text = tok.decode([t], skip_special_tokens=True) or tok.convert_ids_to_tokens(t)
        assert f'>{text}</span>' in card
    assert 'class="tie-mask"' in masked_card and "struck-through" in view


def test_the_server_answers_with_diffusion_gemma_beside_the_shipped_pair(folders):
    """`tie-lite serve` on a DiffusionGemma member and the shipped pair: a chat completion from the three is
    what `tie-lite generate` answers with them, and its trace has every member scored every round."""
    openai = pytest.importorskip("openai")
    from test_serve import KEY, generate_text, start_server

    from tie_lite.runtime.session import LoadSettings

    models = (str(folders["a"]), "tiny-sp", "tiny-bpe")
    _, url, stop = start_server(load=LoadSettings(models=models))
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
        assert [m.id for m in client.models.list()][0] == "tie:dg-a+tiny-sp+tiny-bpe"
        reply = client.chat.completions.create(model="tie:dg-a+tiny-sp+tiny-bpe", temperature=0, max_tokens=64,
                                               messages=[{"role": "user", "content": MIXED_QUESTION}])
    finally:
        stop()
    trace = reply.model_extra["tie"]
    assert trace["members"] == ["dg-a", "tiny-sp", "tiny-bpe"] and trace["final_member"] in trace["members"]
    assert all(set(r["scores"]) == set(trace["members"]) for r in trace["rounds"])
    assert reply.choices[0].message.content == generate_text(*[a for m in models for a in ("--model", m)],
                                                             prompt=MIXED_QUESTION)


def test_the_chat_answers_with_diffusion_gemma_beside_the_shipped_pair(folders):
    """The chat (gradio_client against build_app) on the same three members answers what `tie-lite generate`
    answers with them."""
    from gradio_client import Client
    from test_serve import generate_text
    from test_ui import launch

    from tie_lite.faces.client_settings import Defaults
    from tie_lite.runtime.session import LoadSettings

    models = (str(folders["a"]), "tiny-sp", "tiny-bpe")
    demo, url = launch(defaults=Defaults(load=LoadSettings(models=models)))
    try:
        text = Client(url, verbose=False).predict(MIXED_QUESTION, api_name="/chat",
                                                  settings={"models": ["dg-a", "tiny-sp", "tiny-bpe"]})
    finally:
        demo.close()
    assert text == generate_text(*[a for m in models for a in ("--model", m)], prompt=MIXED_QUESTION)
