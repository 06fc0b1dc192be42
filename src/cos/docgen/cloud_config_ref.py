"""docs/cloud-config.md from the cloud-config schema and the plugin registry."""

from __future__ import annotations

from cos.cloudinit.plugins.registry import PLUGINS
from cos.cloudinit.schema import (
    BOOT_STAGES,
    DOCUMENT,
    HOOK_STAGES,
    INSTALL,
    STEP,
    Doc,
    ListOf,
    MapOf,
    Obj,
    Scalar,
    T,
)

HEADER = (
    "<!-- Generated from src/cos/cloudinit/schema.py and plugins/registry.py by"
    " `make docs`; do not edit. -->\n"
)
CONDITIONS = (
    "if",
    "node",
    "only_os",
    "only_os_version",
    "only_arch",
    "only_service_manager",
    "if_files",
)


def _unwrap(t: T) -> tuple[T, str]:
    if isinstance(t, Doc):
        return t.inner, t.doc
    return t, ""


def _type(t: T) -> str:
    t, _ = _unwrap(t)
    if isinstance(t, Scalar):
        return {"str": "string", "int": "integer", "bool": "boolean"}[t.kind]
    if isinstance(t, ListOf):
        return f"list of {_type(t.item)}"
    if isinstance(t, MapOf):
        if t.keys:
            return f"mapping with keys {', '.join(f'`{k}`' for k in t.keys)} of {_type(t.value)}"
        return f"mapping of name → {_type(t.value)}"
    if isinstance(t, Obj):
        return f"[{t.title}](#{t.title})"
    return "?"


def _objects(t: T, seen: dict[str, Obj]) -> None:
    """Every mapping type reachable from t, by title, in first-use order."""
    t, _ = _unwrap(t)
    if isinstance(t, ListOf):
        _objects(t.item, seen)
    elif isinstance(t, MapOf):
        _objects(t.value, seen)
    elif isinstance(t, Obj) and t.title not in seen:
        seen[t.title] = t
        for f in t.fields.values():
            _objects(f, seen)


def _table(obj: Obj, out: list[str], status: dict[str, str] | None = None) -> None:
    head = "| key | type | description |"
    sep = "|---|---|---|"
    if status is not None:
        head, sep = "| key | type | runs | description |", "|---|---|---|---|"
    out += [head, sep]
    for key, t in obj.fields.items():
        inner, doc = _unwrap(t)
        if not doc and isinstance(inner, Obj):
            doc = str(inner.json.get("description", ""))
        cells = [f"`{key}`", _type(t)]
        if status is not None:
            cells.append(status.get(key, ""))
        cells.append(doc)
        out.append("| " + " | ".join(cells) + " |")
    out.append("")


def render() -> str:
    supported = {p.name for p in PLUGINS if p.supported}
    order = [p.name for p in PLUGINS if p.supported]
    status: dict[str, str] = {}
    for p in PLUGINS:
        for k in p.keys:
            status[k] = f"{order.index(p.name) + 1}." if p.name in supported else "not supported"
    for k in CONDITIONS:
        status[k] = "condition"
    status["after"] = "ordering"
    out = [
        HEADER,
        "# Cloud-config reference",
        "",
        "cos runs yip documents (the cloud-config format of cOS, Elemental and Kairos) and",
        "`#cloud-config` files. A document has a `name` and `stages`; each stage is a list",
        "of steps; a step holds conditions and the keys of one or more plugins. Files are",
        "read from `/system/oem` (the image), `/oem` (COS_OEM), `/usr/local/cloud-config`",
        "(COS_PERSISTENT), the `cloud-init-paths` of the config, `cos.setup=` /",
        "`elemental.setup=` on the kernel command line (file or URL), and the kernel",
        "command line itself in dot notation (`stages.boot[0].hostname=node1`); files of a",
        "directory run in lexical order. `cos cloud-init --schema` prints the JSON Schema",
        "([cloud-config.schema.json](cloud-config.schema.json)) for editors.",
        "",
        'An unknown key is a warning naming the file, line and column, with a "did you',
        'mean" hint; it is left out and the rest of its step runs (yip ignores such keys',
        "silently). A value of the wrong type or a YAML syntax error refuses that document",
        "only; the other files run. A file larger than 4 MiB, nested deeper than 64 levels",
        "or expanding to more than 200,000 values is refused; a FIFO, device or socket",
        "among the configs is skipped with a warning, never opened. A failing step is",
        "reported and the stage goes on. `cos cloud-init` and `cos run-stage` then exit",
        "with code 8 (see [exit codes](exit-codes.md)) when a document was refused or a",
        "step failed; at boot that marks the stage's unit failed (visible in",
        "`systemctl --failed` and on the console) and the boot goes on. `--strict` makes",
        "warnings errors (such documents do not run); `cos cloud-init --validate PATH…`",
        "checks files the same way and runs nothing, for linting configs in CI. The",
        "deliberate differences from yip are listed in",
        "[cloud-config-vs-yip.md](cloud-config-vs-yip.md). Strings marked templated take",
        "Go-template expressions such as",
        "`{{ .MachineID }}`, `{{ trunc 4 .MachineID }}`, `{{ .Values.os.name }}`,",
        "`{{ .Values.node.hostname }}`.",
        "",
        "```yaml",
        "name: example",
        "stages:",
        "  boot:",
        "    - name: admin user",
        "      users:",
        '        admin: {passwd: "$6$…", groups: [sudo], ssh_authorized_keys: ["github:me"]}',
        "    - name: motd",
        "      if: '[ -e /run/cos/active_mode ]'",
        "      files:",
        '        - {path: /etc/motd, permissions: 0644, content: "{{ .Values.os.name }}"}',
        "```",
        "",
        "## Stages",
        "",
        "Each stage `NAME` runs `NAME.before`, `NAME` and `NAME.after`, in that order.",
        "`cos run-stage NAME` runs one from the default paths; `cos cloud-init -s NAME",
        "FILE…` runs one from the files given (default stage: `default`).",
        "",
        "### At boot",
        "",
        "| stage | when |",
        "|---|---|",
        *[f"| `{k}` | {v} |" for k, v in BOOT_STAGES.items()],
        "",
        "The units of `fs`, `boot`, `network` and `reconcile` are not started when no",
        "cloud-config can name their stage (`/usr/libexec/cos-stage-wanted`, their",
        "`ExecCondition`): no `cos.setup=` on the command line, no `cloud-init-paths` in",
        "the config, and no file under the default paths that is a `#cloud-config` or",
        "has the stage's name as a word. This saves a Python start per stage on most",
        "boots; `cos logs` lists such a stage as not started. The initrd's shell layout",
        "looks for `fs` and `boot` already and leaves markers their units check, so",
        "then not even the shell check starts.",
        "",
        "### Hooks of the commands",
        "",
        "`before-*` and `after-*` run on the machine running the command; `*-chroot` hooks",
        "run inside the new system tree (with `/dev`, `/proc` and `/sys` bound in), reading",
        "also that tree's own `/system/oem`. build-disk's runs on the build machine in a",
        "sandbox: namespaces of its own (a network only with `build-hooks-network`), a root",
        "holding the tree (with its own `/proc`, a minimal `/dev`, `/sys` read-only) and,",
        "read-only, `/usr`, cos and the hook files, nothing else of the build machine; its",
        "steps cannot mount, make device nodes or load modules. build-disk and",
        "build-iso read their hooks from",
        "`--cloud-init` files and `cloud-init-paths`; install, upgrade and reset from the",
        "default paths of the running system (install also from its `--cloud-init` files).",
        "A failing hook is reported and the command goes on.",
        "",
        "| stage | when |",
        "|---|---|",
        *[f"| `{k}` | {v} |" for k, v in HOOK_STAGES.items()],
        "",
        "## Document",
        "",
    ]
    _table(DOCUMENT, out)
    out += [
        "## step",
        "",
        "Conditions are checked first (`node`, `if`, `only_os`, `only_os_version`,",
        "`only_arch`, `only_service_manager`, `if_files`); a step whose condition fails",
        "is skipped. Then every plugin key present runs, in the order of",
        "the *runs* column (yip's order, whatever the order in the file); a failing plugin",
        "does not stop the others. `after` makes a step wait for the named steps of the",
        "same document; without it steps run in file order.",
        "",
    ]
    _table(STEP, out, status)
    out += [
        "## install",
        "",
        "Read by `cos live-install` (cos-live-install.service) when a live ISO boots: with",
        "`auto: true` (as in Kairos) it installs to `device` unattended. Without it the",
        "section is not acted on: a `device` alone never wipes a disk, and live media only",
        "run live. With `auto: true`, a section without `device` is an error. Kairos",
        "installer keys cos does not use (`grub_options`, `bundles`, `partitions`…) are",
        "warnings, as are Elemental's `elemental:` settings.",
        "",
    ]
    _table(INSTALL, out)
    seen: dict[str, Obj] = {}
    _objects(STEP, seen)
    out += ["## Types of the step keys", ""]
    for title, obj in seen.items():
        if title == "step":
            continue
        out += [f"### {title}", ""]
        if "description" in obj.json:
            out += [str(obj.json["description"]), ""]
        _table(obj, out)
    return "\n".join(out)
