"""The harness's stand-in kubelet for migration Jobs: which pods it runs, $(VAR) expansion, the message's tail."""

from __future__ import annotations

from harness.jobrunner import MESSAGE_BYTES, MESSAGE_LINES, RUNNER_LABEL, expand, tail, wanted


def test_expansion_is_kubernetes_own() -> None:
    env = {"DSN": "postgresql://a:b@h/d", "X": "x"}
    assert expand("$(DSN)", env) == "postgresql://a:b@h/d"
    assert expand("$$(DSN) $(UNKNOWN) $(X)$(X)", env) == "$(DSN) $(UNKNOWN) xx"
    assert expand("; rm -rf / $(X)", env) == "; rm -rf / x"  # text, never a command: it goes to argv as is


def test_only_unscheduled_runner_pods_that_have_not_ended_are_run() -> None:
    pod = {"metadata": {"name": "p"}, "spec": {"nodeSelector": {RUNNER_LABEL: "true"}}, "status": {"phase": "Pending"}}
    assert wanted(pod)
    assert not wanted({**pod, "status": {"phase": "Failed"}})
    assert not wanted({**pod, "spec": {"nodeSelector": {RUNNER_LABEL: "true"}, "nodeName": "kwok-node-0"}})
    assert not wanted({**pod, "spec": {}})


def test_the_termination_message_is_the_outputs_tail() -> None:
    out = tail("\n".join(f"line {i}" for i in range(500)))
    assert out.endswith("line 499") and len(out.splitlines()) <= MESSAGE_LINES and len(out.encode()) <= MESSAGE_BYTES
