"""`import edgellama` needs neither torch nor transformers, nor ONNX Runtime until a model is loaded."""
import subprocess
import sys

BLOCK_HEAVY = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'transformers', 'optimum'):
            raise ImportError('blocked: ' + name)
        return None
sys.meta_path.insert(0, Block())
"""


def run(code):
    return subprocess.run([sys.executable, "-c", BLOCK_HEAVY + code], capture_output=True, text=True, timeout=120)


def test_import_without_torch_or_transformers():
    result = run("import edgellama, edgellama.cli, edgellama.package; print(edgellama.__version__)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == edgellama_version()


def edgellama_version():
    import edgellama
    return edgellama.__version__


def test_importtime_shows_no_torch():
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", "import edgellama"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines() if "|" in line}
    assert "edgellama" in imported
    assert not imported & {"torch", "transformers", "optimum", "onnxruntime"}


def test_runtime_modules_import_without_torch():
    result = run("import edgellama.native, edgellama.sampling, edgellama.kvcache, edgellama.model; print('ok')")
    assert result.returncode == 0, result.stderr


def test_public_names_resolve():
    import edgellama
    for name in edgellama.__all__:
        assert getattr(edgellama, name) is not None
