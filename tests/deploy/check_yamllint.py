#!/usr/bin/python3
"""Runs yamllint in strict mode (warnings fail too) on the project's YAML.

Lints, with the repository's .yamllint.yaml:
  1. every *.yaml / *.yml file git knows of (tracked, or untracked and not
     ignored; a directory walk when this is not a git checkout), except Helm
     templates (Go templates, not YAML: helm/*/templates/), node_modules and
     build directories;
  2. the rendered manifests: the Helm chart for every value set and
     `kubectl kustomize` of the base and each overlay, gathered exactly as
     tests/deploy/check_schemas.py does, written to a temporary directory,
     with the same rules except that sequences may be indented or not in one
     file (toYaml output beside hand-written template text).

Exit status: 0 clean; 1 a lint error or warning, or a render failed; 77
yamllint is missing (Debian package `yamllint`, which scripts/install_deps.sh
installs), or kubectl is missing after everything else passed.
Environment: LPDETR_SOURCE_DIR, LPDETR_YAMLLINT, LPDETR_KUBECTL (else on PATH).
"""
import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import check_schemas  # noqa: E402 - the manifest gathering shared with the schema check
from check_util import SKIP

EXCLUDED_DIRS = {"node_modules", ".git"}
# The rendered manifests: the repository's rules, but sequences may be indented
# or not within one file: helm's toYaml (go-yaml) writes `- x` at the key's
# column while the hand-written template text indents its lists.
RENDERED_CONFIG = """extends: %s
rules:
  indentation:
    spaces: consistent
    indent-sequences: whatever
"""


def excluded(rel):
    """True for paths yamllint must not see: templates, node_modules, build dirs."""
    parts = pathlib.PurePosixPath(rel).parts
    if any(p in EXCLUDED_DIRS for p in parts) or (parts and parts[0].startswith("build")):
        return True
    return len(parts) >= 3 and parts[0] == "helm" and parts[2] == "templates"


def yaml_files(source):
    """Relative paths of the repository's YAML files."""
    try:
        result = subprocess.run(["git", "-C", str(source), "ls-files", "-z", "--cached", "--others",
                                 "--exclude-standard", "--", "*.yaml", "*.yml"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=60)
    except OSError:  # no git
        result = None
    if result is not None and result.returncode == 0:
        names = [n for n in result.stdout.decode().split("\0") if n]
    else:
        names = []
        for root, dirs, files in os.walk(source):
            dirs[:] = [d for d in dirs if d not in EXCLUDED_DIRS and not
                       (pathlib.Path(root) == source and d.startswith("build"))]
            names += [str(pathlib.Path(root, f).relative_to(source)) for f in files
                      if f.endswith((".yaml", ".yml"))]
    return sorted({n for n in names if (source / n).is_file() and not excluded(n)})


def find_yamllint():
    """The command that runs yamllint, or None."""
    explicit = shutil.which(os.environ.get("LPDETR_YAMLLINT") or "yamllint")
    if explicit:
        return [explicit]
    probe = subprocess.run([sys.executable, "-c", "import yamllint"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    return [sys.executable, "-m", "yamllint"] if probe.returncode == 0 else None


def run_yamllint(yamllint, config, paths, cwd, failures, what):
    result = subprocess.run(yamllint + ["-s", "-f", "parsable", "-c", str(config)] +
                            [str(p) for p in paths], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, timeout=300)
    if result.returncode != 0:
        failures.add("yamllint -s on %s (exit %d):\n%s"
                     % (what, result.returncode, result.stdout.strip()))
    else:
        print("ok: yamllint -s on %s (%d files)" % (what, len(paths)), flush=True)


def main():
    source_default = os.environ.get("LPDETR_SOURCE_DIR", HERE.parents[1])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source_dir", type=pathlib.Path, default=pathlib.Path(source_default))
    parser.add_argument("--no_rendered", action="store_true",
                        help="lint the repository's files only, not the rendered manifests")
    args = parser.parse_args()
    source = args.source_dir.resolve()
    config = source / ".yamllint.yaml"

    yamllint = find_yamllint()
    if yamllint is None:
        print("SKIP: yamllint is not installed (Debian package yamllint; scripts/install_deps.sh "
              "installs it)")
        return SKIP
    t0 = time.monotonic()
    failures = check_schemas.Failures()
    if not config.is_file():
        failures.add("%s not found" % config)
        return 1

    files = yaml_files(source)
    if not files:
        failures.add("no YAML files found in %s" % source)
    else:
        for name in files:
            print("  %s" % name)
        run_yamllint(yamllint, config, files, source, failures,
                     "%d repository YAML files" % len(files))

    _, kubectl, _, no_kubectl = check_schemas.find_tools()
    if not args.no_rendered:
        outputs = [(label, text) for label, text in check_schemas.gather(source, kubectl, failures)
                   if label.startswith(("helm-", "kustomize-"))]
        with tempfile.TemporaryDirectory(prefix="lpdetr-yamllint-") as tmp:
            paths = []
            for label, text in outputs:
                path = pathlib.Path(tmp, "%s.yaml" % label)
                path.write_text(text)
                paths.append(path.name)
            if paths:
                rendered_config = pathlib.Path(tmp, "yamllint-rendered.yaml")
                rendered_config.write_text(RENDERED_CONFIG % json.dumps(str(config)))
                run_yamllint(yamllint, rendered_config, paths, tmp, failures,
                             "rendered manifests " + ", ".join(paths))

    print("%.1f s" % (time.monotonic() - t0))
    if failures.items:
        print("%d check(s) FAILED" % len(failures.items))
        return 1
    if no_kubectl and not args.no_rendered:
        print("SKIP: %s: the kustomize overlays were not rendered and linted; everything else "
              "passed" % no_kubectl[0])
        return SKIP
    print("all YAML lint-clean")
    return 0


if __name__ == "__main__":
    sys.exit(main())
