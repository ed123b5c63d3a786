"""Model zoo: built-in Wide ResNets, ERFNet and name resolution for torchvision and timm."""

from .erfnet import ERFNet
from .inputs import default_input_size
from .preprocessing import Preprocessing, preprocessing_of
from .weights import WeightsRecord, head_keys, load_weights_file, pair_by_position
from .wrn import WideBasic, WideResNet
from .zoo import canonical_name, create_model

__all__ = ["ERFNet", "Preprocessing", "WeightsRecord", "WideBasic", "WideResNet", "canonical_name", "create_model",
           "default_input_size", "head_keys", "load_weights_file", "pair_by_position", "preprocessing_of"]
