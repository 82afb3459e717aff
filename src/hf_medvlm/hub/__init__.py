"""Publishing and serving: Hub export with a model card, push_to_hub, checkpoint conversion and `ask`."""

from .ask import ask
from .cli import add_hub_commands
from .convert import SOURCE_FORMATS, convert_checkpoint
from .export import export_model
from .push import push_to_hub

__all__ = ["SOURCE_FORMATS", "add_hub_commands", "ask", "convert_checkpoint", "export_model", "push_to_hub"]
