"""Python client for the metalearn few-shot service.  Needs grpcio, protobuf and numpy only
(and Pillow for :func:`load_images`, the ``images`` extra)."""
from metalearn_client.client import Classification, Client, Prediction, Task
from metalearn_client.errors import MetalearnError
from metalearn_client.images import load_images
from metalearn_client.items import Texts

__all__ = ["Classification", "Client", "MetalearnError", "Prediction", "Task", "Texts", "load_images"]
