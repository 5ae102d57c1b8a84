"""CT/MR patch similarity learned with stacked denoising autoencoders (Cheng, Zhang & Zheng 2016).

:mod:`.sdae` pre-trains the layers, :mod:`.similarity_net` builds, fine-tunes,
saves and loads the network, :mod:`.learned_metric` turns it into the
"learned" :class:`~DeepSimilarityLib.patch_metrics.PatchMetric`, and
:mod:`.synthetic` makes toy pairs for tests and timings.
"""

from .learned_metric import LearnedPatchMetric
from .sdae import (PRESETS, DenoisingAutoencoder, TrainingCancelled, TrainSettings, pretrain_multimodal,
                   pretrain_unimodal, train_dae)
from .similarity_net import (PatchSimilarityNet, check_config, finetune, load_net, save_net,
                             train_similarity_net)
from .synthetic import synthetic_images, synthetic_pairs

__all__ = ["LearnedPatchMetric", "PRESETS", "DenoisingAutoencoder", "TrainingCancelled", "TrainSettings",
           "pretrain_multimodal", "pretrain_unimodal", "train_dae", "PatchSimilarityNet", "check_config",
           "finetune", "load_net", "save_net", "train_similarity_net", "synthetic_images", "synthetic_pairs"]
