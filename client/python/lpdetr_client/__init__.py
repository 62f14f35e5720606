"""Python client of the LP-DETR detection service (lpdetr.v1).

Needs Debian's python3-grpcio and python3-protobuf, and the stubs that the
build generates with the system protoc into ``build/client/python`` (put that
folder on PYTHONPATH, or set LPDETR_PYTHON_STUBS to it).
"""
from .admin import AdminClient
from .client import (
    Client,
    DetectError,
    category_id,
    coco_results,
    detection_dicts,
)

__all__ = ["AdminClient", "Client", "DetectError", "category_id", "coco_results",
           "detection_dicts"]
