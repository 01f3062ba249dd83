"""Models: the built-in demo model and test zoo, model specs, and saving/loading.

``load_model("torchvision:resnet18")`` builds any model a spec names (see
:mod:`torchslim.models._sources`); ``save``/``load`` store a model as safetensors plus JSON.
"""

from torchslim.models._demo import DemoResNet
from torchslim.models._meta import build_on_meta, meta_init
from torchslim.models._pretrained import list_pretrained, pretrained_weights_path
from torchslim.models._saved import is_saved_model, load, save
from torchslim.models._sources import (
    list_model_sources,
    load_model,
    provenance,
    register_model_source,
)
from torchslim.models._zoo import (
    ZOO_TAGS,
    ZooModel,
    get_zoo_model,
    list_zoo,
    register_zoo_model,
)

__all__ = [
    "ZOO_TAGS",
    "DemoResNet",
    "ZooModel",
    "build_on_meta",
    "get_zoo_model",
    "is_saved_model",
    "list_model_sources",
    "list_pretrained",
    "list_zoo",
    "load",
    "load_model",
    "meta_init",
    "pretrained_weights_path",
    "provenance",
    "register_model_source",
    "register_zoo_model",
    "save",
]
