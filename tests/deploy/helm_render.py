#!/usr/bin/python3
"""Renders a Helm chart without a helm binary (a checker for the chart's templates).

A small Go text/template engine plus the subset of Sprig / Helm functions the
chart in helm/lpdetr uses, written from the documented semantics of Go's
text/template, Sprig and Helm 3. It is meant to render the chart the way
`helm template` would and to fail where helm would fail (unknown functions,
nil field chains, mixed int/float comparisons, typed function parameters,
YAML that does not parse, values rejected by values.schema.json).

What matches helm:
  * actions, trim markers, comments, if / else if / with / range (maps in
    sorted key order) / define / template / block / break / continue,
    variables scoped like Go's, pipelines, parenthesised pipelines, methods;
  * numbers in values files are float64 as in helm (YAML -> JSON), so
    `{{ .Values.n }}` of 1000000 prints 1e+06 and `eq .Values.n 1` fails with
    "incompatible types for comparison"; --set integers are int64;
  * a missing map key is nil and prints as an empty string; a field of a
    nil value inside a chain is an error ("nil pointer evaluating ...");
  * values: values.yaml coalesced with -f files (merged in order) and --set
    (null removes a default key), validated by values.schema.json;
  * every template under templates/ not starting with "_" is rendered in
    sorted path order; .tpl files and NOTES.txt are not manifests; empty
    and comment-only documents are dropped; each document must be a YAML
    mapping without duplicate keys (helm's "YAML parse error on ...").
Known differences: int and int64 are not told apart (Go rejects an int64
where a function wants an int); toYaml is PyYAML's block style with
double-quoted strings, not byte-identical to Go's yaml; no subcharts, no
`lookup`, no hooks ordering; Capabilities are a fixed Kubernetes 1.32 API
set plus --api-versions.

Usage:
  helm_render.py CHART_DIR [-f VALUES]... [--set a.b=v]... [--set-string a=v]...
                 [--api-versions G/V]... [--release NAME] [--namespace NS]
                 [--kube-version v1.32.0] [--notes]
Prints `---\\n# Source: <template>\\n<document>` per document (NOTES.txt only
with --notes); exit 1 with a one-line message on any error.
Importable: render_chart(), render_notes(), load_values(), TemplateError.
Single-threaded; no state outside a call.
"""
import argparse
import base64
import copy
import datetime
import fnmatch
import hashlib
import json
import math
import os
import re
import sys
from decimal import Decimal

import yaml


class TemplateError(Exception):
    """A parse, execution, values or manifest error; the message names file:line."""


class FuncError(Exception):
    """Raised inside a template function; the caller adds the location."""


class _DepthError(TemplateError):
    """Template recursion too deep; passed up without wrapping per level."""


class _BreakLoop(Exception):
    pass


class _ContinueLoop(Exception):
    pass


MISSING = object()  # no final (piped) value, distinct from a nil one


# --------------------------------------------------------------------------
# Lexer
# --------------------------------------------------------------------------

_SPACE = " \t\r\n"
_KEYWORDS = {"block", "break", "continue", "define", "else", "end", "if",
             "range", "nil", "template", "with"}


class Item:
    __slots__ = ("typ", "val", "pos")

    def __init__(self, typ, val, pos):
        self.typ, self.val, self.pos = typ, val, pos

    def __repr__(self):
        return "%s(%r)" % (self.typ, self.val)

    def describe(self):
        if self.typ == "EOF":
            return "EOF"
        if self.typ == "RIGHT":
            return "}}"
        if self.typ == "KEYWORD":
            return "<%s>" % self.val
        return repr(self.val)


def _is_alnum(c):
    return c == "_" or c.isalnum()


def go_unquote(body, quote):
    """Go string / char literal body (between the quotes) to its value."""
    out = bytearray()
    i, n = 0, len(body)
    simple = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11,
              "\\": 92}
    while i < n:
        c = body[i]
        if c != "\\":
            out += c.encode("utf-8")
            i += 1
            continue
        if i + 1 >= n:
            raise ValueError("bad escape at end of literal")
        e = body[i + 1]
        if e in simple:
            out.append(simple[e])
            i += 2
        elif e == quote:
            out.append(ord(quote))
            i += 2
        elif e == "x":
            out.append(int(body[i + 2:i + 4], 16))
            i += 4
        elif e in "01234567":
            out.append(int(body[i + 1:i + 4], 8) & 0xFF)
            i += 4
        elif e == "u":
            out += chr(int(body[i + 2:i + 6], 16)).encode("utf-8")
            i += 6
        elif e == "U":
            out += chr(int(body[i + 2:i + 10], 16)).encode("utf-8")
            i += 10
        else:
            raise ValueError("unknown escape sequence \\%s" % e)
    return out.decode("utf-8", errors="replace")


def _parse_number(text):
    """Go template number literal -> int or float (ValueError when malformed)."""
    t = text.replace("_", "")
    sign = 1
    body = t
    if body[:1] in "+-":
        sign = -1 if body[0] == "-" else 1
        body = body[1:]
    low = body.lower()
    if low.endswith("i"):
        raise ValueError("complex numbers are not supported")
    try:
        if low.startswith(("0x", "0o", "0b")) and not ("p" in low and low.startswith("0x")):
            return sign * int(body, 0)
        if re.fullmatch(r"0[0-7]+", body):
            return sign * int(body, 8)
        if re.fullmatch(r"[0-9]+", body):
            return sign * int(body, 10)
    except ValueError:
        pass
    if low.startswith("0x"):
        return sign * float.fromhex(body)
    return sign * float(body)


_NUMBER_RE = re.compile(
    r"[+-]?(?:0[xX][0-9a-fA-F_]*(?:\.[0-9a-fA-F_]*)?(?:[pP][+-]?[0-9_]+)?"
    r"|(?:0[oObB])?[0-9_]*(?:\.[0-9_]*)?(?:[eE][+-]?[0-9_]+)?)i?")


class Lexer:
    """Splits template source into items; applies trim markers and drops comments."""

    def __init__(self, name, src):
        self.name, self.src = name, src
        self.items = []

    def error(self, pos, msg):
        line = self.src.count("\n", 0, pos) + 1
        raise TemplateError("parse error at (%s:%d): %s" % (self.name, line, msg))

    def emit(self, typ, val, pos):
        self.items.append(Item(typ, val, pos))

    def run(self):
        src, n, i = self.src, len(self.src), 0
        while i < n:
            j = src.find("{{", i)
            if j < 0:
                self.emit("TEXT", src[i:], i)
                break
            text = src[i:j]
            k = j + 2
            if k + 1 < n and src[k] == "-" and src[k + 1] in _SPACE:
                text = text.rstrip(_SPACE)
                k += 2
            if text:
                self.emit("TEXT", text, i)
            if src.startswith("/*", k):
                end = src.find("*/", k + 2)
                if end < 0:
                    self.error(j, "unclosed comment")
                m = end + 2
                if src.startswith("}}", m):
                    i = m + 2
                elif m < n and src[m] in _SPACE and src.startswith("-}}", m + 1):
                    i = m + 4
                    while i < n and src[i] in _SPACE:
                        i += 1
                else:
                    self.error(j, "comment ends before closing delimiter")
                continue
            self.emit("LEFT", "{{", j)
            i, trim = self.lex_action(k, j)
            if trim:
                while i < n and src[i] in _SPACE:
                    i += 1
        self.emit("EOF", "", n)
        return self.items

    def _at_right(self, i):
        """(length of right delimiter incl. trim marker, trim) or (0, False)."""
        src = self.src
        if src.startswith("}}", i):
            return 2, False
        if i < len(src) and src[i] in _SPACE and src.startswith("-}}", i + 1):
            return 4, True
        return 0, False

    def lex_action(self, i, start):
        src, n = self.src, len(self.src)
        depth = 0
        while True:
            length, trim = self._at_right(i)
            if length:
                if depth:
                    self.error(i, "unclosed left paren")
                self.emit("RIGHT", "}}", i)
                return i + length, trim
            if i >= n:
                self.error(start, "unclosed action")
            c = src[i]
            if c in _SPACE:
                s = i
                while i < n and src[i] in _SPACE and not self._at_right(i)[0]:
                    i += 1
                if i == s:  # the space belongs to " -}}"
                    continue
                self.emit("SPACE", src[s:i], s)
            elif c == "|":
                self.emit("PIPE", c, i)
                i += 1
            elif c == "(":
                depth += 1
                self.emit("LPAREN", c, i)
                i += 1
            elif c == ")":
                depth -= 1
                if depth < 0:
                    self.error(i, "unexpected right paren")
                self.emit("RPAREN", c, i)
                i += 1
            elif c == ",":
                self.emit("COMMA", c, i)
                i += 1
            elif c == ":":
                if not src.startswith(":=", i):
                    self.error(i, "expected :=")
                self.emit("DECLARE", ":=", i)
                i += 2
            elif c == "=":
                self.emit("ASSIGN", "=", i)
                i += 1
            elif c == '"':
                j = i + 1
                while True:
                    if j >= n or src[j] == "\n":
                        self.error(i, "unterminated quoted string")
                    if src[j] == "\\":
                        j += 2
                        continue
                    if src[j] == '"':
                        break
                    j += 1
                try:
                    val = go_unquote(src[i + 1:j], '"')
                except ValueError as e:
                    self.error(i, "bad string literal %s: %s" % (src[i:j + 1], e))
                self.emit("STRING", val, i)
                i = j + 1
            elif c == "`":
                j = src.find("`", i + 1)
                if j < 0:
                    self.error(i, "unterminated raw quoted string")
                self.emit("STRING", src[i + 1:j], i)
                i = j + 1
            elif c == "'":
                j = i + 1
                while j < n and src[j] != "'":
                    j += 2 if src[j] == "\\" else 1
                if j >= n:
                    self.error(i, "unterminated character constant")
                try:
                    val = go_unquote(src[i + 1:j], "'")
                except ValueError as e:
                    self.error(i, "bad character constant: %s" % e)
                if len(val) != 1:
                    self.error(i, "malformed character constant")
                self.emit("NUMBER", ord(val), i)
                i = j + 1
            elif c == "$":
                j = i + 1
                while j < n and _is_alnum(src[j]):
                    j += 1
                self.emit("VARIABLE", src[i:j], i)
                i = j
            elif c == "." and not (i + 1 < n and src[i + 1].isdigit()):
                j = i + 1
                while j < n and _is_alnum(src[j]):
                    j += 1
                if j == i + 1:
                    self.emit("DOT", ".", i)
                else:
                    self.emit("FIELD", src[i + 1:j], i)
                i = j
            elif c.isdigit() or c == "." or (c in "+-" and i + 1 < n and
                                             (src[i + 1].isdigit() or src[i + 1] == ".")):
                m = _NUMBER_RE.match(src, i)
                text = m.group(0)
                j = m.end()
                if j < n and _is_alnum(src[j]):
                    self.error(i, "bad number syntax: %s" % go_quote(src[i:j + 1]))
                try:
                    val = _parse_number(text)
                except ValueError:
                    self.error(i, "bad number syntax: %s" % text)
                self.emit("NUMBER", val, i)
                i = j
            elif _is_alnum(c):
                j = i
                while j < n and _is_alnum(src[j]):
                    j += 1
                word = src[i:j]
                if word in ("true", "false"):
                    self.emit("BOOL", word == "true", i)
                elif word == "nil":
                    self.emit("NIL", None, i)
                elif word in _KEYWORDS:
                    self.emit("KEYWORD", word, i)
                else:
                    self.emit("IDENT", word, i)
                i = j
            else:
                self.error(i, "unrecognized character in action: %r" % c)


# --------------------------------------------------------------------------
# Parse tree
# --------------------------------------------------------------------------

class Node:
    __slots__ = ("pos",)


class ListNode(Node):
    __slots__ = ("nodes",)

    def __init__(self, pos, nodes):
        self.pos, self.nodes = pos, nodes


class TextNode(Node):
    __slots__ = ("text",)

    def __init__(self, pos, text):
        self.pos, self.text = pos, text


class ActionNode(Node):
    __slots__ = ("pipe",)

    def __init__(self, pos, pipe):
        self.pos, self.pipe = pos, pipe

    def __str__(self):
        return "{{%s}}" % self.pipe


class IfNode(Node):
    """if or with (kind) with optional else list."""
    __slots__ = ("kind", "pipe", "body", "else_body")

    def __init__(self, pos, kind, pipe, body, else_body):
        self.pos, self.kind, self.pipe = pos, kind, pipe
        self.body, self.else_body = body, else_body

    def __str__(self):
        return "{{%s %s}}" % (self.kind, self.pipe)


class RangeNode(Node):
    __slots__ = ("pipe", "body", "else_body")

    def __init__(self, pos, pipe, body, else_body):
        self.pos, self.pipe, self.body, self.else_body = pos, pipe, body, else_body

    def __str__(self):
        return "{{range %s}}" % self.pipe


class TemplateNode(Node):
    __slots__ = ("name", "pipe")

    def __init__(self, pos, name, pipe):
        self.pos, self.name, self.pipe = pos, name, pipe

    def __str__(self):
        if self.pipe is None:
            return "{{template %s}}" % go_quote(self.name)
        return "{{template %s %s}}" % (go_quote(self.name), self.pipe)


class BreakNode(Node):
    __slots__ = ()

    def __init__(self, pos):
        self.pos = pos


class ContinueNode(Node):
    __slots__ = ()

    def __init__(self, pos):
        self.pos = pos


class PipeNode(Node):
    __slots__ = ("decl", "is_assign", "cmds")

    def __init__(self, pos, decl, is_assign, cmds):
        self.pos, self.decl, self.is_assign, self.cmds = pos, decl, is_assign, cmds

    def __str__(self):
        s = " | ".join(str(c) for c in self.cmds)
        if self.decl:
            s = "%s %s %s" % (", ".join(self.decl), "=" if self.is_assign else ":=", s)
        return s


class CommandNode(Node):
    __slots__ = ("args",)

    def __init__(self, pos, args):
        self.pos, self.args = pos, args

    def __str__(self):
        return " ".join("(%s)" % a if isinstance(a, PipeNode) else str(a)
                        for a in self.args)


class FieldNode(Node):
    __slots__ = ("idents",)

    def __init__(self, pos, idents):
        self.pos, self.idents = pos, idents

    def __str__(self):
        return "".join("." + i for i in self.idents)


class VariableNode(Node):
    __slots__ = ("name", "idents")

    def __init__(self, pos, name, idents):
        self.pos, self.name, self.idents = pos, name, idents

    def __str__(self):
        return self.name + "".join("." + i for i in self.idents)


class ChainNode(Node):
    __slots__ = ("node", "idents")

    def __init__(self, pos, node, idents):
        self.pos, self.node, self.idents = pos, node, idents

    def __str__(self):
        inner = "(%s)" % self.node if isinstance(self.node, PipeNode) else str(self.node)
        return inner + "".join("." + i for i in self.idents)


class DotNode(Node):
    __slots__ = ()

    def __init__(self, pos):
        self.pos = pos

    def __str__(self):
        return "."


class NilNode(Node):
    __slots__ = ()

    def __init__(self, pos):
        self.pos = pos

    def __str__(self):
        return "nil"


class IdentNode(Node):
    __slots__ = ("name",)

    def __init__(self, pos, name):
        self.pos, self.name = pos, name

    def __str__(self):
        return self.name


class LiteralNode(Node):
    """bool, number or string constant."""
    __slots__ = ("value", "kind")

    def __init__(self, pos, value, kind):
        self.pos, self.value, self.kind = pos, value, kind

    def __str__(self):
        if self.kind == "string":
            return go_quote(self.value)
        return go_sprint(self.value)


class Tree:
    """One named template: its body and the file it was parsed from."""

    def __init__(self, name, file_name, src, root):
        self.name, self.file_name, self.src, self.root = name, file_name, src, root

    def location(self, pos):
        line = self.src.count("\n", 0, pos) + 1
        col = pos - (self.src.rfind("\n", 0, pos) + 1) + 1
        return "%s:%d:%d" % (self.file_name, line, col)


# --------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------

_OPERAND_START = {"BOOL", "DOT", "FIELD", "IDENT", "NUMBER", "NIL", "STRING",
                  "VARIABLE", "LPAREN"}


class Parser:
    """Parses one file into {template name: Tree} (the file itself and its defines)."""

    def __init__(self, name, src, func_names):
        self.name, self.src, self.func_names = name, src, func_names
        self.items = Lexer(name, src).run()
        self.idx = 0
        self.vars = ["$"]
        self.range_depth = 0
        self.trees = {}

    # ---- token helpers
    def error(self, pos, msg):
        line = self.src.count("\n", 0, pos) + 1
        raise TemplateError("parse error at (%s:%d): %s" % (self.name, line, msg))

    def next(self):
        it = self.items[self.idx]
        if it.typ != "EOF":
            self.idx += 1
        return it

    def peek(self):
        return self.items[self.idx]

    def next_non_space(self):
        it = self.next()
        while it.typ == "SPACE":
            it = self.next()
        return it

    def peek_non_space(self):
        while self.items[self.idx].typ == "SPACE":
            self.idx += 1
        return self.items[self.idx]

    def expect(self, typ, context):
        it = self.next_non_space()
        if it.typ != typ:
            self.error(it.pos, "unexpected %s in %s" % (it.describe(), context))
        return it

    # ---- structure
    def parse(self):
        root, _ = self.item_list(top=True)
        self.trees[self.name] = Tree(self.name, self.name, self.src, root)
        return self.trees

    def item_list(self, top=False):
        """Nodes up to {{end}} / {{else}} (returned, consumed up to the keyword) or EOF."""
        start = self.peek().pos
        nodes = []
        while True:
            it = self.peek()
            if it.typ == "EOF":
                if not top:
                    self.error(it.pos, "unexpected EOF")
                return ListNode(start, nodes), None
            if it.typ == "TEXT":
                self.next()
                nodes.append(TextNode(it.pos, it.val))
                continue
            self.next()  # LEFT
            kw = self.peek_non_space()
            if kw.typ == "KEYWORD" and kw.val in ("end", "else"):
                if top:
                    self.error(kw.pos, "unexpected {{%s}}" % kw.val)
                self.next_non_space()
                return ListNode(start, nodes), kw
            if kw.typ == "KEYWORD" and kw.val == "define":
                if not top:
                    self.error(kw.pos, "unexpected <define> in command")
                self.next_non_space()
                self.parse_definition(kw.pos)
                continue
            nodes.append(self.action())

    def parse_definition(self, pos):
        name_item = self.expect("STRING", "define clause")
        self.expect("RIGHT", "define clause")
        saved_vars, saved_depth = self.vars, self.range_depth
        self.vars, self.range_depth = ["$"], 0
        body, term = self.item_list()
        if term.val != "end":
            self.error(term.pos, "unexpected {{else}} in define")
        self.expect("RIGHT", "end")
        self.vars, self.range_depth = saved_vars, saved_depth
        self.trees[name_item.val] = Tree(name_item.val, self.name, self.src, body)

    def action(self):
        it = self.next_non_space()
        if it.typ == "KEYWORD":
            kw = it.val
            if kw in ("if", "with"):
                return self.parse_control(it.pos, kw)
            if kw == "range":
                return self.parse_control(it.pos, "range")
            if kw == "template":
                return self.parse_template_call(it.pos)
            if kw == "block":
                return self.parse_block(it.pos)
            if kw in ("break", "continue"):
                if not self.range_depth:
                    self.error(it.pos, "{{%s}} outside {{range}}" % kw)
                self.expect("RIGHT", kw)
                return BreakNode(it.pos) if kw == "break" else ContinueNode(it.pos)
            if kw != "nil":
                self.error(it.pos, "unexpected <%s> in command" % kw)
        self.idx -= 1
        pipe = self.pipeline("command", "RIGHT")
        return ActionNode(it.pos, pipe)

    def parse_control(self, pos, kind):
        mark = len(self.vars)
        pipe = self.pipeline(kind, "RIGHT")
        if kind == "range":
            self.range_depth += 1
        body, term = self.item_list()
        if kind == "range":
            self.range_depth -= 1
        else_body = None
        if term.val == "else":
            nxt = self.peek_non_space()
            if kind in ("if", "with") and nxt.typ == "KEYWORD" and nxt.val == kind:
                # {{else if x}} is {{else}}{{if x}}...{{end}}{{end}}: the nested
                # control consumes the final {{end}}.
                self.next_non_space()
                nested = self.parse_control(nxt.pos, kind)
                else_body = ListNode(nxt.pos, [nested])
            else:
                self.expect("RIGHT", "else")
                else_body, term2 = self.item_list()
                if term2.val != "end":
                    self.error(term2.pos, "expected end; found {{else}}")
                self.expect("RIGHT", "end")
        else:
            self.expect("RIGHT", "end")
        del self.vars[mark:]
        if kind == "range":
            return RangeNode(pos, pipe, body, else_body)
        return IfNode(pos, kind, pipe, body, else_body)

    def parse_template_call(self, pos):
        name_item = self.expect("STRING", "template clause")
        pipe = None
        if self.peek_non_space().typ != "RIGHT":
            pipe = self.pipeline("template clause", "RIGHT")
        else:
            self.next_non_space()
        return TemplateNode(pos, name_item.val, pipe)

    def parse_block(self, pos):
        name_item = self.expect("STRING", "block clause")
        pipe = None
        if self.peek_non_space().typ != "RIGHT":
            pipe = self.pipeline("block clause", "RIGHT")
        else:
            self.next_non_space()
        saved_vars, saved_depth = self.vars, self.range_depth
        self.vars, self.range_depth = ["$"], 0
        body, term = self.item_list()
        if term.val != "end":
            self.error(term.pos, "unexpected {{else}} in block")
        self.expect("RIGHT", "end")
        self.vars, self.range_depth = saved_vars, saved_depth
        self.trees[name_item.val] = Tree(name_item.val, self.name, self.src, body)
        return TemplateNode(pos, name_item.val, pipe)

    def pipeline(self, context, end):
        pos = self.peek_non_space().pos
        decl, is_assign = [], False
        if self.peek_non_space().typ == "VARIABLE":
            save = self.idx
            v = self.next_non_space()
            nxt = self.peek_non_space()
            if nxt.typ in ("DECLARE", "ASSIGN"):
                self.next_non_space()
                is_assign = nxt.typ == "ASSIGN"
                decl.append(v.val)
            elif nxt.typ == "COMMA":
                if context != "range":
                    self.error(nxt.pos, "too many declarations in %s" % context)
                self.next_non_space()
                v2 = self.expect("VARIABLE", "range declaration")
                op = self.next_non_space()
                if op.typ not in ("DECLARE", "ASSIGN"):
                    self.error(op.pos, "range can only initialize variables")
                is_assign = op.typ == "ASSIGN"
                decl = [v.val, v2.val]
            else:
                self.idx = save
        if decl:
            if is_assign:
                for d in decl:
                    if d not in self.vars:
                        self.error(pos, "undefined variable %s" % go_quote(d))
            else:
                self.vars.extend(decl)
        cmds = []
        while True:
            it = self.next_non_space()
            if it.typ == end:
                break
            if it.typ in _OPERAND_START:
                self.idx -= 1
                cmds.append(self.command())
                continue
            self.error(it.pos, "unexpected %s in %s" % (it.describe(), context))
        if not cmds:
            self.error(pos, "missing value for %s" % context)
        for i, cmd in enumerate(cmds[1:], start=2):
            first = cmd.args[0]
            if isinstance(first, (LiteralNode, DotNode, NilNode, PipeNode)):
                self.error(cmd.pos, "non executable command in pipeline stage %d" % i)
        return PipeNode(pos, decl, is_assign, cmds)

    def command(self):
        pos = self.peek_non_space().pos
        args = []
        while True:
            self.peek_non_space()
            op = self.operand()
            if op is not None:
                args.append(op)
            it = self.next()
            if it.typ == "SPACE":
                continue
            if it.typ in ("RIGHT", "RPAREN"):
                self.idx -= 1
                break
            if it.typ == "PIPE":
                break
            self.error(it.pos, "unexpected %s in operand" % it.describe())
        if not args:
            self.error(pos, "empty command")
        return CommandNode(pos, args)

    def operand(self):
        node = self.term()
        if node is None:
            return None
        if self.peek().typ == "FIELD":
            idents = []
            while self.peek().typ == "FIELD":
                idents.append(self.next().val)
            if isinstance(node, FieldNode):
                node = FieldNode(node.pos, node.idents + idents)
            elif isinstance(node, VariableNode):
                node = VariableNode(node.pos, node.name, node.idents + idents)
            elif isinstance(node, (LiteralNode, DotNode, NilNode)):
                self.error(node.pos, "unexpected . after term %s" % go_quote(str(node)))
            else:
                node = ChainNode(node.pos, node, idents)
        return node

    def term(self):
        it = self.next_non_space()
        t = it.typ
        if t == "IDENT":
            if it.val not in self.func_names:
                self.error(it.pos, "function %s not defined" % go_quote(it.val))
            return IdentNode(it.pos, it.val)
        if t == "DOT":
            return DotNode(it.pos)
        if t == "NIL":
            return NilNode(it.pos)
        if t == "VARIABLE":
            name = it.val
            if name not in self.vars:
                self.error(it.pos, "undefined variable %s" % go_quote(name))
            return VariableNode(it.pos, name, [])
        if t == "FIELD":
            return FieldNode(it.pos, [it.val])
        if t == "BOOL":
            return LiteralNode(it.pos, it.val, "bool")
        if t == "NUMBER":
            return LiteralNode(it.pos, it.val, "number")
        if t == "STRING":
            return LiteralNode(it.pos, it.val, "string")
        if t == "LPAREN":
            return self.pipeline("parenthesized pipeline", "RPAREN")
        self.idx -= 1
        return None


# --------------------------------------------------------------------------
# Go values: types, truth, formatting
# --------------------------------------------------------------------------

class GoStruct:
    """A Go struct value: named fields, methods (name -> FuncSpec), optional String()."""

    def __init__(self, type_name, fields, methods=None, stringer=None):
        self.go_type = type_name
        self.fields = fields
        self.go_methods = methods or {}
        self.stringer = stringer


class VersionSet(list):
    """Helm's chartutil.VersionSet: a string slice with Has(apiVersion)."""

    def __init__(self, items):
        super().__init__(items)
        self.go_methods = {"Has": FuncSpec(lambda v: v in self, ["str"])}


def go_kind(v):
    if v is None:
        return "nil"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "string"
    if isinstance(v, dict):
        return "map"
    if isinstance(v, (list, tuple)):
        return "slice"
    if isinstance(v, GoStruct):
        return "struct"
    return "other"


def go_type_name(v):
    k = go_kind(v)
    return {"nil": "<nil>", "bool": "bool", "int": "int", "float": "float64",
            "string": "string", "map": "map[string]interface {}",
            "slice": "[]interface {}"}.get(k, getattr(v, "go_type", type(v).__name__))


def go_truth(v):
    """text/template's truth: empty values (false, 0, "", nil, empty list/map) are false."""
    k = go_kind(v)
    if k == "nil":
        return False
    if k in ("bool", "int", "float"):
        return v != 0
    if k in ("string", "map", "slice"):
        return len(v) > 0
    return True


def _shortest(f):
    """(digits, dp): abs(f) == 0.<digits> * 10**dp with the shortest round-trip digits."""
    r = repr(abs(f))
    d = Decimal(r)
    sign, digits, exp = d.normalize().as_tuple()
    digs = "".join(map(str, digits))
    if digs == "0":
        return "0", 1
    return digs, len(digs) + exp


def go_format_float(f, mode="v"):
    """Go float64 formatting: mode "v" = fmt %v (strconv 'g', shortest), "json" = encoding/json."""
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    neg = f < 0 or (f == 0 and math.copysign(1, f) < 0)
    if f == 0:
        return "-0" if neg else "0"
    digs, dp = _shortest(f)
    exp = dp - 1
    if mode == "json":
        a = abs(f)
        use_e = a < 1e-6 or a >= 1e21
    else:
        use_e = exp < -4 or exp >= 6  # strconv 'g' with the shortest precision
    if use_e:
        mant = digs[0] + ("." + digs[1:] if len(digs) > 1 else "")
        e = exp
        if mode == "json":
            es = ("-" if e < 0 else "+") + str(abs(e))
        else:
            es = ("-" if e < 0 else "+") + ("%02d" % abs(e))
        s = mant + "e" + es
    else:
        if dp <= 0:
            s = "0." + "0" * (-dp) + digs
        elif dp >= len(digs):
            s = digs + "0" * (dp - len(digs))
        else:
            s = digs[:dp] + "." + digs[dp:]
    return ("-" if neg else "") + s


def go_quote(s):
    """strconv.Quote."""
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch in "\a\b\f\n\r\t\v":
            out.append({"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n",
                        "\r": "\\r", "\t": "\\t", "\v": "\\v"}[ch])
        elif ch == " " or (o >= 0x20 and ch.isprintable()):
            out.append(ch)
        elif o < 0x80:
            out.append("\\x%02x" % o)
        elif o < 0x10000:
            out.append("\\u%04x" % o)
        else:
            out.append("\\U%08x" % o)
    out.append('"')
    return "".join(out)


def go_sprint(v):
    """fmt's %v of one value."""
    k = go_kind(v)
    if k == "nil":
        return "<nil>"
    if k == "bool":
        return "true" if v else "false"
    if k == "int":
        return str(v)
    if k == "float":
        return go_format_float(v)
    if k == "string":
        return v
    if k == "slice":
        return "[" + " ".join(go_sprint(e) for e in v) + "]"
    if k == "map":
        return "map[" + " ".join("%s:%s" % (key, go_sprint(v[key])) for key in sorted(v)) + "]"
    if k == "struct":
        if v.stringer:
            return v.stringer()
        return "{" + " ".join(go_sprint(x) for x in v.fields.values()) + "}"
    return str(v)


def go_sprint_args(args):
    """fmt.Sprint: spaces between operands when neither is a string."""
    out = []
    prev_string = True
    for i, a in enumerate(args):
        is_string = isinstance(a, str)
        if i > 0 and not is_string and not prev_string:
            out.append(" ")
        out.append(go_sprint(a))
        prev_string = is_string
    return "".join(out)


def strval(v):
    """Sprig's strval."""
    if isinstance(v, str):
        return v
    return go_sprint(v)


_FMT_RE = re.compile(r"%([-+# 0]*)(\*|\d+)?(?:\.(\*|\d+)?)?([a-zA-Z%])")


def _bad_verb(verb, a):
    if a is None:
        return "%%!%s(<nil>)" % verb
    return "%%!%s(%s=%s)" % (verb, go_type_name(a), go_sprint(a))


def _pad(s, flags, width, numeric=False):
    if width is None or len(s) >= width:
        return s
    if "-" in flags:
        return s + " " * (width - len(s))
    if "0" in flags and numeric:
        sign = s[0] if s[:1] in "+-" else ""
        body = s[len(sign):]
        return sign + "0" * (width - len(s)) + body
    return " " * (width - len(s)) + s


def _fmt_one(verb, flags, width, prec, a):
    k = go_kind(a)
    if verb == "v":
        if "+" in flags and k == "int":
            return _pad(("+" if a >= 0 else "") + str(a), flags, width, True)
        return _pad(go_sprint(a), flags, width)
    if verb == "T":
        return _pad(go_type_name(a), flags, width)
    if k == "slice" and verb not in ("T",):
        return "[" + " ".join(_fmt_one(verb, flags, None, prec, e) for e in a) + "]"
    if k == "map" and verb not in ("T",):
        return "map[" + " ".join("%s:%s" % (_fmt_one(verb, flags, None, prec, key),
                                            _fmt_one(verb, flags, None, prec, a[key]))
                                 for key in sorted(a)) + "]"
    if verb == "s":
        if k == "string":
            s = a if prec is None else a[:prec]
            return _pad(s, flags, width)
        if k == "struct" and a.stringer:
            return _pad(a.stringer(), flags, width)
        return _bad_verb(verb, a)
    if verb == "q":
        if k == "string":
            return _pad(go_quote(a), flags, width)
        if k == "int":
            return _pad("'" + go_quote(chr(a))[1:-1].replace("'", "\\'") + "'", flags, width)
        return _bad_verb(verb, a)
    if verb == "d":
        if k == "int":
            s = str(a)
            if "+" in flags and a >= 0:
                s = "+" + s
            return _pad(s, flags, width, True)
        return _bad_verb(verb, a)
    if verb in "xX":
        if k == "int":
            s = format(a, "x") if a >= 0 else "-" + format(-a, "x")
        elif k == "string":
            s = a.encode("utf-8").hex()
        else:
            return _bad_verb(verb, a)
        if "#" in flags and k == "int":
            s = ("-0x" + s[1:]) if s.startswith("-") else "0x" + s
        return _pad(s.upper() if verb == "X" else s, flags, width, True)
    if verb in "oOb":
        if k != "int":
            return _bad_verb(verb, a)
        return _pad(format(a, "o" if verb in "oO" else "b"), flags, width, True)
    if verb == "t":
        if k == "bool":
            return _pad("true" if a else "false", flags, width)
        return _bad_verb(verb, a)
    if verb == "c":
        if k == "int":
            return _pad(chr(a), flags, width)
        return _bad_verb(verb, a)
    if verb in "feEgG":
        if k != "float":
            return _bad_verb(verb, a)
        if verb in "gG" and prec is None:
            s = go_format_float(a)
            if verb == "G":
                s = s.upper()
        else:
            p = 6 if prec is None else prec
            s = format(a, "%s.%d%s" % ("+" if "+" in flags else "", p, verb))
        if "+" in flags and not s.startswith(("-", "+")):
            s = "+" + s
        return _pad(s, flags, width, True)
    return "%%!%s(%s=%s)" % (verb, go_type_name(a), go_sprint(a))


def go_sprintf(fmt_str, args):
    """fmt.Sprintf for the common verbs (%v %s %d %q %x %X %o %b %t %c %f %e %g %T %%)."""
    out = []
    pos = 0
    argi = 0
    for m in _FMT_RE.finditer(fmt_str):
        out.append(fmt_str[pos:m.start()])
        pos = m.end()
        flags, width, prec, verb = m.group(1), m.group(2), m.group(3), m.group(4)
        if verb == "%":
            out.append("%")
            continue
        if width == "*":
            width = args[argi] if argi < len(args) else None
            argi += 1
        if prec == "*":
            prec = args[argi] if argi < len(args) else None
            argi += 1
        width = int(width) if width is not None else None
        prec = int(prec) if prec is not None else (0 if m.group(0).find(".") >= 0 and
                                                   m.group(3) is None else None)
        if argi >= len(args):
            out.append("%%!%s(MISSING)" % verb)
            continue
        out.append(_fmt_one(verb, flags, width, prec, args[argi]))
        argi += 1
    out.append(fmt_str[pos:])
    if argi < len(args):
        extra = ", ".join("%s=%s" % (go_type_name(a), go_sprint(a)) if a is not None
                          else "<nil>" for a in args[argi:])
        out.append("%!(EXTRA " + extra + ")")
    return "".join(out)


# --------------------------------------------------------------------------
# Functions
# --------------------------------------------------------------------------

class FuncSpec:
    """A template function: callable, parameter types, variadic type.

    Types: "any", "str", "int", "bool", "map". needs_state: the callable gets the
    executing State first. lazy: and/or, arguments evaluated one by one.
    """

    def __init__(self, fn, params, variadic=None, needs_state=False, lazy=None):
        self.fn, self.params, self.variadic = fn, params, variadic
        self.needs_state, self.lazy = needs_state, lazy


_GO_PARAM = {"str": "string", "int": "int", "bool": "bool",
             "map": "map[string]interface {}", "any": "interface {}"}


def check_type(value, typ):
    """validateType: returns the value for a parameter of type typ or raises FuncError."""
    if typ == "any":
        return value
    if value is None:
        if typ == "map":
            return {}
        raise FuncError("invalid value; expected %s" % _GO_PARAM[typ])
    k = go_kind(value)
    ok = ((typ == "str" and k == "string") or (typ == "int" and k == "int") or
          (typ == "bool" and k == "bool") or (typ == "map" and k == "map"))
    if not ok:
        raise FuncError("wrong type for value; expected %s; got %s"
                        % (_GO_PARAM[typ], go_type_name(value)))
    return value


# --------------------------------------------------------------------------
# Executor
# --------------------------------------------------------------------------

class Engine:
    """A set of named templates (Trees) and the function table; executes them."""

    MAX_DEPTH = 100

    def __init__(self, funcs):
        self.funcs = funcs
        self.trees = {}
        self.depth = 0

    def parse(self, name, src):
        trees = Parser(name, src, self.funcs).parse()
        self.trees.update(trees)
        return trees

    def execute(self, name, data):
        tree = self.trees.get(name)
        if tree is None:
            raise FuncError("template: no template %s associated with template \"gotpl\""
                            % go_quote(name))
        return self.execute_tree(tree, data)

    def execute_tree(self, tree, data):
        if self.depth >= self.MAX_DEPTH:
            raise _DepthError("rendering template has a nested reference name: %s: exceeded "
                            "max template depth (%d)" % (tree.name, self.MAX_DEPTH))
        self.depth += 1
        try:
            st = State(self, tree, data)
            st.walk(data, tree.root)
            return "".join(st.out)
        finally:
            self.depth -= 1


class State:
    """Execution state of one template: output buffer, variable stack, current node."""

    def __init__(self, engine, tree, data):
        self.engine, self.tree = engine, tree
        self.vars = [["$", data]]
        self.out = []
        self.node = tree.root

    # ---- errors
    def errorf(self, msg, node=None):
        node = node or self.node
        loc = self.tree.location(node.pos if node is not None else 0)
        raise TemplateError("template: %s: executing %s at <%s>: %s"
                            % (loc, go_quote(self.tree.name), node, msg))

    # ---- variables
    def push(self, name, value):
        self.vars.append([name, value])

    def mark(self):
        return len(self.vars)

    def pop(self, mark):
        del self.vars[mark:]

    def set_var(self, name, value):
        for entry in reversed(self.vars):
            if entry[0] == name:
                entry[1] = value
                return
        self.errorf("undefined variable: %s" % name)

    def set_top_var(self, n, value):
        self.vars[len(self.vars) - n][1] = value

    def var_value(self, name):
        for entry in reversed(self.vars):
            if entry[0] == name:
                return entry[1]
        self.errorf("undefined variable: %s" % name)

    # ---- walking
    def walk(self, dot, node):
        self.node = node
        if isinstance(node, ListNode):
            for n in node.nodes:
                self.walk(dot, n)
        elif isinstance(node, TextNode):
            self.out.append(node.text)
        elif isinstance(node, ActionNode):
            val = self.eval_pipeline(dot, node.pipe)
            if not node.pipe.decl:
                self.node = node
                self.out.append(self.printable(val))
        elif isinstance(node, IfNode):
            mark = self.mark()
            val = self.eval_pipeline(dot, node.pipe)
            if go_truth(val):
                self.walk(val if node.kind == "with" else dot, node.body)
            elif node.else_body is not None:
                self.walk(dot, node.else_body)
            self.pop(mark)
        elif isinstance(node, RangeNode):
            self.walk_range(dot, node)
        elif isinstance(node, TemplateNode):
            data = self.eval_pipeline(dot, node.pipe) if node.pipe else None
            tree = self.engine.trees.get(node.name)
            if tree is None:
                self.errorf("template: no template %s associated with template %s"
                            % (go_quote(node.name), go_quote(self.tree.name)))
            try:
                self.out.append(self.engine.execute_tree(tree, data))
            except FuncError as e:
                self.errorf(str(e), node)
        elif isinstance(node, BreakNode):
            raise _BreakLoop()
        elif isinstance(node, ContinueNode):
            raise _ContinueLoop()
        else:
            self.errorf("unknown node %r" % node)

    def walk_range(self, dot, node):
        mark = self.mark()
        val = self.eval_pipeline(dot, node.pipe)
        inner = self.mark()
        ndecl = len(node.pipe.decl)
        self.node = node

        def one(index, elem):
            if ndecl:
                if node.pipe.is_assign:
                    if ndecl == 1:
                        self.set_var(node.pipe.decl[0], elem)
                    else:
                        self.set_var(node.pipe.decl[0], index)
                        self.set_var(node.pipe.decl[1], elem)
                else:
                    self.set_top_var(1, elem)
                    if ndecl > 1:
                        self.set_top_var(2, index)
            try:
                self.walk(elem, node.body)
            except _ContinueLoop:
                pass
            finally:
                self.pop(inner)

        k = go_kind(val)
        items = None
        if k == "slice":
            items = list(enumerate(val))
        elif k == "map":
            items = [(key, val[key]) for key in sorted(val)]
        elif k == "int":
            if ndecl > 1:
                self.errorf("can't use %s to iterate over more than one variable" % val, node)
            items = [(i, i) for i in range(val)]
        elif k == "nil":
            items = []
        else:
            self.errorf("range can't iterate over %s" % go_sprint(val), node)
        try:
            for index, elem in items:
                one(index, elem)
        except _BreakLoop:
            pass
        if not items and node.else_body is not None:
            self.walk(dot, node.else_body)
        self.pop(mark)

    def printable(self, val):
        if val is None:
            return "<no value>"
        return go_sprint(val)

    # ---- evaluation
    def eval_pipeline(self, dot, pipe):
        if pipe is None:
            return None
        val = MISSING
        for cmd in pipe.cmds:
            val = self.eval_command(dot, cmd, val)
        for name in pipe.decl:
            if pipe.is_assign:
                self.set_var(name, val)
            else:
                self.push(name, val)
        return val

    def not_a_function(self, args, final):
        if len(args) > 1 or final is not MISSING:
            self.errorf("can't give argument to non-function %s" % args[0])

    def eval_command(self, dot, cmd, final):
        self.node = cmd
        first = cmd.args[0]
        if isinstance(first, FieldNode):
            return self.eval_field_chain(dot, dot, first, first.idents, cmd.args, final,
                                         from_dot=True)
        if isinstance(first, ChainNode):
            return self.eval_chain(dot, first, cmd.args, final)
        if isinstance(first, IdentNode):
            return self.eval_function(dot, first, cmd.args, final)
        if isinstance(first, PipeNode):
            self.not_a_function(cmd.args, final)
            return self.eval_pipeline(dot, first)
        if isinstance(first, VariableNode):
            return self.eval_variable(dot, first, cmd.args, final)
        self.not_a_function(cmd.args, final)
        if isinstance(first, DotNode):
            return dot
        if isinstance(first, NilNode):
            self.errorf("nil is not a command")
        return first.value

    def eval_variable(self, dot, node, args, final):
        value = self.var_value(node.name)
        if not node.idents:
            self.not_a_function([node] + list(args[1:]), final)
            return value
        return self.eval_field_chain(dot, value, node, node.idents, args, final)

    def eval_chain(self, dot, chain, args, final):
        if isinstance(chain.node, PipeNode):
            recv = self.eval_pipeline(dot, chain.node)
        else:
            recv = self.eval_arg(dot, "any", chain.node)
        return self.eval_field_chain(dot, recv, chain, chain.idents, args, final)

    def eval_field_chain(self, dot, receiver, node, idents, args, final, from_dot=False):
        n = len(idents)
        for i in range(n - 1):
            receiver = self.eval_field(dot, idents[i], node, [], MISSING, receiver,
                                       in_chain=i > 0)
        return self.eval_field(dot, idents[-1], node, args, final, receiver,
                               in_chain=n > 1)

    def eval_field(self, dot, name, node, args, final, receiver, in_chain):
        has_args = len(args) > 1 or final is not MISSING
        if receiver is None:
            if in_chain:
                self.errorf("nil pointer evaluating interface {}.%s" % name, node)
            return None
        methods = getattr(receiver, "go_methods", None)
        if methods and name in methods:
            return self.eval_call(dot, methods[name], name, args, final, node)
        if isinstance(receiver, GoStruct):
            if name in receiver.fields:
                if has_args:
                    self.errorf("%s has arguments but cannot be invoked as function" % name,
                                node)
                return receiver.fields[name]
            self.errorf("can't evaluate field %s in type %s" % (name, receiver.go_type), node)
        if isinstance(receiver, dict):
            if has_args:
                self.errorf("%s is not a method but has arguments" % name, node)
            return receiver.get(name)
        self.errorf("can't evaluate field %s in type %s" % (name, go_type_name(receiver)), node)

    def eval_function(self, dot, ident, args, final):
        spec = self.engine.funcs.get(ident.name)
        if spec is None:
            self.errorf("%s is not a defined function" % go_quote(ident.name), ident)
        # the whole call is the error context: <include "x" .>
        return self.eval_call(dot, spec, ident.name, args, final,
                              CommandNode(ident.pos, list(args)))

    def eval_call(self, dot, spec, name, args, final, node):
        arg_nodes = list(args[1:])
        nargs = len(arg_nodes) + (final is not MISSING)
        nparams = len(spec.params)
        if spec.variadic is not None:
            if nargs < nparams:
                self.errorf("wrong number of args for %s: want at least %d got %d"
                            % (name, nparams, nargs), node)
        elif nargs != nparams:
            self.errorf("wrong number of args for %s: want %d got %d" % (name, nparams, nargs),
                        node)

        def ptype(i):
            return spec.params[i] if i < nparams else spec.variadic

        if spec.lazy is not None:
            # and / or: stop at the first deciding argument.
            want_truth = spec.lazy == "or"
            val = None
            for i, a in enumerate(arg_nodes):
                val = self.eval_arg(dot, "any", a)
                if go_truth(val) == want_truth:
                    return val
            if final is not MISSING:
                val = final
            return val
        vals = []
        for i, a in enumerate(arg_nodes):
            vals.append(self.eval_arg(dot, ptype(i), a))
        if final is not MISSING:
            try:
                vals.append(check_type(final, ptype(len(arg_nodes))))
            except FuncError as e:
                self.errorf(str(e), node)
        self.node = node
        try:
            if spec.needs_state:
                return spec.fn(self, *vals)
            return spec.fn(*vals)
        except _DepthError:
            raise
        except _ExecFail as e:
            raise TemplateError("execution error at (%s): %s"
                                % (self.tree.location(node.pos), e))
        except FuncError as e:
            self.errorf("error calling %s: %s" % (name, e), node)
        except TemplateError as e:
            self.errorf("error calling %s: %s" % (name, e), node)
        except RecursionError:
            self.errorf("error calling %s: recursion too deep" % name, node)

    def eval_arg(self, dot, typ, node):
        self.node = node
        try:
            if isinstance(node, DotNode):
                return check_type(dot, typ)
            if isinstance(node, NilNode):
                if typ in ("any", "map"):
                    return None if typ == "any" else {}
                self.errorf("cannot assign nil to %s" % _GO_PARAM[typ], node)
            if isinstance(node, FieldNode):
                return check_type(self.eval_field_chain(dot, dot, node, node.idents, [node],
                                                        MISSING), typ)
            if isinstance(node, VariableNode):
                return check_type(self.eval_variable(dot, node, [node], MISSING), typ)
            if isinstance(node, PipeNode):
                return check_type(self.eval_pipeline(dot, node), typ)
            if isinstance(node, IdentNode):
                return check_type(self.eval_function(dot, node, [node], MISSING), typ)
            if isinstance(node, ChainNode):
                return check_type(self.eval_chain(dot, node, [node], MISSING), typ)
        except FuncError as e:
            self.errorf(str(e), node)
        # literal
        v = node.value
        if typ == "any":
            return v
        if typ == "str":
            if node.kind != "string":
                self.errorf("expected string; found %s" % node, node)
            return v
        if typ == "int":
            if node.kind != "number" or not isinstance(v, int):
                self.errorf("expected integer; found %s" % node, node)
            return v
        if typ == "bool":
            if node.kind != "bool":
                self.errorf("expected bool; found %s" % node, node)
            return v
        self.errorf("can't handle %s for arg of type %s" % (node, _GO_PARAM[typ]), node)


# --------------------------------------------------------------------------
# YAML / JSON in Go's manner
# --------------------------------------------------------------------------

class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys."""


def _construct_strict_mapping(loader, node):
    seen = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            continue
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark,
                "found duplicate key %r" % (key,), key_node.start_mark)
        seen[key] = True
    loader.flatten_mapping(node)
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                              _construct_strict_mapping)


def _yaml_key(k):
    if isinstance(k, str):
        return k
    if isinstance(k, bool):
        return "true" if k else "false"
    if k is None:
        return "null"
    return go_sprint(k)


def from_yaml_data(obj, numbers_as_float=True):
    """PyYAML data -> the shapes helm sees after YAML -> JSON: string keys, float64 numbers."""
    if isinstance(obj, dict):
        return {_yaml_key(k): from_yaml_data(v, numbers_as_float) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [from_yaml_data(v, numbers_as_float) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, int):
        return float(obj) if numbers_as_float else obj
    if isinstance(obj, float):
        return obj
    if isinstance(obj, (datetime.date, datetime.datetime)):
        return obj.isoformat()
    if isinstance(obj, bytes):
        return obj.decode("utf-8", errors="replace")
    return str(obj)


def load_yaml_text(text, what):
    """Parses one YAML document (mapping or empty) strictly; raises TemplateError."""
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as e:
        raise TemplateError("failed to parse %s: %s" % (what, " ".join(str(e).split())))
    return data


def _plain(v):
    """Values for toYaml / toJson: integral float64 as JSON would write them, structs as maps."""
    k = go_kind(v)
    if k == "map":
        return {key: _plain(v[key]) for key in v}
    if k == "slice":
        return [_plain(e) for e in v]
    if k == "float" and math.isfinite(v) and v == int(v) and abs(v) < 1e21:
        return int(v)
    if k == "struct":
        return _plain(getattr(v, "plain", None) or v.fields)
    return v


class _GoYamlDumper(yaml.SafeDumper):
    """Block style, sorted keys, double quotes where quoting is needed, no aliases."""

    def choose_scalar_style(self):
        style = super().choose_scalar_style()
        return '"' if style == "'" else style

    def ignore_aliases(self, data):
        return True


def _represent_str(dumper, data):
    if "\n" in data:
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", data)


_GoYamlDumper.add_representer(str, _represent_str)


def to_yaml(v):
    """Helm's toYaml: block YAML, keys sorted, without the final newline."""
    try:
        out = yaml.dump(_plain(v), Dumper=_GoYamlDumper, default_flow_style=False,
                        sort_keys=True, allow_unicode=True, width=80)
    except yaml.YAMLError:
        return ""
    if out.endswith("\n...\n"):
        out = out[:-4]
    return out[:-1] if out.endswith("\n") else out


_JSON_ESC = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t",
             "\b": "\\b", "\f": "\\f", "<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
             "\u2028": "\\u2028", "\u2029": "\\u2029"}


def _json_str(s):
    out = ['"']
    for ch in s:
        e = _JSON_ESC.get(ch)
        if e is not None:
            out.append(e)
        elif ord(ch) < 0x20:
            out.append("\\u%04x" % ord(ch))
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def go_json(v):
    """encoding/json Marshal (compact, sorted keys, HTML-safe escapes)."""
    k = go_kind(v)
    if k == "nil":
        return "null"
    if k == "bool":
        return "true" if v else "false"
    if k == "int":
        return str(v)
    if k == "float":
        if not math.isfinite(v):
            raise FuncError("json: unsupported value: %s" % go_format_float(v))
        return go_format_float(v, "json")
    if k == "string":
        return _json_str(v)
    if k == "slice":
        return "[" + ",".join(go_json(e) for e in v) + "]"
    if k == "map":
        return "{" + ",".join(_json_str(key) + ":" + go_json(v[key]) for key in sorted(v)) + "}"
    if k == "struct":
        return go_json(getattr(v, "plain", None) or v.fields)
    raise FuncError("json: unsupported type %s" % go_type_name(v))


# --------------------------------------------------------------------------
# Sprig / Helm function implementations
# --------------------------------------------------------------------------

class _ExecFail(FuncError):
    """required / fail: reported as helm's "execution error at (file:line:col): msg"."""


def _to_int64(v):
    """spf13/cast ToInt64 as Sprig uses it (errors -> 0)."""
    k = go_kind(v)
    if k == "bool":
        return 1 if v else 0
    if k == "int":
        return v
    if k == "float":
        return int(v) if math.isfinite(v) else 0
    if k == "string":
        s = v
        m = re.fullmatch(r"([+-]?[0-9]+)\.0*", s)
        if m:
            s = m.group(1)
        try:
            return int(s.replace("_", ""), 0) if not re.fullmatch(r"[+-]?0[0-7]+", s) \
                else int(s, 8)
        except ValueError:
            return 0
    return 0


def _to_float64(v):
    k = go_kind(v)
    if k == "bool":
        return 1.0 if v else 0.0
    if k in ("int", "float"):
        return float(v)
    if k == "string":
        try:
            return float(v)
        except ValueError:
            return 0.0
    return 0.0


def _empty(v):
    return not go_truth(v)


def _f_default(d, *given):
    if not given or _empty(given[0]):
        return d
    return given[0]


def _f_coalesce(*vals):
    for v in vals:
        if not _empty(v):
            return v
    return None


def _f_required(msg, val):
    if val is None or (isinstance(val, str) and val == ""):
        raise _ExecFail(msg)
    return val


def _f_fail(msg):
    raise _ExecFail(msg)


def _f_indent(n, s):
    pad = " " * n
    return pad + s.replace("\n", "\n" + pad)


def _f_trunc(c, s):
    if c < 0 and len(s) + c > 0:
        return s[len(s) + c:]
    if c >= 0 and len(s) > c:
        return s[:c]
    return s


def _f_cat(*vals):
    return " ".join(go_sprint(v) for v in vals if v is not None)


def _f_eq(a, *bs):
    if not bs:
        raise FuncError("missing argument for comparison")
    for b in bs:
        if a is None or b is None:
            if a is None and b is None:
                return True
            continue
        ka, kb = go_kind(a), go_kind(b)
        if ka != kb:
            raise FuncError("incompatible types for comparison")
        if ka in ("map", "slice"):
            raise FuncError("non-comparable type %s: %s" % (go_sprint(b), go_type_name(b)))
        if (a is b) if ka == "struct" else (a == b):
            return True
    return False


def _f_lt(a, b):
    ka, kb = go_kind(a), go_kind(b)
    if ka not in ("int", "float", "string") or kb not in ("int", "float", "string"):
        raise FuncError("invalid type for comparison")
    if ka != kb:
        raise FuncError("incompatible types for comparison")
    return a < b


def _f_le(a, b):
    return _f_lt(a, b) or _f_eq(a, b)


def _f_len(v):
    k = go_kind(v)
    if k == "nil":
        raise FuncError("len of nil pointer")
    if k == "string":
        return len(v.encode("utf-8"))
    if k in ("slice", "map"):
        return len(v)
    raise FuncError("len of type %s" % go_type_name(v))


def _f_dict(*vals):
    out = {}
    for i in range(0, len(vals), 2):
        key = strval(vals[i])
        out[key] = vals[i + 1] if i + 1 < len(vals) else ""
    return out


def _f_get(d, key):
    return d[key] if key in d else ""


def _f_keys(*dicts):
    out = []
    for d in dicts:
        out.extend(d.keys())
    return sorted(out)


def _merge_into(dst, src):
    """mergo.Merge without overwrite: dst wins unless its value is empty; maps merge deeply."""
    for key, sval in src.items():
        if sval is None:
            continue  # mergo skips nil source values
        if key in dst and isinstance(dst[key], dict) and isinstance(sval, dict):
            _merge_into(dst[key], sval)
        elif key not in dst or _empty(dst[key]):
            dst[key] = sval
    return dst


def _f_merge(dst, *srcs):
    for s in srcs:
        _merge_into(dst, s)
    return dst


def _f_set(d, key, value):
    d[key] = value
    return d


def _f_join(sep, v):
    if isinstance(v, (list, tuple)):
        items = [strval(e) for e in v if e is not None]
    elif v is None:
        items = []
    else:
        items = [strval(v)]
    return sep.join(items)


def _f_split_list(sep, s):
    if sep == "":
        return list(s)
    return s.split(sep)


def _f_index(item, *indexes):
    for idx in indexes:
        k = go_kind(item)
        if k == "nil":
            raise FuncError("index of untyped nil" if idx is indexes[0] else "index of nil pointer")
        if k == "map":
            if not isinstance(idx, str):
                raise FuncError("value has type %s; should be string" % go_type_name(idx))
            item = item.get(idx)
        elif k in ("slice", "string"):
            if go_kind(idx) != "int":
                raise FuncError("cannot index slice/array with type %s" % go_type_name(idx))
            seq = item.encode("utf-8") if k == "string" else item
            if idx < 0 or idx >= len(seq):
                raise FuncError("index out of range: %d" % idx)
            item = seq[idx]
        else:
            raise FuncError("can't index item of type %s" % go_type_name(item))
    return item


def _f_div(a, b):
    a, b = _to_int64(a), _to_int64(b)
    if b == 0:
        raise FuncError("runtime error: integer divide by zero")
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def _f_mul(a, *vals):
    r = _to_int64(a)
    for v in vals:
        r *= _to_int64(v)
    return r


def _f_max(a, *vals):
    r = _to_int64(a)
    for v in vals:
        r = max(r, _to_int64(v))
    return r


def _f_min(a, *vals):
    r = _to_int64(a)
    for v in vals:
        r = min(r, _to_int64(v))
    return r


def _f_from_yaml(s):
    try:
        data = yaml.load(s, Loader=_StrictLoader)
    except yaml.YAMLError as e:
        return {"Error": " ".join(str(e).split())}
    if data is None:
        return {}
    if not isinstance(data, dict):
        return {"Error": "error unmarshaling JSON: json: cannot unmarshal %s into Go value of "
                         "type map[string]interface {}" % type(data).__name__}
    return from_yaml_data(data)


_SEMVER_RE = re.compile(r"v?(\d+|[xX*])(?:\.(\d+|[xX*]))?(?:\.(\d+|[xX*]))?"
                        r"(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?")


def _semver(text, strict=True):
    m = _SEMVER_RE.fullmatch(text.strip())
    if not m:
        raise FuncError("invalid semantic version %s" % go_quote(text))
    parts = [m.group(1), m.group(2), m.group(3)]
    wild = [p is None or p in "xX*" for p in parts]
    nums = [0 if w else int(p) for p, w in zip(parts, wild)]
    return nums, wild, m.group(4)


def _f_semver_compare(constraint, version):
    """Masterminds semver constraints: = != > >= < <= ~ ^, wildcards, ',' / space AND, || OR."""
    ver, _, ver_pre = _semver(version)
    vt = tuple(ver)

    def check(op, text):
        nums, wild, pre = _semver(text)
        if ver_pre and not pre:
            return False  # prereleases only match constraints that mention one
        low = tuple(nums)
        if op in ("", "="):
            if any(wild):
                n = wild.index(True)
                return vt[:n] == low[:n]
            return vt == low and (ver_pre or "") == (pre or "")
        if op == "!=":
            return not check("=", text)
        if op == ">":
            if any(wild):
                n = wild.index(True)
                return vt[:n] > low[:n]
            return vt > low
        if op == ">=":
            return vt >= low
        if op == "<":
            return vt < low
        if op == "<=":
            if any(wild):
                n = wild.index(True)
                return vt[:n] <= low[:n]
            return vt <= low
        if op == "~":
            n = 1 if wild[1] or text.count(".") == 0 else 2
            return vt >= low and vt[:n] == low[:n]
        if op == "^":
            n = 1 if low[0] > 0 else (2 if low[1] > 0 else 3)
            return vt >= low and vt[:n] == low[:n]
        raise FuncError("improper constraint: %s" % constraint)

    for group in constraint.split("||"):
        terms = re.findall(r"(!=|>=|=>|<=|=<|>|<|=|~>?|\^)?\s*(v?[0-9xX*][0-9A-Za-z.+*-]*)",
                           group)
        if not terms:
            raise FuncError("improper constraint: %s" % constraint)
        ok = True
        for op, text in terms:
            op = {"=>": ">=", "=<": "<=", "~>": "~"}.get(op, op)
            if not check(op, text):
                ok = False
                break
        if ok:
            return True
    return False


def _f_include(state, name, data):
    return state.engine.execute(name, data)


def _f_tpl(state, text, data):
    engine = state.engine
    name = state.tree.name
    trees = Parser(name, text, engine.funcs).parse()
    saved = engine.trees
    engine.trees = dict(saved)
    engine.trees.update({k: v for k, v in trees.items() if k != name})
    try:
        return engine.execute_tree(trees[name], data)
    finally:
        engine.trees = saved


def build_funcs():
    """The function table: Go builtins and the supported Sprig / Helm functions."""
    A, S, I, B, M = "any", "str", "int", "bool", "map"

    def f(fn, params, variadic=None, **kw):
        return FuncSpec(fn, params, variadic, **kw)

    return {
        # Helm
        "include": f(_f_include, [S, A], needs_state=True),
        "tpl": f(_f_tpl, [S, A], needs_state=True),
        "required": f(_f_required, [S, A]),
        "fail": f(_f_fail, [S]),
        "toYaml": f(to_yaml, [A]),
        "toJson": f(lambda v: _safe_json(v), [A]),
        "fromYaml": f(_f_from_yaml, [S]),
        # Sprig defaults / logic
        "default": f(_f_default, [A], A),
        "empty": f(_empty, [A]),
        "coalesce": f(_f_coalesce, [], A),
        "ternary": f(lambda vt, vf, c: vt if c else vf, [A, A, B]),
        # strings
        "quote": f(lambda *a: " ".join(go_quote(strval(x)) for x in a if x is not None), [], A),
        "squote": f(lambda *a: " ".join("'%s'" % strval(x) for x in a if x is not None), [], A),
        "nindent": f(lambda n, s: "\n" + _f_indent(n, s), [I, S]),
        "indent": f(_f_indent, [I, S]),
        "trim": f(lambda s: s.strip(), [S]),
        "trimSuffix": f(lambda a, s: s[:-len(a)] if a and s.endswith(a) else s, [S, S]),
        "trimPrefix": f(lambda a, s: s[len(a):] if s.startswith(a) else s, [S, S]),
        "trunc": f(_f_trunc, [I, S]),
        "lower": f(lambda s: s.lower(), [S]),
        "upper": f(lambda s: s.upper(), [S]),
        "replace": f(lambda old, new, s: s.replace(old, new), [S, S, S]),
        "printf": f(lambda fmt_s, *a: go_sprintf(fmt_s, list(a)), [S], A),
        "print": f(lambda *a: go_sprint_args(a), [], A),
        "cat": f(_f_cat, [], A),
        "contains": f(lambda sub, s: sub in s, [S, S]),
        "hasPrefix": f(lambda p, s: s.startswith(p), [S, S]),
        "hasSuffix": f(lambda p, s: s.endswith(p), [S, S]),
        "toString": f(strval, [A]),
        "b64enc": f(lambda s: base64.b64encode(s.encode("utf-8")).decode("ascii"), [S]),
        "sha256sum": f(lambda s: hashlib.sha256(s.encode("utf-8")).hexdigest(), [S]),
        "join": f(_f_join, [S, A]),
        "splitList": f(_f_split_list, [S, S]),
        "semverCompare": f(_f_semver_compare, [S, S]),
        # Go builtins
        "eq": f(_f_eq, [A], A),
        "ne": f(lambda a, b: not _f_eq(a, b), [A, A]),
        "lt": f(_f_lt, [A, A]),
        "le": f(_f_le, [A, A]),
        "gt": f(lambda a, b: not _f_le(a, b), [A, A]),
        "ge": f(lambda a, b: not _f_lt(a, b), [A, A]),
        "and": f(None, [A], A, lazy="and"),
        "or": f(None, [A], A, lazy="or"),
        "not": f(lambda v: not go_truth(v), [A]),
        "len": f(_f_len, [A]),
        "index": f(_f_index, [A], A),
        # lists and dicts
        "list": f(lambda *a: list(a), [], A),
        "dict": f(_f_dict, [], A),
        "get": f(_f_get, [M, S]),
        "hasKey": f(lambda d, k: k in d, [M, S]),
        "keys": f(_f_keys, [], M),
        "merge": f(_f_merge, [M], M),
        "set": f(_f_set, [M, S, A]),
        # numbers
        "int": f(_to_int64, [A]),
        "int64": f(_to_int64, [A]),
        "float64": f(_to_float64, [A]),
        "add": f(lambda *a: sum(_to_int64(x) for x in a), [], A),
        "sub": f(lambda a, b: _to_int64(a) - _to_int64(b), [A, A]),
        "mul": f(_f_mul, [A], A),
        "div": f(_f_div, [A, A]),
        "max": f(_f_max, [A], A),
        "min": f(_f_min, [A], A),
    }


def _safe_json(v):
    try:
        return go_json(v)
    except FuncError:
        return ""  # Sprig's toJson swallows marshalling errors


SUPPORTED_FUNCTIONS = sorted(build_funcs())


# --------------------------------------------------------------------------
# Values: -f files, --set, coalescing with the chart's values, schema
# --------------------------------------------------------------------------

def _merge_maps(a, b):
    """Helm's mergeMaps for user values: b wins, nested maps merge."""
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge_maps(out[k], v)
        else:
            out[k] = v
    return out


def _coalesce_tables(dst, src):
    """Chart defaults (src) under user values (dst); a user null deletes the default."""
    for key, sval in src.items():
        if key in dst:
            dval = dst[key]
            if dval is None:
                del dst[key]
            elif isinstance(dval, dict) and isinstance(sval, dict):
                _coalesce_tables(dval, sval)
        else:
            dst[key] = copy.deepcopy(sval)
    return dst


def _typed_set_value(text, as_string):
    """strvals typedVal: true/false/null (any case), integers not starting with 0, else string."""
    if as_string:
        return text
    low = text.lower()
    if low == "true":
        return True
    if low == "false":
        return False
    if low == "null":
        return None
    if text == "0":
        return 0
    if text and text[0] != "0" and re.fullmatch(r"[+-]?[0-9]+", text):
        v = int(text)
        if -(1 << 63) <= v < (1 << 63):
            return v
    return text


def _split_unescaped(text, sep, brace_aware=False):
    parts, cur, depth, i = [], [], 0, 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            cur.append(text[i:i + 2])
            i += 2
            continue
        if brace_aware and c == "{":
            depth += 1
        elif brace_aware and c == "}":
            depth -= 1
        if c == sep and depth <= 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


def _unescape(text):
    return re.sub(r"\\(.)", r"\1", text)


def parse_set(expr, base, as_string=False):
    """Applies one --set expression (a.b=v,c[0]=w,d={x,y}) to the user values map."""
    for assignment in _split_unescaped(expr, ",", brace_aware=True):
        if assignment == "":
            continue
        key_val = _split_unescaped(assignment, "=")
        if len(key_val) < 2:
            raise TemplateError("failed parsing --set data: key %s has no value"
                                % go_quote(_unescape(assignment)))
        key_text, raw = key_val[0], "=".join(key_val[1:])
        if raw.startswith("{") and raw.endswith("}") and not as_string:
            value = [_typed_set_value(_unescape(x), False)
                     for x in _split_unescaped(raw[1:-1], ",") if x != ""]
        else:
            value = _typed_set_value(_unescape(raw), as_string)
        path = []
        for seg in _split_unescaped(key_text, "."):
            m = re.fullmatch(r"(.*?)((?:\[\d+\])*)", seg, re.S)
            name, idx = _unescape(m.group(1)), m.group(2)
            if name == "" and not idx:
                raise TemplateError("failed parsing --set data: empty key in %s"
                                    % go_quote(assignment))
            if name:
                path.append(name)
            path.extend(int(n) for n in re.findall(r"\[(\d+)\]", idx))
        _set_path(base, path, value, assignment)
    return base


def _set_path(node, path, value, assignment):
    for i, step in enumerate(path):
        last = i == len(path) - 1
        nxt = None if last else path[i + 1]
        fresh = {} if isinstance(nxt, str) else []
        if isinstance(step, int):
            if not isinstance(node, list):
                raise TemplateError("failed parsing --set data: %s is not a list"
                                    % go_quote(assignment))
            while len(node) <= step:
                node.append(None)
            if last:
                node[step] = value
            else:
                if not isinstance(node[step], (dict if isinstance(nxt, str) else list)):
                    node[step] = fresh
                node = node[step]
        else:
            if last:
                node[step] = value
            else:
                if not isinstance(node.get(step), (dict if isinstance(nxt, str) else list)):
                    node[step] = fresh
                node = node[step]


def _jsonify(v):
    """Values as JSON sees them (integral float64 -> integer) for schema validation."""
    if isinstance(v, dict):
        return {k: _jsonify(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_jsonify(x) for x in v]
    if isinstance(v, float) and math.isfinite(v) and v == int(v):
        return int(v)
    return v


def _json_path(path):
    out = ""
    for p in path:
        out += "[%d]" % p if isinstance(p, int) else ("." if out else "") + str(p)
    return out or "(root)"


def validate_values(values, schema, chart_name):
    """Raises TemplateError naming every value the JSON schema rejects."""
    try:
        import jsonschema
        from jsonschema import validators
    except ImportError:
        raise TemplateError("values.schema.json needs python3-jsonschema "
                            "(sudo apt-get install -y python3-jsonschema)")
    cls = validators.validator_for(schema, default=jsonschema.Draft7Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as e:
        raise TemplateError("%s/values.schema.json is not a valid schema: %s"
                            % (chart_name, e.message))
    errors = sorted(cls(schema).iter_errors(_jsonify(values)),
                    key=lambda e: (_json_path(e.absolute_path), e.message))
    if errors:
        raise TemplateError(
            "values don't meet the specifications of the schema(s) in the following "
            "chart(s): %s: %s" % (chart_name, "; ".join(
                "%s: %s" % (_json_path(e.absolute_path), e.message) for e in errors)))


# --------------------------------------------------------------------------
# Chart loading
# --------------------------------------------------------------------------

_CHART_FIELDS = ["Name", "Home", "Sources", "Version", "Description", "Keywords",
                 "Maintainers", "Icon", "APIVersion", "Condition", "Tags", "AppVersion",
                 "Deprecated", "Annotations", "KubeVersion", "Dependencies", "Type"]
_STRING_FIELDS = {"Name", "Home", "Version", "Description", "Icon", "APIVersion",
                  "Condition", "Tags", "AppVersion", "KubeVersion", "Type"}


def _chart_field_name(key):
    return "APIVersion" if key == "apiVersion" else key[:1].upper() + key[1:]


def _helmignore_rules(chart_dir):
    path = os.path.join(chart_dir, ".helmignore")
    rules = []
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if line and not line.startswith("#"):
                    rules.append(line)
    return rules


def _ignored(rel, is_dir, rules):
    base = rel.rsplit("/", 1)[-1]
    hit = False
    for rule in rules:
        neg = rule.startswith("!")
        pat = rule[1:] if neg else rule
        dir_only = pat.endswith("/")
        pat = pat.rstrip("/").lstrip("/")
        if dir_only and not is_dir:
            continue
        target = rel if "/" in pat else base
        if fnmatch.fnmatchcase(target, pat):
            hit = not neg
    return hit


class Chart:
    """A chart directory: metadata, default values, schema, templates and other files."""

    def __init__(self, chart_dir):
        self.dir = os.path.abspath(chart_dir)
        meta_path = os.path.join(self.dir, "Chart.yaml")
        if not os.path.isfile(meta_path):
            raise TemplateError("%s: Chart.yaml file is missing" % chart_dir)
        with open(meta_path, encoding="utf-8") as fh:
            meta = load_yaml_text(fh.read(), meta_path)
        if not isinstance(meta, dict):
            raise TemplateError("%s: Chart.yaml is not a mapping" % meta_path)
        for key in ("apiVersion", "name", "version"):
            if not meta.get(key):
                raise TemplateError("%s: chart.metadata.%s is required" % (meta_path, key))
        self.meta = from_yaml_data(meta, numbers_as_float=False)
        self.name = str(self.meta["name"])
        self.values = {}
        vpath = os.path.join(self.dir, "values.yaml")
        if os.path.isfile(vpath):
            with open(vpath, encoding="utf-8") as fh:
                data = load_yaml_text(fh.read(), vpath)
            if data is not None and not isinstance(data, dict):
                raise TemplateError("%s: values must be a mapping" % vpath)
            self.values = from_yaml_data(data or {})
        self.schema = None
        spath = os.path.join(self.dir, "values.schema.json")
        if os.path.isfile(spath):
            with open(spath, encoding="utf-8") as fh:
                try:
                    self.schema = json.load(fh)
                except ValueError as e:
                    raise TemplateError("%s: %s" % (spath, e))
        rules = _helmignore_rules(self.dir)
        self.templates, self.files = {}, {}
        for root, dirs, names in os.walk(self.dir):
            rel_root = os.path.relpath(root, self.dir).replace(os.sep, "/")
            rel_root = "" if rel_root == "." else rel_root + "/"
            dirs[:] = sorted(d for d in dirs if not _ignored(rel_root + d, True, rules)
                             and not (d.startswith(".") and rel_root.startswith("templates/")))
            for n in sorted(names):
                rel = rel_root + n
                if _ignored(rel, False, rules):
                    continue
                with open(os.path.join(root, n), "rb") as fh:
                    content = fh.read().decode("utf-8", errors="replace")
                if rel.startswith("templates/"):
                    if not n.startswith("."):
                        self.templates["%s/%s" % (self.name, rel)] = content
                elif rel in ("Chart.yaml", "values.yaml", "values.schema.json", "Chart.lock",
                             "requirements.yaml", "requirements.lock") or \
                        rel.startswith("charts/"):
                    continue
                else:
                    self.files[rel] = content

    def metadata_struct(self):
        fields = {}
        for name in _CHART_FIELDS:
            fields[name] = "" if name in _STRING_FIELDS else (False if name == "Deprecated"
                                                              else None)
        for key, val in self.meta.items():
            name = _chart_field_name(key)
            if name in fields:
                fields[name] = strval(val) if name in _STRING_FIELDS and val is not None \
                    else val
        st = GoStruct("*chart.Metadata", fields)
        st.plain = self.meta
        return st


class FilesMap(dict):
    """Helm's .Files: Get, GetBytes, Glob, Lines, AsConfig, AsSecrets."""

    def __init__(self, files):
        super().__init__(files)
        self.go_methods = {
            "Get": FuncSpec(lambda p: self.get(p, ""), ["str"]),
            "GetBytes": FuncSpec(lambda p: self.get(p, ""), ["str"]),
            "Glob": FuncSpec(self._glob, ["str"]),
            "Lines": FuncSpec(self._lines, ["str"]),
            "AsConfig": FuncSpec(lambda: to_yaml({k.rsplit("/", 1)[-1]: v
                                                  for k, v in self.items()}), []),
            "AsSecrets": FuncSpec(lambda: to_yaml({
                k.rsplit("/", 1)[-1]: base64.b64encode(v.encode("utf-8")).decode("ascii")
                for k, v in self.items()}), []),
        }

    def _glob(self, pattern):
        rx = ""
        i = 0
        while i < len(pattern):
            c = pattern[i]
            if pattern.startswith("**", i):
                rx += ".*"
                i += 2
                continue
            rx += {"*": "[^/]*", "?": "[^/]"}.get(c, re.escape(c) if c not in "[]" else c)
            i += 1
        creg = re.compile(rx + r"\Z")
        return FilesMap({k: v for k, v in self.items() if creg.match(k)})

    def _lines(self, path):
        s = self.get(path)
        if not s:
            return []
        if s.endswith("\n"):
            s = s[:-1]
        return s.split("\n")


# Kubernetes 1.32 built-in API group/versions served by default, and their kinds.
K8S_132_APIS = {
    "v1": ["Binding", "ComponentStatus", "ConfigMap", "Endpoints", "Event", "LimitRange",
           "Namespace", "Node", "PersistentVolume", "PersistentVolumeClaim", "Pod",
           "PodTemplate", "ReplicationController", "ResourceQuota", "Secret", "Service",
           "ServiceAccount"],
    "admissionregistration.k8s.io/v1": ["MutatingWebhookConfiguration",
                                        "ValidatingAdmissionPolicy",
                                        "ValidatingAdmissionPolicyBinding",
                                        "ValidatingWebhookConfiguration"],
    "apiextensions.k8s.io/v1": ["CustomResourceDefinition"],
    "apiregistration.k8s.io/v1": ["APIService"],
    "apps/v1": ["ControllerRevision", "DaemonSet", "Deployment", "ReplicaSet", "StatefulSet"],
    "authentication.k8s.io/v1": ["SelfSubjectReview", "TokenReview"],
    "authorization.k8s.io/v1": ["LocalSubjectAccessReview", "SelfSubjectAccessReview",
                                "SelfSubjectRulesReview", "SubjectAccessReview"],
    "autoscaling/v1": ["HorizontalPodAutoscaler"],
    "autoscaling/v2": ["HorizontalPodAutoscaler"],
    "batch/v1": ["CronJob", "Job"],
    "certificates.k8s.io/v1": ["CertificateSigningRequest"],
    "coordination.k8s.io/v1": ["Lease"],
    "discovery.k8s.io/v1": ["EndpointSlice"],
    "events.k8s.io/v1": ["Event"],
    "flowcontrol.apiserver.k8s.io/v1": ["FlowSchema", "PriorityLevelConfiguration"],
    "networking.k8s.io/v1": ["Ingress", "IngressClass", "NetworkPolicy"],
    "node.k8s.io/v1": ["RuntimeClass"],
    "policy/v1": ["PodDisruptionBudget"],
    "rbac.authorization.k8s.io/v1": ["ClusterRole", "ClusterRoleBinding", "Role",
                                     "RoleBinding"],
    "scheduling.k8s.io/v1": ["PriorityClass"],
    "storage.k8s.io/v1": ["CSIDriver", "CSINode", "CSIStorageCapacity", "StorageClass",
                          "VolumeAttachment"],
}


def capabilities(api_versions=(), kube_version="v1.32.0"):
    """.Capabilities: built-in group/versions and group/version/Kind, plus api_versions."""
    versions = []
    for gv, kinds in K8S_132_APIS.items():
        versions.append(gv)
        versions.extend("%s/%s" % (gv, k) for k in kinds)
    for v in api_versions:
        versions.extend(x.strip() for x in v.split(",") if x.strip())
    m = re.fullmatch(r"v?(\d+)\.(\d+)(?:\.(\d+))?.*", kube_version)
    if not m:
        raise TemplateError("invalid kube version %s" % go_quote(kube_version))
    ver = kube_version if kube_version.startswith("v") else "v" + kube_version
    kv = GoStruct("chartutil.KubeVersion",
                  {"Version": ver, "Major": m.group(1), "Minor": m.group(2)},
                  methods={"String": FuncSpec(lambda: ver, []),
                           "GitVersion": FuncSpec(lambda: ver, [])},
                  stringer=lambda: ver)
    hv = GoStruct("version.BuildInfo", {"Version": "v3.16.2", "GitCommit": "",
                                        "GitTreeState": "", "GoVersion": "go1.22.7"})
    return GoStruct("*chartutil.Capabilities", {"APIVersions": VersionSet(versions),
                                                "KubeVersion": kv, "HelmVersion": hv})


def load_values(chart_dir, values_files=(), set_values=(), set_string_values=(),
                chart=None):
    """The values templates see: chart defaults <- -f files (in order) <- --set, validated."""
    chart = chart or Chart(chart_dir)
    user = {}
    for path in values_files:
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as e:
            raise TemplateError("open %s: %s" % (path, e.strerror))
        data = load_yaml_text(text, path)
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise TemplateError("failed to parse %s: values must be a mapping" % path)
        user = _merge_maps(user, from_yaml_data(data))
    for expr in set_values:
        parse_set(expr, user)
    for expr in set_string_values:
        parse_set(expr, user, as_string=True)
    values = _coalesce_tables(user, chart.values)
    if chart.schema is not None:
        validate_values(values, chart.schema, chart.name)
    return values


# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------

_DOC_SEP = re.compile(r"(?m)^---[ \t]*(?:#.*)?$")


def split_documents(text):
    """YAML documents of a rendered template, without empty and comment-only ones."""
    docs = []
    for doc in _DOC_SEP.split(text):
        lines = [ln for ln in doc.split("\n") if ln.strip()]
        if not lines or all(ln.lstrip().startswith("#") for ln in lines):
            continue
        doc = re.sub(r"^(?:[ \t]*\n)+", "", doc).rstrip()
        docs.append(doc)
    return docs


def _sort_for_parse(names):
    """Helm parses deeper paths first, then reverse-alphabetically: the first file wins."""
    return sorted(names, key=lambda n: (n.count("/"), n), reverse=True)


class Renderer:
    """A chart with its values, parsed into one template set, ready to render."""

    def __init__(self, chart_dir, values_files=(), set_values=(), api_versions=(),
                 release="lpdetr", namespace="default", set_string_values=(),
                 kube_version="v1.32.0"):
        self.chart = Chart(chart_dir)
        self.values = load_values(chart_dir, values_files, set_values, set_string_values,
                                  chart=self.chart)
        self.engine = Engine(build_funcs())
        for name in _sort_for_parse(self.chart.templates):
            self.engine.parse(name, self.chart.templates[name])
        self.top = {
            "Values": self.values,
            "Release": {"Name": release, "Namespace": namespace, "Service": "Helm",
                        "IsInstall": True, "IsUpgrade": False, "Revision": 1},
            "Chart": self.chart.metadata_struct(),
            "Capabilities": capabilities(api_versions, kube_version),
            "Files": FilesMap(self.chart.files),
            "Subcharts": {},
        }

    def render_template(self, name):
        data = dict(self.top)
        data["Template"] = {"Name": name, "BasePath": "%s/templates" % self.chart.name}
        text = self.engine.execute_tree(self.engine.trees[name], data)
        return text.replace("<no value>", "")

    def is_manifest(self, name):
        base = name.rsplit("/", 1)[-1]
        return not base.startswith("_") and not base.endswith(".tpl") and base != "NOTES.txt"

    def render_all(self):
        out = {}
        for name in sorted(self.chart.templates):
            base = name.rsplit("/", 1)[-1]
            if base.startswith("_") or base == "NOTES.txt":
                continue
            text = self.render_template(name)
            if not self.is_manifest(name):
                continue
            docs = split_documents(text)
            for i, doc in enumerate(docs):
                try:
                    data = yaml.load(doc, Loader=_StrictLoader)
                except yaml.YAMLError as e:
                    raise TemplateError("YAML parse error on %s (document %d): %s"
                                        % (name, i + 1, " ".join(str(e).split())))
                if not isinstance(data, dict):
                    raise TemplateError("YAML parse error on %s (document %d): a manifest "
                                        "must be a mapping, got %s"
                                        % (name, i + 1, type(data).__name__))
            if docs:
                out[name] = "\n---\n".join(docs) + "\n"
        return out

    def render_notes(self):
        name = "%s/templates/NOTES.txt" % self.chart.name
        if name not in self.chart.templates:
            return ""
        return self.render_template(name)


def render_chart(chart_dir, values_files=(), set_values=(), api_versions=(),
                 release="lpdetr", namespace="default", **kw):
    """{template path: rendered manifests} for the non-empty manifest templates."""
    return Renderer(chart_dir, values_files, set_values, api_versions, release,
                    namespace, **kw).render_all()


def render_notes(chart_dir, values_files=(), set_values=(), api_versions=(),
                 release="lpdetr", namespace="default", **kw):
    """The rendered templates/NOTES.txt ("" when the chart has none)."""
    return Renderer(chart_dir, values_files, set_values, api_versions, release,
                    namespace, **kw).render_notes()


def main(argv=None):
    ap = argparse.ArgumentParser(description="Render a Helm chart without helm "
                                             "(prints multi-document YAML like helm template).")
    ap.add_argument("chart")
    ap.add_argument("-f", "--values", action="append", default=[], metavar="VALUES")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VAL")
    ap.add_argument("--set-string", action="append", default=[], metavar="KEY=VAL")
    ap.add_argument("--api-versions", action="append", default=[], metavar="GROUP/VERSION")
    ap.add_argument("--release", default="lpdetr")
    ap.add_argument("--namespace", "-n", default="default")
    ap.add_argument("--kube-version", default="v1.32.0")
    ap.add_argument("--notes", action="store_true", help="print the rendered NOTES.txt only")
    args = ap.parse_args(argv)
    try:
        r = Renderer(args.chart, args.values, args.set, args.api_versions, args.release,
                     args.namespace, set_string_values=args.set_string,
                     kube_version=args.kube_version)
        if args.notes:
            sys.stdout.write(r.render_notes())
            return 0
        rendered = r.render_all()
    except TemplateError as e:
        print("Error: " + " ".join(str(e).split("\n")), file=sys.stderr)
        return 1
    for name, text in rendered.items():
        for doc in split_documents(text):
            sys.stdout.write("---\n# Source: %s\n%s\n" % (name, doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
