"""The on-disk decision cache: keys that hold across processes, files that never break a run."""

from __future__ import annotations

import contextlib
import doctest
import json
import logging
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from perfcallbacks.fixes import cache as cache_mod
from perfcallbacks.fixes.cache import (
    ENV,
    SCHEMA,
    DecisionCache,
    cache_dir,
    decision_key,
    model_signature,
    shape_bucket,
    weights_fingerprint,
)


def _key(fix_id: str = "dynamic-quantization", **changes) -> str:
    parts = {
        "fix_id": fix_id,
        "model_signature": "sig",
        "dtype": "float32",
        "device": {"kind": "cpu", "name": "AMD EPYC"},
        "torch_version": "2.13.0",
        "threads": 2,
        "bucket": "b32-s128",
    }
    parts.update(changes)
    return decision_key(**parts)


DECISION = {
    "status": "applied",
    "backend": "fbgemm",
    "fp32_layers": ["encoder.layer.0.output.dense"],
    "speedup": 1.3,
    "spread": [1.21, 1.38],
    "weights": "ab" * 32,
    "reason": None,
}


def _leftovers(directory: Path) -> list[str]:
    """Anything in the cache folder that is not a finished ``<key>.json``."""
    if not directory.is_dir():
        return []
    return sorted(p.name for p in directory.iterdir() if not (p.suffix == ".json" and not p.name.startswith(".")))


def _tiny_model() -> torch.nn.Module:
    # Parameters, a shared (tied) weight, float and integer buffers: the kinds a real model has.
    torch.manual_seed(0)
    emb = torch.nn.Embedding(50, 8)
    model = torch.nn.Sequential(emb, torch.nn.Linear(8, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 50))
    model[3].weight = emb.weight
    return model


# -- cache_dir / the switch -------------------------------------------------------------------


@pytest.mark.parametrize("value", ["off", "OFF", "Off", "0", "false", "False", "", "  off "])
def test_cache_dir_switched_off(value):
    assert cache_dir({ENV: value}) is None


def test_cache_dir_default_and_explicit(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv(ENV, raising=False)
    assert cache_dir() == tmp_path / ".cache" / "perfcallbacks"
    assert cache_dir({ENV: str(tmp_path / "x")}) == tmp_path / "x"
    assert cache_dir({ENV: "~/c"}) == tmp_path / "c"


def test_env_off_disables_the_default_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv(ENV, "off")
    cache = DecisionCache()
    assert not cache.enabled and cache.directory is None
    assert cache.put(_key(), DECISION) is False
    assert cache.get(_key()) is None
    assert list(tmp_path.rglob("*")) == []  # nothing written anywhere under HOME


def test_default_cache_follows_env_and_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv(ENV, raising=False)
    assert DecisionCache().put(_key(), DECISION)
    assert (tmp_path / ".cache" / "perfcallbacks" / f"{_key()}.json").is_file()
    monkeypatch.setenv(ENV, str(tmp_path / "elsewhere"))
    cache = DecisionCache()
    assert cache.directory == tmp_path / "elsewhere" and cache.get(_key()) is None


def test_bad_directory_argument_is_a_type_error():
    with pytest.raises(TypeError, match="directory must be a path, a str or None"):
        DecisionCache(3)


# -- round trip and the file format --------------------------------------------------------------


def test_round_trip_and_file_format(tmp_path):
    cache = DecisionCache(tmp_path / "nested" / "cache")  # created on first put
    key = _key()
    assert cache.enabled and cache.get(key) is None
    assert cache.put(key, DECISION) is True
    assert cache.get(key) == DECISION
    entry = json.loads((tmp_path / "nested" / "cache" / f"{key}.json").read_text())
    assert entry["schema"] == SCHEMA and entry["key"] == key and entry["torch"] == torch.__version__
    assert entry["decision"] == DECISION
    assert time.strptime(entry["created"], "%Y-%m-%dT%H:%M:%SZ")
    # a second decision replaces the first; other keys are other files
    assert cache.put(key, {"status": "rejected", "speedup": 0.97})
    assert cache.put(_key("sdpa"), DECISION)
    assert cache.get(key) == {"status": "rejected", "speedup": 0.97}
    assert cache.get(_key("sdpa")) == DECISION
    assert _leftovers(cache.directory) == []
    # a fresh cache object (another process, in effect) reads the same
    assert DecisionCache(str(cache.directory)).get(key) == {"status": "rejected", "speedup": 0.97}


def test_get_returns_a_fresh_dict(tmp_path):
    cache = DecisionCache(tmp_path)
    cache.put(_key(), DECISION)
    cache.get(_key())["status"] = "changed"
    assert cache.get(_key())["status"] == "applied"


@pytest.mark.parametrize("key", ["../escape", "ABC", "", "ab/cd", "a" * 129, None, 12])
def test_bad_keys_store_nothing(tmp_path, key):
    cache = DecisionCache(tmp_path / "c")
    assert cache.put(key, DECISION) is False
    assert cache.get(key) is None
    assert list(tmp_path.rglob("*")) == []


def test_decision_that_is_not_json_is_not_stored(tmp_path, caplog):
    cache = DecisionCache(tmp_path)
    with caplog.at_level(logging.DEBUG, logger=cache_mod.__name__):
        assert cache.put(_key(), {"speedup": torch.tensor(1.3)}) is False
    assert "not plain JSON" in caplog.text
    assert list(tmp_path.iterdir()) == []


# -- corrupt, foreign, unreadable ------------------------------------------------------------------


def _corrupt_files(key: str) -> dict[str, bytes]:
    whole = json.dumps({"schema": SCHEMA, "key": key, "created": "x", "torch": "2", "decision": DECISION}).encode()
    return {
        "garbage": os.urandom(200) + b"\xff\xfe",
        "empty": b"",
        "truncated": whole[: len(whole) // 2],
        "wrong-schema": whole.replace(SCHEMA.encode(), b"perfcallbacks/decision-v0"),
        "key-mismatch": whole.replace(key.encode(), _key("sdpa").encode()),
        "not-an-object": b"[1, 2, 3]",
        "decision-not-an-object": json.dumps({"schema": SCHEMA, "key": key, "decision": [1]}).encode(),
        "deep-nesting": b"[" * 100_000,
        "oversized": b" " * (2 << 20) + whole,
    }


@pytest.mark.parametrize("kind", sorted(_corrupt_files("0" * 64)))
def test_corrupt_or_foreign_file_is_ignored_then_replaced(tmp_path, kind):
    cache = DecisionCache(tmp_path)
    key = _key()
    path = tmp_path / f"{key}.json"
    path.write_bytes(_corrupt_files(key)[kind])
    assert cache.get(key) is None
    assert cache.put(key, DECISION) is True
    assert cache.get(key) == DECISION
    assert _leftovers(tmp_path) == []


def test_a_folder_at_the_key_reads_as_absent_and_put_fails_cleanly(tmp_path):
    cache = DecisionCache(tmp_path)
    key = _key()
    (tmp_path / f"{key}.json").mkdir()  # os.replace cannot put a file over a directory
    assert cache.get(key) is None
    assert cache.put(key, DECISION) is False
    assert _leftovers(tmp_path) == [] and (tmp_path / f"{key}.json").is_dir()


def _running_as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


@contextlib.contextmanager
def _unprivileged():
    """Root ignores file modes: act as ``nobody`` (effective ids only, restored after) so they apply."""
    if not _running_as_root():
        yield
        return
    import pwd

    try:
        nobody = pwd.getpwnam("nobody")
        uid, gid = nobody.pw_uid, nobody.pw_gid
    except KeyError:
        uid = gid = 65534
    os.setegid(gid)
    os.seteuid(uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@pytest.mark.skipif(not hasattr(os, "geteuid"), reason="POSIX file modes")
def test_read_only_directory(caplog):
    # Outside pytest's 0700 tmp tree, so that only the folder's own mode (read + search, no write) stops the write.
    base = Path(tempfile.mkdtemp(prefix="pc-ro-"))
    try:
        base.chmod(0o755)
        ro = base / "ro"
        cache = DecisionCache(ro)
        assert cache.put(_key(), {"status": "rejected"})
        ro.chmod(0o555)
        with _unprivileged(), caplog.at_level(logging.DEBUG, logger=cache_mod.__name__):
            eff = {"effective_ids": True} if os.access in os.supports_effective_ids else {}
            assert os.access(ro, os.R_OK | os.X_OK, **eff) and not os.access(ro, os.W_OK, **eff)
            assert cache.put(_key(), DECISION) is False
            assert cache.put(_key("sdpa"), DECISION) is False
            # Our own file still reads; under another user the 0600 file is unreadable, which reads as absent.
            assert cache.get(_key()) in ({"status": "rejected"}, None)
        assert "write to" in caplog.text
        assert sorted(p.name for p in ro.iterdir()) == [f"{_key()}.json"]
        assert cache.get(_key()) == {"status": "rejected"}
    finally:
        if (base / "ro").exists():
            (base / "ro").chmod(0o700)
        shutil.rmtree(base)


def test_unwritable_location_under_any_user(tmp_path, caplog):
    # A parent that is a regular file stops root as well as anyone else: mkdir fails with an OSError.
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cache = DecisionCache(blocker / "cache")
    with caplog.at_level(logging.DEBUG, logger=cache_mod.__name__):
        assert cache.put(_key(), DECISION) is False
    assert cache.get(_key()) is None
    assert "write to" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE behaviour is Linux's")
def test_disk_full_mid_write_leaves_no_temp_file(tmp_path):
    # A file-size limit makes the write itself fail (EFBIG), as a full disk fails it (ENOSPC), after the
    # temporary file exists: the real failure path, no patched functions.
    import resource
    import signal

    cache = DecisionCache(tmp_path)
    key = _key()
    assert cache.put(key, {"status": "rejected"})
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64, hard))
    try:
        stored = cache.put(key, DECISION)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert stored is False
    assert cache.get(key) == {"status": "rejected"}  # the old whole file is still there
    assert _leftovers(tmp_path) == []


# -- keys ------------------------------------------------------------------------------------------


def test_shape_bucket():
    assert shape_bucket(32, 128) == shape_bucket(17, 65) == "b32-s128"
    assert shape_bucket(33, 129) == "b64-s256"
    assert shape_bucket(1, 1) == "b1-s1" and shape_bucket(0, None) == "b0-sany"
    assert shape_bucket(None, None) == "bany-sany"
    assert shape_bucket(torch.tensor(3).item(), 2) == "b4-s2"


@pytest.mark.parametrize(
    ("args", "error"), [((-1, 4), ValueError), ((2.0, 4), TypeError), ((True, 4), TypeError), ((2, "128"), TypeError)]
)
def test_shape_bucket_rejects_bad_sizes(args, error):
    with pytest.raises(error, match="batch_size|seq_len"):
        shape_bucket(*args)


def test_decision_key_is_canonical_and_covers_every_part():
    base = _key()
    assert len(base) == 64 and int(base, 16) >= 0
    assert base == _key(device={"name": "AMD EPYC", "kind": "cpu"})  # mapping order does not matter
    changes = [
        {"fix_id": "sdpa"},
        {"model_signature": "other"},
        {"dtype": "bfloat16"},
        {"dtype": None},
        {"device": "cuda"},
        {"device": {"kind": "cpu", "name": "Intel"}},
        {"torch_version": "2.12.0"},
        {"threads": 1},
        {"bucket": "b64-s128"},
    ]
    keys = {_key(**c) for c in changes}
    assert len(keys) == len(changes) and base not in keys


@pytest.mark.parametrize(
    "change",
    [{"threads": "2"}, {"threads": True}, {"fix_id": None}, {"dtype": torch.float32}, {"device": 3}, {"bucket": None}],
)
def test_decision_key_rejects_wrong_types(change):
    with pytest.raises(TypeError, match="decision_key"):
        _key(**change)


def test_signature_is_structure_only_and_fingerprint_follows_the_weights():
    model = _tiny_model()
    sig, fp = model_signature(model), weights_fingerprint(model)
    assert model_signature(_tiny_model()) == sig and weights_fingerprint(_tiny_model()) == fp
    model(torch.randint(0, 50, (4,))).sum().backward()
    with torch.no_grad():  # one SGD step, written out (torch.optim's first use imports torch._dynamo: seconds)
        for p in model.parameters():
            p.sub_(1e-3 * p.grad)
    assert model_signature(model) == sig
    assert weights_fingerprint(model) != fp
    model.load_state_dict(_tiny_model().state_dict())  # the same weights again: the same fingerprint
    assert weights_fingerprint(model) == fp
    # A change of structure or dtype changes the signature.
    assert model_signature(_tiny_model().double()) != sig
    other = _tiny_model()
    other[1] = torch.nn.Linear(8, 8, bias=False)
    assert model_signature(other) != sig
    renamed = torch.nn.Sequential()
    for name, child in zip("abcd", _tiny_model()):
        renamed.add_module(name, child)
    assert model_signature(renamed) != sig


def test_fingerprint_sees_a_small_change_anywhere_in_a_matrix():
    lin = torch.nn.Linear(64, 64)
    fp = weights_fingerprint(lin)
    with torch.no_grad():
        lin.weight.mul_(1.0001)  # a scaled, not shifted, update: every sampled value moves
    assert weights_fingerprint(lin) != fp
    # Buffers count too (BatchNorm running stats move in train-mode forwards).
    bn = torch.nn.BatchNorm1d(4)
    fp = weights_fingerprint(bn)
    bn(torch.randn(8, 4))
    assert weights_fingerprint(bn) != fp


def test_fingerprint_of_unusual_tensors_does_not_raise():
    meta = torch.nn.Linear(4, 4, device="meta")
    empty = torch.nn.Module()
    empty.weight = torch.nn.Parameter(torch.empty(4, 0))
    model = torch.nn.Sequential(torch.nn.Linear(4, 4).to(torch.bfloat16), torch.nn.Linear(4, 4).half())
    model.register_buffer("steps", torch.tensor(7))
    model.register_buffer("mask", torch.ones(3, dtype=torch.bool))
    model.register_buffer("transposed", torch.randn(5, 3).t())  # non-contiguous
    for m in (meta, empty, model):
        assert len(weights_fingerprint(m)) == 64
    assert weights_fingerprint(meta) != weights_fingerprint(torch.nn.Linear(4, 5, device="meta"))


# -- concurrency -------------------------------------------------------------------------------


def _decision(writer: int, n: int) -> dict:
    payload = [writer * 1_000_000 + n + i for i in range(1500)]  # ~15 kB: big enough for torn writes to show
    return {"status": "applied", "writer": writer, "n": n, "payload": payload, "check": sum(payload)}


def _whole(decision: dict) -> bool:
    return (
        set(decision) == {"status", "writer", "n", "payload", "check"}
        and decision["status"] == "applied"
        and len(decision["payload"]) == 1500
        and sum(decision["payload"]) == decision["check"]
    )


def _hammer(directory: str, writer: int, barrier, seconds: float, results) -> None:
    shared, own = _key("shared"), _key(f"own-{writer}")
    cache = DecisionCache(directory)
    errors: list[str] = []
    puts = gets = 0
    try:
        barrier.wait(timeout=60)
        deadline = time.monotonic() + seconds
        n = 0
        while time.monotonic() < deadline:
            n += 1
            ok_shared = cache.put(shared, _decision(writer, n))
            ok_own = cache.put(own, _decision(writer, n))
            puts += 2
            if not (ok_shared and ok_own):
                errors.append(f"put failed at {n}: shared={ok_shared} own={ok_own}")
            got = cache.get(shared)
            gets += 1
            if got is None or not _whole(got):  # someone has written it at least once by now
                errors.append(f"shared get at {n}: {str(got)[:80]}")
            got = cache.get(own)
            gets += 1
            if got != _decision(writer, n):  # only this process writes its own key
                errors.append(f"own get at {n}: {str(got)[:80]}")
    except Exception as exc:  # noqa: BLE001 - the test reports any exception from the cache
        errors.append(f"raised {exc!r}")
    model = _tiny_model()
    keys = {"sig": model_signature(model), "fp": weights_fingerprint(model), "key": _key()}
    results.put((writer, puts, gets, errors[:5], len(errors), keys))


@pytest.fixture(scope="module")
def hammered(tmp_path_factory):
    """Two spawned processes putting and getting one shared key and one key each, for a second at once."""
    directory = tmp_path_factory.mktemp("hammered")
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: their own hash seed, nothing inherited
    barrier = ctx.Barrier(3)
    results = ctx.Queue()
    procs = [ctx.Process(target=_hammer, args=(str(directory), w, barrier, 1.0, results)) for w in (1, 2)]
    for p in procs:
        p.start()
    # This process reads the shared key throughout: a third party that must only ever see whole files.
    cache = DecisionCache(directory)
    seen = torn = 0
    barrier.wait(timeout=60)
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        got = cache.get(_key("shared"))
        if got is not None:
            seen += 1
            torn += not _whole(got)
    reports = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    return {"dir": directory, "reports": reports, "seen": seen, "torn": torn, "exitcodes": [p.exitcode for p in procs]}


def test_two_processes_writing_and_reading_at_once(hammered):
    assert hammered["exitcodes"] == [0, 0]
    for writer, puts, gets, errors, n_errors, _ in hammered["reports"]:
        assert n_errors == 0, (writer, errors)
        assert puts > 20 and gets > 20, (writer, puts, gets)
    assert hammered["torn"] == 0 and hammered["seen"] > 20
    cache = DecisionCache(hammered["dir"])
    assert cache.get(_key("shared"))["writer"] in (1, 2)
    assert cache.get(_key("own-1"))["writer"] == 1 and cache.get(_key("own-2"))["writer"] == 2
    assert _leftovers(hammered["dir"]) == []
    assert len(list(hammered["dir"].iterdir())) == 3


def test_keys_are_the_same_in_another_process(hammered):
    # Computed in the spawned processes (other hash seeds, other memory layout): nothing may depend on id().
    model = _tiny_model()
    here = {"sig": model_signature(model), "fp": weights_fingerprint(model), "key": _key()}
    assert [r[-1] for r in hammered["reports"]] == [here, here]


# -- docs --------------------------------------------------------------------------------------


def test_docstring_examples_run():
    result = doctest.testmod(cache_mod, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 20 and result.failed == 0


# -- the real model ------------------------------------------------------------------------------


@pytest.mark.slow
def test_minilm_signature_fingerprint_and_attention_implementation(minilm_dir):
    import copy

    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModel.from_pretrained(minilm_dir, attn_implementation="sdpa")
    sig, fp = model_signature(model), weights_fingerprint(model)
    assert len(list(model.parameters())) > 100
    eager = copy.deepcopy(model)
    assert (model_signature(eager), weights_fingerprint(eager)) == (sig, fp)
    eager.set_attn_implementation("eager")
    # the same modules and weights, but another attention code path: another speed decision
    assert model_signature(eager) != sig and weights_fingerprint(eager) == fp
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    model.train()
    model(input_ids=torch.randint(0, 1000, (2, 16))).last_hidden_state.mean().backward()
    opt.step()
    assert model_signature(model) == sig and weights_fingerprint(model) != fp
