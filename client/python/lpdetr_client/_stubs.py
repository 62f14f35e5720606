"""Imports the generated lpdetr.v1 / grpc.health.v1 modules.

They live in the build tree (``build/client/python``); LPDETR_PYTHON_STUBS may
name that folder when it is not already on sys.path.
"""
import os
import sys

_extra = os.environ.get("LPDETR_PYTHON_STUBS")
if _extra and _extra not in sys.path:
    sys.path.insert(0, _extra)

try:
    from lpdetr.v1 import detection_pb2, detection_pb2_grpc  # noqa: E402
    from lpdetr.v1 import model_pb2, model_pb2_grpc  # noqa: E402
    from lpdetr.v1 import admin_pb2, admin_pb2_grpc  # noqa: E402
    from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "lpdetr_client: generated stubs not found (%s). Build the "
        "`lpdetr_python_stubs` target and put build/client/python on PYTHONPATH "
        "or in LPDETR_PYTHON_STUBS." % e) from e

__all__ = [
    "detection_pb2", "detection_pb2_grpc", "model_pb2", "model_pb2_grpc",
    "admin_pb2", "admin_pb2_grpc",
    "health_pb2", "health_pb2_grpc",
]
