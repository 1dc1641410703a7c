from .moments import GaussianMoments  # noqa: F401
from .frechet import frechet_distance, sqrtm_psd  # noqa: F401
from .kid import kernel_inception_distance, polynomial_mmd_unbiased  # noqa: F401
from .inception_score import inception_score, inception_score_from_logits  # noqa: F401
from .prdc import prdc  # noqa: F401
