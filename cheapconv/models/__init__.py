"""Model zoo: built-in Wide ResNets and name resolution for torchvision and timm."""

from .inputs import default_input_size
from .preprocessing import Preprocessing, preprocessing_of
from .wrn import WideBasic, WideResNet
from .zoo import canonical_name, create_model, load_weights_file

__all__ = ["Preprocessing", "WideBasic", "WideResNet", "canonical_name", "create_model", "default_input_size",
           "load_weights_file", "preprocessing_of"]
