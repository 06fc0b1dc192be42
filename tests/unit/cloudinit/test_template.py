from __future__ import annotations

import pytest

from cos.cloudinit.template import TemplateError, render

DATA = {"Values": {"node": {"hostname": "h1"}, "os": {"name": "Debian"}}, "MachineID": "abcdef"}


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("{{ .Values.node.hostname }}", "h1"),
        ("{{.MachineID}}", "abcdef"),
        ("{{ .Values.node.hostname | upper }}", "H1"),
        ("{{ trunc 3 .MachineID }}", "abc"),
        ('{{ .Values.missing | default "x" }}', "x"),
        ("{{ .Values.missing }}", "<no value>"),
        ('{{ "lit" | upper | quote }}', '"LIT"'),
        ("a {{- .MachineID -}} b", "aabcdefb"),
        ("no template", "no template"),
        ('{{ replace "-" "_" "a-b" }}', "a_b"),
    ],
)
def test_supported_forms(text: str, want: str) -> None:
    assert render(text, DATA) == want


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{{ if .X }}y{{ end }}", "action 'if' is not supported"),
        ("{{ range .X }}{{ end }}", "action 'range'"),
        ("{{ sha256sum .MachineID }}", "function 'sha256sum' is not supported"),
        ("{{ trunc }}", "trunc"),
    ],
)
def test_unsupported_forms_are_clear_errors(text: str, match: str) -> None:
    with pytest.raises(TemplateError, match=match):
        render(text, DATA)
