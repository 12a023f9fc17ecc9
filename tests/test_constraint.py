"""Constrained decoding: outputs that parse and validate, regex full matches, grammars, refusals,
the length limit mid-object, response_format, logprobs after the mask, the CLI and bench options.

Most tests run a tiny random model (its text is noise, so every structure comes from the mask);
the `slow` ones run the default SmolLM2 package.
"""
from __future__ import annotations

import json
import re

import jsonschema
import numpy as np
import pytest

from helpers.tiny_llama import convert_tiny, make_tiny_llama

import edgellama
from edgellama import Constraint, InvalidParameterError, SamplingParams
from edgellama.cli import main

SCHEMAS = {
    "nested": {"type": "object", "additionalProperties": False, "required": ["name", "address"],
               "properties": {"name": {"type": "string", "maxLength": 12},
                              "address": {"type": "object", "additionalProperties": False,
                                          "required": ["city", "zip"],
                                          "properties": {"city": {"type": "string", "maxLength": 10},
                                                         "zip": {"type": "string", "pattern": "^[0-9]{5}$"}}}}},
    "array": {"type": "object", "additionalProperties": False, "required": ["tags"],
              "properties": {"tags": {"type": "array", "minItems": 1, "maxItems": 4,
                                      "items": {"type": "string", "maxLength": 6}}}},
    "enum": {"type": "object", "additionalProperties": False, "required": ["color", "size"],
             "properties": {"color": {"enum": ["red", "green", "blue"]},
                            "size": {"type": "string", "enum": ["S", "M", "L"]}}},
    "pattern": {"type": "object", "additionalProperties": False, "required": ["code"],
                "properties": {"code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"}}},
    "bounded numbers": {"type": "object", "additionalProperties": False, "required": ["age", "score", "ratio"],
                        "properties": {"age": {"type": "integer", "minimum": 18, "maximum": 99},
                                       "score": {"type": "integer", "exclusiveMinimum": -5, "maximum": 5},
                                       "ratio": {"type": "number", "minimum": 0, "maximum": 1, "multipleOf": 0.01}}},
}
SAMPLERS = {"greedy": SamplingParams.greedy(),
            "sampled": SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=7),
            "filtered": SamplingParams(temperature=0.7, top_k=5, top_p=0.9, typical_p=0.8, repeat_penalty=1.3,
                                       logit_bias={5: 3.0}, seed=3)}
EOS_BANNED = {2: -1e9}    # the tiny tokenizer's <|im_end|>


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = make_tiny_llama(tmp_path_factory.mktemp("ckpt") / "tiny")
    package = convert_tiny(folder, tmp_path_factory.mktemp("pkg") / "tiny-fp32", max_length=256)
    return edgellama.load(package, threads=1)


@pytest.mark.parametrize("sampler", SAMPLERS, ids=str)
@pytest.mark.parametrize("name", SCHEMAS, ids=str)
def test_json_outputs_parse_and_validate(tiny, name, sampler):
    schema = SCHEMAS[name]
    result = tiny.generate("Data:", max_new_tokens=160, sampling=SAMPLERS[sampler],
                           constraint=Constraint.json_schema(schema))
    assert result.finish_reason == "eos", result.text
    jsonschema.validate(json.loads(result.text), schema)


@pytest.mark.parametrize("seed", range(4))
def test_regex_outputs_match_in_full(tiny, seed):
    pattern = r"[A-Z][a-z]{2,6} (is|was) [0-9]{1,3}(\.[0-9])?"
    result = tiny.generate("x", max_new_tokens=40, sampling=SamplingParams(seed=seed, temperature=1.5),
                           constraint=Constraint.regex(pattern))
    assert re.fullmatch(pattern, result.text), result.text


def test_a_lark_grammar_and_streaming(tiny):
    grammar = 'start: "answer: " ("yes" | "no") "!"\n'
    stream = tiny.stream("q", max_new_tokens=20, sampling=SamplingParams(seed=1),
                         constraint=Constraint.grammar(grammar))
    text = "".join(stream)
    assert text in ("answer: yes!", "answer: no!") and stream.result.text == text
    assert stream.result.finish_reason == "eos"


@pytest.mark.parametrize("make, source, words", [
    (Constraint.json_schema, {"type": "object", "properties": {"a": {"type": "frobnicate"}}}, "json schema"),
    (Constraint.json_schema, "{not json", "not valid JSON"),
    (Constraint.json_schema, ["a list"], "must be an object"),
    (Constraint.json_schema, False, "false matches no value"),
    (Constraint.regex, "[0-9", r"^invalid regex: [^\n]*unclosed character class$"),      # one line
    (Constraint.from_response_format, {"type": "json_schema", "json_schema": {"name": "x", "strict": True}},
     "has no 'schema'"),
    (Constraint.json_schema, "false", "false matches no value"),
    (Constraint.from_response_format, {"type": "xml"}, r"\{'schema': \{\.\.\.\}\}\}, \{'type': 'json_object'\}"),
    (Constraint.regex, "a(b", "invalid regex"),
    (Constraint.grammar, "start: undefined_rule\n", "invalid grammar"),
])
def test_invalid_constraints_are_refused_when_made(make, source, words):
    with pytest.raises(InvalidParameterError, match=words):
        make(source)


def test_refused_before_any_token(tiny):
    with pytest.raises(InvalidParameterError, match="must be an edgellama.Constraint"):
        tiny.stream("x", constraint={"type": "object"})
    with pytest.raises(InvalidParameterError, match="response_format"):
        tiny.chat([{"role": "user", "content": "hi"}], response_format={"type": "xml"})


def test_length_mid_object_is_length_not_success(tiny):
    schema = {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}}
    result = tiny.generate("x", max_new_tokens=6, sampling=SamplingParams(seed=2, logit_bias=EOS_BANNED),
                           constraint=Constraint.json_schema(schema))
    assert result.finish_reason == "length" and len(result.token_ids) == 6
    with pytest.raises(ValueError):
        json.loads(result.text)


def test_forced_tokens_run_without_sampling(tiny):
    """A fixed key name costs no draw: fewer decode runs than tokens."""
    schema = {"type": "object", "required": ["a_rather_long_key_name"], "additionalProperties": False,
              "properties": {"a_rather_long_key_name": {"enum": ["first value", "second value"]}}}
    result = tiny.generate("x", max_new_tokens=60, sampling=SamplingParams.greedy(),
                           constraint=Constraint.json_schema(schema))
    assert json.loads(result.text)["a_rather_long_key_name"] in ("first value", "second value")
    assert result.timings.decode_steps < len(result.token_ids) - 3


@pytest.mark.parametrize("response_format, check", [
    ({"type": "json_object"}, lambda v: isinstance(v, dict)),
    ({"type": "json_schema", "json_schema": {"name": "n", "schema": SCHEMAS["enum"]}},
     lambda v: jsonschema.validate(v, SCHEMAS["enum"]) is None),
])
def test_response_format_in_chat_and_chat_send(tiny, response_format, check):
    messages = [{"role": "user", "content": "JSON please"}]
    sampling = SamplingParams(seed=5)
    result = tiny.chat(messages, max_new_tokens=120, sampling=sampling, response_format=response_format)
    chat = tiny.new_chat(max_new_tokens=120, sampling=sampling)
    answer = chat.send("JSON please", response_format=response_format)
    for text in (result.text, answer.text):
        if response_format["type"] == "json_schema":
            assert check(json.loads(text))
        else:   # any object: it may still be open when the length runs out
            assert text.startswith("{")
    assert chat.messages[-1] == {"role": "assistant", "content": answer.text}


def test_logprobs_follow_the_masked_distribution(tiny):
    constraint = Constraint.json_schema(SCHEMAS["enum"])
    result = tiny.generate("x", max_new_tokens=40, sampling=SamplingParams(seed=1), constraint=constraint,
                           logprobs=3)
    assert len(result.logprobs) == len(result.token_ids)
    allowed_text = set()
    for entry, token in zip(result.logprobs, result.token_ids):
        assert entry.token_id == token and entry.logprob <= 0.0
        assert 1 <= len(entry.top) <= 3
        assert [t.logprob for t in entry.top] == sorted((t.logprob for t in entry.top), reverse=True)
        assert np.isclose(sum(np.exp(t.logprob) for t in entry.top), 1.0) or len(entry.top) == 3
        allowed_text.update(t.text for t in entry.top)
    plain = tiny.generate("x", max_new_tokens=5, sampling=SamplingParams(seed=1), logprobs=0)
    assert all(e.top == () and e.logprob < 0 for e in plain.logprobs)
    with pytest.raises(InvalidParameterError, match="logprobs"):
        tiny.generate("x", logprobs=-1)


def test_logprobs_match_a_log_softmax_of_the_logits(tiny):
    ctx = tiny.new_context()
    ids = tiny.tokenizer.encode("Hello")
    logits = ctx.append(ids).astype(np.float64)
    expected = logits - (logits.max() + np.log(np.exp(logits - logits.max()).sum()))
    result = tiny.generate(ids, max_new_tokens=1, sampling=SamplingParams.greedy(), logprobs=4)
    entry = result.logprobs[0]
    assert entry.token_id == int(np.argmax(logits))
    assert [t.token_id for t in entry.top] == list(np.argsort(-expected, kind="stable")[:4])
    np.testing.assert_allclose([t.logprob for t in entry.top], np.sort(expected)[::-1][:4], rtol=1e-5)


def test_cli_run_with_each_constraint(tiny, tmp_path, capsys):
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMAS["pattern"]))
    grammar = tmp_path / "g.lark"
    grammar.write_text('start: "on" | "off"\n')
    package = str(tiny.path)
    assert main(["run", package, "x", "--json-schema", str(schema), "--seed", "1", "--json", "--logprobs", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    jsonschema.validate(json.loads(out["text"]), SCHEMAS["pattern"])
    assert len(out["logprobs"]) == len(out["token_ids"]) and len(out["logprobs"][0]["top_logprobs"]) <= 2
    assert main(["run", package, "x", "--regex", "[0-9]{4}", "--seed", "1"]) == 0
    assert re.fullmatch("[0-9]{4}", capsys.readouterr().out.strip())
    assert main(["run", package, "x", "--grammar", str(grammar), "--seed", "1"]) == 0
    assert capsys.readouterr().out.strip() in ("on", "off")
    assert main(["run", package, "x", "--regex", "a(b"]) == 1
    assert "invalid regex" in capsys.readouterr().err
    assert main(["run", package, "x", "--logprobs", "2"]) == 1
    assert "--json" in capsys.readouterr().err


def test_bench_reports_the_cost_of_a_constraint(tiny, tmp_path):
    from edgellama.bench import BenchSettings, run_bench

    settings = BenchSettings(n_prompt=8, n_gen=8, repetitions=2, depths=(), e2e_tokens=16, threads=(1,),
                             constraint=Constraint.json_schema(SCHEMAS["array"]))
    report = run_bench(tiny.path, settings)
    rows = {row.test: row for row in report.rows}
    assert rows["e2e16+mask"].mean > 0 and rows["mask cost"].unit == "ms"
    assert len(rows["mask cost"].samples) == 2


def test_bench_notes_a_constrained_answer_that_ends_before_its_tokens(tiny):
    """A boolean ends after a token or two: its end-to-end rate spreads the prefill over them, so the cost
    per token is taken from the decode time, and the short answer is said."""
    from edgellama.bench import BenchSettings, run_bench

    settings = BenchSettings(n_prompt=8, n_gen=8, repetitions=2, depths=(), e2e_tokens=16, threads=(1,),
                             constraint=Constraint.json_schema({"type": "boolean"}))
    report = run_bench(tiny.path, settings)
    rows = {row.test: row for row in report.rows}
    assert any(note.startswith("e2e16+mask: the constrained answer ended after") for note in report.notes)
    # a one-draw answer runs no decode step: no cost to compare, which is said (it printed a prefill's worth)
    assert ("mask cost" not in rows) == any(n.startswith("mask cost not measured") for n in report.notes)


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["greedy", "sampled"])
def test_smollm2_json_outputs_validate(smollm2_int4_package, sampler):
    model = edgellama.load(smollm2_int4_package)
    for name in ("nested", "bounded numbers", "enum"):
        schema = SCHEMAS[name]
        result = model.chat([{"role": "user", "content": "Give me an example record as JSON."}],
                            max_new_tokens=120, sampling=SAMPLERS[sampler], constraint=Constraint.json_schema(schema))
        assert result.finish_reason == "eos", result.text
        jsonschema.validate(json.loads(result.text), schema)


def test_the_schema_true_is_any_json_value():
    assert Constraint.json_schema(True) == Constraint.json_schema({}) == Constraint.json_schema("true")
