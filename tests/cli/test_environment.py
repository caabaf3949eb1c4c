"""Environment failures are errors too: no hub and no --data-dir ends in one line and exit 2.

The CLI runs in a subprocess whose environment is built here, because ``huggingface_hub`` and
``datasets`` read their variables (HF_ENDPOINT, HF_HUB_OFFLINE, ...) at import: this is what a
user without hub access sees, whatever variables the test run itself has (``.ci/run`` sets the
offline ones; a plain ``pytest`` may not).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

DEAD_ENDPOINT = "http://127.0.0.1:9"  # the discard port: nothing listens, connections are refused
REPO = Path(__file__).resolve().parents[2]

# Runs `nxmi` in the subprocess. Two test-only changes: no back-off sleeps between the hub's
# retries (they add ~25 s), and no name resolution but 127.0.0.1, so the real hub is never reached.
RUN_NXMI = """
import socket, sys, time
time.sleep = lambda seconds: None
_getaddrinfo = socket.getaddrinfo
def _local_only(host, *args, **kwargs):
    if host not in ("127.0.0.1", "localhost"):
        raise socket.gaierror(socket.EAI_NONAME, f"test: no network for {host}")
    return _getaddrinfo(host, *args, **kwargs)
socket.getaddrinfo = _local_only
from nxmiformer.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _environment(tmp_path: Path, offline: bool) -> dict[str, str]:
    """This process's environment less every Hugging Face, nxmiformer and proxy variable; then a
    dead hub endpoint, fresh empty caches, and the offline variables when ``offline``."""
    dropped = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_", "NXMI_")
    env = {k: v for k, v in os.environ.items()
           if not k.upper().startswith(dropped) and not k.lower().endswith("_proxy")}
    env.update(HF_ENDPOINT=DEAD_ENDPOINT, HF_HOME=str(tmp_path / "hf"),
               HF_DATASETS_CACHE=str(tmp_path / "hf" / "datasets"), NXMI_CACHE_DIR=str(tmp_path / "cache"),
               TOKENIZERS_PARALLELISM="false")
    if offline:
        env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return env


@pytest.mark.parametrize("offline", [False, True], ids=["unreachable", "offline"])
def test_finetune_without_hub_or_data_dir_is_one_line_and_exit_2(offline, tmp_path):
    out = tmp_path / "OUT"
    argv = ["finetune", "--task", "sst2", "--out", str(out), "--steps", "1", "--train-size", "8", "--eval-size", "8"]
    proc = subprocess.run([sys.executable, "-c", RUN_NXMI, *argv], env=_environment(tmp_path, offline),
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1, proc.stderr[-3000:]
    line = lines[0]
    assert line.startswith("nxmi finetune: error: cannot load GLUE sst2 from the Hugging Face hub (nyu-mll/glue; ")
    assert "--data-dir DIR" in line and "$NXMI_GLUE_DIR" in line
    assert "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1" in line
    assert ("offline mode is on" if offline else f"hub unreachable at {DEAD_ENDPOINT}") in line
    assert "Traceback" not in proc.stdout
    assert not out.exists()


def test_search_without_hub_or_data_dir_writes_nothing_so_the_same_command_runs_again(tmp_path):
    out = tmp_path / "OUT"
    argv = ["search", "--preset", "quick", "--task", "sst2", "--target-ratio", "0.875", "--out", str(out)]
    for attempt in range(2):  # the second run is not refused with "use --resume": nothing was left behind
        proc = subprocess.run([sys.executable, "-c", RUN_NXMI, *argv], env=_environment(tmp_path, offline=False),
                              cwd=REPO, capture_output=True, text=True, timeout=300)
        lines = proc.stderr.splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
        assert lines[0].startswith("nxmi search: error: cannot load GLUE sst2 from the Hugging Face hub")
        assert "--data-dir DIR" in lines[0] and not out.exists()
