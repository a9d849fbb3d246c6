from .fusion import fuse_batchnorm_relu
from .model import Model, model_from_config
from .network import Network
from .sequential import Sequential
