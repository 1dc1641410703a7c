"""OpenAI CLIP's byte-level BPE tokenizer: prompts -> (N, 77) token ids, equal to ``open_clip.tokenize``.

A prompt is cleaned, split into pieces, each piece is byte-pair encoded, and the ids are framed and padded:

1. clean: ``ftfy.fix_text``, ``html.unescape`` twice (``&amp;amp;`` -> ``&``), strip, collapse every run of
   whitespace (``str.split``) into one space, lower case;
2. split with OpenAI's pattern ``'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+`` (``regex``,
   case-insensitive): contractions, runs of letters, single digits, runs of other non-space characters;
   the literal strings ``<start_of_text>`` and ``<end_of_text>`` are matched first and give the special ids;
3. each piece's UTF-8 bytes become characters through OpenAI's byte alphabet (the 188 printable bytes stand
   for themselves, the other 68 for U+0100..U+0143), the last one marked as a word end (``</w>``), and the
   adjacent pair of lowest rank in the merges file is merged (every non-overlapping occurrence, left to
   right) until no ranked pair is left;
4. the symbols' ids, in a vocabulary of 49,408: 256 byte characters, the same 256 with ``</w>``, the first
   48,894 merges of the file in order, then the start token (49406) and the end token (49407); each row is
   ``[49406, ids..., 49407]`` zero-padded to ``context_length``; a longer row is cut to ``context_length``
   with its last entry replaced by 49407 (open_clip's truncation).

OpenAI's ``clip.tokenize`` gives the same ids as int32 with three differences: it raises ``RuntimeError``
for a prompt longer than the context unless ``truncate=True`` (then it truncates as here); it recognises
``<|startoftext|>``/``<|endoftext|>`` in a prompt instead of ``<start_of_text>``/``<end_of_text>``; and it
collapses whitespace with ``regex`` ``\\s+``, which differs from ``str.split`` only on U+001C..U+001F, which
ftfy and ``html.unescape`` remove first. The cleaning depends on the installed ftfy version, as the
reference's does.

The merges file ``bpe_simple_vocab_16e6.txt.gz`` (OpenAI CLIP repository, MIT, sha256 ``924691ac...``) is
found in this order: the ``bpe_path`` argument; ``$GENMETRICS_CLIP_BPE``; the copy shipped in an installed
``open-clip-torch`` (used without network when its sha256 matches); the cache
``$GENMETRICS_HOME/weights/``; a download from OpenAI's repository into the cache, sha256-verified
(:func:`genmetrics.stats.networks.weights.resolve_weights`). ``ftfy`` and ``regex`` come with the optional
extra: ``pip install 'mlflow-genmetrics[text]'``.
"""
import gzip
import html
import importlib.util
import os
import zlib
from functools import lru_cache

import torch

from ..defaults import CLIP_CONTEXT_LENGTH
from ..download import cached_file_sha256
from ..environment import CLIP_BPE as _BPE_VARIABLE
from .weights import KNOWN_WEIGHTS, WeightsUnavailableError, resolve_weights

__all__ = ["clip_tokenize", "ClipTokenizer", "resolve_clip_bpe", "installed_open_clip_bpe", "byte_alphabet",
           "CLIP_BPE", "CLIP_BPE_ENV", "START_TOKEN", "END_TOKEN"]

#: KNOWN_WEIGHTS name of the merges file, and the environment variable naming its path.
CLIP_BPE, CLIP_BPE_ENV = "clip-bpe", _BPE_VARIABLE.name
#: Merges CLIP uses: the first 49,152 - 256 - 2 = 48,894 lines after the header (the file has 262,144; the rest
#: are unused); with 2 x 256 byte symbols and the 2 framing tokens the vocabulary has 49,408 ids.
_NUM_MERGES = 49152 - 256 - 2
#: The ids of the framing tokens (the last two of the vocabulary) and their literal strings in a prompt.
START_TOKEN, END_TOKEN = 2 * 256 + _NUM_MERGES, 2 * 256 + _NUM_MERGES + 1
_SPECIAL = {"<start_of_text>": START_TOKEN, "<end_of_text>": END_TOKEN}
_PATTERN = "|".join(_SPECIAL) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
#: Pieces whose ids a tokenizer remembers before it forgets them all (prompts repeat words).
_CACHE_SIZE = 100_000


def _text_libraries():
    """(ftfy, regex), or an ImportError naming the extra that installs them."""
    try:
        import ftfy
        import regex
    except ImportError as error:
        raise ImportError(f"clip_tokenize needs the packages ftfy and regex ({error.name} is not installed): "
                          f"pip install 'mlflow-genmetrics[text]'") from error
    return ftfy, regex


def byte_alphabet():
    """OpenAI's byte -> character table, in vocabulary order: the printable bytes ``!``..``~``, ``¡``..``¬``,
    ``®``..``ÿ`` stand for themselves, the other 68 bytes (controls, space, U+00AD) in increasing order for
    U+0100, U+0101, ... (so that no symbol is whitespace or a control character)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = sorted(set(range(256)) - set(printable))
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + k) for k, b in enumerate(others)}}


def installed_open_clip_bpe():
    """The merges file shipped in the installed ``open_clip`` package when its sha256 is the pinned one, else
    None (the package is not imported)."""
    spec = importlib.util.find_spec("open_clip")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(folder, KNOWN_WEIGHTS[CLIP_BPE].filename)
        if os.path.isfile(path) and cached_file_sha256(path) == KNOWN_WEIGHTS[CLIP_BPE].sha256:
            return path
    return None


def resolve_clip_bpe(bpe_path=None, progress=True):
    """Path of the merges file: `bpe_path` -> ``$GENMETRICS_CLIP_BPE`` -> open-clip-torch's copy -> cache ->
    download (sha256-verified). Raises :class:`~genmetrics.stats.networks.weights.WeightsUnavailableError`
    saying how to provide it when none works."""
    if bpe_path is None and not _BPE_VARIABLE.value():
        installed = installed_open_clip_bpe()
        if installed:
            return installed
    try:
        return resolve_weights(CLIP_BPE, path=bpe_path, env_var=CLIP_BPE_ENV, progress=progress).path
    except WeightsUnavailableError as error:
        raise WeightsUnavailableError(f"{error} Or pip install open-clip-torch, whose copy is used without network.",
                                      short=error.short) from error


def _read_merges(path):
    """The first 48,894 merge pairs of a merges file (after its ``#version`` line); a file that is not one is
    refused with a ValueError naming it."""
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not a gzip-compressed UTF-8 merges file ({error}); pass OpenAI CLIP's "
                         f"{KNOWN_WEIGHTS[CLIP_BPE].filename}") from error
    merges = [tuple(line.split()) for line in lines[1:_NUM_MERGES + 1]]
    if "#version" not in lines[0] or len(merges) < _NUM_MERGES or any(len(m) != 2 for m in merges):
        raise ValueError(f"{path} is not OpenAI CLIP's merges file (a line naming its '#version', then at least "
                         f"{_NUM_MERGES} lines of two symbols); pass OpenAI CLIP's "
                         f"{KNOWN_WEIGHTS[CLIP_BPE].filename}")
    return merges


class ClipTokenizer:
    """OpenAI CLIP's tokenizer over one merges file (see the module docstring); call it with a list of prompts."""

    def __init__(self, path):
        ftfy, regex = _text_libraries()
        self._fix_text = ftfy.fix_text
        self._pattern = regex.compile(_PATTERN, regex.IGNORECASE)
        self._alphabet = byte_alphabet()
        merges = _read_merges(path)
        symbols = list(self._alphabet.values())
        symbols += [s + "</w>" for s in symbols] + ["".join(pair) for pair in merges]
        self._ids = {symbol: i for i, symbol in enumerate(symbols)}  # a repeated symbol keeps its last id
        self._ranks = {pair: rank for rank, pair in enumerate(merges)}
        self._cache = {}

    def clean(self, text):
        """Step 1: ftfy, HTML entities unescaped twice, whitespace runs collapsed to one space, lower case."""
        text = html.unescape(html.unescape(self._fix_text(text))).strip()
        return " ".join(text.split()).lower()

    def merge(self, piece):
        """Step 3: the BPE symbols of one piece (already in the byte alphabet), the last one ending in ``</w>``."""
        word = [*piece[:-1], piece[-1] + "</w>"]
        while len(word) > 1:
            rank, first, second = min((self._ranks.get(pair, _NUM_MERGES), *pair) for pair in zip(word, word[1:]))
            if rank == _NUM_MERGES:
                break
            merged, k = [], 0
            while k < len(word):
                if k + 1 < len(word) and word[k] == first and word[k + 1] == second:
                    merged.append(first + second)
                    k += 2
                else:
                    merged.append(word[k])
                    k += 1
            word = merged
        return word

    def encode(self, text):
        """The token ids of one prompt, without the start and end tokens (steps 1 to 4)."""
        ids = []
        for piece in self._pattern.findall(self.clean(text)):
            if piece not in self._cache:
                if len(self._cache) >= _CACHE_SIZE:
                    self._cache.clear()
                special = _SPECIAL.get(piece)
                encoded = "".join(self._alphabet[b] for b in piece.encode("utf-8"))
                self._cache[piece] = [special] if special else [self._ids[s] for s in self.merge(encoded)]
            ids.extend(self._cache[piece])
        return ids

    def __call__(self, texts, context_length=CLIP_CONTEXT_LENGTH):
        """(N, context_length) int64: ``[START_TOKEN, ids..., END_TOKEN]`` per prompt, zero-padded; a longer
        row is cut to `context_length` and ends with END_TOKEN."""
        texts = _check_texts(texts)
        context_length = _check_context_length(context_length)
        tokens = torch.zeros(len(texts), context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [START_TOKEN, *self.encode(text), END_TOKEN]
            if len(ids) > context_length:
                ids = ids[:context_length - 1] + [END_TOKEN]
            tokens[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        return tokens


def _check_texts(texts):
    """A list of prompts: one string is one prompt; anything but strings is refused with its position."""
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, (bytes, bytearray)) or not hasattr(texts, "__iter__"):
        raise TypeError(f"texts must be a string or a sequence of strings, not {type(texts).__name__}")
    texts = list(texts)
    for k, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{k}] is {type(text).__name__}, not a string; pass the prompts as str")
    return texts


def _check_context_length(context_length):
    if isinstance(context_length, bool) or not isinstance(context_length, int) or context_length < 2:
        raise ValueError(f"context_length must be an integer >= 2 (room for the start and end tokens), got "
                         f"{context_length!r}; CLIP's text towers take {CLIP_CONTEXT_LENGTH}")
    return context_length


@lru_cache(maxsize=4)
def _tokenizer(path, size, mtime_ns):
    """One tokenizer per merges file (and version of it), kept for the process."""
    return ClipTokenizer(path)


def clip_tokenize(texts, context_length=CLIP_CONTEXT_LENGTH, bpe_path=None):
    """OpenAI CLIP's token ids of `texts`, equal element for element to ``open_clip.tokenize(texts, context_length)``.

    Args:
        texts: a prompt (str) or a sequence of prompts.
        context_length: tokens per row, start and end tokens included (77 for every CLIP text tower).
        bpe_path: the merges file ``bpe_simple_vocab_16e6.txt.gz``; None finds it as the module docstring says.

    Returns:
        ``torch.LongTensor`` (N, context_length): per prompt ``[49406, ids..., 49407]``, zero-padded; a prompt
        too long for the context keeps its first ``context_length - 2`` ids and ends with 49407.

    Raises:
        ImportError: ftfy or regex is missing (``pip install 'mlflow-genmetrics[text]'``).
        WeightsUnavailableError: no merges file could be found or downloaded (the message says how to get it).
        TypeError: `texts` is not a string or a sequence of strings.
        ValueError: `context_length` is not an integer >= 2, or `bpe_path` is not OpenAI CLIP's merges file.

    Example:
        >>> clip_tokenize("a photo of a cat")[0, :7].tolist()
        [49406, 320, 1125, 539, 320, 2368, 49407]
    """
    texts = _check_texts(texts)
    context_length = _check_context_length(context_length)
    _text_libraries()
    path = os.path.abspath(resolve_clip_bpe(bpe_path))
    stat = os.stat(path)
    return _tokenizer(path, stat.st_size, stat.st_mtime_ns)(texts, context_length)
