"""Backend selection: precedence, explicit requests that cannot run, auto fallback logging."""

from __future__ import annotations

import logging

import pytest
import torch

import mat_fast
from mat_fast import backend

pytestmark = pytest.mark.usefixtures("default_backend")


def test_default_is_auto_and_picks_the_first_usable_cpu_backend():
    assert mat_fast.get_backend() == "auto"
    status = mat_fast.available_backends("cpu")
    assert set(status) == {"reference", "triton", "cuda", "cpu"}
    assert status["reference"] is None
    assert status["cpu"] is None  # plain PyTorch at its core: no compiler needed
    assert backend.resolve("cpu") == "cpu"


def test_a_missing_kernel_layer_runs_the_reference_for_its_ops_only(monkeypatch):
    """Without the native layer the 'cpu' backend keeps its PyTorch fast paths; the ops
    whose kernels are native run their reference twins."""
    monkeypatch.setitem(backend._LAYERS, "native", lambda device_type: "no compiler here")
    monkeypatch.setattr(backend, "_REGISTRY", {k: dict(v) for k, v in backend._REGISTRY.items()})
    monkeypatch.setattr(backend, "_LAZY", {k: dict(v) for k, v in backend._LAZY.items()})

    def native_op(x):
        raise AssertionError("the native kernel ran without its layer")

    backend.register("layer_op", "reference", lambda x: "reference")
    backend.register_lazy("layer_op", "cpu", "mat_fast.nowhere:native_op", layer="native")
    backend.register("plain_op", "reference", lambda x: "reference")
    backend.register("plain_op", "cpu", lambda x: "cpu")
    with mat_fast.use_backend("cpu"):  # explicit: still fine
        assert backend.implementation("layer_op", "cpu")(None) == "reference"
        assert backend.implementation("plain_op", "cpu")(None) == "cpu"
        assert not backend.has_kernel("layer_op", "cpu")
    assert backend.kernel_layers("cpu") == {"native": "no compiler here"}
    with pytest.raises(ValueError, match="unknown kernel layer"):
        backend.register_lazy("layer_op", "cpu", "x:y", layer="gpu-magic")


def test_every_backend_either_runs_or_says_why():
    for name, reason in mat_fast.available_backends("cpu").items():
        assert reason is None or (isinstance(reason, str) and reason), name
    assert "cpu tensors, not cpu" not in str(mat_fast.available_backends("cpu"))
    assert mat_fast.available_backends("cpu")["cuda"]  # never runs on CPU tensors


def test_named_backends_are_the_only_ones_probed(monkeypatch):
    # probing 'cuda' can build the native extension: a caller naming others must not pay
    asked = []
    for name in ("reference", "triton", "cuda", "cpu"):
        monkeypatch.setitem(backend._PROBES, name, lambda d, name=name: asked.append(name))
    assert mat_fast.available_backends("cpu", ["CPU", "reference"]) == {
        "reference": None, "cpu": None
    }  # fmt: skip
    assert sorted(asked) == ["cpu", "reference"]
    asked.clear()
    assert set(mat_fast.available_backends("cpu")) == {"reference", "triton", "cuda", "cpu"}
    assert sorted(asked) == ["cpu", "cuda", "reference", "triton"]
    with pytest.raises(ValueError, match="unknown mat_fast backend 'bogus'"):
        mat_fast.available_backends("cpu", ["bogus"])


def test_explicit_unavailable_backend_raises_with_reason(monkeypatch):
    monkeypatch.setitem(backend._PROBES, "triton", lambda device_type: "triton is not installed")
    with pytest.raises(mat_fast.BackendUnavailableError, match="triton is not installed"):
        mat_fast.set_backend("triton")
    with pytest.raises(mat_fast.BackendUnavailableError, match="triton is not installed"):
        with mat_fast.use_backend("triton"):
            pass
    with pytest.raises(mat_fast.BackendUnavailableError, match="triton is not installed"):
        backend.resolve("cpu", explicit="triton")


def test_set_backend_checks_the_device_it_is_given(monkeypatch):
    """The CLI's --device cpu --backend cpu must be checked for CPU even on a GPU machine."""
    seen = []
    monkeypatch.setitem(
        backend._PROBES,
        "triton",
        lambda device_type: seen.append(device_type) or f"not on {device_type}",
    )
    with pytest.raises(mat_fast.BackendUnavailableError, match="cannot run on cuda: not on cuda"):
        mat_fast.set_backend("triton", device="cuda")
    with pytest.raises(mat_fast.BackendUnavailableError, match="cannot run on cpu: not on cpu"):
        mat_fast.set_backend("triton", device=torch.device("cpu"))
    assert seen == ["cuda", "cpu"]


def test_cli_checks_the_backend_for_its_device(monkeypatch, capsys):
    from mat_fast import cli, cli_inpaint

    checked = []
    monkeypatch.setattr(
        backend,
        "_raise_if_unavailable",
        lambda name, device_type: checked.append((name, device_type)),
    )
    monkeypatch.setattr(cli, "cmd_info", lambda args: 0)
    monkeypatch.setattr(cli_inpaint, "cmd_inpaint", lambda args: 0)
    assert cli.main(["inpaint", "in.png", "--device", "cuda:1", "--backend", "reference"]) == 0
    assert checked == [("reference", "cuda")]


def test_unknown_names_are_rejected(monkeypatch):
    with pytest.raises(ValueError, match="unknown mat_fast backend 'fast'"):
        mat_fast.set_backend("fast")
    monkeypatch.setenv(backend.ENV_VAR, "bogus")
    with pytest.raises(ValueError, match="MAT_FAST_BACKEND"):
        mat_fast.get_backend()


def test_precedence_argument_over_context_over_global_over_env(monkeypatch):
    calls = []
    monkeypatch.setitem(backend._PROBES, "cpu", lambda device_type: None)
    monkeypatch.setitem(
        backend._REGISTRY,
        "probe_op",
        {
            "reference": lambda: calls.append("reference"),
            "cpu": lambda: calls.append("cpu"),
        },
    )
    monkeypatch.setenv(backend.ENV_VAR, "cpu")
    assert mat_fast.get_backend() == "cpu"
    mat_fast.set_backend("reference")
    assert mat_fast.get_backend() == "reference"
    with mat_fast.use_backend("cpu"):
        assert mat_fast.get_backend() == "cpu"
        with mat_fast.use_backend("reference"):
            assert mat_fast.get_backend() == "reference"
        backend.implementation("probe_op", "cpu")()
        backend.implementation("probe_op", "cpu", explicit="reference")()
    assert mat_fast.get_backend() == "reference"
    assert calls == ["cpu", "reference"]


def test_auto_falls_back_and_logs_once(monkeypatch, caplog):
    monkeypatch.setitem(
        backend._PROBES, "cpu", lambda device_type: "extension failed to build (see /tmp/log)"
    )
    with caplog.at_level(logging.INFO, logger="mat_fast"):
        assert backend.resolve("cpu") == "reference"
        assert backend.resolve("cpu") == "reference"
    messages = [r.getMessage() for r in caplog.records if "extension failed" in r.getMessage()]
    assert len(messages) == 1


def test_a_backend_without_a_kernel_for_an_op_runs_the_reference(monkeypatch):
    monkeypatch.setitem(backend._PROBES, "cpu", lambda device_type: None)

    def only_reference(x):
        return x

    monkeypatch.setitem(backend._REGISTRY, "test_only_op", {"reference": only_reference})
    with mat_fast.use_backend("cpu"):
        fn = backend.implementation("test_only_op", "cpu")
    assert fn is only_reference


def test_lazy_kernels_import_once_even_from_two_threads(monkeypatch, tmp_path):
    """While one thread imports a backend's module, another asking for the same op must
    wait for it, not conclude there is no kernel and run the reference."""
    import sys
    import threading

    (tmp_path / "slow_kernel_module.py").write_text(
        "import time\ntime.sleep(0.3)\ndef kernel(x):\n    return x\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "slow_kernel_module", raising=False)
    monkeypatch.setitem(backend._REGISTRY, "test_lazy_op", {})
    monkeypatch.setitem(backend._LAZY, "test_lazy_op", {"cpu": ("slow_kernel_module:kernel", None)})
    found = []
    threads = [
        threading.Thread(
            target=lambda: found.append(backend._load_lazy("test_lazy_op", "cpu", "cpu"))
        )
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(found) == 2 and all(fn is not None and fn.__name__ == "kernel" for fn in found), (
        found
    )


def test_import_pulls_in_neither_triton_nor_dynamo():
    """``import mat_fast`` stays cheap and leaves Triton unimported (Triton imported before
    TRITON_INTERPRET=1 is set cannot run kernels in its interpreter)."""
    import subprocess
    import sys

    code = (
        "import sys, mat_fast; "
        "print(sorted(m for m in ('triton', 'torch._dynamo', 'torch._inductor') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", f"import mat_fast imported {out.stdout.strip()}"


def test_has_kernel_says_whether_the_backend_brings_its_own(monkeypatch):
    monkeypatch.setitem(backend._PROBES, "cpu", lambda device_type: None)
    monkeypatch.setitem(backend._REGISTRY, "test_only_op", {"reference": lambda x: x})
    assert backend.has_kernel("test_only_op", "cpu", "reference")
    assert not backend.has_kernel("test_only_op", "cpu", "cpu")
    backend._REGISTRY["test_only_op"]["cpu"] = lambda x: x
    assert backend.has_kernel("test_only_op", "cpu", "cpu")
