"""--json event streams: the sink's format, steps, progress, errors and the one result."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cos import cli, events
from cos.cli import main
from cos.errors import ExitCode, ImageError
from cos.log import setup_logging, step
from cos.oci.progress import PullProgress
from tests.support import events as ev


@pytest.fixture(autouse=True)
def empty_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COS_CONFIG_DIR", str(tmp_path / "etc-cos"))
    monkeypatch.setenv("COS_CACHE_DIR", str(tmp_path / "cache"))


class Stream(io.StringIO):
    """stdout as a controller sees it: counts flushes and what was written before each."""

    def __init__(self) -> None:
        super().__init__()
        self.flushed: list[str] = []

    def flush(self) -> None:
        self.flushed.append(self.getvalue())
        super().flush()


@pytest.fixture
def sink() -> Iterator[Stream]:
    out = Stream()
    events.start("upgrade", {"system": "127.0.0.1:5000/os:v2", "force": True}, stream=out)
    yield out
    events.finish(0)


def lines(out: Stream) -> list[dict[str, Any]]:
    return [json.loads(x) for x in out.getvalue().splitlines()]


def test_one_compact_line_per_event_flushed_at_once(sink: Stream) -> None:
    events.emit("log", level="warning", message="two\nlines")
    text = sink.getvalue()
    assert text.endswith("\n") and text.count("\n") == 2  # start + log, newline escaped
    assert ": " not in text and ", " not in text  # compact separators
    # Each event was flushed as it was written: a follower sees it without waiting.
    assert [f.count("\n") for f in sink.flushed] == [1, 2]
    start, log = lines(sink)
    assert start["event"] == "start" and start["command"] == "upgrade"
    assert start["args"] == {"system": "127.0.0.1:5000/os:v2", "force": True}
    assert log["message"] == "two\nlines" and log["time"].endswith("Z")
    for e in (start, log):
        assert not ev.errors(e, ev.schema())


def test_off_by_default_and_after_the_result() -> None:
    out = Stream()
    events.emit("log", level="warning", message="nobody listens")
    events.start("reset", {}, stream=out)
    events.finish(0)
    events.finish(1)  # a second result is never written
    events.emit("log", level="warning", message="too late")
    kinds = [e["event"] for e in lines(out)]
    assert kinds == ["start", "result"] and not events.enabled()
    assert lines(out)[-1] == {**lines(out)[-1], "ok": True, "exit_code": 0}


def test_start_shows_only_safe_arguments() -> None:
    out = Stream()
    events.start(
        "pull-image",
        {
            "image": "docker://alice:pa55-w0rd@127.0.0.1:5000/os:v1",
            "dest": Path("/srv/tree"),
            "cosign_key": Path("/keys/cosign.pub"),
            "password": "hunter2",
            "cloud_init": [Path("/root/secret.yaml")],
            "force": False,
        },
        stream=out,
    )
    events.error("pulling docker://alice:pa55-w0rd@127.0.0.1:5000/os:v1 failed", "", 4)
    events.finish(4)
    text = out.getvalue()
    assert "pa55-w0rd" not in text and "alice" not in text and "hunter2" not in text
    assert "secret.yaml" not in text and "cosign.pub" not in text
    assert lines(out)[0]["args"] == {"image": "docker://127.0.0.1:5000/os:v1", "dest": "/srv/tree"}


def test_stray_prints_go_to_stderr_while_on(capsys: pytest.CaptureFixture[str]) -> None:
    events.start("build-disk", {})
    print("not an event")
    events.finish(0)
    print("after")
    out, err = capsys.readouterr()
    assert "not an event" in err and "not an event" not in out
    assert [json.loads(x)["event"] for x in out.splitlines()[:2]] == ["start", "result"]
    assert out.splitlines()[2] == "after"


def test_steps_nest_and_failures_say_so(sink: Stream) -> None:
    with step("outer"):
        with step("inner"):
            pass
        with pytest.raises(ValueError), step("broken"):
            raise ValueError("x")
    events.finish(0)
    got = [(e["event"], e.get("step"), e.get("depth"), e.get("ok")) for e in lines(sink)[1:]]
    assert got == [
        ("step-start", "outer", 0, None),
        ("step-start", "inner", 1, None),
        ("step-end", "inner", 1, True),
        ("step-start", "broken", 1, None),
        ("step-end", "broken", 1, False),
        ("step-end", "outer", 0, True),
        ("result", None, None, True),
    ]
    ev.parse(sink.getvalue())  # pairs, order, schema


def test_warnings_become_log_events(sink: Stream) -> None:
    setup_logging()
    logging.getLogger("cos").info("chatter")
    logging.getLogger("cos.run").warning("disk %s is slow", "/dev/vdb")
    assert [(e["event"], e.get("level"), e.get("message")) for e in lines(sink)[1:]] == [
        ("log", "warning", "disk /dev/vdb is slow")
    ]


def test_progress_is_throttled_but_always_completes(
    sink: Stream, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [100.0]
    monkeypatch.setattr(events.time, "monotonic", lambda: clock[0])
    shown: list[int] = []
    report = PullProgress()
    monkeypatch.setattr(report, "layer", lambda d, s: shown.append)
    advance = report.track("sha256:" + "a" * 64, 1000)
    for held, t in ((0, 100.0), (10, 100.2), (500, 100.9), (600, 101.0), (700, 101.5)):
        clock[0] = t
        advance(held)
    clock[0] = 101.6
    advance(1000)
    advance(1000)  # a repeat of the end is not news
    got = [(e["bytes"], e["total"]) for e in lines(sink) if e["event"] == "progress"]
    assert got == [(0, 1000), (600, 1000), (1000, 1000)]
    assert shown == [0, 10, 500, 600, 700, 1000, 1000]  # the human report sees every byte


def test_summary_lands_in_the_result(sink: Stream) -> None:
    events.summary(image="127.0.0.1:5000/os:v2", digest="", snapshot=3, changed=True)
    events.finish(0)
    res = lines(sink)[-1]
    assert res["snapshot"] == 3 and "digest" not in res and res["ok"] is True
    assert not ev.errors(res, ev.schema())


# -- through the command line -------------------------------------------------------


def test_error_event_and_result_of_a_failing_command(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    rc = main(["pull-image", "--json", "oci:/nonexistent/layout:x", str(tmp_path / "t")])
    out, err = capsys.readouterr()
    assert rc == ExitCode.IMAGE
    evs = ev.check_failed(out, 4, "is not an OCI layout")
    assert evs[0]["args"] == {"image": "oci:/nonexistent/layout:x", "dest": str(tmp_path / "t")}
    step_end = ev.of(evs, "step-end")[0]
    assert step_end["ok"] is False
    # The human output is unchanged, on stderr.
    assert "cos: error: oci:/nonexistent/layout:x" in err and "hint: " in err and "{" not in err


def test_bad_usage_still_gives_error_and_result(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["upgrade", "--json", "--no-such-flag"])
    out, _ = capsys.readouterr()
    assert rc == ExitCode.USAGE
    ev.check_failed(out, 2, "--no-such-flag")


@pytest.mark.parametrize(
    ("raised", "code", "words"),
    [
        (KeyboardInterrupt(), ExitCode.INTERRUPTED, "interrupted"),
        (RuntimeError("oops"), ExitCode.BUG, "internal error: RuntimeError: oops"),
        (ImageError("no kernel", hint="rebuild"), ExitCode.IMAGE, "no kernel"),
    ],
)
def test_every_ending_gives_exactly_one_result(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    raised: BaseException,
    code: ExitCode,
    words: str,
) -> None:
    def dispatch(args: Any, cfg: Any) -> int:
        with step("Pulling"):
            raise raised

    monkeypatch.setattr(cli, "_dispatch", dispatch)
    rc = main(["build-disk", "--json", "oci:/x:y", "-o", str(tmp_path / "d.raw")])
    out, _ = capsys.readouterr()
    assert rc == code
    evs = ev.parse(out)
    (err,) = ev.of(evs, "error")
    assert err["exit_code"] == code and words in err["message"]
    assert ev.result(evs) | {"time": ""} == {
        "event": "result",
        "time": "",
        "command": "build-disk",
        "ok": False,
        "exit_code": int(code),
    }


def test_success_result_and_no_events_without_json(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def dispatch(args: Any, cfg: Any) -> int:
        with step("Writing"):
            events.summary(output=str(args.output))
        return 0

    monkeypatch.setattr(cli, "_dispatch", dispatch)
    assert main(["build-iso", "--json", "oci:/x:y", "-o", str(tmp_path / "a.iso")]) == 0
    res = ev.result(ev.parse(capsys.readouterr().out))
    assert (res["ok"], res["exit_code"], res["output"]) == (True, 0, str(tmp_path / "a.iso"))

    assert main(["build-iso", "oci:/x:y", "-o", str(tmp_path / "a.iso")]) == 0
    assert capsys.readouterr().out == ""


def test_live_install_outside_live_media(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["live-install", "--json"]) == ExitCode.STATE
    ev.check_failed(capsys.readouterr().out, 7, "live media only")


def test_status_and_inspect_keep_their_own_json_flag() -> None:
    parser = cli.build_parser()
    assert parser.parse_args(["inspect", "--json", "oci:/x"]).json is True
    assert parser.parse_args(["status", "--json"]).json is True
    for command in ("inspect", "status"):
        assert command not in cli.EVENT_COMMANDS


# -- the schema -----------------------------------------------------------------------


def test_published_schema_matches_the_code() -> None:
    assert ev.schema() == json.loads(json.dumps(events.schema())), (
        "regenerate with: python -c 'import json, cos.events as e; "
        "print(json.dumps(e.schema(), indent=2))' > docs/events.schema.json"
    )


@pytest.mark.parametrize(
    "bad",
    [
        {"event": "result", "time": "2024-01-01T00:00:00Z", "command": "reset", "ok": True},
        {"event": "nope", "time": "2024-01-01T00:00:00Z", "command": "reset"},
        {"event": "step-start", "time": "yesterday", "command": "reset", "step": "a", "depth": 0},
        {
            "event": "progress",
            "time": "2024-01-01T00:00:00Z",
            "command": "reset",
            "what": "sha256:x",
            "bytes": -1,
            "total": 5,
        },
        {
            "event": "start",
            "time": "2024-01-01T00:00:00Z",
            "command": "reset",
            "version": "1",
            "schema": 1,
            "args": {"password": "x"},
        },
        {
            "event": "log",
            "time": "2024-01-01T00:00:00Z",
            "command": "reset",
            "level": "warning",
            "message": "m",
            "extra": 1,
        },
    ],
)
def test_schema_rejects_malformed_events(bad: dict[str, Any]) -> None:
    assert ev.errors(bad, ev.schema())
