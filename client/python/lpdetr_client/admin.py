"""A synchronous client of lpdetr-server's AdminService (lpdetr.v1).

The admin service listens on its own address (the server's --admin_address,
default 127.0.0.1:50052) and every call carries ``authorization: Bearer
<token>``.

    from lpdetr_client import AdminClient
    with AdminClient(token=open("admin.token").read().strip()) as admin:
        job = admin.start_fine_tune(train_annotations="shapes/train.json",
                                    train_images="shapes/train",
                                    output_model="shapes-ft", epochs=2,
                                    extra={"eval-every": "1"})
        for event in admin.watch_job(job.id):
            print(event.kind, event.job.state, event.job.progress.step)
"""
import os
import pathlib

import grpc

from ._stubs import admin_pb2, admin_pb2_grpc
from .client import make_channel

DEFAULT_ADMIN_ADDRESS = "127.0.0.1:50052"

# StartFineTuneRequest fields; every other keyword of start_fine_tune is a
# FineTuneParameters field.
_REQUEST_FIELDS = ("base_model", "base_version", "train_annotations", "train_images",
                   "val_annotations", "val_images", "output_model", "description")
_PARAMETER_FIELDS = tuple(f.name for f in admin_pb2.FineTuneParameters.DESCRIPTOR.fields
                          if f.name != "extra")

TERMINAL_STATES = (admin_pb2.SUCCEEDED, admin_pb2.FAILED, admin_pb2.CANCELLED,
                   admin_pb2.INTERRUPTED)


def load_token(token=None, token_file=None):
    """The admin token: `token`, else the contents of `token_file`, else
    $LPDETR_ADMIN_TOKEN, with surrounding whitespace removed. Raises
    ValueError when there is none."""
    if token is None and token_file:
        token = pathlib.Path(token_file).read_text()
        if not token.strip():
            raise ValueError("token file '%s' is empty" % token_file)
    if token is None:
        token = os.environ.get("LPDETR_ADMIN_TOKEN", "")
    token = token.strip()
    if not token:
        raise ValueError("the admin token is missing: give a token (file) or set "
                         "LPDETR_ADMIN_TOKEN")
    return token


def job_state(state):
    """A JobState value from its name ("running", "RUNNING") or value."""
    if isinstance(state, int):
        return state
    name = str(state).strip().upper()
    try:
        value = admin_pb2.JobState.Value(name)
    except ValueError:
        value = 0
    if value == admin_pb2.JOB_STATE_UNSPECIFIED:
        valid = ", ".join(n.lower() for n in admin_pb2.JobState.keys()[1:])
        raise ValueError("unknown job state '%s' (%s)" % (state, valid))
    return value


def state_name(state):
    return admin_pb2.JobState.Name(state)


class AdminClient:
    """Connection to one lpdetr-server's admin listener.

    address: host:port. token: the admin bearer token (None: read
    $LPDETR_ADMIN_TOKEN). tls_ca / tls_cert / tls_key / tls_server_name: as for
    Client. timeout: seconds per call (watch_job has its own, default none);
    None = no deadline.
    """

    def __init__(self, address=DEFAULT_ADMIN_ADDRESS, token=None, *, tls_ca=None,
                 tls_cert=None, tls_key=None, tls_server_name=None, timeout=30.0):
        self._metadata = (("authorization", "Bearer " + load_token(token)),)
        self._channel = make_channel(address, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key,
                                     tls_server_name=tls_server_name)
        self.timeout = timeout
        self._stub = admin_pb2_grpc.AdminServiceStub(self._channel)

    def close(self):
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _call(self, method, request):
        return method(request, timeout=self.timeout, metadata=self._metadata)

    # ---- jobs ---------------------------------------------------------------

    @staticmethod
    def fine_tune_request(*, extra=None, **fields):
        """A StartFineTuneRequest from keywords: the request's own fields
        (train_annotations, output_model, ...) and the FineTuneParameters
        fields (epochs, lr, scales, ema, ...); `extra`: a dict of further
        lpdetr-train flags (name without dashes -> value). A None value is
        left unset. Raises TypeError for an unknown keyword."""
        request = admin_pb2.StartFineTuneRequest()
        for name, value in fields.items():
            if value is None:
                continue
            if name in _REQUEST_FIELDS:
                setattr(request, name, value)
            elif name in _PARAMETER_FIELDS:
                target = getattr(request.parameters, name)
                if hasattr(target, "extend"):
                    target.extend(value)
                else:
                    setattr(request.parameters, name, value)
            else:
                raise TypeError("start_fine_tune: unknown field '%s'" % name)
        for key, value in (extra or {}).items():
            request.parameters.extra[str(key)] = str(value)
        return request

    def start_fine_tune(self, request=None, *, extra=None, **fields):
        """Queues a fine-tuning job; returns its lpdetr.v1.Job. Takes a
        StartFineTuneRequest or the keywords of fine_tune_request."""
        if request is None:
            request = self.fine_tune_request(extra=extra, **fields)
        elif fields or extra:
            raise TypeError("start_fine_tune: give a request or keywords, not both")
        return self._call(self._stub.StartFineTune, request)

    def get_job(self, job_id):
        return self._call(self._stub.GetJob, admin_pb2.GetJobRequest(id=job_id))

    def list_jobs(self, states=(), limit=0):
        """Jobs, newest first; states: names or JobState values (empty: all)."""
        request = admin_pb2.ListJobsRequest(states=[job_state(s) for s in states], limit=limit)
        return list(self._call(self._stub.ListJobs, request).jobs)

    def cancel_job(self, job_id):
        return self._call(self._stub.CancelJob, admin_pb2.CancelJobRequest(id=job_id))

    def resume_job(self, job_id):
        return self._call(self._stub.ResumeJob, admin_pb2.ResumeJobRequest(id=job_id))

    def watch_job(self, job_id, timeout=None):
        """Yields the job's JobEvents until it finishes (timeout: seconds for
        the whole watch, None = no deadline)."""
        yield from self._stub.WatchJob(admin_pb2.WatchJobRequest(id=job_id), timeout=timeout,
                                       metadata=self._metadata)

    def job_log(self, job_id, tail=0):
        """GetJobLogResponse: the last `tail` lines (0: the server's 100) and
        whether older lines exist."""
        return self._call(self._stub.GetJobLog,
                          admin_pb2.GetJobLogRequest(id=job_id, tail_lines=tail))

    # ---- model registry -----------------------------------------------------

    def list_model_versions(self, name=""):
        """List of lpdetr.v1.ModelVersion (of `name`, or of every model)."""
        return list(self._call(self._stub.ListModelVersions,
                               admin_pb2.ListModelVersionsRequest(name=name)).versions)

    def activate_model(self, name, version):
        return self._call(self._stub.ActivateModel,
                          admin_pb2.ActivateModelRequest(name=name, version=version))

    def rollback_model(self, name):
        return self._call(self._stub.RollbackModel, admin_pb2.RollbackModelRequest(name=name))

    def delete_model_version(self, name, version):
        self._call(self._stub.DeleteModelVersion,
                   admin_pb2.DeleteModelVersionRequest(name=name, version=version))
