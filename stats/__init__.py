"""genmetrics.stats: the FID Inception, feature extraction and the metrics, as pure functions.

Never imports MLflow, the registry or the plugin. See the README for the math and the peers each
function matches.
"""
from .moments import GaussianMoments  # noqa: F401
from .frechet import frechet_distance, sqrtm_psd  # noqa: F401
from .kid import kernel_inception_distance, polynomial_mmd_unbiased  # noqa: F401
from .inception_score import inception_score, inception_score_from_logits  # noqa: F401
from .prdc import prdc  # noqa: F401
from .fid_infinity import fid_infinity  # noqa: F401
from .inception import FEATURE_EXTRACTOR, FIDInception, load_inception  # noqa: F401
from .features import extract_features  # noqa: F401
from .preprocess import MODES, preprocess  # noqa: F401
from .image_input import iter_image_batches  # noqa: F401
from .image_files import list_image_files  # noqa: F401
from .weights import KNOWN_WEIGHTS, resolve_inception_weights  # noqa: F401
from .ssim import MS_SSIM_WEIGHTS, ms_ssim, ssim  # noqa: F401
from .lpips import LPIPS  # noqa: F401
from .diversity import DiversityScore, diversity_pairs, pairwise_diversity  # noqa: F401
from .diversity import lpips_diversity, ms_ssim_diversity  # noqa: F401
