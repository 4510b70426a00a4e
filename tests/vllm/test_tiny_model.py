"""The tiny local model: built once, atomically, even by concurrent callers; a Hugging Face folder
whose tokenizer and chat template behave as vLLM's serving path expects."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from transformers import AutoConfig, AutoTokenizer

from services.engine.tiny_model import MODEL_DIR_NAME, ensure_tiny_model

pytestmark = pytest.mark.vllm


def test_concurrent_callers_build_one_complete_model(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="services.engine.tiny_model")
    folder = tmp_path / "models" / MODEL_DIR_NAME
    with ThreadPoolExecutor(max_workers=2) as pool:
        paths = list(pool.map(lambda _: ensure_tiny_model(folder), range(2)))

    assert paths == [folder] * 2
    assert sum("building the tiny local model" in r.getMessage() for r in caplog.records) == 1
    # Nothing half-built is left beside it.
    assert sorted(p.name for p in folder.parent.iterdir() if p.is_dir()) == [MODEL_DIR_NAME]
    config = AutoConfig.from_pretrained(paths[0])
    assert config.model_type == "llama"
    assert config.head_dim in (32, 64), "a head size vLLM's CPU attention supports"
    # A later call finds it and builds nothing.
    caplog.clear()
    assert ensure_tiny_model(folder) == folder
    assert not caplog.records


def test_tokenizer_round_trips_any_text():
    tokenizer = AutoTokenizer.from_pretrained(ensure_tiny_model())
    text = 'déjà vu — {"city": "Zürich"}\n\tnaïve 東京 🙂'
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_chat_template_writes_hermes_tool_calls():
    tokenizer = AutoTokenizer.from_pretrained(ensure_tiny_model())
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Rome"}}}
            ],
        },
        {"role": "tool", "content": '{"celsius": 21}'},
    ]
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    prompt = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>system\nBe brief.\n\n# Tools")
    assert '"name": "get_weather"' in prompt
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>' in prompt
    assert '<tool_response>\n{"celsius": 21}\n</tool_response>' in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
