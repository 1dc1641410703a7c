"""Weight files from strangers: a TorchScript file's code never runs, only its tensors are read (issue 11, item 1)."""
import pickle
import warnings
import zipfile

import pytest
import torch

from genmetrics.stats import load_inception
from genmetrics.stats.networks.torchscript_tensors import UnsafeTorchScriptError, read_torchscript_tensors
from genmetrics.stats.networks.weights import INCEPTION_WEIGHTS_ENV


class _Writer(torch.nn.Module):
    """A scripted module whose __setstate__ (run by torch.jit.load) writes a file with torch.save."""

    def __init__(self, target: str):
        super().__init__()
        self.target = target
        self.weight = torch.nn.Parameter(torch.ones(2))

    def forward(self, x):
        return x

    @torch.jit.export
    def __getstate__(self):
        return (self.target, self.weight, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, torch.Tensor, bool]) -> None:
        self.target = state[0]
        self.weight = state[1]
        self.training = state[2]
        torch.save(torch.zeros(1), self.target)


@pytest.fixture
def writing_torchscript(tmp_path):
    """(a TorchScript file whose load writes `target`, target); the target is removed after saving."""
    target = tmp_path / "written-by-the-weights-file"
    path = tmp_path / "evil.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(_Writer(str(target))), str(path))
    if target.exists():
        target.unlink()
    return path, target


def _with_data_pkl(source, dest, payload):
    """Copy the TorchScript zip `source` to `dest` with data.pkl replaced by `payload`."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(dest, "w") as out:
        for item in src.infolist():
            data = payload if item.filename.endswith("/data.pkl") else src.read(item)
            out.writestr(item, data)
    return dest


class _System:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        import os

        return os.system, (self.command,)


def test_the_crafted_file_would_write_when_loaded_by_torch_jit(writing_torchscript):
    path, target = writing_torchscript
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.load(str(path))
    assert target.exists()  # the attack is real: torch.jit.load runs the file's __setstate__


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_torchscript_weights_never_run_their_code(writing_torchscript, monkeypatch, how):
    path, target = writing_torchscript
    if how == "environment":
        monkeypatch.setenv(INCEPTION_WEIGHTS_ENV, str(path))
    with pytest.raises(ValueError, match="not the TF Inception layout"):
        load_inception(str(path) if how == "argument" else None, device="cpu")
    assert not target.exists()


def test_a_pickle_calling_any_function_is_refused_unread(writing_torchscript, tmp_path):
    path, target = writing_torchscript
    crafted = _with_data_pkl(path, tmp_path / "system.pt", pickle.dumps(_System(f"touch {target}"), protocol=2))
    with pytest.raises(UnsafeTorchScriptError, match=r"posix.system.*refused unread.*torch.save") as info:
        load_inception(str(crafted), device="cpu")
    assert str(crafted) in str(info.value) and "\n" not in str(info.value)
    assert not target.exists()


def test_the_safe_reader_gives_exactly_the_torchscript_tensors(fid_weights_path):
    ours = read_torchscript_tensors(fid_weights_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        theirs = torch.jit.load(fid_weights_path, map_location="cpu").state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].dtype == theirs[k].dtype and torch.equal(ours[k], theirs[k]) for k in theirs)


def test_a_tensor_reaching_past_its_storage_is_refused(fid_weights_path, tmp_path):
    class Rebuild:
        def __reduce__(self):
            return torch._utils._rebuild_tensor_v2, (_Storage(), 0, (10 ** 6,), (1,), False, None)

    class _Storage:
        pass

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", 4) if isinstance(obj, _Storage) else None

    import io

    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump({"x": Rebuild()})
    crafted = _with_data_pkl(fid_weights_path, tmp_path / "past.pt", buffer.getvalue())
    with pytest.raises(UnsafeTorchScriptError, match="reaches past its storage"):
        read_torchscript_tensors(str(crafted))


def test_a_state_dict_converted_as_the_message_says_loads(fid_weights_path, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        converted = tmp_path / "weights.pth"
        torch.save(torch.jit.load(fid_weights_path, map_location="cpu").state_dict(), converted)
    a = load_inception(str(converted), device="cpu")
    b = load_inception(fid_weights_path, device="cpu")
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
