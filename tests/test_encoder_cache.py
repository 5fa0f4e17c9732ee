"""The sentence-encoder cache, with a small deterministic encoder that counts what it is asked to encode."""

import hashlib
import logging

import h5py
import numpy as np
import pytest

from extract.core.errors import UserError
from extract.store import open_features, write_features
from retrieval import encoder_cache
from retrieval.encoder_cache import cached_encode, text_key


def _reference(text: str, dim: int = 6) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32)


class CountingEncoder:
    def __init__(self, fingerprint: str = "fake==1:aaaa", dim: int = 6, fail_on_call: int | None = None):
        self.name = "fake"
        self.dim = dim
        self.fingerprint = fingerprint
        self.seen: list[str] = []
        self.calls = 0
        self.fail_on_call = fail_on_call

    def encode(self, texts):
        self.calls += 1
        if self.fail_on_call == self.calls:
            raise KeyboardInterrupt("killed while encoding")
        self.seen.extend(texts)
        return np.stack([_reference(t, self.dim) for t in texts])


TEXTS = ["Un perro corre por la playa.", "Una niña con paraguas.", "Un perro corre por la playa.", "Un tren rojo."]


def test_cache_encodes_each_distinct_text_once_and_second_call_nothing(tmp_path):
    enc = CountingEncoder()
    cache = tmp_path / "c.h5"
    first = cached_encode(enc, TEXTS, cache, batch_size=2)
    assert sorted(enc.seen) == sorted(set(TEXTS))  # the duplicate was encoded once
    expected = np.stack([_reference(t) for t in TEXTS])
    assert first.dtype == np.float32 and first.tobytes() == expected.tobytes()

    again = CountingEncoder()
    second = cached_encode(again, TEXTS[::-1], cache)
    assert again.calls == 0 and again.seen == []
    assert second.tobytes() == expected[::-1].tobytes()


def test_cache_encodes_only_missing_texts(tmp_path):
    cache = tmp_path / "c.h5"
    cached_encode(CountingEncoder(), TEXTS[:2], cache)
    enc = CountingEncoder()
    out = cached_encode(enc, TEXTS + ["Un gato negro."], cache)
    assert sorted(enc.seen) == ["Un gato negro.", "Un tren rojo."]
    assert np.array_equal(out, np.stack([_reference(t) for t in TEXTS + ["Un gato negro."]]))


def test_cache_file_survives_reopening_and_reads_with_plain_h5py(tmp_path):
    cache = tmp_path / "c.h5"
    many = [f"Una foto número {i} de un caballo." for i in range(40)]
    cached_encode(CountingEncoder(), many, cache, batch_size=16)
    assert not cache.with_name("c.h5.parts").exists()
    with h5py.File(cache, "r") as f:
        assert f.attrs["encoder_fingerprint"] == "fake==1:aaaa"
        assert f.attrs["kind"] == encoder_cache.CACHE_KIND
        keys = list(f["ids"].asstr()[...])
        vectors = f["features"][...]
    assert keys == [hashlib.sha1(t.encode("utf-8")).hexdigest() for t in many]
    assert keys[0] == text_key(many[0])
    assert np.array_equal(vectors, np.stack([_reference(t) for t in many]))
    assert open_features(cache).dim == 6


def test_fingerprint_change_invalidates_the_cache(tmp_path, caplog):
    cache = tmp_path / "c.h5"
    cached_encode(CountingEncoder("fake==1:aaaa"), TEXTS, cache)
    other = CountingEncoder("fake==2:bbbb")
    with caplog.at_level(logging.WARNING, logger="retrieval.encoder_cache"):
        cached_encode(other, TEXTS, cache)
    assert sorted(other.seen) == sorted(set(TEXTS))  # everything encoded again
    (warning,) = [r for r in caplog.records if r.name == "retrieval.encoder_cache" and r.levelno == logging.WARNING]
    assert all(s in warning.getMessage() for s in ("rebuilding", "fake==1:aaaa", "fake==2:bbbb"))
    with h5py.File(cache, "r") as f:
        assert f.attrs["encoder_fingerprint"] == "fake==2:bbbb"
        assert f["features"].shape == (3, 6)


def test_dimension_change_invalidates_the_cache(tmp_path):
    cache = tmp_path / "c.h5"
    cached_encode(CountingEncoder(dim=6), TEXTS, cache)
    wide = CountingEncoder(dim=9)
    assert cached_encode(wide, TEXTS, cache).shape == (4, 9)
    assert len(wide.seen) == 3


def test_empty_texts_give_zero_rows_and_a_warning(tmp_path, caplog):
    enc = CountingEncoder()
    with caplog.at_level(logging.WARNING, logger="retrieval.encoder_cache"):
        out = cached_encode(enc, ["", "Un tren rojo.", "   ", ""], tmp_path / "c.h5")
    assert np.isfinite(out).all()
    assert not out[[0, 2, 3]].any() and np.array_equal(out[1], _reference("Un tren rojo."))
    assert enc.seen == ["Un tren rojo."]
    assert [r.getMessage() for r in caplog.records if r.name == "retrieval.encoder_cache"] == [
        "3 of 4 texts are empty; their fake vectors are zeros"]
    only_empty = CountingEncoder()
    assert not cached_encode(only_empty, [""], tmp_path / "d.h5").any()
    assert only_empty.calls == 0


def test_interrupted_run_keeps_committed_batches(tmp_path):
    cache = tmp_path / "c.h5"
    many = [f"Frase {i} sobre un barco en el puerto." for i in range(10)]
    cached_encode(CountingEncoder(), many[:2], cache)
    with pytest.raises(KeyboardInterrupt):
        cached_encode(CountingEncoder(fail_on_call=3), many, cache, batch_size=3)  # two batches committed
    assert open_features(cache).ids == [text_key(t) for t in many[:2]]  # the old file is intact
    enc = CountingEncoder()
    out = cached_encode(enc, many, cache)
    assert sorted(enc.seen) == sorted(many[8:])  # 2 cached before + 6 committed by the killed run
    assert np.array_equal(out, np.stack([_reference(t) for t in many]))
    assert not cache.with_name("c.h5.parts").exists()


def test_a_feature_file_is_not_taken_for_a_cache(tmp_path):
    path = tmp_path / "features.h5"
    write_features(path, ["a.jpg"], np.ones((1, 6)), {"model": "resnet152"})
    before = path.read_bytes()
    with pytest.raises(UserError, match="not a sentence-encoder cache"):
        cached_encode(CountingEncoder(), TEXTS, path)
    assert path.read_bytes() == before


def test_a_second_writer_waits_for_the_lock_then_reads_what_the_first_wrote(tmp_path, monkeypatch):
    import fcntl
    import threading

    cache = tmp_path / "c.h5"
    many = [f"Un velero {i} en la bahía." for i in range(12)]
    at_lock = threading.Event()
    real_flock = fcntl.flock

    def flock(fd, op):
        if threading.current_thread() is not threading.main_thread() and op != fcntl.LOCK_UN:
            at_lock.set()  # the second writer is about to ask for the lock
        return real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock)  # the lock of extract.core.files, which the cache uses
    second, result = CountingEncoder(), []
    waiter = threading.Thread(target=lambda: result.append(cached_encode(second, many, cache, batch_size=4)))
    with encoder_cache._locked(cache):  # this test is the first writer, holding the lock
        waiter.start()
        assert at_lock.wait(30)
        waiter.join(0.5)
        assert waiter.is_alive() and second.calls == 0  # blocked on the lock, encoding nothing
        first = CountingEncoder()
        encoder_cache._fill(cache, first, {text_key(t): t for t in many}, {}, 4, False)
        assert sorted(first.seen) == sorted(many)
    waiter.join(30)
    assert not waiter.is_alive()
    assert second.calls == 0  # it read every text the first writer committed
    assert np.array_equal(result[0], np.stack([_reference(t) for t in many]))
