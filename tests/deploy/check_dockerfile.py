#!/usr/bin/python3
"""Lints the Dockerfile and .dockerignore offline (no Docker engine, no network).

The Dockerfile is parsed the way the builder reads it: parser directives
(`# escape=`), comment lines (also inside continued instructions), line
continuations, JSON and shell forms, flags (`--from=`, `--interval=`), global
ARGs before the first FROM and their substitution into FROM lines. Checks:

- every FROM names an earlier stage or an image with a tag (not `latest`) or
  a digest; every stage is named, names are unique; each `COPY --from`
  names an earlier stage; no ADD of a URL;
- every RUN with `apt-get install` uses --no-install-recommends and removes
  /var/lib/apt/lists in the same RUN (also a RUN of scripts/install_deps.sh,
  whose own apt-get install line is checked too);
- the images (stages with an ENTRYPOINT, and the last stage for each VARIANT
  value cpu and gpu): a numeric non-root USER before the ENTRYPOINT, an
  ENTRYPOINT of lpdetr-server, a HEALTHCHECK running `lpdetr-client health`
  against the gRPC port, EXPOSE of exactly the server's gRPC, metrics and
  admin ports, which must be the ports of the server's default flags
  (`lpdetr-server --helpfull` when $LPDETR_BIN_DIR/lpdetr-server exists,
  else server/server_main.cc) and of any address flags in CMD;
- VARIANT=gpu builds on an NVIDIA CUDA devel image with a pinned x.y.z tag,
  fetches the LibTorch zip from ARG LIBTORCH_URL (a pinned cxx11-ABI CUDA
  build) and checks it with `sha256sum -c` before unpacking; LIBTORCH_SHA256
  is 64 hex digits or empty with the build stopped when it is; VARIANT=cpu
  builds on Debian with scripts/install_deps.sh (Debian's libtorch-dev);
- the build stages configure with LPDETR_BUILD_TESTS=OFF, build the four
  binaries as targets, install to /opt/lpdetr; the four are executables in
  the CMakeLists and installed by the top-level install() rule;
- .dockerignore (moby pattern semantics: `*`, `?`, `**`, `!` exceptions,
  parent directories) excludes build trees, .git, node_modules and local
  models, and keeps every file git tracks (so models/lp-detr-shapes).

A self-test runs first: small in-memory Dockerfiles and .dockerignore files
that break one rule each must fail with the matching message (a root user,
an unpinned base, a missing checksum...), and the parser is checked on
continuations and comments. `--self-test` runs only that.

Exit status: 0 passed, 1 a check (or the self-test) failed. Environment:
LPDETR_SOURCE_DIR (default: the repository holding this script),
LPDETR_BIN_DIR (default: build/bin).
"""
import argparse
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

BINARIES = ("lpdetr-server", "lpdetr-client", "lpdetr-model", "lpdetr-train")
# The server's listeners: flag -> what it serves.
ADDRESS_FLAGS = ("grpc_address", "metrics_address", "admin_address")
VARIANTS = ("gpu", "cpu")
INSTALL_PREFIX = "/opt/lpdetr"


# ---------------------------------------------------------------------------
# Dockerfile parser
# ---------------------------------------------------------------------------
class Instruction:
    """One instruction: keyword, raw argument text, its first line number."""

    def __init__(self, cmd, args, line):
        self.cmd = cmd.upper()
        self.args = args.strip()
        self.line = line

    def json_form(self, text=None):
        """The argument as a JSON array (exec form), or None for shell form."""
        text = self.args if text is None else text
        if not text.startswith("["):
            return None
        try:
            value = json.loads(text)
        except ValueError:
            return None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        return None

    def flags_and_rest(self):
        """Leading --name[=value] flags (dict) and the text after them."""
        flags = {}
        rest = self.args
        while True:
            m = re.match(r"--([\w-]+)(?:=(\S*))?\s*", rest)
            if not m:
                break
            flags[m.group(1)] = m.group(2) if m.group(2) is not None else ""
            rest = rest[m.end():]
        return flags, rest.strip()

    def words(self):
        """The argument as words: the JSON array, else shell-split."""
        _, rest = self.flags_and_rest()
        j = self.json_form(rest)
        if j is not None:
            return j
        try:
            return shlex.split(rest, comments=False)
        except ValueError:
            return rest.split()

    def __repr__(self):
        return f"{self.cmd}@{self.line}"


def parse_dockerfile(text):
    """Instructions of a Dockerfile text, as the builder splits them."""
    lines = text.split("\n")
    escape = "\\"
    # Parser directives: `# name=value` lines at the very top.
    for line in lines:
        m = re.match(r"#\s*([A-Za-z]+)\s*=\s*(\S+)\s*$", line)
        if not m:
            break
        if m.group(1).lower() == "escape":
            escape = m.group(2)
    out = []
    current = None
    start = 0
    continued = re.compile(re.escape(escape) + r"[ \t]*$")
    for number, raw in enumerate(lines, 1):
        line = raw.rstrip("\r")
        stripped = line.strip()
        if current is None:
            if not stripped or stripped.startswith("#"):
                continue
            current, start = "", number
        elif not stripped or stripped.startswith("#"):
            # Comment lines and empty lines inside a continued instruction
            # are dropped; the instruction goes on.
            continue
        if continued.search(line):
            current += continued.sub("", line)
            continue
        current += line
        m = re.match(r"\s*([A-Za-z]+)(?:\s+(.*))?$", current, re.S)
        if not m:
            raise ValueError(f"line {start}: cannot parse {current.strip()!r}")
        out.append(Instruction(m.group(1), m.group(2) or "", start))
        current = None
    if current is not None:
        raise ValueError(f"line {start}: the file ends inside a continued instruction")
    return out


def substitute(text, values):
    """Replaces $NAME, ${NAME}, ${NAME:-default} and ${NAME:+alt} from `values`."""

    def braced(m):
        name, op, word = m.group(1), m.group(2), m.group(3)
        value = values.get(name, "")
        if op == ":-":
            return value if value else word
        if op == ":+":
            return word if value else ""
        return value

    text = re.sub(r"\$\{(\w+)(?:(:-|:\+)([^}]*))?\}", braced, text)
    return re.sub(r"\$(\w+)", lambda m: values.get(m.group(1), ""), text)


class Stage:
    def __init__(self, index, base, name, line):
        self.index = index
        self.base_raw = base
        self.base = base
        self.name = name
        self.line = line
        self.instructions = []
        self.parent = None  # the earlier Stage this one is FROM, if any


class Dockerfile:
    """Stages of a parsed Dockerfile with the global ARGs resolved."""

    def __init__(self, text, overrides=None):
        self.instructions = parse_dockerfile(text)
        self.global_args = {}
        self.stages = []
        self.errors = []
        values = {}
        for ins in self.instructions:
            if ins.cmd == "FROM":
                break
            if ins.cmd != "ARG":
                self.errors.append(f"line {ins.line}: only ARG may come before the first FROM, "
                                   f"found {ins.cmd}")
                continue
            for name, default in _arg_pairs(ins.args):
                self.global_args[name] = default
                values[name] = default
        values.update(overrides or {})
        self.values = values
        current = None
        for ins in self.instructions:
            if ins.cmd == "FROM":
                flags, rest = ins.flags_and_rest()
                m = re.match(r"(\S+)(?:\s+[Aa][Ss]\s+(\S+))?\s*$", rest)
                if not m:
                    self.errors.append(f"line {ins.line}: cannot parse FROM {ins.args!r}")
                    continue
                current = Stage(len(self.stages), m.group(1), m.group(2), ins.line)
                current.base = substitute(m.group(1), values)
                for earlier in self.stages:
                    if earlier.name and earlier.name.lower() == current.base.lower():
                        current.parent = earlier
                self.stages.append(current)
            elif current is not None:
                current.instructions.append(ins)

    def stage(self, name):
        for s in self.stages:
            if s.name == name or str(s.index) == name:
                return s
        return None

    def chain(self, stage):
        """The stage and the earlier stages it is built FROM, base first."""
        out = []
        while stage is not None:
            out.append(stage)
            stage = stage.parent
        return list(reversed(out))

    def root_image(self, stage):
        return self.chain(stage)[0].base

    def effective(self, stage):
        """Instructions that shape the stage's image, base stage first."""
        return [ins for s in self.chain(stage) for ins in s.instructions]


def _arg_pairs(text):
    for word in shlex.split(text):
        name, _, default = word.partition("=")
        yield name, default.strip('"')


def stage_args(stage, dockerfile):
    """ARG defaults visible in a stage (global ones it redeclares, its own)."""
    values = {}
    for ins in stage.instructions:
        if ins.cmd == "ARG":
            for name, default in _arg_pairs(ins.args):
                values[name] = default if default else dockerfile.values.get(name, "")
    return values


# ---------------------------------------------------------------------------
# Facts about the project the Dockerfile must agree with
# ---------------------------------------------------------------------------
def parse_helpfull(text):
    """{flag: default} of the server's own flags from `lpdetr-server --helpfull`."""
    flags = {}
    section = None
    entry = []

    def flush():
        if section and entry:
            joined = " ".join(s.strip() for s in entry)
            m = re.match(r"--(\w+) \(", joined)
            d = re.search(r".*default: (.*);$", joined)  # the last one: descriptions say "default" too
            if m and d:
                value = d.group(1)
                if value.startswith('"') and value.endswith('"'):
                    value = value[1:-1]
                flags[m.group(1)] = value

    for line in text.splitlines():
        header = re.match(r"\s*Flags from (.*):$", line)
        if header:
            flush()
            entry = []
            section = header.group(1).endswith("server/server_main.cc")
            continue
        if re.match(r"\s{4}--\w+ \(", line):
            flush()
            entry = [line]
        elif entry and line.strip():
            entry.append(line)
        else:
            flush()
            entry = []
    flush()
    return flags


def parse_flag_sources(text):
    """{flag: default} from the ABSL_FLAG definitions of server_main.cc."""
    flags = {}
    for m in re.finditer(r"ABSL_FLAG\(\s*([\w:<>]+)\s*,\s*(\w+)\s*,\s*(\"(?:[^\"\\]|\\.)*\"|[^,]+)",
                         text):
        value = m.group(3).strip()
        if value.startswith('"'):
            value = value[1:-1]
        flags[m.group(2)] = value
    return flags


def server_flags(source_dir, bin_dir):
    """The server's flags and defaults, and where they came from."""
    server = pathlib.Path(bin_dir) / "lpdetr-server"
    if server.is_file() and os.access(server, os.X_OK):
        r = subprocess.run([str(server), "--helpfull"], capture_output=True, text=True,
                           timeout=60)
        flags = parse_helpfull(r.stdout + r.stderr)
        if flags:
            return flags, f"{server} --helpfull"
    main_cc = pathlib.Path(source_dir) / "server" / "server_main.cc"
    return parse_flag_sources(main_cc.read_text()), str(main_cc)


def port_of(address):
    m = re.search(r":(\d+)$", address or "")
    return int(m.group(1)) if m else None


def cmake_facts(source_dir):
    """(executables defined by add_executable, tools in the install() loop)."""
    executables = set()
    installed = set()
    for path in pathlib.Path(source_dir).rglob("CMakeLists.txt"):
        rel = path.relative_to(source_dir).parts
        if rel and (rel[0].startswith("build") or rel[0] in (".git", "node_modules")):
            continue
        text = path.read_text()
        executables.update(re.findall(r"add_executable\(\s*([\w-]+)", text))
    top = (pathlib.Path(source_dir) / "CMakeLists.txt").read_text()
    m = re.search(r"foreach\(\s*_tool\s+([^)]*)\)\s*if\(TARGET \$\{_tool\}\)\s*"
                  r"install\(TARGETS \$\{_tool\} RUNTIME DESTINATION bin\)", top)
    if m:
        installed.update(m.group(1).split())
    return executables, installed


def git_tracked_files(source_dir):
    try:
        r = subprocess.run(["git", "-C", str(source_dir), "ls-files", "-z"],
                           capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode != 0:
        return None
    return [p for p in r.stdout.decode().split("\0") if p]


# ---------------------------------------------------------------------------
# .dockerignore (moby/patternmatcher semantics)
# ---------------------------------------------------------------------------
def _pattern_regex(pattern):
    out = ""
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if i < len(pattern) and pattern[i] == "/":
                out += "(?:.*/)?"
                i += 1
            else:
                out += ".*"
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            j = pattern.find("]", i)
            if j < 0:
                out += re.escape(c)
            else:
                body = pattern[i + 1:j].replace("\\", "\\\\")
                if body.startswith("^") or body.startswith("!"):
                    body = "^" + body[1:]
                out += "[" + body + "]"
                i = j
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        else:
            out += re.escape(c)
        i += 1
    return re.compile(out + r"\Z")


def parse_dockerignore(text):
    """[(regex, exclusion?, pattern)] in file order."""
    rules = []
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        negate = s.startswith("!")
        if negate:
            s = s[1:].strip()
        s = os.path.normpath(s).lstrip("/")
        if s in ("", "."):
            continue
        rules.append((_pattern_regex(s), negate, line.strip()))
    return rules


def ignored(rules, path):
    """Whether the build context leaves `path` (relative, / separated) out."""
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    result = False
    for regex, negate, _ in rules:
        if any(regex.match(c) for c in candidates):
            result = not negate
    return result


# Paths the context must leave out / keep, whatever git tracks.
MUST_IGNORE = (
    "build/bin/lpdetr-server", "build/CMakeCache.txt", "build-asan/bin/x", "build-gpu/x",
    ".git/HEAD", ".git/objects/ab/cd", "tests/deploy/node_modules/x/index.js",
    "node_modules/x/package.json", "models-local/m/weights.safetensors",
    "server/__pycache__/x.cpython-311.pyc", "models/my-finetune/weights.safetensors",
)
MUST_KEEP = (
    "CMakeLists.txt", "scripts/install_deps.sh", "models/lp-detr-shapes/config.json",
    "models/lp-detr-shapes/weights.safetensors", "models/lp-detr-shapes/labels.txt",
    "server/server_main.cc", "proto/lpdetr/v1/detection.proto",
)


def lint_dockerignore(text, tracked=None, model_files=()):
    errors = []
    rules = parse_dockerignore(text)
    for path in MUST_IGNORE:
        if not ignored(rules, path):
            errors.append(f".dockerignore: {path} is in the build context (should be excluded)")
    for path in MUST_KEEP + tuple(model_files):
        if ignored(rules, path):
            errors.append(f".dockerignore: {path} is excluded from the build context")
    for path in tracked or ():
        if path in (".gitignore", ".dockerignore"):
            continue
        if ignored(rules, path):
            errors.append(f".dockerignore: the tracked file {path} is excluded from the "
                          f"build context")
    return errors


# ---------------------------------------------------------------------------
# Dockerfile checks
# ---------------------------------------------------------------------------
def image_ref_pinned(ref):
    """None when `ref` names a pinned image, else why not."""
    if ref == "scratch":
        return None
    if "$" in ref:
        return f"{ref!r} has an unresolved variable"
    if "@sha256:" in ref:
        digest = ref.split("@sha256:", 1)[1]
        return None if re.fullmatch(r"[0-9a-f]{64}", digest) else f"{ref!r}: bad digest"
    last = ref.rsplit("/", 1)[-1]
    if ":" not in last:
        return f"{ref!r} has no tag or digest"
    tag = last.split(":", 1)[1]
    if not tag or tag == "latest":
        return f"{ref!r} uses the tag {tag or '(empty)'!r}"
    return None


def run_text(ins):
    j = ins.json_form()
    return " ".join(j) if j is not None else ins.args


def check_stages(df):
    errors = []
    names = {}
    for stage in df.stages:
        where = f"line {stage.line}"
        if not stage.name:
            errors.append(f"{where}: FROM {stage.base_raw} has no stage name (FROM IMAGE AS NAME)")
        else:
            key = stage.name.lower()
            if key in names:
                errors.append(f"{where}: stage name {stage.name!r} is used twice")
            names[key] = stage
        if stage.parent is None:
            why = image_ref_pinned(stage.base)
            if why:
                errors.append(f"{where}: FROM {stage.base_raw}: not pinned ({why})")
        for ins in stage.instructions:
            if ins.cmd in ("COPY", "ADD"):
                flags, _ = ins.flags_and_rest()
                if "from" in flags:
                    src = substitute(flags["from"], df.values)
                    earlier = [s for s in df.stages[:stage.index]
                               if s.name == src or str(s.index) == src]
                    if not earlier:
                        errors.append(f"line {ins.line}: COPY --from={flags['from']} names no "
                                      f"earlier stage")
            if ins.cmd == "ADD":
                for word in ins.words():
                    if re.match(r"(https?|git|ssh)://|git@", word):
                        errors.append(f"line {ins.line}: ADD of a URL ({word}); download in a "
                                      f"RUN with a checksum instead")
    return errors


def check_apt(df, source_dir):
    errors = []
    deps_script = pathlib.Path(source_dir) / "scripts" / "install_deps.sh"
    for stage in df.stages:
        for ins in stage.instructions:
            if ins.cmd != "RUN":
                continue
            text = run_text(ins)
            if re.search(r"\bapt\s+install\b", text):
                errors.append(f"line {ins.line}: use apt-get, not apt, in scripts")
            installs = re.search(r"\bapt-get\b[^;&|]*\binstall\b", text)
            uses_script = "install_deps.sh" in text
            if installs and "--no-install-recommends" not in text:
                errors.append(f"line {ins.line}: apt-get install without --no-install-recommends")
            if (installs or uses_script or re.search(r"\bapt-get\s+update\b", text)) and \
                    not re.search(r"rm -rf /var/lib/apt/lists/\*?", text):
                errors.append(f"line {ins.line}: the apt lists are not removed in the same RUN "
                              f"(rm -rf /var/lib/apt/lists/*)")
            if re.search(r"\bapt-get\s+update\b", text) and not installs:
                errors.append(f"line {ins.line}: apt-get update without an install in the same RUN")
            if uses_script and deps_script.is_file():
                script = deps_script.read_text()
                for line in script.splitlines():
                    # Command lines only (messages may quote an apt-get line).
                    if re.match(r"\s*(\$\{?\w+\}?\s+|sudo\s+)?apt-get\s+(-\S+\s+)*install\b", line) \
                            and "--no-install-recommends" not in line:
                        errors.append(f"{deps_script}: apt-get install without "
                                      f"--no-install-recommends: {line.strip()}")
    return errors


def check_image(df, stage, label, flags_defaults, source_dir):
    """Checks of a stage that is an image people run."""
    errors = []
    where = f"{label} (stage {stage.name or stage.index}, line {stage.line})"
    eff = df.effective(stage)
    users = [i for i in eff if i.cmd == "USER"]
    entry = [i for i in eff if i.cmd == "ENTRYPOINT"]
    if not entry:
        errors.append(f"{where}: no ENTRYPOINT")
    elif not [u for u in users if eff.index(u) < eff.index(entry[-1])]:
        errors.append(f"{where}: no USER set before the ENTRYPOINT (the image would run as root)")
    if users:
        # The last USER is the one the container runs as.
        user = substitute(users[-1].args, df.values)
        m = re.fullmatch(r"(\d+)(?::(\d+))?", user)
        if not m:
            errors.append(f"line {users[-1].line}: USER {user!r} is not numeric (uid[:gid]); "
                          f"Kubernetes runAsNonRoot cannot verify a name")
        elif int(m.group(1)) == 0 or (m.group(2) is not None and int(m.group(2)) == 0):
            errors.append(f"line {users[-1].line}: USER {user} is root")
    if entry:
        words = entry[-1].json_form()
        if words is None:
            errors.append(f"line {entry[-1].line}: ENTRYPOINT in shell form (signals would go "
                          f"to /bin/sh, not the server: the drain on SIGTERM would not run)")
        elif not words or pathlib.PurePosixPath(words[0]).name != "lpdetr-server":
            errors.append(f"line {entry[-1].line}: ENTRYPOINT is not lpdetr-server: {words}")

    expected_ports = {}
    for flag in ADDRESS_FLAGS:
        port = port_of(flags_defaults.get(flag))
        if port is None:
            errors.append(f"the server has no default port for --{flag} "
                          f"(got {flags_defaults.get(flag)!r})")
        else:
            expected_ports[flag] = port
    exposed = set()
    for ins in (i for i in eff if i.cmd == "EXPOSE"):
        for word in substitute(ins.args, df.values).split():
            m = re.fullmatch(r"(\d+)(?:/(tcp|udp))?", word)
            if not m:
                errors.append(f"line {ins.line}: EXPOSE {word!r} is not a port")
            else:
                exposed.add(int(m.group(1)))
    want = set(expected_ports.values())
    if exposed != want:
        errors.append(f"{where}: EXPOSE {sorted(exposed)} differs from the server's default "
                      f"ports {sorted(want)} ({', '.join(f'--{k} :{v}' for k, v in expected_ports.items())})")
    cmds = [i for i in eff if i.cmd == "CMD"]
    if cmds:
        words = cmds[-1].json_form()
        if words is None:
            errors.append(f"line {cmds[-1].line}: CMD in shell form (use the JSON form: it is "
                          f"the ENTRYPOINT's arguments)")
        else:
            for word in words:
                m = re.fullmatch(r"--(\w+)=(.*)", word)
                if not m:
                    continue
                if m.group(1) not in flags_defaults:
                    errors.append(f"line {cmds[-1].line}: CMD passes --{m.group(1)}, not a flag "
                                  f"of lpdetr-server")
                if m.group(1) in expected_ports and port_of(m.group(2)) != expected_ports[m.group(1)]:
                    errors.append(f"line {cmds[-1].line}: CMD {word} does not listen on the "
                                  f"exposed port {expected_ports[m.group(1)]}")

    checks = [i for i in eff if i.cmd == "HEALTHCHECK"]
    if not checks:
        errors.append(f"{where}: no HEALTHCHECK")
    else:
        hc = checks[-1]
        _, rest = hc.flags_and_rest()
        if rest.upper() == "NONE" or not rest.upper().startswith("CMD"):
            errors.append(f"line {hc.line}: HEALTHCHECK does not run a command")
        else:
            body = rest[3:].strip()
            words = hc.json_form(body)
            if words is None:
                words = shlex.split(body)
            names = [pathlib.PurePosixPath(w).name for w in words]
            if not names or names[0] != "lpdetr-client" or "health" not in words:
                errors.append(f"line {hc.line}: HEALTHCHECK is not `lpdetr-client health`: {words}")
            address = None
            for i, w in enumerate(words):
                if w.startswith("--address="):
                    address = w.split("=", 1)[1]
                elif w == "--address" and i + 1 < len(words):
                    address = words[i + 1]
            if address is None or port_of(address) != expected_ports.get("grpc_address"):
                errors.append(f"line {hc.line}: HEALTHCHECK --address {address} is not the gRPC "
                              f"port {expected_ports.get('grpc_address')}")
            elif not address.startswith(("127.0.0.1:", "localhost:", "[::1]:")):
                errors.append(f"line {hc.line}: HEALTHCHECK should check the container itself "
                              f"(127.0.0.1), not {address}")

    # What the image copies from its build stage: the installed tree.
    for ins in eff:
        if ins.cmd != "COPY":
            continue
        flags, _ = ins.flags_and_rest()
        words = ins.words()
        if "from" not in flags or len(words) < 2:
            continue
        for src in words[:-1]:
            if src.startswith(INSTALL_PREFIX + "/bin/"):
                name = src[len(INSTALL_PREFIX) + 5:].strip("/")
                if name not in BINARIES:
                    errors.append(f"line {ins.line}: COPY of {src}, not one of {BINARIES}")
    return errors


def build_stages_of(df, stage):
    """Stages the image copies from (directly), with their own chains."""
    out = []
    for ins in df.effective(stage):
        if ins.cmd == "COPY":
            flags, _ = ins.flags_and_rest()
            if "from" in flags:
                s = df.stage(substitute(flags["from"], df.values))
                if s is not None and s not in out:
                    out.append(s)
    return out


def check_build_stage(df, stage, executables, installed):
    errors = []
    where = f"stage {stage.name} (line {stage.line})"
    text = "\n".join(run_text(i) for i in df.effective(stage) if i.cmd == "RUN")
    configure = re.search(r"cmake\s+-S[^\n]*", text)
    if not configure:
        errors.append(f"{where}: no `cmake -S . -B build` configure step")
    elif "-DLPDETR_BUILD_TESTS=OFF" not in configure.group(0):
        errors.append(f"{where}: the configure step does not set -DLPDETR_BUILD_TESTS=OFF")
    m = re.search(r"cmake\s+--build\s[^\n]*?--target\s+([^&;|\n]*)", text)
    targets = set(m.group(1).split()) if m else set()
    for binary in BINARIES:
        if m and binary not in targets:
            errors.append(f"{where}: `cmake --build --target` does not build {binary}")
        if binary not in executables:
            errors.append(f"{binary}: no add_executable({binary} ...) in the CMakeLists")
        if binary not in installed:
            errors.append(f"{binary}: not in the top-level CMakeLists install() loop")
    for target in targets - set(BINARIES):
        if target != "lpdetr_default_model" and target not in executables:
            errors.append(f"{where}: --target {target} is not a target of the CMakeLists")
    if not re.search(r"cmake\s+--install\s+build\s+--prefix\s+" + re.escape(INSTALL_PREFIX), text):
        errors.append(f"{where}: no `cmake --install build --prefix {INSTALL_PREFIX}`")
    return errors, configure.group(0) if configure else ""


def _libtorch_version(url):
    m = re.search(r"-(\d+)\.(\d+)\.(\d+)(?:%2B|\+)", url)
    return tuple(int(g) for g in m.groups()) if m else (0, 0, 0)


def check_libtorch_download(df, stage):
    """The CUDA build stage fetches a pinned LibTorch and checks its SHA-256."""
    errors = []
    where = f"stage {stage.name} (line {stage.line})"
    args = stage_args(stage, df)
    url = args.get("LIBTORCH_URL", "")
    sha = args.get("LIBTORCH_SHA256")
    if not url:
        errors.append(f"{where}: no ARG LIBTORCH_URL with a default")
    else:
        if not url.startswith("https://"):
            errors.append(f"{where}: LIBTORCH_URL {url} is not https")
        if not re.search(r"libtorch-(cxx11-abi-)?shared-with-deps-\d+\.\d+\.\d+(%2B|\+)cu\d+\.zip$",
                         url):
            errors.append(f"{where}: LIBTORCH_URL {url} is not a pinned shared-with-deps CUDA "
                          f"LibTorch zip")
        elif "cxx11-abi" not in url and _libtorch_version(url) < (2, 7):
            # From 2.7 on every Linux LibTorch is cxx11 ABI and the name says no more.
            errors.append(f"{where}: LIBTORCH_URL {url} is not a cxx11-ABI build (the distribution's "
                          f"gRPC and protobuf use the new ABI)")
    if sha is None:
        errors.append(f"{where}: no ARG LIBTORCH_SHA256")
    elif sha and not re.fullmatch(r"[0-9a-f]{64}", sha):
        errors.append(f"{where}: LIBTORCH_SHA256 default {sha!r} is not 64 hex digits")
    fetch = None
    for ins in stage.instructions:
        if ins.cmd == "RUN" and "LIBTORCH_URL" in run_text(ins) and \
                re.search(r"\b(curl|wget)\b", run_text(ins)):
            fetch = ins
    if fetch is None:
        errors.append(f"{where}: no RUN downloading $LIBTORCH_URL")
        return errors
    text = run_text(fetch)
    check = re.search(r"sha256sum\s+(-c|--check)", text)
    unpack = re.search(r"\b(unzip|bsdtar|python3 -m zipfile)\b", text)
    if not check:
        errors.append(f"line {fetch.line}: the LibTorch download is not checked with sha256sum -c")
    elif "LIBTORCH_SHA256" not in text[:check.start()]:
        errors.append(f"line {fetch.line}: sha256sum -c does not check against $LIBTORCH_SHA256")
    if check and unpack and unpack.start() < check.start():
        errors.append(f"line {fetch.line}: the LibTorch zip is unpacked before its checksum is "
                      f"checked")
    if sha == "" and not re.search(r'-z\s+"?\$\{?LIBTORCH_SHA256\}?"?.*?exit\s+1', text, re.S):
        errors.append(f"line {fetch.line}: LIBTORCH_SHA256 has no default, but an empty value does "
                      f"not stop the build with a message")
    return errors


def lint_dockerfile(text, facts):
    """All Dockerfile findings (strings). `facts`: flags, executables, installed, source_dir."""
    errors = []
    try:
        base = Dockerfile(text)
    except ValueError as e:
        return [f"Dockerfile: {e}"]
    errors += base.errors
    if not base.stages:
        return errors + ["Dockerfile: no FROM"]
    errors += check_stages(base)
    errors += check_apt(base, facts["source_dir"])

    if "VARIANT" not in base.global_args:
        errors.append("Dockerfile: no global ARG VARIANT (cpu | gpu) before the first FROM")
    images = {}
    for variant in VARIANTS:
        df = Dockerfile(text, {"VARIANT": variant})
        last = df.stages[-1]
        if last.parent is None and last.name and last.base != last.base_raw:
            errors.append(f"VARIANT={variant}: the last stage is FROM {last.base}, not a stage")
        images[variant] = (df, last)
    for stage in base.stages:
        if any(i.cmd == "ENTRYPOINT" for i in stage.instructions):
            images.setdefault(stage.name, (base, stage))

    seen_builds = {}
    for label, (df, stage) in images.items():
        label = f"VARIANT={label}" if label in VARIANTS else f"--target {label}"
        errors += check_image(df, stage, label, facts["flags"], facts["source_dir"])
        builds = build_stages_of(df, stage)
        if not builds:
            errors.append(f"{label}: the image copies nothing from a build stage")
        for b in builds:
            if b.name not in seen_builds:
                errs, configure = check_build_stage(df, b, facts["executables"],
                                                    facts["installed"])
                seen_builds[b.name] = configure
                errors += errs
        root = df.root_image(stage)
        build_roots = [df.root_image(b) for b in builds]
        if label == "VARIANT=gpu":
            if not re.match(r"(docker\.io/)?nvidia/cuda:\d+\.\d+\.\d+-(base|runtime|cudnn-runtime)-",
                            root):
                errors.append(f"{label}: the runtime is FROM {root}, not a pinned NVIDIA CUDA "
                              f"base/runtime image")
            devel = [b for b, r in zip(builds, build_roots)
                     if re.match(r"(docker\.io/)?nvidia/cuda:\d+\.\d+\.\d+-(cudnn-)?devel-", r)]
            if not devel:
                errors.append(f"{label}: no build stage on a pinned nvidia/cuda:X.Y.Z-devel-* image")
            for b in devel:
                errors += check_libtorch_download(df, df.chain(b)[-1])
                configure = seen_builds.get(b.name, "")
                if "Torch_DIR" not in configure and "CMAKE_PREFIX_PATH" not in configure:
                    errors.append(f"stage {b.name}: the configure step does not point Torch_DIR "
                                  f"at the downloaded LibTorch")
        elif label == "VARIANT=cpu":
            if not re.match(r"(docker\.io/)?(library/)?debian:", root):
                errors.append(f"{label}: the runtime is FROM {root}, not Debian")
            debian = [b for b, r in zip(builds, build_roots)
                      if re.match(r"(docker\.io/)?(library/)?debian:", r)]
            if not debian:
                errors.append(f"{label}: no build stage on Debian")
            for b in debian:
                runs = " ".join(run_text(i) for i in df.effective(b) if i.cmd == "RUN")
                if "install_deps.sh" not in runs:
                    errors.append(f"stage {b.name}: Debian's LibTorch is not installed through "
                                  f"scripts/install_deps.sh")
    return errors


# ---------------------------------------------------------------------------
# Self-test: every rule must be able to fail
# ---------------------------------------------------------------------------
GOOD = r"""# syntax=docker/dockerfile:1
ARG VARIANT=gpu
FROM debian:bookworm-20250929 AS build-cpu
COPY scripts/install_deps.sh scripts/install_deps.sh
RUN scripts/install_deps.sh \
 && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cmake -S . -B build -DLPDETR_BUILD_TESTS=OFF \
 && cmake --build build --target lpdetr-server lpdetr-client lpdetr-model lpdetr-train \
 && cmake --install build --prefix /opt/lpdetr

FROM debian:bookworm-20250929-slim AS runtime-cpu
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      # a comment inside the continuation
      libtorch1.13 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build-cpu /opt/lpdetr/bin /opt/lpdetr/bin
EXPOSE 50051 9464 50052
USER 10001:10001
HEALTHCHECK --interval=30s CMD ["/opt/lpdetr/bin/lpdetr-client", "health", "--address", "127.0.0.1:50051"]
ENTRYPOINT ["/opt/lpdetr/bin/lpdetr-server"]
CMD ["--grpc_address=0.0.0.0:50051", "--metrics_address=0.0.0.0:9464"]

FROM nvidia/cuda:12.6.3-devel-ubuntu24.04 AS build-gpu
ARG LIBTORCH_URL=https://download.pytorch.org/libtorch/cu126/libtorch-cxx11-abi-shared-with-deps-2.7.1%2Bcu126.zip
ARG LIBTORCH_SHA256=
RUN apt-get update && apt-get install -y --no-install-recommends curl unzip \
 && rm -rf /var/lib/apt/lists/*
RUN if [ -z "${LIBTORCH_SHA256}" ]; then echo "LIBTORCH_SHA256 is required" >&2; exit 1; fi \
 && curl -fsSL -o /tmp/t.zip "${LIBTORCH_URL}" \
 && echo "${LIBTORCH_SHA256}  /tmp/t.zip" | sha256sum -c - \
 && unzip -q /tmp/t.zip -d /opt
COPY . .
RUN cmake -S . -B build -DLPDETR_BUILD_TESTS=OFF -DTorch_DIR=/opt/libtorch/share/cmake/Torch \
 && cmake --build build --target lpdetr-server lpdetr-client lpdetr-model lpdetr-train \
 && cmake --install build --prefix /opt/lpdetr

FROM nvidia/cuda:12.6.3-base-ubuntu24.04 AS runtime-gpu
COPY --from=build-gpu /opt/libtorch/lib /opt/libtorch/lib
COPY --from=build-gpu /opt/lpdetr/bin /opt/lpdetr/bin
EXPOSE 50051 9464 50052
USER 10001
HEALTHCHECK CMD /opt/lpdetr/bin/lpdetr-client health --address 127.0.0.1:50051
ENTRYPOINT ["/opt/lpdetr/bin/lpdetr-server"]

FROM runtime-${VARIANT} AS final
"""

GOOD_IGNORE = """build*
.git
**/node_modules
**/__pycache__
models-local
models/*
!models/lp-detr-shapes
"""


def _mutate(old, new, count=1):
    assert GOOD.count(old) >= 1, f"self-test: {old!r} not in the sample"
    return GOOD.replace(old, new, count)


# (what is broken, the Dockerfile, a substring the findings must contain)
NEGATIVE_DOCKERFILES = [
    ("runs as root (no USER)", _mutate("USER 10001:10001\n", ""), "no USER set before"),
    ("USER root", _mutate("USER 10001:10001", "USER root"), "not numeric"),
    ("USER 0", _mutate("USER 10001", "USER 0", 2), "is root"),
    ("USER by name", _mutate("USER 10001\n", "USER lpdetr\n"), "not numeric"),
    ("FROM :latest", _mutate("debian:bookworm-20250929-slim", "debian:latest"), "not pinned"),
    ("FROM without tag", _mutate("debian:bookworm-20250929 AS", "debian AS"), "no tag or digest"),
    ("unnamed stage", _mutate("FROM nvidia/cuda:12.6.3-base-ubuntu24.04 AS runtime-gpu",
                              "FROM nvidia/cuda:12.6.3-base-ubuntu24.04"), "no stage name"),
    ("COPY --from unknown", _mutate("--from=build-gpu /opt/libtorch", "--from=builder /opt/libtorch"),
     "names no earlier stage"),
    ("ADD of a URL", _mutate("COPY . .\n", "ADD https://example.com/x.tar.gz /x\n"), "ADD of a URL"),
    ("apt without --no-install-recommends",
     _mutate("apt-get install -y --no-install-recommends curl", "apt-get install -y curl"),
     "without --no-install-recommends"),
    ("apt lists kept", _mutate(" \\\n && rm -rf /var/lib/apt/lists/*\nCOPY --from=build-cpu",
                               "\nCOPY --from=build-cpu"), "apt lists are not removed"),
    ("no sha256sum", _mutate('echo "${LIBTORCH_SHA256}  /tmp/t.zip" | sha256sum -c - \\\n && ', ""),
     "not checked with sha256sum"),
    ("unpacked before the check",
     _mutate('echo "${LIBTORCH_SHA256}  /tmp/t.zip" | sha256sum -c - \\\n && unzip -q /tmp/t.zip -d /opt',
             'unzip -q /tmp/t.zip -d /opt \\\n && echo "${LIBTORCH_SHA256}  /tmp/t.zip" | sha256sum -c -'),
     "unpacked before"),
    ("empty sha256 not enforced",
     _mutate('if [ -z "${LIBTORCH_SHA256}" ]; then echo "LIBTORCH_SHA256 is required" >&2; exit 1; fi \\\n && ',
             ""), "does not stop the build"),
    ("invented short hash", _mutate("ARG LIBTORCH_SHA256=", "ARG LIBTORCH_SHA256=abc123"),
     "not 64 hex digits"),
    ("unpinned LibTorch", _mutate("libtorch-cxx11-abi-shared-with-deps-2.7.1%2Bcu126.zip",
                                  "libtorch-cxx11-abi-shared-with-deps-latest.zip"), "not a pinned"),
    ("EXPOSE missing admin", _mutate("EXPOSE 50051 9464 50052", "EXPOSE 50051 9464"),
     "differs from the server's default ports"),
    ("EXPOSE wrong metrics", _mutate("EXPOSE 50051 9464 50052", "EXPOSE 50051 9090 50052"),
     "differs from the server's default ports"),
    ("CMD port not exposed", _mutate("--metrics_address=0.0.0.0:9464", "--metrics_address=0.0.0.0:9100"),
     "does not listen on the exposed port"),
    ("HEALTHCHECK not the client", _mutate(
        'CMD ["/opt/lpdetr/bin/lpdetr-client", "health", "--address", "127.0.0.1:50051"]',
        'CMD ["curl", "-f", "http://127.0.0.1:9464/metrics"]'), "not `lpdetr-client health`"),
    ("HEALTHCHECK wrong port", _mutate("health --address 127.0.0.1:50051",
                                       "health --address 127.0.0.1:9464"), "is not the gRPC port"),
    ("no HEALTHCHECK", _mutate(
        'HEALTHCHECK --interval=30s CMD ["/opt/lpdetr/bin/lpdetr-client", "health", "--address", '
        '"127.0.0.1:50051"]\n', ""), "no HEALTHCHECK"),
    ("shell-form ENTRYPOINT", _mutate('ENTRYPOINT ["/opt/lpdetr/bin/lpdetr-server"]',
                                      "ENTRYPOINT /opt/lpdetr/bin/lpdetr-server"), "shell form"),
    ("a binary not built", _mutate("--target lpdetr-server lpdetr-client lpdetr-model lpdetr-train",
                                   "--target lpdetr-server lpdetr-client lpdetr-model"),
     "does not build lpdetr-train"),
    ("tests built", _mutate("-DLPDETR_BUILD_TESTS=OFF \\\n && cmake --build build --target",
                            "\\\n && cmake --build build --target"), "LPDETR_BUILD_TESTS=OFF"),
    ("GPU build not on CUDA devel", _mutate("nvidia/cuda:12.6.3-devel-ubuntu24.04",
                                            "ubuntu:24.04"), "no build stage on a pinned nvidia/cuda"),
    ("CPU build without install_deps.sh",
     _mutate("RUN scripts/install_deps.sh \\\n && rm -rf /var/lib/apt/lists/*\n", ""),
     "not installed through"),
    ("no VARIANT", _mutate("ARG VARIANT=gpu\n", ""), "no global ARG VARIANT"),
    ("instruction before FROM", _mutate("ARG VARIANT=gpu\n", "ARG VARIANT=gpu\nENV X=1\n"),
     "only ARG may come before"),
]

NEGATIVE_IGNORES = [
    ("build dir kept", GOOD_IGNORE.replace("build*\n", ""), "build/bin/lpdetr-server is in"),
    (".git kept", GOOD_IGNORE.replace(".git\n", ""), ".git/HEAD is in"),
    ("node_modules kept", GOOD_IGNORE.replace("**/node_modules\n", ""), "node_modules/x/index.js is in"),
    ("default model excluded", GOOD_IGNORE.replace("!models/lp-detr-shapes\n", ""),
     "models/lp-detr-shapes/config.json is excluded"),
    ("safetensors excluded everywhere", GOOD_IGNORE + "**/*.safetensors\n",
     "models/lp-detr-shapes/weights.safetensors is excluded"),
    ("sources excluded", GOOD_IGNORE + "server\n", "server/server_main.cc is excluded"),
]


def self_test(facts):
    failures = []

    # Parser: continuations, comments inside them, JSON form, escape directive.
    ins = parse_dockerfile("ARG A=1\n# c\nRUN a \\\n  # inside\n  b \\\n\n  c\nCMD [\"x\", \"y\"]\n")
    if [i.cmd for i in ins] != ["ARG", "RUN", "CMD"] or ins[1].line != 3 or \
            ins[1].args.split() != ["a", "b", "c"] or ins[2].json_form() != ["x", "y"]:
        failures.append(f"parser: continuations/comments: {[(i.cmd, i.args, i.line) for i in ins]}")
    ins = parse_dockerfile("# escape=`\nRUN a `\n  b\n")
    if len(ins) != 1 or ins[0].args.split() != ["a", "b"]:
        failures.append(f"parser: escape directive: {[(i.cmd, i.args) for i in ins]}")
    df = Dockerfile(GOOD, {"VARIANT": "cpu"})
    if df.stages[-1].parent is None or df.stages[-1].parent.name != "runtime-cpu":
        failures.append("parser: FROM runtime-${VARIANT} did not resolve to runtime-cpu")
    flags = parse_helpfull('  Flags from x/absl/flags/parse.cc:\n    --flagfile (a); default: ;\n\n'
                           '  Flags from work/main/server/server_main.cc:\n'
                           '    --grpc_address (gRPC listen address host:port (port 0: any));\n'
                           '      default: "0.0.0.0:50051";\n    --max_batch_size (Most); default: 8;\n')
    if flags != {"grpc_address": "0.0.0.0:50051", "max_batch_size": "8"}:
        failures.append(f"parser: --helpfull: {flags}")
    keep = parse_dockerignore("models/*\n!models/keep\n")
    cases = [(keep, "models/keep/a", False), (keep, "models/other/a", True),
             (parse_dockerignore("**/x\n"), "a/b/x/c", True),
             (parse_dockerignore("**/x\n"), "x", True),
             (parse_dockerignore("build*\n"), "scripts/build.sh", False),
             (parse_dockerignore("build*\n"), "build-asan/bin/t", True),
             (parse_dockerignore("/build\n"), "build/CMakeCache.txt", True),
             (parse_dockerignore("*.zip\n"), "a/b.zip", False)]
    for rules, path, want in cases:
        if ignored(rules, path) != want:
            failures.append(f"parser: .dockerignore {[r[2] for r in rules]} on {path}: "
                            f"ignored={not want}, expected {want}")

    good = lint_dockerfile(GOOD, facts)
    if good:
        failures.append("the valid sample Dockerfile fails: " + "; ".join(good))
    for what, text, expect in NEGATIVE_DOCKERFILES:
        errs = lint_dockerfile(text, facts)
        if not any(expect in e for e in errs):
            failures.append(f"Dockerfile with {what}: expected a finding with {expect!r}, got "
                            f"{errs or 'none'}")
    if lint_dockerignore(GOOD_IGNORE):
        failures.append("the valid sample .dockerignore fails: " + "; ".join(lint_dockerignore(GOOD_IGNORE)))
    for what, text, expect in NEGATIVE_IGNORES:
        errs = lint_dockerignore(text)
        if not any(expect in e for e in errs):
            failures.append(f".dockerignore with {what}: expected {expect!r}, got {errs or 'none'}")
    count = len(NEGATIVE_DOCKERFILES) + len(NEGATIVE_IGNORES)
    return failures, count


def main():
    here = pathlib.Path(__file__).resolve()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--self-test", action="store_true", help="run only the self-test")
    parser.add_argument("--dockerfile", help="default: <source>/Dockerfile")
    parser.add_argument("--dockerignore", help="default: <source>/.dockerignore")
    args = parser.parse_args()
    source_dir = pathlib.Path(os.environ.get("LPDETR_SOURCE_DIR") or here.parents[2])
    bin_dir = pathlib.Path(os.environ.get("LPDETR_BIN_DIR") or source_dir / "build" / "bin")

    flags, flags_from = server_flags(source_dir, bin_dir)
    executables, installed = cmake_facts(source_dir)
    facts = {"flags": flags, "executables": executables, "installed": installed,
             "source_dir": source_dir}
    print(f"server flags from {flags_from}: " +
          ", ".join(f"--{f}={flags.get(f)}" for f in ADDRESS_FLAGS))

    failures, count = self_test(facts)
    for f in failures:
        print(f"SELF-TEST FAIL: {f}")
    if failures:
        return 1
    print(f"self-test: the sample passes, {count} broken samples fail as they should")
    if args.self_test:
        return 0

    dockerfile = pathlib.Path(args.dockerfile or source_dir / "Dockerfile")
    dockerignore = pathlib.Path(args.dockerignore or source_dir / ".dockerignore")
    errors = [f"{dockerfile}: {e}" for e in lint_dockerfile(dockerfile.read_text(), facts)]
    if not dockerignore.is_file():
        errors.append(f"{dockerignore}: missing")
    else:
        tracked = git_tracked_files(source_dir)
        model_dir = source_dir / "models" / "lp-detr-shapes"
        model_files = [f"models/lp-detr-shapes/{p.name}" for p in sorted(model_dir.iterdir())] \
            if model_dir.is_dir() else []
        if tracked is None:
            print("note: git ls-files unavailable: tracked files not checked against .dockerignore")
        errors += [f"{dockerignore}: {e.split(': ', 1)[1]}"
                   for e in lint_dockerignore(dockerignore.read_text(), tracked, model_files)]
    errors = list(dict.fromkeys(errors))  # an image reached two ways reports once
    for e in errors:
        print(f"FAIL: {e}")
    if errors:
        return 1
    df = Dockerfile(dockerfile.read_text())
    print(f"ok: {dockerfile} ({len(df.stages)} stages: "
          f"{', '.join(s.name or str(s.index) for s in df.stages)}) and {dockerignore}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
