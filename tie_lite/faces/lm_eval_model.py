"""tie-lite as an lm-evaluation-harness model named `tie-lite` (importing this module registers it).

    tie-lite lm-eval --tasks gsm8k --model_args members=GSAI-ML/LLaDA-1.5+Dream-org/Dream-v0-Instruct-7B,score=tcc

or from Python, after `import tie_lite.faces.lm_eval_model`:

    lm_eval.simple_evaluate(model="tie-lite", model_args="members=tiny-sp+tiny-bpe", tasks=[...])
    lm_eval.simple_evaluate(model=TieLiteLM(members="tiny-sp+tiny-bpe"), tasks=[...])

`generate_until` decodes every request with TIE (the members, score, selection and interval named in the model
arguments), many requests batched step by step as `tie-lite eval` batches them. The generation length is the
request's `max_gen_toks` (rounded up to whole blocks), or `gen_length` when the model arguments give one; a length
that does not fit a member's context after the prompt is shortened to what fits, with a warning. The layout is
free (no answer marker: lm-eval's tasks read their own answers from the text) unless `answer_length` is given.
Each member renders a context with its own chat template, as a user message; with `--apply_chat_template` the
harness's messages reach each member's template as messages.

Log-likelihood requests are refused: an MDLM ensemble decoded with TIE has no single log-likelihood, and the
Monte-Carlo estimate the LLaDA authors use scores one model, not the ensemble.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from tie_lite.checks import shown
from tie_lite.engine.tie import tie_process
from tie_lite.errors import UserError
from tie_lite.faces import options  # the CLI's flags, defaults and checks: model arguments are checked as flags
from tie_lite.runtime.drive import run_many
from tie_lite.runtime.loading import loadable
from tie_lite.runtime.session import Ensemble

log = logging.getLogger("tie_lite.lm_eval")

# Messages from apply_chat_template travel to generate_until inside the context string, so that each member
# renders them with its own template (the members' templates differ; one rendered string would suit only one).
CHAT_PREFIX = "\x00tie-lite-chat\x00"

# model argument -> the CLI flag's destination; values are checked by the CLI's own checks
SETTINGS = {"score": "score", "select": "select", "interval": "interval", "gen_length": "gen_length",
            "block_size": "block_size", "steps": "steps", "unmask": "unmask", "threshold": "threshold",
            "topk": "topk", "schedule": "schedule", "cache": "cache", "answer_length": "answer_length",
            "answer_marker": "answer_marker", "seed": "decode_seed", "quant": "quant", "quant_backend": "quant_backend",
            "dtype": "dtype", "max_memory": "max_memory", "trust_remote_code": "trust_remote_code",
            "allow_pickle": "allow_pickle", "temperature": "temperature"}


def model_arguments(members, given: dict):
    """The CLI's settings namespace from lm-eval model arguments (`members=A+B`, then `key=value`s), each value
    read as its CLI flag reads it (a whole number, a number, true/false) or refused in one line naming it."""
    parser = options.Parser(prog="tie-lite lm-eval")
    options.add_model_args(parser)
    options.add_decode_args(parser)
    options.add_tie_args(parser)
    args = parser.parse_args([])
    unknown = sorted(set(given) - set(SETTINGS))
    if unknown:
        raise UserError(f"unknown tie-lite model argument(s) {', '.join(shown(k) for k in unknown)}; use "
                        f"members=A+B and any of {', '.join(SETTINGS)}")
    if members:
        args.model = members if isinstance(members, (list, tuple)) else [m for m in str(members).split("+") if m]
    actions = {action.dest: action for action in parser._actions}
    for key, value in given.items():
        if SETTINGS[key] not in actions:  # no CLI flag of its own (answer_marker): model_settings applies it
            continue
        value = setting_value(key, value, actions[SETTINGS[key]])
        setattr(args, SETTINGS[key], [value] if key == "select" else value)
    args.free = "answer_length" not in given  # lm-eval's tasks read their answers from the text themselves
    # the arguments given set every member (the layout always: lm-eval's tasks read the text); the rest is each
    # member's recipe
    args.decode_given = {SETTINGS[k] for k in given} | {"answer_length"}  # options.given_fields keeps the decode ones
    return args


def setting_value(key: str, value, action):
    """A model argument's value (lm-eval has already turned `16` into 16 and `true` into True) as its CLI flag
    takes it."""
    if action.nargs == 0:  # a switch: --trust-remote-code, --allow-pickle
        if isinstance(value, bool) or str(value).lower() in ("true", "false", "1", "0"):
            return value if isinstance(value, bool) else str(value).lower() in ("true", "1")
        raise UserError(f"tie-lite model argument {key}={shown(value)} is not true or false; write {key}=true")
    if action.type is None:
        return str(value)
    try:
        return action.type(str(value))
    except argparse.ArgumentTypeError as exc:
        raise UserError(f"tie-lite model argument {key}={shown(value)}: {exc}") from None


def model_settings(members, device, settings: dict, quiet: bool = False):
    """(args, decode, tie, load settings, the requested gen_length or None) from lm-eval's model arguments and its
    --device: every value checked as the CLI checks its flags, nothing loaded."""
    settings = {k: v for k, v in settings.items() if v is not None}
    args = model_arguments(members, settings)
    args.device = [lm_eval_device(device, quiet=quiet)]
    gen_length = args.gen_length if "gen_length" in settings else None  # None: each request's max_gen_toks
    decode, tie = options.decode_settings(args), options.tie_settings(args)
    if "answer_marker" in settings:
        decode = replace(decode, answer_marker=str(settings["answer_marker"]))
    return args, decode, tie, options.load_settings(args), gen_length


def check_model_arguments(model_args: dict) -> None:
    """lm-eval's --model_args (and --device) for `tie-lite`, checked before lm-eval indexes its tasks: the
    values, and that every member's checkpoint is there and may load (its config.json and weight files only;
    nothing loads)."""
    settings = dict(model_args)
    members, device = settings.pop("members", None), settings.pop("device", None)
    for taken in ("batch_size", "max_batch_size"):  # TieLiteLM's own parameters, as lm-eval passes them
        settings.pop(taken, None)
    *_, load, _ = model_settings(members, device, settings, quiet=True)
    for spec in load.models:
        loadable(spec, trust_remote_code=load.trust_remote_code, allow_pickle=load.allow_pickle)


@register_model("tie-lite")
class TieLiteLM(LM):
    """An MDLM ensemble decoded with TIE, as one lm-eval model."""

    def __init__(self, members=None, batch_size=None, max_batch_size=None, device=None, **settings):
        super().__init__()
        options.quiet_libraries()
        self.args, self.decode, self.tie, load, self.gen_length = model_settings(members, device, settings)
        self.max_batch = int(batch_size) if str(batch_size or "").isdigit() else 64
        self.ensemble = Ensemble(load, plan_tokens=options.plan_tokens(self.args))
        self.names = [m.name for m in self.ensemble.members]
        self._warned: set[tuple[int, int]] = set()

    # --- what lm-eval asks of a model ---------------------------------------------------------------------

    @property
    def tokenizer_name(self) -> str:
        return "tie-lite:" + "+".join(self.names)

    def chat_template(self, chat_template=False) -> str:
        return "each member's own"

    def apply_chat_template(self, chat_history: list[dict], add_generation_prompt: bool = True) -> str:
        return CHAT_PREFIX + json.dumps(chat_history)

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise UserError("tie-lite decodes with TIE and has no log-likelihood to give (the ensemble's answer is a "
                        "decoded text): choose generate_until tasks, e.g. gsm8k, or the *_cot / generative variants")

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        self.loglikelihood(requests)

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        jobs = []
        for req in requests:
            context, gen_kwargs = req.args
            jobs.append((messages_of(context), dict(gen_kwargs or {})))
        outputs: list[str | None] = [None] * len(jobs)
        groups: dict[tuple, list[int]] = {}
        for k, (messages, gen_kwargs) in enumerate(jobs):
            decode = self.request_decode(messages, gen_kwargs)
            groups.setdefault((decode.gen_length, decode.temperature), []).append(k)
        self.ensemble.scheduler.select(None)
        bar = tqdm(total=len(jobs), desc="tie-lite", unit="request", file=sys.stderr,
                   disable=disable_tqdm or not sys.stderr.isatty())
        for indices in groups.values():
            decode = self.request_decode(*jobs[indices[0]])
            longest = max(indices, key=lambda k: len(json.dumps(jobs[k][0])))
            batch = min(self.max_batch, self.ensemble.batch_limit(jobs[longest][0], decode, self.tie))
            processes = [tie_process(self.ensemble.scheduler, jobs[k][0], decode, self.tie) for k in indices]
            results = run_many(processes, self.ensemble.scheduler, on_done=lambda k, res: bar.update(1),
                               max_batch=batch)
            for k, result in zip(indices, results):
                outputs[k] = cut_at(result.text, jobs[k][1].get("until"))
        bar.close()
        return outputs

    # --- settings per request ---------------------------------------------------------------------------------

    def request_decode(self, messages: list[dict], gen_kwargs: dict):
        """This request's decode settings: its length (max_gen_toks, whole blocks, within every member's context)
        and temperature (0 unless it samples)."""
        d = self.decode
        block = d.block_size
        wanted = self.gen_length or int(gen_kwargs.get("max_gen_toks") or d.gen_length)
        length = -(-wanted // block) * block
        room = min((m.max_length or 10**9) - len(m.prompt_ids(messages)) for m in self.ensemble.members)
        fits = room // block * block
        if length > fits:
            if fits < block or (d.answer_length and fits <= d.answer_length + block):
                raise UserError(f"a prompt of this task leaves {max(room, 0)} tokens of a member's context, too "
                                f"few for one block of {block}; use members with a longer context or shorter prompts")
            if (length, fits) not in self._warned:
                self._warned.add((length, fits))
                log.warning("tie-lite: a generation of %d tokens does not fit a member's context after the prompt; "
                            "generating %d", length, fits)
            length = fits
        temperature = float(gen_kwargs.get("temperature") or 0.0) if gen_kwargs.get("do_sample") else 0.0
        return replace(d.for_length(length), temperature=temperature)


def lm_eval_device(device: str | None, quiet: bool = False) -> str:
    """lm-eval's --device for every member. Its command line says cuda:0 when no --device is given, so on a
    machine without CUDA that means "wherever possible" (as its own hf model takes it), not an error."""
    if not device:
        return "auto"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        if not quiet:
            log.warning("tie-lite: no CUDA GPU is visible; the members run on the CPU")
        return "cpu"
    return str(device)


def messages_of(context: str) -> list[dict]:
    """The request's messages: the harness's chat history (apply_chat_template), or its context as a user message."""
    if context.startswith(CHAT_PREFIX):
        return json.loads(context[len(CHAT_PREFIX):])
    return [{"role": "user", "content": context}]


def cut_at(text: str, until) -> str:
    """The text up to the first stop sequence, as lm-eval's own models return it."""
    for stop in [until] if isinstance(until, str) else (until or []):
        if stop and stop in text:
            text = text.split(stop, 1)[0]
    return text
