"""`python3 -m lpdetr_client admin SUBCOMMAND`: AdminService from the command line.

The same subcommands, flags, output and exit status as `lpdetr-client admin`:
0 ok, 1 a call failed (or the watched job did not succeed), 2 bad usage.
"""
import argparse
import json
import math
import sys
import time

import grpc
from google.protobuf import json_format

from . import admin as admin_api
from ._stubs import admin_pb2

_JOB_ID_COMMANDS = ("watch", "get", "cancel", "resume", "log")


def _option(parser, name, **kwargs):
    """--some-name and --some_name for the same option."""
    flags = ["--" + name]
    if "-" in name:
        flags.append("--" + name.replace("-", "_"))
    parser.add_argument(*flags, dest=name.replace("-", "_"), **kwargs)


def _int_list(text):
    try:
        values = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("'%s' is not a comma-separated list of integers" % text)
    if any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError("'%s' has a value <= 0" % text)
    return values


def add_parser(subparsers):
    """Adds `admin` and its subcommands to the top-level subparsers."""
    # Connection options may follow the subcommand; SUPPRESS keeps the
    # top-level values when they are not given here.
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument("--address", help="admin listener (default %s)"
                        % admin_api.DEFAULT_ADMIN_ADDRESS)
    common.add_argument("--timeout", type=float)
    for name in ("tls_ca", "tls_cert", "tls_key", "tls_server_name"):
        common.add_argument("--" + name)
    _option(common, "token-file", help="file holding the admin token "
            "(default: $LPDETR_ADMIN_TOKEN)")
    common.add_argument("--json", action="store_true",
                        help="the response as proto JSON on stdout (watch: one event a line)")

    admin = subparsers.add_parser("admin", help="AdminService: fine-tuning jobs and models")
    sub = admin.add_subparsers(dest="admin_command", required=True)

    start = sub.add_parser("start", parents=[common], help="queue a fine-tuning job")
    for name in ("train-annotations", "train-images", "output-model"):
        _option(start, name, required=True)
    for name in ("val-annotations", "val-images", "base-model", "base-version", "description",
                 "backbone-training", "export-dtype"):
        _option(start, name)
    for name in ("epochs", "batch-size", "lr-warmup-steps", "accumulate-steps", "max-size",
                 "seed", "max-steps"):
        _option(start, name, type=int)
    for name in ("lr", "weight-decay", "lr-gamma", "ema-decay"):
        _option(start, name, type=float)
    for name in ("lr-milestones", "scales"):
        _option(start, name, type=_int_list)
    _option(start, "ema", type=int, choices=(0, 1))
    start.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                       help="a further lpdetr-train flag (repeatable)")
    start.add_argument("--watch", action="store_true", help="then watch the job")

    for name in _JOB_ID_COMMANDS:
        p = sub.add_parser(name, parents=[common])
        p.add_argument("job_id")
        if name == "log":
            p.add_argument("--tail", type=int, default=0)
    listing = sub.add_parser("list", parents=[common])
    listing.add_argument("--state", default="", help="comma-separated states")
    listing.add_argument("--limit", type=int, default=0)
    models = sub.add_parser("models", parents=[common])
    models.add_argument("--name", default="")
    for name, positional in (("activate", ("name", "version")), ("rollback", ("name",)),
                             ("delete", ("name", "version"))):
        p = sub.add_parser(name, parents=[common])
        for a in positional:
            p.add_argument(a)
    return admin


# ---- output ------------------------------------------------------------------

def _to_json(message, pretty=True):
    return json_format.MessageToJson(message, preserving_proto_field_name=True,
                                     including_default_value_fields=True,
                                     indent=1 if pretty else None)


def _time(seconds):
    if seconds <= 0:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(seconds))


def _duration(seconds):
    s = int(round(max(0.0, seconds)))
    if s >= 3600:
        return "%dh%02dm" % (s // 3600, (s % 3600) // 60)
    if s >= 60:
        return "%dm%02ds" % (s // 60, s % 60)
    return "%ds" % s


def format_progress(p):
    parts = ["epoch %d" % p.epoch,
             "step %d/%d" % (p.step, p.total_steps) if p.total_steps > 0 else "step %d" % p.step]
    if p.HasField("losses"):
        parts.append("loss %.4f" % p.losses.total)
    if p.lr > 0:
        parts.append("lr %.3g" % p.lr)
    if p.images_per_second > 0:
        parts.append("%.1f img/s" % p.images_per_second)
    if p.eta_seconds > 0:
        parts.append("ETA " + _duration(p.eta_seconds))
    if p.eval_ap >= 0:
        parts.append("AP %.3f" % p.eval_ap + (" (best %.3f)" % p.best_ap if p.best_ap >= 0
                                              else ""))
    return "  ".join(parts)


def progress_bar(p, width=24):
    if p.total_steps <= 0:
        return ""
    fraction = min(1.0, max(0.0, p.step / p.total_steps))
    filled = int(math.floor(fraction * width + 0.5))
    return "[%s%s] %3d%%" % ("#" * filled, "-" * (width - filled),
                             int(math.floor(fraction * 100 + 0.5)))


def print_job(job):
    r = job.request
    print("job %s: %s" % (job.id, admin_api.state_name(job.state)))
    base = r.base_model or "(server default model)"
    if r.base_version:
        base += " version " + r.base_version
    print("  output model: %s  base: %s" % (r.output_model, base))
    print("  train: %s  images: %s" % (r.train_annotations, r.train_images))
    if r.val_annotations:
        print("  val: %s  images: %s" % (r.val_annotations, r.val_images))
    if r.description:
        print("  description: %s" % r.description)
    if job.HasField("progress"):
        print("  progress: %s" % format_progress(job.progress))
    if job.result_version:
        print("  result: %s version %s" % (r.output_model, job.result_version))
    if job.failure_reason:
        print("  failure: %s" % job.failure_reason)
    print("  created %s  started %s  finished %s  attempts %d"
          % (_time(job.created_at), _time(job.started_at), _time(job.finished_at),
             job.attempts))


def print_job_line(job):
    detail = ""
    if job.result_version:
        detail = "version " + job.result_version
    elif job.failure_reason:
        detail = job.failure_reason
    elif job.HasField("progress"):
        detail = format_progress(job.progress)
    print("%-20s %-11s %-20s created %s%s" % (job.id, admin_api.state_name(job.state),
                                             job.request.output_model,
                                             _time(job.created_at),
                                             "  " + detail if detail else ""))


def print_model_version(v):
    classes = ", ".join(v.classes[:12]) + (", ..." if len(v.classes) > 12 else "")
    print("%s %s %s%s  job %s  AP %s  created %s  classes (%d): %s"
          % ("*" if v.active else " ", v.name, v.version, " (active)" if v.active else "",
             v.job_id or "-", "%.3f" % v.eval_ap if v.eval_ap >= 0 else "-",
             _time(v.created_at), len(v.classes), classes))


class WatchPrinter:
    """JobEvents on stdout: one progress line redrawn with '\\r' on a terminal
    (events with a message printed above it), else one line per event; JSON
    Lines with as_json."""

    def __init__(self, terminal, as_json):
        self.terminal = terminal
        self.as_json = as_json
        self._line_open = False

    def print(self, event):
        out = sys.stdout
        if self.as_json:
            out.write(_to_json(event, pretty=False).replace("\n", "") + "\n")
            out.flush()
            return
        job = event.job
        state = admin_api.state_name(job.state)
        progress = format_progress(job.progress) if job.HasField("progress") else ""
        if not self.terminal:
            out.write(" ".join([event.kind, state]) + ("  " + progress if progress else "")
                      + ("  " + event.message if event.message else "") + "\n")
            out.flush()
            return
        if event.message or event.kind == "state":
            out.write("\r\x1b[K%s %s%s\n" % (event.kind, state,
                                            ": " + event.message if event.message else ""))
        bar = progress_bar(job.progress) if job.HasField("progress") else ""
        out.write("\r\x1b[Kjob %s %s %s%s" % (job.id, state, bar + "  " if bar else "",
                                              progress))
        out.flush()
        self._line_open = True

    def finish(self):
        if self._line_open:
            sys.stdout.write("\n")
        self._line_open = False
        sys.stdout.flush()


# ---- subcommands -------------------------------------------------------------

def _watch(client, job_id, timeout, as_json):
    printer = WatchPrinter(sys.stdout.isatty(), as_json)
    last = None
    try:
        for event in client.watch_job(job_id, timeout=timeout):
            printer.print(event)
            last = event.job
    finally:
        printer.finish()
    if last is None:
        print("admin watch: the stream of job %s ended without an event" % job_id,
              file=sys.stderr)
        return 1
    state = admin_api.state_name(last.state)
    if last.state == admin_pb2.SUCCEEDED:
        print("job %s SUCCEEDED: %s version %s" % (last.id, last.request.output_model,
                                                   last.result_version),
              file=sys.stderr if as_json else sys.stdout)
        return 0
    if last.state in admin_api.TERMINAL_STATES:
        print("job %s %s: %s" % (last.id, state, last.failure_reason or "(no reason given)"),
              file=sys.stderr)
        return 1
    print("admin watch: the stream ended while job %s is %s" % (last.id, state),
          file=sys.stderr)
    return 1


def _start_fields(args):
    fields = {name: getattr(args, name) for name in (
        "train_annotations", "train_images", "val_annotations", "val_images", "output_model",
        "base_model", "base_version", "description", "epochs", "batch_size", "lr",
        "weight_decay", "lr_milestones", "lr_gamma", "lr_warmup_steps", "accumulate_steps",
        "ema_decay", "scales", "max_size", "backbone_training", "export_dtype", "seed",
        "max_steps")}
    if args.ema is not None:
        fields["ema"] = bool(args.ema)
    if bool(args.val_annotations) != bool(args.val_images):
        raise ValueError("give both --val-annotations and --val-images, or neither")
    if args.base_version and not args.base_model:
        raise ValueError("--base-version needs --base-model")
    for name, choices in (("backbone_training", ("finetune", "full")),
                          ("export_dtype", ("fp32", "fp16", "bf16"))):
        if fields[name] and fields[name] not in choices:
            raise ValueError("--%s: '%s' is not one of %s" % (name, fields[name],
                                                              ", ".join(choices)))
    extra = {}
    for p in args.param:
        key, sep, value = p.partition("=")
        key = key.lstrip("-")
        if not sep or not key:
            raise ValueError("--param '%s': expected KEY=VALUE" % p)
        if key in extra:
            raise ValueError("--param: '%s' given twice" % key)
        extra[key] = value
    return fields, extra


def _emit(message, as_json, text):
    if as_json:
        print(_to_json(message))
    else:
        text(message)


def run(args):
    """Runs the parsed `admin` command; returns the exit status."""
    command = args.admin_command
    as_json = getattr(args, "json", False)
    try:
        if command == "start":
            fields, extra = _start_fields(args)
        states = [admin_api.job_state(s) for s in args.state.split(",") if s.strip()] \
            if command == "list" else []
        token = admin_api.load_token(token_file=getattr(args, "token_file", None))
    except (ValueError, OSError) as e:
        print("lpdetr_client admin %s: %s" % (command, e), file=sys.stderr)
        return 2
    timeout = 30.0 if args.timeout is None else (args.timeout or None)
    client = admin_api.AdminClient(args.address or admin_api.DEFAULT_ADMIN_ADDRESS, token,
                                   tls_ca=args.tls_ca, tls_cert=args.tls_cert,
                                   tls_key=args.tls_key, tls_server_name=args.tls_server_name,
                                   timeout=timeout)
    # The watch has no deadline unless --timeout is given.
    watch_timeout = args.timeout or None
    try:
        if command == "start":
            job = client.start_fine_tune(extra=extra, **fields)
            if args.watch and as_json:
                print("job %s: %s" % (job.id, admin_api.state_name(job.state)), file=sys.stderr)
            else:
                _emit(job, as_json, print_job)
            sys.stdout.flush()
            return _watch(client, job.id, watch_timeout, as_json) if args.watch else 0
        if command == "watch":
            return _watch(client, args.job_id, watch_timeout, as_json)
        if command in ("get", "cancel", "resume"):
            method = {"get": client.get_job, "cancel": client.cancel_job,
                      "resume": client.resume_job}[command]
            _emit(method(args.job_id), as_json, print_job)
            return 0
        if command == "list":
            jobs = client.list_jobs(states, limit=args.limit)
            if as_json:
                print(_to_json(admin_pb2.ListJobsResponse(jobs=jobs)))
            else:
                for job in jobs:
                    print_job_line(job)
                if not jobs:
                    print("no jobs")
            return 0
        if command == "log":
            response = client.job_log(args.job_id, tail=args.tail)
            if as_json:
                print(_to_json(response))
            else:
                if response.truncated:
                    print("(older lines not shown)", file=sys.stderr)
                for line in response.lines:
                    print(line)
            return 0
        if command == "models":
            versions = client.list_model_versions(args.name)
            if as_json:
                print(_to_json(admin_pb2.ListModelVersionsResponse(versions=versions)))
            else:
                for v in versions:
                    print_model_version(v)
                if not versions:
                    print("no registered model versions")
            return 0
        if command in ("activate", "rollback"):
            version = (client.activate_model(args.name, args.version) if command == "activate"
                       else client.rollback_model(args.name))
            if as_json:
                print(_to_json(version))
            else:
                print("%s version %s is active" % (version.name, version.version))
                print_model_version(version)
            return 0
        client.delete_model_version(args.name, args.version)
        if as_json:
            print(json.dumps({"name": args.name, "version": args.version}, indent=1))
        else:
            print("deleted %s version %s" % (args.name, args.version))
        return 0
    except grpc.RpcError as e:
        print("admin %s failed: %s: %s" % (command, e.code().name, e.details()),
              file=sys.stderr)
        return 1
    finally:
        client.close()
