"""GIT-STORM's MaskGIT dynamics prior (see prior.py for training vs draft-and-revise sampling)."""
from sub_models.maskgit.prior import (MaskGitPrior, mask_count, random_partition_masks,
                                      random_subset_masks)

__all__ = ["MaskGitPrior", "mask_count", "random_partition_masks", "random_subset_masks"]
