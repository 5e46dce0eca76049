"""Notifications: webhooks (JSON signed with HMAC-SHA256) and e-mail when a job waits for review, fails,
cannot be delivered, when disk runs low and when delivered outputs get a new version.

- :mod:`.events`: recording an event (in the caller's transaction) - the outbox in the index
- :mod:`.messages`: built-in templates, rendering, the webhook's JSON
- :mod:`.channels`: one webhook POST or one e-mail
- :mod:`.outbox`: the worker's notifier thread: events to messages, sent with retries

Settings are ``[notifications]`` (:mod:`dicom_node.settings.notifications`); ``dicom-node notifications``
lists recent events and what became of each message.
"""

from dicom_node.notify.events import Event, emit, record, review_needed

__all__ = ["Event", "emit", "record", "review_needed"]
