"""`voiceaudit targets`: every protocol, its path and its options; and each built-in's
declared options are the ones its code reads."""

from __future__ import annotations

import importlib
import inspect
import json
import re

import pytest

from voiceaudit.cli import run as cli
from voiceaudit.errors import ExitCode
from voiceaudit.targets import registry

#: the built-ins whose options are declared here (the others are declared by their owners)
DECLARED = ("realtime", "websocket", "cascade", "python", "webrtc", "pipecat-websocket")

_READS = re.compile(
    r"""(?:option|int_option|_choice|_option_format)\(\s*(?:config|c|self\.config)?\s*,?\s*"(\w+)"|"""
    r"""options\.get\("(\w+)"|"(\w+)"\s+in\s+(?:self\.)?(?:config|c)\.options|"""
    r"""options\["(\w+)"\]"""
)


def options_read(source: str) -> set[str]:
    """The option names a module's code reads (``config.option("x", …)``,
    ``int_option``, ``options.get("x")``, ``"x" in config.options``, ``options["x"]``)."""
    names = {next(g for g in m.groups() if g) for m in _READS.finditer(source)}
    if "wants_stage_events(" in source:
        names.add("stage_events")
    return names


@pytest.mark.parametrize("name", DECLARED)
def test_every_option_a_built_in_reads_is_declared(name: str) -> None:
    cls = registry.get_target_class(name)
    source = inspect.getsource(importlib.import_module(cls.__module__))
    read = options_read(source)
    assert read, "the scan found nothing: it is broken"
    assert read <= set(cls.options), sorted(read - set(cls.options))
    # and nothing is declared that the code never reads
    assert set(cls.options) <= read, sorted(set(cls.options) - read)
    assert all(text and "\n" not in text for text in cls.options.values())


def test_the_listing_names_every_protocol(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["targets"]) == ExitCode.OK
    out = capsys.readouterr().out
    rows = {ln.split()[0]: ln for ln in out.splitlines() if ln and not ln.startswith(" ")}
    assert set(registry.BUILTINS) <= set(rows)
    for name in DECLARED:
        cls = registry.get_target_class(name)
        assert f"[{cls.path}] {cls.description}" in rows[name]
    assert cli(["targets", "--json"]) == ExitCode.OK
    infos = {i["name"]: i for i in json.loads(capsys.readouterr().out)}
    assert set(registry.BUILTINS) <= set(infos)
    for name, info in infos.items():
        # a protocol is usable (a description and a path), or says why not
        if info["available"]:
            assert info["description"] and info["path"], name
        else:
            assert info["unavailable"], name
    rt = infos["realtime"]
    assert rt["source"] == "built-in" and rt["path"] == "websocket"
    assert rt["spec"] == "voiceaudit.targets.realtime:RealtimeTarget"
    assert {"dialect", "api_version", "noise_reduction", "turn_detection"} <= set(rt["options"])
    assert infos["cascade"]["path"] == "http" and infos["webrtc"]["path"] == "webrtc"
    assert infos["python"]["path"] == "in-process"


def test_one_protocol_shows_each_option_with_its_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["targets", "webrtc"]) == ExitCode.OK
    out = capsys.readouterr().out
    from voiceaudit.targets.webrtc import WebRTCTarget

    for name, text in WebRTCTarget.options.items():
        assert re.search(rf"^    {name}\s+{re.escape(text)}$", out, re.M), name
    assert "  path: webrtc" in out
    assert cli(["targets", "realtime", "--json"]) == ExitCode.OK
    info = json.loads(capsys.readouterr().out)
    from voiceaudit.targets.realtime import RealtimeTarget

    assert info["options"] == RealtimeTarget.options


def test_unknown_and_unavailable_protocols(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli(["targets", "no-such-protocol"]) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert "unknown protocol 'no-such-protocol'" in err and "realtime" in err
    # a built-in whose module is not there (yet): listed with the reason, never a crash
    monkeypatch.setitem(registry.BUILTINS, "later", "voiceaudit.targets.not_yet_written:T")
    assert cli(["targets"]) == ExitCode.OK
    out = capsys.readouterr().out
    row = next(ln for ln in out.splitlines() if ln.startswith("later "))
    assert row.split(None, 1)[1] == (
        "unavailable: ModuleNotFoundError: No module named 'voiceaudit.targets.not_yet_written'"
    )
    assert cli(["targets", "later"]) == ExitCode.ENVIRONMENT
    assert "  unavailable: ModuleNotFoundError" in capsys.readouterr().out
    code = cli(["run", "--target", "ws://127.0.0.1:9/x", "--protocol", "later"])
    assert code == ExitCode.USAGE
    assert "protocol 'later' is unavailable" in capsys.readouterr().err


def test_docs_list_every_option_of_the_declared_built_ins() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "targets.md").read_text()
    for name in DECLARED:
        head = f"### `{name}`\n"
        assert head in doc, name
        section = doc.split(head, 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
        listed = set(re.findall(r"^\| `(\w+)` \|", section, re.M))
        assert listed == set(registry.get_target_class(name).options), name
    assert '[project.entry-points."voiceaudit.targets"]' in doc
