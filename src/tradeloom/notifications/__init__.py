"""Notifications: each user's order and position events, pushed to that user's stream.

:class:`Notifier` consumes the events and publishes numbered messages; :class:`ReplayBuffer`
keeps each user's recent ones; :class:`UserStreams` opens the resumable stream the web tier
serves over SSE.
"""

from tradeloom.notifications.messages import Notification, user_channel
from tradeloom.notifications.owners import MemoizedOwners, OwnerLookup
from tradeloom.notifications.replay_buffer import ReplayBuffer, Reset, Resume
from tradeloom.notifications.service import Notifier
from tradeloom.notifications.stream import (
    UserStream,
    UserStreams,
    parse_last_event_id,
    sse_frame,
)

__all__ = [
    "MemoizedOwners",
    "Notification",
    "Notifier",
    "OwnerLookup",
    "ReplayBuffer",
    "Reset",
    "Resume",
    "UserStream",
    "UserStreams",
    "parse_last_event_id",
    "sse_frame",
    "user_channel",
]
