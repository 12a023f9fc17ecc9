"""`edgellama bench` and `edgellama eval` on a tiny converted package: well-formed output, and
perplexity equal to one computed with transformers on the same checkpoint. The scripts in
benchmarks/ that run without other engines: the suite's settings, the head precision study and a
short soak (no memory or file descriptor leak over many requests)."""
from __future__ import annotations

import csv
import io
import json
import math
import sys

import numpy as np
import pytest

from edgellama.cli import main
from edgellama.evaluate import EvalSettings, evaluate_ids, windows

MAX_LENGTH = 128


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from helpers.tiny_llama import make_tiny_llama
    return make_tiny_llama(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="module")
def package(tmp_path_factory, tiny_folder):
    from edgellama.converters import ConvertOptions, convert
    from edgellama.package import Quantization

    out = tmp_path_factory.mktemp("pkg") / "fp32"
    convert(str(tiny_folder), out, ConvertOptions(quantization=Quantization(method="fp32"), max_length=MAX_LENGTH))
    return out


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    from helpers.tiny_llama import SENTENCES
    path = tmp_path_factory.mktemp("text") / "text.txt"
    path.write_text(" ".join(SENTENCES[i % len(SENTENCES)] for i in range(7, 40)), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def ids(tiny_folder, text_file):
    from tokenizers import Tokenizer
    return Tokenizer.from_file(str(tiny_folder / "tokenizer.json")).encode(text_file.read_text()).ids


def reference_perplexity(tiny_folder, ids, ctx, stride):
    """transformers' log-probabilities, each token scored in the first window that holds it with
    at least one token before it (the HF strided-perplexity recipe)."""
    import torch
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tiny_folder)).eval()
    total, count, scored_to = 0.0, 0, 1
    for begin in range(0, len(ids) - 1, stride):
        end = min(begin + ctx, len(ids))
        with torch.no_grad():
            logp = torch.log_softmax(hf(torch.tensor([ids[begin:end]])).logits[0].double(), dim=-1)
        for t in range(max(scored_to, begin + 1), end):
            total -= float(logp[t - 1 - begin, ids[t]])
            count += 1
        scored_to = max(scored_to, end)
        if end == len(ids):
            break
    return math.exp(total / count), count


def run_json(capsys, *argv):
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("ctx,stride", [(48, 48), (64, 24)])
def test_eval_perplexity_equals_transformers(capsys, package, text_file, tiny_folder, ids, ctx, stride):
    assert len(ids) > 2 * ctx    # several windows
    got = run_json(capsys, "eval", str(package), "--text", str(text_file), "--ctx", str(ctx),
                   "--stride", str(stride), "--threads", "1", "--json")
    want, count = reference_perplexity(tiny_folder, ids, ctx, stride)
    assert got["tokens"] == len(ids)
    assert got["scored_tokens"] == count
    assert got["perplexity"] == pytest.approx(want, rel=1e-3)
    assert got["windows"] > 1 and got["ctx"] == ctx and got["stride"] == stride


def test_graph_and_stepwise_scoring_agree(package, ids):
    graph = evaluate_ids(package, ids, EvalSettings(ctx=40, stride=20, method="graph", threads=1))
    step = evaluate_ids(package, ids, EvalSettings(ctx=40, stride=20, method="stepwise", threads=1))
    assert graph.scored_tokens == step.scored_tokens
    assert graph.mean_nll == pytest.approx(step.mean_nll, rel=1e-4)


@pytest.mark.parametrize("n,ctx,stride", [(100, 32, 32), (100, 32, 10), (33, 32, 16), (5, 8, 8), (64, 16, 1)])
def test_windows_score_each_token_at_most_once(n, ctx, stride):
    plan = windows(n, ctx, stride)
    scored = [t for w in plan for t in range(w.first, w.end)]
    assert len(scored) == len(set(scored))
    assert all(w.begin < w.first < w.end <= w.begin + ctx for w in plan)
    assert plan[-1].end == n
    if stride < ctx:
        assert scored == list(range(1, n))


def test_eval_text_output_and_errors(capsys, package, text_file, tmp_path):
    assert main(["eval", str(package), "--text", str(text_file), "--ctx", "32", "--threads", "1"]) == 0
    assert "perplexity" in capsys.readouterr().out
    assert main(["eval", str(package), "--text", str(text_file), "--ctx", str(MAX_LENGTH + 1)]) == 1
    assert "max_length" in capsys.readouterr().err
    assert main(["eval", str(package), "--text", str(tmp_path / "missing.txt")]) == 1
    assert "missing.txt" in capsys.readouterr().err


BENCH_ARGS = ["-p", "16", "-n", "8", "-r", "2", "-d", "32,1000", "--e2e-tokens", "6"]


def test_bench_json_has_the_fields(capsys, package):
    report = run_json(capsys, "bench", str(package), *BENCH_ARGS, "-t", "1,2", "--json")
    for key in ("model", "quantization", "provider", "onnxruntime", "cpu", "cpu_features", "max_length",
                "size_bytes", "load_s", "peak_rss_bytes", "rows", "notes", "weights"):
        assert key in report
    assert report["provider"] == "CPUExecutionProvider"
    assert report["weights"].startswith("in memory, ")
    assert report["size_bytes"] > 0 and report["load_s"] > 0 and report["peak_rss_bytes"] > 0
    tests = {(row["test"], row["threads"]) for row in report["rows"]}
    for threads in (1, 2):
        assert {("pp16", threads), ("tg8", threads), ("tg8@d32", threads)} <= tests
    assert ("ttft", 1) in tests and ("e2e6", 1) in tests
    assert not any(test.endswith("@d1000") for test, _ in tests)
    assert any("d1000" in note and "skipped" in note for note in report["notes"])
    for row in report["rows"]:
        assert len(row["samples"]) == 2 and row["mean"] > 0 and row["stdev"] >= 0
        assert np.isclose(row["mean"], np.mean(row["samples"]))


def test_bench_in_a_small_context_skips_the_request_tests_with_a_note(capsys, package):
    report = run_json(capsys, "bench", str(package), "-p", "4", "-n", "4", "-r", "1", "-d", "", "--max-length", "8",
                      "--json")
    assert {row["test"] for row in report["rows"]} == {"pp4", "tg4"}
    assert any(note.startswith("ttft and e2e128 skipped") and "max_length 8" in note for note in report["notes"])


def test_bench_says_when_threads_outnumber_the_cpus(capsys, caplog, package, monkeypatch):
    import edgellama.session as session

    monkeypatch.setattr(session, "usable_cpus", lambda: 1)
    with caplog.at_level("WARNING", logger="edgellama.session"):   # the command prints it on stderr
        assert main(["bench", str(package), "-p", "4", "-n", "2", "-r", "1", "-d", "", "--e2e-tokens", "0",
                     "-t", "1,2", "--json"]) == 0
    assert {row["threads"] for row in json.loads(capsys.readouterr().out)["rows"]} == {1, 2}     # run as asked
    said = [r.getMessage() for r in caplog.records]
    assert any("threads=2 is more than the 1 CPUs this process may use" in m for m in said)
    assert not any("threads=1 is more" in m for m in said)


def test_bench_with_mmap_says_the_weights_stay_mapped(capsys, package):
    report = run_json(capsys, "bench", str(package), "-p", "8", "-n", "4", "-r", "1", "-d", "", "--e2e-tokens", "0",
                      "-t", "1", "--mmap", "--json")
    assert report["weights"] == "mapped from the file"
    assert main(["bench", str(package), "-p", "8", "-n", "4", "-r", "1", "-d", "", "--e2e-tokens", "0", "-t", "1"]) == 0
    assert "weights     in memory, " in capsys.readouterr().out


def test_bench_table_and_csv(capsys, package):
    assert main(["bench", str(package), *BENCH_ARGS, "-t", "1"]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime" in out and "pp16" in out and "tg8@d32" in out and "t/s" in out
    assert main(["bench", str(package), *BENCH_ARGS, "-t", "1", "--csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert {r["test"] for r in rows} >= {"pp16", "tg8", "tg8@d32", "ttft", "e2e6"}
    assert all(float(r["mean"]) > 0 for r in rows)


def test_bench_plot_without_matplotlib_is_a_clear_error(capsys, package, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code = main(["bench", str(package), "-p", "8", "-n", "4", "-r", "1", "-d", "", "--e2e-tokens", "0",
                 "-t", "1", "--plot", str(tmp_path / "out.png")])
    assert code == 1
    assert "matplotlib" in capsys.readouterr().err


def test_cpu_features_from_cpuinfo():
    from edgellama.bench import cpu_description

    name, features = cpu_description("model name\t: Test CPU\nflags\t\t: fpu avx2 avx512f avx512_vnni\n")
    assert name == "Test CPU" and features == ("AVX2", "AVX-512", "AVX512-VNNI")
    _, arm = cpu_description("processor\t: 0\nFeatures\t: fp asimd asimddp i8mm\n")
    assert arm == ("NEON-dotprod", "NEON-i8mm")


@pytest.fixture
def suite(monkeypatch):
    """The side-by-side suite's package (benchmarks/ is not installed: importable from the repository root)."""
    from pathlib import Path
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    import benchmarks.suite.__main__ as suite_main
    return suite_main


def test_suite_optimum_config_has_top_level_rope_fields(suite):
    from benchmarks.suite.engine_optimum import legacy_config

    new_style = {"model_type": "llama", "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"}}
    assert legacy_config(new_style)["rope_theta"] == 100000.0
    assert "rope_scaling" not in legacy_config(new_style)
    llama3 = {"rope_parameters": {"rope_theta": 500000.0, "rope_type": "llama3", "factor": 8.0}}
    assert legacy_config(llama3)["rope_scaling"] == {"rope_type": "llama3", "factor": 8.0}
    assert legacy_config({"rope_theta": 10000.0}) == {"rope_theta": 10000.0}


def test_suite_without_optimum_python_reports_the_row_as_not_measured(suite, tmp_path, capsys):
    from benchmarks.suite.engines import interpreter
    from benchmarks.suite.settings import SuiteSettings

    missing = tmp_path / "venv" / "bin" / "python"
    settings = SuiteSettings(work=tmp_path / "work", results=tmp_path / "results", optimum_python=missing)
    assert interpreter("optimum", settings) == str(missing)
    assert interpreter("edgellama", settings) == sys.executable
    artifacts, skipped = suite.prepare_all(settings, ["optimum/fp32"])
    assert artifacts == {} and str(missing) in skipped["optimum/fp32"]
    assert suite.show([], tmp_path / "results.png", skipped) == 0
    assert "optimum/fp32: not measured" in capsys.readouterr().out


def test_head_precision_study_scores_the_stored_head_as_the_package_does(tmp_path, tiny_folder, text_file,
                                                                         ids, capsys):
    """benchmarks/head_precision.py: its 'stored' row is the package's own perplexity (the package
    applies the head at int8 activations, the study in float), keeping every row stored changes
    nothing, and requantizing the head to int4 changes the perplexity."""
    from benchmarks.head_precision import main as study
    from edgellama.converters import ConvertOptions, convert
    from edgellama.package import Quantization

    pkg = tmp_path / "int8"
    convert(str(tiny_folder), pkg, ConvertOptions(quantization=Quantization(method="int8"), max_length=MAX_LENGTH))
    vocab = json.loads((pkg / "edgellama.json").read_text())["config"]["vocab_size"]
    n = 96
    assert study([str(pkg), "--text", str(text_file), "--tokens", str(n), "--rows", f"0,{vocab}",
                  "--rescore", f"0,{vocab - 1}", "--threads", "1", "--json"]) == 0
    rows = {r["variant"]: r for r in json.loads(capsys.readouterr().out)["rows"]}
    stored = rows["stored (8-bit)"]
    own = evaluate_ids(pkg, ids[:n], EvalSettings(ctx=n, threads=1)).perplexity
    assert stored["change"] == 0 and stored["perplexity"] == pytest.approx(own, rel=2e-2)
    kept = next(r for name, r in rows.items() if f"ids < {vocab} stored" in name and "rescored" not in name)
    assert kept["perplexity"] == stored["perplexity"] and kept["greedy_agreement"] == 1.0
    assert rows["int4 sym"]["change"] != 0 and rows["int4 asym"]["change"] != 0
    assert rows[f"int4 asym, top {vocab - 1} rescored"]["greedy_agreement"] == 1.0


def test_short_soak_does_not_leak(package, monkeypatch):
    import importlib.util
    import io
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "soak.py"
    spec = importlib.util.spec_from_file_location("soak", path)
    soak = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "soak", soak)    # dataclasses look their module up there
    spec.loader.exec_module(soak)
    out = io.StringIO()
    settings = soak.SoakSettings(str(package), generations=300, chats=3, turns=20, max_new_tokens=6,
                                 max_length=96, threads=1)
    start, end = soak.soak(settings, out=out)
    assert end.rss_bytes - start.rss_bytes < 20 * 2 ** 20, out.getvalue()
    assert end.open_fds == start.open_fds, out.getvalue()
    text = out.getvalue()
    assert text.startswith("start: RSS") and "end:   RSS" in text and "360 requests" in text
    with pytest.raises(ValueError, match="turns"):
        soak.SoakSettings(str(package), turns=-1)


def test_bench_runs_each_depth_once(capsys, package):
    """Depth 0 is always run; named again in -d (or a depth named twice) it printed its row twice."""
    report = run_json(capsys, "bench", str(package), "-p", "4", "-n", "4", "-r", "1", "-d", "0,8,8", "--e2e-tokens",
                      "0", "-t", "1", "--json")
    tests = [row["test"] for row in report["rows"]]
    assert tests.count("tg4") == 1 and tests.count("tg4@d8") == 1


def test_bench_names_the_kernels_only_for_a_graph_that_runs_them(capsys, tmp_path, tiny_folder, package):
    """A portable graph runs ONNX Runtime's own operators: the kernel path line named this host's anyway."""
    from edgellama import kernels
    from edgellama.converters import ConvertOptions, convert
    from edgellama.package import Quantization

    portable = tmp_path / "portable"
    convert(str(tiny_folder), portable, ConvertOptions(quantization=Quantization(method="fp32"), max_length=MAX_LENGTH,
                                                       portable=True))
    argv = ["-p", "4", "-n", "2", "-r", "1", "-d", "", "--e2e-tokens", "0", "-t", "1", "--json"]
    assert run_json(capsys, "bench", str(portable), *argv)["kernels"] == "none (ONNX Runtime's own)"
    assert run_json(capsys, "bench", str(package), *argv)["kernels"] == kernels.describe()


def test_bench_csv_says_its_notes_on_stderr(capsys, package):
    assert main(["bench", str(package), "-p", "4", "-n", "4", "-r", "1", "-d", "", "--max-length", "8",
                 "--csv"]) == 0
    captured = capsys.readouterr()
    assert "note: ttft and e2e128 skipped" in captured.err and "note" not in captured.out


def test_eval_of_a_package_too_short_for_a_window_is_one_clear_error(package, ids, tmp_path):
    """A max_length of 1 made the default ctx 1: no window, and np.concatenate raised on nothing."""
    import shutil

    short = tmp_path / "short"
    shutil.copytree(package, short)
    manifest = json.loads((short / "edgellama.json").read_text())
    manifest["max_length"] = 1
    (short / "edgellama.json").write_text(json.dumps(manifest))
    from edgellama.errors import InvalidParameterError

    with pytest.raises(InvalidParameterError, match="max_length 1 leaves no window of 2 tokens"):
        evaluate_ids(short, ids[:50])


def test_convert_refuses_a_max_length_below_two(tiny_folder, tmp_path, capsys):
    assert main(["convert", str(tiny_folder), "-o", str(tmp_path / "p"), "--quant", "fp32", "--max-length", "1"]) == 1
    assert "--max-length 1 must be an integer of at least 2" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_a_plain_tg_test_past_the_context_is_named_as_its_row_would_be(capsys, package):
    """The note named it tg300@d0, a test no row is called."""
    report = run_json(capsys, "bench", str(package), "-p", "4", "-n", "40", "-r", "1", "-d", "", "--max-length", "32",
                      "--e2e-tokens", "0", "--json")
    assert {row["test"] for row in report["rows"]} == {"pp4"}
    assert report["notes"] == ["tg40 skipped: 0 + 40 > max_length 32"]
