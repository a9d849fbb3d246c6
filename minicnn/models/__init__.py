from .config import model_from_config
from .model import Model
from .network import Network
from .sequential import Sequential
