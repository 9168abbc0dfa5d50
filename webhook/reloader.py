"""Live reload of the rules file (a mounted ConfigMap changes on disk).

The new file is parsed and validated completely before it is swapped in, as
one reference assignment: requests see either the old rules or the new ones,
never none. An invalid file is reported (log line and metric) and the old
rules keep serving.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from webhook import logs, metrics
from webhook.app import AppState
from webhook.config import ConfigError, load_config_text


class ConfigReloader:
    def __init__(self, path: Path, state: AppState) -> None:
        self.path = path
        self.state = state
        self._digest = self._read_digest()
        metrics.RULES.set(len(state.config.rules))
        metrics.CONFIG_VALID.set(1)

    def _read(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except OSError:
            return None

    def _read_digest(self) -> str | None:
        data = self._read()
        return hashlib.sha256(data).hexdigest() if data is not None else None

    def reload_if_changed(self) -> bool | None:
        """True: new rules in force; False: the change was refused; None: no change."""
        data = self._read()
        if data is None:
            # A ConfigMap volume swaps a symlink; a missing file is a transient state, or
            # an operator error. Either way the rules in memory stay.
            return None
        digest = hashlib.sha256(data).hexdigest()
        if digest == self._digest:
            return None
        self._digest = digest
        try:
            config = load_config_text(data, str(self.path))
        except Exception as exc:
            # Anything the loader raises refuses this version of the file, a bug included: it is
            # counted and logged like an invalid file, and the old rules stay.
            reason = str(exc) if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {exc}"
            metrics.CONFIG_RELOADS.labels("failure").inc()
            metrics.CONFIG_VALID.set(0)
            logs.error(
                "rules file invalid; keeping the previous rules", reason=reason, rules=len(self.state.config.rules)
            )
            return False
        self.state.config = config
        metrics.CONFIG_RELOADS.labels("success").inc()
        metrics.CONFIG_VALID.set(1)
        metrics.RULES.set(len(config.rules))
        logs.info("rules reloaded", rules=len(config.rules), path=str(self.path))
        return True

    async def watch(self, interval: float = 2.0) -> None:
        while True:
            await asyncio.sleep(interval)
            # Parsing thousands of rules takes seconds: off the event loop, admissions go on
            # with the old rules until the new ones are swapped in.
            try:
                await asyncio.to_thread(self.reload_if_changed)
            except Exception:  # a bug here must not end reloading for the life of the process
                logs.error("unexpected error while checking the rules file", exc_info=True, path=str(self.path))
