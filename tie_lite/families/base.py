"""What a model family is: the facts that differ between MDLM families and must live in one place."""

from __future__ import annotations

import importlib
import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from transformers import AutoTokenizer

from tie_lite.checks import one_line, shown_path
from tie_lite.errors import UserError

# A checkpoint folder's tokenizer: tokenizer.json (fast tokenizers), or vocab.json + merges.txt (byte-level BPE,
# as Dream ships it), with tokenizer_config.json (specials, chat template) and the other JSON files beside them.
TOKENIZER_JSON_FILES = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "tokenizer.json",
                        "vocab.json")
COPY_TOKENIZER = "copy the tokenizer files from the original checkpoint (or download it again)"


def tokenizer_file_problem(source: str) -> str | None:
    """One line naming the tokenizer file of a checkpoint folder that is missing or damaged, and what to do; None
    when its files look whole (or `source` is a hub id: the hub's files are the library's to report)."""
    folder = Path(source)
    if not folder.is_dir():
        return None
    for name in TOKENIZER_JSON_FILES:
        path = folder / name
        if not path.is_file():
            continue
        where = f"the tokenizer file {shown_path(path)}"
        try:
            text = path.read_bytes().decode("utf-8")
            value = json.loads(text)
        except OSError as exc:
            return f"{where} cannot be read ({exc.strerror}); {COPY_TOKENIZER}"
        except UnicodeDecodeError:
            return f"{where} is not UTF-8 text (damaged); {COPY_TOKENIZER}"
        except json.JSONDecodeError as exc:
            return f"{where} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); {COPY_TOKENIZER}"
        if not isinstance(value, dict):
            return f"{where} holds a JSON {type(value).__name__}, not an object; {COPY_TOKENIZER}"
        if name == "tokenizer.json":
            from tokenizers import Tokenizer  # deferred: only a tokenizer that failed to load is read again

            try:
                Tokenizer.from_str(text)
            except Exception as exc:  # the tokenizers library's own words for what is wrong in it
                first = one_line(exc)[:160] or type(exc).__name__
                return f"{where} is not a valid tokenizer ({first}); {COPY_TOKENIZER}"
    for name in ("merges.txt", "chat_template.jinja"):
        path = folder / name
        if not path.is_file():
            continue
        try:
            lines = path.read_bytes().decode("utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            return f"the tokenizer file {shown_path(path)} is not UTF-8 text (damaged); {COPY_TOKENIZER}"
        if name == "merges.txt":
            for number, line in enumerate(lines, 1):
                if line.strip() and not line.startswith("#version") and len(line.split()) != 2:
                    return (f"the tokenizer file {shown_path(path)} line {number} is not a merge (two symbols); "
                            f"{COPY_TOKENIZER}")
    has = {name for name in ("tokenizer.json", "vocab.json", "merges.txt", "vocab.txt") if (folder / name).is_file()}
    if any(folder.glob("*.model")) or "tokenizer.json" in has or "vocab.txt" in has:  # sentencepiece, WordPiece
        return None
    if has == {"vocab.json", "merges.txt"}:
        return None
    missing = "merges.txt" if has == {"vocab.json"} else "vocab.json" if has == {"merges.txt"} else "tokenizer.json"
    return f"the tokenizer file {shown_path(folder / missing)} is missing; {COPY_TOKENIZER}"


@contextmanager
def tokenizer_errors(source: str):
    """A tokenizer that fails to load from a checkpoint folder: one line naming the missing or damaged file
    (the libraries' errors name neither the file nor the folder)."""
    try:
        yield
    except UserError:
        raise
    except Exception:
        problem = tokenizer_file_problem(source)
        if problem is None:
            raise
        raise UserError(problem) from None


def chat_prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Render the tokenizer's own chat template and encode it (templates carry their own BOS)."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer.encode(text, add_special_tokens=False)


def last_question(messages: list[dict]) -> list[dict]:
    """The conversation cut to its last user message."""
    users = [m for m in messages if m.get("role") == "user"]
    return users[-1:] if users else list(messages)


# generation_config.json keys the authors' generate() functions read, and the DecodeSettings field each sets
GENERATION_KEYS = {"max_new_tokens": "gen_length", "gen_length": "gen_length", "block_length": "block_size",
                   "steps": "steps", "temperature": "temperature", "threshold": "threshold",
                   "editing_threshold": "edit_threshold", "max_post_steps": "edit_steps", "eps": "eps",
                   "alg": "unmask", "remasking": "unmask"}
SAMPLER_NAMES = ("low_confidence", "random", "maskgit_plus", "topk_margin", "entropy")  # what tie-lite runs of them


def checkpoint_file(source: str, name: str) -> Path | None:
    """A file of a checkpoint: in its folder, or in the hub cache for a hub id (never downloaded here)."""
    folder = Path(source)
    if folder.is_dir():
        return folder / name if (folder / name).is_file() else None
    try:
        from huggingface_hub import try_to_load_from_cache  # deferred: a hub id only

        found = try_to_load_from_cache(source, name)
    except Exception:  # not a valid repo id: there is no cached file
        return None
    return Path(found) if isinstance(found, str) else None


def generation_recipe(source: str) -> dict:
    """The settings a checkpoint's generation_config.json gives its authors' generate(), where tie-lite runs
    them (a value of another kind, or a sampler tie-lite does not implement, is left to the family's recipe)."""
    path = checkpoint_file(source, "generation_config.json")
    try:
        config = json.loads(path.read_text()) if path is not None else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    if not isinstance(config, dict):
        return {}
    recipe = {}
    for key, field_name in GENERATION_KEYS.items():
        value = config.get(key)
        if key == "temperature" and (config.get("top_p") not in (None, 1, 1.0) or config.get("top_k")):
            continue  # nucleus or top-k sampling, which tie-lite does not implement: the family's greedy recipe
        if field_name == "unmask":
            if value in SAMPLER_NAMES:
                recipe[field_name] = value
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
            whole = field_name in ("gen_length", "block_size", "steps", "edit_steps")
            if not whole or (float(value).is_integer() and value > 0):
                recipe[field_name] = int(value) if whole else float(value)
    return recipe


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    auto_class: str  # transformers Auto class that loads it
    trust_remote_code: bool  # True only for architectures the project does not implement itself
    mask_token_id: int | None = None  # None: read from the config (the project's own models)
    eos_token_ids: tuple[int, ...] = ()  # empty: the tokenizer's eos
    shift_logits: bool | None = None  # None: read from the config
    hub_examples: tuple[str, ...] = ()
    native_module: str | None = None  # the project's own model classes (importing it registers them)
    # Trained on one question at a time: the prompt is the last user message alone. Given the history, such a
    # model copies an earlier answer instead of answering the follow-up.
    single_turn: bool = False
    # The canvas length the family decodes well: the shipped members were trained and measured at one length and
    # answer worse at others; None: any length (LLaDA, Dream). A server's token cap then cuts text, never the canvas.
    canvas_length: int | None = None
    # block diffusion (LLaDA2): attention is causal across blocks, so each forward is told the canvas's blocks
    block_causal: bool = False
    # The decode settings the authors' generate() uses, as DecodeSettings names them (engine/recipe.py): what a
    # member of this family decodes with where no flag says otherwise; () for tie-lite's own defaults
    recipe: tuple[tuple[str, object], ...] = ()
    recipe_source: str = ""  # which of the authors' code the recipe is, and what it leaves out
    # (config field, default): the block the checkpoint was trained with, the recipe's block size (SDAR's
    # `block_size`, Fast-dLLM v2's `bd_size`); None: the recipe's own
    block_field: tuple[str, int] | None = None
    # The canvas starts as random tokens that are accepted or re-noised (DiffusionGemma), not as masks.
    uniform_noise: bool = False

    def checkpoint_recipe(self, source: str, config=None) -> dict:
        """A checkpoint's recipe: the family's, with the block its loaded `config` names (`block_field`), under what
        its generation_config.json sets for the authors' generate() (`max_new_tokens`, `block_length`, ...)."""
        recipe = dict(self.recipe)
        if self.block_field is not None:
            name, default = self.block_field
            block = getattr(config, name, None)
            recipe["block_size"] = block if isinstance(block, int) and not isinstance(block, bool) and block > 0 \
                else default
        return recipe | generation_recipe(source)

    def register(self) -> None:
        """Import the native model module so that transformers' Auto classes know the architecture."""
        if self.native_module is not None:
            importlib.import_module(self.native_module)

    def model_loader(self):
        """What loads a checkpoint of this family (`.from_pretrained`): the transformers Auto class named by
        `auto_class`, after registering the native classes; families whose config's model_type is another
        family's (LLaDA-MoE's says "llada") return their own class."""
        self.register()
        return getattr(transformers, self.auto_class)

    def load_tokenizer(self, source: str, trust_remote_code: bool = False):
        """The checkpoint's tokenizer (families whose hub tokenizer is remote code override this); a missing or
        damaged tokenizer file is a UserError naming it."""
        with tokenizer_errors(source):
            return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code,
                                                 **self.tokenizer_options(source))

    def tokenizer_options(self, source: str) -> dict:
        """More keyword arguments for AutoTokenizer (a family whose config's model_type is another family's
        gives its own config, so that the Auto classes do not build the other family's)."""
        return {}

    def check_checkpoint(self, config: dict, source: str, tensors, name: str) -> None:
        """Raise a UserError when a checkpoint's files (config.json, its weights, other files in `source`) cannot be
        this family's, before anything loads. `tensors()`
        reads {name: (dtype, shape)} from the safetensors headers (None when unreadable). Families with more to
        check than checkpoint.checked_family does override this."""

    def config_tensors(self, config: dict) -> dict | None:
        """{name: (dtype, shape)} of every weight a checkpoint with this config.json holds, from the config alone
        (the memory plan of a checkpoint whose weights are not at hand); None: the plan approximates."""
        return None

    def routed_experts(self, config: dict) -> tuple[int, int] | None:
        """(experts a token is routed to, routed experts per MoE layer) for a mixture of experts; None if dense."""
        return None

    def is_routed_expert(self, tensor_name: str) -> bool:
        """Whether a weight belongs to a routed expert (what an experts-on-host placement leaves in host memory)."""
        return False

    def step_positions(self, config: dict) -> int | None:
        """Positions every denoising forward computes whatever lengths are asked (a uniform-noise decoder's whole
        canvas); None: the prompt and the generated positions."""
        return None

    def quantized_weight(self, tensor_name: str, shape: tuple[int, ...]) -> bool | None:
        """Whether bitsandbytes quantizes this weight when the member loads at 4 or 8 bits; None: the general
        rule (2-D weights of the numbered blocks), for families whose load follows it."""
        return None

    def mask_id(self, config) -> int:
        return self.mask_token_id if self.mask_token_id is not None else int(config.mask_token_id)

    def eos_ids(self, tokenizer) -> tuple[int, ...]:
        return self.eos_token_ids or (int(tokenizer.eos_token_id),)

    def shifted(self, config) -> bool:
        return self.shift_logits if self.shift_logits is not None else bool(getattr(config, "shift_logits", False))

    def prompt_ids(self, tokenizer, messages: list[dict]) -> list[int]:
        """The prompt as this family was trained to read it: its chat template over the conversation, or over
        the last question alone for a single-turn family."""
        if self.single_turn:
            messages = last_question(messages)
        return chat_prompt_ids(tokenizer, messages)

    @staticmethod
    def align(logits: torch.Tensor, shifted: bool) -> torch.Tensor:
        """Put the prediction for position i at index i (Dream-style models emit it at i-1)."""
        if shifted:
            return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        return logits
