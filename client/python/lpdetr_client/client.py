"""A small, synchronous client of lpdetr-server.

    from lpdetr_client import Client
    with Client("127.0.0.1:50051") as client:
        response = client.detect(["street.jpg"], score_threshold=0.5)
        for det in response.results[0].detections:
            print(det.label, det.score, det.box.x_min, det.box.y_min)
"""
import os
import pathlib

import grpc

from ._stubs import (detection_pb2, detection_pb2_grpc, health_pb2,
                     health_pb2_grpc, model_pb2, model_pb2_grpc)


class DetectError(RuntimeError):
    """A DetectStream frame that failed: ``code`` (grpc.StatusCode) and message."""

    def __init__(self, request_id, code, message):
        super().__init__("%s: %s: %s" % (request_id, code.name, message))
        self.request_id = request_id
        self.code = code
        self.message = message


_CODES = {c.value[0]: c for c in grpc.StatusCode}


def _image(image, image_id=""):
    """An lpdetr.v1.Image from bytes, a path or an Image message."""
    if isinstance(image, detection_pb2.Image):
        return image
    if isinstance(image, (bytes, bytearray, memoryview)):
        return detection_pb2.Image(data=bytes(image), id=image_id)
    if isinstance(image, (str, os.PathLike)):
        path = pathlib.Path(image)
        return detection_pb2.Image(data=path.read_bytes(), id=image_id or str(path))
    raise TypeError("image must be bytes, a path or an lpdetr.v1.Image, not %s"
                    % type(image).__name__)


def _options(score_threshold=None, max_detections=0, classes=()):
    """lpdetr.v1.DetectOptions; classes mixes ids (int) and names (str)."""
    options = detection_pb2.DetectOptions(max_detections=max_detections)
    if score_threshold is not None:
        options.score_threshold = score_threshold
    for c in classes:
        if isinstance(c, int):
            options.class_ids.append(c)
        else:
            options.class_names.append(str(c))
    return options


def make_channel(address, *, tls_ca=None, tls_cert=None, tls_key=None, tls_server_name=None):
    """A gRPC channel to address: TLS when tls_ca / tls_cert / tls_key is set
    (mutual TLS needs both tls_cert and tls_key), plaintext otherwise."""
    options = [("grpc.max_receive_message_length", 64 << 20),
               ("grpc.max_send_message_length", -1)]
    if not (tls_ca or tls_cert or tls_key):
        return grpc.insecure_channel(address, options=options)
    if bool(tls_cert) != bool(tls_key):
        raise ValueError("mutual TLS needs both tls_cert and tls_key")
    read = lambda p: pathlib.Path(p).read_bytes() if p else None  # noqa: E731
    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(tls_ca), private_key=read(tls_key),
        certificate_chain=read(tls_cert))
    if tls_server_name:
        options.append(("grpc.ssl_target_name_override", tls_server_name))
    return grpc.secure_channel(address, credentials, options=options)


class Client:
    """Connection to one lpdetr-server.

    address: host:port. tls_ca: PEM CA file (turns TLS on); tls_cert/tls_key:
    client certificate for mutual TLS; tls_server_name: the name expected in
    the server certificate when it is not the address host. timeout: seconds
    per call (per whole stream for detect_stream); None = no deadline.
    """

    def __init__(self, address="127.0.0.1:50051", *, tls_ca=None, tls_cert=None,
                 tls_key=None, tls_server_name=None, timeout=30.0):
        self._channel = make_channel(address, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key,
                                     tls_server_name=tls_server_name)
        self.timeout = timeout
        self._detection = detection_pb2_grpc.DetectionServiceStub(self._channel)
        self._models = model_pb2_grpc.ModelServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def close(self):
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def detect(self, images, *, score_threshold=None, max_detections=0, classes=(),
               model="", request_id=""):
        """Detect on one or more images (bytes, paths or Image messages).

        Returns lpdetr.v1.DetectResponse (results in image order); raises
        grpc.RpcError on failure (e.code(), e.details()).
        """
        if isinstance(images, (bytes, bytearray, str, os.PathLike, detection_pb2.Image)):
            images = [images]
        request = detection_pb2.DetectRequest(
            images=[_image(im) for im in images],
            options=_options(score_threshold, max_detections, classes),
            request_id=request_id, model=model)
        return self._detection.Detect(request, timeout=self.timeout)

    def detect_stream(self, frames, *, score_threshold=None, max_detections=0, classes=(),
                      model="", stop_on_error=False, raise_on_error=False):
        """Frames through DetectStream; yields one DetectResponse per frame, in order.

        frames: iterable of bytes, paths, or (request_id, bytes-or-path) pairs;
        without ids, frames are numbered "0", "1", ... A failed frame yields a
        response with ``error`` set (or raises DetectError when raise_on_error).
        The iterable is consumed lazily, as the server makes room (back-pressure).
        """
        options = _options(score_threshold, max_detections, classes)

        def requests():
            for index, frame in enumerate(frames):
                request_id = str(index)
                if isinstance(frame, tuple):
                    request_id, frame = frame
                yield detection_pb2.DetectRequest(
                    images=[_image(frame, image_id=request_id)], options=options,
                    request_id=request_id, model=model, stop_on_error=stop_on_error)

        for response in self._detection.DetectStream(requests(), timeout=self.timeout):
            if raise_on_error and response.HasField("error"):
                raise DetectError(response.request_id,
                                  _CODES.get(response.error.code, grpc.StatusCode.UNKNOWN),
                                  response.error.message)
            yield response

    def health(self, service=""):
        """Serving status name: "SERVING", "NOT_SERVING", ... (grpc.health.v1)."""
        response = self._health.Check(health_pb2.HealthCheckRequest(service=service),
                                      timeout=self.timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def list_models(self):
        """List of lpdetr.v1.ModelInfo."""
        return list(self._models.ListModels(model_pb2.ListModelsRequest(),
                                            timeout=self.timeout).models)

    def get_model(self, name=""):
        """lpdetr.v1.ModelInfo of `name` ("" = the active model)."""
        return self._models.GetModel(model_pb2.GetModelRequest(name=name),
                                     timeout=self.timeout)

    def category_ids(self, name=""):
        """The dataset category id of each label id of model `name` ("" = the
        active model), as a list parallel to its classes; [] when the model
        carries no map (its label ids are the category ids)."""
        return list(self.get_model(name).category_ids)


def detection_dicts(image_detections):
    """Plain dicts of one ImageDetections: label, label_id, score, box [x1,y1,x2,y2]."""
    return [{"label": d.label, "label_id": d.label_id, "score": d.score,
             "box": [d.box.x_min, d.box.y_min, d.box.x_max, d.box.y_max]}
            for d in image_detections.detections]


def category_id(label_id, category_ids=()):
    """The dataset category id of a label id: category_ids[label_id], or the
    label id itself when category_ids is empty (a model without a map)."""
    if not category_ids:
        return label_id
    if not 0 <= label_id < len(category_ids):
        raise IndexError("label id %d is outside the category map (%d ids)"
                         % (label_id, len(category_ids)))
    return int(category_ids[label_id])


def coco_results(image_id, image_detections, category_ids=()):
    """COCO results entries (image_id, category_id, bbox [x,y,w,h], score).

    category_ids: the model's ModelInfo.category_ids (Client.category_ids());
    category_id is then the dataset id of each detection's label, else the
    label id. Detection.label_id itself is always the contiguous index.
    """
    return [{"image_id": image_id, "category_id": category_id(d.label_id, category_ids),
             "bbox": [d.box.x_min, d.box.y_min, d.box.x_max - d.box.x_min,
                      d.box.y_max - d.box.y_min],
             "score": d.score}
            for d in image_detections.detections]
