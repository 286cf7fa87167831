"""The engine: the one road from a request to an image, shared by every shell (CLI, server, batch).

requests.py  the Request type, the task vocabulary and every value check
plan.py      Request -> Plan (defaults < a replayed PNG < given values)
replay.py    a recorded request from a PNG (kandi's chunk, or A1111 `parameters`)
models.py    model choice, device and dtype, the one loader
run.py       Plan on loaded models -> images with their PNG metadata
engine.py    the model cache (Engine)
console.py   third-party noise off, progress bars for downloads
"""

from .engine import Engine, Entry
from .plan import Plan, plan
from .requests import Input, Limits, MixItem, Request, RequestError, UsageError
from .run import Cancelled, Image, Step, run

__all__ = ["Cancelled", "Engine", "Entry", "Image", "Input", "Limits", "MixItem", "Plan", "Request",
           "RequestError", "Step", "UsageError", "plan", "run"]  # fmt: skip
