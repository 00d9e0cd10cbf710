"""Run states, as stored in runs.status. A run's own row only ever says queued, running or succeeded; a run
whose job failed or was cancelled reports the job's state (see service.run_status), so a run's states are its
job's states, named once in app/jobs/states.py."""

from __future__ import annotations

from app.jobs.states import ACTIVE, JobStatus

RunStatus = JobStatus
UNFINISHED = ACTIVE
