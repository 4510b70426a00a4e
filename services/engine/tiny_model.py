"""A tiny, random-weight, Llama-shaped model that vLLM's CPU build serves in seconds.

It exists so that the real vLLM path (chat template, tokenizer, sampling, structured outputs, tool
parsing) runs in CI and on laptops without a model download: `switchyard up` and the vLLM tests call
`ensure_tiny_model()`, which builds it once under `$SWITCHYARD_CACHE_DIR/models/tiny-llama`.

The text it generates is noise (the weights are random), but everything around the weights is real:
a byte-level BPE tokenizer trained with the `tokenizers` library on Python's own docstrings, and a
ChatML chat template with Hermes-style tool calls (`<tool_call>{json}</tool_call>`), so vLLM's
`hermes` tool parser and xgrammar's structural tags are exercised for real.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock

logger = logging.getLogger(__name__)

# Bump when anything below changes what gets built: a cached model with another recipe is rebuilt.
RECIPE_VERSION = 4
MODEL_DIR_NAME = "tiny-llama"
_RECIPE_FILE = "switchyard-recipe.json"

# vLLM's CPU attention supports head sizes 32, 64, 80, ...; 4 heads of 32 keep hidden at 128.
_HIDDEN_SIZE = 128
_NUM_HEADS = 4
_NUM_KV_HEADS = 2
_NUM_LAYERS = 2
_INTERMEDIATE_SIZE = 256
_MAX_POSITIONS = 2048
_VOCAB_SIZE = 4096
_SEED = 0

BOS_TOKEN = "<|endoftext|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
# The whitespace JSON allows between tokens, as byte-level BPE spells it: space, tab, LF, CR.
_JSON_WHITESPACE_TOKENS = ("\u0120", "\u0109", "\u010a", "\u010d")
# Plain added tokens (not "special"): they survive skip_special_tokens, so the parsers see them. The
# tool-call tags are Hermes'; <think></think> let a reasoning parser (deepseek_r1) run on this model.
MARKUP_TOKENS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>"]

# ChatML with Hermes tool calls, as Qwen2.5 and Hermes 2 Pro format them. `developer` is a system
# message; a tool result is a user turn wrapped in <tool_response>.
CHAT_TEMPLATE = """\
{%- set system = namespace(text='') -%}
{%- if messages and messages[0].role in ['system', 'developer'] -%}
  {%- set system.text = messages[0].content -%}
  {%- set messages = messages[1:] -%}
{%- endif -%}
{%- if tools -%}
<|im_start|>system
{% if system.text %}{{ system.text }}

{% endif %}# Tools

You may call one or more functions. The function signatures are within <tools></tools>:
<tools>
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}</tools>

For each function call, return a JSON object with the function name and arguments within \
<tool_call></tool_call> tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call><|im_end|>
{% elif system.text -%}
<|im_start|>system
{{ system.text }}<|im_end|>
{% endif -%}
{%- for message in messages -%}
  {%- if message.role == 'tool' -%}
<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% elif message.role == 'assistant' -%}
<|im_start|>assistant
{% if message.content %}{{ message.content }}{% endif -%}
{%- for call in message.tool_calls or [] -%}
{%- set fn = call.function if call.function is defined else call -%}
{% if loop.first and message.content %}
{% endif %}<tool_call>
{"name": "{{ fn.name }}", "arguments": {% if fn.arguments is string %}{{ fn.arguments }}\
{% else %}{{ fn.arguments | tojson }}{% endif %}}
</tool_call>
{%- endfor %}<|im_end|>
{% else -%}
<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
<|im_start|>assistant
{% endif -%}
"""

# Modules whose docstrings make the tokenizer's training text: they ship with every CPython, so the
# corpus (and with it the vocabulary) is the same wherever the model is built with one Python.
_CORPUS_MODULES = """
abc argparse ast asyncio base64 bisect builtins calendar cmath codecs collections
concurrent.futures configparser contextlib copy csv dataclasses datetime decimal difflib dis
email enum fnmatch fractions functools glob gzip hashlib heapq hmac html http.client inspect io
ipaddress itertools json logging math numbers operator os pathlib pickle pprint queue random re
sched secrets selectors shlex shutil signal socket statistics string struct subprocess sys
tarfile tempfile textwrap threading time tokenize traceback types typing unittest urllib.parse
uuid warnings weakref zipfile zlib
""".split()


def default_model_dir() -> Path:
    """`$SWITCHYARD_CACHE_DIR/models/tiny-llama`; the cache dir defaults to `.cache/` at the
    repository root."""
    cache = os.environ.get("SWITCHYARD_CACHE_DIR") or Path(__file__).resolve().parents[2] / ".cache"
    return Path(cache) / "models" / MODEL_DIR_NAME


def ensure_tiny_model(folder: Path | None = None) -> Path:
    """Returns `folder` (default: default_model_dir()) holding the tiny model, building it first if
    it is missing or was built by another recipe.

    Safe to call from several processes at once: a file lock beside the folder serializes builders,
    and the folder appears by an atomic rename, so a reader never sees half a model.
    """
    target = folder or default_model_dir()
    if _is_current(target):
        return target
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(parent / f"{target.name}.lock")):
        if _is_current(target):  # another process built it while we waited
            return target
        logger.info("building the tiny local model in %s", target)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=parent))
        staging.chmod(0o755)  # mkdtemp's 0700 would hide the model from other users of the cache
        try:
            _build(staging)
            if target.exists():
                retired = Path(tempfile.mkdtemp(prefix=f".{target.name}-old-", dir=parent))
                target.rename(retired / target.name)
                shutil.rmtree(retired)
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target


def _is_current(folder: Path) -> bool:
    try:
        recipe = json.loads((folder / _RECIPE_FILE).read_text())
    except (OSError, ValueError):
        return False
    return recipe.get("version") == RECIPE_VERSION


def _build(folder: Path) -> None:
    tokenizer = _train_tokenizer()
    _save_tokenizer(tokenizer, folder)
    _save_model(tokenizer, folder)
    # Written last: its presence means the folder is complete.
    (folder / _RECIPE_FILE).write_text(json.dumps({"version": RECIPE_VERSION}))


def _corpus() -> Iterator[str]:
    for name in _CORPUS_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # a stripped-down Python; the vocabulary differs but stays valid
            continue
        yield inspect.getdoc(module) or ""
        for attr in sorted(vars(module)):
            if attr.startswith("_"):
                continue
            doc = inspect.getdoc(getattr(module, attr))
            if doc:
                yield doc
    # The chat and tool-call markup, so that JSON punctuation gets compact tokens too.
    yield CHAT_TEMPLATE
    yield json.dumps({"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}})


def _train_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    # Byte-level: every string has an encoding, which structured outputs (any JSON text) rely on.
    # Each whitespace character stays a token of its own: with runs of indentation as single
    # tokens, random weights would fill every place a JSON grammar allows whitespace with them, and
    # a structured output (a tool call's arguments) would never end.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\s"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_VOCAB_SIZE - len(MARKUP_TOKENS),
        special_tokens=[BOS_TOKEN, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    tokenizer.add_tokens(MARKUP_TOKENS)
    return tokenizer


def _save_tokenizer(tokenizer, folder: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    hf_tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=IM_END,
        pad_token=BOS_TOKEN,
        model_max_length=_MAX_POSITIONS,
        chat_template=CHAT_TEMPLATE,
    )
    hf_tokenizer.save_pretrained(folder)


def _save_model(tokenizer, folder: Path) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    bos_id, eos_id = tokenizer.token_to_id(BOS_TOKEN), tokenizer.token_to_id(IM_END)
    config = LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=_HIDDEN_SIZE,
        intermediate_size=_INTERMEDIATE_SIZE,
        num_hidden_layers=_NUM_LAYERS,
        num_attention_heads=_NUM_HEADS,
        num_key_value_heads=_NUM_KV_HEADS,
        head_dim=_HIDDEN_SIZE // _NUM_HEADS,
        max_position_embeddings=_MAX_POSITIONS,
        tie_word_embeddings=False,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=bos_id,
        torch_dtype="float32",
    )
    torch.manual_seed(_SEED)
    model = LlamaForCausalLM(config)
    _shun_free_whitespace(model, [tokenizer.token_to_id(t) for t in _JSON_WHITESPACE_TOKENS])
    model.save_pretrained(folder, safe_serialization=True)
    # Only the stop tokens: sampling defaults stay OpenAI's (vLLM reads other fields as defaults).
    GenerationConfig(bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=bos_id).save_pretrained(folder)


def _shun_free_whitespace(model, whitespace_ids: list[int]) -> None:
    """Makes whitespace tokens all but impossible unless a grammar leaves nothing else.

    Random weights spread probability evenly, so wherever a JSON grammar allows whitespace (between
    any two tokens of a structured output or a tool call's arguments) the handful of whitespace
    tokens would win again and again, and the JSON would not close within any max_tokens. Every
    input embedding gets a constant first component, which the final norm turns into a large
    positive h[0] at every position; the output rows of whitespace tokens weigh h[0] negatively
    (about -11 in logit), the other rows ignore it. Context still decides among all other tokens.
    """
    import torch

    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 1.0
        model.lm_head.weight[:, 0] = 0.0
        model.lm_head.weight[whitespace_ids, 0] = -1.0
