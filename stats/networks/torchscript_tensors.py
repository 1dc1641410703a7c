"""Read the tensors of a TorchScript archive without running any of its code.

A TorchScript ``.pt`` file is a zip archive: ``<root>/data.pkl`` (a pickle of the module tree),
``<root>/data/<key>`` (the raw bytes of each tensor storage) and ``<root>/code/`` (the compiled methods).
``torch.jit.load`` rebuilds the module and runs its ``__setstate__`` methods, which can do anything
TorchScript can (``torch.save`` to any path, for one). :func:`read_torchscript_tensors` instead unpickles
``data.pkl`` with an unpickler that knows only: ``__torch__.*`` classes (replaced by an inert record of
their attributes; no method of theirs is called), ``torch._utils._rebuild_tensor_v2`` (tensors rebuilt
here from the storage bytes, bounds checked), ``torch.<Type>Storage`` (dtype markers),
``collections.OrderedDict`` and the ``torch.jit._pickle.build_*list`` helpers (identity). Any other global
is refused, so no Python or TorchScript code from the file is ever executed.
"""
import collections
import pickle
import zipfile

import torch

__all__ = ["UnsafeTorchScriptError", "read_torchscript_tensors", "is_torchscript", "MAX_TENSOR_BYTES", "CONVERT_HINT"]

MAX_TENSOR_BYTES = 1 << 30  # 1 GiB of storages at most (the FID Inception holds 95 MB)

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}
CONVERT_HINT = ("convert it on a machine you trust with torch.save(torch.jit.load(PATH).state_dict(), 'weights.pth') "
                "and pass weights.pth (state dicts are read with torch.load(weights_only=True))")
_LIST_BUILDERS = ("build_intlist", "build_tensorlist", "build_doublelist", "build_boollist")


class UnsafeTorchScriptError(ValueError):
    """The TorchScript archive holds something other than plain modules and tensors (or is malformed)."""


class _ScriptRecord:
    """Stands in for a ``__torch__`` object: keeps its pickled state, runs none of its methods."""

    def __init__(self, *args):
        self.state = None

    def __setstate__(self, state):
        self.state = state


def is_torchscript(path):
    """True for a zip archive holding ``<root>/constants.pkl`` (the TorchScript layout)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


class _Unpickler(pickle.Unpickler):
    """Unpickler of ``data.pkl`` restricted to modules and tensors (see the module docstring)."""

    def __init__(self, file, archive, root, path):
        super().__init__(file)
        self.archive, self.root, self.path = archive, root, path
        self.storages = {}
        self.total_bytes = 0

    def find_class(self, module, name):
        if module.startswith("__torch__"):
            return type(name, (_ScriptRecord,), {})
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return self._rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch.jit._pickle" and name in _LIST_BUILDERS:
            return _identity
        raise UnsafeTorchScriptError(f"{self.path}: the TorchScript archive refers to {module}.{name}, which is "
                                     f"neither a module nor a tensor, so it is refused unread (its code never "
                                     f"runs); {CONVERT_HINT}")

    def persistent_load(self, pid):
        dtypes = _STORAGE_DTYPES.values()
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and pid[1] in dtypes):
            raise UnsafeTorchScriptError(f"{self.path}: unexpected persistent id {str(pid)[:80]} in data.pkl")
        dtype, key = pid[1], str(pid[2])
        if key not in self.storages:
            info = self.archive.getinfo(f"{self.root}/data/{key}")
            self.total_bytes += info.file_size
            if self.total_bytes > MAX_TENSOR_BYTES:
                raise UnsafeTorchScriptError(f"{self.path}: tensors larger than {MAX_TENSOR_BYTES} bytes in all")
            data = bytearray(self.archive.read(info))
            if len(data) % dtype.itemsize:
                raise UnsafeTorchScriptError(f"{self.path}: storage {key} is not a whole number of {dtype} items")
            self.storages[key] = torch.frombuffer(data, dtype=dtype) if data else torch.empty(0, dtype=dtype)
        return self.storages[key]

    def _rebuild_tensor(self, storage, offset, size, stride, *rest):
        """A tensor viewing `storage` (copied), after checking that the view stays inside it."""
        size, stride = tuple(size), tuple(stride)
        if not isinstance(storage, torch.Tensor) or len(size) != len(stride) or min(size + (0,)) < 0 \
                or min(stride + (0,)) < 0:
            raise UnsafeTorchScriptError(f"{self.path}: malformed tensor record in data.pkl")
        last = offset + sum((s - 1) * st for s, st in zip(size, stride)) if all(size) else offset - 1
        if offset < 0 or last >= storage.numel():
            raise UnsafeTorchScriptError(f"{self.path}: a tensor of size {size} reaches past its storage")
        return storage.as_strided(size, stride, offset).clone()


def _identity(value):
    return value


def _data_root(archive, path):
    roots = [name[: -len("/data.pkl")] for name in archive.namelist() if name.endswith("/data.pkl")]
    if len(roots) != 1:
        raise UnsafeTorchScriptError(f"{path}: expected one <root>/data.pkl in the TorchScript archive, "
                                     f"found {len(roots)}")
    return roots[0]


def _flatten(obj, prefix, out, seen):
    """Walk the records' attribute dicts depth-first, collecting tensors under dotted names."""
    if isinstance(obj, _ScriptRecord):
        if id(obj) in seen:
            return
        seen.add(id(obj))
        obj = getattr(obj, "state", None)
    if isinstance(obj, dict):
        for key, value in obj.items():
            name = f"{prefix}{key}"
            if isinstance(value, torch.Tensor):
                out[name] = value
            else:
                _flatten(value, name + ".", out, seen)


def read_torchscript_tensors(path):
    """{dotted attribute name: tensor} of the module tree in the TorchScript file `path`, code not run.

    Raises :class:`UnsafeTorchScriptError` (a ValueError) naming the file when the archive refers to
    anything but modules and tensors, is malformed, or holds more than :data:`MAX_TENSOR_BYTES`.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            root = _data_root(archive, path)
            with archive.open(f"{root}/data.pkl") as file:
                tree = _Unpickler(file, archive, root, path).load()
        tensors = {}
        _flatten(tree, "", tensors, set())
    except UnsafeTorchScriptError:
        raise
    except (pickle.UnpicklingError, zipfile.BadZipFile, KeyError, EOFError, TypeError, ValueError,
            AttributeError, IndexError, RuntimeError, RecursionError) as error:
        raise UnsafeTorchScriptError(f"{path}: cannot read the TorchScript archive's tensors ({error}); "
                                     f"{CONVERT_HINT}") from error
    return tensors
