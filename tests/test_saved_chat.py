"""Saved conversations: Chat.save / Model.load_chat, the checked file format, restoring without prefill."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import edgellama
from edgellama.errors import ContextOverflowError, ModelNotFoundError, SavedStateError
from edgellama.sampling import SamplingParams
from helpers.serving import model, tiny_package  # noqa: F401

GREEDY = SamplingParams(temperature=0.0)
TURNS = [f"The fox {i}?" for i in range(20)]


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return tiny_package(tmp_path_factory, max_length=1024)


def _talk(chat, turns):
    return [chat.send(text).text for text in turns]


def test_context_save_and_load_round_trip(model):
    ctx = model.new_context()
    ctx.append(list(range(3, 40)))
    ctx.next_token(ctx.sampler(GREEDY))            # a pending token: recorded, not cached
    buf = io.BytesIO()
    ctx.save(buf)
    other = model.new_context()
    other.load(io.BytesIO(buf.getvalue()))
    assert other.tokens.tolist() == ctx.tokens.tolist() and other.cached == ctx.cached == ctx.length - 1
    for a, b in zip(ctx.kv.keys + ctx.kv.values, other.kv.keys + other.kv.values):
        np.testing.assert_array_equal(a[:, :, :ctx.cached], b[:, :, :ctx.cached])
    with pytest.raises(SavedStateError, match="truncated"):
        model.new_context().load(io.BytesIO(buf.getvalue()[:50]))


def test_a_saved_context_with_a_damaged_token_is_refused_and_one_without_a_checksum_still_loads(model):
    """The checksum covers the count and the ids (the cache's own covers only the cache: a flipped byte in
    the ids loaded as other text over the old keys and values); files written before it (count first) load."""
    ctx = model.new_context()
    ctx.append(list(range(3, 40)))
    buf = io.BytesIO()
    ctx.save(buf)
    data = buf.getvalue()
    assert data[:4] == b"ELCP"                   # then the package's digest (32 bytes), the crc32, the count
    for at in (40, 44, 44 + 4 * 36 + 3):         # the count, the first id, the last id's high byte
        damaged = bytearray(data)
        damaged[at] ^= 1
        with pytest.raises((SavedStateError, ContextOverflowError), match="damaged|does not fit|ids outside|records"):
            model.new_context().load(io.BytesIO(bytes(damaged)))
    for legacy_data in (b"ELCX" + data[36:], data[40:]):   # no digest; no magic nor checksum: as earlier
        legacy = model.new_context()                       # versions wrote them
        legacy.load(io.BytesIO(legacy_data))
        assert legacy.tokens.tolist() == ctx.tokens.tolist() and legacy.cached == ctx.cached


def test_a_saved_context_is_read_only_by_its_package_and_a_refused_one_leaves_the_context_as_it_was(
        model, tmp_path_factory):
    """It loaded into another package's context of the same shape, whose weights never made those keys; and a
    refused file emptied the context it was read into."""
    ctx = model.new_context()
    ctx.append(list(range(3, 20)))
    buf = io.BytesIO()
    ctx.save(buf)
    other = edgellama.load(tiny_package(tmp_path_factory, seed=5), threads=1).new_context()
    other.append([5, 6, 7])
    before = other.tokens.tolist(), other.cached
    with pytest.raises(SavedStateError, match="another model package"):
        other.load(io.BytesIO(buf.getvalue()))
    damaged = bytearray(buf.getvalue())
    damaged[-1] ^= 1                             # the cache's own checksum refuses it
    mine = model.new_context()
    mine.append([5, 6, 7])
    kept = mine.tokens.tolist(), mine.cached
    with pytest.raises(SavedStateError, match="checksum"):
        mine.load(io.BytesIO(bytes(damaged)))
    # a record of 5 tokens before a cache of all 17: refused before a row is written
    import zlib

    data = buf.getvalue()
    record = np.int32(5).tobytes() + np.arange(3, 8, dtype="<i4").tobytes()
    short = data[:36] + np.uint32(zlib.crc32(record)).astype("<u4").tobytes() + record + data[44 + 4 * 17:]
    with pytest.raises(SavedStateError, match="caches 17 positions, more than the 5 tokens"):
        mine.load(io.BytesIO(short))
    assert (other.tokens.tolist(), other.cached) == before and (mine.tokens.tolist(), mine.cached) == kept
    assert kept[1] == 3


@pytest.mark.parametrize("data, words", [(b"", "empty or truncated"), (b"hello world, no context here",
                                                                         "not a saved context")])
def test_data_that_is_no_saved_context_is_called_so(model, data, words):
    with pytest.raises(SavedStateError, match=words):
        model.new_context().load(io.BytesIO(data))


def test_restored_chat_goes_on_like_the_uninterrupted_one(model, tmp_path):
    chat = model.new_chat(system="You are brief.", max_new_tokens=6, sampling=GREEDY, stop=["zz"])
    _talk(chat, TURNS[:5])
    chat.save(tmp_path / "chat.elchat")
    expected = chat.send(TURNS[5])

    restored = model.load_chat(tmp_path / "chat.elchat")
    assert restored.messages == chat.messages[:-2]
    assert restored.sampling == GREEDY and restored.options.max_new_tokens == 6 and restored.options.stop == ("zz",)
    result = restored.send(TURNS[5])
    assert result.text == expected.text and result.token_ids == expected.token_ids
    # only the new message ran, as in the uninterrupted chat: what was said before came from the file
    assert result.timings.prefilled_tokens == expected.timings.prefilled_tokens
    assert result.timings.prefilled_tokens < result.timings.prompt_tokens / 3


def test_saved_twenty_turns_restore_in_a_new_process(package, model, tmp_path):
    chat = model.new_chat(system="You are brief.", max_new_tokens=4, sampling=GREEDY)
    _talk(chat, TURNS[:20])
    path = tmp_path / "twenty.elchat"
    chat.save(path)
    expected = chat.send("And one more?")
    script = textwrap.dedent(f"""
        import json, edgellama
        model = edgellama.load({str(package)!r}, threads=1)
        chat = model.load_chat({str(path)!r})
        restored = chat.send("And one more?")
        fresh = model.new_chat(system="You are brief.", max_new_tokens=4,
                               sampling=edgellama.SamplingParams(temperature=0.0))
        fresh.messages = chat.messages[:-2]
        again = fresh.send("And one more?")
        print(json.dumps({{"text": restored.text, "fresh_text": again.text,
                          "prefilled": restored.timings.prefilled_tokens,
                          "prompt": restored.timings.prompt_tokens,
                          "ttft_restored_ms": restored.timings.ttft_s * 1000,
                          "ttft_fresh_ms": again.timings.ttft_s * 1000}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"20-turn chat of {report['prompt']} tokens: TTFT restored {report['ttft_restored_ms']:.1f} ms "
          f"(prefilled {report['prefilled']}), fresh prefill {report['ttft_fresh_ms']:.1f} ms")
    assert report["text"] == expected.text == report["fresh_text"]
    assert report["prompt"] > 250 and report["prefilled"] == expected.timings.prefilled_tokens


def _saved(model, tmp_path):
    chat = model.new_chat(system="Hi.", max_new_tokens=4, sampling=GREEDY)
    chat.send("Hello there")
    path = tmp_path / "c.elchat"
    chat.save(path)
    return path


@pytest.mark.parametrize("damage", ["flip_kv", "flip_meta", "truncate", "append"])
def test_a_damaged_file_is_refused(model, tmp_path, damage):
    path = _saved(model, tmp_path)
    data = bytearray(path.read_bytes())
    if damage == "flip_kv":
        data[-100] ^= 0x01
    elif damage == "flip_meta":
        data[70] ^= 0x20
    elif damage == "truncate":
        data = data[:len(data) // 2]
    else:
        data += b"\0"
    path.write_bytes(bytes(data))
    with pytest.raises(SavedStateError, match="damaged"):
        model.load_chat(path)


def test_another_format_version_is_refused(model, tmp_path):
    path = _saved(model, tmp_path)
    data = bytearray(path.read_bytes())
    data[8:12] = (99).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(SavedStateError, match="format version 99"):
        model.load_chat(path)


def test_a_version_1_file_whose_context_has_no_package_digest_still_loads(model, tmp_path):
    """Version 2 writes the context with its package's digest ("ELCP"); files of version 1 ("ELCX") load."""
    import hashlib
    import struct

    path = _saved(model, tmp_path)
    chat = model.load_chat(path)
    data = path.read_bytes()
    head = struct.Struct("<8sIIQ32s")
    magic, version, head_len, payload_len, _ = head.unpack_from(data)
    assert version == 2
    body = data[head.size:]
    meta, payload = body[:head_len], body[head_len:]
    assert payload[:4] == b"ELCP"
    payload = b"ELCX" + payload[36:]
    old = head.pack(magic, 1, head_len, len(payload), hashlib.sha256(meta + payload).digest()) + meta + payload
    path.write_bytes(old)
    restored = model.load_chat(path)
    assert restored.messages == chat.messages and restored.context.tokens.tolist() == chat.context.tokens.tolist()


def test_another_package_is_refused(model, tmp_path, tmp_path_factory):
    path = _saved(model, tmp_path)
    other = edgellama.load(tiny_package(tmp_path_factory, seed=5), threads=1)
    with pytest.raises(SavedStateError, match="another model package"):
        other.load_chat(path)


def test_not_a_saved_chat(model, tmp_path):
    with pytest.raises(ModelNotFoundError):
        model.load_chat(tmp_path / "missing.elchat")
    (tmp_path / "text.elchat").write_text("hello, this is not a chat at all, but long enough to have a header")
    with pytest.raises(SavedStateError, match="not a saved chat"):
        model.load_chat(tmp_path / "text.elchat")


def test_saving_while_answering_is_refused(model, tmp_path):
    chat = model.new_chat(max_new_tokens=8, sampling=GREEDY)
    stream = chat.stream("Hello")
    next(stream)
    with pytest.raises(edgellama.ChatBusyError):
        chat.save(tmp_path / "busy.elchat")
    stream.close()
    chat.save(tmp_path / "busy.elchat")
    assert not list(tmp_path.glob(".busy.elchat.*"))     # no temporary file is left


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8}},
                   "required": ["city"], "additionalProperties": False}}}


def test_a_chat_with_tools_keeps_them(tmp_path, tmp_path_factory):
    model = edgellama.load(tiny_package(tmp_path_factory, max_length=2048), threads=1)
    chat = model.new_chat(max_new_tokens=120, sampling=GREEDY)
    chat.send("Weather in Paris?", tools=[WEATHER], tool_choice="required")
    chat.save(tmp_path / "tools.elchat")
    expected = chat.send("And in Rome?", tools=[WEATHER], tool_choice="required")
    restored = model.load_chat(tmp_path / "tools.elchat")
    result = restored.send("And in Rome?", tools=[WEATHER], tool_choice="required")
    assert result.tool_calls and [(c.name, c.arguments) for c in result.tool_calls] == \
        [(c.name, c.arguments) for c in expected.tool_calls]
    assert result.timings.prefilled_tokens == expected.timings.prefilled_tokens < result.timings.prompt_tokens / 3


def test_a_chat_saved_when_its_context_is_full_loads(package, tmp_path):
    """An answer that filled the context leaves the token drawn last recorded after the full cache
    (capacity + 1 tokens): the file holds it, and loading takes it back."""
    small = edgellama.load(package, threads=1, max_length=48)
    chat = small.new_chat(max_new_tokens=200, sampling=SamplingParams(temperature=0.0, logit_bias={2: -100.0}))
    assert chat.send("Tell me a long story.").finish_reason == "context_full"
    assert chat.context.length == 49 and chat.context.cached == 48
    chat.save(tmp_path / "full.elchat")
    restored = small.load_chat(tmp_path / "full.elchat")
    assert restored.messages == chat.messages
    assert restored.context.tokens.tolist() == chat.context.tokens.tolist()


def test_a_save_interrupted_as_its_file_is_created_leaves_nothing(model, tmp_path, monkeypatch):
    """An interrupt arriving just after the temporary file is created (inside tempfile.mkstemp, before it
    returned the name) left the file, and its descriptor open, for the life of the process."""
    import os

    chat = model.new_chat(system="Be brief.")
    chat.save(tmp_path / "chat.bin")
    before = (tmp_path / "chat.bin").read_bytes()
    real_open = os.open

    def open_then_interrupt(*args, **kwargs):
        os.close(real_open(*args, **kwargs))   # the file exists when the interrupt comes
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "open", open_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        chat.save(tmp_path / "chat.bin")
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["chat.bin"]
    assert (tmp_path / "chat.bin").read_bytes() == before


def test_a_chat_saved_with_another_cache_type_is_refused_naming_the_file(package, tmp_path):
    chat = edgellama.load(package, threads=1, kv_cache="int8").new_chat(max_new_tokens=2, sampling=GREEDY)
    chat.send("Hello")
    chat.save(tmp_path / "chat.elchat")
    other = edgellama.load(package, threads=1, kv_cache="float16")
    with pytest.raises(SavedStateError) as info:
        other.load_chat(tmp_path / "chat.elchat")
    assert "<stream>" not in str(info.value) and "kv_cache='int8'" in str(info.value)
    assert str(info.value).count("chat.elchat") >= 1
