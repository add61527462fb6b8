"""Tests for mat_fast.checkpoints: formats, upstream-style pickles, refusal of code."""

import copy
import io
import json
import logging
import os
import pickle
import sys
import types
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

import mat_fast
from mat_fast import Generator
from mat_fast.checkpoints import (
    CheckpointError,
    CheckpointNotFoundError,
    infer_generator_kwargs,
    load_generator,
    read_state_dict,
    save_generator,
)

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "mat_state_dicts.json"


@pytest.fixture(scope="module")
def gen256():
    """A 256 generator whose every tensor holds distinct random values, so a dropped,
    swapped or zero-initialised tensor cannot go unnoticed in equality checks."""
    torch.manual_seed(0)
    G = Generator(512, 0, 512, 256, 3)
    with torch.no_grad():
        for t in G.state_dict().values():
            t.copy_(torch.randn_like(t))
    return G.eval()


@pytest.fixture(scope="module")
def sd256(gen256):
    return {k: v.clone() for k, v in gen256.state_dict().items()}


def assert_same_state(G, sd):
    got = G.state_dict()
    assert list(got) == list(sd)
    for k, v in sd.items():
        assert got[k].dtype == torch.float32
        assert torch.equal(got[k], v), k


# ----------------------------------------------------------------------------- round trips


def test_safetensors_round_trip(tmp_path, gen256, sd256):
    path = tmp_path / "g.safetensors"
    save_generator(gen256, path)
    assert os.listdir(tmp_path) == ["g.safetensors"]  # no temporary file left behind
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        assert set(f.keys()) == set(sd256)
    assert meta["img_resolution"] == "256" and meta["use_noise"] == "True"
    assert meta["z_dim"] == meta["w_dim"] == "512" and meta["c_dim"] == "0"
    assert meta["mat_fast_version"] == mat_fast.__version__
    G = load_generator(path)
    assert_same_state(G, sd256)
    assert not G.training and not any(p.requires_grad for p in G.parameters())
    assert (G.z_dim, G.c_dim, G.w_dim, G.img_resolution, G.img_channels) == (512, 0, 512, 256, 3)
    # A full forward takes ~10 s on CPU; identical tensors plus identical constructor
    # arguments fix it anyway. Check the mapping network as a cheap end-to-end witness.
    z = torch.randn(2, 512, generator=torch.Generator().manual_seed(3))
    assert torch.equal(G.mapping(z, None), gen256.mapping(z, None))
    # The format comes from the bytes, not the name.
    os.rename(path, tmp_path / "weights.pkl")
    assert torch.equal(
        read_state_dict(tmp_path / "weights.pkl")["mapping.w_avg"], sd256["mapping.w_avg"]
    )


def test_torch_state_dict_round_trip(tmp_path, gen256, sd256):
    # load_generator shares everything after read_state_dict with the safetensors test.
    save_generator(gen256, tmp_path / "g.bin", format="pth")
    assert os.listdir(tmp_path) == ["g.bin"]
    with open(tmp_path / "g.bin", "rb") as f:
        assert f.read(4) == b"PK\x03\x04"  # torch zip format
    sd = read_state_dict(tmp_path / "g.bin")
    assert list(sd) == list(sd256)
    assert all(torch.equal(sd[k], sd256[k]) for k in sd256)
    assert set(torch.load(tmp_path / "g.bin", weights_only=True)) == set(sd256)


def test_wrappers_and_module_prefix(sd256):
    decoy = {"mapping.w_avg": torch.zeros(512)}
    for wrapped in (
        {"module." + k: v for k, v in sd256.items()},
        {"state_dict": sd256, "epoch": 3},
        {"G_ema": sd256, "G": decoy, "D": decoy},
        {"params_ema": sd256, "params": decoy},
        {"model": {"state_dict": sd256}},
    ):
        sd = read_state_dict(wrapped)
        assert list(sd) == list(sd256)
        assert all(sd[k] is sd256[k] for k in sd256)  # in-memory tensors are not copied
    # Only a prefix shared by every key is stripped.
    mixed = dict(sd256, **{"module.extra": torch.zeros(1)})
    assert "module.extra" in read_state_dict(mixed)


# ------------------------------------------------------------------- layouts and inference


def test_no_noise_layout_in_memory_dtype_and_rng():
    """IOPaint's Places_512_FullData_G.pth layout, loaded from memory in another dtype."""
    torch.manual_seed(7)
    sd = Generator(512, 0, 512, 256, 3, synthesis_kwargs=dict(use_noise=False)).state_dict()
    after_construction = torch.rand(4)
    assert not any("noise" in k for k in sd)
    assert infer_generator_kwargs(sd)["synthesis_kwargs"] == {"use_noise": False}
    # upstream's generate_image.py seeds, then builds a Generator: loading must leave
    # torch's RNG where a plain construction would.
    torch.manual_seed(7)
    G = load_generator(sd, dtype=torch.bfloat16)
    assert torch.equal(torch.rand(4), after_construction)
    assert G.synthesis.use_noise is False and not G.training
    got = G.state_dict()
    assert list(got) == list(sd)
    # the style path stays fp32 in half models (StyleCanStayFp32), exactly as stored
    style = tuple(name + "." for name, m in G.named_modules() if getattr(m, "keep_fp32", False))
    assert style
    for k, v in sd.items():
        want = v if k.startswith(style) else v.bfloat16()
        assert got[k].dtype == want.dtype and torch.equal(got[k], want), k


def test_inference_normal_layout(sd256):
    kw = infer_generator_kwargs(sd256)
    assert kw == dict(
        z_dim=512,
        c_dim=0,
        w_dim=512,
        img_resolution=256,
        img_channels=3,
        synthesis_kwargs={"use_noise": True},
        mapping_kwargs={},
    )


def test_inference_non_default_dims():
    kwargs = dict(
        z_dim=32,
        c_dim=5,
        w_dim=64,
        img_resolution=128,
        img_channels=3,
        synthesis_kwargs={"use_noise": True},
        mapping_kwargs={"num_layers": 3, "embed_features": 16, "layer_features": 96},
    )
    sd = Generator(**kwargs).state_dict()
    assert infer_generator_kwargs(sd) == kwargs  # so Generator(**inferred) loads strictly


@pytest.mark.skipif(not REFERENCE.exists(), reason="shared reference state dicts absent")
def test_inference_upstream_512_layouts():
    ref = json.loads(REFERENCE.read_text())["generator_512"]["state_dict"]
    meta = {k: torch.empty(s, device="meta") for k, s in ref.items()}
    assert len(meta) == 487
    assert infer_generator_kwargs(meta) == dict(
        z_dim=512,
        c_dim=0,
        w_dim=512,
        img_resolution=512,
        img_channels=3,
        synthesis_kwargs={"use_noise": True},
        mapping_kwargs={},
    )
    no_noise = {k: v for k, v in meta.items() if "noise" not in k}
    assert len(no_noise) == 465
    assert infer_generator_kwargs(no_noise)["synthesis_kwargs"] == {"use_noise": False}


# ------------------------------------------------------------ upstream-style network pickles


class _Persistent:
    """Pickles like upstream's persistent classes: a call to
    torch_utils.persistence._reconstruct_persistent_obj(meta) carrying module source."""

    def __init__(self, meta):
        self.meta = meta

    def __reduce__(self):
        return (sys.modules["torch_utils.persistence"]._reconstruct_persistent_obj, (self.meta,))


class _FakeUpstream:
    """Installs stand-ins for upstream's torch_utils.persistence and dnnlib.util while
    pickling, and removes them again so the loader cannot lean on them."""

    NAMES = ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util")

    def __enter__(self):
        assert not any(n in sys.modules for n in self.NAMES)
        mods = {n: types.ModuleType(n) for n in self.NAMES}

        def _reconstruct_persistent_obj(meta):  # upstream exec()s meta['module_src'] here
            raise AssertionError("the loader must not call upstream's reconstruct function")

        _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
        _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
        EasyDict = type("EasyDict", (dict,), {"__module__": "dnnlib.util"})
        mods["torch_utils.persistence"]._reconstruct_persistent_obj = _reconstruct_persistent_obj
        mods["torch_utils"].persistence = mods["torch_utils.persistence"]
        mods["dnnlib.util"].EasyDict = mods["dnnlib"].EasyDict = EasyDict
        mods["dnnlib"].util = mods["dnnlib.util"]
        sys.modules.update(mods)
        self.EasyDict = EasyDict
        return self

    def __exit__(self, *exc):
        for n in self.NAMES:
            sys.modules.pop(n, None)

    def persistent(self, class_name, state, src):
        meta = dict(type="class", version=6, module_src=src, class_name=class_name, state=state)
        return _Persistent(meta)

    def convert(self, m, src):
        """Mirror a real module tree: custom classes become persistent objects, torch.nn
        containers stay real torch modules pickled the ordinary way."""
        state = dict(m.__dict__)
        state["_parameters"] = OrderedDict(
            (n, None if p is None else torch.nn.Parameter(p.detach()))
            for n, p in m._parameters.items()
        )
        state["_buffers"] = OrderedDict(m._buffers)
        state["_modules"] = OrderedDict((n, self.convert(c, src)) for n, c in m._modules.items())
        if type(m).__module__.startswith("torch.nn.modules"):
            obj = copy.copy(m)
            obj.__dict__.update(state)
            return obj
        state.update(
            _init_args=(),
            _init_kwargs=self.EasyDict(activation="lrelu"),
            np_gain=np.float32(0.5),
            np_table=np.arange(3.0),
            dtype=torch.float32,
        )
        return self.persistent(type(m).__name__, state, src)


def _malicious_src(marker):
    return f"open({str(marker)!r}, 'w').write('module_src was executed')\n"


def _small_net(fake, src, value):
    state = dict(
        _parameters=OrderedDict(weight=torch.nn.Parameter(torch.full([2, 3], value))),
        _buffers=OrderedDict(),
        _non_persistent_buffers_set=set(),
        _modules=OrderedDict(),
        training=False,
    )
    return fake.persistent("Generator", state, src)


def test_upstream_network_pickle(tmp_path, gen256, sd256):
    marker = tmp_path / "marker"
    src = _malicious_src(marker)
    with _FakeUpstream() as fake:
        g_ema = fake.convert(gen256, src)
        # A non-persistent buffer at the root must not end up in the state dict.
        g_ema.meta["state"]["_buffers"]["scratch"] = torch.zeros(5)
        g_ema.meta["state"]["_non_persistent_buffers_set"] = {"scratch"}
        data = {
            "G": _small_net(fake, src, 1.0),
            "D": _small_net(fake, src, 2.0),
            "G_ema": g_ema,
            "augment_pipe": None,
            "training_set_kwargs": fake.EasyDict(path="places.zip", resolution=256),
        }
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # TypedStorage deprecation
            with open(tmp_path / "Places_256.pkl", "wb") as f:
                pickle.dump(data, f)
    assert "torch_utils.persistence" not in sys.modules
    G = load_generator(tmp_path / "Places_256.pkl")
    assert_same_state(G, sd256)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_upstream_pickle_falls_back_to_G(tmp_path, caplog, protocol):
    marker = tmp_path / "marker"
    with _FakeUpstream() as fake:
        payload = pickle.dumps(
            {
                "G": _small_net(fake, _malicious_src(marker), 1.5),
                "D": _small_net(fake, _malicious_src(marker), 2.0),
            },
            protocol=protocol,
        )
        no_gen = pickle.dumps({"D": _small_net(fake, "", 2.0)}, protocol=protocol)
    (tmp_path / "g.pkl").write_bytes(payload)
    with caplog.at_level(logging.WARNING, logger="mat_fast.checkpoints"):
        sd = read_state_dict(tmp_path / "g.pkl")
    assert list(sd) == ["weight"] and torch.equal(sd["weight"], torch.full([2, 3], 1.5))
    assert "non-EMA" in caplog.text
    (tmp_path / "d.pkl").write_bytes(no_gen)
    with pytest.raises(CheckpointError, match=r"no generator weights.*'D'"):
        read_state_dict(tmp_path / "d.pkl")
    assert not marker.exists()


# ----------------------------------------------------------------------- malicious content


class _Reduce:
    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def _evil_objects(marker):
    cmd = f"touch {marker}"
    return {
        f"{os.system.__module__}.system": _Reduce(os.system, (cmd,)),
        "builtins.eval": _Reduce(eval, (f"open({str(marker)!r}, 'w')",)),
        "builtins.exec": _Reduce(exec, (f"open({str(marker)!r}, 'w')",)),
        "subprocess.Popen": _Reduce(__import__("subprocess").Popen, (["touch", str(marker)],)),
        "torch.nn.modules.module.register_module_forward_hook": _Reduce(
            torch.nn.modules.module.register_module_forward_hook, (print,)
        ),
    }


@pytest.mark.parametrize("which", range(5))
def test_malicious_pickle_refused(tmp_path, which):
    marker = tmp_path / "marker"
    name, evil = list(_evil_objects(marker).items())[which]
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"G_ema": evil}))
    with pytest.raises(
        CheckpointError, match=r"refused.*'" + name.replace(".", r"\.") + r"'.*may be malicious"
    ) as info:
        load_generator(tmp_path / "evil.pkl")
    assert str(tmp_path / "evil.pkl") in str(info.value)
    assert not marker.exists()


def test_malicious_state_inside_persistent_object(tmp_path):
    marker = tmp_path / "marker"
    with _FakeUpstream() as fake:
        state = dict(
            _parameters=OrderedDict(),
            _buffers=OrderedDict(),
            _modules=OrderedDict(),
            hook=_Reduce(os.system, (f"touch {marker}",)),
        )
        payload = pickle.dumps({"G_ema": fake.persistent("Generator", state, "")})
    (tmp_path / "evil.pkl").write_bytes(payload)
    with pytest.raises(CheckpointError, match=r"refused.*system"):
        load_generator(tmp_path / "evil.pkl")
    assert not marker.exists()


class _CraftedTensor:
    """A tensor pickle with a view larger than its stored data, or a BUILD step that
    re-points it (Tensor.__setstate__) at a larger view; torch would silently grow the
    storage with uninitialised memory."""

    def __init__(self, size, build=None):
        self.size, self.build = size, build

    def __reduce__(self):
        storage = torch.arange(4.0).storage()
        rebuild = (
            torch._utils._rebuild_tensor_v2,
            (storage, 0, self.size, (1,), False, OrderedDict()),
        )
        return rebuild + ((self.build(storage),) if self.build else ())


@pytest.mark.parametrize(
    "crafted", [_CraftedTensor((10,)), _CraftedTensor((2,), lambda s: (s, 0, (10**6,), (1,)))]
)
def test_crafted_tensor_views_refused(tmp_path, crafted):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        (tmp_path / "x.pkl").write_bytes(pickle.dumps({"mapping.w_avg": crafted}))
    with pytest.raises(CheckpointError, match="corrupt or unsupported.*(past its|modified)"):
        read_state_dict(tmp_path / "x.pkl")


@pytest.mark.parametrize("zipfile", [True, False])
def test_malicious_torch_file_refused(tmp_path, sd256, zipfile):
    marker = tmp_path / "marker"
    evil = {"mapping.w_avg": sd256["mapping.w_avg"], "x": _Reduce(os.system, (f"touch {marker}",))}
    torch.save(evil, tmp_path / "evil.pth", _use_new_zipfile_serialization=zipfile)
    refused = f"'{os.system.__module__}.system'"
    with pytest.raises(
        CheckpointError, match=refused + r".*weights_only=True.*nothing in it was executed"
    ):
        load_generator(tmp_path / "evil.pth")
    assert not marker.exists()


# ---------------------------------------------------------------- wrong or broken checkpoints


def test_partial_and_mismatched_checkpoint_named(sd256):
    sd = dict(sd256)
    dropped = [k for k in sd if k.startswith("synthesis.enc.")][:13]
    for k in dropped:
        del sd[k]
    sd["synthesis.extra.weight"] = torch.zeros(3)
    sd["mapping.fc3.bias"] = torch.zeros(7)
    with pytest.raises(CheckpointError) as info:
        load_generator(sd)
    msg = str(info.value)
    assert "<in-memory state dict>" in msg
    assert "missing keys (13)" in msg and dropped[0] in msg and "and 3 more" in msg
    assert "unexpected keys (1): synthesis.extra.weight" in msg
    assert "mapping.fc3.bias: checkpoint (7,) vs model (512,)" in msg


def test_non_tensor_and_non_float_values(sd256):
    with pytest.raises(
        CheckpointError, match=r"not dense floating-point tensors.*'mapping.w_avg' \(str\)"
    ):
        read_state_dict(dict(sd256, **{"mapping.w_avg": "oops"}))
    with pytest.raises(CheckpointError, match=r"'mapping.w_avg' \(torch.int64\)"):
        read_state_dict(dict(sd256, **{"mapping.w_avg": torch.zeros(512, dtype=torch.long)}))
    with pytest.raises(CheckpointError, match="no generator weights"):
        read_state_dict({})
    with pytest.raises(CheckpointError, match="discriminator"):
        load_generator({"Dis.0.weight": torch.zeros(1), "Dis.0.bias": torch.zeros(1)})
    with pytest.raises(TypeError):
        read_state_dict(42)


def test_pickle_nested_too_deeply_is_refused_unread(tmp_path):
    """A 300000-deep tuple chain added to a set crashes CPython while unpickling (C
    recursion in tuple hashing, uncatchable): the opcode scan refuses it first."""
    path = tmp_path / "deep.pkl"
    path.write_bytes(b"\x80\x04\x8f(" + b")" + b"\x85" * 300_000 + b"\x90.")
    with pytest.raises(CheckpointError, match="nests objects more than 1000 levels"):
        read_state_dict(path)
    # a legitimately nested pickle (deep, but far below the limit) still loads its data
    nested: object = {"G_ema": {"w": torch.zeros(2)}}
    for _ in range(50):
        nested = [nested]
    ok = tmp_path / "ok.pkl"
    ok.write_bytes(pickle.dumps((nested,), protocol=4))
    with pytest.raises(CheckpointError, match="expected a dict of tensors, found a tuple"):
        read_state_dict(ok)  # refused for its content, not for its nesting


def test_crafted_sizes_are_refused_before_building(tmp_path, sd256):
    """Shapes that would build an enormous network, stride-0 views that fake large
    tensors, meta/sparse tensors and deflated zip entries are refused with a reason."""
    big = dict(sd256)
    big["mapping.fc0.weight"] = torch.zeros(1).expand(131072, 131072)
    with pytest.raises(CheckpointError, match=r"'mapping.fc0.weight' \(expanded"):
        load_generator(big)
    wide = dict(sd256, **{"mapping.fc7.weight": torch.zeros(8192, 512)})
    with pytest.raises(CheckpointError, match=r"w_dim 8192 \(at most 4096\)"):
        load_generator(wide)
    odd = dict(sd256, **{"synthesis.dec.Dec_1000x1000.x": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"img_resolution 1000 \(not a power of two\)"):
        load_generator(odd)
    huge = dict(sd256, **{f"synthesis.dec.Dec_{2**40}x{2**40}.x": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"img_resolution 1099511627776 \(at most 512\)"):
        load_generator(huge)
    with pytest.raises(CheckpointError, match=r"'mapping.w_avg' \(meta tensor\)"):
        read_state_dict(dict(sd256, **{"mapping.w_avg": torch.empty(512, device="meta")}))
    with pytest.raises(CheckpointError, match=r"'mapping.w_avg' \(torch.sparse_coo tensor\)"):
        read_state_dict(dict(sd256, **{"mapping.w_avg": torch.zeros(512).to_sparse()}))
    import zipfile

    plain = tmp_path / "plain.pth"
    torch.save({"mapping.w_avg": torch.zeros(1000)}, plain)
    packed = tmp_path / "packed.pth"
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    with pytest.raises(CheckpointError, match="compressed entries"):
        read_state_dict(packed)
    assert read_state_dict(plain)["mapping.w_avg"].shape == (1000,)


def test_malformed_module_state_gives_a_checkpoint_error(tmp_path):
    """Module state of the wrong types inside a network pickle: a CheckpointError, not a
    raw AttributeError/TypeError from deep inside."""
    from mat_fast.network_pickle import ModuleStub

    for state in (
        {"_parameters": 5, "_modules": {}},
        {"_parameters": {1: torch.zeros(1)}, "_modules": {}},
        {"_non_persistent_buffers_set": 5, "_modules": {}},
        {"_modules": []},
    ):
        # as unpickled from a network pickle, under its usual 'G_ema' key
        with pytest.raises(
            CheckpointError, match="'Generator' in the pickle .module state of the wrong types"
        ):
            read_state_dict({"G_ema": ModuleStub("Generator", state)})


def test_bad_paths(tmp_path):
    with pytest.raises(CheckpointNotFoundError) as info:
        load_generator(tmp_path / "Places_512_FullData.pkl")
    assert isinstance(info.value, FileNotFoundError)
    assert "Places_512_FullData_G.pth" in str(info.value) and ".safetensors" in str(info.value)

    with pytest.raises(CheckpointError, match="is a directory"):
        load_generator(tmp_path)
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.*safetensors"):
        load_generator(tmp_path / "empty.pth")
    (tmp_path / "noise.pth").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError, match="unrecognised file format"):
        load_generator(tmp_path / "noise.pth")
    (tmp_path / "lfs.pkl").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0")
    with pytest.raises(CheckpointError, match="Git LFS pointer"):
        load_generator(tmp_path / "lfs.pkl")
    (tmp_path / "page.pkl").write_text("<!DOCTYPE html><html><body>OneDrive</body></html>")
    with pytest.raises(CheckpointError, match="web page"):
        load_generator(tmp_path / "page.pkl")


def test_safetensors_header_that_looks_like_a_pickle(tmp_path):
    # A 640-byte header starts with b"\x80\x02", the opening of a protocol-2 pickle.
    from safetensors.torch import save_file

    for n in range(1, 60):
        tensors = {f"w{i:03d}": torch.full([1], float(i)) for i in range(n)}
        save_file(tensors, str(tmp_path / "x.safetensors"))
        if (tmp_path / "x.safetensors").read_bytes()[:2] == b"\x80\x02":
            break
    else:
        pytest.skip("could not produce a 640-byte safetensors header")
    assert torch.equal(read_state_dict(tmp_path / "x.safetensors")["w000"], torch.zeros(1))


def test_truncated_files(tmp_path, sd256):
    small = {"mapping.w_avg": sd256["mapping.w_avg"]}
    torch.save(small, tmp_path / "a.pth")
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        pickle.dump({"G_ema": small}, buf)
    (tmp_path / "b.pkl").write_bytes(buf.getvalue())
    from safetensors.torch import save_file

    save_file(small, str(tmp_path / "c.safetensors"))
    for name in ("a.pth", "b.pkl", "c.safetensors"):
        data = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(data[: len(data) // 2])
        with pytest.raises(CheckpointError, match="corrupt or unsupported"):
            read_state_dict(tmp_path / name)


# ------------------------------------------------------------------------------ atomic save


def test_save_to_missing_directory_leaves_nothing(tmp_path, gen256):
    target = tmp_path / "no" / "such" / "dir" / "g.safetensors"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_generator(gen256, target)
    assert os.listdir(tmp_path) == []


def test_failed_save_keeps_old_file(tmp_path, gen256, monkeypatch):
    target = tmp_path / "g.safetensors"
    target.write_bytes(b"previous checkpoint")

    def broken_save(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half written")
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_generator(gen256, target)
    assert os.listdir(tmp_path) == ["g.safetensors"]
    assert target.read_bytes() == b"previous checkpoint"
    with pytest.raises(ValueError, match="format"):
        save_generator(gen256, tmp_path / "g.onnx", format="onnx")


def test_saved_checkpoints_get_the_usual_file_mode(tmp_path, gen256):
    """safetensors writes its files 0600; a saved checkpoint gets the mode of any new file
    (0666 minus the umask), like torch.save's."""
    old = os.umask(0o022)
    try:
        for name in ("g.safetensors", "g.pth"):
            save_generator(gen256, tmp_path / name)
            assert oct((tmp_path / name).stat().st_mode & 0o777) == oct(0o644), name
    finally:
        os.umask(old)


def test_corrupt_torch_file_is_not_called_malicious(tmp_path):
    path = tmp_path / "legacy.pth"
    path.write_bytes(b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19" + b"\x00" * 64)
    with pytest.raises(CheckpointError) as info:
        read_state_dict(path)
    assert "malicious" not in str(info.value) and "corrupt" in str(info.value)
