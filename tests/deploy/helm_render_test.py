#!/usr/bin/python3
"""Unit tests of helm_render.py, the helm-free chart renderer.

Each test builds a small chart in a temporary directory and checks the
rendered text against what Go's text/template, Sprig and Helm 3 produce for
the same input (expected values written from those semantics, not taken from
the renderer). Runs as
  /usr/bin/python3 -m unittest tests/deploy/helm_render_test.py   (repo root)
  /usr/bin/python3 tests/deploy/helm_render_test.py
"""
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import unittest

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import helm_render  # noqa: E402
from helm_render import TemplateError  # noqa: E402

RENDERER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "helm_render.py")

CHART_YAML = """\
apiVersion: v2
name: demo
version: 1.2.3
appVersion: "4.5"
description: test chart
"""


class ChartCase(unittest.TestCase):
    """Creates a chart directory per test; t() renders one template."""

    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.dir = os.path.join(self._tmp.name, "demo")
        os.makedirs(os.path.join(self.dir, "templates"))
        self.write("Chart.yaml", CHART_YAML)

    def tearDown(self):
        self._tmp.cleanup()

    def write(self, rel, text):
        path = os.path.join(self.dir, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
        return path

    def values_file(self, name, text):
        path = os.path.join(self._tmp.name, name)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
        return path

    def render(self, **kw):
        return helm_render.render_chart(self.dir, **kw)

    def t(self, body, values="", name="t.yaml", **kw):
        """Renders templates/<name> holding `body` with values.yaml `values`; returns its text."""
        self.write("values.yaml", values)
        self.write("templates/" + name, body)
        r = helm_render.Renderer(self.dir, **kw)
        return r.render_template("demo/templates/" + name)

    def assertFails(self, body, *fragments, values="", **kw):
        with self.assertRaises(TemplateError) as cm:
            self.t(body, values, **kw)
        for f in fragments:
            self.assertIn(f, str(cm.exception))
        return str(cm.exception)


class SyntaxTest(ChartCase):
    def test_trim_markers_remove_all_adjacent_whitespace(self):
        self.assertEqual(self.t("a  \n\t {{- \"b\" -}} \n\n  c\n"), "abc\n")
        self.assertEqual(self.t("a {{ \"b\" }} c"), "a b c")
        # "-3" without a space is a negative number, not a trim marker
        self.assertEqual(self.t("x {{-3}} y"), "x -3 y")

    def test_comments_with_and_without_trim(self):
        self.assertEqual(self.t("a {{/* one */}} b"), "a  b")
        self.assertEqual(self.t("a\n{{- /* multi\nline */ -}}\nb"), "ab")

    def test_string_literals_and_escapes(self):
        self.assertEqual(self.t('{{ "tab\\there\\n\\u00e9\\x41" }}'), "tab\there\n\u00e9A")
        self.assertEqual(self.t("{{ `raw\\n{{x}}` }}"), "raw\\n{{x}}")
        self.assertEqual(self.t("{{ 'a' }} {{ 0x10 }} {{ 1.5 }} {{ true }}"), "97 16 1.5 true")

    def test_if_else_if_else(self):
        body = ('{{ if eq .Values.mode "a" }}A{{ else if eq .Values.mode "b" }}B'
                '{{ else }}other{{ end }}')
        self.assertEqual(self.t(body, "mode: a\n"), "A")
        self.assertEqual(self.t(body, "mode: b\n"), "B")
        self.assertEqual(self.t(body, "mode: c\n"), "other")

    def test_with_rebinds_dot_and_empty_values_are_false(self):
        body = "{{ with .Values.x }}[{{ .name }}]{{ else }}none{{ end }}"
        self.assertEqual(self.t(body, "x:\n  name: n1\n"), "[n1]")
        for empty in ("x: {}\n", "x: []\n", "x: 0\n", 'x: ""\n', "x: false\n", "x: null\n", ""):
            self.assertEqual(self.t(body, empty), "none", empty)
        # $ is still the root inside with
        self.assertEqual(self.t("{{ with .Values.x }}{{ $.Release.Name }}{{ end }}",
                                "x: 1\n", release="rel"), "rel")

    def test_range_list_with_index_and_else(self):
        body = "{{ range $i, $v := .Values.l }}{{ $i }}={{ $v }};{{ else }}empty{{ end }}"
        self.assertEqual(self.t(body, "l: [a, b, c]\n"), "0=a;1=b;2=c;")
        self.assertEqual(self.t(body, "l: []\n"), "empty")
        self.assertEqual(self.t(body, ""), "empty")
        self.assertEqual(self.t("{{ range .Values.l }}<{{ . }}>{{ end }}", "l: [x, y]\n"),
                         "<x><y>")

    def test_range_map_in_sorted_key_order(self):
        body = "{{ range $k, $v := .Values.m }}{{ $k }}:{{ $v }},{{ end }}"
        self.assertEqual(self.t(body, "m:\n  zeta: 1\n  alpha: 2\n  mid: 3\n"),
                         "alpha:2,mid:3,zeta:1,")
        self.assertEqual(self.t("{{ range $v := .Values.m }}{{ $v }}{{ end }}",
                                "m: {b: x, a: y}\n"), "yx")

    def test_break_and_continue(self):
        body = ("{{ range .Values.l }}{{ if eq . 2 }}{{ continue }}{{ end }}"
                "{{ if eq . 4 }}{{ break }}{{ end }}{{ . }}{{ end }}")
        self.assertEqual(self.t(body, set_values=["l={1,2,3,4,5}"]), "13")

    def test_variable_scoping(self):
        # a variable declared inside a control structure ends with it
        self.assertFails("{{ if true }}{{ $x := 1 }}{{ end }}{{ $x }}",
                         'undefined variable "$x"', "demo/templates/t.yaml:1")
        # assignment with = changes the outer variable, also from inside range
        body = ("{{ $n := 0 }}{{ range .Values.l }}{{ $n = add $n 1 }}{{ end }}{{ $n }}"
                "{{ $s := \"out\" }}{{ if true }}{{ $s := \"in\" }}{{ $s }}{{ end }}{{ $s }}")
        self.assertEqual(self.t(body, "l: [a, b, c]\n"), "3inout")
        self.assertFails("{{ $y = 1 }}", 'undefined variable "$y"')

    def test_parenthesised_pipelines_and_piping_as_last_argument(self):
        self.assertEqual(self.t('{{ "abc" | printf "%s-%s" "x" }}'), "x-abc")
        self.assertEqual(self.t('{{ (printf "%s.%s" "a" "b") | upper }}'), "A.B")
        self.assertEqual(self.t("{{ (.Values.m).k }}", "m: {k: v}\n"), "v")
        self.assertEqual(self.t("{{ $m := .Values.m }}{{ $m.k }}", "m: {k: v}\n"), "v")


class FunctionsTest(ChartCase):
    def test_define_include_nindent_and_template(self):
        self.write("templates/_helpers.tpl", textwrap.dedent("""\
            {{- define "demo.labels" -}}
            app: {{ .Chart.Name }}
            release: {{ .Release.Name }}
            {{- end }}
            {{- define "demo.name" }}{{ .name }}{{ end }}
            """))
        body = ("metadata:\n  labels:\n    {{- include \"demo.labels\" . | nindent 4 }}\n"
                "x: {{ template \"demo.name\" .Values }}\n")
        self.assertEqual(self.t(body, "name: nm\n", release="r1"),
                         "metadata:\n  labels:\n    app: demo\n    release: r1\nx: nm\n")
        self.assertFails('{{ include "nope" . }}', "error calling include", '"nope"')

    def test_to_yaml_of_nested_values(self):
        values = textwrap.dedent("""\
            res:
              limits: {cpu: "2", nvidia.com/gpu: 1}
              requests: {memory: 1Gi}
            list: [b, {k: v}]
            empty: {}
            multi: "line1\\nline2\\n"
            flag: "true"
            """)
        out = self.t("{{ toYaml .Values }}", values)
        self.assertFalse(out.endswith("\n"))
        expected = {"res": {"limits": {"cpu": "2", "nvidia.com/gpu": 1},
                            "requests": {"memory": "1Gi"}},
                    "list": ["b", {"k": "v"}], "empty": {}, "multi": "line1\nline2\n",
                    "flag": "true"}
        self.assertEqual(yaml.safe_load(out), expected)
        self.assertIn("empty: {}", out)
        self.assertIn("nvidia.com/gpu: 1\n", out)  # an integral value, not 1.0
        lines = out.split("\n")
        self.assertEqual([ln for ln in lines if not ln.startswith(" ")][0], "empty: {}")  # sorted
        self.assertEqual(self.t("{{ toYaml .Values.none }}"), "null")
        nested = self.t("spec:\n  {{- toYaml .Values.res | nindent 2 }}", values)
        self.assertEqual(yaml.safe_load(nested)["spec"], expected["res"])

    def test_printf_verbs(self):
        out = self.t('{{ printf "%s|%d|%v|%q|%5s|%-3d|%05d|%t|%%" "a" 7 .Values.l "q\\"" '
                     '"ab" 4 42 true }}', "l: [1, x]\n")
        self.assertEqual(out, 'a|7|[1 x]|"q\\""|   ab|4  |00042|true|%')
        # values-file numbers are float64 in helm: %d does not format them
        self.assertEqual(self.t('{{ printf "%d" .Values.n }}', "n: 3\n"), "%!d(float64=3)")
        self.assertEqual(self.t('{{ printf "%d" (int .Values.n) }}', "n: 3\n"), "3")
        self.assertEqual(self.t('{{ printf "%s %s" "a" }}'), "a %!s(MISSING)")

    def test_default_and_empty(self):
        body = '{{ default "dflt" .Values.v }}'
        for empty in ('v: ""\n', "v: 0\n", "v: false\n", "v: null\n", "v: []\n", "v: {}\n", ""):
            self.assertEqual(self.t(body, empty), "dflt", empty)
        self.assertEqual(self.t(body, "v: given\n"), "given")
        self.assertEqual(self.t(body, "v: 5\n"), "5")
        self.assertEqual(self.t("{{ empty .Values.v }}/{{ empty .Values.w }}",
                                "v: 0\nw: [1]\n"), "true/false")
        self.assertEqual(self.t('{{ coalesce .Values.a .Values.b "c" }}', 'a: ""\nb: bee\n'),
                         "bee")
        self.assertEqual(self.t('{{ ternary "y" "n" .Values.enabled }}', "enabled: true\n"), "y")
        # YAML 1.1 (PyYAML and Go's yaml.v2 alike): the key `on` is the boolean true
        self.assertEqual(self.t('{{ index .Values "true" }}', "on: 1\n"), "1")

    def test_required_and_fail_report_message_and_location(self):
        msg = self.assertFails('a\n{{ required "image.tag is required" .Values.image.tag }}',
                               "image.tag is required", "demo/templates/t.yaml:2",
                               values="image: {}\n")
        self.assertTrue(msg.startswith("execution error at ("), msg)
        self.assertEqual(self.t('{{ required "x" .Values.v }}', "v: 0\n"), "0")
        self.assertFails('{{ if .Values.bad }}{{ fail "bad was set" }}{{ end }}',
                         "bad was set", values="bad: true\n")

    def test_unknown_function_names_function_file_and_line(self):
        msg = self.assertFails("ok\nok\n{{ if false }}{{ frobnicate 1 }}{{ end }}",
                               '"frobnicate"', "demo/templates/t.yaml:3", "not defined")
        self.assertNotIn("\n", msg)

    def test_and_or_return_deciding_value_and_short_circuit(self):
        self.assertEqual(self.t('{{ or .Values.a "" "third" }}', ""), "third")
        self.assertEqual(self.t('{{ and 1 "x" 0 "y" }}'), "0")
        self.assertEqual(self.t('{{ and 1 "x" }}'), "x")
        # the failing call is never evaluated
        self.assertEqual(self.t('{{ or true (fail "evaluated") }}'), "true")
        self.assertEqual(self.t('{{ and false (fail "evaluated") }}'), "false")
        self.assertEqual(self.t("{{ not .Values.a }}", ""), "true")

    def test_comparisons_follow_go_types(self):
        self.assertEqual(self.t('{{ eq .Values.s "b" "a" }} {{ ne 1 2 }} {{ lt 1 2 }} '
                                '{{ ge "b" "a" }} {{ le 2 2 }} {{ gt 1.5 2.5 }}', "s: a\n"),
                         "true true true true true false")
        # helm reads values-file numbers as float64: comparing with an int literal fails
        self.assertFails("{{ if eq .Values.replicas 1 }}x{{ end }}",
                         "incompatible types for comparison", values="replicas: 1\n")
        self.assertEqual(self.t("{{ eq (int .Values.replicas) 1 }}", "replicas: 1\n"), "true")
        # --set integers are int64 and compare with int literals
        self.assertEqual(self.t("{{ eq .Values.replicas 1 }}", set_values=["replicas=1"]),
                         "true")

    def test_nil_values_print_empty_and_nil_chains_fail(self):
        self.assertEqual(self.t("[{{ .Values.missing }}]", ""), "[]")
        self.assertFails("{{ .Values.a.b }}", "nil pointer evaluating interface {}.b",
                         "demo/templates/t.yaml:1")
        self.assertFails("{{ .Chart.Nope }}", "can't evaluate field Nope")

    def test_large_value_numbers_print_like_go_float64(self):
        self.assertEqual(self.t("{{ .Values.a }} {{ .Values.b }} {{ .Values.c }} {{ int .Values.b }}",
                                "a: 50051\nb: 67108864\nc: 0.5\n"),
                         "50051 6.7108864e+07 0.5 67108864")
        self.assertEqual(self.t("{{ toJson .Values.b }} {{ toString .Values.a }}",
                                "a: 50051\nb: 67108864\n"), "67108864 50051")

    def test_typed_parameters_are_checked(self):
        self.assertFails("{{ lower 3 }}", "expected string; found 3")
        self.assertFails('{{ indent .Values.n "x" }}', "wrong type for value; expected int; "
                         "got float64", values="n: 2\n")
        self.assertFails('{{ ternary 1 2 "yes" }}', "expected bool")
        self.assertFails('{{ upper "a" "b" }}', "wrong number of args for upper: want 1 got 2")

    def test_string_functions(self):
        self.assertEqual(self.t('{{ trunc 5 "abcdefgh" }}|{{ trunc -3 "abcdefgh" }}|'
                                '{{ "a-b-" | trimSuffix "-" }}|{{ trimPrefix "x" "xyz" }}|'
                                '{{ replace "." "-" "a.b.c" }}|{{ trim "  s \\n" }}|'
                                '{{ upper "ab" }}{{ lower "CD" }}|{{ contains "ell" "hello" }}|'
                                '{{ hasPrefix "he" "hello" }}|{{ hasSuffix "lo" "hello" }}'),
                         "abcde|fgh|a-b|yz|a-b-c|s|ABcd|true|true|true")
        self.assertEqual(self.t('{{ quote "a\\"b" 1 }} {{ squote "x" }} {{ .Values.x | quote }}',
                                'x: "y"\n'), '"a\\"b" "1" \'x\' "y"')
        self.assertEqual(self.t('{{ b64enc "hello" }} {{ sha256sum "abc" }}'),
                         "aGVsbG8= ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        self.assertEqual(self.t('{{ cat "a" 1 nil "b" }}|{{ print "a" 1 2 "b" }}|'
                                '{{ join "," .Values.l }}|{{ splitList "," "x,y" | len }}',
                                "l: [p, q]\n"), "a 1 b|a1 2b|p,q|2")
        self.assertEqual(self.t('{{ indent 2 "a\\nb" }}|{{ nindent 1 "c" }}'), "  a\n  b|\n c")

    def test_dict_list_merge_and_index(self):
        body = textwrap.dedent("""\
            {{- $d := dict "b" 2 "a" 1 -}}
            {{- $m := merge (dict "x" "left" "n" (dict "p" 1)) (dict "x" "right" "y" "r" "n" (dict "q" 2)) -}}
            {{ keys $d | join "," }}|{{ get $d "a" }}|{{ get $d "zz" }}|{{ hasKey $d "b" }}|
            {{- $m.x }}|{{ $m.y }}|{{ toJson $m.n }}|{{ index .Values.l 1 }}|{{ index .Values.m "k-1" }}|
            {{- $_ := set $d "c" 3 }}{{ len $d }}|{{ len (list 1 2 3) }}|{{ len "héllo" }}""")
        self.assertEqual(self.t(body, "l: [a, b]\nm: {k-1: v}\n"),
                         'a,b|1||true|left|r|{"p":1,"q":2}|b|v|3|3|6')
        self.assertFails("{{ index .Values.l 5 }}", "index out of range: 5", values="l: [a]\n")
        # Sprig's merge (mergo): an empty destination value (false, "", 0) is overwritten,
        # a nil source value is skipped
        self.assertEqual(self.t('{{ $m := merge (dict "a" false "b" "keep") (dict "a" true "b" nil '
                                '"c" nil) }}{{ $m.a }} {{ $m.b }} {{ hasKey $m "c" }}'),
                         "true keep false")

    def test_math_functions(self):
        self.assertEqual(self.t("{{ add 1 2 3 }} {{ sub 5 7 }} {{ mul 2 3 4 }} {{ div 7 2 }} "
                                "{{ div -7 2 }} {{ max 1 9 3 }} {{ min 4 2 8 }} "
                                "{{ add .Values.f 1 }} {{ float64 \"1.5\" }} {{ int \"12\" }}",
                                "f: 2.9\n"),
                         "6 -2 24 3 -3 9 2 3 1.5 12")
        self.assertFails("{{ div 1 0 }}", "integer divide by zero")

    def test_to_json_escapes_like_go(self):
        self.assertEqual(self.t("{{ toJson .Values }}", 'b: "<&>"\na: [1, 2.5, true, null]\n'),
                         '{"a":[1,2.5,true,null],"b":"\\u003c\\u0026\\u003e"}')

    def test_tpl_renders_a_string_as_template(self):
        self.assertEqual(self.t("{{ tpl .Values.t . }}",
                                't: "{{ .Release.Name }}-{{ .Values.x }}"\nx: y\n',
                                release="rr"), "rr-y")

    def test_semver_compare(self):
        self.assertEqual(self.t('{{ semverCompare ">=1.21-0" .Capabilities.KubeVersion.GitVersion }}'
                                ' {{ semverCompare "<1.30" .Capabilities.KubeVersion.Version }}'
                                ' {{ semverCompare "~1.32.0" "v1.32.4" }}'
                                ' {{ semverCompare "^1.2.0" "2.0.0" }}'),
                         "true false true false")


class HelmObjectsTest(ChartCase):
    def test_release_chart_template_objects(self):
        out = self.t("{{ .Release.Name }} {{ .Release.Namespace }} {{ .Release.Service }} "
                     "{{ .Release.IsInstall }} {{ .Release.Revision }} {{ .Chart.Name }} "
                     "{{ .Chart.Version }} {{ .Chart.AppVersion }} {{ .Template.Name }} "
                     "{{ .Template.BasePath }}", release="r", namespace="ns")
        self.assertEqual(out, "r ns Helm true 1 demo 1.2.3 4.5 demo/templates/t.yaml "
                              "demo/templates")

    def test_capabilities_api_versions_has(self):
        body = ('{{ .Capabilities.APIVersions.Has "apps/v1" }} '
                '{{ .Capabilities.APIVersions.Has "autoscaling/v2/HorizontalPodAutoscaler" }} '
                '{{ .Capabilities.APIVersions.Has "monitoring.coreos.com/v1" }} '
                '{{ .Capabilities.APIVersions.Has "extensions/v1beta1" }} '
                '{{ .Capabilities.KubeVersion.Major }}.{{ .Capabilities.KubeVersion.Minor }} '
                '{{ .Capabilities.KubeVersion }}')
        self.assertEqual(self.t(body), "true true false false 1.32 v1.32.0")
        self.assertEqual(self.t(body, api_versions=["monitoring.coreos.com/v1"]),
                         "true true true false 1.32 v1.32.0")

    def test_files_get_and_glob(self):
        self.write("files/a.txt", "alpha\nbeta\n")
        self.write("files/b.conf", "bee")
        body = ('{{ .Files.Get "files/a.txt" | trim }}|[{{ .Files.Get "files/none" }}]|'
                '{{ range $p, $_ := .Files.Glob "files/*.txt" }}{{ $p }}{{ end }}|'
                '{{ .Files.Lines "files/a.txt" | len }}')
        self.assertEqual(self.t(body), "alpha\nbeta|[]|files/a.txt|2")
        # templates and values are not part of .Files
        self.assertEqual(self.t('[{{ .Files.Get "values.yaml" }}]', "x: 1\n"), "[]")


class ValuesTest(ChartCase):
    def test_values_files_then_set_with_type_inference(self):
        self.write("values.yaml", "a: 0\nkeep: default\ndrop: gone\nnested:\n  x: 1\n  y: 2\n")
        self.write("templates/t.yaml", "x: 1\n")
        f1 = self.values_file("one.yaml", "a: from-one\nnested:\n  x: 10\n")
        f2 = self.values_file("two.yaml", "a: from-two\nlist: [1]\n")
        v = helm_render.load_values(self.dir, [f1, f2], [
            "a=from-set,b=true,c=007,d=-12,e=1.5,f=null,drop=null",
            "nested.y=20,list[1]=x,path.to.deep=v,esc=a\\,b"])
        self.assertEqual(v["a"], "from-set")
        self.assertIs(v["b"], True)
        self.assertEqual(v["c"], "007")
        self.assertEqual(v["d"], -12)
        self.assertIsInstance(v["d"], int)
        self.assertEqual(v["e"], "1.5")
        self.assertIsNone(v["f"])
        self.assertNotIn("drop", v)  # a null removes the chart default
        self.assertEqual(v["keep"], "default")
        self.assertEqual(v["nested"], {"x": 10.0, "y": 20})
        self.assertEqual(v["list"], [1.0, "x"])
        self.assertEqual(v["path"], {"to": {"deep": "v"}})
        self.assertEqual(v["esc"], "a,b")
        # -f only: the later file wins, with --set-string no inference
        v = helm_render.load_values(self.dir, [f1, f2], set_string_values=["s=true"])
        self.assertEqual(v["a"], "from-two")
        self.assertEqual(v["s"], "true")

    def test_schema_rejects_bad_values_with_their_paths(self):
        self.write("values.schema.json", json.dumps({
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "properties": {
                "replicas": {"type": "integer", "minimum": 1},
                "server": {"type": "object", "properties": {
                    "port": {"type": "integer"},
                    "tolerations": {"type": "array", "items": {"type": "object"}}}}}}))
        self.write("templates/t.yaml", "x: 1\n")
        self.write("values.yaml", "replicas: 2\nserver:\n  port: 50051\n")
        self.assertEqual(self.render(), {"demo/templates/t.yaml": "x: 1\n"})
        with self.assertRaises(TemplateError) as cm:
            self.render(set_values=["server.port=grpc", "replicas=0",
                                    "server.tolerations[0]=bad"])
        msg = str(cm.exception)
        self.assertIn("values don't meet the specifications of the schema", msg)
        self.assertIn("server.port: 'grpc' is not of type 'integer'", msg)
        self.assertIn("replicas: 0 is less than the minimum of 1", msg)
        self.assertIn("server.tolerations[0]:", msg)
        self.assertNotIn("\n", msg)


class OutputTest(ChartCase):
    def test_empty_documents_dropped_and_partials_not_output(self):
        self.write("values.yaml", "enabled: false\n")
        self.write("templates/a.yaml", "{{- if .Values.enabled }}\nkind: A\n{{- end }}\n")
        self.write("templates/b.yaml", "# only a comment\n---\n\n---\nkind: B\n---\n# c\n")
        self.write("templates/_p.yaml", "kind: Partial\n")
        self.write("templates/h.tpl", '{{ define "h" }}kind: H{{ end }}\n')
        self.write("templates/sub/c.yaml", '{{ include "h" . }}\n')
        self.write("templates/NOTES.txt", "Installed {{ .Release.Name }}.\n")
        out = self.render()
        self.assertEqual(out, {"demo/templates/b.yaml": "kind: B\n",
                               "demo/templates/sub/c.yaml": "kind: H\n"})
        out = self.render(set_values=["enabled=true"])
        self.assertEqual(out["demo/templates/a.yaml"], "kind: A\n")
        self.assertEqual(helm_render.render_notes(self.dir, release="x"), "Installed x.\n")

    def test_bad_yaml_output_is_an_error_naming_the_template(self):
        self.write("values.yaml", "")
        self.write("templates/bad.yaml", "a: 1\n  b: 2\n")
        with self.assertRaises(TemplateError) as cm:
            self.render()
        self.assertIn("YAML parse error on demo/templates/bad.yaml", str(cm.exception))
        self.write("templates/bad.yaml", "a: 1\na: 2\n")
        with self.assertRaises(TemplateError) as cm:
            self.render()
        self.assertIn("duplicate key", str(cm.exception))

    def test_cli_prints_sources_and_fails_with_one_line(self):
        self.write("values.yaml", "name: svc\n")
        self.write("templates/svc.yaml", "kind: Service\nname: {{ .Values.name }}\n"
                                         "---\nkind: ConfigMap\n")
        p = subprocess.run([sys.executable, RENDERER, self.dir, "--set", "name=other"],
                           capture_output=True, text=True)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stdout, "---\n# Source: demo/templates/svc.yaml\nkind: Service\n"
                                   "name: other\n---\n# Source: demo/templates/svc.yaml\n"
                                   "kind: ConfigMap\n")
        docs = list(yaml.safe_load_all(p.stdout))
        self.assertEqual([d["kind"] for d in docs], ["Service", "ConfigMap"])
        self.write("templates/svc.yaml", "x: {{ nosuch . }}\n")
        p = subprocess.run([sys.executable, RENDERER, self.dir],
                           capture_output=True, text=True)
        self.assertEqual(p.returncode, 1)
        self.assertEqual(p.stdout, "")
        self.assertEqual(len(p.stderr.strip().splitlines()), 1, p.stderr)
        self.assertIn('"nosuch"', p.stderr)
        self.assertIn("demo/templates/svc.yaml:1", p.stderr)


if __name__ == "__main__":
    unittest.main()
