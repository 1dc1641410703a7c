"""CLIP's tokenizer against open_clip.tokenize (the reference) on hard prompts, and where its merges file comes from:
a path, $GENMETRICS_CLIP_BPE, open-clip-torch's copy offline, a real loopback download verified by sha256."""
import gzip
import os
import re
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genmetrics.stats import clip_tokenize
from genmetrics.stats.download import clear_unreachable
from genmetrics.stats.networks.clip_tokenizer import (CLIP_BPE, CLIP_BPE_ENV, END_TOKEN, START_TOKEN,
                                                      installed_open_clip_bpe, resolve_clip_bpe)
from genmetrics.stats.networks.weights import KNOWN_WEIGHTS, URL_BASE_ENV, WeightsUnavailableError

pytest.importorskip("ftfy")
pytest.importorskip("regex")
open_clip = pytest.importorskip("open_clip")  # the reference; pip install -e '.[test]' installs it

FILENAME = KNOWN_WEIGHTS[CLIP_BPE].filename

PROMPTS = {
    "punctuation": ["Hello, world!", "a cat... on a mat?!", "(red) [blue] {green} -- \"quoted\" #hash @at $5.00",
                    "e-mail: someone@example.com; url: https://x.org/a_b?c=d&e=f"],
    "digits": ["1234567890", "3.14159 and 2,718", "a 4k photo from 1999", "0x1F600 v2.0.1"],
    "apostrophes": ["it's the dog's bone", "don't, won't, can't", "they're we've I'm you'll he'd",
                    "IT'S LOUD'S", "rock 'n' roll", "the 'quoted' word", "O'Brien's"],
    "accents": ["Café crème brûlée", "naïve résumé", "Ångström über straße", "ÉCOLE", "Ωμέγα Ψ", "İstanbul",
                "e\u0301 (combining) vs \u00e9"],
    "emoji": ["a cat 🐱 with a hat 🎩", "👨‍👩‍👧‍👦 family", "🏳️‍🌈 flag", "thumbs up 👍🏽", "☃️ snow"],
    "cjk": ["猫の写真", "一只可爱的小狗", "고양이 사진", "日本語とEnglish mixed", "ｆｕｌｌｗｉｄｔｈ ＡＢＣ"],
    "html": ["Tom &amp; Jerry", "&quot;quoted&quot;", "double &amp;amp; escaped", "&lt;b&gt;bold&lt;/b&gt;",
             "&#39;single&#39; &#x263A; &nbsp;space", "&amp;lt;tag&amp;gt;", "broken &amp entity &foo;"],
    "whitespace": ["  leading and trailing  ", "many     spaces", "new\nlines\n\nhere", "tabs\tand\t\ttabs",
                   "\r\n windows \u00a0 nbsp \u2003 em space \u3000 ideographic", " ", "\n\t \n"],
    "empty": ["", ""],
    "mojibake": ["cafÃ© (mojibake)", "The Mona Lisa doesnâ€™t have eyebrows.", "\x00nul\x07bell\x1ffs"],
    "special": ["<end_of_text> inside", "<START_OF_TEXT>x", "<|endoftext|> is plain text here"],
}


@pytest.mark.parametrize("kind", sorted(PROMPTS))
def test_equal_to_open_clip(kind):
    texts = PROMPTS[kind]
    ours = clip_tokenize(texts)
    assert ours.dtype == open_clip.tokenize(texts).dtype and ours.shape == (len(texts), 77)
    assert ours.tolist() == open_clip.tokenize(texts).tolist()
    assert (ours[:, 0] == START_TOKEN).all()


def test_a_batch_mixing_everything_and_a_single_string():
    texts = [text for kind in sorted(PROMPTS) for text in PROMPTS[kind]] + ["word " * 200]
    assert clip_tokenize(texts).tolist() == open_clip.tokenize(texts).tolist()
    assert clip_tokenize("a photo of a cat").tolist() == open_clip.tokenize("a photo of a cat").tolist()
    assert clip_tokenize("a photo of a cat")[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert clip_tokenize([]).shape == (0, 77)


@pytest.mark.parametrize("context_length", [2, 3, 8, 77, 100])
def test_over_long_prompts_are_cut_with_the_end_token_last(context_length):
    texts = ["a very long prompt about " + "many different things, " * 40, "short", "x" * 500, "1 " * 80]
    ours = clip_tokenize(texts, context_length=context_length)
    assert ours.tolist() == open_clip.tokenize(texts, context_length=context_length).tolist()
    assert ours.shape == (4, context_length)
    if context_length < 77:
        assert (ours[[0, 3], -1] == END_TOKEN).all() and (ours[[0, 3]] != 0).all()
    assert (ours == END_TOKEN).sum() == 4  # exactly one end token per row


@settings(max_examples=150, deadline=None)
@given(st.lists(st.text(max_size=60), min_size=1, max_size=4))
def test_random_unicode_equals_open_clip(texts):
    assert clip_tokenize(texts, context_length=40).tolist() == open_clip.tokenize(texts, context_length=40).tolist()


@pytest.mark.parametrize("texts, error, words", [
    ([1, "a"], TypeError, "texts[0] is int"), (b"bytes", TypeError, "not bytes"), (None, TypeError, "NoneType"),
    (["a", None], TypeError, "texts[1] is NoneType")])
def test_non_string_prompts_are_refused(texts, error, words):
    with pytest.raises(error, match=words.replace("[", r"\[").replace("]", r"\]")):
        clip_tokenize(texts)


@pytest.mark.parametrize("context_length", [0, 1, -5, 7.5, True, "77", None])
def test_bad_context_lengths_are_refused(context_length):
    with pytest.raises(ValueError, match="context_length must be an integer >= 2"):
        clip_tokenize("a", context_length=context_length)


def test_missing_text_packages_name_the_extra():
    code = ("import sys; sys.modules['ftfy'] = None\n"
            "from genmetrics.stats import clip_tokenize\n"
            "try:\n    clip_tokenize('a')\nexcept ImportError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ("clip_tokenize needs the packages ftfy and regex (ftfy is not installed): "
                           "pip install 'mlflow-genmetrics[text]'")


# --- where the merges file comes from ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def bpe_bytes():
    """The merges file's bytes, read before a test hides open_clip (a module fixture is set up first)."""
    path = installed_open_clip_bpe()
    assert path is not None, "open-clip-torch is installed, so its merges file (with the pinned sha256) is found"
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture
def no_installed_copy(genmetrics_home, monkeypatch):
    """An empty cache, no $GENMETRICS_CLIP_BPE, and open_clip invisible (as if it were not installed)."""
    monkeypatch.delenv(CLIP_BPE_ENV, raising=False)
    monkeypatch.setitem(sys.modules, "open_clip", None)
    clear_unreachable()
    yield genmetrics_home
    clear_unreachable()


def test_installed_open_clip_copy_is_used_offline(genmetrics_home, monkeypatch):
    monkeypatch.delenv(CLIP_BPE_ENV, raising=False)
    monkeypatch.setenv("GENMETRICS_OFFLINE", "1")
    path = resolve_clip_bpe()
    assert path == installed_open_clip_bpe() and path.endswith(os.path.join("open_clip", FILENAME))
    assert clip_tokenize("offline").tolist() == open_clip.tokenize("offline").tolist()
    assert not genmetrics_home.exists()  # nothing was downloaded or cached


def test_explicit_path_and_environment_variable(no_installed_copy, bpe_bytes, tmp_path, monkeypatch):
    monkeypatch.setenv("GENMETRICS_OFFLINE", "1")
    mine = tmp_path / "my_merges.txt.gz"
    mine.write_bytes(bpe_bytes)
    assert resolve_clip_bpe(str(mine)) == str(mine)
    assert clip_tokenize("by path", bpe_path=mine).tolist() == open_clip.tokenize("by path").tolist()
    monkeypatch.setenv(CLIP_BPE_ENV, str(mine))
    assert resolve_clip_bpe() == str(mine)
    assert clip_tokenize("by env").tolist() == open_clip.tokenize("by env").tolist()
    with pytest.raises(FileNotFoundError, match="is not a file"):
        resolve_clip_bpe(str(tmp_path / "absent.gz"))


def test_loopback_download_is_verified_cached_and_reused(no_installed_copy, bpe_bytes, http_server, monkeypatch):
    http_server.files["/" + FILENAME] = bpe_bytes
    monkeypatch.setenv(URL_BASE_ENV, http_server.url)
    assert clip_tokenize(["downloaded", "prompt"]).tolist() == open_clip.tokenize(["downloaded", "prompt"]).tolist()
    cached = no_installed_copy / "weights" / FILENAME
    assert cached.read_bytes() == bpe_bytes and resolve_clip_bpe() == str(cached)
    assert clip_tokenize("again").tolist() == open_clip.tokenize("again").tolist()
    assert len(http_server.get_requests("/" + FILENAME)) == 1  # the second and third use the cache


def test_a_download_with_the_wrong_sha256_is_refused(no_installed_copy, bpe_bytes, http_server, monkeypatch):
    text = gzip.decompress(bpe_bytes).decode("utf-8").replace("\ni n\n", "\nn i\n", 1)
    http_server.files["/" + FILENAME] = gzip.compress(text.encode("utf-8"))
    monkeypatch.setenv(URL_BASE_ENV, http_server.url)
    with pytest.raises(WeightsUnavailableError) as error:
        clip_tokenize("tampered")
    message = str(error.value)
    assert f"expected {KNOWN_WEIGHTS[CLIP_BPE].sha256}" in message and "the download was discarded" in message
    assert CLIP_BPE_ENV in message and "pip install open-clip-torch" in message
    assert not (no_installed_copy / "weights" / FILENAME).exists()


def test_offline_without_any_copy_says_how_to_get_it(no_installed_copy, monkeypatch):
    monkeypatch.setenv("GENMETRICS_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError) as error:
        clip_tokenize("nothing")
    message = str(error.value)
    assert message.startswith(f"GENMETRICS_OFFLINE=1 and {FILENAME} is not in the cache")
    assert "https://github.com/openai/CLIP/raw/main/clip/bpe_simple_vocab_16e6.txt.gz" in message
    assert f"set {CLIP_BPE_ENV} to its path" in message and "pip install open-clip-torch" in message


@pytest.mark.parametrize("content", [b"not gzip at all", gzip.compress(b"#version: 0.2\na b\n"),
                                     gzip.compress(b"\xff\xfe not utf-8")])
def test_a_file_that_is_not_the_merges_file_is_refused(tmp_path, content):
    path = tmp_path / f"{len(content)}.gz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"{re.escape(str(path))} is not .*; pass OpenAI CLIP's {FILENAME}"):
        clip_tokenize("x", bpe_path=path)


def test_the_pinned_file_is_openai_s(bpe_bytes):
    """open-clip-torch's copy hashes to the pin (taken from OpenAI's repository) and reads as OpenAI's merges."""
    lines = gzip.decompress(bpe_bytes).decode("utf-8").split("\n")
    assert "#version: 0.2" in lines[0] and lines[1:3] == ["i n", "t h"] and len(bpe_bytes) == 1356917
