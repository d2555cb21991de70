"""Methods: numpy arrays in, frozen result dataclasses out.

The only code path that runs a model: widgets, the CLI and batch processing all call these.
Nothing here imports napari or Qt.
"""

from .adapt import adapt, adapt_steps
from .acnn import MaskResult, correct_mask, correct_mask_steps, plausibility
from .cardiac import CardiacResult, cardiac_measures, segment_heart, segment_heart_steps
from .recon import ReconResult, reconstruct, reconstruct_steps
from .sr import (SRResult, super_resolve, super_resolve_stacks, super_resolve_stacks_steps,
                 super_resolve_steps)
from .lesions import LesionResult, lesion_volumes, segment_lesions, segment_lesions_steps
from .planes import (PlaneResult, StandardPlane, classify_frame, detect_planes, detect_planes_steps,
                     find_standard_plane)

__all__ = ["PlaneResult", "StandardPlane", "classify_frame", "detect_planes", "detect_planes_steps",
           "find_standard_plane", "CardiacResult", "ReconResult", "cardiac_measures", "reconstruct", "reconstruct_steps",
           "segment_heart", "segment_heart_steps", "LesionResult", "lesion_volumes", "segment_lesions",
           "segment_lesions_steps",
           "SRResult", "super_resolve", "super_resolve_stacks", "super_resolve_stacks_steps",
           "super_resolve_steps"]
__all__ += ["MaskResult", "correct_mask", "correct_mask_steps", "plausibility"]
__all__ += ["adapt", "adapt_steps"]
from .refine import Hint, RefineResult, refine_labels  # noqa: E402
__all__ += ["Hint", "RefineResult", "refine_labels"]
