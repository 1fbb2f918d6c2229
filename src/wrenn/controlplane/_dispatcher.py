"""The event dispatcher: every `events_interval_s`, fan new events out to the channels that select them,
then make the deliveries that are due (first tries and retries). Its state is the database alone, so a
restarted control plane delivers what was recorded while none ran, and several control planes share the
work (`service/channels.py` says how)."""

from __future__ import annotations

from ._background import Background
from .service import channels


class Dispatcher(Background):
    task_name = "wrenn-event-dispatcher"
    round_name = "event dispatcher round"

    def interval_s(self) -> float:
        return self._settings.events_interval_s

    async def tick(self) -> int:
        """One round: fan out until no event is left, then one pass over the due deliveries."""
        fanned = 0
        while True:
            async with self._sessions() as session:
                done = await channels.fan_out(session, self._postgres)
            fanned += done
            if not done:
                break
        return await channels.deliver_due(self._sessions, self._settings, self._postgres, self._metrics)
