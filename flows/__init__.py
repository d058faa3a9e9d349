"""Prefect flows: each composes the tasks of tasks/ over the engine's stage functions."""

import os

# Prefect's console logs (a task's failure comes with a traceback) and its temporary server's
# shutdown chatter would drown a run's own progress and one-line errors; the logs still reach the
# Prefect API and its UI. The temporary server migrates a fresh database before it answers, slow
# on a busy machine. Prefect reads these when it is imported; a user's own settings win.
PREFECT_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "CRITICAL",
    "PREFECT_SERVER_LOGGING_LEVEL": "CRITICAL",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}


def configure_prefect() -> None:
    """Apply PREFECT_DEFAULTS where unset; call before anything imports prefect."""
    for key, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(key, value)
    home = os.environ.get("PREFECT_HOME")
    if home:  # Prefect creates its home but not the folders above it (make sets it in $KEVOLVE_HOME)
        os.makedirs(os.path.expanduser(home), exist_ok=True)
