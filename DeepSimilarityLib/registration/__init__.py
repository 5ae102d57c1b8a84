"""DeepSim registration (Czolbe, Krause & Feragen 2021), 2D and 3D.

* :mod:`.feature_net`: the surrogate-task feature extractor (segmentation or autoencoding);
* :mod:`.losses`: the DeepSim loss and the baseline losses (MSE, NCC, NCC_sup, NMI, MIND-SSC);
* :mod:`.network`: the registration U-Net, the spatial transformer, the diffusion regulariser;
* :mod:`.train`: training on (moving, fixed) pairs;
* :mod:`.evaluate`: Dice, Jacobian determinant and folding;
* :mod:`.apply`: registering two volumes of any grid (affine first, then the network);
* :mod:`.instance`, :mod:`.compare`: per-pair instance optimisation of a displacement and the
  comparison protocol built on it (:mod:`.experiment3d`: 3D brain pairs, :mod:`.experiment_em`:
  serial-section EM); :mod:`.experiment3d_net`: a trained 3D network on the brain volumes
  (:mod:`.report_net3d`: merging its runs and folds, its reports; :mod:`.paired_comparison`: two losses
  paired over its test pairs and seeds);
* :mod:`.ctmr_loss`: the learned CT/MR patch similarity as a 2D loss (``ctmr-learned``).

Tensors are ``(B, C, H, W)`` in 2D and ``(B, C, D, H, W)`` in 3D, in the array order of
:class:`~DeepSimilarityLib.image_io.Volume` (``(z, y, x)``); displacements are in voxels of
the network grid with channel ``i`` along spatial tensor axis ``i``, as MONAI's ``Warp`` reads them.
"""

from .checkpoint import load_checkpoint, save_checkpoint
from .evaluate import dice_scores, folding_fraction, jacobian_determinant
from .feature_net import FeatureNet, load_feature_net, save_feature_net, train_feature_net
from .losses import LOSSES, DeepSimLoss, make_loss, mind_ssc
from .network import RegistrationNet, load_registration_net, save_registration_net
from .train import train_registration

__all__ = [
    "DeepSimLoss", "FeatureNet", "LOSSES", "RegistrationNet", "dice_scores", "folding_fraction", "jacobian_determinant",
    "load_checkpoint", "load_feature_net", "load_registration_net", "make_loss", "mind_ssc", "save_checkpoint",
    "save_feature_net", "save_registration_net", "train_feature_net", "train_registration",
]
