"""Command line: python3 -m lpdetr_client [--address A] {detect,stream,health,models,admin} ...

  detect IMAGE...      print detections (or COCO results with --json)
  stream FOLDER        the folder's images, in name order, through DetectStream
  health               grpc.health.v1 status (exit 0 when SERVING)
  models               the server's models
  admin SUBCOMMAND     AdminService on the admin listener (default 127.0.0.1:50052,
                       token from --token_file or LPDETR_ADMIN_TOKEN): start, watch,
                       list, get, cancel, resume, log, models, activate, rollback, delete
"""
import argparse
import json
import pathlib
import sys

import grpc

from . import _admin_cli
from .client import Client, coco_results, detection_dicts

_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


def _expand(paths):
    out = []
    for p in map(pathlib.Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.suffix.lower() in _EXTENSIONS)
        else:
            out.append(p)
    return out


def _print_image(name, result):
    print("%s (%dx%d): %d detections" % (name, result.width, result.height,
                                         len(result.detections)))
    for d in detection_dicts(result):
        print("  %-16s id=%-3d score=%.3f box=[%.1f, %.1f, %.1f, %.1f]"
              % (d["label"], d["label_id"], d["score"], *d["box"]))


def _model_mismatch(model, response):
    """"" when `response` comes from `model` (a ModelInfo), else what differs."""
    if not response.model or (response.model, response.model_version) == (model.name,
                                                                         model.version):
        return ""
    return ("results come from model '%s' version '%s', but the category ids were read "
            "from model '%s' version '%s' (the served model changed during the run)"
            % (response.model, response.model_version, model.name, model.version))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python3 -m lpdetr_client", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", help="default 127.0.0.1:50051 (admin: 127.0.0.1:50052)")
    parser.add_argument("--timeout", type=float, help="seconds per call (default 30; 0 = none)")
    parser.add_argument("--tls_ca")
    parser.add_argument("--tls_cert")
    parser.add_argument("--tls_key")
    parser.add_argument("--tls_server_name")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("detect", "stream"):
        p = sub.add_parser(name)
        p.add_argument("paths", nargs="+" if name == "detect" else 1)
        p.add_argument("--score_threshold", type=float)
        p.add_argument("--max_detections", type=int, default=0)
        p.add_argument("--classes", default="", help="comma-separated ids and/or names")
        p.add_argument("--json", action="store_true", help="COCO results JSON on stdout")
    health = sub.add_parser("health")
    health.add_argument("--service", default="")
    sub.add_parser("models")
    _admin_cli.add_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "admin":
        return _admin_cli.run(args)

    client = Client(args.address or "127.0.0.1:50051", tls_ca=args.tls_ca,
                    tls_cert=args.tls_cert, tls_key=args.tls_key,
                    tls_server_name=args.tls_server_name,
                    timeout=30.0 if args.timeout is None else (args.timeout or None))
    try:
        if args.command == "health":
            status = client.health(args.service)
            print(status)
            return 0 if status == "SERVING" else 1
        if args.command == "models":
            for m in client.list_models():
                print("%s%s version=%s variant=%s classes=%d input=%d/%d"
                      % (m.name, " (active)" if m.active else "", m.version, m.variant,
                         m.num_classes, m.min_size, m.max_size))
            return 0
        classes = [int(c) if c.strip().isdigit() else c.strip()
                   for c in args.classes.split(",") if c.strip()]
        options = dict(score_threshold=args.score_threshold,
                       max_detections=args.max_detections, classes=classes)
        files = _expand(args.paths)
        # COCO results carry the model's dataset category ids: learn them first.
        model = client.get_model() if args.json else None
        coco, failed = [], 0
        pairs = []
        if args.command == "detect":
            for index, f in enumerate(files):
                try:
                    response = client.detect([f], **options)
                except grpc.RpcError as e:
                    failed += 1
                    print("%s: error: %s: %s" % (f, e.code().name, e.details()),
                          file=sys.stderr)
                    continue
                pairs.append((index, f, response))
        else:
            frames = ((f.name, f) for f in files)
            for index, response in enumerate(client.detect_stream(frames, **options)):
                if response.HasField("error"):
                    failed += 1
                    print("%s: error: %s" % (response.request_id, response.error.message),
                          file=sys.stderr)
                else:
                    pairs.append((index, response.request_id, response))
        for index, name, response in pairs:
            result = response.results[0]
            if not args.json:
                _print_image(str(name), result)
                continue
            mismatch = _model_mismatch(model, response)
            if mismatch:
                failed += 1
                print("%s: error: %s" % (name, mismatch), file=sys.stderr)
                continue
            stem = pathlib.Path(str(name)).stem
            coco += coco_results(int(stem) if stem.isdigit() else index + 1, result,
                                 model.category_ids)
        if args.json:
            json.dump(coco, sys.stdout, indent=1)
            print()
        return 1 if failed else 0
    except grpc.RpcError as e:
        print("error: %s: %s" % (e.code().name, e.details()), file=sys.stderr)
        return 1
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
