"""The exceptions edgellama raises.

Every class derives from `EdgeLlamaError` and from the builtin that fits, so callers may
catch either `edgellama.EdgeLlamaError` or, say, `ValueError`.
"""


class EdgeLlamaError(Exception):
    """Base class of every error edgellama raises on purpose."""


class ModelNotFoundError(EdgeLlamaError, FileNotFoundError):
    """A checkpoint, package or file that was asked for does not exist."""


class PackageError(EdgeLlamaError, ValueError):
    """A model package is malformed: missing files, bad metadata, checksum mismatch."""


class FormatVersionError(PackageError):
    """A model package was written by a newer or unknown format version."""


class CheckpointError(EdgeLlamaError, ValueError):
    """A source checkpoint cannot be read: truncated file, missing tensor, wrong shape."""


class UnsupportedConfigError(EdgeLlamaError, ValueError):
    """A checkpoint asks for something the graph cannot honour (names the field)."""


class InvalidParameterError(EdgeLlamaError, ValueError):
    """A setting (sampling, length, threads, ...) is out of its allowed range."""


class TaskFormatError(EdgeLlamaError, ValueError):
    """A task data file (HellaSwag, WinoGrande, multiple choice) is malformed (names the file and line)."""


class ContextOverflowError(EdgeLlamaError, ValueError):
    """A prompt or conversation does not fit in the model's context window."""


class NumericalError(EdgeLlamaError, ArithmeticError):
    """The model produced NaN or infinite logits."""


class ProviderError(EdgeLlamaError, RuntimeError):
    """No requested execution provider could run the model."""


class NativeError(EdgeLlamaError, RuntimeError):
    """A native routine reported a failure code (out of memory, bad size)."""


class NotBuiltError(EdgeLlamaError, NotImplementedError):
    """A command or feature that this version does not provide yet."""


class OutputError(EdgeLlamaError, OSError):
    """A package or file cannot be written: read-only location, full disk, no permission."""


class ChatBusyError(EdgeLlamaError, RuntimeError):
    """A Chat was sent a message while it was still answering another one."""


class SavedStateError(EdgeLlamaError, ValueError):
    """A saved chat or prompt cache cannot be used: damaged, another format version or another package."""
