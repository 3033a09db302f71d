"""Drive the real Claude Code CLI against :mod:`fake_anthropic`.

* :func:`find_claude` locates the CLI (``$CLAUDE_E2E_BIN``, else a cached npm
  install in ``tests/e2e/.node``), installing it with npm when missing.
* :func:`run_claude` runs ``claude -p <prompt> --output-format stream-json
  --verbose`` in a project directory, with a throw-away ``HOME`` that trusts
  the project, the API pointed at the fake server, and telemetry/updates off.
  No permission-bypassing flag is ever passed: the project's
  ``.claude/settings.json`` decides what Bash may run.
* :func:`run_scripted` = start a :class:`FakeAnthropic` with a policy, run the
  CLI, stop the server, return both.

Usage::

    from claude_harness import run_scripted
    from fake_anthropic import DelegationScript

    script = DelegationScript(agent="demo", agent_marker="DEMO-AGENT",
                              commands=['python -c "print(42)"'])
    run, api = run_scripted("/demo some args", project_dir, script, home=tmp_path / "home")
    run.check()                                   # exit code 0, a success result
    [call] = api.tool_calls("Bash")
    assert call.result == "42" and not call.is_error
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from fake_anthropic import FakeAnthropic, Policy

__all__ = [
    "NODE_CACHE",
    "CLAUDE_CODE_VERSION",
    "ClaudeUnavailable",
    "ClaudeInstallError",
    "ClaudeRun",
    "node_tools_available",
    "find_claude",
    "claude_or_skip",
    "install_claude",
    "make_home",
    "claude_env",
    "write_project",
    "run_claude",
    "run_scripted",
]

HERE = Path(__file__).resolve().parent
NODE_CACHE = HERE / ".node"
PACKAGE = "@anthropic-ai/claude-code"
# The wire protocol and permission behaviour were worked out against this
# version; override with CLAUDE_E2E_VERSION=<version>|latest.
CLAUDE_CODE_VERSION = os.environ.get("CLAUDE_E2E_VERSION", "2.1.197")

# Variables of the outer environment that would leak another configuration
# (a real API key, Bedrock/Vertex routing, a parent Claude Code session, ...).
_STRIP_PREFIXES = ("ANTHROPIC_", "CLAUDE", "AWS_BEARER_TOKEN", "VERTEX_", "CLOUD_ML_")
_STRIP_EXACT = {"OTEL_EXPORTER_OTLP_ENDPOINT", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy",
                "ALL_PROXY", "all_proxy", "NODE_OPTIONS", "XDG_CONFIG_HOME"}

QUIET_ENV = {
    "DISABLE_TELEMETRY": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "DISABLE_BUG_COMMAND": "1",
    "DISABLE_COST_WARNINGS": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "CLAUDE_CODE_DISABLE_FEEDBACK_SURVEY": "1",
    "CLAUDE_CODE_DISABLE_TERMINAL_TITLE": "1",
    "CLAUDE_CODE_DISABLE_AUTO_MEMORY": "1",
    "CLAUDE_CODE_DISABLE_OFFICIAL_MARKETPLACE_AUTOINSTALL": "1",
    "CLAUDE_CODE_ENABLE_TELEMETRY": "0",
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
    "CI": "1",
    "TERM": "dumb",
    "NO_COLOR": "1",
}


class ClaudeUnavailable(RuntimeError):
    """node/npm are not installed: the e2e tests should be skipped."""


class ClaudeInstallError(RuntimeError):
    """npm is there but installing the CLI failed: the e2e tests should fail."""


# --------------------------------------------------------------------------
# Locating / installing the CLI
# --------------------------------------------------------------------------


def node_tools_available() -> bool:
    return shutil.which("node") is not None and shutil.which("npm") is not None


def _pkg_dir(cache: Path) -> Path:
    return cache / "node_modules" / "@anthropic-ai" / "claude-code"


def _installed_version(cache: Path) -> Optional[str]:
    try:
        return json.loads((_pkg_dir(cache) / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


def _launcher(cache: Path) -> Optional[list[str]]:
    """argv prefix that runs the installed CLI, or None if not usable."""
    pkg = _pkg_dir(cache)
    exe = pkg / "bin" / "claude.exe"
    if not exe.is_file():
        return None
    if exe.stat().st_size < 4096:
        # Placeholder stub: npm did not run the postinstall that puts the
        # native binary in place (e.g. --ignore-scripts).  Run it ourselves.
        if shutil.which("node"):
            subprocess.run(["node", "install.cjs"], cwd=pkg, capture_output=True, timeout=120)
        if exe.stat().st_size < 4096:
            wrapper = pkg / "cli-wrapper.cjs"
            if wrapper.is_file() and shutil.which("node"):
                return ["node", str(wrapper)]
            return None
    return [str(exe)]


@contextlib.contextmanager
def _install_lock(cache: Path):
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".install.lock", "w") as fh:
        try:
            import fcntl
            fcntl.flock(fh, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover (Windows)
            pass
        yield


def install_claude(cache: Path = NODE_CACHE, version: str = CLAUDE_CODE_VERSION,
                   timeout: float = 600) -> list[str]:
    """``npm install --prefix <cache> @anthropic-ai/claude-code@<version>``;
    returns the argv prefix of the CLI.  Raises :class:`ClaudeUnavailable`
    without node/npm and :class:`ClaudeInstallError` if the install fails."""
    if not node_tools_available():
        raise ClaudeUnavailable("node and npm are required to install Claude Code")
    cache = Path(cache)
    with _install_lock(cache):
        if (version == "latest" or _installed_version(cache) == version) and _launcher(cache):
            return _launcher(cache)
        if not (cache / "package.json").exists():
            (cache / "package.json").write_text('{"private": true}\n')
        cmd = ["npm", "install", "--prefix", str(cache), "--no-audit", "--no-fund",
               "--loglevel=error", "--include=optional", f"{PACKAGE}@{version}"]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                               stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            raise ClaudeInstallError(f"`{' '.join(cmd)}` timed out after {timeout}s") from e
        if p.returncode != 0:
            raise ClaudeInstallError(
                f"`{' '.join(cmd)}` failed with exit code {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
        launcher = _launcher(cache)
        if launcher is None:
            raise ClaudeInstallError(
                f"npm installed {PACKAGE} into {cache} but no runnable CLI was found "
                f"(native binary missing?). npm output:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
        return launcher


def find_claude(install: bool = True, cache: Path = NODE_CACHE,
                version: str = CLAUDE_CODE_VERSION) -> list[str]:
    """argv prefix to run Claude Code: ``$CLAUDE_E2E_BIN`` if set, else the
    cached install in ``cache`` (installed first when missing and ``install``)."""
    explicit = os.environ.get("CLAUDE_E2E_BIN")
    if explicit:
        return [explicit]
    cache = Path(cache)
    if version == "latest" or _installed_version(cache) == version:
        launcher = _launcher(cache)
        if launcher:
            return launcher
    if not install:
        raise ClaudeUnavailable(f"Claude Code {version} is not installed in {cache}")
    return install_claude(cache, version)


# --------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------


def make_home(home: Path, project_dirs: Iterable[Path] = ()) -> Path:
    """Create a throw-away HOME whose ``~/.claude.json`` has onboarding done
    and the given project directories trusted.  No user settings, so only the
    project's ``.claude/settings*.json`` grant permissions."""
    home = Path(home)
    (home / ".claude").mkdir(parents=True, exist_ok=True)
    cfg_path = home / ".claude.json"
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError):
        cfg = {}
    cfg.setdefault("hasCompletedOnboarding", True)
    cfg.setdefault("numStartups", 1)
    cfg.setdefault("autoUpdates", False)
    projects = cfg.setdefault("projects", {})
    for d in project_dirs:
        key = str(Path(d).resolve())
        entry = projects.setdefault(key, {})
        entry.update({
            "hasTrustDialogAccepted": True,
            "hasCompletedProjectOnboarding": True,
            "allowedTools": [],
        })
    cfg_path.write_text(json.dumps(cfg, indent=2))
    return home


def claude_env(base_url: str, home: Path, extra: Optional[Mapping[str, str]] = None) -> dict:
    """Environment for the CLI: outer env minus Anthropic/Claude config,
    plus the fake API, a dummy key, the temporary HOME and quiet switches."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(_STRIP_PREFIXES) and k not in _STRIP_EXACT}
    env.update(QUIET_ENV)
    env.update({
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": base_url,
        "ANTHROPIC_API_KEY": "dummy",
        # network-less: don't wait long on anything that is not the fake API
        "API_TIMEOUT_MS": "60000",
    })
    if extra:
        env.update(extra)
    return env


def write_project(root: Path, *, agents: Mapping[str, str] = (), commands: Mapping[str, str] = (),
                  settings: Optional[dict] = None, files: Mapping[str, str] = ()) -> Path:
    """Write a throw-away project: ``.claude/agents/<name>.md``,
    ``.claude/commands/<name>.md``, ``.claude/settings.json`` and other files."""
    root = Path(root)
    for name, body in dict(agents).items():
        p = root / ".claude" / "agents" / f"{name}.md"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(body)
    for name, body in dict(commands).items():
        p = root / ".claude" / "commands" / f"{name}.md"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(body)
    if settings is not None:
        p = root / ".claude" / "settings.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(settings, indent=2))
    for rel, body in dict(files).items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(body)
    return root


# --------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------


@dataclass
class ClaudeRun:
    """Outcome of one CLI run."""

    argv: list
    returncode: Optional[int]
    stdout: str
    stderr: str
    duration: float
    timed_out: bool = False
    events: list = field(default_factory=list)  # parsed stream-json / json lines

    @property
    def result(self) -> Optional[dict]:
        """The final ``{"type": "result", ...}`` event (None if missing)."""
        for ev in reversed(self.events):
            if isinstance(ev, dict) and ev.get("type") == "result":
                return ev
        return None

    @property
    def result_text(self) -> Optional[str]:
        return (self.result or {}).get("result")

    @property
    def permission_denials(self) -> list:
        """``permission_denials`` of the result event:
        ``[{"tool_name", "tool_use_id", "tool_input"}, ...]``."""
        return (self.result or {}).get("permission_denials") or []

    @property
    def init(self) -> Optional[dict]:
        """The ``system/init`` event (tools, agents, slash_commands, ...)."""
        for ev in self.events:
            if isinstance(ev, dict) and ev.get("type") == "system" and ev.get("subtype") == "init":
                return ev
        return None

    def ok(self) -> bool:
        r = self.result
        return (not self.timed_out and self.returncode == 0 and r is not None
                and r.get("subtype") == "success" and not r.get("is_error"))

    def describe(self) -> str:
        return (f"argv={self.argv}\nexit={self.returncode} timed_out={self.timed_out} "
                f"duration={self.duration:.1f}s\n--- stderr ---\n{self.stderr[-4000:]}\n"
                f"--- stdout (tail) ---\n{self.stdout[-4000:]}")

    def check(self) -> "ClaudeRun":
        """Raise AssertionError unless the run succeeded."""
        if not self.ok():
            raise AssertionError("claude run failed:\n" + self.describe())
        return self


def _parse_events(stdout: str) -> list:
    events = []
    for line in stdout.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            events.append(json.loads(line))
        except ValueError:
            pass
    return events


def run_claude(prompt: str, project_dir: Path, base_url: str, *, home: Optional[Path] = None,
               output_format: str = "stream-json", timeout: float = 120,
               extra_args: Sequence[str] = (), env: Optional[Mapping[str, str]] = None,
               claude: Optional[Sequence[str]] = None) -> ClaudeRun:
    """Run ``claude -p <prompt>`` in ``project_dir`` against ``base_url``.

    ``home``: the HOME to use (created and made to trust ``project_dir``);
    a temporary one, deleted afterwards, when None.  ``env``: extra
    variables.  ``extra_args``: more CLI flags (e.g. ``["--max-turns", "20"]``).
    Never raises on a failed run, only on a timeout-kill failure; check
    ``ClaudeRun.ok()`` / ``.check()``.
    """
    project_dir = Path(project_dir).resolve()
    launcher = list(claude) if claude else find_claude()
    argv = launcher + ["-p", prompt, "--output-format", output_format]
    if output_format == "stream-json":
        argv.append("--verbose")
    argv += list(extra_args)

    tmp_home = None
    if home is None:
        tmp_home = tempfile.TemporaryDirectory(prefix="claude-home-")
        home = Path(tmp_home.name)
    try:
        make_home(Path(home), [project_dir])
        full_env = claude_env(base_url, Path(home), env)
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, cwd=project_dir, env=full_env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        timed_out = False
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate(timeout=30)
        duration = time.monotonic() - t0
        # kill anything the CLI left behind in its process group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        return ClaudeRun(argv=argv, returncode=proc.returncode, stdout=out or "", stderr=err or "",
                         duration=duration, timed_out=timed_out, events=_parse_events(out or ""))
    finally:
        if tmp_home is not None:
            tmp_home.cleanup()


def run_scripted(prompt: str, project_dir: Path, policy: Policy, *, server_lifetime: float = 300,
                 **kwargs: Any) -> tuple[ClaudeRun, FakeAnthropic]:
    """Start a :class:`FakeAnthropic` driven by ``policy``, run the CLI against
    it (``kwargs`` go to :func:`run_claude`), stop the server, and return
    ``(run, server)``; the server's recorded requests stay readable."""
    api = FakeAnthropic(policy, max_lifetime=server_lifetime)
    with api:
        run = run_claude(prompt, project_dir, api.base_url, **kwargs)
    return run, api


def claude_or_skip() -> str:
    """find_claude() for a pytest fixture: skip where Claude Code cannot be had, fail where npm could not install it."""
    import pytest
    try:
        return find_claude()
    except ClaudeUnavailable as error:  # pragma: no cover
        pytest.skip(str(error))
    except ClaudeInstallError as error:
        pytest.fail(f"could not install the Claude Code CLI with npm:\n{error}", pytrace=False)
