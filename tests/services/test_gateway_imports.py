"""The gateway imports nothing that the serving bundle does not install.

The bundle (``requirements/bento.txt``) has no scipy, pandas, scikit-learn, torch,
evidently or Prefect: those serve the analysis, the flows and the build recipes. A module
on the gateway's import chain that imports one of them at module level breaks the bento
at start-up, so the check runs the import in a fresh interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import ROOT

HEAVY = ("scipy", "pandas", "sklearn", "torch", "evidently", "prefect")

_PROBE = (
    "import json, sys\n"
    "import services.service, services.wiring\n"
    f"heavy = {HEAVY!r}\n"
    "print(json.dumps(sorted(m for m in heavy if m in sys.modules)))\n"
)


def test_gateway_import_chain_has_no_heavy_dependencies(redis_url: str) -> None:
    # A Redis URL is set so that nothing starts the embedded Redis server.
    env = {**os.environ, "SERVEKIT_REDIS_URL": redis_url}
    result = subprocess.run(
        [sys.executable, "-c", _PROBE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    imported = json.loads(result.stdout.strip().splitlines()[-1])
    assert imported == [], f"import services.service pulls in {imported}"


# What BentoML's arbiter (`bentoml serve`) imports is services.service alone: the service
# definitions, never the serving stack its workers build.
_ARBITER_PROBE = (
    "import json, sys\n"
    "import services.service\n"
    "stack = ('numpy', 'redis', 'onnxruntime', 'services.wiring', 'services.request', "
    "'services.runner', 'services.state', 'monitoring.metrics')\n"
    "print(json.dumps(sorted(m for m in stack if m in sys.modules)))\n"
)


def test_the_arbiter_imports_no_serving_stack(redis_url: str) -> None:
    env = {**os.environ, "SERVEKIT_REDIS_URL": redis_url}
    result = subprocess.run(
        [sys.executable, "-c", _ARBITER_PROBE], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    imported = json.loads(result.stdout.strip().splitlines()[-1])
    assert imported == [], f"import services.service (the arbiter's import) pulls in {imported}"
